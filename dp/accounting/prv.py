"""Privacy loss random variable (PRV) accountant: pure functions, numpy and math only.

Gopi, Lee, Wutschitz, "Numerical Composition of Differential Privacy", NeurIPS 2021
(arXiv:2106.02848). The privacy loss of one step of a mechanism is a random variable
Y = log(P(o) / Q(o)) with o ~ P; composing mechanisms adds independent PRVs, and

    delta(eps) = E[(1 - exp(eps - Y_total))_+].

Their Algorithm 1, as implemented here:

1. Truncate every PRV to a domain [-L, L] chosen from an RDP tail bound (their
   Remark 5.6, with the constants of the authors' reference code
   microsoft/prv_accountant, which Opacus 1.6 also uses: L = 3 + max(eps_RDP of the
   whole composition at delta_error / 4, eps_RDP of one step at
   delta_error / (8 * total steps), eps_error)).
2. Discretise on a grid of mesh h = eps_error / sqrt(total steps * log(12 / delta_error) / 2)
   (their Theorem 5.5), putting the mass of each cell on its centre, then shift the
   grid so that the discrete mean equals the continuous mean (their "mean-preserving"
   discretisation, section 5.1).
3. Compose by FFT: k self-compositions as a k-th power of the spectrum (a circular
   convolution, as in the paper), different PRVs by linear convolution.
4. Read epsilon(delta) off the discrete PRV exactly; report the certified upper bound
   eps(delta - delta_error) + eps_error (their Theorem 5.5).

With eps_error = 0.01 and delta_error = delta / 1000 (Opacus's defaults) this
reproduces Opacus 1.6's ``PRVAccountant`` for the sampled Gaussian (to about 1e-6).

Only the Poisson-subsampled Gaussian has a PRV here (its CDF: Gopi et al.,
Propositions B1 and B4). Skellam events raise :class:`UnsupportedMechanismError`.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import reduce

import numpy as np
import numpy.typing as npt

from dp.accounting._special import erfc
from dp.accounting.errors import InvalidParameterError, NumericalAccuracyError, UnsupportedMechanismError
from dp.accounting.events import MechanismEvent, SampledGaussian, validate_delta
from dp.accounting.rdp import rdp_epsilon

DEFAULT_EPS_ERROR = 0.01
"""Additive error allowed in epsilon (Opacus 1.6's ``PRVAccountant.get_epsilon`` default)."""

DEFAULT_DELTA_ERROR_FRACTION = 1e-3
"""delta_error = delta * this (Opacus 1.6's default delta / 1000)."""

MAX_HALF_WIDTH = 600.0
"""Largest truncation half-width L: the epsilon read-out evaluates exp(+-t) over the
grid, which overflows double precision beyond about 709. An L this large means an
epsilon in the hundreds, where only the RDP bound is meaningful anyway."""

MAX_GRID_POINTS = 1 << 23
"""Largest discretisation grid (8.4 million points, 64 MiB per array) the accountant will
build; a larger one means an epsilon so large, or a run so long, that the RDP
accountant is the practical tool. Opacus has no such limit and would simply run out
of memory."""

_LEGENDRE_NODES, _LEGENDRE_WEIGHTS = np.polynomial.legendre.leggauss(32)
_MEAN_PANELS = 128
_GAUSSIAN_SPAN_SIGMAS = 40.0
"""The mean integral runs over o in [-40 sigma, 1 + 40 sigma]: the Gaussian mass outside
is below exp(-800), far under double precision."""


@dataclass(frozen=True)
class SubsampledGaussianPRV:
    """The PRV of one step of the Poisson-subsampled Gaussian (sensitivity 1, std sigma).

    P = (1 - q) N(0, sigma^2) + q N(1, sigma^2), Q = N(0, sigma^2), so
    Y = log(1 - q + q exp((2o - 1) / (2 sigma^2))) with o ~ P, and Y > log(1 - q) always.
    Y <= t  <=>  o <= sigma^2 z(t) + 1/2 with z(t) = log((e^t - (1 - q)) / q), which gives
    the CDF of Gopi et al., Proposition B4.
    """

    sample_rate: float
    noise_multiplier: float

    @property
    def _log_one_minus_q(self) -> float:
        return -math.inf if self.sample_rate == 1.0 else math.log1p(-self.sample_rate)

    def _output_threshold(self, t: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """o(t) = sigma^2 z(t) + 1/2 for t > log(1 - q); -inf below (no mass there)."""
        q, sigma = self.sample_rate, self.noise_multiplier
        above = t > self._log_one_minus_q
        safe_t = np.where(above, t, 0.0)
        if q == 1.0:
            z = safe_t
        else:
            with np.errstate(divide="ignore", invalid="ignore"):
                z = safe_t + np.log1p(-(1.0 - q) * np.exp(-safe_t)) - math.log(q)
        return np.where(above, sigma * sigma * z + 0.5, -np.inf)

    def cdf(self, t: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Pr[Y <= t] = (1 - q) Phi(o(t) / sigma) + q Phi((o(t) - 1) / sigma)."""
        q, sigma = self.sample_rate, self.noise_multiplier
        threshold = self._output_threshold(np.asarray(t, dtype=np.float64))
        finite = np.isfinite(threshold)
        safe = np.where(finite, threshold, 0.0)
        root_two_sigma = math.sqrt(2.0) * sigma
        value = 1.0 - q * erfc((safe - 1.0) / root_two_sigma) / 2.0 - (1.0 - q) * erfc(safe / root_two_sigma) / 2.0
        return np.where(finite, value, 0.0)

    def privacy_loss(self, o: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """Y as a function of the output o (sensitivity 1)."""
        q, sigma = self.sample_rate, self.noise_multiplier
        exponent = (2.0 * o - 1.0) / (2.0 * sigma * sigma)
        return np.logaddexp(self._log_one_minus_q, math.log(q) + exponent)

    def output_density(self, o: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """Density of o under P = (1 - q) N(0, sigma^2) + q N(1, sigma^2)."""
        q, sigma = self.sample_rate, self.noise_multiplier
        norm = 1.0 / (math.sqrt(2.0 * math.pi) * sigma)
        two_variance = 2.0 * sigma * sigma
        return norm * ((1.0 - q) * np.exp(-o * o / two_variance) + q * np.exp(-((o - 1.0) ** 2) / two_variance))

    def truncated_mean(self, t_min: float, t_max: float) -> float:
        """E[Y | t_min < Y <= t_max], by Gauss-Legendre quadrature over the output o.

        Integrating Y(o) against the smooth Gaussian-mixture density of o avoids the
        kink of the PRV's own density at log(1 - q).
        """
        sigma = self.noise_multiplier
        bounds = self._output_threshold(np.array([t_min, t_max]))
        low = max(float(bounds[0]), -_GAUSSIAN_SPAN_SIGMAS * sigma)
        high = min(float(bounds[1]), 1.0 + _GAUSSIAN_SPAN_SIGMAS * sigma)
        if not high > low:
            raise NumericalAccuracyError("the PRV truncation interval carries no probability mass")
        edges = np.linspace(low, high, _MEAN_PANELS + 1)
        half_widths = (edges[1:] - edges[:-1]) / 2.0
        centres = (edges[1:] + edges[:-1]) / 2.0
        nodes = (centres[:, None] + half_widths[:, None] * _LEGENDRE_NODES[None, :]).ravel()
        weights = (half_widths[:, None] * _LEGENDRE_WEIGHTS[None, :]).ravel()
        density = self.output_density(nodes)
        mass = float(np.dot(weights, density))
        return float(np.dot(weights, density * self.privacy_loss(nodes))) / mass


@dataclass(frozen=True)
class _Grid:
    """Points t_i = (first_index + i) * dt for i in [0, size)."""

    first_index: int
    size: int
    dt: float

    @property
    def points(self) -> npt.NDArray[np.float64]:
        return (self.first_index + np.arange(self.size, dtype=np.float64)) * self.dt


def _aligned_grid(half_width: float, dt: float) -> _Grid:
    """A grid of mesh dt aligned on multiples of dt, covering [-half_width, half_width],
    of even size (indices -n .. n + 1), as Gopi et al.'s reference code lays it out."""
    n = math.ceil(half_width / dt)
    return _Grid(first_index=-n, size=2 * n + 2, dt=dt)


def _discretise(prv: SubsampledGaussianPRV, grid: _Grid) -> tuple[npt.NDArray[np.float64], float]:
    """Mass of the PRV truncated to the grid's span on each cell, and the mean shift."""
    t_min = grid.first_index * grid.dt
    t_max = (grid.first_index + grid.size - 1) * grid.dt
    cdf_min, cdf_max = prv.cdf(np.array([t_min, t_max]))
    remaining_mass = float(cdf_max - cdf_min)
    if not remaining_mass > 0.0:
        raise NumericalAccuracyError("the PRV has no mass on its truncation domain")
    edges = (grid.first_index - 0.5 + np.arange(grid.size + 1)) * grid.dt
    truncated_cdf = np.clip((prv.cdf(np.clip(edges, t_min, t_max)) - cdf_min) / remaining_mass, 0.0, 1.0)
    truncated_cdf[0], truncated_cdf[-1] = 0.0, 1.0
    pmf = np.diff(truncated_cdf)
    discrete_mean = float(np.dot(grid.points, pmf))
    mean_shift = prv.truncated_mean(t_min, t_max) - discrete_mean
    if abs(mean_shift) >= grid.dt / 2.0:
        raise NumericalAccuracyError("the discretised PRV's mean is off by half a cell or more")
    return pmf, mean_shift


def _self_compose(pmf: npt.NDArray[np.float64], grid: _Grid, count: int) -> npt.NDArray[np.float64]:
    """pmf of the sum of ``count`` copies, on the same (unshifted) grid, by circular FFT.

    The sum of indices i_1 + ... + i_k lands on grid index i_1 + ... + i_k + (k - 1)
    first_index; taken modulo the grid size, that is a roll by (k - 1) first_index.
    """
    spectrum = np.fft.rfft(pmf)
    composed = np.fft.irfft(spectrum**count, n=grid.size)
    return np.roll(composed, ((count - 1) * grid.first_index) % grid.size)


def _compose_two(left: npt.NDArray[np.float64], right: npt.NDArray[np.float64], grid: _Grid) -> npt.NDArray[np.float64]:
    """pmf of the sum of two grid PRVs, kept on the grid's span (mass outside dropped)."""
    full_size = 2 * grid.size - 1
    fft_size = 1 << (full_size - 1).bit_length()
    full = np.fft.irfft(np.fft.rfft(left, fft_size) * np.fft.rfft(right, fft_size), fft_size)[:full_size]
    start = -grid.first_index
    return full[start : start + grid.size]


def _epsilon_for_delta(points: npt.NDArray[np.float64], pmf: npt.NDArray[np.float64], delta: float) -> float:
    """The smallest eps with delta(eps) = sum_{t_j > eps} p_j (1 - e^{eps - t_j}) <= delta.

    With tail sums D1_i = sum_{j>=i} p_j and D2_i = sum_{j>=i} p_j e^{-t_j}, delta(eps) =
    D1_i - e^eps D2_i for eps in [t_{i-1}, t_i); the first i with delta(t_i) <= delta
    gives eps = log((D1_i - delta) / D2_i).
    """
    tail_mass = np.cumsum(pmf[::-1])[::-1]
    tail_discounted = np.cumsum((pmf * np.exp(-points))[::-1])[::-1]
    negative_delta_at_points = np.exp(points) * tail_discounted - tail_mass
    index = int(np.searchsorted(negative_delta_at_points, -delta, side="left"))
    if index <= 0 or index >= len(points):
        raise NumericalAccuracyError(f"delta {delta:g} is outside what the PRV grid can resolve")
    return float(np.log((tail_mass[index] - delta) / tail_discounted[index]))


def prv_epsilon(
    events: Sequence[MechanismEvent],
    *,
    delta: float,
    eps_error: float = DEFAULT_EPS_ERROR,
    delta_error: float | None = None,
) -> float:
    """Certified upper bound on epsilon(delta) of the composition of ``events`` (Gopi et al. 2021).

    Identical events are grouped (composition is commutative) and composed by one FFT
    power each. Raises :class:`UnsupportedMechanismError` for any non-Gaussian event.
    """
    delta = validate_delta(delta)
    if not (math.isfinite(eps_error) and eps_error > 0.0):
        raise InvalidParameterError(f"eps_error must be finite and > 0, got {eps_error!r}")
    delta_error = delta * DEFAULT_DELTA_ERROR_FRACTION if delta_error is None else float(delta_error)
    if not (math.isfinite(delta_error) and 0.0 < delta_error < delta):
        raise InvalidParameterError(f"delta_error must satisfy 0 < delta_error < delta, got {delta_error!r}")
    for event in events:
        if not isinstance(event, SampledGaussian):
            raise UnsupportedMechanismError(
                f"the PRV accountant has no analysis for the {event.mechanism.value} mechanism; "
                "account for it with the rdp accountant"
            )
    if not events:
        return 0.0

    steps_by_mechanism: Counter[tuple[float, float]] = Counter()
    for event in events:
        assert isinstance(event, SampledGaussian)  # checked above
        steps_by_mechanism[(event.sample_rate, event.noise_multiplier)] += event.steps
    groups = list(steps_by_mechanism.items())
    total_steps = sum(steps for _, steps in groups)

    half_width = rdp_epsilon(
        [SampledGaussian(noise_multiplier=z, sample_rate=q, steps=steps) for (q, z), steps in groups],
        delta=delta_error / 4.0,
    )[0]
    for (q, z), _ in groups:
        single_step = rdp_epsilon(
            [SampledGaussian(noise_multiplier=z, sample_rate=q, steps=1)], delta=delta_error / (8.0 * total_steps)
        )[0]
        half_width = max(half_width, single_step)
    half_width = max(half_width, eps_error) + 3.0
    if not half_width <= MAX_HALF_WIDTH:
        raise NumericalAccuracyError(
            f"the PRV truncation domain would be [-{half_width:.4g}, {half_width:.4g}] (limit {MAX_HALF_WIDTH:g}): "
            "epsilon is far too large for the PRV accountant; use the RDP accountant"
        )

    mesh = eps_error / math.sqrt(total_steps * math.log(12.0 / delta_error) / 2.0)
    grid = _aligned_grid(half_width, mesh)
    if grid.size > MAX_GRID_POINTS:
        raise NumericalAccuracyError(
            f"the PRV grid would need {grid.size} points (limit {MAX_GRID_POINTS}): "
            "epsilon is very large or the run very long; use the RDP accountant"
        )
    if np.finfo(np.longdouble).eps * grid.size > delta - delta_error:
        raise NumericalAccuracyError(
            f"delta {delta:g} is too small for a PRV grid of {grid.size} points: rounding would dominate"
        )

    self_composed: list[npt.NDArray[np.float64]] = []
    total_shift = 0.0
    for (q, z), steps in groups:
        pmf, mean_shift = _discretise(SubsampledGaussianPRV(sample_rate=q, noise_multiplier=z), grid)
        self_composed.append(_self_compose(pmf, grid, steps))
        total_shift += steps * mean_shift
    composed = reduce(lambda left, right: _compose_two(left, right, grid), self_composed)
    points = grid.points + total_shift
    return _epsilon_for_delta(points, composed, delta - delta_error) + eps_error
