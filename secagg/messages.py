"""Typed, frozen protocol messages and their compact binary encoding.

Names follow the rounds of docs/DESIGN.md section 2 and Bonawitz et al. 2017 (Figure 4):

========================  =============================  ================================
round                     client -> server               server -> client
========================  =============================  ================================
R0 AdvertiseKeys          :class:`AdvertiseKeys`         :class:`KeyList`
R1 ShareKeys              :class:`ShareKeys`             :class:`MaskedInputRequest`
R2 MaskedInputCollection  :class:`MaskedInput`           :class:`ConsistencyCheckRequest`
R3 ConsistencyCheck       :class:`ConsistencyCheck`      :class:`UnmaskingRequest`
R4 Unmasking              :class:`UnmaskingShares`       (the sum, outside the protocol)
========================  =============================  ================================

In honest-but-curious mode the server answers R2 with :class:`UnmaskingRequest`
directly (no R3, no signatures in it).

Wire format (version 1), all integers big-endian except vector elements:

* header: ``b"SAG"``, protocol version (u8), message type (u8);
* fixed-size fields: 32-byte digests, session ids and public keys, 64-byte
  signatures, 33-byte Shamir shares;
* participant ids: u32; lists: u32 count then items;
* ciphertexts: u32 length then bytes;
* vectors: ring bits (u8), element count (u32), then the elements as little-endian
  unsigned integers of the ring's container width (``secagg.encoding.Ring``).

Decoding checks every length, refuses trailing bytes, unknown types and versions,
and raises :class:`~secagg.errors.MalformedMessage` with a specific reason. A
vector decoded from ``bytes`` is a read-only view of them (no copy on the hot path);
from a mutable buffer it is a read-only copy, so a reused buffer cannot change it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, ClassVar, TypeVar, cast

import numpy as np

from secagg.config import PROTOCOL_VERSION, SESSION_ID_BYTES
from secagg.encoding import MAX_BITS, MIN_BITS, Ring
from secagg.errors import EncodingError, MalformedMessage
from secagg.hazmat.keys import PUBLIC_KEY_BYTES, SIGNATURE_BYTES
from secagg.hazmat.shamir import SHARE_BYTES
from secagg.rounds import Round

MAGIC = b"SAG"
HEADER_BYTES = len(MAGIC) + 2
DIGEST_BYTES = 32
MAX_CIPHERTEXT_BYTES = 1024
MAX_LIST_LENGTH = 1 << 16
MAX_VECTOR_ELEMENTS = 1 << 30


class MessageType(IntEnum):
    """Wire identifiers; never renumber (part of the version-1 format)."""

    ADVERTISE_KEYS = 1
    KEY_LIST = 2
    SHARE_KEYS = 3
    MASKED_INPUT_REQUEST = 4
    MASKED_INPUT = 5
    CONSISTENCY_CHECK_REQUEST = 6
    CONSISTENCY_CHECK = 7
    UNMASKING_REQUEST = 8
    UNMASKING_SHARES = 9


class _Writer:
    def __init__(self, message_type: MessageType) -> None:
        self.parts: list[bytes | memoryview] = [MAGIC, bytes([PROTOCOL_VERSION, message_type])]

    def fixed(self, value: bytes, size: int, name: str) -> None:
        if len(value) != size:
            raise MalformedMessage(f"{name} must be {size} bytes, got {len(value)}")
        self.parts.append(value)

    def u32(self, value: int, name: str) -> None:
        if not 0 <= value < 1 << 32:
            raise MalformedMessage(f"{name} does not fit in 32 bits")
        self.parts.append(struct.pack(">I", value))

    def ids(self, values: tuple[int, ...], name: str) -> None:
        self.u32(len(values), name)
        self.parts.append(np.asarray(values, dtype=">u4").tobytes())

    def blob(self, value: bytes, name: str) -> None:
        if len(value) > MAX_CIPHERTEXT_BYTES:
            raise MalformedMessage(f"{name} longer than {MAX_CIPHERTEXT_BYTES} bytes")
        self.u32(len(value), name)
        self.parts.append(value)

    def vector(self, values: np.ndarray, bits: int) -> None:
        ring = Ring(bits)
        if values.ndim != 1 or values.dtype != ring.dtype.newbyteorder("="):
            raise MalformedMessage(f"vector must be 1-D {ring.dtype} for {bits}-bit ring")
        if not ring.is_reduced(values):
            raise MalformedMessage(f"vector has elements outside Z_2^{bits}")
        self.parts.append(struct.pack(">BI", bits, values.size))
        self.parts.append(np.ascontiguousarray(values, dtype=ring.dtype).data.cast("B"))

    def finish(self) -> bytes:
        return b"".join(self.parts)


class _Reader:
    def __init__(self, data: bytes | bytearray | memoryview) -> None:
        self.immutable = isinstance(data, bytes)
        self.data = memoryview(data).cast("B") if not self.immutable else memoryview(data)
        self.offset = HEADER_BYTES

    def take(self, size: int, name: str) -> memoryview:
        end = self.offset + size
        if size < 0 or end > len(self.data):
            raise MalformedMessage(f"truncated message while reading {name}")
        view = self.data[self.offset : end]
        self.offset = end
        return view

    def fixed(self, size: int, name: str) -> bytes:
        return bytes(self.take(size, name))

    def u32(self, name: str) -> int:
        return int(struct.unpack(">I", self.take(4, name))[0])

    def count(self, name: str, limit: int = MAX_LIST_LENGTH) -> int:
        value = self.u32(name)
        if value > limit:
            raise MalformedMessage(f"{name} has {value} items, limit {limit}")
        return value

    def ids(self, name: str) -> tuple[int, ...]:
        length = self.count(name)
        raw = self.take(4 * length, name)
        return tuple(int(v) for v in np.frombuffer(raw, dtype=">u4"))

    def blob(self, name: str) -> bytes:
        length = self.count(name, MAX_CIPHERTEXT_BYTES)
        return self.fixed(length, name)

    def vector(self) -> tuple[np.ndarray, int]:
        bits = self.take(1, "ring bits")[0]
        if not MIN_BITS <= bits <= MAX_BITS:
            raise MalformedMessage(f"ring bits {bits} outside {MIN_BITS}..{MAX_BITS}")
        length = self.count("vector length", MAX_VECTOR_ELEMENTS)
        ring = Ring(bits)
        raw = self.take(length * ring.element_bytes, "vector elements")
        values = np.frombuffer(raw, dtype=ring.dtype)
        if not self.immutable:
            values = values.copy()
        values.setflags(write=False)
        if not ring.is_reduced(values):
            raise MalformedMessage(f"vector has elements outside Z_2^{bits}")
        return values, bits

    def finish(self) -> None:
        if self.offset != len(self.data):
            raise MalformedMessage(f"{len(self.data) - self.offset} trailing bytes")


@dataclass(frozen=True, slots=True)
class AdvertiseKeys:
    """R0, client -> server: two X25519 public keys, signed with the client's identity key.

    ``encryption_public_key`` (c_pk) keys the share encryption of R1;
    ``masking_public_key`` (s_pk) keys the pairwise masks of R2. The signature covers
    the round digest, so keys cannot be replayed into another round.
    """

    message_type: ClassVar[MessageType] = MessageType.ADVERTISE_KEYS
    config_digest: bytes
    sender: int
    encryption_public_key: bytes
    masking_public_key: bytes
    signature: bytes

    def _write(self, writer: _Writer) -> None:
        writer.fixed(self.config_digest, DIGEST_BYTES, "config digest")
        writer.u32(self.sender, "sender")
        writer.fixed(self.encryption_public_key, PUBLIC_KEY_BYTES, "encryption public key")
        writer.fixed(self.masking_public_key, PUBLIC_KEY_BYTES, "masking public key")
        writer.fixed(self.signature, SIGNATURE_BYTES, "signature")

    @classmethod
    def _read(cls, reader: _Reader) -> AdvertiseKeys:
        return cls(
            config_digest=reader.fixed(DIGEST_BYTES, "config digest"),
            sender=reader.u32("sender"),
            encryption_public_key=reader.fixed(PUBLIC_KEY_BYTES, "encryption public key"),
            masking_public_key=reader.fixed(PUBLIC_KEY_BYTES, "masking public key"),
            signature=reader.fixed(SIGNATURE_BYTES, "signature"),
        )


@dataclass(frozen=True, slots=True)
class KeyList:
    """R0, server -> clients: the signed keys of U1, the clients that advertised."""

    message_type: ClassVar[MessageType] = MessageType.KEY_LIST
    config_digest: bytes
    entries: tuple[AdvertiseKeys, ...]

    def _write(self, writer: _Writer) -> None:
        writer.fixed(self.config_digest, DIGEST_BYTES, "config digest")
        writer.u32(len(self.entries), "entry count")
        for entry in self.entries:
            entry._write(writer)

    @classmethod
    def _read(cls, reader: _Reader) -> KeyList:
        digest = reader.fixed(DIGEST_BYTES, "config digest")
        count = reader.count("entry count")
        return cls(config_digest=digest, entries=tuple(AdvertiseKeys._read(reader) for _ in range(count)))


@dataclass(frozen=True, slots=True)
class EncryptedShares:
    """One AES-GCM ciphertext of a client's two Shamir shares for one recipient."""

    sender: int
    recipient: int
    ciphertext: bytes


