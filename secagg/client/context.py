"""What a client knows for the whole round, and the checks every round state shares."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from secagg.config import RoundConfig
from secagg.errors import AbortReason, EncodingError, ProtocolAbort
from secagg.graph import NeighbourMap
from secagg.hazmat.keys import InvalidPublicKey, SigningKey
from secagg.hazmat.randomness import RandomSource


@dataclass(frozen=True, slots=True)
class ClientContext:
    """A client's fixed inputs: the round, its id, its identity key, randomness and its input.

    ``input_vector`` is already an element of Z_2^b^dim (see :mod:`secagg.encoding`);
    it is copied and made read-only, so the caller cannot change it mid-round.
    """

    config: RoundConfig
    participant_id: int
    identity_key: SigningKey
    source: RandomSource
    input_vector: np.ndarray = field(repr=False)

    def __post_init__(self) -> None:
        if self.participant_id not in self.config.participant_ids:
            raise EncodingError(f"participant id {self.participant_id} is not in the round's cohort")
        if self.identity_key.public_bytes != self.config.identity_keys[self.participant_id]:
            raise EncodingError("identity key does not match the cohort entry for this participant")
        ring = self.config.ring
        vector = np.asarray(self.input_vector)
        if vector.ndim != 1 or vector.size != self.config.dim:
            raise EncodingError(f"input must be a vector of length {self.config.dim}")
        if vector.dtype != ring.dtype.newbyteorder("="):
            raise EncodingError(f"input must have dtype {ring.dtype} for a {ring.bits}-bit ring; encode it first")
        if not ring.is_reduced(vector):
            raise EncodingError(f"input has elements outside Z_2^{ring.bits}")
        frozen = np.array(vector, dtype=ring.dtype, copy=True)
        frozen.setflags(write=False)
        object.__setattr__(self, "input_vector", frozen)


def require(condition: bool, reason: AbortReason, detail: str) -> None:
    """Abort the round with ``reason`` unless ``condition`` holds."""
    if not condition:
        raise ProtocolAbort(reason, detail)


def check_id_list(ids: Sequence[int], name: str, *, within: Iterable[int], minimum: int) -> frozenset[int]:
    """Refuse duplicates, ids outside ``within`` and lists shorter than ``minimum``."""
    unique = frozenset(ids)
    require(len(unique) == len(ids), AbortReason.DUPLICATE_PARTICIPANT, f"{name} lists a participant twice")
    allowed = frozenset(within)
    require(unique <= allowed, AbortReason.NOT_A_SUBSET, f"{name} is not a subset of the previous round's survivors")
    require(
        len(unique) >= minimum,
        AbortReason.TOO_FEW_PARTICIPANTS,
        f"{name} has {len(unique)} participants, the threshold is {minimum}",
    )
    return unique


def require_connected_survivors(graph: NeighbourMap, survivors: frozenset[int]) -> None:
    """Refuse a U3 whose induced neighbour graph has more than one connected component.

    No pairwise mask joins two components, so with the self-mask seeds of U3 and the
    masking keys of the dropped the server could unmask the sum over each component
    separately. Every client computes the whole graph from the session id, so each one
    refuses the same U3 and no share is released for it.
    """
    pieces = graph.components(survivors)
    require(
        len(pieces) <= 1,
        AbortReason.SURVIVOR_GRAPH_DISCONNECTED,
        f"U3 splits into {len(pieces)} disconnected groups of sizes {sorted(len(piece) for piece in pieces)}",
    )


@contextmanager
def agreement_with(peer: int) -> Iterator[None]:
    """Turn a refused X25519 agreement with ``peer``'s public key into a named abort.

    ``cryptography`` refuses a small-order point (its agreement is all zeros, RFC 7748,
    section 6.1). The key list is checked for such keys in R0; this keeps every later
    agreement from letting a raw error escape the session if one ever gets through.
    """
    try:
        yield
    except InvalidPublicKey:
        raise ProtocolAbort(
            AbortReason.INVALID_PUBLIC_KEY, f"the public key of participant {peer} is malformed or of small order"
        ) from None
