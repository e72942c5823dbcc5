"""Vectors in chunks: the unit of upload, storage, unmasking and download of big vectors.

A round's vectors (the masked inputs of R2, the running sum, the result) are cut into
chunks of a fixed number of bytes, a round parameter of the transport (``chunk_bytes``,
a few MiB). Chunking changes no protocol message: a :class:`~secagg.messages.MaskedInput`
is the same bytes (``docs/WIRE.md``, section 6.5) whether it travels as one body or as its
46-byte *header* followed by the chunks of its vector, and ``chunk_bytes`` is not part of
the round's config digest. What this module fixes, for every party:

* :class:`ChunkLayout`: chunk k covers elements ``[k * chunk_elements, min((k + 1) *
  chunk_elements, dim))`` of the vector, that is the bytes ``[k * chunk_bytes, ...)`` of
  its little-endian encoding; the last chunk may be shorter; a vector shorter than one
  chunk is one chunk. ``chunk_bytes`` is a multiple of 64, so every chunk starts on an
  element boundary and on an AES counter block (the PRG is seekable,
  :func:`secagg.hazmat.prg.accumulate_masks_range`).
* :class:`MaskedInputHeader`: the message's first 46 bytes (magic, version, type, session
  id, sender, bits, element count), which carry everything the server checks about a
  masked input except its elements.
* :func:`upload_digest`: the one SHA-256 that binds a header and the SHA-256 of each chunk
  (the *upload manifest*); the client signs a request carrying the manifest before it
  sends any chunk, the server refuses every chunk whose digest differs from the declared
  one, and the manifest digest identifies the message once committed.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import ClassVar

from secagg.config import MAX_DIM, SESSION_ID_BYTES
from secagg.encoding import Ring
from secagg.errors import EncodingError, MalformedMessage
from secagg.hazmat.kdf import PROTOCOL_LABEL
from secagg.messages import HEADER_BYTES, MAGIC, MessageType

CHUNK_ALIGNMENT_BYTES = 64
"""Chunk sizes are multiples of 64 bytes: whole elements of every width, whole AES blocks."""
MIN_CHUNK_BYTES = 1024
MAX_CHUNK_BYTES = 64 << 20
DEFAULT_CHUNK_BYTES = 4 << 20
"""4 MiB: large enough that per-chunk overheads (a request, a row, a task) vanish, small
enough that a few chunks per concurrent task bound the server's memory."""
DIGEST_BYTES = 32
MASKED_INPUT_HEADER_BYTES = HEADER_BYTES + SESSION_ID_BYTES + 4 + 1 + 4
"""46: the bytes of a MaskedInput before its first element (``docs/WIRE.md``, section 6.5)."""
UPLOAD_DIGEST_LABEL = PROTOCOL_LABEL + b"/masked-input-upload/"


