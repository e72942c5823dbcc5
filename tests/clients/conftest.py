from __future__ import annotations

from pathlib import Path

import pytest

from clients.runtime.inputs import RingVectorInput
from clients.runtime.policy import ClientPolicy
from clients.runtime.runner import RoundOutcome, run_round
from tests.clients.fake_server import FakeRoundServer


def run_against(
    server: FakeRoundServer, state_dir: Path, *, policy: ClientPolicy | None = None, client_input=None, **kwargs
) -> RoundOutcome:
    """Run the client under test against the in-memory server, never sleeping."""
    return run_round(
        transport=server,
        round_id=server.round_id,
        identity=server.identity,
        client_input=client_input if client_input is not None else RingVectorInput(server.inputs[server.member]),
        policy=policy if policy is not None else ClientPolicy(),
        state_dir=state_dir,
        sleep=lambda seconds: None,
        **kwargs,
    )


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"
