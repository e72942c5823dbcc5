"""The survivors' graph: the server learns the sum over all of U3 or nothing.

With pairwise masks the server can unmask the sum over any union of connected
components of the graph induced by U3 (it holds b_u for every u in U3 and s_sk of
every dropped client, and no pairwise mask joins two components). So no honest
client may release R4 shares for a U3 that splits, and no dropout pattern that the
round's checks permit may split it (secagg/config.py, ``neighbourhood_threshold``).

The graphs here are rebuilt from :func:`secagg.graph.session_permutation` (itself
checked against an independent construction in test_graph.py) with their own
adjacency and breadth-first search, not with :class:`secagg.graph.NeighbourMap`.
"""

from __future__ import annotations

import copy
import itertools
from functools import cache

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secagg.config import GraphKind, ProtocolMode, RoundConfig, minimum_threshold
from secagg.errors import AbortReason, ConfigurationError, ProtocolAbort
from secagg.graph import harary_neighbours, neighbours, session_permutation
from secagg.messages import ConsistencyCheck, ConsistencyCheckRequest, UnmaskingRequest, UnmaskingShares
from secagg.server import ServerStage
from tests.secagg.harness import advance_to, collect, deliver, make_round, start

HBC = ProtocolMode.HONEST_BUT_CURIOUS


def cycle_adjacency(members: list[int], degree: int | None, session: bytes) -> dict[int, set[int]]:
    """Each member's neighbours: the complete graph, or H(degree, m) on the session's cycle."""
    if degree is None or degree >= len(members) - 1:
        return {member: set(members) - {member} for member in members}
    cycle = [members[index] for index in session_permutation(len(members), session)]
    size, half = len(cycle), degree // 2
    return {
        member: {cycle[(position + step) % size] for step in range(-half, half + 1) if step}
        for position, member in enumerate(cycle)
    }


def is_connected(adjacency: dict[int, set[int]], among: set[int]) -> bool:
    if not among:
        return True
    start_member = min(among)
    seen, frontier = {start_member}, [start_member]
    while frontier:
        member = frontier.pop()
        for other in adjacency[member] & among:
            if other not in seen:
                seen.add(other)
                frontier.append(other)
    return seen == among


def config_or_none(n: int, mode: ProtocolMode, threshold: int, degree: int | None) -> RoundConfig | None:
    keys = tuple(index.to_bytes(4, "big") + bytes(28) for index in range(n))
    try:
        return RoundConfig(
            round_id=b"survivor-graph-round",
            identity_keys=keys,
            threshold=threshold,
            dim=1,
            mode=mode,
            graph=GraphKind.FULL if degree is None else GraphKind.HARARY,
            degree=degree,
        )
    except ConfigurationError:
        return None


# ------------------------------------------------------- the reported pattern, end to end


def _cut_round(seed: int = 3):
    """n = 6, k = 2, t = 4, honest-but-curious, all clients past R2; two uploads on opposite sides of the cycle."""
    round_ = make_round(6, mode=HBC, graph=GraphKind.HARARY, degree=2, threshold=4, seed=seed)
    start(round_)
    deliver(round_, collect(round_))
    cycle = [int(index) for index in session_permutation(6, round_.server.session_id)]
    deliver(round_, collect(round_))
    lost = {cycle[0], cycle[3]}
    return round_, cycle, lost


def test_no_survivor_releases_shares_when_two_lost_uploads_split_a_sparse_honest_but_curious_round():
    """Losing the uploads of two clients opposite on a ring of six leaves two pairs of survivors with no
    pairwise mask between them; shares of b for both pairs would let the server unmask each pair's sum."""
    round_, _cycle, lost = _cut_round()
    survivors = tuple(sorted(set(range(6)) - lost))
    request = UnmaskingRequest(
        session_id=round_.server.session_id, survivors=survivors, dropped=tuple(sorted(lost)), signatures=()
    )
    released, refusals = {}, {}
    for member in survivors:
        try:
            released[member] = round_.clients[member].receive(request)
        except ProtocolAbort as refusal:
            refusals[member] = refusal.reason
    assert released == {}, f"survivors {sorted(released)} released shares over a split survivor graph"
    assert set(refusals) == set(survivors)
    assert all(round_.clients[member].abort_reason is refusals[member] for member in survivors)
    assert set(refusals.values()) <= {AbortReason.TOO_FEW_PARTICIPANTS, AbortReason.SURVIVOR_GRAPH_DISCONNECTED}


