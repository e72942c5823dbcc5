"""Rényi differential privacy (RDP) analysis: pure functions, numpy and math only.

Three pieces, each from its paper:

1. RDP of the Poisson-subsampled Gaussian mechanism at order alpha (Mironov, Talwar,
   Zhang 2019, "Rényi Differential Privacy of the Sampled Gaussian Mechanism",
   arXiv:1908.10530, section 3.3): eps(alpha) = log(A_alpha) / (alpha - 1), with
   A_alpha a finite binomial sum for integer alpha (their eq. for integer orders) and
   two convergent series of erfc terms for fractional alpha (their section 3.3).
   With sample rate 1 this is the Gaussian mechanism's alpha / (2 z^2) (Mironov 2017).
2. RDP of the multi-dimensional Skellam mechanism (Agarwal, Kairouz, Liu, NeurIPS 2021,
   arXiv:2110.04995v2, Corollary 3.6, from the one-dimensional Theorem 3.5), valid at
   integer orders alpha > 1.
3. Conversion of an RDP curve to (epsilon, delta)-DP by Balle et al. 2020
   ("Hypothesis Testing Interpretations and Rényi Differential Privacy", AISTATS,
   arXiv:1905.09982, Theorem 21):
   eps = rdp(alpha) + log((alpha - 1) / alpha) - (log(delta) + log(alpha)) / (alpha - 1),
   minimised over the orders.

RDP composes by addition over steps and over events (Mironov 2017, Proposition 1).
Orders are Opacus 1.6's ``RDPAccountant.DEFAULT_ALPHAS``, so Gaussian-only histories
give Opacus's numbers; a history with a Skellam event is evaluated on the integer
orders of that grid only, because the Skellam bound holds at integer orders.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import numpy.typing as npt

from dp.accounting._special import log_erfc
from dp.accounting.errors import InvalidParameterError
from dp.accounting.events import MechanismEvent, SampledGaussian, Skellam, validate_delta

DEFAULT_RDP_ORDERS: tuple[float, ...] = tuple(1.0 + x / 10.0 for x in range(1, 100)) + tuple(
    float(order) for order in range(12, 64)
)
"""Opacus 1.6's default RDP orders: 1.1, 1.2, ..., 10.9, then 12, 13, ..., 63."""

INTEGER_RDP_ORDERS: tuple[float, ...] = tuple(order for order in DEFAULT_RDP_ORDERS if order.is_integer())
"""The integer orders of :data:`DEFAULT_RDP_ORDERS` (2, ..., 10, 12, ..., 63), for Skellam."""

_SERIES_TAIL_LOG_THRESHOLD = -30.0
"""The fractional-order series stops after the first index whose two terms are both
below exp(-30) (about 1e-13), the cut-off of Mironov, Talwar, Zhang's reference code
and of Opacus."""


def _log_sum_signed(log_magnitudes: npt.NDArray[np.float64], signs: npt.NDArray[np.float64]) -> float:
    """log(sum_i signs_i * exp(log_magnitudes_i)) for a sum known to be positive."""
    finite = np.isfinite(log_magnitudes)
    if not np.any(finite):
        return -math.inf
    shift = float(np.max(log_magnitudes[finite]))
    total = float(np.sum(signs[finite] * np.exp(log_magnitudes[finite] - shift)))
    if total <= 0.0:
        return -math.inf
    return shift + math.log(total)


def _log_a_integer_order(sample_rate: float, sigma: float, order: int) -> float:
    """log(A_alpha) for integer alpha (Mironov, Talwar, Zhang 2019, section 3.3):

    A_alpha = sum_{i=0}^{alpha} C(alpha, i) q^i (1-q)^(alpha-i) exp((i^2 - i) / (2 sigma^2)).
    """
    indices = np.arange(order + 1, dtype=np.float64)
    log_binomials = np.array([math.lgamma(order + 1) - math.lgamma(i + 1) - math.lgamma(order - i + 1) for i in range(order + 1)])
    log_terms = (
        log_binomials
        + indices * math.log(sample_rate)
        + (order - indices) * math.log1p(-sample_rate)
        + (indices * indices - indices) / (2.0 * sigma * sigma)
    )
    return _log_sum_signed(log_terms, np.ones_like(log_terms))