@dataclass(frozen=True, slots=True)
class ShareKeys:
    """R1, client -> server: encrypted shares of s_sk and b_u for each neighbour.

    ``self_mask_commitment`` is SHA-256 over the session id, the sender and b_u; the
    server checks the reconstructed b_u against it in R4.
    """

    message_type: ClassVar[MessageType] = MessageType.SHARE_KEYS
    session_id: bytes
    sender: int
    self_mask_commitment: bytes
    encrypted_shares: tuple[EncryptedShares, ...]

    def _write(self, writer: _Writer) -> None:
        writer.fixed(self.session_id, SESSION_ID_BYTES, "session id")
        writer.u32(self.sender, "sender")
        writer.fixed(self.self_mask_commitment, DIGEST_BYTES, "self-mask commitment")
        writer.u32(len(self.encrypted_shares), "ciphertext count")
        for item in self.encrypted_shares:
            if item.sender != self.sender:
                raise MalformedMessage("a ShareKeys ciphertext names another sender")
            writer.u32(item.recipient, "recipient")
            writer.blob(item.ciphertext, "ciphertext")

    @classmethod
    def _read(cls, reader: _Reader) -> ShareKeys:
        session = reader.fixed(SESSION_ID_BYTES, "session id")
        sender = reader.u32("sender")
        commitment = reader.fixed(DIGEST_BYTES, "self-mask commitment")
        count = reader.count("ciphertext count")
        shares = tuple(
            EncryptedShares(sender=sender, recipient=reader.u32("recipient"), ciphertext=reader.blob("ciphertext"))
            for _ in range(count)
        )
        return cls(session_id=session, sender=sender, self_mask_commitment=commitment, encrypted_shares=shares)


