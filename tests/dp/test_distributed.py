"""Participant-level distributed DP in the ring (dp.mechanisms.distributed).

Statistical checks use fixed seeds and tolerances of about five standard errors.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from dp.accounting import AccountantKind, Skellam, compute_epsilon
from dp.errors import DPError
from dp.mechanisms.distributed import (
    DistributedDPConfig,
    DistributedDPConfigError,
    EncodedUpdate,
    Reduction,
    RingHeadroomError,
    Rotation,
    RoundingFailed,
    UpdateRejected,
    clip_to_norm,
    conditional_round,
    decode_aggregate,
    encode_update,
    noise_tail_bound,
    rotate,
    rotation_signs,
    stochastic_round,
    unrotate,
    walsh_hadamard,
)
from dp.mechanisms.noise import PoissonSampler
from secagg.hazmat.randomness import DeterministicRandom

SEED = bytes(range(32))
"""A public per-round rotation seed (any 32 bytes)."""


def _source(seed: int) -> DeterministicRandom:
    return DeterministicRandom.from_int(seed)


def _config(**overrides) -> DistributedDPConfig:
    parameters = {
        "dimension": 1000,
        "clip_norm": 1.0,
        "scale": 256.0,
        "aggregate_variance": 400.0,
        "min_survivors": 3,
        "max_clients": 5,
    }
    parameters.update(overrides)
    return DistributedDPConfig(**parameters)


def _random_vector(seed: int, dimension: int, norm: float) -> np.ndarray:
    vector = np.frombuffer(_source(seed).random_bytes(8 * dimension), dtype=np.int64).astype(np.float64)
    return vector * (norm / np.linalg.norm(vector))


def _ring_sum(encoded: list[EncodedUpdate], config: DistributedDPConfig) -> np.ndarray:
    total = config.ring.zeros(config.padded_dimension)
    for update in encoded:
        total += update.values  # unsigned wraparound is reduction modulo 2^w
    return config.ring.reduce(total)


# --- rotation -----------------------------------------------------------------------


def test_walsh_hadamard_preserves_norm_and_is_its_own_inverse():
    vector = _random_vector(1, 256, 3.0)
    transformed = walsh_hadamard(vector)
    assert math.isclose(float(np.linalg.norm(transformed)), 3.0, rel_tol=1e-12)
    np.testing.assert_allclose(walsh_hadamard(transformed), vector, atol=1e-12)


def test_walsh_hadamard_matches_the_sylvester_matrix():
    hadamard = np.array([[1.0]])
    for _ in range(3):
        hadamard = np.block([[hadamard, hadamard], [hadamard, -hadamard]])
    vector = _random_vector(2, 8, 1.0)
    np.testing.assert_allclose(walsh_hadamard(vector), hadamard @ vector / math.sqrt(8), atol=1e-12)


def test_walsh_hadamard_refuses_a_length_that_is_not_a_power_of_two():
    with pytest.raises(UpdateRejected):
        walsh_hadamard(np.ones(12))


def test_rotation_round_trips_through_padding():
    vector = _random_vector(3, 1000, 2.0)
    rotated = rotate(vector, SEED, 1024)
    assert rotated.shape == (1024,)
    assert math.isclose(float(np.linalg.norm(rotated)), 2.0, rel_tol=1e-12)
    restored = unrotate(rotated, SEED)
    np.testing.assert_allclose(restored[:1000], vector, atol=1e-12)
    np.testing.assert_allclose(restored[1000:], 0.0, atol=1e-12)


def test_rotation_spreads_a_one_hot_vector_evenly():
    one_hot = np.zeros(1024)
    one_hot[17] = 1.0
    np.testing.assert_allclose(np.abs(rotate(one_hot, SEED, 1024)), 1.0 / 32.0, rtol=1e-12)


def test_rotation_signs_are_a_function_of_the_public_seed():
    signs = rotation_signs(SEED, 4096)
    assert set(np.unique(signs)) == {-1.0, 1.0}
    np.testing.assert_array_equal(signs, rotation_signs(SEED, 4096))
    assert not np.array_equal(signs, rotation_signs(bytes(32), 4096))
    assert abs(float(signs.sum())) < 5.0 * math.sqrt(4096)


def test_rotation_seed_of_wrong_length_is_rejected():
    with pytest.raises(UpdateRejected):
        rotation_signs(b"short", 8)


# --- clipping and rounding ---------------------------------------------------------


def test_clip_to_norm_bounds_the_norm_and_keeps_the_direction():
    vector = _random_vector(4, 50, 10.0)
    clipped, was_clipped = clip_to_norm(vector, 2.0)
    assert was_clipped
    assert float(np.linalg.norm(clipped)) <= 2.0 * (1 + 1e-12)
    np.testing.assert_allclose(clipped / 2.0, vector / 10.0, atol=1e-12)


def test_clip_to_norm_leaves_a_short_vector_unchanged():
    vector = _random_vector(5, 50, 0.5)
    clipped, was_clipped = clip_to_norm(vector, 2.0)
    assert not was_clipped
    np.testing.assert_array_equal(clipped, vector)


def test_stochastic_rounding_is_unbiased():
    fractions = np.array([0.0, 0.1, 0.25, 0.5, 0.9, -0.3, -2.75, 7.999])
    draws = 40_000
    values = np.tile(fractions, draws)
    rounded = stochastic_round(values, _source(6)).reshape(draws, fractions.size)
    assert np.all((rounded == np.floor(fractions)) | (rounded == np.floor(fractions) + 1))
    up_probability = fractions - np.floor(fractions)
    tolerance = 5.0 * np.sqrt(np.maximum(up_probability * (1 - up_probability), 1e-12) / draws)
    assert np.all(np.abs(rounded.mean(axis=0) - fractions) <= tolerance)


def test_conditional_rounding_redraws_until_the_norm_bound_holds():
    values = np.full(64, 0.5)  # ||round(x)||^2 ~ Binomial(64, 1/2): the bound 28 often fails
    attempts_seen = []
    for seed in range(20):
        rounded, attempts = conditional_round(values, 28, _source(100 + seed))
        assert int(np.dot(rounded, rounded)) <= 28
        attempts_seen.append(attempts)
    assert max(attempts_seen) > 1


def test_conditional_rounding_gives_up_with_a_named_error_when_the_bound_is_unreachable():
    with pytest.raises(RoundingFailed):
        conditional_round(np.full(64, 0.5), 0, _source(7))


# --- configuration and accounting --------------------------------------------------


def test_sensitivities_follow_kairouz_liu_steinke_theorem_1_and_the_integer_l1_bound():
    config = _config(dimension=1000, clip_norm=2.0, scale=100.0)
    padded, scaled_clip, beta = 1024, 200.0, config.rounding_beta
    expected_squared = min(
        (scaled_clip + math.sqrt(padded)) ** 2,
        scaled_clip**2 + padded / 4 + math.sqrt(2 * math.log(1 / beta)) * (scaled_clip + math.sqrt(padded) / 2),
    )
    assert config.padded_dimension == padded
    assert config.squared_norm_bound == math.floor(expected_squared)
    assert math.sqrt(math.floor(expected_squared)) <= config.l2_sensitivity <= math.sqrt(expected_squared) * (1 + 1e-12)
    expected_l1 = min(math.sqrt(padded) * config.l2_sensitivity, float(math.floor(expected_squared)))
    assert math.isclose(config.l1_sensitivity, expected_l1, rel_tol=1e-12)


def test_beta_zero_uses_the_unconditional_bound():
    config = _config(rounding_beta=0.0, rotation=Rotation.NONE)
    assert config.squared_norm_bound == math.floor((256.0 + math.sqrt(1000)) ** 2)


def test_accounting_event_is_a_skellam_event_with_the_aggregate_variance():
    config = _config()
    event = config.accounting_event(rounds=4)
    assert isinstance(event, Skellam)
    assert event.variance == config.aggregate_variance
    assert event.l2_sensitivity == config.l2_sensitivity
    assert event.l1_sensitivity == config.l1_sensitivity
    assert event.steps == 4


def test_with_noise_multiplier_sets_the_aggregate_std_to_z_times_the_l2_sensitivity():
    config = DistributedDPConfig.with_noise_multiplier(
        dimension=1000, clip_norm=1.0, scale=256.0, noise_multiplier=1.5, min_survivors=3, max_clients=5
    )
    assert math.isclose(math.sqrt(config.aggregate_variance), 1.5 * config.l2_sensitivity, rel_tol=1e-12)
    assert math.isclose(config.per_client_variance, config.aggregate_variance / 3, rel_tol=1e-12)


def test_target_epsilon_calibration_lands_at_or_below_the_target_for_t_survivors():
    config = DistributedDPConfig.for_target_epsilon(
        target_epsilon=2.0, delta=1e-5, rounds=5, dimension=1000, clip_norm=1.0, scale=256.0, min_survivors=3, max_clients=5
    )
    epsilon = compute_epsilon([config.accounting_event(rounds=5)], delta=1e-5, accountant=AccountantKind.RDP)
    assert 0.95 * 2.0 <= epsilon <= 2.0
    assert config.dimension == 1000 and config.min_survivors == 3


def test_sampler_total_variation_of_a_round_is_far_below_a_typical_delta():
    config = DistributedDPConfig.with_noise_multiplier(
        dimension=1_000_000, clip_norm=1.0, scale=2.0**14, noise_multiplier=1.0, min_survivors=10, max_clients=20
    )
    per_draw = PoissonSampler(config.per_client_variance / 2).total_variation_bound
    assert config.sampler_total_variation_bound == 2 * config.padded_dimension * config.max_clients * per_draw
    assert config.sampler_total_variation_bound < 1e-6


def test_a_ring_too_small_for_the_clients_and_noise_is_refused_with_a_clear_error():
    with pytest.raises(RingHeadroomError, match="wraps Z_2\\^16"):
        _config(ring_bits=16, scale=2.0**12, max_clients=10)
    assert _config(ring_bits=32, scale=2.0**12, max_clients=10).ring.bits == 32


def test_headroom_check_covers_the_noise_of_all_clients():
    config = _config(ring_bits=32, aggregate_variance=1e12, min_survivors=1, max_clients=100)
    noise = noise_tail_bound(1e14, dimension=1024, failure_probability=config.overflow_probability)
    assert config.aggregate_bound >= noise > 10 * math.sqrt(1e14)
    with pytest.raises(RingHeadroomError):
        _config(ring_bits=32, aggregate_variance=1e16, min_survivors=1, max_clients=100)


@pytest.mark.parametrize(
    "overrides",
    [
        {"dimension": 0},
        {"clip_norm": -1.0},
        {"scale": math.inf},
        {"aggregate_variance": 0.0},
        {"min_survivors": 6},
        {"ring_bits": 65},
        {"rotation": "randomized-hadamard"},
        {"rounding_beta": 1.0},
        {"overflow_probability": 0.0},
        {"scale": 2.0**40},
    ],
)
def test_invalid_configuration_is_refused(overrides):
    with pytest.raises(DistributedDPConfigError):
        _config(**{"ring_bits": 64, **overrides})


def test_errors_derive_from_the_dp_base_error():
    assert issubclass(DistributedDPConfigError, DPError) and issubclass(UpdateRejected, DPError)


# --- encoding, noise and decoding ------------------------------------------------


def test_each_client_adds_skellam_noise_of_the_per_client_variance():
    config = _config(dimension=200_000, rotation=Rotation.NONE, aggregate_variance=900.0, min_survivors=3)
    encoded = encode_update(np.zeros(config.dimension), config, rotation_seed=None, source=_source(11))
    noise = config.ring.to_signed(encoded.values).astype(np.float64)
    variance = config.per_client_variance  # 300; a zero update rounds to exactly zero
    assert abs(float(noise.mean())) < 5 * math.sqrt(variance / noise.size)
    assert abs(float(noise.var()) - variance) < 5 * math.sqrt((2 * variance**2 + variance) / noise.size)


def test_the_sum_of_n_clients_noise_has_n_over_t_times_the_aggregate_variance():
    config = _config(dimension=100_000, rotation=Rotation.NONE, aggregate_variance=600.0, min_survivors=3, max_clients=5)
    encoded = [encode_update(np.zeros(config.dimension), config, rotation_seed=None, source=_source(20 + i)) for i in range(5)]
    total = config.ring.to_signed(_ring_sum(encoded, config)).astype(np.float64)
    variance = 5 * config.per_client_variance  # 1000
    assert abs(float(total.mean())) < 5 * math.sqrt(variance / total.size)
    assert abs(float(total.var()) - variance) < 5 * math.sqrt((2 * variance**2 + variance) / total.size)


def test_t_survivors_carry_exactly_the_target_aggregate_variance():
    config = _config(dimension=100_000, rotation=Rotation.NONE, aggregate_variance=600.0, min_survivors=3, max_clients=5)
    encoded = [encode_update(np.zeros(config.dimension), config, rotation_seed=None, source=_source(40 + i)) for i in range(3)]
    total = config.ring.to_signed(_ring_sum(encoded, config)).astype(np.float64)
    assert abs(float(total.var()) - 600.0) < 5 * math.sqrt((2 * 600.0**2 + 600.0) / total.size)


def test_decode_of_the_ring_sum_recovers_the_sum_of_clipped_updates_within_the_noise():
    config = _config(dimension=3000, scale=2.0**10, aggregate_variance=2.0**14, min_survivors=3, max_clients=5)
    updates = [_random_vector(50 + i, 3000, norm) for i, norm in enumerate([0.5, 0.9, 3.0, 1.0, 0.2])]
    encoded = [encode_update(update, config, rotation_seed=SEED, source=_source(60 + i)) for i, update in enumerate(updates)]
    assert [e.clipped for e in encoded] == [False, False, True, False, False]
    expected = sum(clip_to_norm(update, config.clip_norm)[0] for update in updates)
    decoded = decode_aggregate(_ring_sum(encoded, config), config, rotation_seed=SEED, survivors=5)
    error = decoded - expected
    # Per coordinate, in integer units: noise 5 V / t plus rounding variance in [0, 5/4].
    noise_variance = 5 * config.per_client_variance
    low, high = math.sqrt(noise_variance) / config.scale, math.sqrt(noise_variance + 5 / 4) / config.scale
    rms = float(np.sqrt(np.mean(error**2)))
    assert 0.9 * low < rms < 1.1 * high
    assert abs(float(error.mean())) < 5 * high / math.sqrt(error.size)
    mean = decode_aggregate(_ring_sum(encoded, config), config, rotation_seed=SEED, survivors=5, reduction=Reduction.MEAN)
    np.testing.assert_allclose(mean, decoded / 5, rtol=1e-12)


def test_encode_enforces_the_rounded_norm_bound_before_noise():
    config = _config(dimension=500, scale=64.0, aggregate_variance=1.0, min_survivors=1, max_clients=1)
    update = _random_vector(70, 500, 5.0)
    encoded = encode_update(update, config, rotation_seed=SEED, source=_source(71))
    assert encoded.clipped and encoded.rounding_attempts >= 1
    assert encoded.values.shape == (512,) and encoded.values.dtype == config.ring.dtype


def test_encode_and_decode_without_rotation_round_trip_negative_values_through_the_ring():
    config = _config(dimension=10, scale=2.0**20, aggregate_variance=1.0, min_survivors=1, max_clients=1, rotation=Rotation.NONE)
    update = np.array([-0.5, 0.5, -0.1, 0.0, 0.3, -0.2, 0.1, 0.05, -0.05, 0.0])
    encoded = encode_update(update, config, rotation_seed=None, source=_source(72))
    decoded = decode_aggregate(encoded.values, config, rotation_seed=None, survivors=1)
    np.testing.assert_allclose(decoded, update, atol=20 / config.scale)


def test_same_secret_source_gives_the_same_encoding_and_another_differs():
    config = _config()
    update = _random_vector(80, 1000, 0.7)
    first = encode_update(update, config, rotation_seed=SEED, source=_source(81)).values
    np.testing.assert_array_equal(first, encode_update(update, config, rotation_seed=SEED, source=_source(81)).values)
    assert not np.array_equal(first, encode_update(update, config, rotation_seed=SEED, source=_source(82)).values)


@pytest.mark.parametrize(
    "update, seed",
    [
        (np.zeros(999), SEED),
        (np.zeros((10, 100)), SEED),
        (np.full(1000, np.nan), SEED),
        (np.zeros(1000), None),
        (np.zeros(1000), b"x" * 31),
    ],
)
def test_encode_refuses_bad_updates_and_seeds(update, seed):
    with pytest.raises(UpdateRejected):
        encode_update(update, _config(), rotation_seed=seed, source=_source(1))


def test_encode_without_rotation_refuses_a_rotation_seed():
    with pytest.raises(UpdateRejected):
        encode_update(np.zeros(1000), _config(rotation=Rotation.NONE), rotation_seed=SEED, source=_source(1))


@pytest.mark.parametrize("survivors", [2, 6, True])
def test_decode_refuses_a_survivor_count_outside_threshold_and_cohort(survivors):
    config = _config()
    with pytest.raises(UpdateRejected):
        decode_aggregate(config.ring.zeros(1024), config, rotation_seed=SEED, survivors=survivors)


def test_decode_refuses_wrong_length_dtype_and_unreduced_values():
    config = _config(ring_bits=20)
    with pytest.raises(UpdateRejected):
        decode_aggregate(config.ring.zeros(1000), config, rotation_seed=SEED, survivors=3)
    with pytest.raises(UpdateRejected):
        decode_aggregate(np.zeros(1024, dtype=np.uint64), config, rotation_seed=SEED, survivors=3)
    unreduced = config.ring.zeros(1024)
    unreduced[0] = 1 << 20
    with pytest.raises(UpdateRejected):
        decode_aggregate(unreduced, config, rotation_seed=SEED, survivors=3)
