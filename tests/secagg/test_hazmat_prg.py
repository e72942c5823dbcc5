"""The mask PRG (secagg.hazmat.prg): AES-256-CTR with a zero counter block, as words.

Independent computation used throughout: AES-256-ECB (``cryptography``) of the
128-bit big-endian counter blocks 0, 1, 2, ..., read as little-endian unsigned
words. That construction is first checked against NIST SP 800-38A F.5.5
(``vectors/aes256_ctr_sp800_38a.json``, whose counters carry across a byte), then
``expand`` and ``accumulate_masks`` are compared with it, including lengths around
the 256 KiB block of :data:`~secagg.hazmat.prg.BLOCK_BYTES`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings
from hypothesis import strategies as st

from secagg.hazmat.prg import BLOCK_BYTES, SignedSeed, accumulate_masks, expand
from tests.secagg.kat import load_vectors, vector_ids

NIST_CTR = load_vectors("aes256_ctr_sp800_38a.json")[0]
FROZEN = [v for v in load_vectors("prg_secagg_v1.json") if v["kind"] == "expand"]
UNSIGNED = [np.uint8, np.uint16, np.uint32, np.uint64]
SEEDS = [bytes([i]) * 32 for i in range(1, 6)]


def counter_blocks(first: int, count: int) -> bytes:
    """``count`` 128-bit big-endian counter blocks starting at ``first`` (mod 2^128)."""
    return b"".join(((first + i) % (1 << 128)).to_bytes(16, "big") for i in range(count))


def ecb_keystream(key: bytes, nbytes: int, first_counter: int = 0) -> bytes:
    blocks = -(-nbytes // 16)
    encryptor = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    return (encryptor.update(counter_blocks(first_counter, blocks)) + encryptor.finalize())[:nbytes]


def reference_words(seed: bytes, count: int, dtype: type) -> np.ndarray:
    words = np.dtype(dtype).newbyteorder("<")
    return np.frombuffer(ecb_keystream(seed, count * words.itemsize), dtype=words).astype(dtype)


# --- the reference construction against NIST -----------------------------------------------


def test_ecb_of_counter_blocks_reproduces_the_sp800_38a_f_5_5_keystream() -> None:
    key, plaintext, ciphertext = (bytes.fromhex(NIST_CTR[k]) for k in ("key", "plaintext", "ciphertext"))
    first = int(NIST_CTR["initial_counter"], 16)
    keystream = bytes(p ^ c for p, c in zip(plaintext, ciphertext, strict=True))
    assert ecb_keystream(key, len(keystream), first) == keystream


def test_cryptography_ctr_with_update_into_reproduces_sp800_38a_f_5_5() -> None:
    """The same call pattern as the PRG: Cipher(AES, CTR).encryptor().update_into(numpy buffers)."""
    key, plaintext, ciphertext = (bytes.fromhex(NIST_CTR[k]) for k in ("key", "plaintext", "ciphertext"))
    source = np.frombuffer(plaintext, dtype=np.uint8).copy()
    out = np.empty(len(plaintext), dtype=np.uint8)
    encryptor = Cipher(algorithms.AES(key), modes.CTR(bytes.fromhex(NIST_CTR["initial_counter"]))).encryptor()
    encryptor.update_into(source, out)
    assert out.tobytes() == ciphertext


def test_expand_with_the_nist_key_equals_ecb_of_counters_from_zero() -> None:
    key = bytes.fromhex(NIST_CTR["key"])
    out = expand(key, np.empty(64, dtype=np.uint8))
    assert out.tobytes() == ecb_keystream(key, 64)


# --- frozen PRG outputs --------------------------------------------------------------------


@pytest.mark.parametrize("vector", FROZEN, ids=vector_ids(FROZEN))
def test_expand_matches_the_frozen_vector_and_the_independent_keystream(vector: dict[str, Any]) -> None:
    seed, dtype = bytes.fromhex(vector["seed"]), np.dtype(vector["dtype"]).type
    expected = [int(word, 16) for word in vector["words"]]
    assert reference_words(seed, len(expected), dtype).tolist() == expected
    assert expand(seed, np.empty(len(expected), dtype=dtype)).tolist() == expected


# --- expand --------------------------------------------------------------------------------


def _boundary_lengths(dtype: type) -> list[int]:
    per_block = BLOCK_BYTES // np.dtype(dtype).itemsize
    return [1, 3, per_block - 1, per_block, per_block + 1, 2 * per_block + 5]


@pytest.mark.parametrize("dtype", UNSIGNED, ids=lambda d: np.dtype(d).name)
def test_expand_equals_ecb_of_counters_around_the_block_boundary(dtype: type) -> None:
    for length in _boundary_lengths(dtype):
        out = expand(SEEDS[0], np.empty(length, dtype=dtype))
        assert np.array_equal(out, reference_words(SEEDS[0], length, dtype)), length


def test_expand_fills_a_c_contiguous_two_dimensional_buffer_in_row_major_order() -> None:
    out = expand(SEEDS[1], np.empty((3, 5), dtype=np.uint32))
    assert np.array_equal(out.reshape(-1), reference_words(SEEDS[1], 15, np.uint32))


def test_expand_returns_the_buffer_it_filled() -> None:
    buffer = np.empty(9, dtype=np.uint16)
    assert expand(SEEDS[0], buffer) is buffer


@pytest.mark.parametrize(
    "buffer",
    [
        np.empty(8, dtype=np.int32),
        np.empty(8, dtype=np.float64),
        np.empty(16, dtype=np.uint32)[::2],
        np.empty((4, 4), dtype=np.uint8).T,
    ],
    ids=["signed", "float", "strided", "fortran-order"],
)
def test_expand_refuses_buffers_that_are_not_contiguous_unsigned(buffer: np.ndarray) -> None:
    with pytest.raises(ValueError, match="C-contiguous unsigned"):
        expand(SEEDS[0], buffer)


@pytest.mark.parametrize("length", [0, 16, 31, 33])
def test_seeds_that_are_not_32_bytes_are_refused(length: int) -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        expand(bytes(length), np.empty(4, dtype=np.uint32))
    with pytest.raises(ValueError, match="32 bytes"):
        accumulate_masks(np.zeros(4, dtype=np.uint32), [SignedSeed(bytes(length), 1)])


def test_expand_of_an_empty_buffer_returns_it_unchanged() -> None:
    buffer = np.empty(0, dtype=np.uint32)
    assert expand(SEEDS[0], buffer) is buffer


# --- accumulate_masks ----------------------------------------------------------------------


def _explicit_sum(initial: np.ndarray, masks: list[SignedSeed]) -> np.ndarray:
    """initial + sum(sign * expand(seed)) mod 2^w in exact integers, never relying on wraparound.

    Widths up to 32 bits are summed in int64 (at most 2^38 in magnitude here); 64-bit
    words as Python integers.
    """
    modulus = 1 << (8 * initial.dtype.itemsize)
    exact = np.int64 if initial.dtype.itemsize <= 4 else object
    total = initial.astype(exact)
    for mask in masks:
        total = total + mask.sign * reference_words(mask.seed, initial.size, initial.dtype.type).astype(exact)
    return np.mod(total, modulus)


@pytest.mark.parametrize("dtype", UNSIGNED, ids=lambda d: np.dtype(d).name)
def test_accumulate_masks_with_mixed_signs_equals_the_explicit_sum_around_the_block_boundary(dtype: type) -> None:
    signs = [1, -1, -1, 1, 1]
    masks = [SignedSeed(seed, sign) for seed, sign in zip(SEEDS, signs, strict=True)]
    per_block = BLOCK_BYTES // np.dtype(dtype).itemsize
    for length in (5, per_block - 1, per_block + 1):
        initial = reference_words(b"\xee" * 32, length, dtype)
        target = initial.copy()
        assert accumulate_masks(target, masks) is target
        assert target.astype(object).tolist() == _explicit_sum(initial, masks).tolist(), length


@pytest.mark.parametrize("threads", [2, 3, 8])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint64], ids=lambda d: np.dtype(d).name)
def test_accumulate_masks_on_several_threads_equals_the_explicit_sum(dtype: type, threads: int) -> None:
    """Each thread starts its keystreams at its range's counter block; the result must not depend on the split."""
    masks = [SignedSeed(SEEDS[0], 1), SignedSeed(SEEDS[1], -1), SignedSeed(SEEDS[2], 1)]
    per_block = BLOCK_BYTES // np.dtype(dtype).itemsize
    for length in (per_block + 1, 3 * per_block + 7):
        initial = reference_words(b"\x33" * 32, length, dtype)
        target = accumulate_masks(initial.copy(), masks, threads=threads)
        assert target.astype(object).tolist() == _explicit_sum(initial, masks).tolist(), length


