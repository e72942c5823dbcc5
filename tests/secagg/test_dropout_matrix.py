"""Dropout matrix: t-1 survivors abort with a clear error; t and t+1 survivors give the
exact sum, for dropouts in every round, both modes and both graphs.

Full graph: 10 clients at the mode's minimum threshold. Harary: 15 clients, degree 10,
t = 11; the dropped clients are spread evenly around the session's cycle so that every
neighbourhood keeps t_s members when exactly t survive (with clustered dropouts a sparse
graph legitimately fails earlier; that case is covered by the neighbourhood test below).
"""

from __future__ import annotations

import numpy as np
import pytest

from secagg.config import GraphKind, ProtocolMode, minimum_threshold
from secagg.errors import AbortReason
from secagg.graph import session_permutation
from secagg.server import ServerStage
from tests.secagg.harness import collect, make_round, run, start

FULL = {"participants": 10, "graph": GraphKind.FULL, "degree": None}
HARARY = {"participants": 15, "graph": GraphKind.HARARY, "degree": 10, "threshold": 11}


def _spread_over_cycle(setup: dict, mode: ProtocolMode, count: int, seed: int) -> set[int]:
    """``count`` clients evenly spaced on the session's Harary cycle (needs the session id)."""
    probe = make_round(
        setup["participants"],
        mode=mode,
        graph=setup["graph"],
        degree=setup["degree"],
        threshold=setup.get("threshold"),
        seed=seed,
    )
    start(probe)
    collect(probe)
    members = list(range(setup["participants"]))
    cycle = [members[i] for i in session_permutation(len(members), probe.server.session_id)]
    return {cycle[(index * len(cycle)) // count] for index in range(count)} if count else set()


def _threshold(setup: dict, mode: ProtocolMode) -> int:
    return setup.get("threshold") or minimum_threshold(mode, setup["participants"])


CASES = [
    pytest.param(setup, mode, round_number, margin, id=f"{name}-{mode.value}-R{round_number}-t{margin:+d}")
    for name, setup in (("full", FULL), ("harary", HARARY))
    for mode in ProtocolMode
    for round_number in ((0, 1, 2, 3, 4) if mode is ProtocolMode.ACTIVE else (0, 1, 2, 4))
    for margin in (-1, 0, 1)
]


@pytest.mark.parametrize(("setup", "mode", "round_number", "margin"), CASES)
def test_dropout_matrix(setup, mode, round_number, margin):
    seed = 1000 + round_number
    participants = setup["participants"]
    threshold = _threshold(setup, mode)
    survivors_wanted = threshold + margin
    dropped_count = participants - survivors_wanted
    if setup["graph"] is GraphKind.HARARY and round_number > 0:
        dropped = _spread_over_cycle(setup, mode, dropped_count, seed)
    else:
        dropped = set(range(1, 1 + 2 * dropped_count, 2))
    assert len(dropped) == dropped_count

    round_ = make_round(
        participants, mode=mode, graph=setup["graph"], degree=setup["degree"], threshold=setup.get("threshold"), seed=seed
    )
    outcome = run(round_, drop={round_number: dropped})

    if margin < 0:
        assert not outcome.completed
        assert outcome.abort.reason is AbortReason.TOO_FEW_PARTICIPANTS
        assert round_.server.stage is ServerStage.ABORTED
        assert f"the threshold is {threshold}" in outcome.abort.detail
        return
    assert outcome.completed, outcome.abort
    summed = set(range(participants)) - (dropped if round_number <= 2 else set())
    assert outcome.survivors == frozenset(summed)
    np.testing.assert_array_equal(outcome.result, round_.expected_sum(summed))


def test_harary_round_aborts_when_a_dropped_clients_neighbourhood_cannot_reconstruct_it():
    """Clustered dropouts leave a dropped client with fewer than t_s live neighbours: abort, never a wrong sum."""
    setup = HARARY
    mode = ProtocolMode.ACTIVE
    probe = make_round(15, mode=mode, graph=GraphKind.HARARY, degree=10, threshold=11, seed=77)
    start(probe)
    collect(probe)
    cycle = [int(i) for i in session_permutation(15, probe.server.session_id)]
    clustered = set(cycle[:4])
    round_ = make_round(15, mode=mode, graph=GraphKind.HARARY, degree=10, threshold=11, seed=77)
    outcome = run(round_, drop={2: clustered})
    assert not outcome.completed
    assert outcome.abort.reason in {AbortReason.MISSING_SHARES, AbortReason.TOO_FEW_PARTICIPANTS}
    assert setup["threshold"] == 11
