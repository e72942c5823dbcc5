"""Neighbour graphs: the complete graph (Bonawitz et al. 2017) and SecAgg+ Harary graphs.

Bell et al. 2020 (CCS, section 3) replace the complete graph with a sparse graph in
which each client shares keys and masks only with its k neighbours. We use the
Harary graph H(k, m) over the m members of U1: place them on a cycle in a random
order and connect each to the k/2 nearest on either side. The order is a
permutation derived from the session id (HKDF, then AES-CTR PRG, then a sort), so
every party computes the same graph and no party chooses it alone. The server
still influences the session id through its choice of U1; see threat_model.md.

Neighbourhoods here exclude the client itself; the protocol adds it where a
client's own share is needed.

What the server can unmask is decided by the graph induced by the survivors U3:
pairwise masks join only neighbours, so the sum over any union of its connected
components is unmaskable once the self-masks of U3 and the keys of the dropped are
reconstructed. :meth:`NeighbourMap.components` computes those components; every
client and the server refuse to unmask when there is more than one.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence

import numpy as np

from secagg.config import GraphKind, ProtocolMode, RoundConfig, neighbourhood_threshold
from secagg.hazmat import prg
from secagg.hazmat.kdf import KeyPurpose, derive_key


class NeighbourMap(Mapping[int, frozenset[int]]):
    """Each member's neighbours (excluding itself), as a read-only mapping.

    Neither graph is materialised: ``graph[u]`` is computed on demand, in O(n) for the
    complete graph and in O(k) for a Harary graph, which keeps only its cycle (the members
    in the session's order) and each member's place on it. Every client holds the whole
    graph, so n clients use O(n) memory each, not O(n * k) or O(n^2).
    """

    def __init__(self, members: Iterable[int], cycle: Sequence[int] | None = None, degree: int | None = None) -> None:
        self._members = frozenset(members)
        self._cycle: np.ndarray | None = None
        if cycle is None:
            return
        if degree is None or len(cycle) != len(self._members) or frozenset(cycle) != self._members:
            raise ValueError("a Harary cycle must hold every member once, with a degree")
        self._cycle = np.asarray(cycle, dtype=np.int64)
        self._place_by_rank = np.argsort(self._cycle, kind="stable")
        self._ranked = self._cycle[self._place_by_rank]
        half = degree // 2
        self._offsets = np.array([offset for offset in range(-half, half + 1) if offset != 0], dtype=np.int64)

    @property
    def members(self) -> frozenset[int]:
        return self._members

    @property
    def is_complete(self) -> bool:
        return self._cycle is None

    def __getitem__(self, member: int) -> frozenset[int]:
        if member not in self._members:
            raise KeyError(member)
        if self._cycle is None:
            return self._members - {member}
        place = self._place_by_rank[np.searchsorted(self._ranked, member)]
        return frozenset(self._cycle[(place + self._offsets) % self._cycle.size].tolist())

    def __iter__(self) -> Iterator[int]:
        return iter(sorted(self._members))

    def __len__(self) -> int:
        return len(self._members)

    def adjacent(self, first: int, second: int) -> bool:
        """True iff ``first`` and ``second`` are distinct members joined by an edge."""
        if first == second or first not in self._members or second not in self._members:
            return False
        return self._cycle is None or second in self[first]

    def components(self, among: Iterable[int]) -> list[frozenset[int]]:
        """The connected components of the subgraph induced by ``among``, ordered by smallest member.

        Breadth-first search over the induced edges: O(|among| * k) for a Harary graph, O(1)
        work per member for the complete graph (any non-empty subset is one component).
        Raises KeyError for an id that is not a member.
        """
        remaining = set(among)
        unknown = remaining - self._members
        if unknown:
            raise KeyError(min(unknown))
        if not remaining:
            return []
        if self._cycle is None:
            return [frozenset(remaining)]
        pieces: list[frozenset[int]] = []
        for root in sorted(remaining):
            if root not in remaining:
                continue
            remaining.discard(root)
            piece, frontier = [root], [root]
            while frontier:
                reached = self[frontier.pop()] & remaining
                remaining -= reached
                piece.extend(reached)
                frontier.extend(reached)
            pieces.append(frozenset(piece))
        return pieces

    def is_connected(self, among: Iterable[int]) -> bool:
        """True iff the subgraph induced by ``among`` has at most one connected component."""
        return len(self.components(among)) <= 1


def neighbours(config: RoundConfig, members: Iterable[int], session_id: bytes) -> NeighbourMap:
    """Each member's neighbours among ``members`` (U1), excluding itself."""
    ordered = sorted(set(members))
    if config.graph is GraphKind.FULL or config.degree is None or config.degree >= len(ordered) - 1:
        return NeighbourMap(ordered)
    return harary_neighbours(ordered, config.degree, session_id)


def harary_neighbours(members: list[int], degree: int, session_id: bytes) -> NeighbourMap:
    """H(degree, len(members)) over a session-derived random cyclic order of ``members``."""
    if degree % 2 or degree < 2 or degree >= len(members):
        raise ValueError("harary degree must be even and below the number of members")
    order = session_permutation(len(members), session_id)
    return NeighbourMap(members, cycle=np.asarray(members, dtype=np.int64)[order].tolist(), degree=degree)


def session_permutation(size: int, session_id: bytes) -> np.ndarray:
    """A permutation of range(size) from 64-bit PRG keys; ties broken by index (stable sort)."""
    seed = derive_key(session_id, KeyPurpose.NEIGHBOUR_GRAPH, b"harary")
    keys = prg.expand(seed, np.empty(size, dtype=np.uint64))
    return np.argsort(keys, kind="stable")


def recommended_harary_degree(
    participants: int,
    mode: ProtocolMode,
    *,
    dropout_rate: float,
    corrupt_fraction: float,
    failure_probability: float = 2.0**-20,
) -> int | None:
    """The smallest even Harary degree k that tolerates the given dropout and corruption.

    t_s is :func:`~secagg.config.neighbourhood_threshold` (never below k/2 + 2, which keeps
    the survivors' graph connected under every dropout pattern the checks permit). With
    independent dropouts at ``dropout_rate``, the union bound over the ``participants``
    owners keeps below ``failure_probability`` the chance that any owner keeps fewer than
    t_s live holders of its shares among its k neighbours (P[Binomial(k, rate) >= k + 1 - t_s]:
    a dropped owner's own share is lost with it, and a surviving owner, which also holds its
    own share, is covered a fortiori); the same event covers every survivor's neighbourhood
    check, so it also bounds the chance that dropouts abort the round by splitting the
    survivors' graph. With a ``corrupt_fraction`` of clients colluding with the server, it
    keeps the chance that any neighbourhood holds t_s corrupt members below the same bound
    (Bell et al. 2020, section 3, which analyses random graphs of this kind). The degree is
    never below 2 * ceil(log2 n), the order Bell et al. prove necessary for the graph to stay
    connected. Returns ``None`` when no degree below n - 1 qualifies: use the full graph.
    """
    if not 0.0 <= dropout_rate < 1.0 or not 0.0 <= corrupt_fraction < 1.0:
        raise ValueError("rates must be in [0, 1)")
    floor = 2 * math.ceil(math.log2(max(participants, 2)))
    for degree in range(floor, participants - 1, 2):
        size = degree + 1
        share_threshold = neighbourhood_threshold(mode, degree)
        too_many_dropped = _binomial_upper_tail(degree, dropout_rate, size - share_threshold)
        too_many_corrupt = _binomial_upper_tail(size, corrupt_fraction, share_threshold)
        if participants * max(too_many_dropped, too_many_corrupt) <= failure_probability:
            return degree
    return None


def _binomial_upper_tail(trials: int, probability: float, at_least: int) -> float:
    """P[Binomial(trials, probability) >= at_least], summed in log space (no overflow)."""
    if at_least <= 0:
        return 1.0
    if at_least > trials or probability == 0.0:
        return 0.0
    if probability >= 1.0:
        return 1.0
    log_p = math.log(probability)
    log_q = math.log1p(-probability)
    log_terms = [
        math.lgamma(trials + 1)
        - math.lgamma(count + 1)
        - math.lgamma(trials - count + 1)
        + count * log_p
        + (trials - count) * log_q
        for count in range(at_least, trials + 1)
    ]
    peak = max(log_terms)
    return min(1.0, math.exp(peak) * math.fsum(math.exp(term - peak) for term in log_terms))
