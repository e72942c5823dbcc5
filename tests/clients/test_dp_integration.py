"""A bank's distributed-DP ring vector (dp.mechanisms.distributed) goes through the client unchanged and decodes."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from clients.runtime.bank import client_input_from_vector
from clients.runtime.inputs import RingVectorInput
from dp.mechanisms.distributed import DistributedDPConfig, Rotation, decode_aggregate, encode_update
from secagg.hazmat.randomness import DeterministicRandom
from tests.clients.conftest import run_against
from tests.clients.fake_server import FakeRoundServer

N = 5
DIMENSION = 12  # padded to 16 by the Hadamard rotation


def test_dp_encoded_updates_sum_through_the_client_and_decode_to_the_updates_sum(state_dir: Path) -> None:
    config = DistributedDPConfig(
        dimension=DIMENSION, clip_norm=1.0, scale=2.0**10, aggregate_variance=4.0, min_survivors=4, max_clients=N,
        rotation=Rotation.RANDOMIZED_HADAMARD,
    )  # fmt: skip
    rotation_seed = bytes(range(32))
    updates = [np.linspace(-0.2, 0.2, DIMENSION) * (k + 1) / N for k in range(N)]
    encoded = [
        encode_update(update, config, rotation_seed=rotation_seed, source=DeterministicRandom.from_int(100 + k)).values
        for k, update in enumerate(updates)
    ]
    server = FakeRoundServer(n=N, dim=config.padded_dimension, bits=config.ring_bits, given_inputs=encoded)
    client_input = client_input_from_vector(encoded[server.member])
    assert isinstance(client_input, RingVectorInput)
    outcome = run_against(server, state_dir, client_input=client_input)
    decoded = decode_aggregate(outcome.result.vector, config, rotation_seed=rotation_seed, survivors=N)
    # Rounding adds at most sqrt(d')/scale per client in norm; the noise has std 2/scale per coordinate.
    assert np.allclose(decoded, np.sum(updates, axis=0), atol=0.05)
    assert not np.allclose(decoded, np.sum(updates, axis=0), atol=1e-9)
