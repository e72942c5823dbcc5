"""Shamir t-of-n secret sharing (Shamir, CACM 1979) over a prime field.

The field is GF(p) with p = 2^256 + 297, the smallest prime above 2^256, so every
256-bit secret (an X25519 private key or a self-mask seed) is a field element and
sharing is information-theoretically hiding: any t-1 shares are uniformly
distributed whatever the secret (Bonawitz et al. 2017, section 3, "SS.share").
Participant ``i`` (0-based) holds the evaluation at x = i + 1; x = 0 is the secret.

Lagrange coefficients at zero depend only on *which* x-coordinates answered, so
they are computed once per responder set and cached (DESIGN.md section 2).
:meth:`ShamirScheme.reconstruct` uses exactly ``threshold`` shares.
:meth:`ShamirScheme.reconstruct_verified` checks the result against a caller's test
(a public commitment: the advertised X25519 public key, or the self-mask
commitment) and, when the shares with the lowest ids fail it, uses the spare shares
to find a t-subset that passes and to single out the wrong shares, under a naming rule
that colluding holders cannot turn against an honest one.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import NamedTuple

from secagg.hazmat.randomness import RandomSource

FIELD_PRIME = 2**256 + 297
"""p = 2^256 + 297: the smallest prime greater than 2^256 (checked in tests/secagg/test_shamir.py)."""

SECRET_BYTES = 32
SHARE_BYTES = 33
"""A share's y-coordinate, big-endian; every element of GF(2^256 + 297) fits in 33 bytes."""


MAX_RECONSTRUCTION_CANDIDATES = 1024
"""How many t-subsets :meth:`ShamirScheme.reconstruct_verified` tests for one secret, the
default one included, before it gives up. Each costs one interpolation (O(t^2) field
operations for a subset not seen before, O(t) after) and one call of the caller's test."""


class ShamirError(ValueError):
    """Bad sharing parameters or shares (not a decryption or verification failure)."""


class InconsistentShares(ShamirError):
    """No t-subset of the shares, among those tested, reconstructs a value the caller accepts.

    ``holders`` are the participant ids that supplied shares; ``candidates`` is how many
    t-subsets were tested and ``exhaustive`` whether that was every t-subset there is
    (so that no consistent subset exists at all) rather than the search bound.
    """

    def __init__(self, holders: tuple[int, ...], candidates: int, exhaustive: bool) -> None:
        self.holders = holders
        self.candidates = candidates
        self.exhaustive = exhaustive
        bound = "every" if exhaustive else "the first"
        super().__init__(f"{bound} {candidates} subsets of the {len(holders)} shares fail the check")


_NOTHING: frozenset[int] = frozenset()


