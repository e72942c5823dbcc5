"""HKDF-SHA256 key derivation (RFC 5869) with explicit domain separation.

Every derived key names its purpose and the session it belongs to in HKDF's
``info``, so no key can be confused with another protocol's, another round's or
another direction's key (Bonawitz et al. 2017, section 4: "PRG(s_uv)" and
"KA.agree" outputs are only ever used through a KDF).
"""

from __future__ import annotations

from enum import Enum

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

KEY_BYTES = 32
"""All derived symmetric keys are 256-bit (AES-256)."""

PROTOCOL_LABEL = b"secagg/v1"
"""Domain-separation prefix of every KDF ``info`` and every signed statement."""


class KeyPurpose(bytes, Enum):
    """What a derived key is for; part of HKDF ``info``."""

    SHARE_ENCRYPTION = b"share-encryption"
    PAIRWISE_MASK = b"pairwise-mask"
    SELF_MASK = b"self-mask"
    NEIGHBOUR_GRAPH = b"neighbour-graph"


def derive_key(
    secret: bytes,
    purpose: KeyPurpose,
    context: bytes,
    length: int = KEY_BYTES,
) -> bytes:
    """HKDF-SHA256 (RFC 5869) of ``secret`` with ``info = label || purpose || context``.

    ``context`` must bind the session id and, where a key belongs to a pair of
    parties, both of their ids in a fixed order. The salt is empty (RFC 5869 section
    3.1 permits it; the input keying material is already a uniformly random
    X25519 output or seed).
    """
    if not secret:
        raise ValueError("secret must not be empty")
    info = PROTOCOL_LABEL + b"/" + purpose.value + b"/" + context
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(secret)
