"""Masks cancel: for any cohort, ring, mode, graph and dropout pattern, the server
recovers exactly the sum of the survivors' inputs, or aborts because fewer than t
(or t_s in a neighbourhood) remained or because the survivors' graph split.
Property-based (hypothesis)."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from secagg.config import GraphKind, ProtocolMode, minimum_threshold
from secagg.errors import AbortReason
from secagg.graph import neighbours, recommended_harary_degree
from tests.secagg.harness import make_round, run


@st.composite
def rounds(draw):
    participants = draw(st.integers(min_value=2, max_value=30))
    mode = draw(st.sampled_from(list(ProtocolMode)))
    bits = draw(st.sampled_from([8, 13, 16, 31, 32, 33, 64]))
    dim = draw(st.integers(min_value=1, max_value=40))
    graph = GraphKind.FULL
    degree = None
    if participants >= 8 and draw(st.booleans()):
        graph = GraphKind.HARARY
        degree = draw(st.sampled_from(list(range(2, participants - 1, 2))))
    rule = minimum_threshold(mode, participants)
    threshold = draw(st.integers(min_value=rule, max_value=participants))
    members = list(range(participants))
    drop = {}
    remaining = set(members)
    for round_number in (0, 1, 2, 3, 4):
        leaving = draw(st.sets(st.sampled_from(members), max_size=max(0, participants // 3)))
        drop[round_number] = leaving & remaining
        remaining -= leaving
    seed = draw(st.integers(min_value=0, max_value=2**32))
    return participants, mode, bits, dim, graph, degree, threshold, drop, seed


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rounds())
def test_sum_of_survivors_is_exact_or_round_aborts_for_lack_of_survivors(case):
    participants, mode, bits, dim, graph, degree, threshold, drop, seed = case
    round_ = make_round(participants, dim=dim, bits=bits, mode=mode, graph=graph, degree=degree, threshold=threshold, seed=seed)
    outcome = run(round_, drop=drop)
    if outcome.completed:
        assert len(outcome.survivors) >= threshold
        dropped_any_time = set().union(*drop.values())
        assert outcome.survivors.isdisjoint(dropped_any_time - set(drop[4]) - set(drop[3]))
        np.testing.assert_array_equal(outcome.result, round_.expected_sum(outcome.survivors))
    else:
        assert outcome.abort.reason in {
            AbortReason.TOO_FEW_PARTICIPANTS,
            AbortReason.MISSING_SHARES,
            AbortReason.SURVIVOR_GRAPH_DISCONNECTED,
        }
        if outcome.abort.reason is AbortReason.SURVIVOR_GRAPH_DISCONNECTED:
            advertised, masked_inputs = round_.server.history[0].responded, round_.server.history[2].responded
            graph = neighbours(round_.config, advertised, round_.server.session_id)
            assert not graph.is_connected(masked_inputs)


@settings(max_examples=15, deadline=None)
@given(st.integers(min_value=2, max_value=12), st.integers(min_value=0, max_value=2**32))
def test_without_dropouts_every_client_is_summed(participants, seed):
    round_ = make_round(participants, dim=5, seed=seed)
    outcome = run(round_)
    assert outcome.completed
    assert outcome.survivors == frozenset(range(participants))
    np.testing.assert_array_equal(outcome.result, round_.expected_sum(range(participants)))


def test_masked_inputs_hide_the_inputs_yet_their_sum_is_exact():
    """Each y_u differs from x_u in about every coordinate; only the unmasked sum equals the plain sum."""
    from tests.secagg.harness import collect, deliver, start

    round_ = make_round(6, dim=256, seed=11)
    start(round_)
    deliver(round_, collect(round_))
    deliver(round_, collect(round_))
    masked = {member: message.masked_vector.copy() for member, message in round_.pending.items()}
    for member, vector in masked.items():
        assert np.count_nonzero(vector == round_.inputs[member]) < 10
    plain_sum_of_masked = round_.config.ring.zeros(256)
    for vector in masked.values():
        np.add(plain_sum_of_masked, vector, out=plain_sum_of_masked)
    assert not np.array_equal(plain_sum_of_masked, round_.expected_sum(range(6)))


def test_recommended_harary_degree_round_survives_ten_percent_dropout():
    participants = 40
    degree = recommended_harary_degree(
        participants, ProtocolMode.HONEST_BUT_CURIOUS, dropout_rate=0.1, corrupt_fraction=0.0, failure_probability=1e-3
    )
    assert degree is not None and degree < participants - 2
    round_ = make_round(participants, dim=4, mode=ProtocolMode.HONEST_BUT_CURIOUS, graph=GraphKind.HARARY, degree=degree, seed=5)
    outcome = run(round_, drop={2: {3, 17, 29, 33}})
    assert outcome.completed
    np.testing.assert_array_equal(outcome.result, round_.expected_sum(outcome.survivors))
