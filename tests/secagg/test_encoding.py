"""Fixed-point encoding into Z_(2^b) (secagg/encoding.py).

* The ring: container dtypes, reduction, and ``to_signed``/``from_signed`` as exact
  inverses for every b in 8..64 (odd widths included) at the boundary values.
* No wrap: a configuration whose n-client sum could wrap is refused
  (:class:`RingOverflowError`); every accepted one, and every one chosen by
  ``with_max_precision``, decodes the sum of n worst-case inputs exactly.
* Stochastic rounding is unbiased (fixed seeds; 5 binomial standard errors).
* Refusals for NaN, infinities, |x| > clip and wrong dimensions.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secagg.encoding import MAX_BITS, MIN_BITS, FixedPointEncoding, Ring
from secagg.errors import EncodingError, RingOverflowError
from secagg.hazmat.randomness import DeterministicRandom

ALL_BITS = list(range(MIN_BITS, MAX_BITS + 1))
SIGMAS = 5.0
"""Two-sided tolerance in standard errors: P(|N(0,1)| > 5) = 5.7e-7."""


# --- the ring ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bits", "dtype"),
    [(8, np.uint8), (9, np.uint16), (16, np.uint16), (17, np.uint32), (32, np.uint32), (33, np.uint64), (64, np.uint64)],
)
def test_ring_uses_the_smallest_little_endian_container(bits: int, dtype: type) -> None:
    ring = Ring(bits)
    assert ring.dtype == np.dtype(dtype).newbyteorder("<")
    assert ring.element_bytes == np.dtype(dtype).itemsize
    assert ring.modulus == 1 << bits
    assert ring.is_full_width == (bits == 8 * np.dtype(dtype).itemsize)


@pytest.mark.parametrize("bits", [0, 7, 65, 128, -32, 32.0, "32", None])
def test_ring_bits_outside_8_to_64_or_not_integers_are_refused(bits: object) -> None:
    with pytest.raises(EncodingError, match="ring bits"):
        Ring(bits)  # type: ignore[arg-type]


def _signed_boundaries(bits: int) -> list[int]:
    half = 1 << (bits - 1)
    return [-half, -half + 1, -2, -1, 0, 1, 2, half - 2, half - 1]


@pytest.mark.parametrize("bits", ALL_BITS)
def test_from_signed_then_to_signed_is_the_identity_on_the_signed_range(bits: int) -> None:
    ring = Ring(bits)
    values = np.array(_signed_boundaries(bits), dtype=np.int64)
    encoded = ring.from_signed(values)
    assert encoded.dtype == ring.dtype
    assert ring.is_reduced(encoded)
    assert ring.to_signed(encoded).tolist() == values.tolist()


@pytest.mark.parametrize("bits", ALL_BITS)
def test_to_signed_then_from_signed_is_the_identity_on_ring_elements(bits: int) -> None:
    ring = Ring(bits)
    modulus, half = 1 << bits, 1 << (bits - 1)
    elements = np.array([0, 1, half - 1, half, half + 1, modulus - 1], dtype=ring.dtype)
    signed = ring.to_signed(elements)
    assert signed.dtype == np.int64
    assert signed.tolist() == [0, 1, half - 1, -half, -half + 1, -1]
    assert ring.from_signed(signed).tolist() == elements.tolist()


@pytest.mark.parametrize("bits", [13, 17, 33, 63])
def test_from_signed_reduces_modulo_two_to_the_bits(bits: int) -> None:
    ring = Ring(bits)
    modulus = 1 << bits
    values = np.array([-1, -(1 << (bits - 1)), 5], dtype=np.int64)
    assert ring.from_signed(values).tolist() == [v % modulus for v in values.tolist()]


@settings(max_examples=100, deadline=None)
@given(data=st.data(), bits=st.sampled_from(ALL_BITS))
def test_signed_round_trip_holds_for_arbitrary_values(data: st.DataObject, bits: int) -> None:
    ring = Ring(bits)
    half = 1 << (bits - 1)
    values = data.draw(st.lists(st.integers(min_value=-half, max_value=half - 1), min_size=1, max_size=20))
    assert ring.to_signed(ring.from_signed(np.array(values, dtype=np.int64))).tolist() == values


@pytest.mark.parametrize("bits", [9, 13, 31, 33, 63])
def test_reduce_and_is_reduced_agree_for_non_full_width_rings(bits: int) -> None:
    ring = Ring(bits)
    values = np.array([0, (1 << bits) - 1, 1 << bits, (1 << bits) + 3], dtype=ring.dtype)
    assert not ring.is_reduced(values)
    ring.reduce(values)
    assert values.tolist() == [0, (1 << bits) - 1, 0, 3]
    assert ring.is_reduced(values)


# --- wrap refusal --------------------------------------------------------------------------


def test_a_configuration_whose_sum_could_wrap_is_refused() -> None:
    """Z_2^8 holds sums in [-128, 128): 63 clients of |x*scale| <= 1 (+1 slack) fit, 64 do not."""
    assert FixedPointEncoding(Ring(8), clip=1.0, scale=1.0, max_summands=63).max_summands == 63
    with pytest.raises(RingOverflowError, match="wraps Z_2\\^8"):
        FixedPointEncoding(Ring(8), clip=1.0, scale=1.0, max_summands=64)


def test_a_scale_safe_for_511_clients_is_refused_for_1025_rather_than_wrapped() -> None:
    """Z_2^32 at 2^22 levels per unit: 511 * (2^22 + 1) < 2^31, 1025 * (2^22 + 1) >= 2^31."""
    assert FixedPointEncoding(Ring(32), clip=1.0, scale=2.0**22, max_summands=511)
    with pytest.raises(RingOverflowError):
        FixedPointEncoding(Ring(32), clip=1.0, scale=2.0**22, max_summands=1025)


@settings(max_examples=200, deadline=None)
@given(
    bits=st.sampled_from(ALL_BITS),
    clip=st.floats(min_value=1e-3, max_value=1e6),
    log2_scale=st.integers(min_value=-10, max_value=62),
    summands=st.integers(min_value=1, max_value=1 << 16),
)
def test_every_accepted_configuration_bounds_the_worst_case_sum_inside_the_signed_range(
    bits: int, clip: float, log2_scale: int, summands: int
) -> None:
    scale = 2.0**log2_scale
    worst = summands * math.ceil(clip * scale)
    try:
        FixedPointEncoding(Ring(bits), clip=clip, scale=scale, max_summands=summands)
    except RingOverflowError:
        assert summands * (math.ceil(clip * scale) + 1) >= 1 << (bits - 1)
        return
    assert worst < 1 << (bits - 1)


@pytest.mark.parametrize(
    ("clip", "scale", "summands"),
    [
        pytest.param(0.0, 1.0, 1, id="zero-clip"),
        pytest.param(-1.0, 1.0, 1, id="negative-clip"),
        pytest.param(math.nan, 1.0, 1, id="nan-clip"),
        pytest.param(math.inf, 1.0, 1, id="inf-clip"),
        pytest.param(1.0, 0.0, 1, id="zero-scale"),
        pytest.param(1.0, -2.0, 1, id="negative-scale"),
        pytest.param(1.0, math.nan, 1, id="nan-scale"),
        pytest.param(1.0, math.inf, 1, id="inf-scale"),
        pytest.param(1.0, 1.0, 0, id="no-summands"),
    ],
)
def test_invalid_encoding_parameters_are_refused(clip: float, scale: float, summands: int) -> None:
    with pytest.raises(EncodingError):
        FixedPointEncoding(Ring(32), clip=clip, scale=scale, max_summands=summands)


def _exact_sum_check(encoding: FixedPointEncoding, values: np.ndarray, seed: int) -> None:
    """Encode one coordinate per client, add in the ring, and compare with the exact integer sum."""
    ring = encoding.ring
    encoded = encoding.encode(values, DeterministicRandom.from_int(seed))
    individual = ring.to_signed(encoded)
    bound = math.ceil(encoding.clip * encoding.scale)
    assert int(individual.min()) >= -bound and int(individual.max()) <= bound
    ring_sum = ring.reduce(np.array([np.sum(encoded, dtype=ring.dtype)], dtype=ring.dtype))
    exact = int(np.sum(individual.astype(object)))
    assert -(1 << (ring.bits - 1)) <= exact < 1 << (ring.bits - 1)
    assert int(ring.to_signed(ring_sum)[0]) == exact
    assert encoding.decode_sum(ring_sum)[0] == exact / encoding.scale


@settings(max_examples=80, deadline=None)
@given(
    bits=st.sampled_from(ALL_BITS),
    clip=st.floats(min_value=1e-3, max_value=1e6),
    summands=st.integers(min_value=1, max_value=1 << 16),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_with_max_precision_never_wraps_for_max_magnitude_inputs_of_either_sign(
    bits: int, clip: float, summands: int, seed: int
) -> None:
    ring = Ring(bits)
    try:
        encoding = FixedPointEncoding.with_max_precision(ring, clip, summands)
    except RingOverflowError:
        assert ((1 << (bits - 1)) - 1) // summands - 2 < 1
        return
    assert math.log2(encoding.scale).is_integer()
    assert summands * math.ceil(clip * encoding.scale) < 1 << (bits - 1)
    with pytest.raises(RingOverflowError):  # within a factor of four of the largest safe scale
        FixedPointEncoding(ring, clip=clip, scale=4 * encoding.scale, max_summands=summands)
    for values in (np.full(summands, clip), np.full(summands, -clip), np.where(np.arange(summands) % 3 == 0, -clip, clip)):
        _exact_sum_check(encoding, values, seed)


@pytest.mark.parametrize("bits", [8, 13, 32, 33, 64])
def test_with_max_precision_refuses_more_clients_than_the_ring_can_hold(bits: int) -> None:
    too_many = (1 << (bits - 1)) // 2
    with pytest.raises(RingOverflowError, match="cannot be summed"):
        FixedPointEncoding.with_max_precision(Ring(bits), 1.0, too_many)


@pytest.mark.parametrize(("bits", "clip"), [(64, 1e-300), (32, 5e-324)])
def test_with_max_precision_refuses_a_clip_too_small_for_a_float_scale_with_an_encoding_error(bits: int, clip: float) -> None:
    with pytest.raises(EncodingError):
        FixedPointEncoding.with_max_precision(Ring(bits), clip, 1)


@pytest.mark.parametrize(("clip", "summands"), [(0.0, 10), (-1.0, 10), (math.nan, 10), (math.inf, 10), (1.0, 0)])
def test_with_max_precision_refuses_invalid_parameters(clip: float, summands: int) -> None:
    with pytest.raises(EncodingError):
        FixedPointEncoding.with_max_precision(Ring(32), clip, summands)


# --- decoding ------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [8, 13, 32, 33, 63, 64])
def test_negative_sums_decode_to_the_exact_negative_value(bits: int) -> None:
    """Inputs on the scale's grid round deterministically, so the sum is known exactly."""
    encoding = FixedPointEncoding.with_max_precision(Ring(bits), clip=2.0, max_summands=5)
    step = 1.0 / encoding.scale
    inputs = [
        np.array([-2.0, -1.0, -step, 0.0]),
        np.array([-2.0, 1.0, 0.0, -step]),
        np.array([-2.0, -2.0, step, 0.0]),
        np.array([1.5, 0.0, -step, 0.0]),
        np.array([-2.0, 0.0, 0.0, 0.0]),
    ]
    source = DeterministicRandom.from_int(77)
    total = encoding.ring.zeros(4)
    for vector in inputs:
        total += encoding.encode(vector, source)
    encoding.ring.reduce(total)
    decoded = encoding.decode_sum(total)
    assert decoded.dtype == np.float64
    assert decoded.tolist() == [-6.5, -2.0, -step, -step]


