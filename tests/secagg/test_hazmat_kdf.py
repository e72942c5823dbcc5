"""HKDF-SHA256 (RFC 5869) and the key derivations of secagg v1.

``derive_key`` always prepends the protocol label to ``info``, so no RFC 5869 vector
can pass through it. Instead:

1. the RFC 5869 Appendix A vectors check an independent HKDF written here from the
   RFC's two equations with :mod:`hmac` (the test oracle), and the construction
   ``derive_key`` wraps (``cryptography``'s HKDF with SHA-256; salt ``None`` in A.3);
2. ``vectors/kdf_secagg_v1.json`` pins our outputs (frozen secagg v1 wire constants),
   and every test run recomputes each one with the oracle from the documented
   ``info`` layout, so a silent change of label, separator or context order fails.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from secagg import protocol
from secagg.hazmat.kdf import KEY_BYTES, PROTOCOL_LABEL, KeyPurpose, derive_key
from secagg.hazmat.keys import AgreementKeyPair
from tests.secagg.kat import load_vectors, vector_ids

RFC5869 = load_vectors("hkdf_sha256_rfc5869.json")
FROZEN = load_vectors("kdf_secagg_v1.json")
FROZEN_DERIVE_KEY = [v for v in FROZEN if v["kind"] == "derive_key"]
RFC7748_ALICE = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
RFC7748_BOB = bytes.fromhex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")


def hkdf_extract(salt: bytes, ikm: bytes) -> bytes:
    """RFC 5869 section 2.2: PRK = HMAC-Hash(salt, IKM); an empty salt is HashLen zeros."""
    return hmac.new(salt or bytes(hashlib.sha256().digest_size), ikm, hashlib.sha256).digest()


def hkdf_expand(prk: bytes, info: bytes, length: int) -> bytes:
    """RFC 5869 section 2.3: T(i) = HMAC-Hash(PRK, T(i-1) | info | i)."""
    output, block, counter = b"", b"", 1
    while len(output) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        output += block
        counter += 1
    return output[:length]


def oracle_hkdf(ikm: bytes, salt: bytes, info: bytes, length: int) -> bytes:
    return hkdf_expand(hkdf_extract(salt, ikm), info, length)


def documented_info(purpose: KeyPurpose, context: bytes) -> bytes:
    """The ``info`` layout documented in secagg/hazmat/kdf.py: label || '/' || purpose || '/' || context."""
    return b"secagg/v1/" + purpose.value + b"/" + context


# --- RFC 5869 ------------------------------------------------------------------------------


@pytest.mark.parametrize("vector", RFC5869, ids=vector_ids(RFC5869))
def test_the_oracle_hkdf_reproduces_rfc5869_appendix_a(vector: dict[str, Any]) -> None:
    ikm, salt, info = (bytes.fromhex(vector[k]) for k in ("ikm", "salt", "info"))
    assert hkdf_extract(salt, ikm).hex() == vector["prk"]
    assert oracle_hkdf(ikm, salt, info, vector["length"]).hex() == vector["okm"]


@pytest.mark.parametrize("vector", RFC5869, ids=vector_ids(RFC5869))
def test_the_wrapped_cryptography_hkdf_reproduces_rfc5869_appendix_a(vector: dict[str, Any]) -> None:
    """The construction derive_key wraps; an empty salt is passed as None, as derive_key does."""
    ikm, salt, info = (bytes.fromhex(vector[k]) for k in ("ikm", "salt", "info"))
    okm = HKDF(algorithm=hashes.SHA256(), length=vector["length"], salt=salt or None, info=info).derive(ikm)
    assert okm.hex() == vector["okm"]


# --- frozen secagg v1 derivations ----------------------------------------------------------


def test_the_protocol_label_is_the_documented_one() -> None:
    assert PROTOCOL_LABEL == b"secagg/v1"


@pytest.mark.parametrize("vector", FROZEN_DERIVE_KEY, ids=vector_ids(FROZEN_DERIVE_KEY))
def test_derive_key_matches_the_frozen_vector_and_the_independent_hkdf(vector: dict[str, Any]) -> None:
    secret, context = bytes.fromhex(vector["secret"]), bytes.fromhex(vector["context"])
    purpose = KeyPurpose[vector["purpose"]]
    assert documented_info(purpose, context).hex() == vector["info"]
    independent = oracle_hkdf(secret, b"", documented_info(purpose, context), vector["length"])
    assert independent.hex() == vector["okm"]
    assert derive_key(secret, purpose, context, vector["length"]).hex() == vector["okm"]


def _frozen(kind: str) -> list[dict[str, Any]]:
    return [v for v in FROZEN if v["kind"] == kind]


@pytest.mark.parametrize("vector", _frozen("self_mask_prg_seed"), ids=vector_ids(_frozen("self_mask_prg_seed")))
def test_self_mask_prg_seed_matches_the_frozen_vector(vector: dict[str, Any]) -> None:
    session, seed = bytes.fromhex(vector["session_id"]), bytes.fromhex(vector["self_mask_seed"])
    context = session + struct.pack(">I", vector["owner"])
    assert oracle_hkdf(seed, b"", documented_info(KeyPurpose.SELF_MASK, context), 32).hex() == vector["okm"]
    assert protocol.self_mask_prg_seed(session, vector["owner"], seed).hex() == vector["okm"]


@pytest.mark.parametrize("vector", _frozen("pairwise_prg_seed"), ids=vector_ids(_frozen("pairwise_prg_seed")))
def test_pairwise_prg_seed_matches_the_frozen_vector_from_both_ends(vector: dict[str, Any]) -> None:
    session, shared = bytes.fromhex(vector["session_id"]), bytes.fromhex(vector["x25519_shared_secret"])
    low, high = sorted((vector["first"], vector["second"]))
    context = session + struct.pack(">II", low, high)
    assert oracle_hkdf(shared, b"", documented_info(KeyPurpose.PAIRWISE_MASK, context), 32).hex() == vector["okm"]
    alice, bob = AgreementKeyPair.from_private_bytes(RFC7748_ALICE), AgreementKeyPair.from_private_bytes(RFC7748_BOB)
    from_alice = protocol.pairwise_prg_seed(session, alice.private_bytes, bob.public_bytes, vector["first"], vector["second"])
    from_bob = protocol.pairwise_prg_seed(session, bob.private_bytes, alice.public_bytes, vector["second"], vector["first"])
    assert from_alice.hex() == from_bob.hex() == vector["okm"]


@pytest.mark.parametrize("vector", _frozen("share_encryption_key"), ids=vector_ids(_frozen("share_encryption_key")))
def test_share_encryption_key_matches_the_frozen_vector_at_both_ends(vector: dict[str, Any]) -> None:
    session, shared = bytes.fromhex(vector["session_id"]), bytes.fromhex(vector["x25519_shared_secret"])
    context = session + struct.pack(">II", vector["sender"], vector["recipient"])
    assert oracle_hkdf(shared, b"", documented_info(KeyPurpose.SHARE_ENCRYPTION, context), 32).hex() == vector["okm"]
    alice, bob = AgreementKeyPair.from_private_bytes(RFC7748_ALICE), AgreementKeyPair.from_private_bytes(RFC7748_BOB)
    sender, recipient = vector["sender"], vector["recipient"]
    sender_side = protocol.share_encryption_key(session, alice.private_bytes, bob.public_bytes, sender, recipient)
    recipient_side = protocol.share_encryption_key(session, bob.private_bytes, alice.public_bytes, sender, recipient)
    assert sender_side.hex() == recipient_side.hex() == vector["okm"]


def test_the_two_directions_of_a_pair_have_different_share_encryption_keys() -> None:
    keys = {(v["sender"], v["recipient"]): v["okm"] for v in _frozen("share_encryption_key")}
    assert len(keys) == 2 and len(set(keys.values())) == 2


# --- domain separation and refusals --------------------------------------------------------


def test_every_purpose_derives_a_different_key_from_the_same_secret_and_context() -> None:
    secret, context = bytes(range(32)), b"context"
    keys = {derive_key(secret, purpose, context) for purpose in KeyPurpose}
    assert len(keys) == len(KeyPurpose)


def test_a_different_context_derives_a_different_key() -> None:
    secret = bytes(range(32))
    assert derive_key(secret, KeyPurpose.SELF_MASK, b"a") != derive_key(secret, KeyPurpose.SELF_MASK, b"b")


def test_a_shorter_output_is_a_prefix_of_a_longer_one() -> None:
    """HKDF-Expand is a stream (RFC 5869 2.3): lengths do not change the first bytes."""
    secret = bytes(range(32))
    long = derive_key(secret, KeyPurpose.PAIRWISE_MASK, b"x", 80)
    assert derive_key(secret, KeyPurpose.PAIRWISE_MASK, b"x", 16) == long[:16]
    assert len(derive_key(secret, KeyPurpose.PAIRWISE_MASK, b"x")) == KEY_BYTES


def test_an_empty_secret_is_refused() -> None:
    with pytest.raises(ValueError, match="secret"):
        derive_key(b"", KeyPurpose.SELF_MASK, b"context")


def test_purpose_values_are_the_documented_wire_strings() -> None:
    assert {p.name: p.value for p in KeyPurpose} == {
        "SHARE_ENCRYPTION": b"share-encryption",
        "PAIRWISE_MASK": b"pairwise-mask",
        "SELF_MASK": b"self-mask",
        "NEIGHBOUR_GRAPH": b"neighbour-graph",
    }
