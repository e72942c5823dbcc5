"""Neighbour graphs (secagg/graph.py): the complete graph and SecAgg+ Harary graphs.

Harary graphs H(k, m) (Bell et al. 2020, section 3) must be symmetric, k-regular,
loop-free, a function of the session id alone, and built over the documented
permutation (HKDF of the session id, AES-CTR keys, stable sort), recomputed here
independently. ``recommended_harary_degree`` is checked against its own docstring
with exact rational binomial tails.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from fractions import Fraction

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings
from hypothesis import strategies as st

from secagg.config import GraphKind, ProtocolMode, RoundConfig, minimum_threshold
from secagg.graph import (
    NeighbourMap,
    _binomial_upper_tail,
    harary_neighbours,
    neighbours,
    recommended_harary_degree,
    session_permutation,
)

ROUND_ID = b"round-2026-11-25-0001"
SESSION = bytes(range(32))
OTHER_SESSION = bytes(range(1, 33))


def make_config(n: int, graph: GraphKind = GraphKind.FULL, degree: int | None = None) -> RoundConfig:
    keys = tuple(index.to_bytes(4, "big") + bytes(28) for index in range(n))
    return RoundConfig(round_id=ROUND_ID, identity_keys=keys, threshold=n, dim=10, graph=graph, degree=degree)


def assert_is_harary(graph: NeighbourMap, members: list[int], degree: int) -> None:
    assert sorted(graph) == sorted(members)
    for member in members:
        adjacent = graph[member]
        assert member not in adjacent, "self loop"
        assert len(adjacent) == degree
        assert adjacent <= set(members)
        for other in adjacent:
            assert member in graph[other], "not symmetric"
            assert graph.adjacent(member, other) and graph.adjacent(other, member)
        assert not graph.adjacent(member, member)


# --- Harary graphs -------------------------------------------------------------------------

HARARY_CASES = [(4, 2), (5, 2), (8, 4), (13, 6), (13, 10), (40, 12), (101, 14), (101, 98)]


@pytest.mark.parametrize(("n", "degree"), HARARY_CASES)
def test_harary_graph_is_symmetric_regular_of_the_degree_and_loop_free(n: int, degree: int) -> None:
    config = make_config(n, GraphKind.HARARY, degree)
    graph = neighbours(config, range(n), SESSION)
    assert not graph.is_complete
    assert_is_harary(graph, list(range(n)), degree)


@settings(max_examples=50, deadline=None)
@given(data=st.data(), session=st.binary(min_size=32, max_size=32))
def test_harary_graph_over_any_surviving_members_is_symmetric_and_regular(data: st.DataObject, session: bytes) -> None:
    members = data.draw(st.lists(st.integers(min_value=0, max_value=300), min_size=4, max_size=60, unique=True))
    degree = data.draw(st.integers(min_value=1, max_value=(len(members) - 1) // 2)) * 2
    graph = harary_neighbours(sorted(members), degree, session)
    assert_is_harary(graph, members, degree)


@pytest.mark.parametrize(("n", "degree"), HARARY_CASES)
def test_harary_graph_is_a_function_of_the_session_id(n: int, degree: int) -> None:
    config = make_config(n, GraphKind.HARARY, degree)
    first = neighbours(config, range(n), SESSION)
    again = neighbours(config, list(reversed(range(n))), SESSION)
    assert {u: first[u] for u in first} == {u: again[u] for u in again}


@pytest.mark.parametrize(("n", "degree"), [(13, 4), (40, 12), (101, 14)])
def test_another_session_id_gives_another_harary_graph(n: int, degree: int) -> None:
    """There are (n-1)!/2 cyclic orders; for n >= 13 a coincidence has probability below 1e-8."""
    config = make_config(n, GraphKind.HARARY, degree)
    first, other = neighbours(config, range(n), SESSION), neighbours(config, range(n), OTHER_SESSION)
    assert {u: first[u] for u in first} != {u: other[u] for u in other}


def _independent_permutation(size: int, session: bytes) -> list[int]:
    """The documented construction, without secagg: HKDF-SHA256 (empty salt) -> AES-256-ECB of counters -> stable argsort."""
    prk = hmac.new(bytes(32), session, hashlib.sha256).digest()
    seed = hmac.new(prk, b"secagg/v1/neighbour-graph/harary" + b"\x01", hashlib.sha256).digest()
    counters = b"".join(i.to_bytes(16, "big") for i in range(-(-size * 8 // 16)))
    keystream = Cipher(algorithms.AES(seed), modes.ECB()).encryptor().update(counters)[: size * 8]
    keys = [int.from_bytes(keystream[8 * i : 8 * i + 8], "little") for i in range(size)]
    return sorted(range(size), key=lambda index: (keys[index], index))


@pytest.mark.parametrize("size", [1, 2, 3, 10, 257])
def test_session_permutation_matches_the_documented_construction(size: int) -> None:
    permutation = session_permutation(size, SESSION)
    assert sorted(permutation.tolist()) == list(range(size))
    assert permutation.tolist() == _independent_permutation(size, SESSION)


def test_harary_neighbours_are_the_nearest_on_the_session_cycle() -> None:
    members, degree = [2, 3, 5, 8, 13, 21, 34, 55, 89], 4
    graph = harary_neighbours(members, degree, SESSION)
    cycle = [members[index] for index in _independent_permutation(len(members), SESSION)]
    for position, member in enumerate(cycle):
        expected = {cycle[(position + step) % len(cycle)] for step in (-2, -1, 1, 2)}
        assert graph[member] == expected


@pytest.mark.parametrize("degree", [0, 1, 3, 10, 12])
def test_harary_neighbours_refuse_an_odd_degree_or_one_not_below_the_member_count(degree: int) -> None:
    with pytest.raises(ValueError, match="harary degree"):
        harary_neighbours(list(range(10)), degree, SESSION)


def test_a_harary_round_whose_survivors_are_too_few_for_the_degree_uses_the_complete_graph() -> None:
    """U1 of 7 with k = 8: no Harary graph exists; every survivor neighbours every other."""
    config = make_config(12, GraphKind.HARARY, 8)
    graph = neighbours(config, [0, 1, 2, 4, 6, 9, 11], SESSION)
    assert graph.is_complete
    assert all(graph[u] == {0, 1, 2, 4, 6, 9, 11} - {u} for u in graph)


# --- the complete graph --------------------------------------------------------------------


def test_full_graph_neighbours_every_other_member_and_not_itself() -> None:
    members = [0, 3, 4, 7, 8]
    graph = neighbours(make_config(10), members, SESSION)
    assert graph.is_complete
    assert sorted(graph) == members and len(graph) == len(members)
    for member in members:
        assert graph[member] == frozenset(members) - {member}
        assert not graph.adjacent(member, member)
    assert graph.adjacent(0, 8) and not graph.adjacent(0, 1)


def test_full_graph_does_not_depend_on_the_session_id() -> None:
    config = make_config(6)
    first, other = neighbours(config, range(6), SESSION), neighbours(config, range(6), OTHER_SESSION)
    assert {u: first[u] for u in first} == {u: other[u] for u in other}


def test_a_non_member_has_no_neighbours() -> None:
    graph = neighbours(make_config(6), [0, 1, 2], SESSION)
    with pytest.raises(KeyError):
        graph[5]
    assert not graph.adjacent(0, 5)


# --- recommended degree --------------------------------------------------------------------


def exact_upper_tail(trials: int, probability: float, at_least: int) -> Fraction:
    """P[Binomial(trials, p) >= at_least] in exact rationals (p taken as its exact float value)."""
    p = Fraction(probability)
    return sum((math.comb(trials, c) * p**c * (1 - p) ** (trials - c) for c in range(max(at_least, 0), trials + 1)), Fraction(0))


def documented_failure(participants: int, mode: ProtocolMode, degree: int, dropout: float, corrupt: float) -> Fraction:
    """The docstring's union bound: n * max(P[an owner keeps < t_s live holders among its k neighbours], P[a neighbourhood holds >= t_s corrupt]),
    with t_s the larger of the mode's rule over k + 1 and k/2 + 2."""
    size = degree + 1
    share_threshold = max(minimum_threshold(mode, size), degree // 2 + 2)
    too_few_survivors = exact_upper_tail(degree, dropout, size - share_threshold)
    too_many_corrupt = exact_upper_tail(size, corrupt, share_threshold)
    return participants * max(too_few_survivors, too_many_corrupt)


FAILURE = Fraction(2) ** -20
RECOMMENDATION_CASES = [
    (100, ProtocolMode.ACTIVE, 0.0, 0.05),
    (100, ProtocolMode.HONEST_BUT_CURIOUS, 0.0, 0.1),
    (500, ProtocolMode.HONEST_BUT_CURIOUS, 0.0, 0.2),
    (1000, ProtocolMode.ACTIVE, 0.0, 0.1),
    (30, ProtocolMode.HONEST_BUT_CURIOUS, 0.05, 0.0),
    (100, ProtocolMode.HONEST_BUT_CURIOUS, 0.2, 0.0),
    (200, ProtocolMode.ACTIVE, 0.05, 0.1),
]


@pytest.mark.parametrize(("n", "mode", "dropout", "corrupt"), RECOMMENDATION_CASES)
def test_recommended_degree_is_even_above_the_connectivity_floor_and_minimal(
    n: int, mode: ProtocolMode, dropout: float, corrupt: float
) -> None:
    degree = recommended_harary_degree(n, mode, dropout_rate=dropout, corrupt_fraction=corrupt)
    assert degree is not None
    floor = 2 * math.ceil(math.log2(n))
    assert degree % 2 == 0 and floor <= degree < n - 1
    if degree - 2 >= floor:
        assert documented_failure(n, mode, degree - 2, dropout, corrupt) > FAILURE


@pytest.mark.parametrize(
    ("n", "mode", "dropout", "corrupt"),
    RECOMMENDATION_CASES,
)
def test_recommended_degree_satisfies_its_documented_failure_bound(
    n: int, mode: ProtocolMode, dropout: float, corrupt: float
) -> None:
    degree = recommended_harary_degree(n, mode, dropout_rate=dropout, corrupt_fraction=corrupt)
    assert degree is not None
    assert documented_failure(n, mode, degree, dropout, corrupt) <= FAILURE


@pytest.mark.parametrize(
    ("n", "mode", "dropout", "corrupt"),
    [(10, ProtocolMode.ACTIVE, 0.3, 0.0), (20, ProtocolMode.HONEST_BUT_CURIOUS, 0.4, 0.1), (64, ProtocolMode.ACTIVE, 0.0, 0.4)],
)
def test_recommended_degree_is_none_when_no_degree_below_n_minus_1_qualifies(
    n: int, mode: ProtocolMode, dropout: float, corrupt: float
) -> None:
    assert recommended_harary_degree(n, mode, dropout_rate=dropout, corrupt_fraction=corrupt) is None
    floor = 2 * math.ceil(math.log2(n))
    assert all(documented_failure(n, mode, k, dropout, corrupt) > FAILURE for k in range(floor, n - 1, 2))


def test_binomial_tails_of_more_than_a_thousand_trials_are_probabilities_not_errors() -> None:
    """Reached by recommended_harary_degree(2000, ACTIVE, dropout_rate=0.3, corrupt_fraction=0.0), which
    should return None but raises once the degree passes ~1030 (tested on the helper: the public call takes ~9 s)."""
    tail = _binomial_upper_tail(1100, 0.3, 400)
    assert 0.0 <= tail <= 1.0
    assert tail == pytest.approx(float(exact_upper_tail(1100, 0.3, 400)), rel=1e-9)


def test_recommended_degree_never_falls_below_twice_log2_n() -> None:
    """With no dropout and no corruption every degree qualifies: the floor 2 * ceil(log2 n) is returned."""
    for n in (8, 10, 100, 1000, 4096):
        degree = recommended_harary_degree(n, ProtocolMode.ACTIVE, dropout_rate=0.0, corrupt_fraction=0.0)
        assert degree == 2 * math.ceil(math.log2(n))


@pytest.mark.parametrize(("dropout", "corrupt"), [(-0.1, 0.0), (1.0, 0.0), (0.0, 1.0), (0.0, -0.5)])
def test_recommended_degree_refuses_rates_outside_zero_to_one(dropout: float, corrupt: float) -> None:
    with pytest.raises(ValueError, match="rates"):
        recommended_harary_degree(100, ProtocolMode.ACTIVE, dropout_rate=dropout, corrupt_fraction=corrupt)


def test_recommended_degree_is_a_valid_config_degree() -> None:
    n = 200
    degree = recommended_harary_degree(n, ProtocolMode.ACTIVE, dropout_rate=0.0, corrupt_fraction=0.05)
    assert degree is not None
    config = make_config(n, GraphKind.HARARY, degree)
    assert_is_harary(neighbours(config, range(n), SESSION), list(range(n)), degree)
