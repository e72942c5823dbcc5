"""AES-256-GCM share encryption (NIST SP 800-38D) through secagg.hazmat.aead.

The GCM specification's AES-256 test cases (``vectors/aes256_gcm_mcgrew_viega.json``)
pass through ``seal``/``open_sealed`` with a random source that yields the vector's
IV. Every authentication failure — any tampered byte, another session, round,
sender or recipient, another key, a truncated input — raises the same
:class:`DecryptionError` with the same message, so errors are no oracle.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from secagg.hazmat.aead import (
    NONCE_BYTES,
    OVERHEAD_BYTES,
    TAG_BYTES,
    DecryptionError,
    associated_data,
    open_sealed,
    seal,
)
from secagg.hazmat.randomness import DeterministicRandom
from tests.secagg.kat import load_vectors, vector_ids

GCM_VECTORS = load_vectors("aes256_gcm_mcgrew_viega.json")
KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
SESSION = bytes(range(0x20, 0x40))
PLAINTEXT = b"two Shamir shares, 74 bytes in the protocol".ljust(74, b"!")


class ScriptedSource:
    """A RandomSource that returns exactly the scripted byte strings, in order, and nothing else."""

    def __init__(self, *outputs: bytes) -> None:
        self._outputs = list(outputs)

    def random_bytes(self, length: int) -> bytes:
        if not self._outputs or len(self._outputs[0]) != length:
            raise AssertionError(f"unscripted request for {length} random bytes")
        return self._outputs.pop(0)

    def fill(self, buffer: np.ndarray) -> None:
        raise AssertionError("seal must not fill buffers")


def _sealed(aad: bytes, key: bytes = KEY) -> bytes:
    return seal(key, PLAINTEXT, aad, DeterministicRandom.from_int(3))


def _assert_opaque_failure(key: bytes, sealed: bytes, aad: bytes) -> None:
    with pytest.raises(DecryptionError) as caught:
        open_sealed(key, sealed, aad)
    assert str(caught.value) == "decryption failed"
    # nothing from the underlying library leaks through the exception chain either
    assert caught.value.__cause__ is None
    assert caught.value.__context__ is None or caught.value.__suppress_context__


AAD = associated_data(SESSION, "R1", 3, 8)
SEALED = _sealed(AAD)


# --- known answers -------------------------------------------------------------------------


@pytest.mark.parametrize("vector", GCM_VECTORS, ids=vector_ids(GCM_VECTORS))
def test_seal_with_the_vector_iv_reproduces_the_gcm_spec_ciphertext_and_tag(vector: dict[str, Any]) -> None:
    key, iv, plaintext, aad = (bytes.fromhex(vector[k]) for k in ("key", "iv", "plaintext", "aad"))
    sealed = seal(key, plaintext, aad, ScriptedSource(iv))
    assert sealed.hex() == (iv + bytes.fromhex(vector["ciphertext"]) + bytes.fromhex(vector["tag"])).hex()


@pytest.mark.parametrize("vector", GCM_VECTORS, ids=vector_ids(GCM_VECTORS))
def test_open_sealed_recovers_the_gcm_spec_plaintext(vector: dict[str, Any]) -> None:
    key, iv, aad = (bytes.fromhex(vector[k]) for k in ("key", "iv", "aad"))
    sealed = iv + bytes.fromhex(vector["ciphertext"]) + bytes.fromhex(vector["tag"])
    assert open_sealed(key, sealed, aad).hex() == vector["plaintext"]


def test_gcm_spec_vector_with_a_flipped_tag_bit_is_refused() -> None:
    vector = GCM_VECTORS[-1]
    key, iv, aad = (bytes.fromhex(vector[k]) for k in ("key", "iv", "aad"))
    tag = bytearray.fromhex(vector["tag"])
    tag[-1] ^= 1
    _assert_opaque_failure(key, iv + bytes.fromhex(vector["ciphertext"]) + bytes(tag), aad)


# --- layout --------------------------------------------------------------------------------


def test_sealed_is_nonce_then_ciphertext_then_tag() -> None:
    nonce = bytes(range(NONCE_BYTES))
    sealed = seal(KEY, PLAINTEXT, AAD, ScriptedSource(nonce))
    assert sealed[:NONCE_BYTES] == nonce
    assert len(sealed) == len(PLAINTEXT) + OVERHEAD_BYTES == len(PLAINTEXT) + NONCE_BYTES + TAG_BYTES
    assert open_sealed(KEY, sealed, AAD) == PLAINTEXT


def test_two_seals_of_the_same_plaintext_use_fresh_nonces() -> None:
    source = DeterministicRandom.from_int(4)
    first, second = seal(KEY, PLAINTEXT, AAD, source), seal(KEY, PLAINTEXT, AAD, source)
    assert first[:NONCE_BYTES] != second[:NONCE_BYTES]
    assert first != second


def test_associated_data_has_the_documented_fixed_width_layout() -> None:
    assert associated_data(SESSION, "R1", 3, 8) == (
        b"secagg/v1/aead/" + SESSION + b"R1\x00\x00\x00\x00\x00\x00" + b"\x00\x00\x00\x03" + b"\x00\x00\x00\x08"
    )


# --- tampering gives one opaque error ------------------------------------------------------


@pytest.mark.parametrize("position", range(len(SEALED)), ids=lambda p: f"byte-{p}")
def test_flipping_any_byte_of_nonce_ciphertext_or_tag_raises_the_opaque_error(position: int) -> None:
    tampered = bytearray(SEALED)
    tampered[position] ^= 0x01
    _assert_opaque_failure(KEY, bytes(tampered), AAD)


@pytest.mark.parametrize(
    "other_aad",
    [
        associated_data(bytes(32), "R1", 3, 8),
        associated_data(SESSION[:-1] + b"\x00", "R1", 3, 8),
        associated_data(SESSION, "R4", 3, 8),
        associated_data(SESSION, "R2", 3, 8),
        associated_data(SESSION, "R1", 4, 8),
        associated_data(SESSION, "R1", 8, 3),
        associated_data(SESSION, "R1", 3, 9),
        b"",
    ],
    ids=[
        "other-session",
        "session-last-byte",
        "round-R4",
        "round-R2",
        "other-sender",
        "swapped-direction",
        "other-recipient",
        "empty",
    ],
)
def test_changing_session_round_sender_or_recipient_raises_the_opaque_error(other_aad: bytes) -> None:
    _assert_opaque_failure(KEY, SEALED, other_aad)


@pytest.mark.parametrize(
    "key",
    [OTHER_KEY, bytes(32), KEY[:16], KEY + b"\x00", b""],
    ids=["other", "zero", "aes-128-length", "33-bytes", "empty"],
)
def test_a_wrong_key_raises_the_opaque_error(key: bytes) -> None:
    _assert_opaque_failure(key, SEALED, AAD)


@pytest.mark.parametrize("length", [0, 1, NONCE_BYTES, OVERHEAD_BYTES - 1, OVERHEAD_BYTES, len(SEALED) - 1])
def test_truncated_input_raises_the_opaque_error(length: int) -> None:
    _assert_opaque_failure(KEY, SEALED[:length], AAD)


def test_appended_bytes_raise_the_opaque_error() -> None:
    _assert_opaque_failure(KEY, SEALED + b"\x00", AAD)


def test_seal_refuses_a_key_that_is_not_256_bits() -> None:
    with pytest.raises(ValueError, match="256-bit"):
        seal(KEY[:16], PLAINTEXT, AAD, DeterministicRandom.from_int(5))
