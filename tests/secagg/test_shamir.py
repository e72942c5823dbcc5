"""Shamir t-of-n secret sharing (secagg.hazmat.shamir; Shamir, CACM 1979).

* The field: p = 2^256 + 297 is prime and is the smallest prime above 2^256
  (Miller-Rabin; a "composite" verdict is a proof, a "prime" verdict over 64 fixed
  bases errs with probability below 4^-64 for a number not built against them).
* Correctness: any t of n shares reconstruct (hypothesis).
* Hiding: t-1 shares are independent of the secret. Checked exactly (over a small
  field, every choice of coefficients enumerated) and statistically (fixed seeds,
  chi-square homogeneity test at a one-sided 1e-6 level), with a power check that the
  same statistic rejects when t shares are shown.
* Detection: a corrupted share always changes the reconstruction, and the caller's
  checks (public key for s_sk, commitment for b_u) catch it.
* Verified reconstruction: spare shares single out every wrong share whenever a
  consistent t-subset exists, within a bounded number of tested subsets.
* Lagrange coefficients: cached per responder set, and correct.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from secagg.hazmat.keys import AgreementKeyPair, agreement_public_key
from secagg.hazmat.randomness import DeterministicRandom
from secagg.hazmat.shamir import (
    FIELD_PRIME,
    MAX_RECONSTRUCTION_CANDIDATES,
    SECRET_BYTES,
    SHARE_BYTES,
    InconsistentShares,
    ShamirError,
    ShamirScheme,
    int_to_secret,
    secret_to_int,
    share_from_bytes,
    share_to_bytes,
    x_coordinate,
)
from secagg.protocol import self_mask_commitment

MILLER_RABIN_BASES = [
    2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59, 61, 67, 71, 73, 79, 83, 89, 97, 101, 103, 107, 109, 113,
    127, 131, 137, 139, 149, 151, 157, 163, 167, 173, 179, 181, 191, 193, 197, 199, 211, 223, 227, 229, 233, 239, 241, 251,
    257, 263, 269, 271, 277, 281, 283, 293, 307, 311,
]  # fmt: skip
"""The first 64 primes: fixed, so the test is deterministic."""

Z_ONE_IN_A_MILLION = 4.753
"""Standard normal quantile with upper tail 1e-6."""


def is_probable_prime(n: int, bases: Iterable[int] = MILLER_RABIN_BASES) -> bool:
    """Miller-Rabin (Rabin 1980) with the given bases; False is a proof of compositeness."""
    if n < 2:
        return False
    for small in MILLER_RABIN_BASES:
        if n % small == 0:
            return n == small
    d, s = n - 1, 0
    while d % 2 == 0:
        d, s = d // 2, s + 1
    for base in bases:
        x = pow(base, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


def chi_square_critical(degrees_of_freedom: int, z: float = Z_ONE_IN_A_MILLION) -> float:
    """Upper quantile of chi-square by the Wilson-Hilferty approximation (accurate to <1% for df >= 30)."""
    k = degrees_of_freedom
    return k * (1 - 2 / (9 * k) + z * math.sqrt(2 / (9 * k))) ** 3


def homogeneity_chi_square(first: Counter, second: Counter) -> tuple[float, int]:
    """Two-sample chi-square statistic for equal sample sizes and its degrees of freedom."""
    assert sum(first.values()) == sum(second.values())
    cells = set(first) | set(second)
    statistic = sum((first[c] - second[c]) ** 2 / (first[c] + second[c]) for c in cells)
    return statistic, len(cells) - 1


def uniformity_chi_square(counts: Counter, cells: int) -> float:
    """Goodness of fit to the uniform distribution over ``cells`` cells (unseen cells count as 0)."""
    expected = sum(counts.values()) / cells
    seen = sum((count - expected) ** 2 / expected for count in counts.values())
    return seen + (cells - len(counts)) * expected


class ScriptedSource:
    """Yields the scripted byte strings in order: lets a test choose the polynomial's coefficients."""

    def __init__(self, outputs: Sequence[bytes]) -> None:
        self._outputs = list(outputs)

    def random_bytes(self, length: int) -> bytes:
        value = self._outputs.pop(0)
        assert len(value) == length, (len(value), length)
        return value

    def fill(self, buffer: np.ndarray) -> None:
        raise AssertionError("Shamir sharing draws bytes, not buffers")


