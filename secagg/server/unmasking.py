"""Server round R4 Unmasking: reconstruct secrets and remove the masks from the running sum.

For every dropped client v (in U2, not in U3) the server reconstructs s_sk(v) from t_s
shares, checks it against the advertised s_pk(v), and regenerates the pairwise masks
v shared with each surviving neighbour. For every survivor u it reconstructs b_u,
checks it against u's R1 commitment, and regenerates PRG(b_u). A wrong share is
detected, never silently used, and never blamed on the owner of the secret: when the
t_s shares with the lowest ids fail the check, the spare shares are searched for a
t_s-subset that passes (:meth:`~secagg.hazmat.shamir.ShamirScheme.reconstruct_verified`,
bounded by :data:`~secagg.hazmat.shamir.MAX_RECONSTRUCTION_CANDIDATES`); the round then
completes and every holder whose share is off that subset's polynomial is recorded as
an :class:`InconsistentShare`, provided the shares on it outnumber those off it by
t_s - 1 (the rule that keeps colluding holders from getting an honest one named; else the
secret is listed as unattributed). If no subset passes, the round aborts with
:data:`~secagg.errors.AbortReason.INCONSISTENT_SHARES`, naming the holders that
revealed shares of that secret (one or more of them is wrong), not the owner.

Without verifiable secret sharing a holder cannot prove which share the owner dealt
it, so "inconsistent" means the share a holder revealed is off the polynomial that
matches the owner's commitment: the holder revealed a wrong share, or a dishonest
owner dealt it one. An X25519 public key fixes the clamped scalar only, so a share
that moves just the clamped bits of s_sk would pass a public-key check and could make
honest shares look wrong. Clients generate clamped private keys
(:func:`~secagg.hazmat.keys.clamp_private_key`), and the search accepts a masking key
only in that canonical form. The first test of the t_s lowest shares accepts any key
with the advertised public key: such a key gives the same scalar and the same masks,
so the sum stays exact, and nobody is named on that path.

All masks are then removed in one block-wise pass
(:func:`secagg.hazmat.prg.accumulate_masks`); pairwise masks between two survivors
cancel by construction and are never expanded.

Cost: |U3| + sum over dropped v of |N(v) and U3| PRG expansions of the vector, which
is the minimum the protocol allows (Bonawitz et al. 2017, section 7.1).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from enum import Enum

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

from secagg.config import RoundConfig
from secagg.errors import AbortReason, ProtocolAbort
from secagg.graph import NeighbourMap
from secagg.hazmat.keys import AgreementKeyPair, InvalidPublicKey, is_clamped_private_key
from secagg.hazmat.prg import SignedSeed
from secagg.hazmat.shamir import SECRET_BYTES, InconsistentShares, ShamirError, ShamirScheme, int_to_secret, share_from_bytes
from secagg.messages import AdvertiseKeys, UnmaskingShares
from secagg.protocol import pairwise_mask_sign, pairwise_prg_seed, self_mask_commitment, self_mask_prg_seed

SHAMIR = ShamirScheme()
_SECRET_LIMIT = 1 << (8 * SECRET_BYTES)


class SecretKind(str, Enum):
    """Which of an owner's two shared secrets (Bonawitz et al. 2017, Figure 4, Round 1)."""

    SELF_MASK_SEED = "self-mask-seed"
    MASKING_KEY = "masking-key"


_DESCRIPTION = {
    SecretKind.SELF_MASK_SEED: ("self-mask seed", "commitment"),
    SecretKind.MASKING_KEY: ("masking key", "advertised public key"),
}


@dataclass(frozen=True, slots=True)
class InconsistentShare:
    """``holder`` revealed a share of ``owner``'s ``secret`` that is off the polynomial matching its commitment."""

    holder: int
    owner: int
    secret: SecretKind

    def describe(self) -> str:
        what, check = _DESCRIPTION[self.secret]
        return (
            f"participant {self.holder} revealed a share of the {what} of participant {self.owner} inconsistent with its {check}"
        )


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
    inconsistent_shares: tuple[InconsistentShare, ...] = ()
    unattributed: tuple[tuple[int, SecretKind], ...] = ()

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
            batch = []
            for peer in sorted(self.graph[owner] & self.survivors):
                try:
                    seed = pairwise_prg_seed(self.session_id, key_pair.private_key, self.masking_public_keys[peer], owner, peer)
                except InvalidPublicKey:
                    # R0 refuses such keys; this keeps a raw error from escaping the session regardless.
                    raise ProtocolAbort(
                        AbortReason.INVALID_PUBLIC_KEY, f"the masking key of participant {peer} is of small order"
                    ) from None
                batch.append(SignedSeed(seed, -pairwise_mask_sign(peer, owner)))
            yield batch


