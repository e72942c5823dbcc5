"""RDP analysis: pinned Opacus values, closed forms, monotonicity, composition, Skellam.

Pinned value: Gaussian, q = 0.1, z = 1.0, T = 100, delta = 1e-5 gives epsilon 7.899
with Opacus 1.6's RDPAccountant (Google's dp-accounting gives 7.904
with its own order grid).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from dp.accounting import (
    AccountantKind,
    InvalidParameterError,
    SampledGaussian,
    Skellam,
    compute_epsilon,
)
from dp.accounting.rdp import (
    DEFAULT_RDP_ORDERS,
    INTEGER_RDP_ORDERS,
    epsilon_from_rdp,
    rdp_epsilon,
    sampled_gaussian_rdp,
    skellam_rdp,
)

DELTA = 1e-5


def test_pinned_gaussian_rdp_epsilon_matches_opacus_1_6() -> None:
    event = SampledGaussian(noise_multiplier=1.0, sample_rate=0.1, steps=100)
    assert compute_epsilon([event], delta=DELTA) == pytest.approx(7.899, abs=5e-4)
    assert compute_epsilon([event], delta=DELTA, accountant=AccountantKind.RDP) == pytest.approx(7.899, abs=5e-4)


def test_default_orders_are_opacus_default_alphas() -> None:
    assert len(DEFAULT_RDP_ORDERS) == 99 + 52
    assert DEFAULT_RDP_ORDERS[0] == pytest.approx(1.1)
    assert DEFAULT_RDP_ORDERS[98] == pytest.approx(10.9)
    assert DEFAULT_RDP_ORDERS[99:] == tuple(float(order) for order in range(12, 64))
    assert tuple(float(order) for order in [*range(2, 11), *range(12, 64)]) == INTEGER_RDP_ORDERS


def test_full_batch_gaussian_rdp_is_the_closed_form_alpha_over_two_z_squared() -> None:
    orders = np.array(DEFAULT_RDP_ORDERS)
    rdp = sampled_gaussian_rdp(sample_rate=1.0, noise_multiplier=2.0, orders=DEFAULT_RDP_ORDERS)
    np.testing.assert_allclose(rdp, orders / 8.0, rtol=1e-15)


def test_empty_history_spends_nothing() -> None:
    assert compute_epsilon([], delta=DELTA) == 0.0
    assert compute_epsilon([], delta=DELTA, accountant=AccountantKind.PRV) == 0.0


def test_full_batch_gaussian_epsilon_is_the_balle_conversion_of_the_closed_form() -> None:
    z, steps = 3.0, 20
    expected = min(
        steps * alpha / (2 * z * z) + math.log((alpha - 1) / alpha) - (math.log(DELTA) + math.log(alpha)) / (alpha - 1)
        for alpha in DEFAULT_RDP_ORDERS
    )
    event = SampledGaussian(noise_multiplier=z, sample_rate=1.0, steps=steps)
    assert compute_epsilon([event], delta=DELTA) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(("sample_rate", "noise_multiplier"), [(0.1, 1.0), (0.01, 0.7), (0.5, 2.0), (0.001, 5.0)])
@pytest.mark.parametrize("integer_order", [2, 3, 7])
def test_fractional_order_series_meets_the_integer_order_sum(sample_rate, noise_multiplier, integer_order) -> None:
    """The fractional-order series (erfc terms) and the integer-order binomial sum are
    two different formulas for the same continuous function of alpha."""
    near = [integer_order - 1e-7, integer_order + 1e-7]
    fractional = sampled_gaussian_rdp(sample_rate=sample_rate, noise_multiplier=noise_multiplier, orders=near)
    exact = sampled_gaussian_rdp(sample_rate=sample_rate, noise_multiplier=noise_multiplier, orders=[float(integer_order)])[0]
    np.testing.assert_allclose(fractional, [exact, exact], rtol=1e-5)


def test_subsampled_rdp_lies_below_the_full_batch_rdp() -> None:
    subsampled = sampled_gaussian_rdp(sample_rate=0.05, noise_multiplier=1.2)
    full = sampled_gaussian_rdp(sample_rate=1.0, noise_multiplier=1.2)
    assert np.all(subsampled < full)
    assert np.all(subsampled > 0)


@pytest.mark.parametrize("accountant", list(AccountantKind))
def test_epsilon_grows_with_steps(accountant) -> None:
    epsilons = [
        compute_epsilon(
            [SampledGaussian(noise_multiplier=1.0, sample_rate=0.05, steps=steps)], delta=DELTA, accountant=accountant
        )
        for steps in (1, 10, 100, 400)
    ]
    assert all(earlier < later for earlier, later in itertools.pairwise(epsilons))


@pytest.mark.parametrize("accountant", list(AccountantKind))
def test_epsilon_falls_as_noise_grows(accountant) -> None:
    epsilons = [
        compute_epsilon([SampledGaussian(noise_multiplier=z, sample_rate=0.05, steps=50)], delta=DELTA, accountant=accountant)
        for z in (0.6, 0.9, 1.5, 4.0)
    ]
    assert all(earlier > later for earlier, later in itertools.pairwise(epsilons))


def test_skellam_epsilon_grows_with_rounds_and_falls_with_variance() -> None:
    def epsilon(variance: float, steps: int) -> float:
        return compute_epsilon([Skellam(l1_sensitivity=100.0, l2_sensitivity=10.0, variance=variance, steps=steps)], delta=DELTA)

    by_rounds = [epsilon(2500.0, steps) for steps in (1, 5, 25, 125)]
    by_variance = [epsilon(variance, 10) for variance in (400.0, 1600.0, 6400.0, 25600.0)]
    assert all(earlier < later for earlier, later in itertools.pairwise(by_rounds))
    assert all(earlier > later for earlier, later in itertools.pairwise(by_variance))


def test_skellam_rdp_is_the_gaussian_rdp_plus_a_vanishing_discretisation_term() -> None:
    l1, l2 = 50.0, 10.0
    orders = np.array(INTEGER_RDP_ORDERS)
    surcharges = []
    for variance in (1e2, 1e4, 1e6):
        skellam = skellam_rdp(l1_sensitivity=l1, l2_sensitivity=l2, variance=variance)
        gaussian = sampled_gaussian_rdp(sample_rate=1.0, noise_multiplier=math.sqrt(variance) / l2, orders=INTEGER_RDP_ORDERS)
        np.testing.assert_allclose(gaussian, orders * l2**2 / (2 * variance), rtol=1e-14)
        surcharge = skellam - gaussian
        assert np.all(surcharge > 0)
        surcharges.append(float(np.max(surcharge / gaussian)))
    assert surcharges[0] > surcharges[1] > surcharges[2]
    assert surcharges[2] < 1e-4


@pytest.mark.parametrize("steps", [1, 20])
def test_skellam_epsilon_approaches_the_gaussian_epsilon_as_variance_grows(steps) -> None:
    """Same L2 sensitivity, variance (z * Delta2)^2: Skellam -> Gaussian (Agarwal et al. 2021, section 3)."""
    l2 = 16.0
    l1 = l2**2
    gaps = []
    for noise_multiplier in (0.5, 2.0, 8.0, 32.0):
        variance = (noise_multiplier * l2) ** 2
        skellam = compute_epsilon([Skellam(l1_sensitivity=l1, l2_sensitivity=l2, variance=variance, steps=steps)], delta=DELTA)
        gaussian = rdp_epsilon([SampledGaussian(noise_multiplier=noise_multiplier, sample_rate=1.0, steps=steps)], delta=DELTA)[0]
        assert skellam >= gaussian
        gaps.append((skellam - gaussian) / gaussian)
    assert gaps == sorted(gaps, reverse=True)
    assert gaps[-1] < 1e-3


@pytest.mark.parametrize(
    ("variance", "expected"),
    [
        # alpha D2^2/(2 var) + min(((2 alpha - 1) D2^2 + 6 D1)/(4 var^2), 3 D1/(2 var)), D1 = 4, D2 = 2:
        (10.0, [0.4 + 0.09, 0.6 + 0.11]),  # the second term takes its first branch: 36/400, 44/400
        (1.0, [4.0 + 6.0, 6.0 + 6.0]),  # the second term takes its second branch: 3 * 4 / 2
    ],
)
def test_skellam_rdp_known_answers_from_corollary_3_6(variance, expected) -> None:
    """Hand-evaluated Agarwal, Kairouz, Liu 2021 (arXiv:2110.04995v2) Corollary 3.6 at alpha = 2, 3."""
    rdp = skellam_rdp(l1_sensitivity=4.0, l2_sensitivity=2.0, variance=variance, orders=[2, 3])
    np.testing.assert_allclose(rdp, expected, rtol=1e-14)


def test_skellam_rdp_refuses_fractional_orders() -> None:
    with pytest.raises(InvalidParameterError, match="integer orders"):
        skellam_rdp(l1_sensitivity=4.0, l2_sensitivity=2.0, variance=100.0, orders=[2.5])


def test_history_with_skellam_is_evaluated_on_integer_orders_only() -> None:
    gaussian = SampledGaussian(noise_multiplier=1.0, sample_rate=0.1, steps=100)
    skellam = Skellam(l1_sensitivity=4.0, l2_sensitivity=2.0, variance=1e6, steps=1)
    _, order = rdp_epsilon([gaussian, skellam], delta=DELTA)
    assert float(order).is_integer()
    assert rdp_epsilon([gaussian, skellam], delta=DELTA)[0] >= rdp_epsilon([gaussian], delta=DELTA)[0]


def test_heterogeneous_composition_equals_the_sum_of_rdp_curves() -> None:
    events = [
        SampledGaussian(noise_multiplier=1.0, sample_rate=0.1, steps=40),
        SampledGaussian(noise_multiplier=1.5, sample_rate=0.02, steps=300),
        Skellam(l1_sensitivity=64.0, l2_sensitivity=8.0, variance=6400.0, steps=5),
    ]
    gaussian_a, gaussian_b, skellam = events
    total = (
        gaussian_a.steps * sampled_gaussian_rdp(sample_rate=0.1, noise_multiplier=1.0, orders=INTEGER_RDP_ORDERS)
        + gaussian_b.steps * sampled_gaussian_rdp(sample_rate=0.02, noise_multiplier=1.5, orders=INTEGER_RDP_ORDERS)
        + skellam.steps * skellam_rdp(l1_sensitivity=64.0, l2_sensitivity=8.0, variance=6400.0)
    )
    expected, _ = epsilon_from_rdp(orders=INTEGER_RDP_ORDERS, rdp=total, delta=DELTA)
    assert compute_epsilon(events, delta=DELTA) == pytest.approx(expected, rel=1e-12)
    assert compute_epsilon(events[::-1], delta=DELTA) == pytest.approx(expected, rel=1e-12)


def test_splitting_an_event_into_parts_does_not_change_epsilon() -> None:
    whole = [SampledGaussian(noise_multiplier=1.0, sample_rate=0.1, steps=100)]
    parts = [SampledGaussian(noise_multiplier=1.0, sample_rate=0.1, steps=steps) for steps in (30, 50, 20)]
    assert compute_epsilon(parts, delta=DELTA) == pytest.approx(compute_epsilon(whole, delta=DELTA), rel=1e-12)


@pytest.mark.parametrize("delta", [0.0, 1.0, -1e-5, math.nan, math.inf, 2.0])
def test_compute_epsilon_refuses_invalid_delta(delta) -> None:
    with pytest.raises(InvalidParameterError, match="delta"):
        compute_epsilon([SampledGaussian(noise_multiplier=1.0, sample_rate=0.1, steps=1)], delta=delta)


def test_compute_epsilon_refuses_an_unknown_accountant_and_a_non_event() -> None:
    event = SampledGaussian(noise_multiplier=1.0, sample_rate=0.1, steps=1)
    with pytest.raises(InvalidParameterError, match="accountant"):
        compute_epsilon([event], delta=DELTA, accountant="moments")  # type: ignore[arg-type]
    with pytest.raises(InvalidParameterError, match="event 1"):
        compute_epsilon([event, (1.0, 0.1, 1)], delta=DELTA)  # type: ignore[list-item]


def test_epsilon_from_rdp_refuses_mismatched_lengths() -> None:
    with pytest.raises(InvalidParameterError):
        epsilon_from_rdp(orders=[2.0, 3.0], rdp=[0.1], delta=DELTA)


def test_epsilon_from_an_infinite_rdp_curve_is_infinite() -> None:
    epsilon, order = epsilon_from_rdp(orders=[2.0, 3.0], rdp=[math.inf, math.inf], delta=DELTA)
    assert epsilon == math.inf
    assert math.isnan(order)
