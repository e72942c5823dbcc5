"""Whole rounds through the HTTP API with 10 clients: exact sums, dropouts, aborts below t.

The app runs in process (:class:`~tests.service.harness.InProcessServer`): a stage closes
with its last message or an operator's close, and a deadline passes when the test moves
the server's clock, so no test waits for wall-clock time.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.service.harness import Api, InProcessServer, RoundDriver, make_parties

N = 10
DIM = 200
R0, R1, R2, R3, R4 = (
    "R0-advertise-keys",
    "R1-share-keys",
    "R2-masked-input-collection",
    "R3-consistency-check",
    "R4-unmasking",
)


def _start_round(api: Api, seed: int, *, mode: str = "active", threshold: int = 7, deadlines: dict | None = None) -> RoundDriver:
    parties = make_parties(N, prefix=f"r{seed}", seed=seed)
    for party in parties:
        api.enroll(party)
    round_id = api.create_round(parties, threshold=threshold, mode=mode, dim=DIM, bits=32, deadlines=deadlines or {})
    return RoundDriver(api, parties, round_id, seed=seed)


def test_full_round_of_ten_clients_without_dropouts_returns_the_exact_sum(shared_api: Api) -> None:
    driver = _start_round(shared_api, seed=1)
    everyone = range(N)
    driver.send(everyone)
    for stage in (R1, R2, R3, R4):
        driver.expect_stage(stage)
        responses = driver.fetch(everyone)
        assert all(response.status_code == 200 for response in responses.values())
        assert {response.headers["X-Secagg-Stage"] for response in responses.values()} == {stage}
        driver.send(everyone)
    status = driver.wait_for_stage("completed")
    assert status["outcome"] == "completed"
    result, survivors = driver.result()
    assert survivors == list(everyone)
    np.testing.assert_array_equal(result, driver.expected_sum(everyone))


@pytest.mark.parametrize("drop_round", ["R1", "R2", "R4"])
def test_round_with_two_dropouts_completes_with_the_survivors_exact_sum(shared_api: Api, drop_round: str) -> None:
    seed = {"R1": 11, "R2": 12, "R4": 14}[drop_round]
    # The stage with dropouts is closed by the operator once the others answered (its
    # deadline path: test_round_where_too_many_drop_at_r2_aborts_with_too_few_participants
    # here, and test_round_engine.py); the other stages close by themselves when everyone answered.
    driver = _start_round(shared_api, seed=seed, mode="active", threshold=7)
    dropped = {3, 8}
    alive = [index for index in range(N) if index not in dropped]
    driver.send(range(N))
    for stage in (R1, R2, R3, R4):
        driver.expect_stage(stage)
        active = alive if int(stage[1]) >= int(drop_round[1]) else list(range(N))
        participating = [index for index in range(N) if index in active or int(stage[1]) < int(drop_round[1])]
        driver.fetch(participating)
        driver.send(participating)
        if stage[:2] == drop_round:  # later stages expect only the survivors and close by themselves
            closed = shared_api.admin("POST", f"/v1/admin/rounds/{driver.round_id}/close-stage")
            assert closed.status_code == 200, closed.text
    status = driver.wait_for_stage("completed")
    result, survivors = driver.result(alive[0])
    # Dropping before R2 removes them from U3; dropping at R4 keeps their inputs in the sum.
    expected_survivors = list(range(N)) if drop_round == "R4" else alive
    assert survivors == expected_survivors
    np.testing.assert_array_equal(result, driver.expected_sum(expected_survivors))
    closed = {entry["stage"]: entry["responded"] for entry in status["history"]}
    assert closed[{"R1": R1, "R2": R2, "R4": R4}[drop_round]] == alive


def test_round_where_too_many_drop_at_r2_aborts_with_too_few_participants(
    shared_server: InProcessServer, shared_api: Api
) -> None:
    driver = _start_round(shared_api, seed=21, mode="honest-but-curious", threshold=6, deadlines={"R2": 6})
    driver.send(range(N))
    driver.expect_stage(R1)
    driver.fetch(range(N))
    driver.send(range(N))
    driver.expect_stage(R2)
    driver.fetch(range(N))
    driver.send(range(5))  # 5 < t = 6
    assert driver.expect_stage(R2)["responded"] == list(range(5))
    # Closed by the background task at its deadline: no request reaches the server
    # between moving its clock past the deadline and the round's change.
    changed = shared_server.round_change(driver.round_id)
    shared_server.clock.advance(6)
    assert changed.wait(timeout=30), "the background task did not close the stage at its deadline"
    status = driver.expect_stage("aborted")
    assert status["outcome"] == "aborted"
    assert status["abort_reason"] == "too-few-participants"
    response = driver.fetch([0])[0]
    assert response.status_code == 410
    assert response.json()["type"] == "urn:secagg:problem:round-aborted"
    result = shared_api.signed(driver.parties[0], "GET", f"/v1/rounds/{driver.round_id}/result")
    assert result.status_code == 410
