"""Server round R4 Unmasking: reconstruct secrets and remove the masks from the running sum.

For every dropped client v (in U2, not in U3) the server reconstructs s_sk(v) from t_s
shares, checks it against the advertised s_pk(v), and regenerates the pairwise masks
v shared with each surviving neighbour. For every survivor u it reconstructs b_u,
checks it against u's R1 commitment, and regenerates PRG(b_u). A reconstruction that
fails its check names the owner (:data:`~secagg.errors.AbortReason.CORRUPT_SHARE`):
a corrupted share is detected, never silently used. All masks are then removed in one
block-wise pass (:func:`secagg.hazmat.prg.accumulate_masks`); pairwise masks between
two survivors cancel by construction and are never expanded.

Cost: |U3| + sum over dropped v of |N(v) and U3| PRG expansions of the vector, which
is the minimum the protocol allows (Bonawitz et al. 2017, section 7.1).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from secagg.config import RoundConfig
from secagg.errors import AbortReason, ProtocolAbort
from secagg.graph import NeighbourMap
from secagg.hazmat.keys import AgreementKeyPair
from secagg.hazmat.prg import SignedSeed
from secagg.hazmat.shamir import ShamirError, ShamirScheme, int_to_secret, share_from_bytes
from secagg.messages import AdvertiseKeys, UnmaskingShares
from secagg.protocol import pairwise_mask_sign, pairwise_prg_seed, self_mask_commitment, self_mask_prg_seed

SHAMIR = ShamirScheme()


@dataclass(frozen=True, slots=True)
class UnmaskingPlan:
    """The masks to subtract from the running sum, and what was reconstructed to find them."""

    masks: tuple[SignedSeed, ...]
    reconstructed_masking_keys: int
    reconstructed_self_masks: int


def plan_unmasking(
    config: RoundConfig,
    session_id: bytes,
    graph: NeighbourMap,
    advertised: Mapping[int, AdvertiseKeys],
    self_mask_commitments: Mapping[int, bytes],
    survivors: frozenset[int],
    dropped: frozenset[int],
    responses: Mapping[int, UnmaskingShares],
) -> UnmaskingPlan:
    """Reconstruct every needed secret from ``responses``; raise ProtocolAbort on failure."""
    masking_key_shares: dict[int, dict[int, int]] = {owner: {} for owner in dropped}
    self_mask_shares: dict[int, dict[int, int]] = {owner: {} for owner in survivors}
    for responder, response in responses.items():
        for item in response.masking_key_shares:
            masking_key_shares[item.owner][responder] = share_from_bytes(item.share)
        for item in response.self_mask_shares:
            self_mask_shares[item.owner][responder] = share_from_bytes(item.share)

    masks: list[SignedSeed] = []
    for owner in sorted(dropped):
        private_key = _reconstruct(config, owner, masking_key_shares[owner], "masking key")
        key_pair = AgreementKeyPair.from_private_bytes(private_key)
        if key_pair.public_bytes != advertised[owner].masking_public_key:
            raise ProtocolAbort(AbortReason.CORRUPT_SHARE, f"reconstructed masking key of participant {owner} does not match its public key")
        for peer in sorted(graph[owner] & survivors):
            seed = pairwise_prg_seed(session_id, key_pair.private_key, advertised[peer].masking_public_key, owner, peer)
            masks.append(SignedSeed(seed, -pairwise_mask_sign(peer, owner)))
    for owner in sorted(survivors):
        seed = _reconstruct(config, owner, self_mask_shares[owner], "self-mask seed")
        if self_mask_commitment(session_id, owner, seed) != self_mask_commitments[owner]:
            raise ProtocolAbort(AbortReason.CORRUPT_SHARE, f"reconstructed self-mask seed of participant {owner} does not match its commitment")
        masks.append(SignedSeed(self_mask_prg_seed(session_id, owner, seed), -1))
    return UnmaskingPlan(masks=tuple(masks), reconstructed_masking_keys=len(dropped), reconstructed_self_masks=len(survivors))


def _reconstruct(config: RoundConfig, owner: int, shares: Mapping[int, int], what: str) -> bytes:
    if len(shares) < config.share_threshold:
        raise ProtocolAbort(
            AbortReason.MISSING_SHARES,
            f"{len(shares)} shares of the {what} of participant {owner}, {config.share_threshold} needed",
        )
    try:
        return int_to_secret(SHAMIR.reconstruct(shares, config.share_threshold))
    except ShamirError:
        raise ProtocolAbort(AbortReason.CORRUPT_SHARE, f"shares of the {what} of participant {owner} are inconsistent") from None
