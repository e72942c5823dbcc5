"""Participant-level distributed differential privacy in the secure-aggregation ring.

Each bank turns its real-valued model update into a noisy integer vector in Z_(2^b)
before masking; the server only ever sees the masked sum, and the noise shares of the
surviving banks add up to the noise that protects any one bank's participation. The
pipeline is the distributed Skellam mechanism of Agarwal, Kairouz, Liu (NeurIPS 2021,
"The Skellam Mechanism for Differentially Private Federated Learning", Algorithm 1),
which reuses the steps of Kairouz, Liu, Steinke (ICML 2021, "The Distributed Discrete
Gaussian Mechanism for Federated Learning with Secure Aggregation", Algorithm 1):

1. **Clip** the update's L2 norm to ``clip_norm`` (c).
2. **Rotate** (optional): pad to d' = the next power of two, flip signs with a random
   diagonal D and apply the normalised Walsh-Hadamard transform H / sqrt(d'). This is
   an orthogonal map (norm preserved) that spreads a vector's mass over all
   coordinates, so few coordinates are large (KLS 2021 section 4.1). The signs come
   from a *public* per-round seed shared by every bank, so the server can invert it.
3. **Scale** by ``scale`` = s (s = 1/gamma in KLS's notation, gamma the granularity).
4. **Conditional randomised rounding** (KLS 2021 section 4.2 and Theorem 1): round each
   coordinate up with probability equal to its fractional part (unbiased), and redraw
   the rounding until the integer vector's L2 norm is at most

       Delta_2^2 = min{ (s c + sqrt(d'))^2,
                        (s c)^2 + d'/4 + sqrt(2 ln(1/beta)) (s c + sqrt(d')/2) }

   (for beta > 0; each draw exceeds it with probability at most beta). For beta = 0
   the first term holds for every draw and no redraw is made.
5. **Skellam noise** (Agarwal et al. 2021): each bank adds symmetric Skellam noise of
   per-coordinate variance V / t, where V is the target aggregate variance and t the
   minimum number of survivors. Sums of independent Skellams are Skellam, so the sum
   over any s >= t survivors carries variance s V / t >= V: the accounting uses the
   worst case s = t.
6. **Modular clipping** into Z_(2^b) (two's complement, :meth:`secagg.encoding.Ring.from_signed`).

The accounting event (:meth:`DistributedDPConfig.accounting_event`) carries the L2
sensitivity Delta_2 above and the L1 sensitivity min(sqrt(d') Delta_2, Delta_2^2)
(an integer vector has ||v||_1 <= ||v||_2^2; Agarwal et al. 2021 section 4), both in
integer units, and the aggregate variance V.

The server decodes the ring sum (:func:`decode_aggregate`): signed integers, divide by
s, invert the rotation, drop the padding. Modular clipping never affects privacy
(post-processing); it affects utility only if the aggregate wraps, which the config
refuses unless the probability is below ``overflow_probability`` (see
:attr:`DistributedDPConfig.aggregate_bound`).

Everything is numpy only (no torch), vectorised and drawn from an injected CSPRNG
(:mod:`dp.mechanisms.noise`); the rotation signs come from the AES-CTR PRG of
:mod:`secagg.hazmat.prg`, which is public randomness here by design.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from enum import Enum

import numpy as np

from dp.errors import DPError
from dp.mechanisms.noise import cached_poisson_sampler, skellam_noise
from secagg.encoding import MAX_BITS, MIN_BITS, Ring
from secagg.hazmat import kdf, prg
from secagg.hazmat.randomness import RandomSource, uniform_floats

DEFAULT_ROUNDING_BETA = math.exp(-0.5)
"""beta = e^(-1/2), the value used in the experiments of Kairouz, Liu, Steinke 2021
(section 6) and Agarwal, Kairouz, Liu 2021 (section 6)."""

MAX_ROUNDING_ATTEMPTS = 200
"""Redraws of the conditional rounding before giving up: each draw fails with
probability at most beta (KLS 2021 Theorem 1), so 200 draws all fail with probability
at most e^(-100) for the default beta."""

DEFAULT_OVERFLOW_PROBABILITY = 1e-9
"""Largest accepted probability that the aggregate of the worst case wraps the ring."""

ROTATION_SEED_BYTES = kdf.KEY_BYTES
"""The public per-round rotation seed is a 256-bit AES key for the PRG."""

_MAX_SQUARED_NORM = 1 << 62
"""Largest squared norm bound: sums of squares of rounded coordinates stay exact in int64."""


class DistributedDPError(DPError):
    """Base class of the errors raised by :mod:`dp.mechanisms.distributed`."""


class DistributedDPConfigError(DistributedDPError, ValueError):
    """A distributed-DP configuration that is invalid or cannot work in its ring."""


class RingHeadroomError(DistributedDPConfigError):
    """The ring is too small for n clients' rounded values plus the noise of n clients."""


