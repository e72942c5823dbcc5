"""PRV accountant: pinned Opacus value, validity against RDP, composition, refusals.

Pinned value: Gaussian, q = 0.1, z = 1.0, T = 100, delta = 1e-5 gives epsilon 7.057
with Opacus 1.6's PRVAccountant (Google's dp-accounting PLD gives
7.047).
"""

from __future__ import annotations

import numpy as np
import pytest

from dp.accounting import (
    AccountantKind,
    NumericalAccuracyError,
    SampledGaussian,
    Skellam,
    UnsupportedMechanismError,
    compute_epsilon,
)
from dp.accounting.prv import SubsampledGaussianPRV, prv_epsilon

DELTA = 1e-5


def test_pinned_gaussian_prv_epsilon_matches_opacus_1_6() -> None:
    event = SampledGaussian(noise_multiplier=1.0, sample_rate=0.1, steps=100)
    assert compute_epsilon([event], delta=DELTA, accountant=AccountantKind.PRV) == pytest.approx(7.057, abs=5e-4)


@pytest.mark.parametrize(
    ("sample_rate", "noise_multiplier", "steps"),
    [(0.1, 1.0, 100), (0.01, 0.8, 1000), (1.0, 2.0, 10), (0.3, 1.5, 1)],
)
def test_prv_epsilon_is_at_most_the_rdp_epsilon(sample_rate, noise_multiplier, steps) -> None:
    """RDP conversion is a valid but loose bound; the PRV bound is near-exact (Gopi et al., section 6)."""
    event = SampledGaussian(noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=steps)
    prv = compute_epsilon([event], delta=DELTA, accountant=AccountantKind.PRV)
    rdp = compute_epsilon([event], delta=DELTA, accountant=AccountantKind.RDP)
    assert 0.0 < prv < rdp


def test_full_batch_gaussian_prv_matches_the_exact_gaussian_privacy_curve() -> None:
    """T steps of the Gaussian mechanism with noise multiplier z are exactly one Gaussian
    mechanism with mu = sqrt(T) / z, whose epsilon(delta) solves Balle and Wang 2018,
    Theorem 8: delta = Phi(-eps/mu + mu/2) - e^eps Phi(-eps/mu - mu/2). The PRV upper
    bound eps_estimate(delta - delta_error) + eps_error is never below the exact
    epsilon(delta), and exceeds the exact epsilon(delta - delta_error) by at most
    2 eps_error (Gopi et al. 2021, Theorem 5.5; eps_error = 0.01, delta_error = delta / 1000)."""
    from math import erfc, exp, sqrt

    z, steps = 2.0, 16
    mu = sqrt(steps) / z

    def phi(x: float) -> float:
        return 0.5 * erfc(-x / sqrt(2.0))

    def exact_delta(epsilon: float) -> float:
        return phi(-epsilon / mu + mu / 2) - exp(epsilon) * phi(-epsilon / mu - mu / 2)

    def exact_epsilon(delta: float) -> float:
        low, high = 0.0, 50.0
        for _ in range(100):
            middle = (low + high) / 2
            if exact_delta(middle) > delta:
                low = middle
            else:
                high = middle
        return high

    prv = compute_epsilon(
        [SampledGaussian(noise_multiplier=z, sample_rate=1.0, steps=steps)], delta=DELTA, accountant=AccountantKind.PRV
    )
    assert exact_epsilon(DELTA) <= prv <= exact_epsilon(DELTA * (1 - 1e-3)) + 2 * 0.01


def test_subsampled_gaussian_prv_cdf_is_a_distribution_function() -> None:
    prv = SubsampledGaussianPRV(sample_rate=0.1, noise_multiplier=1.0)
    points = np.linspace(-5.0, 10.0, 2001)
    cdf = prv.cdf(points)
    assert np.all(np.diff(cdf) >= 0)
    assert cdf[0] == 0.0  # Y > log(1 - q) = -0.105 always
    assert cdf[-1] == pytest.approx(1.0, abs=1e-12)


def test_truncated_mean_of_the_full_batch_prv_is_its_gaussian_mean() -> None:
    """With q = 1 the PRV is N(mu, 2 mu) with mu = 1 / (2 z^2) (Gopi et al., Example 2.1)."""
    z = 1.5
    prv = SubsampledGaussianPRV(sample_rate=1.0, noise_multiplier=z)
    assert prv.truncated_mean(-30.0, 30.0) == pytest.approx(1.0 / (2 * z * z), rel=1e-12)


def test_heterogeneous_prv_composition_equals_the_concatenated_history() -> None:
    first = SampledGaussian(noise_multiplier=1.0, sample_rate=0.1, steps=30)
    second = SampledGaussian(noise_multiplier=1.3, sample_rate=0.05, steps=70)
    third = SampledGaussian(noise_multiplier=1.0, sample_rate=0.1, steps=20)
    merged = SampledGaussian(noise_multiplier=1.0, sample_rate=0.1, steps=50)
    heterogeneous = compute_epsilon([first, second, third], delta=DELTA, accountant=AccountantKind.PRV)
    assert heterogeneous == pytest.approx(compute_epsilon([merged, second], delta=DELTA, accountant=AccountantKind.PRV), rel=1e-9)
    assert heterogeneous == pytest.approx(
        compute_epsilon([second, third, first], delta=DELTA, accountant=AccountantKind.PRV), rel=1e-9
    )
    alone = compute_epsilon([merged], delta=DELTA, accountant=AccountantKind.PRV)
    assert heterogeneous > alone


def test_prv_refuses_a_skellam_event_with_a_named_error() -> None:
    events = [
        SampledGaussian(noise_multiplier=1.0, sample_rate=0.1, steps=10),
        Skellam(l1_sensitivity=100.0, l2_sensitivity=10.0, variance=1e4, steps=1),
    ]
    with pytest.raises(UnsupportedMechanismError, match="skellam"):
        compute_epsilon(events, delta=DELTA, accountant=AccountantKind.PRV)


def test_prv_refuses_a_delta_below_floating_point_resolution_of_its_grid() -> None:
    event = SampledGaussian(noise_multiplier=1.0, sample_rate=0.1, steps=100)
    with pytest.raises(NumericalAccuracyError):
        prv_epsilon([event], delta=1e-300)


def test_prv_refuses_an_epsilon_too_large_for_double_precision_and_points_to_rdp() -> None:
    event = SampledGaussian(noise_multiplier=0.01, sample_rate=0.5, steps=1)
    with pytest.raises(NumericalAccuracyError, match="RDP accountant"):
        compute_epsilon([event], delta=DELTA, accountant=AccountantKind.PRV)
    assert compute_epsilon([event], delta=DELTA, accountant=AccountantKind.RDP) > 1000
