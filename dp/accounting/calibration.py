"""Calibration: the least noise that keeps a planned run within a target epsilon.

Both searches bracket the answer by doubling, then bisect (the procedure of Opacus
1.6's ``get_noise_multiplier``), and return the *upper* end of the final bracket, so
the returned noise always satisfies epsilon <= target; the bisection stops once that
epsilon is within ``tolerance`` below the target. Epsilon decreases as noise grows
(more noise is post-processing-equivalent to less noise plus independent noise), which
is what makes bisection valid.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from dp.accounting.epsilon import compute_epsilon, validate_accountant_kind
from dp.accounting.errors import InvalidParameterError, NumericalAccuracyError
from dp.accounting.events import (
    AccountantKind,
    SampledGaussian,
    Skellam,
    validate_delta,
    validate_epsilon,
    validate_sample_rate,
    validate_steps,
)

MAX_NOISE_MULTIPLIER = 1e6
"""Beyond this noise multiplier the target is declared unreachable (as Opacus does)."""

_INITIAL_UPPER_NOISE_MULTIPLIER = 10.0
_MAX_BISECTIONS = 200
"""After 200 halvings the bracket is below double resolution; the safe end is returned."""


class BudgetTooSmallError(InvalidParameterError):
    """No noise level up to :data:`MAX_NOISE_MULTIPLIER` reaches the target epsilon."""


def _validate_tolerance(tolerance: object) -> float:
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)):
        raise InvalidParameterError(f"tolerance must be a number, got {type(tolerance).__name__}")
    if not (math.isfinite(tolerance) and tolerance > 0.0):
        raise InvalidParameterError(f"tolerance must be finite and > 0, got {tolerance!r}")
    return float(tolerance)


def _least_noise_multiplier(epsilon_at: Callable[[float], float], *, target_epsilon: float, tolerance: float) -> float:
    """Smallest z (to within ``tolerance`` in epsilon) with epsilon_at(z) <= target.

    A noise level at which the analysis cannot certify any epsilon
    (:class:`NumericalAccuracyError`) is treated as not meeting the target, so the
    search only moves towards more noise on such failures.
    """

    def certified(z: float) -> float:
        try:
            return epsilon_at(z)
        except NumericalAccuracyError:
            return math.inf

    low, high = 0.0, _INITIAL_UPPER_NOISE_MULTIPLIER
    epsilon_high = certified(high)
    while epsilon_high > target_epsilon:
        low, high = high, 2.0 * high
        if high > MAX_NOISE_MULTIPLIER:
            raise BudgetTooSmallError(
                f"target epsilon {target_epsilon} is unreachable with a noise multiplier up to {MAX_NOISE_MULTIPLIER:g}"
            )
        epsilon_high = certified(high)
    for _ in range(_MAX_BISECTIONS):
        if target_epsilon - epsilon_high <= tolerance:
            break
        middle = (low + high) / 2.0
        epsilon_middle = certified(middle)
        if epsilon_middle < target_epsilon:
            high, epsilon_high = middle, epsilon_middle
        else:
            low = middle
    return high


def noise_multiplier_for_epsilon(
    *,
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    accountant: AccountantKind = AccountantKind.RDP,
    tolerance: float = 0.01,
) -> float:
    """Least noise multiplier z such that ``steps`` steps of the sampled Gaussian
    mechanism at ``sample_rate`` stay within ``target_epsilon`` at ``delta``.

    Equivalent to Opacus's ``get_noise_multiplier(target_epsilon, target_delta,
    sample_rate, steps, accountant, epsilon_tolerance)``. Raises
    :class:`BudgetTooSmallError` if the target needs z above 1e6.
    """
    target = validate_epsilon(target_epsilon)
    checked_delta = validate_delta(delta)
    rate = validate_sample_rate(sample_rate)
    checked_steps = validate_steps(steps)
    kind = validate_accountant_kind(accountant)
    checked_tolerance = _validate_tolerance(tolerance)

    def epsilon_at(noise_multiplier: float) -> float:
        event = SampledGaussian(noise_multiplier=noise_multiplier, sample_rate=rate, steps=checked_steps)
        return compute_epsilon([event], delta=checked_delta, accountant=kind)

    return _least_noise_multiplier(epsilon_at, target_epsilon=target, tolerance=checked_tolerance)


def skellam_variance_for_epsilon(
    *,
    target_epsilon: float,
    delta: float,
    l1_sensitivity: float,
    l2_sensitivity: float,
    steps: int,
    tolerance: float = 0.01,
) -> float:
    """Least aggregate per-coordinate Skellam variance such that ``steps`` rounds stay
    within ``target_epsilon`` at ``delta`` (RDP accountant, Agarwal et al. 2021).

    The search runs over the relative noise z = sqrt(variance) / l2_sensitivity, as for
    the Gaussian, and returns (z * l2_sensitivity)^2.
    """
    target = validate_epsilon(target_epsilon)
    checked_delta = validate_delta(delta)
    checked_steps = validate_steps(steps)
    checked_tolerance = _validate_tolerance(tolerance)
    reference = Skellam(l1_sensitivity=l1_sensitivity, l2_sensitivity=l2_sensitivity, variance=1.0, steps=1)

    def variance_for(noise_multiplier: float) -> float:
        return (noise_multiplier * reference.l2_sensitivity) ** 2

    def epsilon_at(noise_multiplier: float) -> float:
        event = Skellam(
            l1_sensitivity=reference.l1_sensitivity,
            l2_sensitivity=reference.l2_sensitivity,
            variance=variance_for(noise_multiplier),
            steps=checked_steps,
        )
        return compute_epsilon([event], delta=checked_delta, accountant=AccountantKind.RDP)

    noise_multiplier = _least_noise_multiplier(epsilon_at, target_epsilon=target, tolerance=checked_tolerance)
    return variance_for(noise_multiplier)
