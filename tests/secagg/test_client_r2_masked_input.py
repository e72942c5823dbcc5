"""Client R2 MaskedInputCollection: the masked input hides the input; U3 is checked before
anything else is revealed; unmasking before the client's own masked input is refused."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from secagg.client import ClientStage
from secagg.config import ProtocolMode
from secagg.errors import AbortReason
from secagg.messages import ConsistencyCheck, ConsistencyCheckRequest, UnmaskingRequest
from tests.secagg.harness import advance_to, make_round

VICTIM = 0


def _survivor_request(participants: int = 7, drop=None, **kwargs):
    round_ = make_round(participants, **kwargs)
    outbox = advance_to(round_, 3, drop=drop)
    return round_, outbox[VICTIM]


def test_masked_input_is_in_the_ring_and_differs_from_the_input():
    round_ = make_round(5, dim=64, bits=13)
    outbox = advance_to(round_, 2)
    reply = round_.clients[1].receive(outbox[1])
    assert reply.bits == 13
    assert int(reply.masked_vector.max()) < 2**13
    assert np.count_nonzero(reply.masked_vector == round_.inputs[1]) < 5


def test_client_signs_u3_in_an_honest_consistency_check():
    round_, request = _survivor_request()
    assert isinstance(request, ConsistencyCheckRequest)
    reply = round_.clients[VICTIM].receive(request)
    assert isinstance(reply, ConsistencyCheck)
    assert round_.clients[VICTIM].stage is ClientStage.CONSISTENCY_CHECK


def test_client_aborts_when_u3_is_for_another_session(expect_abort):
    round_, request = _survivor_request()
    forged = replace(request, session_id=bytes(32))
    expect_abort(round_.clients[VICTIM], lambda: round_.clients[VICTIM].receive(forged), AbortReason.WRONG_SESSION)


def test_client_aborts_when_u3_is_not_a_subset_of_u2(expect_abort):
    round_, request = _survivor_request(drop={1: {5}})
    forged = replace(request, survivors=request.survivors + (5,))
    expect_abort(round_.clients[VICTIM], lambda: round_.clients[VICTIM].receive(forged), AbortReason.NOT_A_SUBSET)


def test_client_aborts_when_u3_lists_a_client_twice(expect_abort):
    round_, request = _survivor_request()
    forged = replace(request, survivors=request.survivors + (request.survivors[-1],))
    expect_abort(round_.clients[VICTIM], lambda: round_.clients[VICTIM].receive(forged), AbortReason.DUPLICATE_PARTICIPANT)


def test_client_aborts_when_u3_is_below_threshold(expect_abort):
    round_, request = _survivor_request()
    forged = replace(request, survivors=request.survivors[: round_.config.threshold - 1])
    expect_abort(round_.clients[VICTIM], lambda: round_.clients[VICTIM].receive(forged), AbortReason.TOO_FEW_PARTICIPANTS)


def test_client_aborts_when_u3_omits_this_client(expect_abort):
    round_, request = _survivor_request()
    forged = replace(request, survivors=tuple(m for m in request.survivors if m != VICTIM))
    expect_abort(round_.clients[VICTIM], lambda: round_.clients[VICTIM].receive(forged), AbortReason.PREMATURE_UNMASK_REQUEST)


def test_client_aborts_when_active_server_skips_the_consistency_check(expect_abort):
    round_, request = _survivor_request()
    skipped = UnmaskingRequest(session_id=request.session_id, survivors=request.survivors, dropped=(), signatures=())
    expect_abort(round_.clients[VICTIM], lambda: round_.clients[VICTIM].receive(skipped), AbortReason.UNEXPECTED_MESSAGE)


def test_client_aborts_when_honest_but_curious_server_asks_for_a_consistency_check(expect_abort):
    round_ = make_round(7, mode=ProtocolMode.HONEST_BUT_CURIOUS)
    outbox = advance_to(round_, 3)
    request = outbox[VICTIM]
    assert isinstance(request, UnmaskingRequest)
    forged = ConsistencyCheckRequest(session_id=request.session_id, survivors=request.survivors)
    expect_abort(round_.clients[VICTIM], lambda: round_.clients[VICTIM].receive(forged), AbortReason.UNEXPECTED_MESSAGE)


def test_client_aborts_on_unmask_request_before_its_masked_input_was_sent(expect_abort):
    """The server asks for shares while the client still awaits U2: it could then hold both secrets."""
    round_ = make_round(7, mode=ProtocolMode.HONEST_BUT_CURIOUS)
    advance_to(round_, 2)
    client = round_.clients[VICTIM]
    assert client.stage is ClientStage.SHARE_KEYS
    premature = UnmaskingRequest(session_id=client.session_id, survivors=tuple(range(1, 7)), dropped=(0,), signatures=())
    expect_abort(client, lambda: client.receive(premature), AbortReason.PREMATURE_UNMASK_REQUEST)