def test_a_survivor_whose_own_neighbourhood_is_intact_still_refuses_a_split_survivor_set():
    """Ring of ten, two opposite uploads lost: the clients inside each arc keep both neighbours, yet refuse."""
    round_ = make_round(10, mode=HBC, graph=GraphKind.HARARY, degree=2, threshold=6, seed=4)
    advance_to(round_, 3)
    cycle = [int(index) for index in session_permutation(10, round_.server.session_id)]
    lost = {cycle[0], cycle[5]}
    interior = {cycle[2], cycle[3], cycle[7], cycle[8]}
    survivors = tuple(sorted(set(range(10)) - lost))
    request = UnmaskingRequest(
        session_id=round_.server.session_id, survivors=survivors, dropped=tuple(sorted(lost)), signatures=()
    )
    for member in sorted(interior):
        with pytest.raises(ProtocolAbort) as caught:
            round_.clients[member].receive(request)
        assert caught.value.reason is AbortReason.SURVIVOR_GRAPH_DISCONNECTED
        assert "2 disconnected groups of sizes [4, 4]" in caught.value.detail


def test_server_aborts_instead_of_requesting_shares_when_the_survivors_graph_splits():
    round_, _cycle, lost = _cut_round()
    for member in lost:
        del round_.pending[member]
    with pytest.raises(ProtocolAbort) as caught:
        collect(round_)
    assert caught.value.reason is AbortReason.SURVIVOR_GRAPH_DISCONNECTED
    assert round_.server.stage is ServerStage.ABORTED


def test_server_requests_shares_when_the_lost_uploads_leave_the_survivors_connected():
    round_, cycle, _ = _cut_round()
    del round_.pending[cycle[0]]
    outbox = collect(round_)
    assert {type(message) for message in outbox.values()} == {UnmaskingRequest}


# ------------------------------------ every claim the server could make, real client sessions


@cache
def _clients_awaiting_survivors(n: int, mode: ProtocolMode, threshold: int, degree: int | None):
    """Real client sessions that have sent R2 masked inputs (U1 = U2 = the cohort), and the session id."""
    round_ = make_round(
        n,
        dim=1,
        mode=mode,
        graph=GraphKind.FULL if degree is None else GraphKind.HARARY,
        degree=degree,
        threshold=threshold,
        seed=n * 100 + threshold,
    )
    advance_to(round_, 3)
    return round_, round_.server.session_id


def _accepted_configurations(sizes: range):
    for n in sizes:
        for mode in ProtocolMode:
            for threshold in range(minimum_threshold(mode, n), n + 1):
                for degree in (None, *range(2, n - 1, 2)):
                    config = config_or_none(n, mode, threshold, degree)
                    if config is not None:
                        yield n, mode, threshold, degree, config


EXHAUSTIVE_SIZES = range(3, 11)


@pytest.mark.parametrize("n", EXHAUSTIVE_SIZES)
def test_no_honest_client_releases_shares_for_a_claimed_survivor_set_that_splits_the_graph(n):
    """Every accepted configuration of n clients (both modes, both graphs, every t and k), every U3 the
    server could claim: a client releases R4 shares (honest-but-curious) or signs U3 (active, where R4
    further needs t signatures over the set the client signed) exactly when U3 has t members, induces a
    connected graph and, for the share release, t_s members of the client's neighbourhood survived.

    Dropouts in R0 give a smaller cohort with the same t and k, covered by the smaller n; dropouts in
    R1 change only U2, which the claimed U3 is a subset of either way."""
    mismatches, wrong_reasons = [], []
    checked = 0
    for _, mode, threshold, degree, config in _accepted_configurations(range(n, n + 1)):
        round_, session = _clients_awaiting_survivors(n, mode, threshold, degree)
        cohort = list(range(n))
        adjacency = cycle_adjacency(cohort, degree, session)
        for size in range(1, n + 1):
            for claimed in itertools.combinations(cohort, size):
                survivors = set(claimed)
                connected = is_connected(adjacency, survivors)
                dropped = tuple(member for member in cohort if member not in survivors)
                if mode is HBC:
                    request = UnmaskingRequest(session_id=session, survivors=claimed, dropped=dropped, signatures=())
                else:
                    request = ConsistencyCheckRequest(session_id=session, survivors=claimed)
                for member in claimed:
                    neighbourhood_survivors = len((adjacency[member] | {member}) & survivors)
                    expected = (
                        size >= threshold and connected and (mode is not HBC or neighbourhood_survivors >= config.share_threshold)
                    )
                    trial = copy.copy(round_.clients[member])
                    try:
                        reply = trial.receive(request)
                    except ProtocolAbort as refusal:
                        if expected:
                            mismatches.append((mode.value, threshold, degree, claimed, member, "refused", refusal.reason.value))
                        elif (
                            size >= threshold
                            and not connected
                            and (mode is not HBC or neighbourhood_survivors >= config.share_threshold)
                        ):
                            wrong_reasons.append((mode.value, threshold, degree, claimed, member, refusal.reason))
                    else:
                        assert isinstance(reply, UnmaskingShares if mode is HBC else ConsistencyCheck)
                        if not expected:
                            mismatches.append((mode.value, threshold, degree, claimed, member, "released", connected))
                    checked += 1
    assert checked > 0
    assert not mismatches, f"{len(mismatches)} wrong decisions, e.g. {mismatches[:5]}"
    assert all(reason is AbortReason.SURVIVOR_GRAPH_DISCONNECTED for *_, reason in wrong_reasons), wrong_reasons[:5]