# --- the field -----------------------------------------------------------------------------


def test_miller_rabin_oracle_accepts_known_primes_and_refuses_strong_pseudoprimes() -> None:
    for prime in (2**255 - 19, 2**127 - 1, 2**252 + 27742317777372353535851937790883648493, 1009, 257):
        assert is_probable_prime(prime)
    # 3215031751: strong pseudoprime to bases 2, 3, 5, 7; 3825123056546413051: to every prime base up to 23.
    for composite in (561, 3215031751, 3825123056546413051, (2**61 - 1) * (2**89 - 1), 2**256 + 1):
        assert not is_probable_prime(composite)


def test_field_prime_is_two_to_the_256_plus_297_and_is_prime() -> None:
    assert FIELD_PRIME == 2**256 + 297
    assert is_probable_prime(FIELD_PRIME)


def test_no_number_between_two_to_the_256_and_the_field_prime_is_prime() -> None:
    """Even offsets are divisible by 2; for each odd offset a Miller-Rabin witness proves compositeness."""
    for offset in range(1, 297, 2):
        assert not is_probable_prime(2**256 + offset), offset


def test_every_256_bit_secret_and_every_share_fits_the_encodings() -> None:
    assert FIELD_PRIME > 2 ** (8 * SECRET_BYTES)
    assert FIELD_PRIME - 1 < 2 ** (8 * SHARE_BYTES)


# --- correctness ---------------------------------------------------------------------------

SMALL_PRIMES = [257, 1009, 65537]


@st.composite
def sharing_case(draw: st.DrawFn) -> tuple[ShamirScheme, int, int, list[int], list[int], int]:
    """(scheme, secret, threshold, participant ids, responding ids, source seed)."""
    prime = draw(st.sampled_from([FIELD_PRIME, *SMALL_PRIMES]))
    scheme = ShamirScheme() if prime == FIELD_PRIME else ShamirScheme(prime=prime)
    n = draw(st.integers(min_value=1, max_value=25))
    ids = draw(st.lists(st.integers(min_value=0, max_value=min(prime - 2, 5000)), min_size=n, max_size=n, unique=True))
    threshold = draw(st.integers(min_value=1, max_value=n))
    responders = draw(st.lists(st.sampled_from(ids), min_size=threshold, max_size=n, unique=True))
    secret = draw(st.integers(min_value=0, max_value=prime - 1))
    return scheme, secret, threshold, ids, responders, draw(st.integers(min_value=0, max_value=2**32))


@settings(max_examples=80, deadline=None)
@given(case=sharing_case())
def test_any_threshold_or_more_shares_reconstruct_the_secret(case: tuple) -> None:
    scheme, secret, threshold, ids, responders, seed = case
    shares = scheme.split(secret, threshold, ids, DeterministicRandom.from_int(seed))
    assert set(shares) == set(ids)
    assert all(0 <= value < scheme.prime for value in shares.values())
    assert scheme.reconstruct({pid: shares[pid] for pid in responders}, threshold) == secret


@settings(max_examples=40, deadline=None)
@given(secret=st.binary(min_size=32, max_size=32), seed=st.integers(min_value=0, max_value=2**32))
def test_a_32_byte_secret_survives_share_bytes_and_reconstruction(secret: bytes, seed: int) -> None:
    scheme = ShamirScheme()
    shares = scheme.split(secret_to_int(secret), 3, range(5), DeterministicRandom.from_int(seed))
    wire = {pid: share_to_bytes(value) for pid, value in shares.items()}
    assert all(len(data) == SHARE_BYTES for data in wire.values())
    decoded = {pid: share_from_bytes(wire[pid]) for pid in (4, 1, 3)}
    assert int_to_secret(scheme.reconstruct(decoded, 3)) == secret


