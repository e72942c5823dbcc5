"""Round parameters, threshold rules and the session id.

A round is fixed before R0 by :class:`RoundConfig`: the cohort's Ed25519 identity
keys (participant ``i`` is ``identity_keys[i]``, 0-based), the threshold t, the
mode, the neighbour graph, the vector length and the ring. Its :meth:`digest`
binds all of them; every R0 signature covers it.

Threshold rules (Bonawitz et al. 2017, section 6; docs/DESIGN.md section 2), enforced by
the server *and* every client:

* honest-but-curious: t >= floor(n/2) + 1 — a coalition of the server and fewer than
  t clients cannot both unmask a self-mask and reconstruct a pairwise key;
* active: t >= floor(2n/3) + 1 — additionally a lying server cannot split the honest
  clients into two groups that each reach t (Bonawitz et al. 2017, Theorem 6.3).

For a SecAgg+ Harary graph of degree k (Bell et al. 2020, section 3), each client's
secrets are shared within its neighbourhood of k + 1 clients (itself and its k
neighbours) with the neighbourhood threshold t_s of :func:`neighbourhood_threshold`:
the mode's rule over k + 1, and never below k/2 + 2, so that no dropout pattern the
checks permit can split the survivors' graph (a split would let the server unmask
the sum over each piece separately).
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

from secagg.encoding import Ring
from secagg.errors import ConfigurationError, EncodingError
from secagg.hazmat.kdf import PROTOCOL_LABEL
from secagg.hazmat.keys import PUBLIC_KEY_BYTES

PROTOCOL_VERSION = 1
ROUND_ID_MIN_BYTES = 16
ROUND_ID_MAX_BYTES = 64
MAX_DIM = 1 << 30
MAX_PARTICIPANTS = 1 << 16
SESSION_ID_BYTES = 32
MANIFEST_HASH_BYTES = 32
MAX_TRAINING_ROUND = (1 << 32) - 1
TRAINING_BINDING_LABEL = b"/training/"
"""Separates the training binding from the cohort's keys in the digest (docs/WIRE.md section 8)."""


class ProtocolMode(str, Enum):
    """Adversary model (Bonawitz et al. 2017, sections 6.2 and 6.3)."""

    HONEST_BUT_CURIOUS = "honest-but-curious"
    ACTIVE = "active"


class GraphKind(str, Enum):
    """Who shares keys and masks with whom."""

    FULL = "full"
    HARARY = "harary"


def minimum_threshold(mode: ProtocolMode, group_size: int) -> int:
    """The smallest safe threshold for ``group_size`` parties under ``mode``."""
    if mode is ProtocolMode.ACTIVE:
        return (2 * group_size) // 3 + 1
    return group_size // 2 + 1


