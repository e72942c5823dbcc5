"""Injectable randomness (secagg.hazmat.randomness).

``DeterministicRandom`` is an AES-256-CTR keystream under a 256-bit seed; its
output is pinned in ``vectors/prg_secagg_v1.json`` and recomputed here as AES-ECB
of counter blocks. Statistical checks use fixed seeds, so they are deterministic;
each tolerance is stated as a number of standard errors of the estimator, chosen
so that a correct generator would fail for fewer than one seed in a million.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from secagg.hazmat.randomness import SEED_BYTES, DeterministicRandom, RandomSource, SystemRandom, uniform_floats
from tests.secagg.kat import load_vectors, vector_ids

FROZEN = [v for v in load_vectors("prg_secagg_v1.json") if v["kind"] == "deterministic-random"]
SIGMAS = 5.0
"""Two-sided tolerance in standard errors: P(|N(0,1)| > 5) = 5.7e-7."""


def ecb_keystream(key: bytes, nbytes: int) -> bytes:
    counters = b"".join(i.to_bytes(16, "big") for i in range(-(-nbytes // 16)))
    return Cipher(algorithms.AES(key), modes.ECB()).encryptor().update(counters)[:nbytes]


# --- DeterministicRandom -------------------------------------------------------------------


@pytest.mark.parametrize("vector", FROZEN, ids=vector_ids(FROZEN))
def test_from_int_matches_the_frozen_vector_and_aes_ecb_of_counters(vector: dict[str, Any]) -> None:
    expected = bytes.fromhex(vector["bytes"])
    assert ecb_keystream(vector["seed_int"].to_bytes(32, "big"), len(expected)) == expected
    assert DeterministicRandom.from_int(vector["seed_int"]).random_bytes(len(expected)) == expected


def test_the_same_seed_reproduces_the_same_stream() -> None:
    seed = bytes(range(32))
    assert DeterministicRandom(seed).random_bytes(100) == DeterministicRandom(seed).random_bytes(100)


def test_different_seeds_give_different_streams() -> None:
    assert DeterministicRandom.from_int(1).random_bytes(32) != DeterministicRandom.from_int(2).random_bytes(32)


def test_the_stream_is_continuous_across_calls_and_between_random_bytes_and_fill() -> None:
    whole = DeterministicRandom.from_int(5).random_bytes(1 + 17 + 64)
    pieces = DeterministicRandom.from_int(5)
    first, second = pieces.random_bytes(1), pieces.random_bytes(17)
    buffer = np.empty(16, dtype=np.uint32)
    pieces.fill(buffer)
    assert first + second + buffer.tobytes() == whole


@pytest.mark.parametrize("length", [0, 1, 16, 31, 33, 64])
def test_seeds_that_are_not_32_bytes_are_refused(length: int) -> None:
    with pytest.raises(ValueError, match=f"exactly {SEED_BYTES} bytes, got {length}"):
        DeterministicRandom(bytes(length))


@pytest.mark.parametrize("seed", [-1, 1 << 256])
def test_from_int_refuses_integers_outside_256_bits(seed: int) -> None:
    with pytest.raises(OverflowError):
        DeterministicRandom.from_int(seed)


@pytest.mark.parametrize("source", [SystemRandom(), DeterministicRandom.from_int(1)], ids=["system", "deterministic"])
def test_negative_lengths_are_refused(source: RandomSource) -> None:
    with pytest.raises(ValueError, match="non-negative"):
        source.random_bytes(-1)


@pytest.mark.parametrize("source", [SystemRandom(), DeterministicRandom.from_int(1)], ids=["system", "deterministic"])
def test_sources_satisfy_the_random_source_protocol_and_return_the_requested_length(source: RandomSource) -> None:
    assert isinstance(source, RandomSource)
    assert len(source.random_bytes(0)) == 0
    assert len(source.random_bytes(37)) == 37


# --- fill ----------------------------------------------------------------------------------


def _non_contiguous_buffers() -> list[np.ndarray]:
    read_only = np.zeros(8, dtype=np.uint8)
    read_only.flags.writeable = False
    return [
        np.zeros(16, dtype=np.uint32)[::2],
        np.zeros((4, 3), dtype=np.uint64).T,
        np.zeros((4, 4), dtype=np.uint8)[:, 1],
        read_only,
    ]


@pytest.mark.parametrize("source", [SystemRandom(), DeterministicRandom.from_int(1)], ids=["system", "deterministic"])
@pytest.mark.parametrize("buffer", _non_contiguous_buffers(), ids=["strided", "fortran-order", "column", "read-only"])
def test_fill_refuses_buffers_that_are_not_writeable_c_contiguous(source: RandomSource, buffer: np.ndarray) -> None:
    before = buffer.copy()
    with pytest.raises(ValueError, match="writeable C-contiguous"):
        source.fill(buffer)
    assert np.array_equal(buffer, before)


@pytest.mark.parametrize("source", [SystemRandom(), DeterministicRandom.from_int(1)], ids=["system", "deterministic"])
def test_fill_overwrites_every_byte_of_a_multidimensional_buffer(source: RandomSource) -> None:
    """Each of 4096 bytes stays zero with probability 1/256; all staying zero has probability 2^-32768."""
    buffer = np.zeros((64, 16), dtype=np.uint32)
    source.fill(buffer)
    as_bytes = buffer.view(np.uint8).reshape(-1)
    assert np.count_nonzero(as_bytes) > as_bytes.size * (1 - 1 / 256) - SIGMAS * math.sqrt(as_bytes.size / 256)


@pytest.mark.parametrize("nbytes", [64, 4096, 4097, 1 << 20], ids=["small", "at-kernel-limit", "above-kernel-limit", "1MiB"])
def test_system_random_fills_are_never_repeated(nbytes: int) -> None:
    """Both the kernel path and the AES-CTR path (fresh OS key per call) give new bytes every call."""
    first, second = np.empty(nbytes, dtype=np.uint8), np.empty(nbytes, dtype=np.uint8)
    source = SystemRandom()
    source.fill(first)
    source.fill(second)
    assert not np.array_equal(first, second)
    assert not np.array_equal(first[: nbytes // 2], first[nbytes // 2 :])


@pytest.mark.parametrize("source", [SystemRandom(), DeterministicRandom.from_int(24)], ids=["system", "deterministic"])
def test_large_fills_have_uniform_byte_values(source: RandomSource) -> None:
    """Chi-square over the 256 byte values of 1 MiB (255 degrees of freedom).

    The system source is not seeded, so the bound is the Wilson-Hilferty quantile at
    z = 6: a correct generator crosses it with probability about 1e-9 per run.
    """
    buffer = np.empty(1 << 20, dtype=np.uint8)
    source.fill(buffer)
    counts = np.bincount(buffer, minlength=256)
    expected = buffer.size / 256
    chi_square = float(((counts - expected) ** 2 / expected).sum())
    degrees = 255
    bound = degrees * (1 - 2 / (9 * degrees) + 6.0 * math.sqrt(2 / (9 * degrees))) ** 3
    assert chi_square < bound


# --- uniform_floats ------------------------------------------------------------------------

COUNT = 200_000


def test_uniform_floats_are_in_the_unit_interval_with_53_bit_resolution() -> None:
    values = uniform_floats(DeterministicRandom.from_int(21), COUNT)
    assert values.dtype == np.float64 and values.shape == (COUNT,)
    assert values.min() >= 0.0 and values.max() < 1.0
    scaled = values * 2.0**53
    assert np.array_equal(scaled, np.floor(scaled))


def test_uniform_floats_have_the_mean_and_variance_of_the_uniform_distribution() -> None:
    """Mean 1/2 (standard error sqrt(1/12/N)); variance 1/12 (standard error sqrt(1/180/N))."""
    values = uniform_floats(DeterministicRandom.from_int(22), COUNT)
    assert abs(values.mean() - 0.5) < SIGMAS * math.sqrt(1 / 12 / COUNT)
    assert abs(values.var() - 1 / 12) < SIGMAS * math.sqrt(1 / 180 / COUNT)


def test_uniform_floats_fill_equal_width_bins_evenly() -> None:
    """Chi-square over 64 bins (63 degrees of freedom): mean 63, sd sqrt(126); 63 + 5 sd = 119."""
    values = uniform_floats(DeterministicRandom.from_int(23), COUNT)
    counts = np.bincount((values * 64).astype(np.int64), minlength=64)
    expected = COUNT / 64
    chi_square = float(((counts - expected) ** 2 / expected).sum())
    assert chi_square < 63 + SIGMAS * math.sqrt(2 * 63)


def test_uniform_floats_of_zero_count_is_empty() -> None:
    assert uniform_floats(DeterministicRandom.from_int(1), 0).shape == (0,)


def test_uniform_floats_are_reproducible_from_the_seed() -> None:
    first = uniform_floats(DeterministicRandom.from_int(9), 50)
    assert np.array_equal(first, uniform_floats(DeterministicRandom.from_int(9), 50))
