"""X25519 key agreement (RFC 7748) and Ed25519 signatures (RFC 8032).

Keys travel as raw 32-byte strings. Private keys are generated from an injected
:class:`~secagg.hazmat.randomness.RandomSource`, so tests are deterministic while
production draws from the operating system's CSPRNG. Generated X25519 private keys are
stored clamped (RFC 7748, section 5). A key agreement whose output
is all zeros (a small-order public key, RFC 7748 section 6.1) is refused by
``cryptography`` and surfaces here as :class:`InvalidPublicKey`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from secagg.hazmat.randomness import RandomSource

PUBLIC_KEY_BYTES = 32
PRIVATE_KEY_BYTES = 32
SIGNATURE_BYTES = 64


class InvalidPublicKey(ValueError):
    """A public key that is malformed or of small order."""


@dataclass(frozen=True, slots=True, repr=False)
class AgreementKeyPair:
    """An X25519 key pair (RFC 7748). ``repr`` never shows the private key."""

    private_bytes: bytes
    public_bytes: bytes
    private_key: X25519PrivateKey = field(compare=False, default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.private_key is None:
            object.__setattr__(self, "private_key", X25519PrivateKey.from_private_bytes(self.private_bytes))

    @classmethod
    def generate(cls, source: RandomSource) -> AgreementKeyPair:
        """A fresh key pair whose private bytes are already clamped (:func:`clamp_private_key`)."""
        return cls.from_private_bytes(clamp_private_key(source.random_bytes(PRIVATE_KEY_BYTES)))

    @classmethod
    def from_private_bytes(cls, private_bytes: bytes) -> AgreementKeyPair:
        if len(private_bytes) != PRIVATE_KEY_BYTES:
            raise ValueError("X25519 private keys are 32 bytes")
        private = X25519PrivateKey.from_private_bytes(private_bytes)
        public = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        return cls(private_bytes=_raw_private(private), public_bytes=public)

    def agree(self, peer_public_bytes: bytes) -> bytes:
        """The 32-byte X25519 shared secret with ``peer_public_bytes``."""
        return agree(self.private_key, peer_public_bytes)

    def __repr__(self) -> str:
        return f"AgreementKeyPair(public={self.public_bytes.hex()[:16]}…)"


def agree(private: bytes | X25519PrivateKey, peer_public: bytes | X25519PublicKey) -> bytes:
    """X25519(private, peer public); refuses malformed and small-order public keys.

    Either key may be raw bytes or an already-loaded key object (loading costs as much
    as the agreement itself, so hot paths pass loaded keys).
    """
    if not isinstance(peer_public, X25519PublicKey) and len(peer_public) != PUBLIC_KEY_BYTES:
        raise InvalidPublicKey("X25519 public keys are 32 bytes")
    if isinstance(private, X25519PrivateKey):
        key = private
    elif len(private) == PRIVATE_KEY_BYTES:
        key = X25519PrivateKey.from_private_bytes(private)
    else:
        raise ValueError("X25519 private keys are 32 bytes")
    try:
        peer = peer_public if isinstance(peer_public, X25519PublicKey) else X25519PublicKey.from_public_bytes(peer_public)
        return key.exchange(peer)
    except ValueError as exc:  # all-zero shared secret: small-order point
        raise InvalidPublicKey("X25519 public key is of small order") from exc


def clamp_private_key(private_bytes: bytes) -> bytes:
    """The canonical form of an X25519 private key: decodeScalar25519 of RFC 7748, section 5.

    X25519 clamps every private key before use (clears bits 0-2 and 255, sets bit 254), so
    the 2^5 byte strings that differ only in those bits are one key with one public key.
    Keys generated here are stored clamped. Then the only other canonical key with the same
    public key is the negation 8l - s (l the order of the base point), which nobody can aim
    at without knowing s: "canonical and gives this public key" pins a reconstructed key
    down, where the public key alone leaves the clamped bits free.
    """
    if len(private_bytes) != PRIVATE_KEY_BYTES:
        raise ValueError("X25519 private keys are 32 bytes")
    return bytes([private_bytes[0] & 248]) + private_bytes[1:31] + bytes([(private_bytes[31] & 127) | 64])


def is_clamped_private_key(private_bytes: bytes) -> bool:
    """True iff ``private_bytes`` is its own canonical form (:func:`clamp_private_key`)."""
    return len(private_bytes) == PRIVATE_KEY_BYTES and clamp_private_key(private_bytes) == private_bytes


def agreement_public_key(private_bytes: bytes) -> bytes:
    """The X25519 public key of a private key (used to verify reconstructed keys)."""
    private = X25519PrivateKey.from_private_bytes(private_bytes)
    return private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


@dataclass(frozen=True, slots=True, repr=False)
class SigningKey:
    """An Ed25519 identity key (RFC 8032). ``repr`` never shows the private key."""

    private_bytes: bytes
    public_bytes: bytes

    @classmethod
    def generate(cls, source: RandomSource) -> SigningKey:
        return cls.from_private_bytes(source.random_bytes(PRIVATE_KEY_BYTES))

    @classmethod
    def from_private_bytes(cls, private_bytes: bytes) -> SigningKey:
        if len(private_bytes) != PRIVATE_KEY_BYTES:
            raise ValueError("Ed25519 private keys are 32 bytes")
        private = Ed25519PrivateKey.from_private_bytes(private_bytes)
        public = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        return cls(private_bytes=private_bytes, public_bytes=public)

    def sign(self, message: bytes) -> bytes:
        return Ed25519PrivateKey.from_private_bytes(self.private_bytes).sign(message)

    def __repr__(self) -> str:
        return f"SigningKey(public={self.public_bytes.hex()[:16]}…)"


def verify_signature(public_bytes: bytes, signature: bytes, message: bytes) -> bool:
    """True iff ``signature`` is a valid Ed25519 signature of ``message``."""
    if len(public_bytes) != PUBLIC_KEY_BYTES or len(signature) != SIGNATURE_BYTES:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(public_bytes).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


def _raw_private(private: X25519PrivateKey) -> bytes:
    return private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