# ------------------------------------------------ the threshold rule: permitted dropouts never split


def _masks(n: int, degree: int) -> list[int]:
    """Closed-neighbourhood bit masks of H(degree, n) on the cycle 0, 1, ..., n - 1."""
    half = degree // 2
    return [sum(1 << ((position + step) % n) for step in range(-half, half + 1)) for position in range(n)]


def _bits(mask: int) -> list[int]:
    return [index for index in range(mask.bit_length()) if mask >> index & 1]


def _connected_mask(closed: list[int], among: int) -> bool:
    reached = among & -among
    while True:
        grown = reached
        for member in _bits(reached):
            grown |= closed[member] & among
        if grown == reached:
            return reached == among
        reached = grown


def permitted_split(n: int, degree: int, neighbourhood_threshold: int, minimum_survivors: int) -> int | None:
    """A survivor set of H(degree, n) that every survivor's neighbourhood check lets through and that
    splits the graph, or None. Symmetry of the cycle: the set may be taken to contain position 0."""
    closed = _masks(n, degree)
    for rest in range(1 << (n - 1)):
        among = (rest << 1) | 1
        if among.bit_count() < minimum_survivors:
            continue
        every_check_passes = all((closed[member] & among).bit_count() >= neighbourhood_threshold for member in _bits(among))
        if every_check_passes and not _connected_mask(closed, among):
            return among
    return None


RULE_SIZES = range(4, 17)


@pytest.mark.parametrize("n", RULE_SIZES)
def test_no_accepted_configuration_permits_dropouts_that_split_the_survivors_graph(n):
    """For every accepted Harary configuration with n participants and every U1 of m <= n members, a U3
    of at least t members in which every survivor keeps t_s members of its neighbourhood induces a
    connected subgraph of H(k, m): honest dropouts the checks allow never split the graph. The smallest
    accepted t admits the most survivor sets, so checking it covers every t."""
    for mode in ProtocolMode:
        for degree in range(2, n - 1, 2):
            config = config_or_none(n, mode, minimum_threshold(mode, n), degree)
            assert config is not None, (n, mode, degree)
            for members in range(max(degree + 2, config.threshold), n + 1):
                split = permitted_split(members, degree, config.share_threshold, config.threshold)
                assert split is None, (mode.value, n, degree, members, _bits(split))


@pytest.mark.parametrize("degree", [2, 4, 6])
def test_one_less_than_the_honest_but_curious_neighbourhood_threshold_would_let_dropouts_split_the_ring(degree):
    """With t_s - 1 two runs of k/2 dropouts cut H(k, 2k + 2) while every survivor's check passes: the rule is tight."""
    n = 2 * degree + 2
    config = config_or_none(n, HBC, n - degree, degree)
    assert config is not None
    assert permitted_split(n, degree, config.share_threshold - 1, n - degree) is not None


# --------------------------------------------------------------- the component computation


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(min_value=2, max_value=40),
    data=st.data(),
    session=st.binary(min_size=32, max_size=32),
)
def test_neighbour_map_components_partition_the_members_into_the_connected_pieces(n, data, session):
    degree = data.draw(st.sampled_from([None, *range(2, max(n - 1, 2), 2)]))
    members = sorted(data.draw(st.sets(st.integers(min_value=0, max_value=99), min_size=n, max_size=n)))
    among = data.draw(st.sets(st.sampled_from(members)))
    if degree is None or degree >= len(members) - 1:
        graph = neighbours(config_or_none(n, HBC, n, None), members, session)
    else:
        graph = harary_neighbours(members, degree, session)
    adjacency = cycle_adjacency(members, degree, session)
    components = graph.components(among)
    assert sorted(member for part in components for member in part) == sorted(among)
    assert all(is_connected(adjacency, set(part)) for part in components)
    for first, second in itertools.combinations(components, 2):
        assert not any(adjacency[member] & second for member in first)
    assert graph.is_connected(among) is (len(components) <= 1)