class UpdateRejected(DistributedDPError, ValueError):
    """An update or aggregate that does not fit the configuration (length, NaN, dtype...)."""


class RoundingFailed(DistributedDPError):
    """Conditional rounding exceeded its norm bound in every allowed attempt."""


class Rotation(str, Enum):
    """How the clipped update is rotated before scaling and rounding."""

    NONE = "none"
    RANDOMIZED_HADAMARD = "randomized-hadamard"


class Reduction(str, Enum):
    """What :func:`decode_aggregate` returns: the sum over survivors or their mean."""

    SUM = "sum"
    MEAN = "mean"


def _positive_finite(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise DistributedDPConfigError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DistributedDPConfigError(f"{name} must be a positive integer, got {value!r}")
    return value


def _next_power_of_two(value: int) -> int:
    return 1 << max(0, (value - 1).bit_length())


def noise_tail_bound(variance: float, *, dimension: int, failure_probability: float) -> float:
    """A bound a with P(max_j |X_j| >= a) <= failure_probability for ``dimension`` i.i.d.
    symmetric Skellam X_j of the given variance.

    X = P1 - P2 with P1, P2 ~ Poisson(lam), lam = variance / 2, and |X| >= a implies
    |P_i - lam| >= a/2 for some i. Bernstein's inequality for the Poisson law,
    P(|P - lam| >= u) <= 2 exp(-u^2 / (2 (lam + u/3))), with u = a/2 and a union bound
    over 2 variables and ``dimension`` coordinates gives the quadratic
    a^2 - (4L/3) a - 8 lam L >= 0, L = ln(4 dimension / failure_probability).
    """
    if variance <= 0:
        return 0.0
    log_term = math.log(4.0 * dimension / failure_probability)
    lam = variance / 2.0
    linear = 2.0 * log_term / 3.0
    return linear + math.sqrt(linear * linear + 8.0 * lam * log_term)


@dataclass(frozen=True)
class DistributedDPConfig:
    """Parameters of the distributed Skellam mechanism for one federated round.

    ``aggregate_variance`` (V) is the per-coordinate variance of the aggregate noise in
    integer units when exactly ``min_survivors`` (t) banks survive; each bank adds V / t.
    ``max_clients`` (n) bounds the number of summands, for the ring headroom check.

    Construction refuses (with :class:`DistributedDPConfigError` or
    :class:`RingHeadroomError`) any configuration whose values could wrap the ring:
    n * floor(Delta_2) (the largest a sum of n rounded coordinates can reach, since
    |x_j| <= ||x||_2 <= Delta_2) plus :func:`noise_tail_bound` of the noise of all n
    banks must stay below 2^(b-1).
    """

    dimension: int
    clip_norm: float
    scale: float
    aggregate_variance: float
    min_survivors: int
    max_clients: int
    ring_bits: int = 32
    rotation: Rotation = Rotation.RANDOMIZED_HADAMARD
    rounding_beta: float = DEFAULT_ROUNDING_BETA
    overflow_probability: float = DEFAULT_OVERFLOW_PROBABILITY

    def __post_init__(self) -> None:
        _positive_int("dimension", self.dimension)
        object.__setattr__(self, "clip_norm", _positive_finite("clip_norm", self.clip_norm))
        object.__setattr__(self, "scale", _positive_finite("scale", self.scale))
        object.__setattr__(self, "aggregate_variance", _positive_finite("aggregate_variance", self.aggregate_variance))
        _positive_int("min_survivors", self.min_survivors)
        _positive_int("max_clients", self.max_clients)
        if self.min_survivors > self.max_clients:
            raise DistributedDPConfigError(f"min_survivors ({self.min_survivors}) exceeds max_clients ({self.max_clients})")
        if isinstance(self.ring_bits, bool) or not isinstance(self.ring_bits, int) or not MIN_BITS <= self.ring_bits <= MAX_BITS:
            raise DistributedDPConfigError(f"ring_bits must be an integer in [{MIN_BITS}, {MAX_BITS}], got {self.ring_bits!r}")
        if not isinstance(self.rotation, Rotation):
            raise DistributedDPConfigError(f"rotation must be a Rotation, got {self.rotation!r}")
        beta = self.rounding_beta
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0.0 <= beta < 1.0:
            raise DistributedDPConfigError(f"rounding_beta must be in [0, 1), got {beta!r}")
        probability = self.overflow_probability
        if isinstance(probability, bool) or not isinstance(probability, (int, float)) or not 0.0 < probability < 1.0:
            raise DistributedDPConfigError(f"overflow_probability must be in (0, 1), got {probability!r}")
        deterministic_bound = self.scaled_clip_norm + math.sqrt(self.padded_dimension)
        if deterministic_bound * deterministic_bound >= _MAX_SQUARED_NORM:
            raise DistributedDPConfigError(
                f"scale * clip_norm + sqrt(d') = {deterministic_bound:.4g} is too large for exact int64 norms; "
                "use a smaller scale"
            )
        limit = (1 << (self.ring_bits - 1)) - 1
        if self.aggregate_bound > limit:
            raise RingHeadroomError(
                f"the aggregate of {self.max_clients} clients can reach {self.aggregate_bound:.6g} "
                f"({self.max_clients} x {math.floor(self.l2_sensitivity)} rounded values plus a noise tail of "
                f"{self.aggregate_bound - self.max_clients * math.floor(self.l2_sensitivity):.6g} at probability "
                f"{self.overflow_probability:g}), which wraps Z_2^{self.ring_bits} (limit {limit}); "
                "use more ring bits, a smaller scale, less noise or fewer clients"
            )

    @classmethod
    def with_noise_multiplier(
        cls,
        *,
        dimension: int,
        clip_norm: float,
        scale: float,
        noise_multiplier: float,
        min_survivors: int,
        max_clients: int,
        ring_bits: int = 32,
        rotation: Rotation = Rotation.RANDOMIZED_HADAMARD,
        rounding_beta: float = DEFAULT_ROUNDING_BETA,
        overflow_probability: float = DEFAULT_OVERFLOW_PROBABILITY,
    ) -> DistributedDPConfig:
        """The config whose aggregate noise std (integer units) is ``noise_multiplier``
        times the L2 sensitivity Delta_2, the analogue of the Gaussian mechanism's z."""
        _positive_finite("noise_multiplier", noise_multiplier)
        padded = _next_power_of_two(dimension) if rotation is Rotation.RANDOMIZED_HADAMARD else dimension
        _positive_int("dimension", dimension)
        sensitivity = _l2_sensitivity(
            _positive_finite("scale", scale) * _positive_finite("clip_norm", clip_norm), padded, rounding_beta
        )
        return cls(
            dimension=dimension,
            clip_norm=clip_norm,
            scale=scale,
            aggregate_variance=(noise_multiplier * sensitivity) ** 2,
            min_survivors=min_survivors,
            max_clients=max_clients,
            ring_bits=ring_bits,
            rotation=rotation,
            rounding_beta=rounding_beta,
            overflow_probability=overflow_probability,
        )

    @classmethod
    def for_target_epsilon(
        cls,
        *,
        target_epsilon: float,
        delta: float,
        rounds: int,
        dimension: int,
        clip_norm: float,
        scale: float,
        min_survivors: int,
        max_clients: int,
        ring_bits: int = 32,
        rotation: Rotation = Rotation.RANDOMIZED_HADAMARD,
        rounding_beta: float = DEFAULT_ROUNDING_BETA,
        overflow_probability: float = DEFAULT_OVERFLOW_PROBABILITY,
    ) -> DistributedDPConfig:
        """The config with the least aggregate variance whose ``rounds`` releases stay
        within ``target_epsilon`` at ``delta`` in the worst case of t survivors
        (``dp.accounting.skellam_variance_for_epsilon``, RDP bound of Agarwal et al. 2021)."""
        from dp.accounting import skellam_variance_for_epsilon

        probe = cls(
            dimension=dimension,
            clip_norm=clip_norm,
            scale=scale,
            aggregate_variance=1.0,
            min_survivors=min_survivors,
            max_clients=max_clients,
            ring_bits=ring_bits,
            rotation=rotation,
            rounding_beta=rounding_beta,
            overflow_probability=overflow_probability,
        )
        variance = skellam_variance_for_epsilon(
            target_epsilon=target_epsilon,
            delta=delta,
            l1_sensitivity=probe.l1_sensitivity,
            l2_sensitivity=probe.l2_sensitivity,
            steps=rounds,
        )
        return dataclasses.replace(probe, aggregate_variance=variance)

    @property
    def ring(self) -> Ring:
        return Ring(self.ring_bits)

    @property
    def padded_dimension(self) -> int:
        """d': the length of the encoded vector (next power of two when rotating)."""
        if self.rotation is Rotation.RANDOMIZED_HADAMARD:
            return _next_power_of_two(self.dimension)
        return self.dimension

    @property
    def scaled_clip_norm(self) -> float:
        return self.scale * self.clip_norm

    @property
    def squared_norm_bound(self) -> int:
        """The integer bound enforced on ||rounded||_2^2: floor(Delta_2^2) (KLS 2021 Theorem 1)."""
        return _squared_norm_bound(self.scaled_clip_norm, self.padded_dimension, self.rounding_beta)

    @property
    def l2_sensitivity(self) -> float:
        """Delta_2 in integer units: one bank's rounded vector has ||x||_2 <= Delta_2."""
        return _l2_sensitivity(self.scaled_clip_norm, self.padded_dimension, self.rounding_beta)

    @property
    def l1_sensitivity(self) -> float:
        """Delta_1 = min(sqrt(d') Delta_2, Delta_2^2) (never below Delta_2; Agarwal et al. 2021)."""
        l2 = self.l2_sensitivity
        return max(l2, min(math.sqrt(self.padded_dimension) * l2, float(self.squared_norm_bound)))

    @property
    def per_client_variance(self) -> float:
        """V / t: the Skellam variance each bank adds per coordinate."""
        return self.aggregate_variance / self.min_survivors

    @property
    def sampler_total_variation_bound(self) -> float:
        """Bound tau on the total variation distance between the noise of one round as
        sampled and the ideal Skellam noise: 2 Poisson draws per coordinate, d'
        coordinates, at most n banks, each draw within
        :attr:`dp.mechanisms.noise.PoissonSampler.total_variation_bound`. The round is then
        (epsilon, delta + (1 + e^epsilon) tau)-DP where the ideal mechanism is
        (epsilon, delta)-DP (see :mod:`dp.mechanisms.noise`)."""
        per_draw = cached_poisson_sampler(self.per_client_variance / 2.0).total_variation_bound
        return 2.0 * self.padded_dimension * self.max_clients * per_draw

    @property
    def aggregate_bound(self) -> float:
        """Largest |aggregate coordinate| except with probability ``overflow_probability``."""
        noise = noise_tail_bound(
            self.per_client_variance * self.max_clients,
            dimension=self.padded_dimension,
            failure_probability=self.overflow_probability,
        )
        return self.max_clients * math.floor(self.l2_sensitivity) + noise

    def accounting_event(self, *, rounds: int = 1):
        """The :class:`dp.accounting.Skellam` event of ``rounds`` releases with this config."""
        from dp.accounting.events import Skellam

        return Skellam(
            l1_sensitivity=self.l1_sensitivity,
            l2_sensitivity=self.l2_sensitivity,
            variance=self.aggregate_variance,
            steps=rounds,
        )


def _squared_norm_bound(scaled_clip: float, padded_dimension: int, beta: float) -> int:
    unconditional = (scaled_clip + math.sqrt(padded_dimension)) ** 2
    if beta == 0:
        return math.floor(unconditional)
    conditional = (
        scaled_clip**2
        + padded_dimension / 4.0
        + math.sqrt(2.0 * math.log(1.0 / beta)) * (scaled_clip + math.sqrt(padded_dimension) / 2.0)
    )
    return math.floor(min(unconditional, conditional))


def _l2_sensitivity(scaled_clip: float, padded_dimension: int, beta: float) -> float:
    # Rounded up so that the reported sensitivity is never below the enforced bound.
    return math.nextafter(math.sqrt(_squared_norm_bound(scaled_clip, padded_dimension, beta)), math.inf)


@dataclass(frozen=True)
class EncodedUpdate:
    """A bank's noisy ring vector and how it was produced (kept local, for diagnostics)."""

    values: np.ndarray
    """Ring elements in the ring's container dtype, length ``padded_dimension``."""
    clipped: bool
    """Whether the update's norm exceeded ``clip_norm`` and was scaled down."""
    rounding_attempts: int
    """Draws of the conditional randomised rounding (1 unless a draw exceeded the bound)."""


def rotation_signs(seed: bytes, length: int) -> np.ndarray:
    """The diagonal of D: ``length`` signs +-1 (float64) from the AES-CTR PRG of ``seed``."""
    if not isinstance(seed, bytes) or len(seed) != ROTATION_SEED_BYTES:
        raise UpdateRejected(f"the rotation seed must be {ROTATION_SEED_BYTES} bytes")
    stream = np.empty((length + 7) // 8, dtype=np.uint8)
    prg.expand(seed, stream)
    bits = np.unpackbits(stream, bitorder="little")[:length]
    return 1.0 - 2.0 * bits.astype(np.float64)


def walsh_hadamard(values: np.ndarray) -> np.ndarray:
    """The normalised Walsh-Hadamard transform H x / sqrt(n) of a power-of-two-length vector.

    Orthogonal and its own inverse. log2(n) vectorised butterfly passes between two
    buffers (Fino and Algazi 1976 ordering: natural/Hadamard order).
    """
    length = values.size
    if length & (length - 1):
        raise UpdateRejected(f"the Walsh-Hadamard transform needs a power-of-two length, got {length}")
    current = np.array(values, dtype=np.float64, copy=True)
    other = np.empty_like(current)
    half = 1
    while half < length:
        pairs = current.reshape(-1, 2, half)
        target = other.reshape(-1, 2, half)
        np.add(pairs[:, 0, :], pairs[:, 1, :], out=target[:, 0, :])
        np.subtract(pairs[:, 0, :], pairs[:, 1, :], out=target[:, 1, :])
        current, other = other, current
        half *= 2
    current *= 1.0 / math.sqrt(length)
    return current


def rotate(values: np.ndarray, seed: bytes, padded_dimension: int) -> np.ndarray:
    """H D x / sqrt(d') for x zero-padded to ``padded_dimension`` (a power of two)."""
    padded = np.zeros(padded_dimension, dtype=np.float64)
    padded[: values.size] = values
    padded *= rotation_signs(seed, padded_dimension)
    return walsh_hadamard(padded)


def unrotate(values: np.ndarray, seed: bytes) -> np.ndarray:
    """The inverse of :func:`rotate` (before dropping the padding): D H y / sqrt(d')."""
    restored = walsh_hadamard(values)
    restored *= rotation_signs(seed, values.size)
    return restored


def stochastic_round(values: np.ndarray, source: RandomSource) -> np.ndarray:
    """Unbiased randomised rounding to int64: floor(x) + Bernoulli(x - floor(x)).

    The Bernoulli compares a 53-bit CSPRNG uniform with the fractional part, so
    E[result] = x up to 2^-53 per coordinate.
    """
    lower = np.floor(values)
    round_up = uniform_floats(source, values.size) < (values - lower)
    return lower.astype(np.int64) + round_up


def conditional_round(values: np.ndarray, squared_norm_bound: int | None, source: RandomSource) -> tuple[np.ndarray, int]:
    """Stochastic rounding redrawn until ||result||_2^2 <= ``squared_norm_bound`` (KLS 2021).

    ``None`` means no condition (beta = 0). Returns the integers and the number of draws.
    The norm is computed exactly in int64 (the config guarantees no overflow).

    Conditioning makes the rounding slightly biased towards shorter vectors (KLS 2021
    section 4.2 bounds the effect); the number of draws depends on the input and is
    visible to a timing observer of the bank, but a redraw happens with probability at
    most beta and the draws carry no more than the rounded vector's norm exceeding the
    bound.
    """
    for attempt in range(1, MAX_ROUNDING_ATTEMPTS + 1):
        rounded = stochastic_round(values, source)
        if squared_norm_bound is None or int(np.dot(rounded, rounded)) <= squared_norm_bound:
            return rounded, attempt
    raise RoundingFailed(
        f"randomised rounding exceeded the squared norm bound {squared_norm_bound} in "
        f"{MAX_ROUNDING_ATTEMPTS} draws; the input was not clipped to the configured norm"
    )


def _check_update(update: np.ndarray, config: DistributedDPConfig) -> np.ndarray:
    vector = np.asarray(update)
    if vector.ndim != 1 or vector.size != config.dimension:
        raise UpdateRejected(f"expected a 1-D update of length {config.dimension}, got shape {vector.shape}")
    if vector.dtype.kind not in "fiu":
        raise UpdateRejected(f"the update must be numeric, got dtype {vector.dtype}")
    vector = vector.astype(np.float64)
    if not np.all(np.isfinite(vector)):
        raise UpdateRejected("the update contains NaN or infinity")
    return vector


def _check_seed(config: DistributedDPConfig, rotation_seed: bytes | None) -> None:
    if config.rotation is Rotation.RANDOMIZED_HADAMARD:
        if not isinstance(rotation_seed, bytes) or len(rotation_seed) != ROTATION_SEED_BYTES:
            raise UpdateRejected(f"a randomized-Hadamard rotation needs a {ROTATION_SEED_BYTES}-byte public rotation seed")
    elif rotation_seed is not None:
        raise UpdateRejected("a rotation seed was given but the config has no rotation")


def clip_to_norm(vector: np.ndarray, clip_norm: float) -> tuple[np.ndarray, bool]:
    """``vector`` scaled down to L2 norm ``clip_norm`` if longer; and whether it was."""
    norm = float(np.linalg.norm(vector))
    if norm <= clip_norm:
        return vector, False
    return vector * (clip_norm / norm), True


def encode_update(
    update: np.ndarray,
    config: DistributedDPConfig,
    *,
    rotation_seed: bytes | None,
    source: RandomSource,
) -> EncodedUpdate:
    """Clip, rotate, scale, conditionally round, add Skellam noise, reduce into the ring.

    ``rotation_seed`` is the round's public 32-byte seed (required iff the config
    rotates); ``source`` is the bank's secret CSPRNG (rounding and noise). The result's
    ``values`` is the secure-aggregation client's input.
    """
    _check_seed(config, rotation_seed)
    vector, clipped = clip_to_norm(_check_update(update, config), config.clip_norm)
    if config.rotation is Rotation.RANDOMIZED_HADAMARD:
        assert rotation_seed is not None
        vector = rotate(vector, rotation_seed, config.padded_dimension)
    vector = vector * config.scale
    bound = None if config.rounding_beta == 0 else config.squared_norm_bound
    rounded, attempts = conditional_round(vector, bound, source)
    rounded += skellam_noise(source, config.padded_dimension, variance=config.per_client_variance)
    return EncodedUpdate(values=config.ring.from_signed(rounded), clipped=clipped, rounding_attempts=attempts)


def decode_aggregate(
    ring_sum: np.ndarray,
    config: DistributedDPConfig,
    *,
    rotation_seed: bytes | None,
    survivors: int,
    reduction: Reduction = Reduction.SUM,
) -> np.ndarray:
    """The real-valued sum (or mean) of the survivors' clipped updates, plus the noise.

    Interprets the ring sum as signed integers, divides by ``scale``, inverts the
    rotation and drops the padding (float64, length ``dimension``). Refuses a survivor
    count below ``min_survivors`` (the sum would carry less than the accounted noise)
    or above ``max_clients``.
    """
    _check_seed(config, rotation_seed)
    if isinstance(survivors, bool) or not isinstance(survivors, int):
        raise UpdateRejected(f"survivors must be an integer, got {survivors!r}")
    if not config.min_survivors <= survivors <= config.max_clients:
        raise UpdateRejected(
            f"{survivors} survivors is outside [{config.min_survivors}, {config.max_clients}]: "
            "below the threshold the aggregate does not carry the accounted noise"
        )
    if not isinstance(reduction, Reduction):
        raise UpdateRejected(f"reduction must be a Reduction, got {reduction!r}")
    ring = config.ring
    values = np.asarray(ring_sum)
    if values.ndim != 1 or values.size != config.padded_dimension or values.dtype != ring.dtype:
        raise UpdateRejected(
            f"expected a ring sum of {config.padded_dimension} elements of dtype {ring.dtype}, "
            f"got shape {values.shape} and dtype {values.dtype}"
        )
    if not ring.is_reduced(values):
        raise UpdateRejected(f"the ring sum has elements outside Z_2^{config.ring_bits}")
    real = ring.to_signed(values).astype(np.float64)
    real /= config.scale
    if config.rotation is Rotation.RANDOMIZED_HADAMARD:
        assert rotation_seed is not None
        real = unrotate(real, rotation_seed)
    result = real[: config.dimension].copy()
    if reduction is Reduction.MEAN:
        result /= survivors
    return result