def test_encoding_values_on_the_grid_is_exact_and_uses_no_randomness() -> None:
    encoding = FixedPointEncoding(Ring(16), clip=3.0, scale=4.0, max_summands=10)
    encoded = encoding.encode(np.array([-3.0, -0.25, 0.0, 0.75, 3.0]), DeterministicRandom.from_int(1))
    assert encoding.ring.to_signed(encoded).tolist() == [-12, -1, 0, 3, 12]


# --- stochastic rounding -------------------------------------------------------------------

SAMPLES = 100_000


@pytest.mark.parametrize("value", [0.3, -2.7, 0.999, 1e-3, -0.5, 4.0 - 2.0**-20])
def test_stochastic_rounding_is_unbiased(value: float) -> None:
    """Round-ups ~ Binomial(N, f) for the fractional part f: mean within 5 standard errors of x * scale."""
    encoding = FixedPointEncoding(Ring(32), clip=8.0, scale=1.0, max_summands=1)
    encoded = encoding.ring.to_signed(encoding.encode(np.full(SAMPLES, value), DeterministicRandom.from_int(500)))
    low = math.floor(value)
    assert set(np.unique(encoded).tolist()) <= {low, low + 1}
    fraction = value - low
    standard_error = math.sqrt(fraction * (1 - fraction) / SAMPLES)
    assert abs(encoded.mean() - value) <= SIGMAS * standard_error


