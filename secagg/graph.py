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
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from secagg.config import GraphKind, RoundConfig
from secagg.hazmat import prg
from secagg.hazmat.kdf import KeyPurpose, derive_key

NeighbourMap = dict[int, frozenset[int]]


def neighbours(config: RoundConfig, members: Iterable[int], session_id: bytes) -> NeighbourMap:
    """Each member's neighbours among ``members`` (U1), excluding itself."""
    ordered = sorted(set(members))
    if config.graph is GraphKind.FULL or config.degree is None or config.degree >= len(ordered) - 1:
        everyone = frozenset(ordered)
        return {member: everyone - {member} for member in ordered}
    return harary_neighbours(ordered, config.degree, session_id)


def harary_neighbours(members: list[int], degree: int, session_id: bytes) -> NeighbourMap:
    """H(degree, len(members)) over a session-derived random cyclic order of ``members``."""
    if degree % 2 or degree < 2 or degree >= len(members):
        raise ValueError("harary degree must be even and below the number of members")
    order = session_permutation(len(members), session_id)
    cycle = [members[index] for index in order]
    size = len(cycle)
    half = degree // 2
    result: NeighbourMap = {}
    for position, member in enumerate(cycle):
        result[member] = frozenset(
            cycle[(position + offset) % size] for offset in range(-half, half + 1) if offset != 0
        )
    return result


def session_permutation(size: int, session_id: bytes) -> np.ndarray:
    """A permutation of range(size) from 64-bit PRG keys; ties broken by index (stable sort)."""
    seed = derive_key(session_id, KeyPurpose.NEIGHBOUR_GRAPH, b"harary")
    keys = prg.expand(seed, np.empty(size, dtype=np.uint64))
    return np.argsort(keys, kind="stable")
