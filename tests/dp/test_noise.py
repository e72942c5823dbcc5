"""CSPRNG samplers of dp.mechanisms.noise: Gaussian (Holohan-Braghin sum), Poisson/Skellam tables,
Poisson subsampling.

Statistical tests use fixed seeds (DeterministicRandom) and tolerances of about five
standard errors, so a correct sampler fails with probability far below 1e-5 per check
and a sampler off by the stated margins fails for certain at these sample sizes.
"""

from __future__ import annotations

import math
from decimal import Decimal, localcontext

import numpy as np
import pytest

from dp.errors import DPError
from dp.mechanisms.noise import (
    HOLOHAN_BRAGHIN_SUMMANDS,
    NoiseError,
    PoissonSampler,
    gaussian_noise,
    poisson_subsample,
    skellam_noise,
    standard_normal,
)
from secagg.hazmat.randomness import DeterministicRandom

SAMPLES = 200_000


def _source(seed: int) -> DeterministicRandom:
    return DeterministicRandom.from_int(seed)


def _check_mean_and_variance(samples: np.ndarray, *, variance: float, fourth_moment: float) -> None:
    count = samples.size
    mean_tolerance = 5.0 * math.sqrt(variance / count)
    assert abs(float(samples.mean())) < mean_tolerance
    variance_tolerance = 5.0 * math.sqrt((fourth_moment - variance**2) / count)
    assert abs(float(samples.var()) - variance) < variance_tolerance


def test_standard_normal_has_zero_mean_unit_variance_and_normal_one_sigma_mass():
    samples = standard_normal(_source(1), SAMPLES)
    _check_mean_and_variance(samples, variance=1.0, fourth_moment=3.0)
    within_one = float(np.mean(np.abs(samples) < 1.0))
    expected = math.erf(1.0 / math.sqrt(2.0))  # P(|Z| < 1) for a standard normal
    assert abs(within_one - expected) < 5.0 * math.sqrt(expected * (1 - expected) / SAMPLES)


def test_standard_normal_odd_count_returns_exactly_that_many_samples():
    assert standard_normal(_source(1), 7).shape == (7,)


def test_gaussian_noise_has_requested_mean_and_variance():
    std = 2.5
    samples = gaussian_noise(_source(2), SAMPLES, std=std)
    _check_mean_and_variance(samples, variance=std**2, fourth_moment=3.0 * std**4)


def test_gaussian_noise_is_the_normalised_sum_of_four_standard_normals_from_the_same_stream():
    count, std = 1000, 3.0
    expected = standard_normal(_source(3), HOLOHAN_BRAGHIN_SUMMANDS * count).reshape(HOLOHAN_BRAGHIN_SUMMANDS, count)
    expected = expected.sum(axis=0) * std / math.sqrt(HOLOHAN_BRAGHIN_SUMMANDS)
    np.testing.assert_allclose(gaussian_noise(_source(3), count, std=std), expected, rtol=1e-12, atol=0)


def test_gaussian_noise_same_seed_repeats_and_other_seed_differs():
    first = gaussian_noise(_source(4), 100, std=1.0)
    np.testing.assert_array_equal(first, gaussian_noise(_source(4), 100, std=1.0))
    assert not np.array_equal(first, gaussian_noise(_source(5), 100, std=1.0))


def test_gaussian_noise_with_zero_std_is_zero():
    np.testing.assert_array_equal(gaussian_noise(_source(1), 10, std=0.0), np.zeros(10))


@pytest.mark.parametrize(
    "kwargs",
    [{"std": -1.0}, {"std": math.nan}, {"std": math.inf}, {"std": 1.0, "summands": 0}, {"std": 1.0, "summands": 1.5}],
)
def test_gaussian_noise_invalid_parameters_raise_noise_error(kwargs):
    with pytest.raises(NoiseError):
        gaussian_noise(_source(1), 10, **kwargs)


def test_noise_error_is_a_dp_error():
    assert issubclass(NoiseError, DPError)


