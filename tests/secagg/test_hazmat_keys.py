"""X25519 (RFC 7748) and Ed25519 (RFC 8032) through secagg.hazmat.keys.

Known answers come from the RFCs (``vectors/x25519_rfc7748.json``,
``vectors/ed25519_rfc8032.json``); small-order points from Bernstein's list
(``vectors/x25519_small_order.json``).
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secagg.hazmat.keys import (
    AgreementKeyPair,
    InvalidPublicKey,
    SigningKey,
    agree,
    agreement_public_key,
    clamp_private_key,
    is_clamped_private_key,
    verify_signature,
)
from secagg.hazmat.randomness import DeterministicRandom
from secagg.protocol import is_usable_x25519_public_key
from tests.secagg.kat import load_vectors, vector_ids

X25519_VECTORS = load_vectors("x25519_rfc7748.json")
X25519_FUNCTION = [v for v in X25519_VECTORS if v["kind"] == "function"]
X25519_ITERATED = [v for v in X25519_VECTORS if v["kind"] == "iterated"]
ED25519_VECTORS = load_vectors("ed25519_rfc8032.json")
LOW_ORDER = load_vectors("x25519_small_order.json")
SMALL_ORDER_POINTS = [v for v in LOW_ORDER if v["kind"] == "small_order"]
HIGH_BIT_ENCODINGS = [v for v in LOW_ORDER if v["kind"] == "masked_high_bit"]
DIFFIE_HELLMAN = next(v for v in X25519_VECTORS if v["kind"] == "diffie-hellman")


def _hex(value: str) -> bytes:
    return bytes.fromhex(value)


# --- X25519 known answers ------------------------------------------------------------------


@pytest.mark.parametrize("vector", X25519_FUNCTION, ids=vector_ids(X25519_FUNCTION))
def test_agree_reproduces_rfc7748_section_5_2_function_vectors(vector: dict[str, Any]) -> None:
    assert agree(_hex(vector["scalar"]), _hex(vector["u_coordinate"])).hex() == vector["output"]


@pytest.mark.parametrize("vector", X25519_ITERATED, ids=vector_ids(X25519_ITERATED))
def test_agree_reproduces_rfc7748_section_5_2_iterated_vectors(vector: dict[str, Any]) -> None:
    """RFC 7748 5.2: k = u = 9; repeat (k, u) = (X25519(k, u), k)."""
    scalar = u_coordinate = _hex(vector["start"])
    for _ in range(vector["iterations"]):
        scalar, u_coordinate = agree(scalar, u_coordinate), scalar
    assert scalar.hex() == vector["output"]


def test_key_pairs_reproduce_rfc7748_section_6_1_public_keys() -> None:
    alice = AgreementKeyPair.from_private_bytes(_hex(DIFFIE_HELLMAN["alice_private"]))
    bob = AgreementKeyPair.from_private_bytes(_hex(DIFFIE_HELLMAN["bob_private"]))
    assert alice.public_bytes.hex() == DIFFIE_HELLMAN["alice_public"]
    assert bob.public_bytes.hex() == DIFFIE_HELLMAN["bob_public"]
    assert agreement_public_key(_hex(DIFFIE_HELLMAN["alice_private"])).hex() == DIFFIE_HELLMAN["alice_public"]


def test_both_sides_of_rfc7748_section_6_1_agree_on_the_published_secret() -> None:
    alice = AgreementKeyPair.from_private_bytes(_hex(DIFFIE_HELLMAN["alice_private"]))
    bob = AgreementKeyPair.from_private_bytes(_hex(DIFFIE_HELLMAN["bob_private"]))
    assert alice.agree(bob.public_bytes).hex() == DIFFIE_HELLMAN["shared_secret"]
    assert bob.agree(alice.public_bytes).hex() == DIFFIE_HELLMAN["shared_secret"]


def test_generated_key_pairs_agree_and_are_reproducible_from_the_source() -> None:
    first = AgreementKeyPair.generate(DeterministicRandom.from_int(1))
    again = AgreementKeyPair.generate(DeterministicRandom.from_int(1))
    other = AgreementKeyPair.generate(DeterministicRandom.from_int(2))
    assert first.public_bytes == again.public_bytes
    assert first.public_bytes != other.public_bytes
    assert first.agree(other.public_bytes) == other.agree(first.public_bytes)


# --- X25519 refusals -----------------------------------------------------------------------


@pytest.mark.parametrize("vector", SMALL_ORDER_POINTS, ids=vector_ids(SMALL_ORDER_POINTS))
def test_agree_refuses_small_order_public_keys(vector: dict[str, Any]) -> None:
    private = AgreementKeyPair.generate(DeterministicRandom.from_int(7)).private_bytes
    with pytest.raises(InvalidPublicKey, match="small order"):
        agree(private, _hex(vector["u"]))


@pytest.mark.parametrize("vector", SMALL_ORDER_POINTS, ids=vector_ids(SMALL_ORDER_POINTS))
def test_protocol_marks_small_order_public_keys_unusable(vector: dict[str, Any]) -> None:
    assert is_usable_x25519_public_key(_hex(vector["u"])) is False


@pytest.mark.parametrize("vector", HIGH_BIT_ENCODINGS, ids=vector_ids(HIGH_BIT_ENCODINGS))
def test_a_u_coordinate_with_bit_255_set_behaves_as_its_masked_value(vector: dict[str, Any]) -> None:
    """RFC 7748 section 5: bit 255 is ignored, so these decode to ordinary points, not small-order ones."""
    private = AgreementKeyPair.generate(DeterministicRandom.from_int(8)).private_bytes
    encoded = _hex(vector["u"])
    masked = encoded[:31] + bytes([encoded[31] & 0x7F])
    assert agree(private, encoded) == agree(private, masked)
    assert is_usable_x25519_public_key(encoded) is True


def test_protocol_accepts_an_ordinary_public_key() -> None:
    assert is_usable_x25519_public_key(_hex(DIFFIE_HELLMAN["bob_public"])) is True


@pytest.mark.parametrize("length", [0, 31, 33, 64])
def test_public_keys_of_the_wrong_length_are_refused(length: int) -> None:
    private = _hex(DIFFIE_HELLMAN["alice_private"])
    with pytest.raises(InvalidPublicKey, match="32 bytes"):
        agree(private, bytes(range(length)))
    assert is_usable_x25519_public_key(bytes(range(length))) is False


@pytest.mark.parametrize("length", [0, 31, 33])
def test_agree_with_a_private_key_of_the_wrong_length_does_not_blame_the_peer(length: int) -> None:
    with pytest.raises(ValueError) as caught:
        agree(bytes(length), _hex(DIFFIE_HELLMAN["bob_public"]))
    assert not isinstance(caught.value, InvalidPublicKey)


@pytest.mark.parametrize("length", [0, 31, 33])
def test_private_keys_of_the_wrong_length_are_refused(length: int) -> None:
    with pytest.raises(ValueError):
        AgreementKeyPair.from_private_bytes(bytes(length))
    with pytest.raises(ValueError):
        SigningKey.from_private_bytes(bytes(length))


# --- Ed25519 -------------------------------------------------------------------------------


@pytest.mark.parametrize("vector", ED25519_VECTORS, ids=vector_ids(ED25519_VECTORS))
def test_signing_key_reproduces_rfc8032_section_7_1_public_key_and_signature(vector: dict[str, Any]) -> None:
    key = SigningKey.from_private_bytes(_hex(vector["secret_key"]))
    assert key.public_bytes.hex() == vector["public_key"]
    assert key.sign(_hex(vector["message"])).hex() == vector["signature"]


@pytest.mark.parametrize("vector", ED25519_VECTORS, ids=vector_ids(ED25519_VECTORS))
def test_verify_signature_accepts_rfc8032_section_7_1_signatures(vector: dict[str, Any]) -> None:
    assert verify_signature(_hex(vector["public_key"]), _hex(vector["signature"]), _hex(vector["message"])) is True


@pytest.mark.parametrize("vector", ED25519_VECTORS, ids=vector_ids(ED25519_VECTORS))
def test_verify_signature_refuses_any_flipped_signature_bit(vector: dict[str, Any]) -> None:
    public, signature, message = _hex(vector["public_key"]), _hex(vector["signature"]), _hex(vector["message"])
    for byte in range(len(signature)):
        for bit in (0, 7):
            tampered = bytearray(signature)
            tampered[byte] ^= 1 << bit
            assert verify_signature(public, bytes(tampered), message) is False, (byte, bit)


ED25519_GROUP_ORDER = 2**252 + 27742317777372353535851937790883648493
"""L, the order of the Ed25519 base point (RFC 8032 section 5.1)."""


@pytest.mark.parametrize("vector", ED25519_VECTORS, ids=vector_ids(ED25519_VECTORS))
def test_verify_signature_refuses_a_malleated_signature_with_s_plus_the_group_order(vector: dict[str, Any]) -> None:
    """RFC 8032 section 5.1.7 requires 0 <= S < L: (R, S + L) verifies the same equation and must be refused."""
    signature = _hex(vector["signature"])
    s_value = int.from_bytes(signature[32:], "little") + ED25519_GROUP_ORDER
    assert s_value < 2**256
    malleated = signature[:32] + s_value.to_bytes(32, "little")
    assert verify_signature(_hex(vector["public_key"]), malleated, _hex(vector["message"])) is False


def test_verify_signature_refuses_another_message_another_key_and_bad_lengths() -> None:
    first, second = ED25519_VECTORS[1], ED25519_VECTORS[2]
    public, signature, message = _hex(first["public_key"]), _hex(first["signature"]), _hex(first["message"])
    assert verify_signature(public, signature, message + b"\x00") is False
    assert verify_signature(_hex(second["public_key"]), signature, message) is False
    assert verify_signature(public[:31], signature, message) is False
    assert verify_signature(public, signature[:63], message) is False
    assert verify_signature(public, signature + b"\x00", message) is False


def test_verify_signature_returns_false_for_a_public_key_that_is_not_a_point() -> None:
    """y = 2 has no x on edwards25519 (RFC 8032 5.1.3 decoding fails): refused, not raised."""
    not_a_point = (2).to_bytes(32, "little")
    signature = _hex(ED25519_VECTORS[0]["signature"])
    assert verify_signature(not_a_point, signature, b"") is False


# --- no private bytes in representations ---------------------------------------------------


@pytest.mark.parametrize("factory", [AgreementKeyPair.generate, SigningKey.generate], ids=["x25519", "ed25519"])
def test_repr_and_str_of_key_pairs_never_show_private_bytes(factory: Any) -> None:
    key = factory(DeterministicRandom.from_int(11))
    private_hex = key.private_bytes.hex()
    for text in (repr(key), str(key), f"{key!r}", repr([key]), repr({"key": key})):
        assert private_hex not in text
        # no 8-byte window of the private key either, in hex or as a bytes literal
        for start in range(0, len(key.private_bytes) - 8 + 1):
            window = key.private_bytes[start : start + 8]
            assert window.hex() not in text
            assert repr(window)[2:-1] not in text
    assert key.public_bytes.hex()[:16] in repr(key)


def test_key_pairs_are_frozen() -> None:
    key = SigningKey.generate(DeterministicRandom.from_int(12))
    with pytest.raises(AttributeError):
        key.private_bytes = bytes(32)  # type: ignore[misc]


# --- clamped private keys ------------------------------------------------------------------


def test_clamping_follows_rfc_7748_decode_scalar_25519() -> None:
    """RFC 7748 section 5: k[0] &= 248, k[31] &= 127, k[31] |= 64."""
    assert clamp_private_key(b"\xff" * 32) == b"\xf8" + b"\xff" * 30 + b"\x7f"
    assert clamp_private_key(bytes(32)) == bytes(31) + b"\x40"
    alice = _hex(DIFFIE_HELLMAN["alice_private"])
    assert clamp_private_key(alice)[1:31] == alice[1:31]


@settings(max_examples=50, deadline=None)
@given(private=st.binary(min_size=32, max_size=32))
def test_clamping_is_idempotent_and_changes_neither_the_public_key_nor_any_shared_secret(private: bytes) -> None:
    clamped = clamp_private_key(private)
    assert is_clamped_private_key(clamped) and clamp_private_key(clamped) == clamped
    assert is_clamped_private_key(private) is (private == clamped)
    assert agreement_public_key(clamped) == agreement_public_key(private)
    peer = _hex(DIFFIE_HELLMAN["bob_public"])
    assert agree(clamped, peer) == agree(private, peer)


@pytest.mark.parametrize("seed", range(20))
def test_generated_agreement_keys_are_stored_clamped(seed: int) -> None:
    assert is_clamped_private_key(AgreementKeyPair.generate(DeterministicRandom.from_int(seed)).private_bytes)


@pytest.mark.parametrize("length", [0, 31, 33])
def test_clamping_refuses_a_private_key_that_is_not_32_bytes(length: int) -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        clamp_private_key(bytes(length))
    assert is_clamped_private_key(bytes(length)) is False
