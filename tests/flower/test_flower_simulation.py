"""A Flower app in Flower's own simulation engine, aggregated by this project's protocol.

One simulation (five banks, two rounds) serves both tests, since starting Flower's
simulation engine dominates their cost. Round 1: every bank answers every stage, at
weight 1, so the aggregate is the plain sum. Round 2: distinct weights, and bank 3
crashes after R1 (its shares are with the others, its masked input never arrives).
"""

from __future__ import annotations

import pytest

from tests.flower.conftest import FLOWER_MISSING

pytest.importorskip("flwr", reason=FLOWER_MISSING)

import math
import os

import numpy as np

from secagg.hazmat.keys import SigningKey
from secagg.hazmat.randomness import SystemRandom
from secagg.rounds import Round
from tests.flower.apps import DROPPING_BANK, MAX_WEIGHT, Consortium, client_app, examples_of, participant, server_app, update_of

CLIENTS = 5
CLIP = 1.5


@pytest.fixture(scope="module")
def simulated() -> tuple[list, list]:
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # Ray's notice about GPU variables; none here
    from flwr.simulation import run_simulation

    consortium = Consortium(tuple(SigningKey.generate(SystemRandom()) for _ in range(CLIENTS)))
    reports: list = []
    models: list = []
    run_simulation(
        server_app=server_app(consortium, rounds=2, clients=CLIENTS, reports=reports, models=models),
        client_app=client_app(consortium, drop_round=2),
        num_supernodes=CLIENTS,
        backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}},
    )
    assert len(reports) == 2, "the simulation did not run both rounds"
    return reports, models


def exact_weighted_sum(partitions: list[int], server_round: int) -> np.ndarray:
    """sum over banks of r_u * clip(x_u) and sum of r_u * clip, coordinate by coordinate, correctly rounded."""
    rows = []
    for partition in partitions:
        weight = examples_of(partition, server_round) / MAX_WEIGHT
        flat = np.concatenate([array.astype(np.float64).reshape(-1) for array in update_of(partition, server_round)])
        rows.append(np.append(np.clip(flat, -CLIP, CLIP) * weight, weight * CLIP))
    matrix = np.array(rows)
    return np.array([math.fsum(matrix[:, j]) for j in range(matrix.shape[1])])


def test_five_flower_clients_aggregate_to_the_plain_sum_of_their_updates(simulated) -> None:
    reports, models = simulated
    report = reports[0]
    assert report.outcome == "completed"
    assert report.final_survivors == tuple(participant(i) for i in range(CLIENTS))
    assert report.refusals == {} and report.rejections == {}
    # Every bank reported num_examples == max_weight: weight 1, so this is the plain sum of the clipped updates.
    expected = exact_weighted_sum(list(range(CLIENTS)), server_round=1)
    assert np.any(np.abs(np.concatenate([a.reshape(-1) for a in update_of(0, 1)])) > CLIP), "the clip must be exercised"
    # Stochastic fixed-point rounding moves each input's coordinate by less than 1/scale.
    assert report.error_bound == CLIENTS / report.scale
    assert report.error_bound < 1e-7
    error = np.abs(report.decoded_sum - expected)
    assert float(error.max()) <= report.error_bound
    # What FedAvg stored as the new global model: the mean (float32 rounding on top of the bound).
    mean = expected[:-1] / CLIENTS
    stored = np.concatenate([a.reshape(-1) for a in models[0]])
    assert np.allclose(stored, mean, rtol=0, atol=report.error_bound / CLIENTS + 4e-7)


def test_a_flower_client_that_drops_after_sharing_keys_is_recovered(simulated) -> None:
    reports, models = simulated
    report = reports[1]
    dropped = participant(DROPPING_BANK)
    assert report.outcome == "completed"
    assert dropped in report.survivors[Round.SHARE_KEYS.key]
    assert dropped not in report.survivors[Round.MASKED_INPUT_COLLECTION.key]
    assert report.refusals.keys() == {dropped}
    survivors = [i for i in range(CLIENTS) if i != DROPPING_BANK]
    assert report.final_survivors == tuple(participant(i) for i in survivors)
    # The dropped bank's pairwise masks were rebuilt from its shares and removed: the sum is the survivors' weighted sum.
    expected = exact_weighted_sum(survivors, server_round=2)
    assert report.error_bound == len(survivors) / report.scale
    assert float(np.abs(report.decoded_sum - expected).max()) <= report.error_bound
    assert report.total_examples == pytest.approx(sum(examples_of(i, 2) for i in survivors), abs=1e-3)
    weighted_mean = expected[:-1] / (expected[-1] / CLIP)
    stored = np.concatenate([a.reshape(-1) for a in models[1]])
    assert np.allclose(stored, weighted_mean, rtol=0, atol=1e-6)
