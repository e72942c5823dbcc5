"""Round parameters, threshold rules and the session id (secagg/config.py).

Every :class:`ConfigurationError` path is exercised; the thresholds follow docs/DESIGN.md
section 2 (Bonawitz et al. 2017, section 6): honest-but-curious t >= floor(n/2) + 1,
active t >= floor(2n/3) + 1. ``digest()`` must change with every parameter and
``session_id`` must not depend on the order of its input but on every key in it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secagg.config import (
    MAX_DIM,
    MAX_PARTICIPANTS,
    ROUND_ID_MAX_BYTES,
    ROUND_ID_MIN_BYTES,
    SESSION_ID_BYTES,
    GraphKind,
    ProtocolMode,
    RoundConfig,
    minimum_threshold,
    neighbourhood_threshold,
    session_id,
)
from secagg.errors import ConfigurationError
from tests.secagg.kat import load_vectors, vector_ids

ROUND_ID = b"round-2026-11-25-0001"
CONFIG_VECTORS = load_vectors("config_secagg_v1.json")


def identity_keys(count: int, offset: int = 0) -> tuple[bytes, ...]:
    """Distinct 32-byte stand-ins for Ed25519 public keys (the config checks length and uniqueness only)."""
    return tuple((index + offset).to_bytes(4, "big") + bytes(28) for index in range(count))


def make_config(**overrides: object) -> RoundConfig:
    parameters: dict[str, object] = {"round_id": ROUND_ID, "identity_keys": identity_keys(10), "threshold": 7, "dim": 1000}
    parameters.update(overrides)
    return RoundConfig(**parameters)  # type: ignore[arg-type]


# --- threshold rules -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "n", "expected"),
    [
        (ProtocolMode.HONEST_BUT_CURIOUS, 2, 2),
        (ProtocolMode.HONEST_BUT_CURIOUS, 3, 2),
        (ProtocolMode.HONEST_BUT_CURIOUS, 10, 6),
        (ProtocolMode.HONEST_BUT_CURIOUS, 11, 6),
        (ProtocolMode.ACTIVE, 2, 2),
        (ProtocolMode.ACTIVE, 3, 3),
        (ProtocolMode.ACTIVE, 10, 7),
        (ProtocolMode.ACTIVE, 12, 9),
        (ProtocolMode.ACTIVE, 100, 67),
    ],
)
def test_minimum_threshold_follows_the_design_rule(mode: ProtocolMode, n: int, expected: int) -> None:
    assert minimum_threshold(mode, n) == expected


@pytest.mark.parametrize("mode", list(ProtocolMode))
@pytest.mark.parametrize("n", [2, 3, 4, 5, 6, 7, 9, 10, 16, 31, 64, 100, 301])
def test_thresholds_below_the_mode_rule_or_above_n_are_refused_and_the_rest_accepted(mode: ProtocolMode, n: int) -> None:
    rule = n // 2 + 1 if mode is ProtocolMode.HONEST_BUT_CURIOUS else (2 * n) // 3 + 1
    keys = identity_keys(n)
    for threshold in (0, 1, rule - 1, n + 1, n + 5):
        if rule <= threshold <= n:
            continue
        with pytest.raises(ConfigurationError, match=f"threshold {threshold} is unsafe"):
            make_config(identity_keys=keys, threshold=threshold, mode=mode)
    for threshold in sorted({rule, (rule + n) // 2, n}):
        assert make_config(identity_keys=keys, threshold=threshold, mode=mode).threshold == threshold


@pytest.mark.parametrize("threshold", [7.0, "7", True, None])
def test_a_threshold_that_is_not_an_integer_is_refused(threshold: object) -> None:
    with pytest.raises(ConfigurationError):
        make_config(threshold=threshold)


def test_the_active_rule_is_stricter_than_the_honest_but_curious_rule() -> None:
    keys = identity_keys(9)
    assert make_config(identity_keys=keys, threshold=5, mode=ProtocolMode.HONEST_BUT_CURIOUS)
    with pytest.raises(ConfigurationError):
        make_config(identity_keys=keys, threshold=5, mode=ProtocolMode.ACTIVE)


# --- other refusals ------------------------------------------------------------------------


@pytest.mark.parametrize("length", [0, ROUND_ID_MIN_BYTES - 1, ROUND_ID_MAX_BYTES + 1, 200])
def test_a_round_id_outside_16_to_64_bytes_is_refused(length: int) -> None:
    with pytest.raises(ConfigurationError, match="round_id"):
        make_config(round_id=b"r" * length)


@pytest.mark.parametrize("length", [ROUND_ID_MIN_BYTES, ROUND_ID_MAX_BYTES])
def test_round_ids_at_the_length_limits_are_accepted(length: int) -> None:
    assert len(make_config(round_id=b"r" * length).round_id) == length


def test_a_round_id_that_is_not_bytes_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="round_id"):
        make_config(round_id="round-2026-11-25-0001")


@pytest.mark.parametrize("count", [0, 1])
def test_fewer_than_two_participants_are_refused(count: int) -> None:
    with pytest.raises(ConfigurationError, match="participants"):
        make_config(identity_keys=identity_keys(count), threshold=1)


def test_more_than_the_maximum_participants_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="participants"):
        make_config(identity_keys=identity_keys(MAX_PARTICIPANTS + 1), threshold=MAX_PARTICIPANTS)


def test_duplicate_identity_keys_are_refused() -> None:
    keys = identity_keys(10)
    with pytest.raises(ConfigurationError, match="share an identity key"):
        make_config(identity_keys=keys[:9] + (keys[3],))


@pytest.mark.parametrize("bad_key", [bytes(31), bytes(33), b"", "k" * 32], ids=["31-bytes", "33-bytes", "empty", "str"])
def test_identity_keys_that_are_not_32_bytes_are_refused(bad_key: object) -> None:
    with pytest.raises(ConfigurationError, match="32-byte"):
        make_config(identity_keys=identity_keys(9) + (bad_key,))


@pytest.mark.parametrize("dim", [0, -1, MAX_DIM + 1, 10.0])
def test_a_dimension_outside_the_limits_is_refused(dim: object) -> None:
    with pytest.raises(ConfigurationError, match="dim"):
        make_config(dim=dim)


@pytest.mark.parametrize("bits", [0, 7, 65, 128])
def test_ring_bits_outside_8_to_64_are_refused(bits: int) -> None:
    with pytest.raises(ValueError, match="ring bits"):
        make_config(bits=bits)


@pytest.mark.parametrize("bits", [7, 65])
def test_ring_bits_outside_8_to_64_raise_a_configuration_error(bits: int) -> None:
    with pytest.raises(ConfigurationError):
        make_config(bits=bits)


@pytest.mark.parametrize("bits", [8, 13, 32, 63, 64])
def test_ring_bits_inside_8_to_64_are_accepted(bits: int) -> None:
    assert make_config(bits=bits).ring.bits == bits


@pytest.mark.parametrize(
    ("n", "degree"),
    [(10, None), (10, 0), (10, 1), (10, 3), (10, 9), (10, 10), (10, 12), (10, -2), (4, 4), (10, 4.0)],
    ids=["missing", "zero", "one", "odd", "n-1", "n", "above-n", "negative", "n-for-4", "float"],
)
def test_a_harary_degree_that_is_not_even_and_in_2_to_n_minus_2_is_refused(n: int, degree: object) -> None:
    with pytest.raises(ConfigurationError, match="harary degree"):
        make_config(identity_keys=identity_keys(n), threshold=n, graph=GraphKind.HARARY, degree=degree)


@pytest.mark.parametrize(("n", "degree"), [(4, 2), (10, 2), (10, 8), (11, 8), (100, 14)])
def test_even_harary_degrees_from_2_to_n_minus_2_are_accepted(n: int, degree: int) -> None:
    config = make_config(identity_keys=identity_keys(n), threshold=n, graph=GraphKind.HARARY, degree=degree)
    assert config.neighbourhood_size == degree + 1


def test_a_degree_with_the_full_graph_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="only to the harary graph"):
        make_config(degree=4)


@pytest.mark.parametrize(("field", "value"), [("mode", "paranoid"), ("graph", "ring")])
def test_unknown_mode_or_graph_names_are_refused(field: str, value: str) -> None:
    with pytest.raises(ValueError):
        make_config(**{field: value})


def test_mode_and_graph_given_as_their_wire_strings_become_enums() -> None:
    config = make_config(mode="honest-but-curious", graph="full")
    assert config.mode is ProtocolMode.HONEST_BUT_CURIOUS and config.graph is GraphKind.FULL


def test_config_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        make_config().threshold = 10  # type: ignore[misc]


# --- derived parameters --------------------------------------------------------------------


def test_share_threshold_is_t_for_the_full_graph_and_the_neighbourhood_threshold_for_harary() -> None:
    assert make_config(threshold=8).share_threshold == 8
    harary = make_config(identity_keys=identity_keys(30), threshold=21, graph=GraphKind.HARARY, degree=8)
    assert harary.share_threshold == minimum_threshold(ProtocolMode.ACTIVE, 9) == 7
    harary_hbc = make_config(
        identity_keys=identity_keys(30), threshold=16, graph=GraphKind.HARARY, degree=8, mode=ProtocolMode.HONEST_BUT_CURIOUS
    )
    assert harary_hbc.share_threshold == neighbourhood_threshold(ProtocolMode.HONEST_BUT_CURIOUS, 8) == 6


@pytest.mark.parametrize(
    ("mode", "degree", "expected"),
    [
        # honest-but-curious: k/2 + 2, one above the mode's rule over k + 1 (k/2 + 1)
        (ProtocolMode.HONEST_BUT_CURIOUS, 2, 3),
        (ProtocolMode.HONEST_BUT_CURIOUS, 4, 4),
        (ProtocolMode.HONEST_BUT_CURIOUS, 10, 7),
        (ProtocolMode.HONEST_BUT_CURIOUS, 40, 22),
        # active: the mode's rule over k + 1, which is at least k/2 + 2
        (ProtocolMode.ACTIVE, 2, 3),
        (ProtocolMode.ACTIVE, 4, 4),
        (ProtocolMode.ACTIVE, 6, 5),
        (ProtocolMode.ACTIVE, 10, 8),
        (ProtocolMode.ACTIVE, 40, 28),
    ],
)
def test_neighbourhood_threshold_is_the_mode_rule_over_k_plus_1_and_at_least_k_over_2_plus_2(
    mode: ProtocolMode, degree: int, expected: int
) -> None:
    assert neighbourhood_threshold(mode, degree) == expected
    assert neighbourhood_threshold(mode, degree) == max(minimum_threshold(mode, degree + 1), degree // 2 + 2)


@settings(max_examples=100, deadline=None)
@given(mode=st.sampled_from(list(ProtocolMode)), half=st.integers(min_value=1, max_value=5000))
def test_neighbourhood_threshold_lets_a_client_miss_fewer_than_half_of_its_neighbours(mode: ProtocolMode, half: int) -> None:
    """k + 1 - t_s neighbours may be missing; below k/2, so no two runs of k/2 dropouts pass every check."""
    degree = 2 * half
    threshold = neighbourhood_threshold(mode, degree)
    assert degree + 1 - threshold < half
    assert minimum_threshold(mode, degree + 1) <= threshold <= degree + 1


@pytest.mark.parametrize("degree", [0, 1, 3, -2])
def test_neighbourhood_threshold_refuses_a_degree_that_is_not_even_and_at_least_2(degree: int) -> None:
    with pytest.raises(ConfigurationError, match="harary degree"):
        neighbourhood_threshold(ProtocolMode.ACTIVE, degree)


def test_participant_ids_are_zero_based_positions_of_the_identity_keys() -> None:
    config = make_config()
    assert list(config.participant_ids) == list(range(10))
    assert config.participant_count == 10


# --- digest --------------------------------------------------------------------------------


def test_digest_is_a_deterministic_32_byte_hash() -> None:
    assert make_config().digest() == make_config().digest()
    assert len(make_config().digest()) == 32


def _variants() -> dict[str, RoundConfig]:
    keys = identity_keys(10)
    base = make_config(identity_keys=keys)
    swapped = list(keys)
    swapped[0], swapped[1] = swapped[1], swapped[0]
    return {
        "base": base,
        "round_id": dataclasses.replace(base, round_id=ROUND_ID + b"x"),
        "round_id_prefix": dataclasses.replace(base, round_id=ROUND_ID[:-1]),
        "one_key": dataclasses.replace(base, identity_keys=keys[:9] + identity_keys(1, offset=99)),
        "key_order": dataclasses.replace(base, identity_keys=tuple(swapped)),
        "extra_key": dataclasses.replace(base, identity_keys=keys + identity_keys(1, offset=50), threshold=8),
        "threshold": dataclasses.replace(base, threshold=8),
        "dim": dataclasses.replace(base, dim=1001),
        "bits": dataclasses.replace(base, bits=33),
        "mode": dataclasses.replace(base, mode=ProtocolMode.HONEST_BUT_CURIOUS),
        "graph": dataclasses.replace(base, graph=GraphKind.HARARY, degree=4),
        "degree": dataclasses.replace(base, graph=GraphKind.HARARY, degree=6),
    }


def test_digest_changes_when_any_parameter_changes() -> None:
    digests = {name: config.digest() for name, config in _variants().items()}
    assert len(set(digests.values())) == len(digests), digests


# --- session id ----------------------------------------------------------------------------

ADVERTISED = [(index, bytes([index + 1]) * 32, bytes([index + 101]) * 32) for index in range(6)]
DIGEST = make_config().digest()


def test_session_id_is_32_bytes() -> None:
    assert len(session_id(DIGEST, ADVERTISED)) == SESSION_ID_BYTES


@settings(max_examples=50, deadline=None)
@given(order=st.permutations(range(len(ADVERTISED))))
def test_session_id_does_not_depend_on_the_order_of_the_advertised_keys(order: list[int]) -> None:
    assert session_id(DIGEST, [ADVERTISED[i] for i in order]) == session_id(DIGEST, ADVERTISED)


@pytest.mark.parametrize(("entry", "field"), list(itertools.product(range(len(ADVERTISED)), (1, 2))))
def test_session_id_changes_when_any_advertised_key_changes(entry: int, field: int) -> None:
    changed = [list(item) for item in ADVERTISED]
    key = bytearray(changed[entry][field])
    key[31] ^= 0x80
    changed[entry][field] = bytes(key)
    assert session_id(DIGEST, [tuple(item) for item in changed]) != session_id(DIGEST, ADVERTISED)  # type: ignore[misc]


def test_session_id_changes_with_the_config_digest_the_member_ids_and_the_member_set() -> None:
    reference = session_id(DIGEST, ADVERTISED)
    assert session_id(dataclasses.replace(make_config(), threshold=8).digest(), ADVERTISED) != reference
    relabelled = [(pid + 1, enc, mask) for pid, enc, mask in ADVERTISED]
    assert session_id(DIGEST, relabelled) != reference
    assert session_id(DIGEST, ADVERTISED[:-1]) != reference


def test_swapping_the_encryption_and_masking_keys_changes_the_session_id() -> None:
    swapped = [(pid, mask, enc) for pid, enc, mask in ADVERTISED]
    assert session_id(DIGEST, swapped) != session_id(DIGEST, ADVERTISED)


# --- frozen wire constants -----------------------------------------------------------------


def documented_digest(vector: dict[str, Any]) -> bytes:
    """The digest layout stated in config_secagg_v1.json, computed with hashlib alone."""
    round_id = bytes.fromhex(vector["round_id"])
    header = struct.pack(
        ">BBBBIIIH",
        1,
        vector["bits"],
        {"honest-but-curious": 0, "active": 1}[vector["mode"]],
        {"full": 0, "harary": 1}[vector["graph"]],
        vector["threshold"],
        vector["dim"],
        vector["degree"] or 0,
        len(round_id),
    )
    hasher = hashlib.sha256(b"secagg/v1/round-config/" + header + round_id + struct.pack(">I", len(vector["identity_keys"])))
    for key in vector["identity_keys"]:
        hasher.update(bytes.fromhex(key))
    return hasher.digest()


def documented_session_id(digest: bytes, advertised: list[tuple[int, bytes, bytes]]) -> bytes:
    hasher = hashlib.sha256(b"secagg/v1/session/" + digest)
    for participant, encryption_key, masking_key in sorted(advertised):
        hasher.update(struct.pack(">I", participant) + encryption_key + masking_key)
    return hasher.digest()


def _config_from(vector: dict[str, Any]) -> RoundConfig:
    return RoundConfig(
        round_id=bytes.fromhex(vector["round_id"]),
        identity_keys=tuple(bytes.fromhex(key) for key in vector["identity_keys"]),
        threshold=vector["threshold"],
        dim=vector["dim"],
        bits=vector["bits"],
        mode=ProtocolMode(vector["mode"]),
        graph=GraphKind(vector["graph"]),
        degree=vector["degree"],
    )


@pytest.mark.parametrize("vector", CONFIG_VECTORS, ids=vector_ids(CONFIG_VECTORS))
def test_digest_matches_the_frozen_vector_and_the_documented_layout(vector: dict[str, Any]) -> None:
    assert documented_digest(vector).hex() == vector["digest"]
    assert _config_from(vector).digest().hex() == vector["digest"]


@pytest.mark.parametrize("vector", CONFIG_VECTORS, ids=vector_ids(CONFIG_VECTORS))
def test_session_id_matches_the_frozen_vector_and_the_documented_layout(vector: dict[str, Any]) -> None:
    advertised = [(pid, bytes.fromhex(enc), bytes.fromhex(mask)) for pid, enc, mask in vector["advertised"]]
    digest = bytes.fromhex(vector["digest"])
    assert documented_session_id(digest, advertised).hex() == vector["session_id"]
    assert session_id(digest, list(reversed(advertised))).hex() == vector["session_id"]