@dataclass(frozen=True, slots=True)
class MaskedInputRequest:
    """R1, server -> one client: U2 and the ciphertexts addressed to that client."""

    message_type: ClassVar[MessageType] = MessageType.MASKED_INPUT_REQUEST
    session_id: bytes
    recipient: int
    survivors: tuple[int, ...]
    encrypted_shares: tuple[EncryptedShares, ...]

    def _write(self, writer: _Writer) -> None:
        writer.fixed(self.session_id, SESSION_ID_BYTES, "session id")
        writer.u32(self.recipient, "recipient")
        writer.ids(self.survivors, "survivors")
        writer.u32(len(self.encrypted_shares), "ciphertext count")
        for item in self.encrypted_shares:
            if item.recipient != self.recipient:
                raise MalformedMessage("a relayed ciphertext names another recipient")
            writer.u32(item.sender, "sender")
            writer.blob(item.ciphertext, "ciphertext")

    @classmethod
    def _read(cls, reader: _Reader) -> MaskedInputRequest:
        session = reader.fixed(SESSION_ID_BYTES, "session id")
        recipient = reader.u32("recipient")
        survivors = reader.ids("survivors")
        count = reader.count("ciphertext count")
        shares = tuple(
            EncryptedShares(sender=reader.u32("sender"), recipient=recipient, ciphertext=reader.blob("ciphertext"))
            for _ in range(count)
        )
        return cls(session_id=session, recipient=recipient, survivors=survivors, encrypted_shares=shares)