def test_stochastic_rounding_is_unbiased_at_a_fine_scale_across_many_values() -> None:
    """Mean error over 100k uniform values in [-1, 1] at scale 2^10: each error has variance <= 1/4."""
    encoding = FixedPointEncoding(Ring(32), clip=1.0, scale=2.0**10, max_summands=1)
    source = DeterministicRandom.from_int(501)
    words = np.frombuffer(source.random_bytes(8 * SAMPLES), dtype=np.uint64)
    values = (words >> np.uint64(11)).astype(np.float64) / 2.0**52 - 1.0
    encoded = encoding.ring.to_signed(encoding.encode(values, source)).astype(np.float64)
    errors = encoded - values * encoding.scale
    assert np.all(np.abs(errors) < 1.0)
    assert abs(errors.mean()) <= SIGMAS * math.sqrt(0.25 / SAMPLES)


def test_encoding_is_reproducible_from_the_random_source() -> None:
    encoding = FixedPointEncoding(Ring(32), clip=1.0, scale=2.0**8, max_summands=4)
    values = np.linspace(-1, 1, 101)
    first = encoding.encode(values, DeterministicRandom.from_int(3))
    assert np.array_equal(first, encoding.encode(values, DeterministicRandom.from_int(3)))


# --- input refusals ------------------------------------------------------------------------

