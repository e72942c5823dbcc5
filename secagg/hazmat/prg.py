"""The mask PRG: AES-256-CTR keystream written straight into numpy buffers.

Bonawitz et al. 2017 (section 4) expand each 256-bit seed into a mask vector over
Z_R with a PRG. Here the PRG is AES-256 in counter mode (NIST SP 800-38A) with a
zero initial counter block; the key is always a fresh HKDF output bound to one
session and one purpose, so a (key, counter) pair is never reused. The keystream is
interpreted as little-endian unsigned words of the ring's container width: numpy's
unsigned wraparound is the reduction modulo 2^w, and 2^b divides 2^w.

Hot path rules: keystream goes from OpenSSL into preallocated numpy memory through
``update_into``; there is no intermediate ``bytes`` object and no Python loop over
coordinates. :func:`accumulate_masks` works in cache-sized blocks so that each block
of the keystream is added while it is still in L2.

Seekable: CTR mode computes keystream block j as AES_key(u128be(j)) with no dependency on
earlier blocks, so the words of elements [start, start + len) follow from the counter
offset alone. :func:`expand_range` and :func:`accumulate_masks_range` produce exactly the
slice of the whole-vector expansion, for any start (a start inside a 16-byte block
discards the leading keystream bytes of that block); a vector cut into chunks is unmasked
chunk by chunk, independently and in any order, with a bit-identical result.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes

from secagg.hazmat.kdf import KEY_BYTES

_ZERO_COUNTER = b"\x00" * 16
BLOCK_BYTES = 256 * 1024
"""Keystream block size for :func:`accumulate_masks`: fits the L2 cache of common CPUs.
A multiple of 16, so every block starts on an AES counter boundary."""


def _keystream(seed: bytes, first_block: int = 0) -> CipherContext:
    """AES-256-CTR under ``seed``, starting at 16-byte counter block ``first_block``."""
    if len(seed) != KEY_BYTES:
        raise ValueError(f"PRG seeds are {KEY_BYTES} bytes")
    return Cipher(algorithms.AES(seed), modes.CTR(first_block.to_bytes(16, "big"))).encryptor()


_SKIP = bytes(16)


def _keystream_at(seed: bytes, byte_offset: int) -> CipherContext:
    """AES-256-CTR under ``seed``, positioned at keystream byte ``byte_offset``."""
    stream = _keystream(seed, byte_offset // 16)
    skip = byte_offset % 16
    if skip:
        stream.update(_SKIP[:skip])
    return stream


def expand_range(seed: bytes, out: np.ndarray, start: int) -> np.ndarray:
    """Fill ``out`` with elements ``start`` .. ``start + out.size`` of the PRG output of ``seed``; return it.

    Equal to ``expand(seed, whole)[start:start + out.size]`` for a vector ``whole`` of
    ``out``'s dtype, computed from the counter offset alone.
    """
    if not out.flags.c_contiguous or out.dtype.kind != "u" or out.ndim != 1:
        raise ValueError("out must be a 1-D C-contiguous unsigned integer array")
    if start < 0:
        raise ValueError("start must be non-negative")
    view = out.view(np.uint8)
    if view.size == 0:
        return out
    zeros = np.zeros(min(view.size, BLOCK_BYTES), dtype=np.uint8)
    stream = _keystream_at(seed, start * out.dtype.itemsize)
    for begin in range(0, view.size, zeros.size):
        stop = min(begin + zeros.size, view.size)
        stream.update_into(zeros[: stop - begin].data, view[begin:stop].data)
    return out


def expand(seed: bytes, out: np.ndarray) -> np.ndarray:
    """Fill ``out`` (C-contiguous, unsigned) with the PRG output of ``seed``; return it."""
    if not out.flags.c_contiguous or out.dtype.kind != "u":
        raise ValueError("out must be a C-contiguous unsigned integer array")
    view = out.reshape(-1).view(np.uint8)
    if view.size == 0:
        return out
    zeros = np.zeros(min(view.size, BLOCK_BYTES), dtype=np.uint8)
    stream = _keystream(seed)
    for start in range(0, view.size, zeros.size):
        stop = min(start + zeros.size, view.size)
        stream.update_into(zeros[: stop - start].data, view[start:stop].data)
    return out


@dataclass(frozen=True, slots=True)
class SignedSeed:
    """A PRG seed and whether its mask is added (+1) or subtracted (-1)."""

    seed: bytes
    sign: int

    def __post_init__(self) -> None:
        if self.sign not in (1, -1):
            raise ValueError("sign must be +1 or -1")


def accumulate_masks(target: np.ndarray, masks: Sequence[SignedSeed], *, threads: int = 1) -> np.ndarray:
    """``target += sum(sign * PRG(seed))`` modulo 2^w, in place, block by block.

    All keystreams advance together one block at a time, so each block of every
    keystream is consumed from cache. Cost: one AES-CTR pass and one add pass per
    mask over ``target``'s bytes; memory: one block per thread, independent of the
    number of masks. With ``threads`` > 1 the vector is cut into contiguous ranges on
    block boundaries and each thread runs every keystream over its own range, starting
    at the matching counter block; OpenSSL and numpy release the GIL, so the work
    spreads over cores and the result is bit-for-bit the same.
    """
    if not target.flags.c_contiguous or target.dtype.kind != "u" or target.ndim != 1:
        raise ValueError("target must be a 1-D C-contiguous unsigned integer array")
    if threads < 1:
        raise ValueError("threads must be at least 1")
    if not masks:
        return target
    for mask in masks:
        if len(mask.seed) != KEY_BYTES:
            raise ValueError(f"PRG seeds are {KEY_BYTES} bytes")
    block_elements = max(1, BLOCK_BYTES // target.dtype.itemsize)
    blocks = -(-target.size // block_elements)
    workers = min(threads, blocks)
    if workers <= 1:
        _accumulate_range(target, masks, 0, target.size, block_elements)
        return target
    per_worker = -(-blocks // workers) * block_elements
    ranges = [(start, min(start + per_worker, target.size)) for start in range(0, target.size, per_worker)]
    with ThreadPoolExecutor(max_workers=len(ranges)) as pool:
        for completed in [pool.submit(_accumulate_range, target, masks, start, stop, block_elements) for start, stop in ranges]:
            completed.result()
    return target


def accumulate_masks_range(target: np.ndarray, masks: Sequence[SignedSeed], start: int) -> np.ndarray:
    """``target += sum(sign * PRG(seed)[start:start + target.size])`` modulo 2^w, in place.

    ``target`` holds elements ``start`` .. ``start + target.size`` of a longer vector;
    the result is bit-for-bit that slice of :func:`accumulate_masks` over the whole
    vector. Memory: one keystream block, whatever the number of masks.
    """
    if not target.flags.c_contiguous or target.dtype.kind != "u" or target.ndim != 1:
        raise ValueError("target must be a 1-D C-contiguous unsigned integer array")
    if start < 0:
        raise ValueError("start must be non-negative")
    for mask in masks:
        if len(mask.seed) != KEY_BYTES:
            raise ValueError(f"PRG seeds are {KEY_BYTES} bytes")
    if masks and target.size:
        block_elements = max(1, BLOCK_BYTES // target.dtype.itemsize)
        _accumulate_range(target, masks, 0, target.size, block_elements, offset=start)
    return target


def _accumulate_range(
    target: np.ndarray, masks: Sequence[SignedSeed], start: int, stop: int, block_elements: int, *, offset: int = 0
) -> None:
    """Elements [start, stop) of ``target``, which begins at element ``offset`` of the mask vectors."""
    itemsize = target.dtype.itemsize
    streams = [(_keystream_at(mask.seed, (offset + start) * itemsize), mask.sign) for mask in masks]
    zeros = np.zeros(block_elements * itemsize, dtype=np.uint8)
    scratch = np.empty(block_elements, dtype=target.dtype)
    scratch_bytes = scratch.view(np.uint8)
    for begin in range(start, stop, block_elements):
        end = min(begin + block_elements, stop)
        count = end - begin
        window = target[begin:end]
        keystream = scratch[:count]
        for stream, sign in streams:
            stream.update_into(zeros[: count * itemsize].data, scratch_bytes[: count * itemsize].data)
            if sign > 0:
                np.add(window, keystream, out=window)
            else:
                np.subtract(window, keystream, out=window)
