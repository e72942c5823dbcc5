"""AES-256-GCM (NIST SP 800-38D) for the client-to-client Shamir shares.

Each (session, sender, recipient) direction has its own key, derived with HKDF
from the X25519 agreement of the two parties' encryption keys, so the two
directions of a pair never share a key. The associated data binds the protocol
label, the session id, the round, the sender and the recipient: a ciphertext moved
to another session, round, sender or recipient fails to authenticate (Bonawitz et
al. 2017, section 4, round ShareKeys). Nonces are 96 random bits drawn from the
injected source and prepended to the ciphertext.

Every failure to decrypt raises the same :class:`DecryptionError` with the same
message, so errors are no oracle.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from secagg.hazmat.kdf import KEY_BYTES, PROTOCOL_LABEL
from secagg.hazmat.randomness import RandomSource

NONCE_BYTES = 12
TAG_BYTES = 16
OVERHEAD_BYTES = NONCE_BYTES + TAG_BYTES


class DecryptionError(Exception):
    """A ciphertext failed to authenticate. Deliberately says nothing more."""

    def __init__(self) -> None:
        super().__init__("decryption failed")


def associated_data(session_id: bytes, round_name: str, sender: int, recipient: int) -> bytes:
    """``label || session id || round || sender || recipient`` in a fixed-width encoding."""
    return (
        PROTOCOL_LABEL
        + b"/aead/"
        + session_id
        + round_name.encode("ascii").ljust(8, b"\x00")
        + sender.to_bytes(4, "big")
        + recipient.to_bytes(4, "big")
    )


def seal(key: bytes, plaintext: bytes, aad: bytes, source: RandomSource) -> bytes:
    """``nonce || AES-GCM(key, nonce, plaintext, aad)``."""
    if len(key) != KEY_BYTES:
        raise ValueError("AES-GCM keys here are 256-bit")
    nonce = source.random_bytes(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def open_sealed(key: bytes, sealed: bytes, aad: bytes) -> bytes:
    """Inverse of :func:`seal`; any failure raises :class:`DecryptionError`."""
    if len(key) != KEY_BYTES or len(sealed) < OVERHEAD_BYTES:
        raise DecryptionError()
    try:
        return AESGCM(key).decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], aad)
    except (InvalidTag, ValueError):
        raise DecryptionError() from None