ENCODING = FixedPointEncoding(Ring(32), clip=1.0, scale=2.0**10, max_summands=10)


@pytest.mark.parametrize(
    "values",
    [
        pytest.param(np.array([0.0, np.nan]), id="nan"),
        pytest.param(np.array([np.inf]), id="inf"),
        pytest.param(np.array([-np.inf, 0.0]), id="minus-inf"),
        pytest.param(np.array([1.0 + 1e-12]), id="just-above-clip"),
        pytest.param(np.array([-1.5]), id="below-minus-clip"),
        pytest.param(np.zeros((2, 2)), id="two-dimensional"),
        pytest.param(np.float64(0.5), id="scalar"),
    ],
)
def test_invalid_inputs_are_refused(values: np.ndarray) -> None:
    with pytest.raises(EncodingError):
        ENCODING.encode(values, DeterministicRandom.from_int(1))


def test_inputs_exactly_at_plus_and_minus_clip_are_accepted() -> None:
    encoded = ENCODING.encode(np.array([-1.0, 1.0]), DeterministicRandom.from_int(1))
    assert ENCODING.ring.to_signed(encoded).tolist() == [-1024, 1024]


def test_an_empty_vector_encodes_to_an_empty_ring_vector() -> None:
    encoded = ENCODING.encode(np.array([], dtype=np.float64), DeterministicRandom.from_int(1))
    assert encoded.shape == (0,) and encoded.dtype == ENCODING.ring.dtype
