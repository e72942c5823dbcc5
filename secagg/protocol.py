"""Derivations shared by the client and the server: what is signed, committed and derived.

Each function fixes one encoding so that the two sides cannot disagree. All of them
are domain-separated by :data:`~secagg.hazmat.kdf.PROTOCOL_LABEL` and a purpose, and
bind the session id (docs/DESIGN.md, section 2).
"""

from __future__ import annotations

import functools
import hashlib
import struct
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from secagg.errors import MalformedMessage
from secagg.hazmat.aead import OVERHEAD_BYTES
from secagg.hazmat.kdf import PROTOCOL_LABEL, KeyPurpose, derive_key
from secagg.hazmat.keys import PRIVATE_KEY_BYTES, agree
from secagg.hazmat.shamir import SHARE_BYTES
from secagg.rounds import Round

ROUND_SHARE_KEYS = Round.SHARE_KEYS.key
"""The round label in the associated data of the R1 share ciphertexts (part of the wire format)."""
SHARE_PLAINTEXT_BYTES = 4 + 4 + 2 * SHARE_BYTES
SHARE_CIPHERTEXT_BYTES = SHARE_PLAINTEXT_BYTES + OVERHEAD_BYTES


def advertise_statement(config_digest: bytes, sender: int, encryption_key: bytes, masking_key: bytes) -> bytes:
    """What a client signs in R0: the round digest, its id and its two public keys."""
    return PROTOCOL_LABEL + b"/R0/advertise-keys/" + config_digest + struct.pack(">I", sender) + encryption_key + masking_key


def survivors_statement(session_id: bytes, signer: int, survivors: Iterable[int]) -> bytes:
    """What a client signs in R3 (Bonawitz et al. 2017, Figure 4, ConsistencyCheck): (session id, U3)."""
    ordered = sorted(survivors)
    return (
        PROTOCOL_LABEL
        + b"/R3/consistency-check/"
        + session_id
        + struct.pack(">II", signer, len(ordered))
        + np.asarray(ordered, dtype=">u4").tobytes()
    )


def self_mask_commitment(session_id: bytes, owner: int, self_mask_seed: bytes) -> bytes:
    """SHA-256 commitment to b_u, sent in R1 and checked against the reconstruction in R4.

    Hiding because b_u is a uniformly random 256-bit value; binding by collision
    resistance of SHA-256.
    """
    return hashlib.sha256(
        PROTOCOL_LABEL + b"/self-mask-commitment/" + session_id + struct.pack(">I", owner) + self_mask_seed
    ).digest()


def self_mask_prg_seed(session_id: bytes, owner: int, self_mask_seed: bytes) -> bytes:
    """The AES key expanding PRG(b_u) (the self-mask of ``owner``)."""
    return derive_key(self_mask_seed, KeyPurpose.SELF_MASK, session_id + struct.pack(">I", owner))


def pairwise_prg_seed(
    session_id: bytes,
    masking_private_key: bytes | X25519PrivateKey,
    peer_masking_public_key: bytes | X25519PublicKey,
    first: int,
    second: int,
) -> bytes:
    """The AES key expanding PRG(s_uv): HKDF of X25519(s_sk_u, s_pk_v), bound to the session and the pair.

    Symmetric in (u, v): both ends compute the same key with the pair ordered.
    """
    low, high = sorted((first, second))
    secret = agree(masking_private_key, peer_masking_public_key)
    return derive_key(secret, KeyPurpose.PAIRWISE_MASK, session_id + struct.pack(">II", low, high))


def pairwise_mask_sign(owner: int, peer: int) -> int:
    """+1 if ``owner`` adds PRG(s_uv), -1 if it subtracts it (Bonawitz et al. 2017, section 3)."""
    return 1 if owner < peer else -1


def share_encryption_key(
    session_id: bytes,
    encryption_private_key: bytes | X25519PrivateKey,
    peer_encryption_public_key: bytes,
    sender: int,
    recipient: int,
) -> bytes:
    """The AES-GCM key for shares sent from ``sender`` to ``recipient``: one key per direction."""
    secret = agree(encryption_private_key, peer_encryption_public_key)
    return derive_key(secret, KeyPurpose.SHARE_ENCRYPTION, session_id + struct.pack(">II", sender, recipient))


@dataclass(frozen=True, slots=True, repr=False)
class SharePair:
    """A recipient's shares of one owner's masking private key s_sk and self-mask seed b."""

    masking_key_share: bytes
    self_mask_share: bytes


def pack_share_plaintext(sender: int, recipient: int, pair: SharePair) -> bytes:
    return struct.pack(">II", sender, recipient) + pair.masking_key_share + pair.self_mask_share


def unpack_share_plaintext(plaintext: bytes) -> tuple[int, int, SharePair]:
    if len(plaintext) != SHARE_PLAINTEXT_BYTES:
        raise MalformedMessage("share plaintext has the wrong length")
    sender, recipient = struct.unpack(">II", plaintext[:8])
    return sender, recipient, SharePair(plaintext[8 : 8 + SHARE_BYTES], plaintext[8 + SHARE_BYTES :])


@functools.cache
def _small_order_probe() -> X25519PrivateKey:
    """A fixed scalar, loaded once: only the zero or non-zero outcome of the agreement is used."""
    return X25519PrivateKey.from_private_bytes(b"\x01" * PRIVATE_KEY_BYTES)


def is_usable_x25519_public_key(public_key: bytes) -> bool:
    """False for malformed or small-order X25519 points (RFC 7748 section 6.1).

    Any clamped scalar is a multiple of the cofactor 8, so agreement with a
    small-order point yields zero, which ``cryptography`` refuses.
    """
    if len(public_key) != 32:
        return False
    try:
        agree(_small_order_probe(), public_key)
    except ValueError:
        return False
    return True
