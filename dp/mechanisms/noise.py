"""Noise and sampling for differential privacy, from a cryptographically secure generator.

Every random draw here comes from an injected :class:`secagg.hazmat.randomness.RandomSource`
(``SystemRandom`` in production, ``DeterministicRandom`` in tests); ``random`` and
``numpy.random`` are never used. Everything is vectorised over coordinates.

Three samplers:

* :func:`gaussian_noise` — continuous Gaussian noise for DP-SGD (Abadi et al. 2016),
  replacing Opacus's ``secure_mode``, which needs torchcsprng (no longer installable).
* :class:`PoissonSampler` / :func:`skellam_noise` — integer Skellam noise for the
  distributed mechanism of Agarwal, Kairouz, Liu (NeurIPS 2021), as the difference of
  two Poisson variables drawn by inverse transform from an exact integer table.
* :func:`poisson_subsample` — the Poisson subsampling of DP-SGD (each example joins a
  batch independently with probability q), whose amplification the accountant assumes.

Floating-point attacks and what the defence covers
---------------------------------------------------
Mironov (CCS 2012, "On significance of the least significant bits for differential
privacy") showed that a textbook floating-point Laplace sampler has a *porous* output
set: which doubles can be output depends on the true value, so one output can reveal
it. Jin et al. (IEEE S&P 2022, arXiv:2112.05307) mounted the same attack on Gaussian
samplers, Opacus's included, by inverting the sampler (Box-Muller is cheaply
invertible). Holohan and Braghin (2021, "Secure random sampling in differential
privacy", arXiv:2107.10138, section 5.1) propose returning the normalised sum of 2n
independent Gaussian samples: deciding whether a double is a possible output then
means searching about 2^(p(2n-1)) combinations of p-bit uniforms instead of inverting
one sample. Opacus's ``secure_mode`` uses n = 2 (four samples, divided by two).

:func:`gaussian_noise` does exactly that with n = 2 by default (``summands=4``), from
Box-Muller on 53-bit CSPRNG uniforms. What this covers:

* the sampler-inversion / porosity test of Jin et al. and Holohan-Braghin against the
  noise *before* it is added: its cost rises from 2^53 to about 2^159 work;
* predictability of the generator: the uniforms are AES-CTR or ``os.urandom``
  output, not a Mersenne Twister whose state can be recovered from outputs;
* timing of the sampler itself: a fixed amount of work per coordinate, no rejection loop.

What it does **not** cover (stated for the auditor):

* It is a computational hardening, not a proof: no formal DP guarantee is claimed
  for the floating-point implementation; the accountant analyses the ideal real-valued
  Gaussian mechanism.
* The rounding of ``gradient + noise`` (and the later cast to float32) is not
  snapped (Mironov's snapping mechanism is for Laplace; no equivalent is implemented).
* Truncation and granularity: each Box-Muller sample is bounded by
  sqrt(-2 ln 2^-53) ≈ 8.57 standard deviations (the smallest positive uniform is
  2^-53), so at most 2^-53 of the ideal mass per draw is missing; the four-sample sum
  is bounded by about 17 standard deviations. Outputs take finitely many values. Both
  are negligible next to delta, but no bound is added to delta for them.
* Timing side channels of training (Jin et al. section on timing), e.g. the time of a
  step revealing the Poisson batch size.

Skellam sampler exactness
-------------------------
:class:`PoissonSampler` builds, once per mean, a table of 63-bit integer bucket sizes
``counts[k]`` summing to exactly 2^63, and returns ``k`` with probability exactly
``counts[k] / 2^63`` given a uniform 63-bit integer (no floating point at sampling time).
The table differs from the true Poisson(mean) law by a total variation distance
bounded by :attr:`PoissonSampler.total_variation_bound`: the tails beyond the table
(bounded by a geometric series, proven), plus the integer rounding of every bucket
(computed from the table), plus an allowance for the float64 error in computing the
pmf (validated, not proven: the tests compute the exact distance with 60-digit decimal
arithmetic for means from 1e-3 to 1.34e7 and check it is below the bound). The pmf is
computed by ratio recurrences for small means and by Stirling's series with a
cancellation-free relative-entropy term for means from 1e4, so its float error does
not grow with the table width.

A mechanism implemented with a sampler within total variation tau of the ideal one is
(epsilon, delta + (1 + e^epsilon) tau)-DP where the ideal is (epsilon, delta)-DP, with
tau summed over every sample drawn; :attr:`dp.mechanisms.distributed.DistributedDPConfig.sampler_total_variation_bound`
gives that sum for one round.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import numpy as np

from dp.errors import DPError
from secagg.hazmat.randomness import RandomSource, uniform_floats

HOLOHAN_BRAGHIN_SUMMANDS = 4
"""2n Gaussian samples summed per output, n = 2 (Holohan and Braghin 2021, section 5.1;
the value Opacus's ``secure_mode`` uses)."""

_TABLE_BITS = 63
_TABLE_TOTAL = 1 << _TABLE_BITS
_TAIL_MASS_LIMIT = 2.0**-64
"""Largest probability mass left outside a Poisson table (bounded by a geometric series)."""
_PMF_FLOAT_ALLOWANCE = 2.0**-50
"""Allowance for the float64 error of the computed pmf (its total variation distance
from the exact law restricted to the table).

Validated, not proven: the exact distance (60-digit decimal arithmetic) of the whole
table, measured for means from 1e-3 to 1.34e7 in tests/dp/test_noise.py, is below the
bound that includes this allowance; the float part of it is at most about 2e-16 there,
four times below the allowance."""
MAX_POISSON_MEAN = 2.0**40
"""Largest Poisson mean a table is built for (the table has about 20 sqrt(mean) rows)."""


class NoiseError(DPError, ValueError):
    """A noise or sampling request with invalid parameters."""


def _check_count(count: int) -> None:
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise NoiseError(f"count must be a non-negative integer, got {count!r}")


def _uniform_uint64(source: RandomSource, count: int) -> np.ndarray:
    words = np.empty(count, dtype=np.uint64)
    source.fill(words)
    return words


def standard_normal(source: RandomSource, count: int) -> np.ndarray:
    """``count`` independent N(0, 1) float64 samples by Box-Muller from CSPRNG uniforms.

    Box and Muller (1958): for independent U1 on (0, 1] and U2 on [0, 1),
    R = sqrt(-2 ln U1) and the pair (R cos 2 pi U2, R sin 2 pi U2) are two independent
    standard normals. Both are used. Uniforms have 53 random bits.
    """
    _check_count(count)
    pairs = (count + 1) // 2
    uniforms = uniform_floats(source, 2 * pairs)
    radius = np.sqrt(-2.0 * np.log1p(-uniforms[:pairs]))  # 1 - U on (0, 1]
    angle = (2.0 * math.pi) * uniforms[pairs:]
    samples = np.empty(2 * pairs, dtype=np.float64)
    np.multiply(radius, np.cos(angle), out=samples[:pairs])
    np.multiply(radius, np.sin(angle), out=samples[pairs:])
    return samples[:count]


def gaussian_noise(source: RandomSource, count: int, *, std: float, summands: int = HOLOHAN_BRAGHIN_SUMMANDS) -> np.ndarray:
    """``count`` samples of N(0, std^2), each the normalised sum of ``summands`` draws.

    Returns ``std * (Z_1 + ... + Z_m) / sqrt(m)`` with Z_i independent standard normals
    (:func:`standard_normal`), which is exactly N(0, std^2) in real arithmetic. The sum
    is the floating-point hardening of Holohan and Braghin (2021, section 5.1); see the
    module docstring for what it does and does not cover. ``summands=1`` disables it
    and exists only to measure its cost.
    """
    _check_count(count)
    if not (isinstance(std, (int, float)) and math.isfinite(std) and std >= 0):
        raise NoiseError(f"std must be a finite number >= 0, got {std!r}")
    if isinstance(summands, bool) or not isinstance(summands, int) or summands < 1:
        raise NoiseError(f"summands must be a positive integer, got {summands!r}")
    draws = standard_normal(source, count * summands).reshape(summands, count)
    total = draws.sum(axis=0)
    total *= float(std) / math.sqrt(summands)
    return total


def poisson_subsample(source: RandomSource, population: int, rate: float) -> np.ndarray:
    """Indices of a Poisson subsample: each of ``population`` items independently with
    probability ``rate`` (the sampling DP-SGD's accountant assumes; Abadi et al. 2016,
    Mironov, Talwar, Zhang 2019).

    Item i is kept iff W_i < ceil(rate * 2^64) for a uniform 64-bit W_i, so the
    inclusion probability is ``rate`` rounded up to a multiple of 2^-64 (never below it).
    """
    _check_count(population)
    if not (isinstance(rate, (int, float)) and math.isfinite(rate) and 0.0 < rate <= 1.0):
        raise NoiseError(f"rate must satisfy 0 < rate <= 1, got {rate!r}")
    if rate == 1.0:
        return np.arange(population, dtype=np.int64)
    threshold = np.uint64(min(math.ceil(math.ldexp(rate, 64)), (1 << 64) - 1))
    return np.flatnonzero(_uniform_uint64(source, population) < threshold).astype(np.int64)


@dataclass(frozen=True)
class PoissonSampler:
    """Inverse-transform sampler for Poisson(``mean``) over an exact 63-bit integer table.

    ``thresholds`` are the cumulative bucket sizes (uint64, all but the last, which is
    2^63), so ``offset + searchsorted(thresholds, U, side="right")`` for a uniform 63-bit
    U returns ``offset + k`` with probability exactly ``counts[k] / 2^63``.

    Construction: the pmf is computed relative to the mode by the ratio recurrences
    p(k+1)/p(k) = mean/(k+1) and p(k-1)/p(k) = k/mean (in log space, no factorials),
    normalised, scaled to 2^63 and floored to integers; the rounding remainder is put on
    the mode. The table is widened until the mass beyond both ends, bounded by geometric
    series, is below 2^-64.
    """

    mean: float
    offset: int = field(init=False)
    thresholds: np.ndarray = field(init=False, repr=False)
    total_variation_bound: float = field(init=False)
    _guide_shift: np.uint64 = field(init=False, repr=False)
    _guide_index: np.ndarray = field(init=False, repr=False)
    _guide_ambiguous: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        mean = self.mean
        if isinstance(mean, bool) or not isinstance(mean, (int, float)) or not math.isfinite(mean):
            raise NoiseError(f"Poisson mean must be a finite number, got {mean!r}")
        if not 0.0 < mean <= MAX_POISSON_MEAN:
            raise NoiseError(f"Poisson mean must be in (0, {MAX_POISSON_MEAN:g}], got {mean!r}")
        width = 12.0 * math.sqrt(mean) + 40.0
        while True:
            built = _build_poisson_table(float(mean), width)
            if built is not None:
                break
            width *= 2.0
        offset, thresholds, tv_bound = built
        object.__setattr__(self, "offset", offset)
        object.__setattr__(self, "thresholds", thresholds)
        object.__setattr__(self, "total_variation_bound", tv_bound)
        # Guide table (Chen and Asau 1974): the top bits of U name a cell; a cell that
        # no threshold splits determines the answer, the others fall back to a search.
        guide_bits = min(_TABLE_BITS, max(1, int(thresholds.size).bit_length() + 1))
        shift = np.uint64(_TABLE_BITS - guide_bits)
        cell_starts = np.arange(1 << guide_bits, dtype=np.uint64) << shift
        first = np.searchsorted(thresholds, cell_starts, side="right")
        last = np.empty_like(first)
        last[:-1] = np.searchsorted(thresholds, cell_starts[1:] - np.uint64(1), side="right")
        last[-1] = thresholds.size
        object.__setattr__(self, "_guide_shift", shift)
        object.__setattr__(self, "_guide_index", first.astype(np.int64))
        object.__setattr__(self, "_guide_ambiguous", first != last)

    @property
    def support_size(self) -> int:
        """Number of values the table can return (offset .. offset + support_size - 1)."""
        return int(self.thresholds.size) + 1

    def bucket_probabilities(self) -> list[tuple[int, int]]:
        """``(value, count)`` pairs; value is returned with probability count / 2^63 (exact)."""
        upper = [int(x) for x in self.thresholds] + [_TABLE_TOTAL]
        lower = [0] + upper[:-1]
        return [(self.offset + k, hi - lo) for k, (lo, hi) in enumerate(zip(lower, upper, strict=True))]

    def sample(self, source: RandomSource, count: int) -> np.ndarray:
        """``count`` independent Poisson(mean) samples as int64 (vectorised)."""
        _check_count(count)
        words = _uniform_uint64(source, count)
        words >>= np.uint64(64 - _TABLE_BITS)
        cells = (words >> self._guide_shift).astype(np.intp)
        indices = self._guide_index[cells]
        unresolved = np.flatnonzero(self._guide_ambiguous[cells])
        indices[unresolved] = np.searchsorted(self.thresholds, words[unresolved], side="right")
        indices += self.offset
        return indices


def _log_weights_by_recurrence(mean: float, mode: int, low: int, high: int) -> np.ndarray:
    """log p(k)/p(mode) for k = low .. high by the ratio recurrences (small means).

    p(k+1)/p(k) = mean/(k+1) and p(k-1)/p(k) = k/mean, summed in log space with log1p of
    the small relative gaps. The cumulative sums' rounding grows with the table width,
    which is why large means use :func:`_log_weights_by_stirling`.
    """
    up = np.arange(mode + 1, high + 1, dtype=np.float64)
    down = np.arange(mode, low, -1, dtype=np.float64)
    log_up = np.cumsum(np.log1p((mean - up) / up))
    log_down = np.cumsum(np.log1p((down - mean) / mean))
    return np.concatenate([log_down[::-1], [0.0], log_up])


def _relative_entropy_term(x: np.ndarray) -> np.ndarray:
    """h(x) = (1 + x) log(1 + x) - x without cancellation near 0.

    For |x| <= 1/5 the alternating series h(x) = sum_{n>=2} (-1)^n x^n / (n (n - 1)),
    truncated after n = 28 (remainder below 0.2^29 / 756 < 1e-23), in Horner form.
    """
    result = (1.0 + x) * np.log1p(x) - x
    small = np.abs(x) <= 0.2
    xs = x[small]
    series = np.zeros_like(xs)
    for n in range(28, 1, -1):
        series = series * xs + ((-1.0) ** n) / (n * (n - 1))
    result[small] = series * xs * xs
    return result


def _log_weights_by_stirling(mean: float, mode: int, low: int, high: int) -> np.ndarray:
    """log p(k) up to a constant for k = low .. high >= 1000, from Stirling's series.

    log p(k) = -mean h((k - mean)/mean) - (1/2) log(2 pi k) - 1/(12k) + 1/(360k^3) + O(k^-5)
    with h from :func:`_relative_entropy_term`; the O(k^-5) remainder is below
    1/(1260 k^5) < 1e-18 for k >= 1000. Every term is small or varies slowly across the
    table, so the float64 error does not grow with the table width. The
    (1/2) log(k) term is taken relative to the mode with log1p.
    """
    k = np.arange(low, high + 1, dtype=np.float64)
    x = (k - mean) / mean
    log_weights = -mean * _relative_entropy_term(x)
    log_weights -= 0.5 * np.log1p((k - mode) / mode)
    log_weights -= 1.0 / (12.0 * k) - 1.0 / (360.0 * k**3)
    return log_weights


_STIRLING_MINIMUM_MEAN = 1e4
"""Means from here on use Stirling's series (the table then starts above k = 1000)."""


def _build_poisson_table(mean: float, width: float) -> tuple[int, np.ndarray, float] | None:
    """The table for ``mean`` over [mode - width, mode + width], or None if too narrow."""
    mode = math.floor(mean)
    low = max(0, math.floor(mode - width))
    high = math.ceil(mode + width)
    if mean >= _STIRLING_MINIMUM_MEAN and low >= 1000:
        log_weights = _log_weights_by_stirling(mean, mode, low, high)
    else:
        log_weights = _log_weights_by_recurrence(mean, mode, low, high)
    log_weights -= log_weights.max()
    weights = np.exp(log_weights)
    probabilities = weights / math.fsum(weights.tolist())
    upper_ratio = mean / (high + 1)
    upper_tail = float(probabilities[-1]) * upper_ratio / (1.0 - upper_ratio)
    lower_tail = 0.0
    if low > 0:
        lower_ratio = low / mean
        lower_tail = float(probabilities[0]) * lower_ratio / (1.0 - lower_ratio)
    tail_mass = upper_tail + lower_tail
    if not tail_mass < _TAIL_MASS_LIMIT:
        return None
    scaled = probabilities * float(_TABLE_TOTAL)
    counts = np.rint(scaled).astype(np.uint64)
    remainder = _TABLE_TOTAL - int(counts.sum(dtype=np.uint64))
    mode_index = int(np.argmax(counts))
    adjusted = int(counts[mode_index]) + remainder
    if not 0 <= adjusted <= _TABLE_TOTAL:
        raise NoiseError(f"cannot build an exact Poisson table for mean {mean!r}")
    counts[mode_index] = np.uint64(adjusted)
    cumulative = np.cumsum(counts, dtype=np.uint64)
    if int(cumulative[-1]) != _TABLE_TOTAL:
        raise NoiseError(f"Poisson table for mean {mean!r} does not sum to 2^{_TABLE_BITS}")
    # Distance between the integer table and the computed pmf, plus 2^-52 for the float
    # error of computing it: sum_k |counts_k / 2^63 - p_k| / 2.
    grid = math.fsum(np.abs(counts.astype(np.float64) - scaled).tolist()) / float(_TABLE_TOTAL) / 2.0 + 2.0**-52
    tv_bound = tail_mass + grid + _PMF_FLOAT_ALLOWANCE
    return low, cumulative[:-1].copy(), tv_bound


def skellam_noise(source: RandomSource, count: int, *, variance: float) -> np.ndarray:
    """``count`` samples of the symmetric Skellam law of the given variance (int64).

    Skellam(mu, mu) = Poisson(mu) - Poisson(mu) has mean 0 and variance 2 mu, and a
    sum of independent symmetric Skellams is symmetric Skellam with the variances
    added (Agarwal, Kairouz, Liu 2021, section 3), which is what lets each of t
    clients add variance V/t. Variance 0 returns zeros. The distance of each sample
    from the exact law is at most ``2 * PoissonSampler(variance / 2).total_variation_bound``.
    """
    _check_count(count)
    if isinstance(variance, bool) or not isinstance(variance, (int, float)) or not math.isfinite(variance):
        raise NoiseError(f"variance must be a finite number, got {variance!r}")
    if variance < 0:
        raise NoiseError(f"variance must be >= 0, got {variance!r}")
    if variance == 0:
        return np.zeros(count, dtype=np.int64)
    sampler = cached_poisson_sampler(variance / 2.0)
    noise = sampler.sample(source, count)
    noise -= sampler.sample(source, count)
    return noise


@functools.lru_cache(maxsize=8)
def cached_poisson_sampler(mean: float) -> PoissonSampler:
    """Tables are immutable and depend only on the mean: a round reuses its table."""
    return PoissonSampler(mean)