@dataclass(frozen=True, slots=True, eq=False)
class MaskedInput:
    """R2, client -> server: y_u = x_u + PRG(b_u) + sum_v +-PRG(s_uv) in Z_2^b."""

    message_type: ClassVar[MessageType] = MessageType.MASKED_INPUT
    session_id: bytes
    sender: int
    bits: int
    masked_vector: np.ndarray = field(repr=False)

    def _write(self, writer: _Writer) -> None:
        writer.fixed(self.session_id, SESSION_ID_BYTES, "session id")
        writer.u32(self.sender, "sender")
        writer.vector(self.masked_vector, self.bits)

    @classmethod
    def _read(cls, reader: _Reader) -> MaskedInput:
        session = reader.fixed(SESSION_ID_BYTES, "session id")
        sender = reader.u32("sender")
        vector, bits = reader.vector()
        return cls(session_id=session, sender=sender, bits=bits, masked_vector=vector)


@dataclass(frozen=True, slots=True)
class ConsistencyCheckRequest:
    """R2 -> R3, server -> clients in U3 (active mode): who submitted a masked input."""

    message_type: ClassVar[MessageType] = MessageType.CONSISTENCY_CHECK_REQUEST
    session_id: bytes
    survivors: tuple[int, ...]

    def _write(self, writer: _Writer) -> None:
        writer.fixed(self.session_id, SESSION_ID_BYTES, "session id")
        writer.ids(self.survivors, "survivors")

    @classmethod
    def _read(cls, reader: _Reader) -> ConsistencyCheckRequest:
        return cls(session_id=reader.fixed(SESSION_ID_BYTES, "session id"), survivors=reader.ids("survivors"))


@dataclass(frozen=True, slots=True)
class ConsistencyCheck:
    """R3, client -> server: the client's Ed25519 signature over (session id, U3)."""

    message_type: ClassVar[MessageType] = MessageType.CONSISTENCY_CHECK
    session_id: bytes
    sender: int
    signature: bytes

    def _write(self, writer: _Writer) -> None:
        writer.fixed(self.session_id, SESSION_ID_BYTES, "session id")
        writer.u32(self.sender, "sender")
        writer.fixed(self.signature, SIGNATURE_BYTES, "signature")

    @classmethod
    def _read(cls, reader: _Reader) -> ConsistencyCheck:
        return cls(
            session_id=reader.fixed(SESSION_ID_BYTES, "session id"),
            sender=reader.u32("sender"),
            signature=reader.fixed(SIGNATURE_BYTES, "signature"),
        )


@dataclass(frozen=True, slots=True)
class SignedSurvivors:
    """One R3 signature relayed to the other clients."""

    signer: int
    signature: bytes


@dataclass(frozen=True, slots=True)
class UnmaskingRequest:
    """R3 -> R4, server -> clients: U3 (alive), U2 minus U3 (dropped) and, in active mode, the U4 signatures."""

    message_type: ClassVar[MessageType] = MessageType.UNMASKING_REQUEST
    session_id: bytes
    survivors: tuple[int, ...]
    dropped: tuple[int, ...]
    signatures: tuple[SignedSurvivors, ...]

    def _write(self, writer: _Writer) -> None:
        writer.fixed(self.session_id, SESSION_ID_BYTES, "session id")
        writer.ids(self.survivors, "survivors")
        writer.ids(self.dropped, "dropped")
        writer.u32(len(self.signatures), "signature count")
        for item in self.signatures:
            writer.u32(item.signer, "signer")
            writer.fixed(item.signature, SIGNATURE_BYTES, "signature")

    @classmethod
    def _read(cls, reader: _Reader) -> UnmaskingRequest:
        session = reader.fixed(SESSION_ID_BYTES, "session id")
        survivors = reader.ids("survivors")
        dropped = reader.ids("dropped")
        count = reader.count("signature count")
        signatures = tuple(
            SignedSurvivors(signer=reader.u32("signer"), signature=reader.fixed(SIGNATURE_BYTES, "signature"))
            for _ in range(count)
        )
        return cls(session_id=session, survivors=survivors, dropped=dropped, signatures=signatures)


@dataclass(frozen=True, slots=True)
class RevealedShare:
    """One Shamir share a client reveals in R4, naming the secret's owner."""

    owner: int
    share: bytes


