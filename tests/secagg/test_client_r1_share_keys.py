"""Client R1 ShareKeys: shares are encrypted per direction and bound to their context;
a malicious server's U2 or relayed ciphertexts are refused, each condition by name."""

from __future__ import annotations

from dataclasses import replace

import pytest

from secagg.client import ClientStage
from secagg.errors import AbortReason
from secagg.messages import EncryptedShares, MaskedInput, ShareKeys
from tests.secagg.harness import advance_to, make_round

VICTIM = 0


def _request(participants: int = 7, drop=None, **kwargs):
    round_ = make_round(participants, **kwargs)
    outbox = advance_to(round_, 2, drop=drop)
    return round_, outbox[VICTIM]


def test_share_keys_sends_one_ciphertext_per_neighbour_and_a_commitment():
    round_ = make_round(5)
    outbox = advance_to(round_, 1)
    reply = round_.clients[2].receive(outbox[2])
    assert isinstance(reply, ShareKeys)
    assert [item.recipient for item in reply.encrypted_shares] == [0, 1, 3, 4]
    assert len({item.ciphertext for item in reply.encrypted_shares}) == 4
    assert len(reply.self_mask_commitment) == 32


def test_client_accepts_an_honest_request_and_sends_its_masked_input():
    round_, request = _request()
    reply = round_.clients[VICTIM].receive(request)
    assert isinstance(reply, MaskedInput)
    assert reply.masked_vector.shape == (round_.config.dim,)
    assert round_.clients[VICTIM].stage is ClientStage.MASKED_INPUT_COLLECTION


def test_client_aborts_when_request_is_for_another_session(expect_abort):
    round_, request = _request()
    forged = replace(request, session_id=bytes(32))
    expect_abort(round_.clients[VICTIM], lambda: round_.clients[VICTIM].receive(forged), AbortReason.WRONG_SESSION)


def test_client_aborts_when_request_is_addressed_to_another_client(expect_abort):
    round_, request = _request()
    forged = replace(request, recipient=1)
    expect_abort(round_.clients[VICTIM], lambda: round_.clients[VICTIM].receive(forged), AbortReason.WRONG_SESSION)


def test_client_aborts_when_u2_is_not_a_subset_of_u1(expect_abort):
    round_, request = _request(drop={0: {6}})
    forged = replace(request, survivors=request.survivors + (6,))
    expect_abort(round_.clients[VICTIM], lambda: round_.clients[VICTIM].receive(forged), AbortReason.NOT_A_SUBSET)


def test_client_aborts_when_u2_lists_a_client_twice(expect_abort):
    round_, request = _request()
    forged = replace(request, survivors=request.survivors + (3,))
    expect_abort(round_.clients[VICTIM], lambda: round_.clients[VICTIM].receive(forged), AbortReason.DUPLICATE_PARTICIPANT)


def test_client_aborts_when_u2_is_below_threshold(expect_abort):
    round_, request = _request()
    keep = request.survivors[: round_.config.threshold - 1]
    forged = replace(request, survivors=keep, encrypted_shares=tuple(i for i in request.encrypted_shares if i.sender in keep))
    expect_abort(round_.clients[VICTIM], lambda: round_.clients[VICTIM].receive(forged), AbortReason.TOO_FEW_PARTICIPANTS)


def test_client_aborts_when_u2_omits_this_client(expect_abort):
    round_, request = _request()
    forged = replace(request, survivors=tuple(m for m in request.survivors if m != VICTIM))
    expect_abort(round_.clients[VICTIM], lambda: round_.clients[VICTIM].receive(forged), AbortReason.EXCLUDED)


def test_client_aborts_when_a_neighbours_ciphertext_is_missing(expect_abort):
    round_, request = _request()
    forged = replace(request, encrypted_shares=request.encrypted_shares[1:])
    expect_abort(round_.clients[VICTIM], lambda: round_.clients[VICTIM].receive(forged), AbortReason.MISSING_SHARES)


def test_client_aborts_when_two_ciphertexts_come_from_one_sender(expect_abort):
    round_, request = _request()
    forged = replace(request, encrypted_shares=request.encrypted_shares + request.encrypted_shares[:1])
    expect_abort(round_.clients[VICTIM], lambda: round_.clients[VICTIM].receive(forged), AbortReason.DUPLICATE_PARTICIPANT)


def _flip(ciphertext: bytes, index: int) -> bytes:
    return ciphertext[:index] + bytes([ciphertext[index] ^ 1]) + ciphertext[index + 1 :]


@pytest.mark.parametrize("position", [0, 11, 12, 40, -1], ids=["nonce", "nonce-end", "body-start", "body", "tag"])
def test_client_aborts_on_a_tampered_ciphertext(expect_abort, position):
    round_, request = _request()
    first = request.encrypted_shares[0]
    tampered = replace(first, ciphertext=_flip(first.ciphertext, position % len(first.ciphertext)))
    forged = replace(request, encrypted_shares=(tampered,) + request.encrypted_shares[1:])
    error = expect_abort(round_.clients[VICTIM], lambda: round_.clients[VICTIM].receive(forged), AbortReason.DECRYPTION_FAILED)
    assert str(error) == "decryption-failed: decryption failed"


def test_client_aborts_when_a_ciphertext_for_another_recipient_is_relabelled(expect_abort):
    """The server moves sender 2's ciphertext for client 1 into client 0's request: AAD and key differ."""
    round_ = make_round(7)
    outbox = advance_to(round_, 2)
    stolen = next(item for item in outbox[1].encrypted_shares if item.sender == 2)
    request = outbox[VICTIM]
    relabelled = tuple(
        EncryptedShares(sender=2, recipient=VICTIM, ciphertext=stolen.ciphertext) if item.sender == 2 else item
        for item in request.encrypted_shares
    )
    forged = replace(request, encrypted_shares=relabelled)
    error = expect_abort(round_.clients[VICTIM], lambda: round_.clients[VICTIM].receive(forged), AbortReason.DECRYPTION_FAILED)
    assert str(error) == "decryption-failed: decryption failed"


def test_client_aborts_when_a_ciphertext_is_attributed_to_another_sender(expect_abort):
    round_, request = _request()
    by_sender = {item.sender: item for item in request.encrypted_shares}
    swapped = tuple(
        replace(item, ciphertext=by_sender[{1: 2, 2: 1}.get(item.sender, item.sender)].ciphertext)
        for item in request.encrypted_shares
    )
    forged = replace(request, encrypted_shares=swapped)
    expect_abort(round_.clients[VICTIM], lambda: round_.clients[VICTIM].receive(forged), AbortReason.DECRYPTION_FAILED)


def test_client_aborts_when_a_ciphertext_is_replayed_from_another_session(expect_abort):
    round_, request = _request(seed=1)
    _, old_request = _request(seed=2)
    replayed = replace(request.encrypted_shares[0], ciphertext=old_request.encrypted_shares[0].ciphertext)
    forged = replace(request, encrypted_shares=(replayed,) + request.encrypted_shares[1:])
    expect_abort(round_.clients[VICTIM], lambda: round_.clients[VICTIM].receive(forged), AbortReason.DECRYPTION_FAILED)