class VerifiedReconstruction(NamedTuple):
    """A secret that passed the caller's test, the t shares it came from, and the shares off their polynomial.

    ``inconsistent`` is empty when the t shares with the lowest ids passed at once: the
    spare shares are then never read (checking them would cost O(t) per spare on the
    path every honest round takes, and a share that is not used cannot change the result).
    ``unattributed`` is True when some shares are known to be wrong (the lowest t failed)
    but no passing subset had the majority :meth:`ShamirScheme.reconstruct_verified` needs
    to name them; ``inconsistent`` is then empty.
    """

    secret: int
    used: tuple[int, ...]
    inconsistent: frozenset[int]
    unattributed: bool = False


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
        return self._reconstruct_lowest(shares, threshold)[0]

    def _reconstruct_lowest(self, shares: Mapping[int, int], threshold: int) -> tuple[int, list[int]]:
        """The secret from the ``threshold`` lowest ids, and all ids in order."""
        if threshold < 1:
            raise ShamirError("threshold must be at least 1")
        if len(shares) < threshold:
            raise ShamirError(f"{len(shares)} shares, {threshold} needed")
        ids = sorted(shares)
        chosen = ids[:threshold]
        for pid in chosen:
            if not 0 <= shares[pid] < self.prime:
                raise ShamirError("share is not a field element")
        coefficients = self.lagrange_at_zero(chosen)
        return sum(coefficients[pid] * shares[pid] for pid in chosen) % self.prime, ids

    def reconstruct_verified(
        self,
        shares: Mapping[int, int],
        threshold: int,
        accept: Callable[[int], bool],
        *,
        max_candidates: int = MAX_RECONSTRUCTION_CANDIDATES,
        coefficient_cache: dict[tuple[tuple[int, ...], int], tuple[int, ...]] | None = None,
    ) -> VerifiedReconstruction:
        """The secret from a t-subset of ``shares`` whose reconstruction ``accept`` passes.

        ``accept`` is a binding check of the secret (a commitment), so whatever passes it is
        the dealt secret f(0). A t-subset holding exactly one wrong share never passes: every
        Lagrange coefficient at zero is non-zero, so the error moves f(0). Two or more wrong
        shares in one subset can cancel at zero, so a passing subset may define a polynomial
        g != f; naming holders therefore needs more than the first subset that passes.

        Naming rule: for a passing subset, every other share is checked against its
        polynomial (evaluated at the share's x by Lagrange interpolation from the subset);
        with A the shares on it and D those off it, D is returned as ``inconsistent`` only if
        |A| - |D| >= t - 1. A g != f agrees with f at most at t - 1 points, 0 among them, so
        with e wrong shares among the r it has |A| <= t - 2 + e: no honest holder is named
        while e <= (r - t + 2) / 2, and f itself passes the rule, naming exactly the wrong
        shares, while e <= (r - t + 1) / 2. So one wrong share is always singled out when
        there is a spare. A passing subset that fails the rule gives the secret but no names
        (``unattributed``), and the search goes on for one that meets it.

        Order and bound: first the t lowest ids (exactly :meth:`reconstruct`, so an honest
        round costs what it did, and spare shares are not read); if ``accept`` refuses, the
        subsets that swap d of those t for d spare shares, d = 1, 2, ..., each group in
        lexicographic order of the spares brought in, so one wrong share among the t lowest
        is found within t subsets when the lowest spare is right. At most ``max_candidates``
        subsets are tested in all. If none passed, :class:`InconsistentShares` is raised
        (``exhaustive`` if that was every subset: a passing subset exists whenever at most
        r - t of the r shares are wrong).

        ``coefficient_cache`` lets one caller reuse interpolation coefficients of subsets it
        tested for other secrets (the same holders answer for many owners); the per-scheme
        cache of :meth:`lagrange_at_zero` is kept to the default subsets, so a search driven
        by wrong shares cannot grow it.
        """
        if max_candidates < 1:
            raise ShamirError("max_candidates must be at least 1")
        secret, ids = self._reconstruct_lowest(shares, threshold)
        default = tuple(ids[:threshold])
        if accept(secret):
            return VerifiedReconstruction(secret=secret, used=default, inconsistent=_NOTHING)
        for value in shares.values():
            if not 0 <= value < self.prime:
                raise ShamirError("share is not a field element")
        cache = coefficient_cache if coefficient_cache is not None else {}
        unattributed: VerifiedReconstruction | None = None
        tested = 1
        exhaustive = True
        for candidate in _swapped_subsets(default, ids[threshold:]):
            if tested >= max_candidates:
                exhaustive = False
                break
            tested += 1
            secret = self._interpolate(candidate, shares, 0, cache)
            if not accept(secret):
                continue
            inside = set(candidate)
            off = frozenset(
                pid
                for pid in ids
                if pid not in inside and self._interpolate(candidate, shares, x_coordinate(pid), cache) != shares[pid]
            )
            if (len(ids) - len(off)) - len(off) >= threshold - 1:
                return VerifiedReconstruction(secret=secret, used=candidate, inconsistent=off)
            if unattributed is None:
                unattributed = VerifiedReconstruction(secret=secret, used=candidate, inconsistent=frozenset(), unattributed=True)
        if unattributed is not None:
            return unattributed
        raise InconsistentShares(tuple(ids), tested, exhaustive=exhaustive)

    def _interpolate(
        self,
        ids: tuple[int, ...],
        shares: Mapping[int, int],
        x: int,
        cache: dict[tuple[tuple[int, ...], int], tuple[int, ...]],
    ) -> int:
        """f(x) for the polynomial of degree < len(ids) through the shares of ``ids``."""
        coefficients = cache.get((ids, x))
        if coefficients is None:
            coefficients = self._lagrange_at(ids, x)
            cache[(ids, x)] = coefficients
        return sum(coefficient * shares[pid] for coefficient, pid in zip(coefficients, ids, strict=True)) % self.prime

    def _lagrange_at(self, ids: Sequence[int], x: int) -> tuple[int, ...]:
        """Coefficients l_i with f(x) = sum l_i f(x_i) over ``ids`` (uncached)."""
        self._check_ids(ids)
        p = self.prime
        xs = [x_coordinate(pid) for pid in ids]
        coefficients = []
        for x_i in xs:
            numerator = 1
            denominator = 1
            for x_j in xs:
                if x_j != x_i:
                    numerator = numerator * (x - x_j) % p
                    denominator = denominator * (x_i - x_j) % p
            coefficients.append(numerator * pow(denominator, -1, p) % p)
        return tuple(coefficients)

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


def _swapped_subsets(default: tuple[int, ...], spares: Sequence[int]) -> Iterator[tuple[int, ...]]:
    """Every other t-subset: d of ``default`` swapped for d spares, by increasing d (sorted tuples)."""
    for swapped in range(1, min(len(default), len(spares)) + 1):
        for brought_in in itertools.combinations(spares, swapped):
            for left_out in itertools.combinations(default, swapped):
                kept = [pid for pid in default if pid not in left_out]
                yield tuple(sorted(kept + list(brought_in)))


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
