"""Shared fixtures for the protocol tests."""

from __future__ import annotations

import pytest

from secagg.client import ClientStage
from secagg.errors import AbortReason, ProtocolAbort, SessionAborted


@pytest.fixture
def expect_abort():
    """Assert that ``call()`` aborts the client with ``reason`` and leaves it terminally aborted."""

    def check(client, call, reason: AbortReason) -> ProtocolAbort:
        with pytest.raises(ProtocolAbort) as caught:
            call()
        assert caught.value.reason is reason, caught.value
        assert client.stage is ClientStage.ABORTED
        assert client.abort_reason is reason
        with pytest.raises(SessionAborted):
            client.start()
        return caught.value

    return check