@dataclass(frozen=True, slots=True)
class ChunkLayout:
    """How a vector of ``dim`` elements of the ring Z_2^``bits`` is cut into chunks of ``chunk_bytes``."""

    dim: int
    bits: int
    chunk_bytes: int = DEFAULT_CHUNK_BYTES

    def __post_init__(self) -> None:
        if not isinstance(self.dim, int) or not 1 <= self.dim <= MAX_DIM:
            raise EncodingError(f"dim must be in 1..{MAX_DIM}")
        Ring(self.bits)
        if (
            not isinstance(self.chunk_bytes, int)
            or not MIN_CHUNK_BYTES <= self.chunk_bytes <= MAX_CHUNK_BYTES
            or self.chunk_bytes % CHUNK_ALIGNMENT_BYTES
        ):
            raise EncodingError(
                f"chunk_bytes must be a multiple of {CHUNK_ALIGNMENT_BYTES} in {MIN_CHUNK_BYTES}..{MAX_CHUNK_BYTES}"
            )

    @property
    def ring(self) -> Ring:
        return Ring(self.bits)

    @property
    def element_bytes(self) -> int:
        return self.ring.element_bytes

    @property
    def chunk_elements(self) -> int:
        return self.chunk_bytes // self.element_bytes

    @property
    def count(self) -> int:
        """The number of chunks (at least one)."""
        return -(-self.dim // self.chunk_elements)

    @property
    def vector_bytes(self) -> int:
        return self.dim * self.element_bytes

    def elements(self, index: int) -> tuple[int, int]:
        """``(start, stop)``: the element range of chunk ``index``."""
        if not isinstance(index, int) or not 0 <= index < self.count:
            raise IndexError(f"chunk index must be in 0..{self.count - 1}")
        start = index * self.chunk_elements
        return start, min(start + self.chunk_elements, self.dim)

    def size(self, index: int) -> int:
        """Bytes of chunk ``index`` (``chunk_bytes``, except possibly for the last one)."""
        start, stop = self.elements(index)
        return (stop - start) * self.element_bytes

    def ranges(self) -> Iterator[tuple[int, int, int]]:
        """``(index, start, stop)`` of every chunk, in order."""
        for index in range(self.count):
            start, stop = self.elements(index)
            yield index, start, stop

    def split(self, vector_bytes: bytes | bytearray | memoryview) -> list[memoryview]:
        """Zero-copy views of the chunks of an encoded vector (``vector_bytes`` long)."""
        view = memoryview(vector_bytes).cast("B")
        if view.nbytes != self.vector_bytes:
            raise EncodingError(f"the vector has {view.nbytes} bytes, the layout {self.vector_bytes}")
        return [view[start * self.element_bytes : stop * self.element_bytes] for _, start, stop in self.ranges()]


@dataclass(frozen=True, slots=True)
class MaskedInputHeader:
    """A masked input without its elements: the first 46 bytes of its encoding.

    The server accepts one in place of the whole :class:`~secagg.messages.MaskedInput`
    (``ServerSession(sum_masked_inputs=False)``) when the elements travel and are summed
    in chunks; the elements' own checks (count, ring) are then the chunk store's.
    """

    message_type: ClassVar[MessageType] = MessageType.MASKED_INPUT
    session_id: bytes
    sender: int
    bits: int
    dim: int

    def __post_init__(self) -> None:
        if len(self.session_id) != SESSION_ID_BYTES:
            raise EncodingError(f"session ids are {SESSION_ID_BYTES} bytes")
        Ring(self.bits)
        if not 0 <= self.sender < 1 << 32 or not 0 <= self.dim <= MAX_DIM:
            raise EncodingError("sender or element count out of range")

    def encode(self) -> bytes:
        return (
            MAGIC
            + struct.pack(">BB", 1, MessageType.MASKED_INPUT.value)
            + self.session_id
            + struct.pack(">IBI", self.sender, self.bits, self.dim)
        )

    @classmethod
    def decode(cls, data: bytes | bytearray | memoryview) -> MaskedInputHeader:
        """Parse the 46-byte prefix of an encoded MaskedInput; :class:`MalformedMessage` otherwise."""
        raw = bytes(data)
        if len(raw) != MASKED_INPUT_HEADER_BYTES:
            raise MalformedMessage(f"a masked-input header is {MASKED_INPUT_HEADER_BYTES} bytes")
        if raw[:3] != MAGIC or raw[3] != 1 or raw[4] != MessageType.MASKED_INPUT.value:
            raise MalformedMessage("not the header of a version-1 MaskedInput")
        session_id = raw[HEADER_BYTES : HEADER_BYTES + SESSION_ID_BYTES]
        sender, bits, dim = struct.unpack(">IBI", raw[HEADER_BYTES + SESSION_ID_BYTES :])
        try:
            return cls(session_id=session_id, sender=sender, bits=bits, dim=dim)
        except EncodingError as exc:
            raise MalformedMessage(str(exc)) from None


def split_masked_input(payload: bytes | bytearray | memoryview, chunk_bytes: int) -> tuple[MaskedInputHeader, list[memoryview]]:
    """An encoded MaskedInput as its header and zero-copy views of its chunks."""
    view = memoryview(payload).cast("B")
    header = MaskedInputHeader.decode(view[:MASKED_INPUT_HEADER_BYTES])
    layout = ChunkLayout(header.dim, header.bits, chunk_bytes)
    return header, layout.split(view[MASKED_INPUT_HEADER_BYTES:])


def upload_digest(header: bytes, chunk_bytes: int, chunk_sha256: Sequence[bytes]) -> bytes:
    """SHA-256 binding a masked input's header, its chunk size and the SHA-256 of each chunk, in order."""
    if len(header) != MASKED_INPUT_HEADER_BYTES or any(len(digest) != DIGEST_BYTES for digest in chunk_sha256):
        raise ValueError("a 46-byte header and 32-byte chunk digests are required")
    hasher = hashlib.sha256(UPLOAD_DIGEST_LABEL)
    hasher.update(header + struct.pack(">II", chunk_bytes, len(chunk_sha256)))
    for digest in chunk_sha256:
        hasher.update(digest)
    return hasher.digest()