@dataclass(frozen=True, slots=True)
class _CommitmentMatching:
    """A candidate self-mask seed matches the commitment its owner sent in R1."""

    session_id: bytes
    owner: int
    commitment: bytes

    def __call__(self, seed: bytes) -> bool:
        return self_mask_commitment(self.session_id, self.owner, seed) == self.commitment


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
    """Reconstruct and verify every needed secret from ``responses``; raise ProtocolAbort on failure.

    The abort for secrets without a consistent set of shares
    (:data:`~secagg.errors.AbortReason.INCONSISTENT_SHARES`) names, in its detail and in
    :attr:`~secagg.errors.ProtocolAbort.participants`, every holder found inconsistent for
    any secret and, for each secret left unreconstructed, the other holders that revealed
    a share of it.
    """
    masking_key_shares: dict[int, dict[int, int]] = {owner: {} for owner in dropped}
    self_mask_shares: dict[int, dict[int, int]] = {owner: {} for owner in survivors}
    for responder, response in responses.items():
        for item in response.masking_key_shares:
            masking_key_shares[item.owner][responder] = share_from_bytes(item.share)
        for item in response.self_mask_shares:
            self_mask_shares[item.owner][responder] = share_from_bytes(item.share)

    reconstruction = _Reconstruction(config)
    dropped_keys: dict[int, AgreementKeyPair] = {}
    for owner in sorted(dropped):
        matching = _KeyMatching(advertised[owner].masking_public_key)
        if (
            reconstruction.secret(
                owner, SecretKind.MASKING_KEY, masking_key_shares[owner], matching, canonical=is_clamped_private_key
            )
            is not None
        ):
            dropped_keys[owner] = matching.key_pair
    seeds: dict[int, bytes] = {}
    for owner in sorted(survivors):
        seed = reconstruction.secret(
            owner,
            SecretKind.SELF_MASK_SEED,
            self_mask_shares[owner],
            _CommitmentMatching(session_id, owner, self_mask_commitments[owner]),
        )
        if seed is not None:
            seeds[owner] = seed
    reconstruction.raise_if_incomplete()
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
        inconsistent_shares=reconstruction.inconsistent,
        unattributed=reconstruction.unattributed,
    )


class _KeyMatching:
    """Test of a candidate s_sk against the advertised s_pk that keeps the key pair it derived."""

    def __init__(self, public_key: bytes) -> None:
        self._public_key = public_key
        self.key_pair: AgreementKeyPair

    def __call__(self, private_bytes: bytes) -> bool:
        key_pair = AgreementKeyPair.from_private_bytes(private_bytes)
        if key_pair.public_bytes != self._public_key:
            return False
        self.key_pair = key_pair
        return True


class _Reconstruction:
    """Verified reconstruction of every secret of one R4, collecting what the abort must name."""

    def __init__(self, config: RoundConfig) -> None:
        self._threshold = config.share_threshold
        self._coefficients: dict[tuple[tuple[int, ...], int], tuple[int, ...]] = {}
        self._inconsistent: list[InconsistentShare] = []
        self._unattributed: list[tuple[int, SecretKind]] = []
        self._unreconstructed: list[tuple[int, SecretKind, InconsistentShares]] = []

    @property
    def inconsistent(self) -> tuple[InconsistentShare, ...]:
        return tuple(self._inconsistent)

    @property
    def unattributed(self) -> tuple[tuple[int, SecretKind], ...]:
        return tuple(self._unattributed)

    def secret(
        self,
        owner: int,
        kind: SecretKind,
        shares: Mapping[int, int],
        matches: Callable[[bytes], bool],
        canonical: Callable[[bytes], bool] = lambda secret: True,
    ) -> bytes | None:
        """The verified secret, or None (recorded) when no subset of the shares matches the commitment.

        ``canonical`` further restricts what the search over spare shares accepts (the
        masking key must be clamped), so that the subset it names holders from is exact.
        """
        if len(shares) < self._threshold:
            raise ProtocolAbort(
                AbortReason.MISSING_SHARES,
                f"{len(shares)} shares of the {_DESCRIPTION[kind][0]} of participant {owner}, {self._threshold} needed",
            )
        # The path of every honest round, kept to one reconstruction and one check; the
        # search below starts again from the same t lowest shares only when it fails.
        try:
            value = SHAMIR.reconstruct(shares, self._threshold)
        except ShamirError:
            raise ProtocolAbort(
                AbortReason.INCONSISTENT_SHARES,
                f"a share of the {_DESCRIPTION[kind][0]} of participant {owner} is not a field element",
            ) from None
        if value < _SECRET_LIMIT:
            secret = int_to_secret(value)
            if matches(secret):
                return secret
        try:
            result = SHAMIR.reconstruct_verified(
                shares,
                self._threshold,
                lambda value: value < _SECRET_LIMIT and canonical(int_to_secret(value)) and matches(int_to_secret(value)),
                coefficient_cache=self._coefficients,
            )
        except InconsistentShares as failure:
            self._unreconstructed.append((owner, kind, failure))
            return None
        if result.inconsistent:
            self._inconsistent.extend(InconsistentShare(holder, owner, kind) for holder in sorted(result.inconsistent))
        elif result.unattributed:
            self._unattributed.append((owner, kind))
        return int_to_secret(result.secret)

    def raise_if_incomplete(self) -> None:
        if not self._unreconstructed:
            return
        named = {item.holder for item in self._inconsistent}
        parts = [item.describe() for item in self._inconsistent]
        for owner, kind in self._unattributed:
            what, _ = _DESCRIPTION[kind]
            parts.append(f"shares of the {what} of participant {owner} disagree beyond what can be attributed to their holders")
        for owner, kind, failure in self._unreconstructed:
            what, check = _DESCRIPTION[kind]
            others = sorted(holder for holder in failure.holders if holder != owner)
            named.update(others)
            bound = "" if failure.exhaustive else f" within the first {failure.candidates} subsets tried"
            parts.append(
                f"no {self._threshold} of the {len(failure.holders)} shares of the {what} of participant {owner} "
                f"match its {check}{bound}; one or more of those revealed by participants {others} is wrong"
            )
        raise InconsistentSharesAbort("; ".join(parts), participants=frozenset(named), inconsistent_shares=self.inconsistent)


class InconsistentSharesAbort(ProtocolAbort):
    """:data:`~secagg.errors.AbortReason.INCONSISTENT_SHARES`, with the shares already found off their polynomial."""

    def __init__(self, detail: str, *, participants: frozenset[int], inconsistent_shares: tuple[InconsistentShare, ...]) -> None:
        super().__init__(AbortReason.INCONSISTENT_SHARES, detail, participants=participants)
        self.inconsistent_shares = inconsistent_shares