def _log_abs_binomial_and_sign(
    order: float, indices: npt.NDArray[np.int64]
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """log|C(alpha, i)| and sign(C(alpha, i)) for fractional alpha and integers i >= 0.

    C(alpha, i) = prod_{k<i} (alpha - k) / i!; the factors with k > alpha are negative,
    so the sign is (-1)^max(0, i - ceil(alpha)).
    """
    log_gamma_order = math.lgamma(order + 1.0)
    log_abs = np.array([log_gamma_order - math.lgamma(i + 1.0) - math.lgamma(order - i + 1.0) for i in indices.tolist()])
    negative_factors = np.maximum(0, indices - math.ceil(order))
    signs = np.where(negative_factors % 2 == 0, 1.0, -1.0)
    return log_abs, signs


def _log_a_fractional_order(sample_rate: float, sigma: float, order: float) -> float:
    """log(A_alpha) for fractional alpha (Mironov, Talwar, Zhang 2019, section 3.3).

    A_alpha = A_0 + A_1 splits the integral at z0 = sigma^2 log(1/q - 1) + 1/2, and each
    part is the convergent series over i >= 0 of
    C(alpha, i) q^i (1-q)^(alpha-i) exp((i^2-i)/(2 sigma^2)) erfc((i - z0)/(sqrt2 sigma))/2
    and the mirrored term with j = alpha - i. Terms are generated in doubling blocks until
    the first index at which both are below exp(-30); the sum includes that index.
    """
    z0 = sigma * sigma * math.log(1.0 / sample_rate - 1.0) + 0.5
    log_q = math.log(sample_rate)
    log_one_minus_q = math.log1p(-sample_rate)
    block = 64
    while True:
        indices = np.arange(block, dtype=np.int64)
        i = indices.astype(np.float64)
        j = order - i
        log_abs_binomial, signs = _log_abs_binomial_and_sign(order, indices)
        log_t0 = log_abs_binomial + i * log_q + j * log_one_minus_q
        log_t1 = log_abs_binomial + j * log_q + i * log_one_minus_q
        log_e0 = math.log(0.5) + log_erfc((i - z0) / (math.sqrt(2.0) * sigma))
        log_e1 = math.log(0.5) + log_erfc((z0 - j) / (math.sqrt(2.0) * sigma))
        log_s0 = log_t0 + (i * i - i) / (2.0 * sigma * sigma) + log_e0
        log_s1 = log_t1 + (j * j - j) / (2.0 * sigma * sigma) + log_e1
        below = np.flatnonzero(np.maximum(log_s0, log_s1) < _SERIES_TAIL_LOG_THRESHOLD)
        if below.size:
            stop = int(below[0]) + 1
            log_a0 = _log_sum_signed(log_s0[:stop], signs[:stop])
            log_a1 = _log_sum_signed(log_s1[:stop], signs[:stop])
            return float(np.logaddexp(log_a0, log_a1))
        block *= 2


def _sampled_gaussian_rdp_at(sample_rate: float, sigma: float, order: float) -> float:
    if sample_rate == 1.0:
        return order / (2.0 * sigma * sigma)
    if order.is_integer():
        log_a = _log_a_integer_order(sample_rate, sigma, int(order))
    else:
        log_a = _log_a_fractional_order(sample_rate, sigma, order)
    return log_a / (order - 1.0)


@lru_cache(maxsize=256)
def _sampled_gaussian_rdp_cached(sample_rate: float, sigma: float, orders: tuple[float, ...]) -> tuple[float, ...]:
    return tuple(_sampled_gaussian_rdp_at(sample_rate, sigma, order) for order in orders)


def _checked_orders(orders: Sequence[float], *, integer_only: bool) -> tuple[float, ...]:
    checked = tuple(float(order) for order in orders)
    if not checked:
        raise InvalidParameterError("at least one RDP order is needed")
    for order in checked:
        if not math.isfinite(order) or order <= 1.0:
            raise InvalidParameterError(f"RDP orders must be finite and > 1, got {order}")
        if integer_only and not order.is_integer():
            raise InvalidParameterError(f"the Skellam RDP bound holds at integer orders only, got {order}")
    return checked


def sampled_gaussian_rdp(
    *, sample_rate: float, noise_multiplier: float, orders: Sequence[float] = DEFAULT_RDP_ORDERS
) -> npt.NDArray[np.float64]:
    """RDP of ONE step of the Poisson-subsampled Gaussian mechanism at each order.

    Sensitivity 1 and noise standard deviation ``noise_multiplier``
    (Mironov, Talwar, Zhang 2019). Multiply by the number of steps to compose.
    """
    event = SampledGaussian(noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=1)
    checked = _checked_orders(orders, integer_only=False)
    return np.array(_sampled_gaussian_rdp_cached(event.sample_rate, event.noise_multiplier, checked))


def skellam_rdp(
    *,
    l1_sensitivity: float,
    l2_sensitivity: float,
    variance: float,
    orders: Sequence[float] = INTEGER_RDP_ORDERS,
) -> npt.NDArray[np.float64]:
    """RDP of ONE release of the multi-dimensional Skellam mechanism at integer orders.

    Agarwal, Kairouz, Liu 2021 (arXiv:2110.04995v2, Corollary 3.6): adding symmetric
    Skellam noise of per-coordinate variance ``variance`` (their Sk(mu, mu) has
    variance 2 mu; the bound below is theirs with 2 mu written as the variance) to an
    integer-valued query with L1 sensitivity D1 and L2 sensitivity D2 is
    (alpha, eps(alpha))-RDP for integer alpha > 1 with

        eps(alpha) <= alpha D2^2 / (2 var) + min( ((2 alpha - 1) D2^2 + 6 D1) / (4 var^2),
                                                   3 D1 / (2 var) ).

    The first term is the Gaussian mechanism's RDP at the same variance; the second
    vanishes as the variance grows. The authors' reference implementation
    (google-research/federated, distributed_dp/accounting_utils.py) evaluates the same
    expression with scale 1.
    """
    event = Skellam(l1_sensitivity=l1_sensitivity, l2_sensitivity=l2_sensitivity, variance=variance, steps=1)
    alpha = np.array(_checked_orders(orders, integer_only=True))
    d1, d2_squared, var = event.l1_sensitivity, event.l2_sensitivity**2, event.variance
    gaussian_term = alpha * d2_squared / (2.0 * var)
    discretisation_term = np.minimum(
        ((2.0 * alpha - 1.0) * d2_squared + 6.0 * d1) / (4.0 * var * var),
        3.0 * d1 / (2.0 * var),
    )
    return gaussian_term + discretisation_term


def orders_for(events: Sequence[MechanismEvent]) -> tuple[float, ...]:
    """The order grid for a history: all default orders, or the integer ones if any Skellam."""
    if any(isinstance(event, Skellam) for event in events):
        return INTEGER_RDP_ORDERS
    return DEFAULT_RDP_ORDERS


def event_rdp(event: MechanismEvent, orders: Sequence[float]) -> npt.NDArray[np.float64]:
    """RDP of all ``event.steps`` steps of one event, at each order (composition adds)."""
    if isinstance(event, SampledGaussian):
        per_step = sampled_gaussian_rdp(sample_rate=event.sample_rate, noise_multiplier=event.noise_multiplier, orders=orders)
    elif isinstance(event, Skellam):
        per_step = skellam_rdp(
            l1_sensitivity=event.l1_sensitivity,
            l2_sensitivity=event.l2_sensitivity,
            variance=event.variance,
            orders=orders,
        )
    else:
        raise InvalidParameterError(f"not a mechanism event: {type(event).__name__}")
    return per_step * event.steps


def epsilon_from_rdp(*, orders: Sequence[float], rdp: npt.ArrayLike, delta: float) -> tuple[float, float]:
    """(epsilon, optimal order) from an RDP curve, by Balle et al. 2020, Theorem 21.

    Orders with an infinite or undefined conversion are skipped; if none is finite the
    result is (inf, nan): no privacy can be certified.
    """
    delta = validate_delta(delta)
    alpha = np.asarray(orders, dtype=np.float64)
    curve = np.asarray(rdp, dtype=np.float64)
    if alpha.shape != curve.shape or alpha.ndim != 1:
        raise InvalidParameterError(f"orders {alpha.shape} and rdp {curve.shape} must be 1-d of equal length")
    with np.errstate(invalid="ignore"):
        epsilons = curve - (math.log(delta) + np.log(alpha)) / (alpha - 1.0) + np.log((alpha - 1.0) / alpha)
    finite = np.isfinite(epsilons)
    if not np.any(finite):
        return math.inf, math.nan
    best = int(np.argmin(np.where(finite, epsilons, np.inf)))
    return float(max(epsilons[best], 0.0)), float(alpha[best])


def rdp_epsilon(events: Sequence[MechanismEvent], *, delta: float) -> tuple[float, float]:
    """(epsilon, optimal order) of the composition of ``events`` at ``delta`` via RDP."""
    if not events:
        return 0.0, math.nan
    orders = orders_for(events)
    total = np.zeros(len(orders))
    for event in events:
        total = total + event_rdp(event, orders)
    return epsilon_from_rdp(orders=orders, rdp=total, delta=delta)
