"""Fixed-point encoding of real vectors into the ring Z_(2^b), and back.

Bonawitz et al. 2017 (section 3) sum vectors over Z_R. Here R = 2^b with b in
[8, 64], held in the smallest unsigned numpy type of at least b bits ("container"),
so numpy's unsigned wraparound is reduction modulo 2^w and a final mask with
2^b - 1 reduces modulo 2^b.

A real x with |x| <= clip is scaled by ``scale`` and rounded *stochastically*
(floor, plus one with probability equal to the fractional part), which is unbiased:
E[encode(x)] = x * scale. Negative values are stored in two's complement modulo
2^b; the sum is decoded as a signed integer in [-2^(b-1), 2^(b-1)).

The sum of n inputs cannot wrap: the encoder refuses any configuration in which
n * (ceil(clip * scale) + 1) could reach 2^(b-1) (:class:`RingOverflowError`). This is
checked before any data is encoded, never discovered afterwards.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from secagg.errors import EncodingError, RingOverflowError
from secagg.hazmat.randomness import RandomSource, uniform_floats

MIN_BITS = 8
MAX_BITS = 64


@dataclass(frozen=True, slots=True)
class Ring:
    """Z_(2^bits), stored in the smallest unsigned numpy dtype that holds ``bits`` bits."""

    bits: int = 32

    def __post_init__(self) -> None:
        if not isinstance(self.bits, int) or not MIN_BITS <= self.bits <= MAX_BITS:
            raise EncodingError(f"ring bits must be an integer in [{MIN_BITS}, {MAX_BITS}], got {self.bits!r}")

    @property
    def dtype(self) -> np.dtype:
        for width, dtype in ((8, np.uint8), (16, np.uint16), (32, np.uint32), (64, np.uint64)):
            if self.bits <= width:
                return np.dtype(dtype).newbyteorder("<")
        raise AssertionError("unreachable")

    @property
    def modulus(self) -> int:
        return 1 << self.bits

    @property
    def element_bytes(self) -> int:
        return self.dtype.itemsize

    @property
    def is_full_width(self) -> bool:
        return self.bits == 8 * self.dtype.itemsize

    def zeros(self, dim: int) -> np.ndarray:
        return np.zeros(dim, dtype=self.dtype)

    def reduce(self, values: np.ndarray) -> np.ndarray:
        """Reduce a container-dtype array modulo 2^bits in place; return it."""
        if not self.is_full_width:
            np.bitwise_and(values, self.dtype.type(self.modulus - 1), out=values)
        return values

    def is_reduced(self, values: np.ndarray) -> bool:
        """True iff every element is below 2^bits (a canonical ring element)."""
        if self.is_full_width:
            return True
        return bool((values >> self.dtype.type(self.bits)).max(initial=0) == 0)

    def to_signed(self, values: np.ndarray) -> np.ndarray:
        """Interpret ring elements as integers in [-2^(b-1), 2^(b-1)) (int64)."""
        signed = values.astype(np.uint64).view(np.int64) if self.bits == 64 else values.astype(np.int64)
        if self.bits < 64:
            half = 1 << (self.bits - 1)
            signed = np.where(signed >= half, signed + np.int64(-self.modulus), signed)
        return signed

    def from_signed(self, values: np.ndarray) -> np.ndarray:
        """Two's complement of int64 values modulo 2^bits, in the container dtype."""
        as_unsigned = np.asarray(values, dtype=np.int64).view(np.uint64)
        return self.reduce(as_unsigned.astype(self.dtype))


@dataclass(frozen=True, slots=True)
class FixedPointEncoding:
    """Stochastic fixed-point encoding for a sum of up to ``max_summands`` vectors.

    ``clip`` bounds |x| for every coordinate; ``scale`` multiplies before rounding.
    Construction refuses a (ring, clip, scale, max_summands) that could wrap.
    """

    ring: Ring
    clip: float
    scale: float
    max_summands: int

    def __post_init__(self) -> None:
        if not (math.isfinite(self.clip) and self.clip > 0):
            raise EncodingError("clip must be a positive finite number")
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise EncodingError("scale must be a positive finite number")
        if self.max_summands < 1:
            raise EncodingError("max_summands must be at least 1")
        bound = self.max_summands * (math.ceil(self.clip * self.scale) + 1)
        if bound >= 1 << (self.ring.bits - 1):
            raise RingOverflowError(
                f"the sum of {self.max_summands} inputs with |x| <= {self.clip} at scale {self.scale} "
                f"can reach {bound}, which wraps Z_2^{self.ring.bits} (limit {(1 << (self.ring.bits - 1)) - 1}); "
                "use more bits, a smaller scale, a smaller clip, or fewer clients"
            )

    @classmethod
    def with_max_precision(cls, ring: Ring, clip: float, max_summands: int) -> FixedPointEncoding:
        """The largest power-of-two scale for which ``max_summands`` inputs cannot wrap."""
        if not (math.isfinite(clip) and clip > 0) or max_summands < 1:
            raise EncodingError("clip must be positive and finite, max_summands at least 1")
        headroom = ((1 << (ring.bits - 1)) - 1) // max_summands - 2
        if headroom < 1:
            raise RingOverflowError(f"{max_summands} inputs cannot be summed in Z_2^{ring.bits} at any precision")
        ratio = headroom / clip
        if not math.isfinite(ratio):
            raise EncodingError(f"clip {clip!r} is too small for a floating-point scale")
        exponent = math.floor(math.log2(ratio))
        while exponent > -1100 and math.ceil(clip * 2.0**exponent) + 1 > headroom + 1:
            exponent -= 1
        return cls(ring=ring, clip=clip, scale=2.0**exponent, max_summands=max_summands)

    def encode(self, values: np.ndarray, source: RandomSource) -> np.ndarray:
        """Unbiased stochastic rounding of ``values * scale`` into the ring (vectorised)."""
        real = np.asarray(values, dtype=np.float64)
        if real.ndim != 1:
            raise EncodingError("encode takes a 1-D vector")
        if not np.all(np.isfinite(real)):
            raise EncodingError("input contains NaN or infinity")
        if real.size and float(np.max(np.abs(real))) > self.clip:
            raise EncodingError(f"input has a coordinate with |x| > clip = {self.clip}; clip it first")
        scaled = real * self.scale
        lower = np.floor(scaled)
        round_up = uniform_floats(source, real.size) < (scaled - lower)
        integers = lower.astype(np.int64) + round_up
        return self.ring.from_signed(integers)

    def decode_sum(self, ring_sum: np.ndarray) -> np.ndarray:
        """The real-valued sum (float64) from a sum of encoded vectors."""
        return self.ring.to_signed(ring_sum).astype(np.float64) / self.scale
