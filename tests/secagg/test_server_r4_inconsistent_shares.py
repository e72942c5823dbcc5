"""Server R4 against a client that reveals a wrong but well-formed share of another client's secret.

Reconstruction is verified against the owner's commitment (b_u against its R1 commitment,
s_sk against the advertised s_pk). When the shares with the t lowest ids fail, spare shares
are used to find a t-subset that passes; the round then completes and the holders whose
shares are off that subset's polynomial are named. When no such subset exists the round
aborts with ``inconsistent-shares``, naming the holders that revealed shares, never the owner.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from secagg.config import ProtocolMode
from secagg.errors import AbortReason, ProtocolAbort
from secagg.hazmat.keys import agreement_public_key
from secagg.hazmat.shamir import FIELD_PRIME, SHARE_BYTES, ShamirScheme
from secagg.messages import RevealedShare, UnmaskingShares
from secagg.server import InconsistentShare, SecretKind, ServerStage
from tests.secagg.harness import advance_to, collect, deliver, make_round


def _awaiting_unmasking(participants: int, threshold: int, *, drop=None, mode=ProtocolMode.ACTIVE, seed=0):
    """A round whose server collects R4, with every R4 reply pending."""
    round_ = make_round(participants, threshold=threshold, mode=mode, seed=seed)
    outbox = advance_to(round_, 4 if mode is ProtocolMode.ACTIVE else 3, drop=drop)
    deliver(round_, outbox)
    return round_


def _shifted(share: bytes) -> bytes:
    """Another element of GF(p): well formed, accepted by the server, and wrong."""
    return ((int.from_bytes(share, "big") + 1) % FIELD_PRIME).to_bytes(SHARE_BYTES, "big")


def _with_wrong_share(message: UnmaskingShares, owner: int, *, masking_key: bool = False) -> UnmaskingShares:
    field = "masking_key_shares" if masking_key else "self_mask_shares"
    items = tuple(
        RevealedShare(owner=item.owner, share=_shifted(item.share)) if item.owner == owner else item
        for item in getattr(message, field)
    )
    return replace(message, **{field: items})


def test_a_wrong_self_mask_share_names_its_holder_and_the_round_still_completes():
    """Five banks, t = 4, all answer R4; bank 1 reveals a wrong share of bank 2's self-mask seed."""
    round_ = _awaiting_unmasking(5, 4)
    round_.pending[1] = _with_wrong_share(round_.pending[1], owner=2)
    assert collect(round_) == {}
    assert round_.server.stage is ServerStage.COMPLETED
    np.testing.assert_array_equal(round_.server.result, round_.expected_sum(range(5)))
    assert round_.server.inconsistent_shares == (InconsistentShare(holder=1, owner=2, secret=SecretKind.SELF_MASK_SEED),)


def test_a_wrong_masking_key_share_names_its_holder_and_the_round_still_completes():
    round_ = _awaiting_unmasking(7, 5, drop={2: {6}})
    round_.pending[0] = _with_wrong_share(round_.pending[0], owner=6, masking_key=True)
    collect(round_)
    assert round_.server.stage is ServerStage.COMPLETED
    np.testing.assert_array_equal(round_.server.result, round_.expected_sum(range(6)))
    assert round_.server.inconsistent_shares == (InconsistentShare(holder=0, owner=6, secret=SecretKind.MASKING_KEY),)


def test_two_holders_with_wrong_shares_of_one_secret_are_both_named_when_enough_spares_remain():
    """Ten answer, t = 7: three spare shares, enough to outvote two wrong ones (r >= t + 2e - 1)."""
    round_ = _awaiting_unmasking(10, 7)
    for holder in (0, 3):
        round_.pending[holder] = _with_wrong_share(round_.pending[holder], owner=5)
    collect(round_)
    assert round_.server.stage is ServerStage.COMPLETED
    np.testing.assert_array_equal(round_.server.result, round_.expected_sum(range(10)))
    assert {(item.holder, item.owner) for item in round_.server.inconsistent_shares} == {(0, 5), (3, 5)}
    assert round_.server.unattributed_secrets == ()


