"""Shamir t-of-n secret sharing (Shamir, CACM 1979) over a prime field.

The field is GF(p) with p = 2^256 + 297, the smallest prime above 2^256, so every
256-bit secret (an X25519 private key or a self-mask seed) is a field element and
sharing is information-theoretically hiding: any t-1 shares are uniformly
distributed whatever the secret (Bonawitz et al. 2017, section 3, "SS.share").
Participant ``i`` (0-based) holds the evaluation at x = i + 1; x = 0 is the secret.

Lagrange coefficients at zero depend only on *which* x-coordinates answered, so
they are computed once per responder set and cached (docs/DESIGN.md, section 2).
Reconstruction uses exactly ``threshold`` shares; callers verify the result against
a public commitment (the advertised X25519 public key, or the self-mask
commitment), which is how a corrupted share is detected.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from secagg.hazmat.randomness import RandomSource

FIELD_PRIME = 2**256 + 297
"""p = 2^256 + 297: the smallest prime greater than 2^256 (checked in tests/secagg/test_shamir.py)."""

SECRET_BYTES = 32
SHARE_BYTES = 33
"""A share's y-coordinate, big-endian; every element of GF(2^256 + 297) fits in 33 bytes."""


class ShamirError(ValueError):
    """Bad sharing parameters or shares (not a decryption or verification failure)."""


def x_coordinate(participant_id: int) -> int:
    """The evaluation point of participant ``participant_id``: never zero."""
    if participant_id < 0:
        raise ShamirError("participant ids are non-negative")
    return participant_id + 1


@dataclass(frozen=True, slots=True)
class ShamirScheme:
    """Shamir sharing over GF(``prime``); the default prime is :data:`FIELD_PRIME`.

    A smaller prime is accepted only so that tests can check the distribution of
    shares exhaustively; the protocol always uses the default.
    """

    prime: int = FIELD_PRIME
    _lagrange_cache: dict[tuple[int, ...], Mapping[int, int]] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.prime < 3:
            raise ShamirError("the field prime must be at least 3")

    def random_element(self, source: RandomSource) -> int:
        """A uniform field element by rejection sampling (no modulo bias)."""
        bit_length = self.prime.bit_length()
        byte_length = (bit_length + 7) // 8
        top_mask = (1 << bit_length) - 1
        while True:
            candidate = int.from_bytes(source.random_bytes(byte_length), "big") & top_mask
            if candidate < self.prime:
                return candidate

    def split(
        self,
        secret: int,
        threshold: int,
        participant_ids: Sequence[int],
        source: RandomSource,
    ) -> dict[int, int]:
        """Shares of ``secret`` for each participant id: any ``threshold`` of them reconstruct."""
        if not 0 <= secret < self.prime:
            raise ShamirError("secret is not a field element")
        ids = list(participant_ids)
        if len(set(ids)) != len(ids):
            raise ShamirError("duplicate participant id")
        if not 1 <= threshold <= len(ids):
            raise ShamirError(f"threshold {threshold} outside 1..{len(ids)}")
        self._check_ids(ids)
        coefficients = [secret] + [self.random_element(source) for _ in range(threshold - 1)]
        return {pid: self._evaluate(coefficients, x_coordinate(pid)) for pid in ids}

    def lagrange_at_zero(self, participant_ids: Sequence[int]) -> Mapping[int, int]:
        """Coefficients l_i with f(0) = sum l_i f(x_i), cached per responder set (read-only)."""
        key = tuple(sorted(participant_ids))
        if len(set(key)) != len(key):
            raise ShamirError("duplicate participant id")
        self._check_ids(key)
        cache = self._lagrange_cache
        cached = cache.get(key)
        if cached is not None:
            return cached
        p = self.prime
        xs = [x_coordinate(pid) for pid in key]
        coefficients: dict[int, int] = {}
        for pid, x_i in zip(key, xs, strict=True):
            numerator = 1
            denominator = 1
            for x_j in xs:
                if x_j != x_i:
                    numerator = numerator * x_j % p
                    denominator = denominator * (x_j - x_i) % p
            coefficients[pid] = numerator * pow(denominator, -1, p) % p
        frozen = MappingProxyType(coefficients)
        cache[key] = frozen
        return frozen

    def reconstruct(self, shares: Mapping[int, int], threshold: int) -> int:
        """The secret from the ``threshold`` shares with the lowest participant ids."""
        if threshold < 1:
            raise ShamirError("threshold must be at least 1")
        if len(shares) < threshold:
            raise ShamirError(f"{len(shares)} shares, {threshold} needed")
        chosen = sorted(shares)[:threshold]
        for pid in chosen:
            if not 0 <= shares[pid] < self.prime:
                raise ShamirError("share is not a field element")
        coefficients = self.lagrange_at_zero(chosen)
        return sum(coefficients[pid] * shares[pid] for pid in chosen) % self.prime

    def _check_ids(self, participant_ids: Sequence[int]) -> None:
        """Every x-coordinate must be a distinct non-zero field element (x = id + 1 < p)."""
        if len(participant_ids) >= self.prime:
            raise ShamirError("more participants than field elements")
        for pid in participant_ids:
            if pid < 0:
                raise ShamirError("participant ids are non-negative")
            if x_coordinate(pid) >= self.prime:
                raise ShamirError(f"participant id {pid} has no non-zero evaluation point in GF({self.prime})")

    def _evaluate(self, coefficients: Sequence[int], x: int) -> int:
        value = 0
        for coefficient in reversed(coefficients):
            value = (value * x + coefficient) % self.prime
        return value


def secret_to_int(secret: bytes) -> int:
    if len(secret) != SECRET_BYTES:
        raise ShamirError(f"secrets are {SECRET_BYTES} bytes")
    return int.from_bytes(secret, "big")


def int_to_secret(value: int) -> bytes:
    """The 32-byte secret; a value of 2^256 or more cannot be a shared secret."""
    if not 0 <= value < 1 << (8 * SECRET_BYTES):
        raise ShamirError("reconstructed value is not a 256-bit secret")
    return value.to_bytes(SECRET_BYTES, "big")


def share_to_bytes(share: int) -> bytes:
    return share.to_bytes(SHARE_BYTES, "big")


def share_from_bytes(data: bytes) -> int:
    if len(data) != SHARE_BYTES:
        raise ShamirError(f"shares are {SHARE_BYTES} bytes")
    return int.from_bytes(data, "big")
