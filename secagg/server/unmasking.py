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

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

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
    """Every secret R4 needs, reconstructed and verified; the masks follow in batches.

    Reconstruction and verification happen in :func:`plan_unmasking`, before anything
    touches the running sum, so a corrupted share aborts the round with the sum intact.
    :meth:`mask_batches` then derives the seeds (one X25519 agreement per pair) batch
    by batch. The expansion of a batch already uses every thread it is given, so
    deriving the next batch meanwhile would only compete with it for the same cores.
    """

    session_id: bytes
    graph: NeighbourMap
    masking_public_keys: Mapping[int, X25519PublicKey]
    survivors: frozenset[int]
    dropped_masking_keys: Mapping[int, AgreementKeyPair]
    self_mask_seeds: Mapping[int, bytes]

    @property
    def mask_count(self) -> int:
        return len(self.self_mask_seeds) + sum(len(self.graph[owner] & self.survivors) for owner in self.dropped_masking_keys)

    def mask_batches(self) -> Iterator[list[SignedSeed]]:
        """The survivors' self-masks, then each dropped client's pairwise masks with its surviving neighbours."""
        yield [
            SignedSeed(self_mask_prg_seed(self.session_id, owner, seed), -1)
            for owner, seed in sorted(self.self_mask_seeds.items())
        ]
        for owner, key_pair in sorted(self.dropped_masking_keys.items()):
            yield [
                SignedSeed(
                    pairwise_prg_seed(self.session_id, key_pair.private_key, self.masking_public_keys[peer], owner, peer),
                    -pairwise_mask_sign(peer, owner),
                )
                for peer in sorted(self.graph[owner] & self.survivors)
            ]


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
    """Reconstruct and verify every needed secret from ``responses``; raise ProtocolAbort on failure."""
    masking_key_shares: dict[int, dict[int, int]] = {owner: {} for owner in dropped}
    self_mask_shares: dict[int, dict[int, int]] = {owner: {} for owner in survivors}
    for responder, response in responses.items():
        for item in response.masking_key_shares:
            masking_key_shares[item.owner][responder] = share_from_bytes(item.share)
        for item in response.self_mask_shares:
            self_mask_shares[item.owner][responder] = share_from_bytes(item.share)

    dropped_keys: dict[int, AgreementKeyPair] = {}
    for owner in sorted(dropped):
        key_pair = AgreementKeyPair.from_private_bytes(_reconstruct(config, owner, masking_key_shares[owner], "masking key"))
        if key_pair.public_bytes != advertised[owner].masking_public_key:
            raise ProtocolAbort(
                AbortReason.CORRUPT_SHARE, f"reconstructed masking key of participant {owner} does not match its public key"
            )
        dropped_keys[owner] = key_pair
    seeds: dict[int, bytes] = {}
    for owner in sorted(survivors):
        seed = _reconstruct(config, owner, self_mask_shares[owner], "self-mask seed")
        if self_mask_commitment(session_id, owner, seed) != self_mask_commitments[owner]:
            raise ProtocolAbort(
                AbortReason.CORRUPT_SHARE, f"reconstructed self-mask seed of participant {owner} does not match its commitment"
            )
        seeds[owner] = seed
    try:
        peer_keys = {peer: X25519PublicKey.from_public_bytes(advertised[peer].masking_public_key) for peer in survivors}
    except ValueError:
        raise ProtocolAbort(AbortReason.INVALID_PUBLIC_KEY, "an advertised masking key is malformed") from None
    return UnmaskingPlan(
        session_id=session_id,
        graph=graph,
        masking_public_keys=peer_keys,
        survivors=survivors,
        dropped_masking_keys=dropped_keys,
        self_mask_seeds=seeds,
    )


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
