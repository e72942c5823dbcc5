"""Calibration: the returned noise meets the target, and only just."""

from __future__ import annotations

import math

import pytest

from dp.accounting import (
    AccountantKind,
    BudgetTooSmallError,
    InvalidParameterError,
    SampledGaussian,
    Skellam,
    compute_epsilon,
    noise_multiplier_for_epsilon,
    skellam_variance_for_epsilon,
)

DELTA = 1e-5


@pytest.mark.parametrize(
    ("target", "sample_rate", "steps", "accountant"),
    [
        (1.0, 0.01, 1000, AccountantKind.RDP),
        (8.0, 0.1, 100, AccountantKind.RDP),
        (0.5, 1.0, 5, AccountantKind.RDP),
        (3.0, 0.1, 100, AccountantKind.PRV),
    ],
)
def test_noise_multiplier_meets_the_target_within_tolerance(target, sample_rate, steps, accountant) -> None:
    tolerance = 0.01
    z = noise_multiplier_for_epsilon(
        target_epsilon=target, delta=DELTA, sample_rate=sample_rate, steps=steps, accountant=accountant, tolerance=tolerance
    )
    event = SampledGaussian(noise_multiplier=z, sample_rate=sample_rate, steps=steps)
    achieved = compute_epsilon([event], delta=DELTA, accountant=accountant)
    assert target - tolerance <= achieved <= target


def test_pinned_epsilon_inverts_to_noise_multiplier_one() -> None:
    z = noise_multiplier_for_epsilon(target_epsilon=7.8993, delta=DELTA, sample_rate=0.1, steps=100, tolerance=1e-4)
    assert z == pytest.approx(1.0, abs=1e-3)


def test_tighter_target_needs_more_noise() -> None:
    noise = [
        noise_multiplier_for_epsilon(target_epsilon=target, delta=DELTA, sample_rate=0.05, steps=200)
        for target in (8.0, 2.0, 1.0)
    ]
    assert noise == sorted(noise)
    assert len(set(noise)) == len(noise)


def test_unreachable_target_is_refused_with_a_named_error() -> None:
    with pytest.raises(BudgetTooSmallError, match="unreachable"):
        noise_multiplier_for_epsilon(target_epsilon=1e-9, delta=DELTA, sample_rate=1.0, steps=10_000)


@pytest.mark.parametrize(
    "changes",
    [
        {"target_epsilon": 0.0},
        {"target_epsilon": -1.0},
        {"target_epsilon": math.inf},
        {"delta": 0.0},
        {"delta": 1.0},
        {"sample_rate": 0.0},
        {"sample_rate": 2.0},
        {"steps": 0},
        {"tolerance": 0.0},
        {"tolerance": math.nan},
        {"accountant": "gdp"},
    ],
)
def test_noise_multiplier_search_refuses_invalid_input(changes) -> None:
    arguments = {"target_epsilon": 2.0, "delta": DELTA, "sample_rate": 0.1, "steps": 10}
    arguments.update(changes)
    with pytest.raises(InvalidParameterError):
        noise_multiplier_for_epsilon(**arguments)


@pytest.mark.parametrize(("target", "steps"), [(1.0, 1), (4.0, 50)])
def test_skellam_variance_meets_the_target_within_tolerance(target, steps) -> None:
    l1, l2 = 256.0, 16.0
    variance = skellam_variance_for_epsilon(target_epsilon=target, delta=DELTA, l1_sensitivity=l1, l2_sensitivity=l2, steps=steps)
    event = Skellam(l1_sensitivity=l1, l2_sensitivity=l2, variance=variance, steps=steps)
    assert target - 0.01 <= compute_epsilon([event], delta=DELTA) <= target


def test_skellam_variance_is_close_to_the_gaussian_variance_for_the_same_target() -> None:
    """With large noise the Skellam surcharge is negligible: both calibrations agree."""
    l2 = 16.0
    variance = skellam_variance_for_epsilon(
        target_epsilon=1.0, delta=DELTA, l1_sensitivity=l2**2, l2_sensitivity=l2, steps=10, tolerance=1e-3
    )
    z = noise_multiplier_for_epsilon(target_epsilon=1.0, delta=DELTA, sample_rate=1.0, steps=10, tolerance=1e-3)
    assert math.sqrt(variance) / l2 == pytest.approx(z, rel=2e-3)


def test_skellam_variance_search_refuses_inconsistent_sensitivities() -> None:
    with pytest.raises(InvalidParameterError, match="l1_sensitivity"):
        skellam_variance_for_epsilon(target_epsilon=1.0, delta=DELTA, l1_sensitivity=3.0, l2_sensitivity=16.0, steps=1)