@pytest.mark.parametrize("threads", [0, -1])
def test_a_thread_count_below_one_is_refused(threads: int) -> None:
    with pytest.raises(ValueError, match="threads"):
        accumulate_masks(np.zeros(4, dtype=np.uint32), [SignedSeed(SEEDS[0], 1)], threads=threads)


@settings(max_examples=40, deadline=None)
@given(
    dtype=st.sampled_from(UNSIGNED),
    length=st.integers(min_value=0, max_value=600),
    signs=st.lists(st.sampled_from([1, -1]), min_size=0, max_size=5),
    threads=st.integers(min_value=1, max_value=4),
)
def test_accumulate_masks_equals_the_explicit_sum_for_any_length_and_signs(
    dtype: type, length: int, signs: list[int], threads: int
) -> None:
    masks = [SignedSeed(bytes([index + 40]) * 32, sign) for index, sign in enumerate(signs)]
    initial = reference_words(b"\x11" * 32, length, dtype)
    target = accumulate_masks(initial.copy(), masks, threads=threads)
    assert target.astype(object).tolist() == _explicit_sum(initial, masks).tolist()


@pytest.mark.parametrize("dtype", UNSIGNED, ids=lambda d: np.dtype(d).name)
def test_masks_of_the_same_seed_with_opposite_signs_cancel(dtype: type) -> None:
    length = BLOCK_BYTES // np.dtype(dtype).itemsize + 7
    initial = reference_words(b"\x22" * 32, length, dtype)
    target = accumulate_masks(initial.copy(), [SignedSeed(SEEDS[2], 1), SignedSeed(SEEDS[3], 1), SignedSeed(SEEDS[2], -1)])
    assert not np.array_equal(target, initial)
    accumulate_masks(target, [SignedSeed(SEEDS[3], -1)])
    assert np.array_equal(target, initial)


def test_accumulate_with_no_masks_leaves_the_target_unchanged() -> None:
    target = np.arange(10, dtype=np.uint32)
    assert accumulate_masks(target, []) is target
    assert target.tolist() == list(range(10))


@pytest.mark.parametrize(
    "target",
    [np.zeros((2, 3), dtype=np.uint32), np.zeros(8, dtype=np.int64), np.zeros(16, dtype=np.uint32)[::2]],
    ids=["two-dimensional", "signed", "strided"],
)
def test_accumulate_refuses_targets_that_are_not_one_dimensional_contiguous_unsigned(target: np.ndarray) -> None:
    with pytest.raises(ValueError, match="1-D C-contiguous unsigned"):
        accumulate_masks(target, [SignedSeed(SEEDS[0], 1)])


@pytest.mark.parametrize("sign", [0, 2, -2])
def test_a_sign_other_than_plus_or_minus_one_is_refused(sign: int) -> None:
    with pytest.raises(ValueError, match="sign"):
        SignedSeed(SEEDS[0], sign)