def test_poisson_subsample_includes_each_item_with_the_given_rate():
    population, rate = 400_000, 0.03
    chosen = poisson_subsample(_source(6), population, rate)
    assert np.all(np.diff(chosen) > 0) and chosen.min() >= 0 and chosen.max() < population
    tolerance = 5.0 * math.sqrt(population * rate * (1 - rate))
    assert abs(chosen.size - population * rate) < tolerance
    # Independence across halves: both halves see the same rate.
    first_half = np.count_nonzero(chosen < population // 2)
    assert abs(first_half - population * rate / 2) < tolerance


def test_poisson_subsample_rate_one_takes_everything():
    np.testing.assert_array_equal(poisson_subsample(_source(1), 5, 1.0), np.arange(5))


@pytest.mark.parametrize("rate", [0.0, -0.1, 1.5, math.nan])
def test_poisson_subsample_invalid_rate_raises(rate):
    with pytest.raises(NoiseError):
        poisson_subsample(_source(1), 10, rate)


PI_60_DIGITS = "3.14159265358979323846264338327950288419716939937510582097494459"
"""pi to 60 decimal places (OEIS A000796)."""

STIRLING_BERNOULLI = [(1, 6), (-1, 30), (1, 42), (-1, 30), (5, 66), (-691, 2730)]
"""Bernoulli numbers B_2 .. B_12 as fractions (OEIS A000367 / A002445)."""


def _exact_log_factorial(k: int) -> Decimal:
    """ln k! to about 50 digits: exact for k < 2000, Stirling's series with six
    correction terms otherwise (remainder below 1e-40 for k >= 2000)."""
    if k < 2000:
        return Decimal(math.factorial(k)).ln()
    big = Decimal(k)
    result = big * big.ln() - big + (2 * Decimal(PI_60_DIGITS) * big).ln() / 2
    for j, (numerator, denominator) in enumerate(STIRLING_BERNOULLI, start=1):
        result += Decimal(numerator) / Decimal(denominator) / (2 * j * (2 * j - 1) * big ** (2 * j - 1))
    return result


def _exact_total_variation(sampler: PoissonSampler) -> Decimal:
    """Exact distance between the table and Poisson(mean), in 60-digit arithmetic.

    p(low) = exp(-mean + low ln mean - ln low!), then p(k+1) = p(k) mean / (k + 1);
    the table's law is count / 2^63 exactly. Mass outside the table counts fully.
    """
    with localcontext() as context:
        context.prec = 60
        mean = Decimal(repr(sampler.mean))
        buckets = sampler.bucket_probabilities()
        low = buckets[0][0]
        probability = (-mean + low * mean.ln() - _exact_log_factorial(low)).exp()
        scale = Decimal(2) ** 63
        inside = Decimal(0)
        distance = Decimal(0)
        for value, count in buckets:
            inside += probability
            distance += abs(Decimal(count) / scale - probability)
            probability = probability * mean / (value + 1)
        return (distance + (1 - inside)) / 2


@pytest.mark.parametrize("mean", [1e-3, 0.3, 7.0, 123.4, 1000.0, 9999.0, 20_000.0, 300_000.0, 1.34e7])
def test_poisson_table_is_within_its_total_variation_bound_of_the_exact_law(mean):
    sampler = PoissonSampler(mean)
    distance = _exact_total_variation(sampler)
    assert float(distance) <= sampler.total_variation_bound
    assert sampler.total_variation_bound < 1e-14


def test_poisson_table_buckets_partition_two_to_the_63():
    sampler = PoissonSampler(42.5)
    counts = [count for _, count in sampler.bucket_probabilities()]
    assert sum(counts) == 2**63
    assert min(counts) >= 0
    assert np.all(np.diff(sampler.thresholds.astype(np.float64)) >= 0)


@pytest.mark.parametrize("mean", [0.3, 50.0, 1e6])
def test_poisson_guide_table_gives_the_same_values_as_a_full_binary_search(mean):
    sampler = PoissonSampler(mean)
    words = np.empty(50_000, dtype=np.uint64)
    _source(8).fill(words)
    words >>= np.uint64(1)
    expected = np.searchsorted(sampler.thresholds, words, side="right") + sampler.offset
    np.testing.assert_array_equal(sampler.sample(_source(8), 50_000), expected)


@pytest.mark.parametrize("mean", [0.0, -1.0, math.inf, math.nan, 2.0**41])
def test_poisson_sampler_invalid_mean_raises(mean):
    with pytest.raises(NoiseError):
        PoissonSampler(mean)


@pytest.mark.parametrize("variance", [0.5, 3.0, 1e4, 2.5e7])
def test_skellam_noise_has_zero_mean_and_requested_variance(variance):
    samples = skellam_noise(_source(9), SAMPLES, variance=variance)
    assert samples.dtype == np.int64
    # Symmetric Skellam: fourth central moment 3 V^2 + V (excess kurtosis 1 / V).
    _check_mean_and_variance(samples.astype(np.float64), variance=variance, fourth_moment=3 * variance**2 + variance)


def test_skellam_noise_matches_the_exact_skellam_pmf_by_chi_square():
    variance = 2.0  # Poisson(1) - Poisson(1)
    samples = skellam_noise(_source(10), SAMPLES, variance=variance)
    poisson = [math.exp(-1.0) / math.factorial(k) for k in range(40)]
    values = range(-6, 7)
    expected = np.array([sum(poisson[j] * poisson[j - v] for j in range(max(0, v), 40) if j - v < 40) for v in values])
    observed = np.array([np.count_nonzero(samples == v) for v in values] + [np.count_nonzero(np.abs(samples) > 6)])
    expected_counts = np.append(expected, 1.0 - expected.sum()) * SAMPLES
    chi_square = float(np.sum((observed - expected_counts) ** 2 / expected_counts))
    # 13 bins of values plus the tail bin: 13 degrees of freedom, P(chi2_13 > 40) < 2e-4.
    assert chi_square < 40.0


def test_skellam_noise_zero_variance_is_zero_and_negative_variance_raises():
    np.testing.assert_array_equal(skellam_noise(_source(1), 5, variance=0.0), np.zeros(5, dtype=np.int64))
    with pytest.raises(NoiseError):
        skellam_noise(_source(1), 5, variance=-1.0)