def test_threshold_one_gives_every_participant_the_secret() -> None:
    shares = ShamirScheme().split(12345, 1, range(4), DeterministicRandom.from_int(1))
    assert set(shares.values()) == {12345}


# --- hiding --------------------------------------------------------------------------------


def _coefficient_bytes(prime: int, coefficient: int) -> bytes:
    """The bytes random_element turns into ``coefficient`` (big-endian, no rejection below p)."""
    return coefficient.to_bytes((prime.bit_length() + 7) // 8, "big")


@pytest.mark.parametrize(("prime", "threshold"), [(31, 3), (13, 4)])
def test_t_minus_one_shares_take_every_value_exactly_once_over_all_coefficients_whatever_the_secret(
    prime: int, threshold: int
) -> None:
    """Exact hiding: for every secret, coefficients -> (t-1 shares) is a bijection onto GF(p)^(t-1)."""
    scheme = ShamirScheme(prime=prime)
    observed_ids = list(range(threshold - 1))
    for secret in (0, 1, prime - 1):
        seen = Counter()
        for coefficients in np.ndindex(*([prime] * (threshold - 1))):
            source = ScriptedSource([_coefficient_bytes(prime, int(c)) for c in coefficients])
            shares = scheme.split(secret, threshold, range(threshold), source)
            seen[tuple(shares[pid] for pid in observed_ids)] += 1
        assert len(seen) == prime ** (threshold - 1) and set(seen.values()) == {1}, secret


def _observed_shares(
    scheme: ShamirScheme, secret: int, threshold: int, observed: Sequence[int], samples: int, seed: int
) -> Counter:
    source = DeterministicRandom.from_int(seed)
    holders = range(max(threshold, max(observed) + 1))
    counts: Counter = Counter()
    for _ in range(samples):
        shares = scheme.split(secret, threshold, holders, source)
        counts[tuple(shares[pid] for pid in observed)] += 1
    return counts


@pytest.mark.parametrize(
    ("prime", "threshold", "observed", "samples_per_cell"),
    [(257, 2, (0,), 60), (1009, 2, (2,), 20), (31, 3, (0, 1), 20)],
    ids=["p257-t2-one-share", "p1009-t2-one-share", "p31-t3-two-shares"],
)
def test_t_minus_one_shares_of_two_different_secrets_are_identically_distributed(
    prime: int, threshold: int, observed: tuple[int, ...], samples_per_cell: int
) -> None:
    """Chi-square homogeneity at a one-sided 1e-6 level (fixed seeds, so deterministic)."""
    scheme = ShamirScheme(prime=prime)
    samples = samples_per_cell * prime ** len(observed)
    first = _observed_shares(scheme, 3, threshold, observed, samples, seed=101)
    second = _observed_shares(scheme, prime - 2, threshold, observed, samples, seed=202)
    statistic, degrees = homogeneity_chi_square(first, second)
    assert degrees == prime ** len(observed) - 1
    assert statistic < chi_square_critical(degrees)
    for counts in (first, second):
        assert uniformity_chi_square(counts, prime ** len(observed)) < chi_square_critical(degrees)


def test_the_homogeneity_test_rejects_when_threshold_shares_are_shown() -> None:
    """Power check: with t shares the secret is determined, and the same statistic is far above its bound."""
    scheme = ShamirScheme(prime=31)
    first = _observed_shares(scheme, 3, 2, (0, 1), 31 * 31 * 5, seed=101)
    second = _observed_shares(scheme, 29, 2, (0, 1), 31 * 31 * 5, seed=202)
    statistic, degrees = homogeneity_chi_square(first, second)
    assert statistic > 10 * chi_square_critical(degrees)


def test_reconstruction_from_t_minus_one_shares_hits_the_secret_only_by_chance() -> None:
    """Interpolating t-1 shares gives a value independent of the secret: a hit has probability 1/p.

    3000 trials over GF(257): hits ~ Binomial(3000, 1/257), mean 11.7, sd 3.4; bound at mean + 5 sd.
    """
    scheme = ShamirScheme(prime=257)
    source = DeterministicRandom.from_int(303)
    trials, threshold = 3000, 3
    hits = 0
    for _ in range(trials):
        secret = scheme.random_element(source)
        shares = scheme.split(secret, threshold, range(5), source)
        partial = {pid: shares[pid] for pid in (1, 3)}
        hits += scheme.reconstruct(partial, threshold - 1) == secret
    mean, sd = trials / 257, math.sqrt(trials * (1 / 257) * (256 / 257))
    assert hits <= mean + 5 * sd


def test_reconstruction_from_t_minus_one_shares_never_hits_a_256_bit_secret() -> None:
    scheme, source = ShamirScheme(), DeterministicRandom.from_int(304)
    for _ in range(100):
        secret = secret_to_int(source.random_bytes(32))
        shares = scheme.split(secret, 4, range(6), source)
        assert scheme.reconstruct({pid: shares[pid] for pid in (0, 2, 5)}, 3) != secret


def test_reconstruct_with_fewer_shares_than_the_threshold_is_refused() -> None:
    scheme = ShamirScheme()
    shares = scheme.split(7, 3, range(5), DeterministicRandom.from_int(1))
    with pytest.raises(ShamirError, match="2 shares, 3 needed"):
        scheme.reconstruct({0: shares[0], 1: shares[1]}, 3)


def test_random_elements_are_uniform_over_a_small_field() -> None:
    """Rejection sampling, no modulo bias: chi-square over 257 cells at a one-sided 1e-6 level."""
    scheme, source = ShamirScheme(prime=257), DeterministicRandom.from_int(305)
    counts = Counter(scheme.random_element(source) for _ in range(257 * 100))
    assert set(counts) == set(range(257))
    statistic = sum((count - 100) ** 2 / 100 for count in counts.values())
    assert statistic < chi_square_critical(256)


# --- corrupted shares ----------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(case=sharing_case(), delta=st.integers(min_value=1), corrupt_index=st.integers(min_value=0))
def test_a_corrupted_share_always_changes_the_reconstruction(case: tuple, delta: int, corrupt_index: int) -> None:
    """Every Lagrange coefficient is non-zero, so f(0) moves by l_i * delta != 0 (mod p)."""
    scheme, secret, threshold, ids, responders, seed = case
    chosen = sorted(responders)[:threshold]
    shares = scheme.split(secret, threshold, ids, DeterministicRandom.from_int(seed))
    victim = chosen[corrupt_index % len(chosen)]
    assume(delta % scheme.prime != 0)
    corrupted = {pid: shares[pid] for pid in chosen}
    corrupted[victim] = (corrupted[victim] + delta) % scheme.prime
    assert scheme.reconstruct(corrupted, threshold) != secret


def _corrupted_reconstruction(secret: bytes, seed: int) -> int:
    scheme = ShamirScheme()
    shares = scheme.split(secret_to_int(secret), 3, range(5), DeterministicRandom.from_int(seed))
    shares[2] = (shares[2] + 1) % FIELD_PRIME
    return scheme.reconstruct({pid: shares[pid] for pid in (0, 2, 4)}, 3)


def test_a_corrupted_masking_key_share_is_detected_by_the_public_key_check() -> None:
    """The R4 check of secagg/server/unmasking.py: the reconstructed s_sk must give the advertised s_pk."""
    key_pair = AgreementKeyPair.generate(DeterministicRandom.from_int(400))
    for seed in range(20):
        value = _corrupted_reconstruction(key_pair.private_bytes, seed)
        try:
            candidate = int_to_secret(value)
        except ShamirError:
            continue  # not even a 256-bit value: detected
        assert agreement_public_key(candidate) != key_pair.public_bytes


def test_a_corrupted_self_mask_share_is_detected_by_the_commitment_check() -> None:
    """The R4 check of secagg/server/unmasking.py: SHA-256 commitment to b_u sent in R1."""
    session, owner, seed_bytes = bytes(range(32)), 6, DeterministicRandom.from_int(401).random_bytes(32)
    commitment = self_mask_commitment(session, owner, seed_bytes)
    for seed in range(20):
        value = _corrupted_reconstruction(seed_bytes, seed)
        try:
            candidate = int_to_secret(value)
        except ShamirError:
            continue
        assert self_mask_commitment(session, owner, candidate) != commitment


# --- verified reconstruction ----------------------------------------------------------------


@st.composite
def corrupted_case(draw: st.DrawFn) -> tuple[ShamirScheme, int, int, dict[int, int], dict[int, int], frozenset[int]]:
    """(scheme, secret, threshold, honest shares of the responders, revealed shares, wrong holders)."""
    scheme, secret, threshold, ids, responders, seed = draw(sharing_case())
    shares = scheme.split(secret, threshold, ids, DeterministicRandom.from_int(seed))
    honest = {pid: shares[pid] for pid in responders}
    wrong = frozenset(draw(st.sets(st.sampled_from(sorted(responders)), max_size=len(responders))))
    revealed = dict(honest)
    for pid in wrong:
        revealed[pid] = (revealed[pid] + draw(st.integers(min_value=1, max_value=scheme.prime - 1))) % scheme.prime
    return scheme, secret, threshold, honest, revealed, wrong


@settings(max_examples=200, deadline=None)
@given(case=corrupted_case())
def test_verified_reconstruction_finds_the_secret_whenever_t_right_shares_exist_and_names_no_honest_holder(case: tuple) -> None:
    scheme, secret, threshold, _, revealed, wrong = case
    r, e = len(revealed), len(wrong)
    assume(r - e >= threshold)
    assume(math.comb(r, threshold) <= MAX_RECONSTRUCTION_CANDIDATES)
    result = scheme.reconstruct_verified(revealed, threshold, lambda value: value == secret)
    assert result.secret == secret
    assert len(result.used) == threshold
    assert result.inconsistent <= wrong
    default = sorted(revealed)[:threshold]
    if not wrong & set(default):
        assert result.used == tuple(default) and result.inconsistent == frozenset() and not result.unattributed
    elif 2 * e <= r - threshold + 1:
        assert result.inconsistent == wrong and not result.unattributed and not set(result.used) & wrong
    else:
        assert result.inconsistent == wrong or (result.unattributed and result.inconsistent == frozenset())


def test_two_colluding_holders_whose_errors_cancel_cannot_get_honest_holders_named() -> None:
    """Holders 0 and 1 shift their shares so that the subset {0, 1, 3, 4} still reconstructs the secret:
    its polynomial is not the dealt one and puts the honest shares of 2 and 5 off it. With r = t + 2 and
    e = 2 the naming rule refuses that polynomial (and the dealt one cannot outvote two wrong shares);
    with one more honest share the dealt polynomial names exactly the two colluders."""
    scheme, threshold, secret = ShamirScheme(), 4, 424242
    shares = scheme.split(secret, threshold, range(7), DeterministicRandom.from_int(8))
    framing = scheme.lagrange_at_zero((0, 1, 3, 4))
    revealed = {pid: shares[pid] for pid in range(6)}
    revealed[0] = (shares[0] + 1000 * framing[1]) % FIELD_PRIME
    revealed[1] = (shares[1] - 1000 * framing[0]) % FIELD_PRIME
    assert scheme.reconstruct({pid: revealed[pid] for pid in (0, 1, 3, 4)}, threshold) == secret
    assert scheme.reconstruct(revealed, threshold) != secret

    result = scheme.reconstruct_verified(revealed, threshold, lambda value: value == secret)
    assert result.secret == secret
    assert result.inconsistent == frozenset() and result.unattributed

    result = scheme.reconstruct_verified({**revealed, 6: shares[6]}, threshold, lambda value: value == secret)
    assert result.secret == secret
    assert result.inconsistent == frozenset({0, 1}) and not result.unattributed


@settings(max_examples=100, deadline=None)
@given(case=corrupted_case())
def test_verified_reconstruction_without_t_right_shares_tests_every_subset_and_gives_up(case: tuple) -> None:
    """Unless wrong shares happen to cancel at zero (small test fields), nothing passes: every subset is tested."""
    scheme, secret, threshold, _, revealed, wrong = case
    assume(len(revealed) - len(wrong) < threshold)
    assume(math.comb(len(revealed), threshold) <= MAX_RECONSTRUCTION_CANDIDATES)
    tested = []
    try:
        result = scheme.reconstruct_verified(revealed, threshold, lambda value: tested.append(value) or value == secret)
    except InconsistentShares as failure:
        assert failure.exhaustive
        assert failure.candidates == len(tested) == math.comb(len(revealed), threshold)
        assert failure.holders == tuple(sorted(revealed))
        assert secret not in tested
    else:
        assert result.secret == secret and scheme.prime != FIELD_PRIME


@settings(max_examples=60, deadline=None)
@given(case=corrupted_case(), bound=st.integers(min_value=1, max_value=30))
def test_verified_reconstruction_tests_at_most_the_bound_of_subsets(case: tuple, bound: int) -> None:
    scheme, secret, threshold, _, revealed, _ = case
    tested = []
    try:
        scheme.reconstruct_verified(
            revealed, threshold, lambda value: tested.append(value) or value == secret, max_candidates=bound
        )
    except InconsistentShares as failure:
        assert failure.candidates == len(tested)
        assert failure.exhaustive is (len(tested) == math.comb(len(revealed), threshold))
    assert len(tested) <= bound


@settings(max_examples=60, deadline=None)
@given(case=sharing_case())
def test_verified_reconstruction_of_right_shares_is_one_plain_reconstruction(case: tuple) -> None:
    scheme, secret, threshold, ids, responders, seed = case
    shares = scheme.split(secret, threshold, ids, DeterministicRandom.from_int(seed))
    revealed = {pid: shares[pid] for pid in responders}
    tested = []
    result = scheme.reconstruct_verified(revealed, threshold, lambda value: tested.append(value) or True)
    assert tested == [scheme.reconstruct(revealed, threshold)] == [secret]
    assert result.used == tuple(sorted(revealed)[:threshold]) and result.inconsistent == frozenset()


def test_one_wrong_share_among_the_lowest_is_found_within_t_more_subsets() -> None:
    scheme, threshold = ShamirScheme(), 20
    shares = scheme.split(12345, threshold, range(40), DeterministicRandom.from_int(3))
    shares[7] = (shares[7] + 1) % FIELD_PRIME
    tested = []
    result = scheme.reconstruct_verified(shares, threshold, lambda value: tested.append(value) or value == 12345)
    assert result.inconsistent == frozenset({7})
    assert len(tested) <= 1 + threshold


def test_verified_reconstruction_leaves_the_shared_cache_to_the_default_subsets() -> None:
    scheme = ShamirScheme()
    shares = scheme.split(99, 3, range(6), DeterministicRandom.from_int(4))
    shares[0] = (shares[0] + 1) % FIELD_PRIME
    own_cache: dict = {}
    scheme.reconstruct_verified(shares, 3, lambda value: value == 99, coefficient_cache=own_cache)
    assert list(scheme._lagrange_cache) == [(0, 1, 2)]
    assert own_cache


@pytest.mark.parametrize("bad", [-1, FIELD_PRIME])
def test_verified_reconstruction_refuses_a_share_that_is_not_a_field_element(bad: int) -> None:
    with pytest.raises(ShamirError, match="field element"):
        ShamirScheme().reconstruct_verified({0: 1, 1: bad, 2: 3}, 2, lambda value: True)


def test_verified_reconstruction_refuses_too_few_shares_and_a_bound_below_one() -> None:
    with pytest.raises(ShamirError, match="needed"):
        ShamirScheme().reconstruct_verified({0: 1}, 2, lambda value: True)
    with pytest.raises(ShamirError, match="max_candidates"):
        ShamirScheme().reconstruct_verified({0: 1, 1: 2}, 2, lambda value: True, max_candidates=0)


@pytest.mark.parametrize("value", [-1, 2**256, 2**256 + 1, FIELD_PRIME - 1])
def test_int_to_secret_refuses_values_that_are_not_256_bit(value: int) -> None:
    with pytest.raises(ShamirError, match="not a 256-bit secret"):
        int_to_secret(value)


@pytest.mark.parametrize("value", [0, 1, 2**255, 2**256 - 1])
def test_int_to_secret_and_secret_to_int_round_trip(value: int) -> None:
    assert secret_to_int(int_to_secret(value)) == value
    assert len(int_to_secret(value)) == SECRET_BYTES


@pytest.mark.parametrize("length", [0, 31, 33])
def test_secrets_that_are_not_32_bytes_are_refused(length: int) -> None:
    with pytest.raises(ShamirError, match="32 bytes"):
        secret_to_int(bytes(length))


@pytest.mark.parametrize("length", [0, 32, 34])
def test_shares_that_are_not_33_bytes_are_refused(length: int) -> None:
    with pytest.raises(ShamirError, match="33 bytes"):
        share_from_bytes(bytes(length))


@pytest.mark.parametrize("value", [0, 1, 2**256, FIELD_PRIME - 1])
def test_share_bytes_round_trip(value: int) -> None:
    assert share_from_bytes(share_to_bytes(value)) == value


@pytest.mark.parametrize("bad", [-1, FIELD_PRIME, FIELD_PRIME + 5, 2**264 - 1])
def test_reconstruct_refuses_a_share_that_is_not_a_field_element(bad: int) -> None:
    scheme = ShamirScheme()
    shares = scheme.split(9, 2, range(3), DeterministicRandom.from_int(2))
    shares[1] = bad
    with pytest.raises(ShamirError, match="not a field element"):
        scheme.reconstruct(shares, 2)


# --- Lagrange coefficients -----------------------------------------------------------------


def _exact_lagrange(xs: Sequence[int], prime: int) -> list[int]:
    """l_i = prod_{j != i} x_j / (x_j - x_i), computed over the rationals then mapped to GF(p)."""
    result = []
    for i, x_i in enumerate(xs):
        value = Fraction(1)
        for j, x_j in enumerate(xs):
            if j != i:
                value *= Fraction(x_j, x_j - x_i)
        result.append(value.numerator * pow(value.denominator, -1, prime) % prime)
    return result


@settings(max_examples=60, deadline=None)
@given(ids=st.lists(st.integers(min_value=0, max_value=10_000), min_size=1, max_size=12, unique=True))
def test_lagrange_coefficients_match_an_exact_rational_computation(ids: list[int]) -> None:
    scheme = ShamirScheme()
    coefficients = scheme.lagrange_at_zero(ids)
    ordered = sorted(ids)
    expected = _exact_lagrange([x_coordinate(pid) for pid in ordered], FIELD_PRIME)
    assert [coefficients[pid] for pid in ordered] == expected


@settings(max_examples=60, deadline=None)
@given(ids=st.lists(st.integers(min_value=0, max_value=10_000), min_size=1, max_size=12, unique=True))
def test_lagrange_coefficients_interpolate_every_monomial_below_the_set_size(ids: list[int]) -> None:
    """sum_i l_i x_i^k = [k == 0] for 0 <= k < |ids| (interpolation of x^k at zero)."""
    scheme = ShamirScheme()
    coefficients = scheme.lagrange_at_zero(ids)
    assert all(value != 0 for value in coefficients.values())
    for power in range(len(ids)):
        total = sum(coefficients[pid] * pow(x_coordinate(pid), power, FIELD_PRIME) for pid in ids) % FIELD_PRIME
        assert total == (1 if power == 0 else 0), power


def test_the_same_responder_set_returns_the_identical_cached_coefficients() -> None:
    scheme = ShamirScheme()
    first = scheme.lagrange_at_zero([4, 1, 9])
    assert scheme.lagrange_at_zero((1, 4, 9)) is first
    assert scheme.lagrange_at_zero([9, 4, 1]) is first
    assert scheme.lagrange_at_zero([1, 4, 8]) is not first


def test_reconstruct_uses_the_cached_coefficients_of_its_responders() -> None:
    scheme = ShamirScheme()
    shares = scheme.split(77, 3, range(6), DeterministicRandom.from_int(3))
    assert scheme.reconstruct({pid: shares[pid] for pid in (5, 2, 3)}, 3) == 77
    cached = scheme.lagrange_at_zero([2, 3, 5])
    other_shares = scheme.split(78, 3, range(6), DeterministicRandom.from_int(4))
    assert scheme.reconstruct({pid: other_shares[pid] for pid in (2, 3, 5)}, 3) == 78
    assert scheme.lagrange_at_zero([2, 3, 5]) is cached


def test_mutating_returned_coefficients_does_not_change_later_reconstructions() -> None:
    scheme = ShamirScheme()
    shares = scheme.split(5, 2, range(3), DeterministicRandom.from_int(5))
    coefficients = scheme.lagrange_at_zero([0, 1])
    with pytest.raises(TypeError):
        coefficients[0] = 0  # type: ignore[index]
    assert scheme.reconstruct({0: shares[0], 1: shares[1]}, 2) == 5


def test_duplicate_ids_in_a_responder_set_are_refused() -> None:
    with pytest.raises(ShamirError, match="duplicate"):
        ShamirScheme().lagrange_at_zero([1, 2, 1])


# --- parameter refusals --------------------------------------------------------------------


@pytest.mark.parametrize("secret", [-1, FIELD_PRIME, FIELD_PRIME + 1])
def test_split_refuses_a_secret_outside_the_field(secret: int) -> None:
    with pytest.raises(ShamirError, match="not a field element"):
        ShamirScheme().split(secret, 2, range(3), DeterministicRandom.from_int(1))


@pytest.mark.parametrize("threshold", [0, -1, 4])
def test_split_refuses_a_threshold_outside_one_to_n(threshold: int) -> None:
    with pytest.raises(ShamirError, match="threshold"):
        ShamirScheme().split(1, threshold, range(3), DeterministicRandom.from_int(1))


def test_split_refuses_duplicate_participants() -> None:
    with pytest.raises(ShamirError, match="duplicate"):
        ShamirScheme().split(1, 2, [0, 1, 1], DeterministicRandom.from_int(1))


def test_split_refuses_negative_participant_ids() -> None:
    with pytest.raises(ShamirError, match="non-negative"):
        ShamirScheme().split(1, 2, [0, -1], DeterministicRandom.from_int(1))


def test_split_refuses_more_participants_than_field_elements() -> None:
    with pytest.raises(ShamirError, match="more participants"):
        ShamirScheme(prime=5).split(1, 2, range(5), DeterministicRandom.from_int(1))


def test_split_refuses_a_participant_whose_x_coordinate_is_zero_in_the_field() -> None:
    """Over GF(257) participant 256 would be evaluated at x = 257 = 0 and receive the secret itself."""
    with pytest.raises(ShamirError, match="evaluation point"):
        ShamirScheme(prime=257).split(42, 2, [0, 256], DeterministicRandom.from_int(1))


def test_lagrange_refuses_ids_whose_x_coordinates_collide_in_the_field() -> None:
    with pytest.raises(ShamirError, match="evaluation point"):
        ShamirScheme(prime=257).lagrange_at_zero([0, 257])


def test_a_prime_below_three_is_refused() -> None:
    with pytest.raises(ShamirError):
        ShamirScheme(prime=2)


def test_reconstruct_refuses_a_threshold_below_one() -> None:
    with pytest.raises(ShamirError, match="at least 1"):
        ShamirScheme().reconstruct({0: 1}, 0)


def test_x_coordinates_are_one_based_and_never_zero() -> None:
    assert [x_coordinate(pid) for pid in range(4)] == [1, 2, 3, 4]