@dataclass(frozen=True, slots=True)
class UnmaskingShares:
    """R4, client -> server: shares of s_sk for dropped clients and of b_v for survivors.

    A client never reveals both secrets of one owner (Bonawitz et al. 2017, section 4).
    """

    message_type: ClassVar[MessageType] = MessageType.UNMASKING_SHARES
    session_id: bytes
    sender: int
    masking_key_shares: tuple[RevealedShare, ...]
    self_mask_shares: tuple[RevealedShare, ...]

    def _write(self, writer: _Writer) -> None:
        writer.fixed(self.session_id, SESSION_ID_BYTES, "session id")
        writer.u32(self.sender, "sender")
        for name, shares in (("masking-key shares", self.masking_key_shares), ("self-mask shares", self.self_mask_shares)):
            writer.u32(len(shares), name)
            for item in shares:
                writer.u32(item.owner, "owner")
                writer.fixed(item.share, SHARE_BYTES, "share")

    @classmethod
    def _read(cls, reader: _Reader) -> UnmaskingShares:
        session = reader.fixed(SESSION_ID_BYTES, "session id")
        sender = reader.u32("sender")
        groups = []
        for name in ("masking-key shares", "self-mask shares"):
            count = reader.count(name)
            groups.append(
                tuple(RevealedShare(owner=reader.u32("owner"), share=reader.fixed(SHARE_BYTES, "share")) for _ in range(count))
            )
        return cls(session_id=session, sender=sender, masking_key_shares=groups[0], self_mask_shares=groups[1])


ClientMessage = AdvertiseKeys | ShareKeys | MaskedInput | ConsistencyCheck | UnmaskingShares
ServerMessage = KeyList | MaskedInputRequest | ConsistencyCheckRequest | UnmaskingRequest
Message = ClientMessage | ServerMessage

ROUND_OF_CLIENT_MESSAGE: dict[MessageType, Round] = {
    MessageType.ADVERTISE_KEYS: Round.ADVERTISE_KEYS,
    MessageType.SHARE_KEYS: Round.SHARE_KEYS,
    MessageType.MASKED_INPUT: Round.MASKED_INPUT_COLLECTION,
    MessageType.CONSISTENCY_CHECK: Round.CONSISTENCY_CHECK,
    MessageType.UNMASKING_SHARES: Round.UNMASKING,
}
"""The round each client message answers; the one message-to-round map. Every other
message type is a server message and is refused where a client message is expected."""

MESSAGE_CLASSES: dict[MessageType, type] = {
    cls.message_type: cls
    for cls in (
        AdvertiseKeys,
        KeyList,
        ShareKeys,
        MaskedInputRequest,
        MaskedInput,
        ConsistencyCheckRequest,
        ConsistencyCheck,
        UnmaskingRequest,
        UnmaskingShares,
    )
}

MessageT = TypeVar("MessageT")


def encode(message: Message) -> bytes:
    """The version-1 wire encoding of ``message``."""
    writer = _Writer(message.message_type)
    try:
        message._write(writer)
    except (EncodingError, struct.error, TypeError, ValueError) as exc:
        if isinstance(exc, MalformedMessage):
            raise
        raise MalformedMessage(f"cannot encode {type(message).__name__}: {exc}") from exc
    return writer.finish()


def peek_type(data: bytes | bytearray | memoryview) -> MessageType:
    """The message type in a header, after checking magic and version."""
    if len(data) < HEADER_BYTES:
        raise MalformedMessage("message shorter than its header")
    header = bytes(data[:HEADER_BYTES])
    if header[: len(MAGIC)] != MAGIC:
        raise MalformedMessage("not a secagg message (bad magic)")
    if header[3] != PROTOCOL_VERSION:
        raise MalformedMessage(f"unsupported protocol version {header[3]}")
    try:
        return MessageType(header[4])
    except ValueError:
        raise MalformedMessage(f"unknown message type {header[4]}") from None


def decode(data: bytes | bytearray | memoryview, expected: type[MessageT] | None = None) -> MessageT:
    """Decode one message; with ``expected``, refuse any other type."""
    message_type = peek_type(data)
    cls: Any = MESSAGE_CLASSES[message_type]
    if expected is not None and cls is not expected:
        raise MalformedMessage(f"expected {expected.__name__}, got {cls.__name__}")
    reader = _Reader(data)
    message = cast(MessageT, cls._read(reader))
    reader.finish()
    return message


def masked_input_size(dim: int, bits: int) -> int:
    """Exact encoded size of a :class:`MaskedInput` (the HTTP body limit follows from it)."""
    return HEADER_BYTES + SESSION_ID_BYTES + 4 + 1 + 4 + dim * Ring(bits).element_bytes
