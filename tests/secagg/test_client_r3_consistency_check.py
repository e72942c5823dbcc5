"""Client R3 ConsistencyCheck (active mode): the unmasking request must carry at least t
valid signatures of U3 members over exactly the U3 this client signed."""

from __future__ import annotations

from dataclasses import replace

from secagg.errors import AbortReason
from secagg.messages import SignedSurvivors, UnmaskingShares
from secagg.protocol import survivors_statement
from tests.secagg.harness import advance_to, make_round

VICTIM = 0


def _unmasking_request(participants: int = 7, drop=None):
    round_ = make_round(participants)
    outbox = advance_to(round_, 4, drop=drop)
    return round_, outbox[VICTIM]


def test_client_answers_an_unmasking_request_with_t_valid_signatures():
    round_, request = _unmasking_request()
    assert len(request.signatures) >= round_.config.threshold
    assert isinstance(round_.clients[VICTIM].receive(request), UnmaskingShares)


def test_client_aborts_when_fewer_than_t_signatures_are_shown(expect_abort):
    round_, request = _unmasking_request()
    forged = replace(request, signatures=request.signatures[: round_.config.threshold - 1])
    expect_abort(round_.clients[VICTIM], lambda: round_.clients[VICTIM].receive(forged), AbortReason.INVALID_SIGNATURE)


def test_client_aborts_on_a_bad_signature(expect_abort):
    round_, request = _unmasking_request()
    bad = replace(request.signatures[2], signature=bytes(64))
    forged = replace(request, signatures=request.signatures[:2] + (bad,) + request.signatures[3:])
    expect_abort(round_.clients[VICTIM], lambda: round_.clients[VICTIM].receive(forged), AbortReason.INVALID_SIGNATURE)


def test_client_aborts_when_a_signature_is_attributed_to_another_signer(expect_abort):
    round_, request = _unmasking_request()
    moved = replace(request.signatures[1], signer=request.signatures[2].signer)
    forged = replace(request, signatures=(request.signatures[0], moved) + request.signatures[3:])
    expect_abort(round_.clients[VICTIM], lambda: round_.clients[VICTIM].receive(forged), AbortReason.INVALID_SIGNATURE)


def test_client_aborts_when_one_signer_appears_twice(expect_abort):
    round_, request = _unmasking_request()
    forged = replace(request, signatures=request.signatures + request.signatures[:1])
    expect_abort(round_.clients[VICTIM], lambda: round_.clients[VICTIM].receive(forged), AbortReason.DUPLICATE_PARTICIPANT)


def test_client_aborts_when_a_signer_is_outside_u3(expect_abort):
    round_, request = _unmasking_request(drop={2: {6}})
    outsider = SignedSurvivors(
        signer=6,
        signature=round_.identities[6].sign(survivors_statement(request.session_id, 6, request.survivors)),
    )
    forged = replace(request, signatures=request.signatures + (outsider,))
    expect_abort(round_.clients[VICTIM], lambda: round_.clients[VICTIM].receive(forged), AbortReason.NOT_A_SUBSET)


def test_client_aborts_when_u3_differs_from_the_set_it_signed(expect_abort):
    """The server told this client U3 = {0..6} but asks it to unmask for a smaller set."""
    round_, request = _unmasking_request()
    smaller = tuple(m for m in request.survivors if m != 6)
    signatures = tuple(
        SignedSurvivors(m, round_.identities[m].sign(survivors_statement(request.session_id, m, smaller))) for m in smaller
    )
    forged = replace(request, survivors=smaller, dropped=request.dropped + (6,), signatures=signatures)
    expect_abort(round_.clients[VICTIM], lambda: round_.clients[VICTIM].receive(forged), AbortReason.INCONSISTENT_DROPOUT_LISTS)


def test_client_aborts_when_signatures_cover_another_survivor_set(expect_abort):
    round_, request = _unmasking_request()
    other = request.survivors[:-1]
    signatures = tuple(
        SignedSurvivors(m, round_.identities[m].sign(survivors_statement(request.session_id, m, other)))
        for m in request.survivors
    )
    forged = replace(request, signatures=signatures)
    expect_abort(round_.clients[VICTIM], lambda: round_.clients[VICTIM].receive(forged), AbortReason.INVALID_SIGNATURE)