def neighbourhood_threshold(mode: ProtocolMode, degree: int) -> int:
    """t_s of a Harary graph of degree k: the Shamir threshold of each client's secrets, and
    how many members of its neighbourhood (itself included) must survive for it to unmask.

    The larger of two rules:

    * the mode's rule over the k + 1 members of a neighbourhood (Bell et al. 2020, section 3):
      the server and fewer than t_s members of one neighbourhood cannot reconstruct both
      secrets of a client;
    * k/2 + 2: a client goes on only while at most k/2 - 1 of its k neighbours are missing.

    Why the second rule. With pairwise masks the server can unmask the sum over any union of
    connected components of the graph induced by the survivors U3. Cutting H(k, m), m >= k + 2,
    takes two runs of at least k/2 consecutive non-survivors on the cycle (an edge spans up to
    k/2 positions, so a shorter run is bridged), and each piece is bordered by a survivor that
    misses the k/2 neighbours on that side. Under this rule that survivor refuses to unmask,
    and the other holders of its self-mask seed number at most k/2 < t_s, so the server cannot
    remove its self-mask and no piece can be unmasked: no dropout pattern that the checks permit
    leaks a partial sum. The mode's rule alone gives k/2 + 1 in honest-but-curious mode, which
    lets a survivor miss k/2 neighbours and so lets two runs of k/2 dropouts cut the ring with
    every check passing; in active mode the mode's rule already exceeds k/2 + 1. Bell et al.
    2020 (section 3) bound what the server learns by the sums over large pieces of the honest
    survivors' graph; this protocol releases no share for a split graph at all (every client
    also checks that U3 induces a connected graph before it unmasks).
    """
    if degree < 2 or degree % 2:
        raise ConfigurationError("harary degree must be even and at least 2")
    return max(minimum_threshold(mode, degree + 1), degree // 2 + 2)


@dataclass(frozen=True, slots=True)
class RoundConfig:
    """Everything the parties agree on before R0 AdvertiseKeys.

    ``degree`` is the Harary graph's degree k (even, 2 <= k <= n - 2) and must be
    ``None`` for the full graph.

    ``manifest_hash`` and ``training_round`` bind the round to one step of a consortium's
    training (:mod:`secagg.consortium`): the SHA-256 of the manifest every member signed
    and the step's number (0 for the statistics round, 1.. for the training rounds). Both
    or neither; without them the digest is exactly the version-1 digest of a round that
    belongs to no training.
    """

    round_id: bytes
    identity_keys: tuple[bytes, ...]
    threshold: int
    dim: int
    bits: int = 32
    mode: ProtocolMode = ProtocolMode.ACTIVE
    graph: GraphKind = GraphKind.FULL
    degree: int | None = None
    manifest_hash: bytes | None = None
    training_round: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "identity_keys", tuple(self.identity_keys))
        object.__setattr__(self, "mode", ProtocolMode(self.mode))
        object.__setattr__(self, "graph", GraphKind(self.graph))
        if not isinstance(self.round_id, bytes) or not ROUND_ID_MIN_BYTES <= len(self.round_id) <= ROUND_ID_MAX_BYTES:
            raise ConfigurationError(f"round_id must be {ROUND_ID_MIN_BYTES}..{ROUND_ID_MAX_BYTES} bytes")
        n = len(self.identity_keys)
        if not 2 <= n <= MAX_PARTICIPANTS:
            raise ConfigurationError(f"a round needs 2..{MAX_PARTICIPANTS} participants, got {n}")
        for key in self.identity_keys:
            if not isinstance(key, bytes) or len(key) != PUBLIC_KEY_BYTES:
                raise ConfigurationError("identity keys are 32-byte Ed25519 public keys")
        if len(set(self.identity_keys)) != n:
            raise ConfigurationError("two participants share an identity key")
        if not isinstance(self.dim, int) or not 1 <= self.dim <= MAX_DIM:
            raise ConfigurationError(f"dim must be in 1..{MAX_DIM}")
        try:
            Ring(self.bits)
        except EncodingError as exc:
            raise ConfigurationError(str(exc)) from None
        rule = minimum_threshold(self.mode, n)
        if not isinstance(self.threshold, int) or not rule <= self.threshold <= n:
            raise ConfigurationError(
                f"threshold {self.threshold} is unsafe for {n} participants in {self.mode.value} mode: it must be in {rule}..{n}"
            )
        if self.graph is GraphKind.FULL:
            if self.degree is not None:
                raise ConfigurationError("degree applies only to the harary graph")
        else:
            if not isinstance(self.degree, int) or self.degree < 2 or self.degree % 2 or self.degree > n - 2:
                raise ConfigurationError(
                    f"harary degree must be even and in 2..{n - 2} for {n} participants (use the full graph otherwise)"
                )
        if (self.manifest_hash is None) != (self.training_round is None):
            raise ConfigurationError("manifest_hash and training_round go together")
        if self.manifest_hash is not None:
            if not isinstance(self.manifest_hash, bytes) or len(self.manifest_hash) != MANIFEST_HASH_BYTES:
                raise ConfigurationError(f"manifest_hash must be {MANIFEST_HASH_BYTES} bytes")
            round_number = self.training_round
            if isinstance(round_number, bool) or not isinstance(round_number, int) or not 0 <= round_number <= MAX_TRAINING_ROUND:
                raise ConfigurationError(f"training_round must be an integer in 0..{MAX_TRAINING_ROUND}")

    @property
    def participant_count(self) -> int:
        return len(self.identity_keys)

    @property
    def participant_ids(self) -> range:
        return range(len(self.identity_keys))

    @property
    def ring(self) -> Ring:
        return Ring(self.bits)

    @property
    def neighbourhood_size(self) -> int:
        """A client plus its neighbours: n for the full graph, k + 1 for Harary."""
        if self.graph is GraphKind.FULL:
            return self.participant_count
        assert self.degree is not None
        return self.degree + 1

    @property
    def share_threshold(self) -> int:
        """Shares needed to reconstruct one client's secret (t_s).

        The full graph uses t itself (Bonawitz et al. 2017). A Harary neighbourhood uses
        :func:`neighbourhood_threshold` (Bell et al. 2020, section 3), which also keeps the
        survivors' graph connected under every dropout pattern the checks permit.
        """
        if self.graph is GraphKind.FULL:
            return self.threshold
        assert self.degree is not None
        return neighbourhood_threshold(self.mode, self.degree)

    def digest(self) -> bytes:
        """SHA-256 of a canonical encoding of every parameter; signed in R0.

        A round bound to a training appends ``"/training/" || manifest_hash || u32
        training_round`` after the cohort's keys (docs/WIRE.md section 8); the encoding
        before it has a length fixed by its own fields, so no unbound round can share a
        digest with a bound one.
        """
        header = struct.pack(
            ">BBBBIIIH",
            PROTOCOL_VERSION,
            self.bits,
            list(ProtocolMode).index(self.mode),
            list(GraphKind).index(self.graph),
            self.threshold,
            self.dim,
            self.degree or 0,
            len(self.round_id),
        )
        hasher = hashlib.sha256(PROTOCOL_LABEL + b"/round-config/")
        hasher.update(header + self.round_id + struct.pack(">I", self.participant_count))
        for key in self.identity_keys:
            hasher.update(key)
        if self.manifest_hash is not None:
            assert self.training_round is not None
            hasher.update(TRAINING_BINDING_LABEL + self.manifest_hash + struct.pack(">I", self.training_round))
        return hasher.digest()


def session_id(config_digest: bytes, advertised: Sequence[tuple[int, bytes, bytes]]) -> bytes:
    """The session id: SHA-256 over the round's digest and every advertised key pair.

    ``advertised`` holds (participant id, encryption public key, masking public key)
    for each member of U1. The id goes into every KDF ``info``, every AEAD's
    associated data and every R3 signature (docs/DESIGN.md, section 2), so nothing from
    one session can be replayed into another.
    """
    hasher = hashlib.sha256(PROTOCOL_LABEL + b"/session/" + config_digest)
    for participant_id, encryption_key, masking_key in sorted(advertised):
        hasher.update(struct.pack(">I", participant_id) + encryption_key + masking_key)
    return hasher.digest()
