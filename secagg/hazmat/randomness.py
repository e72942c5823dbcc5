"""Injectable cryptographically secure randomness.

Every secret in the protocol (key pairs, self-mask seeds, Shamir coefficients,
stochastic rounding) is drawn through a :class:`RandomSource`. Production code uses
:class:`SystemRandom` (the operating system's CSPRNG, ``os.urandom``). Tests inject
:class:`DeterministicRandom`, an AES-256-CTR keystream under a 256-bit seed, so that
known-answer tests are exact. No seed is ever folded below 256 bits, and neither
``random`` nor ``numpy.random`` is used anywhere in the protocol.
"""

from __future__ import annotations

import os
from typing import Protocol, runtime_checkable

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

SEED_BYTES = 32
"""Seeds are 256 bits: AES-256 keys (NIST SP 800-38A) and above the 128-bit floor."""


@runtime_checkable
class RandomSource(Protocol):
    """A source of uniformly random bytes that callers treat as a CSPRNG."""

    def random_bytes(self, length: int) -> bytes:
        """Return ``length`` uniformly random bytes."""
        ...

    def fill(self, buffer: np.ndarray) -> None:
        """Overwrite a C-contiguous numpy buffer with uniformly random bytes."""
        ...


LARGE_FILL_BYTES = 4096
"""Fills above this size use an AES-256-CTR keystream under a fresh OS-random key."""


class SystemRandom:
    """The operating system's CSPRNG (``getrandom(2)`` on Linux via ``os.urandom``).

    Small requests (keys, seeds, nonces, Shamir coefficients) come straight from the
    kernel. Large numeric fills (noise, stochastic rounding) use the kernel's output
    only as a fresh 256-bit AES key per call and expand it with AES-256-CTR, the
    construction of NIST SP 800-90A's CTR_DRBG without reseeding: about 2.5x faster
    than reading megabytes from the kernel, and as unpredictable as its key.
    """

    def random_bytes(self, length: int) -> bytes:
        if length < 0:
            raise ValueError("length must be non-negative")
        return os.urandom(length)

    def fill(self, buffer: np.ndarray) -> None:
        _require_contiguous(buffer)
        view = buffer.reshape(-1).view(np.uint8)
        if view.size <= LARGE_FILL_BYTES:
            view[:] = np.frombuffer(os.urandom(view.size), dtype=np.uint8)
            return
        DeterministicRandom(os.urandom(SEED_BYTES)).fill(view)


class DeterministicRandom:
    """An AES-256-CTR keystream generator under a 256-bit seed (a CTR-mode DRBG).

    Its output is exactly as unpredictable as its seed. Seeded from
    :class:`SystemRandom` and kept secret, it lets a bank client re-derive every
    value of an interrupted round after a crash (the seed is then as sensitive as the
    keys it generates). Seeded from a small test integer with :meth:`from_int`, it
    makes known-answer tests and ``--seed`` simulations exact, and is never for a
    real round.
    """

    def __init__(self, seed: bytes) -> None:
        if len(seed) != SEED_BYTES:
            raise ValueError(f"seed must be exactly {SEED_BYTES} bytes, got {len(seed)}")
        self._encryptor = Cipher(algorithms.AES(seed), modes.CTR(b"\x00" * 16)).encryptor()

    @classmethod
    def from_int(cls, seed: int) -> DeterministicRandom:
        """Expand a small integer test seed to 256 bits (tests and ``--seed`` only)."""
        return cls(seed.to_bytes(SEED_BYTES, "big", signed=False))

    def random_bytes(self, length: int) -> bytes:
        if length < 0:
            raise ValueError("length must be non-negative")
        return self._encryptor.update(b"\x00" * length)

    def fill(self, buffer: np.ndarray) -> None:
        _require_contiguous(buffer)
        view = buffer.reshape(-1).view(np.uint8)
        zeros = np.zeros(view.size, dtype=np.uint8)
        self._encryptor.update_into(zeros.data, view.data)


def uniform_floats(source: RandomSource, count: int) -> np.ndarray:
    """``count`` floats uniform on [0, 1) with 53 random bits each, vectorised."""
    words = np.empty(count, dtype=np.uint64)
    source.fill(words)
    return (words >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def _require_contiguous(buffer: np.ndarray) -> None:
    if not buffer.flags.c_contiguous or not buffer.flags.writeable:
        raise ValueError("buffer must be a writeable C-contiguous numpy array")