def test_two_wrong_shares_with_too_few_spares_to_outvote_them_complete_the_round_without_naming_anyone():
    """Eight answer, t = 6: two wrong shares of one seed are as many as two honest ones framed by three
    colluders would be, so the seed is reconstructed from a consistent subset but nobody is named."""
    round_ = _awaiting_unmasking(8, 6)
    for holder in (0, 3):
        round_.pending[holder] = _with_wrong_share(round_.pending[holder], owner=5)
    collect(round_)
    assert round_.server.stage is ServerStage.COMPLETED
    np.testing.assert_array_equal(round_.server.result, round_.expected_sum(range(8)))
    assert round_.server.inconsistent_shares == ()
    assert round_.server.unattributed_secrets == ((5, SecretKind.SELF_MASK_SEED),)


def test_one_holder_with_wrong_shares_of_every_secret_is_the_only_one_named():
    round_ = _awaiting_unmasking(7, 5, drop={2: {6}})
    message = _with_wrong_share(round_.pending[2], owner=6, masking_key=True)
    for owner in range(6):
        message = _with_wrong_share(message, owner=owner)
    round_.pending[2] = message
    collect(round_)
    assert round_.server.stage is ServerStage.COMPLETED
    np.testing.assert_array_equal(round_.server.result, round_.expected_sum(range(6)))
    assert {item.holder for item in round_.server.inconsistent_shares} == {2}
    assert {item.owner for item in round_.server.inconsistent_shares} == set(range(7))


def test_without_a_consistent_set_of_shares_the_abort_names_the_holders_and_not_the_owner():
    """t = 4 and only four banks answer R4: no spare share, so the wrong one cannot be singled out."""
    round_ = _awaiting_unmasking(5, 4)
    del round_.pending[4]
    round_.pending[1] = _with_wrong_share(round_.pending[1], owner=2)
    with pytest.raises(ProtocolAbort) as caught:
        collect(round_)
    abort = caught.value
    assert abort.reason is AbortReason.INCONSISTENT_SHARES
    assert abort.participants == frozenset({0, 1, 3})
    assert "participants [0, 1, 3]" in abort.detail
    assert "does not match its commitment" not in abort.detail
    assert round_.server.stage is ServerStage.ABORTED
    assert round_.server.abort_reason is AbortReason.INCONSISTENT_SHARES


def test_every_secret_without_a_consistent_set_of_shares_is_reported_in_the_one_abort():
    round_ = _awaiting_unmasking(5, 4)
    del round_.pending[4]
    round_.pending[1] = _with_wrong_share(round_.pending[1], owner=2)
    round_.pending[3] = _with_wrong_share(round_.pending[3], owner=0)
    with pytest.raises(ProtocolAbort) as caught:
        collect(round_)
    assert caught.value.reason is AbortReason.INCONSISTENT_SHARES
    assert caught.value.participants == frozenset({0, 1, 2, 3})
    assert "participant 0" in caught.value.detail and "participant 2" in caught.value.detail


def test_one_holder_cannot_get_an_honest_holder_named_by_shifting_only_the_clamped_bits_of_a_masking_key():
    """An X25519 public key fixes only the clamped scalar. Holder 1 shifts its share of the dropped client
    5's s_sk so that the lowest four shares fail the public-key check while {1, 2, 3, 4}, the first subset
    tried after them, reconstructs s_sk + 2^248: another byte string with the same public key. Generated
    private keys are canonical (clamped), and the search accepts only a canonical key, so that subset is
    refused, the next one passes, and holder 1 is the one named."""
    round_ = _awaiting_unmasking(6, 4, drop={2: {5}}, mode=ProtocolMode.HONEST_BUT_CURIOUS)
    private = round_.clients[5]._state.keys.masking.private_bytes
    shift = 1 << 248
    assert int.from_bytes(private, "big") & (7 << 248) == 0
    scheme = ShamirScheme()
    share_delta = shift * pow(scheme.lagrange_at_zero((1, 2, 3, 4))[1], -1, FIELD_PRIME) % FIELD_PRIME
    message = round_.pending[1]
    items = tuple(
        RevealedShare(
            owner=5, share=((int.from_bytes(item.share, "big") + share_delta) % FIELD_PRIME).to_bytes(SHARE_BYTES, "big")
        )
        for item in message.masking_key_shares
    )
    round_.pending[1] = replace(message, masking_key_shares=items)
    shifted = (int.from_bytes(private, "big") + shift).to_bytes(32, "big")
    assert agreement_public_key(shifted) == agreement_public_key(private)
    collect(round_)
    assert round_.server.stage is ServerStage.COMPLETED
    np.testing.assert_array_equal(round_.server.result, round_.expected_sum(range(5)))
    assert round_.server.inconsistent_shares == (InconsistentShare(holder=1, owner=5, secret=SecretKind.MASKING_KEY),)
