"""docs/WIRE.md is a complete specification: a second implementation written from it alone
reads every known-answer message, re-derives every pinned constant and follows real rounds.

Everything named ``spec_*`` below is written from WIRE.md only (section numbers in the
comments), with ``struct``, ``hashlib``, ``numpy`` and ``cryptography``'s primitives. It
never calls secagg's encoder, decoder or derivations. secagg is imported for two things
only: to compare (its constants, its decoder's refusals, its ``MessageType`` names), and
to *produce* real transcripts (client and server sessions running real rounds), which the
spec code then checks byte by byte.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

ROOT = Path(__file__).resolve().parents[2]
WIRE_MD = ROOT / "docs" / "WIRE.md"
VECTORS = ROOT / "tests" / "secagg" / "vectors"


def _vectors(name: str) -> list[dict[str, Any]]:
    return json.loads((VECTORS / name).read_text(encoding="utf-8"))["vectors"]


MESSAGE_VECTORS = _vectors("messages_v1.json")
CONFIG_VECTORS = _vectors("config_secagg_v1.json")
KDF_VECTORS = _vectors("kdf_secagg_v1.json")
PRG_VECTORS = _vectors("prg_secagg_v1.json")

# ------------------------------------------------------------------ WIRE.md sections 2, 5
SPEC_MAGIC = b"SAG"
SPEC_VERSION = 1
SPEC_HEADER_BYTES = 5
SPEC_MAX_LIST_LENGTH = 65536
SPEC_MAX_CIPHERTEXT_BYTES = 1024
SPEC_MAX_VECTOR_ELEMENTS = 1 << 30
SPEC_MIN_BITS, SPEC_MAX_BITS = 8, 64
SPEC_SHARE_BYTES = 33
SPEC_SHARE_PLAINTEXT_BYTES = 74
SPEC_SHARE_CIPHERTEXT_BYTES = 102
SPEC_FIELD_PRIME = 2**256 + 297
SPEC_LABEL = b"secagg/v1"
SPEC_TYPES = {
    1: ("ADVERTISE_KEYS", "AdvertiseKeys"),
    2: ("KEY_LIST", "KeyList"),
    3: ("SHARE_KEYS", "ShareKeys"),
    4: ("MASKED_INPUT_REQUEST", "MaskedInputRequest"),
    5: ("MASKED_INPUT", "MaskedInput"),
    6: ("CONSISTENCY_CHECK_REQUEST", "ConsistencyCheckRequest"),
    7: ("CONSISTENCY_CHECK", "ConsistencyCheck"),
    8: ("UNMASKING_REQUEST", "UnmaskingRequest"),
    9: ("UNMASKING_SHARES", "UnmaskingShares"),
}


class SpecRefusal(ValueError):
    """The spec decoder refuses a message; ``category`` names the rule of WIRE.md section 7."""

    def __init__(self, category: str, detail: str) -> None:
        self.category = category
        super().__init__(f"{category}: {detail}")


def spec_container_width(bits: int) -> int:
    """WIRE.md section 4.5: 1, 2, 4 or 8 bytes."""
    for width in (1, 2, 4, 8):
        if bits <= 8 * width:
            return width
    raise AssertionError(bits)


class _Cursor:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.offset = SPEC_HEADER_BYTES

    def take(self, size: int, name: str) -> bytes:
        if self.offset + size > len(self.data):
            raise SpecRefusal("truncated", name)
        piece = self.data[self.offset : self.offset + size]
        self.offset += size
        return piece

    def u32(self, name: str) -> int:
        return struct.unpack(">I", self.take(4, name))[0]

    def count(self, name: str, limit: int = SPEC_MAX_LIST_LENGTH) -> int:
        value = self.u32(name)
        if value > limit:
            raise SpecRefusal("limit", f"{name} {value} > {limit}")
        return value

    def hex(self, size: int, name: str) -> str:
        return self.take(size, name).hex()

    def ids(self, name: str) -> list[int]:
        count = self.count(name)
        return list(struct.unpack(f">{count}I", self.take(4 * count, name)))

    def ciphertext(self) -> str:
        return self.take(self.count("ciphertext length", SPEC_MAX_CIPHERTEXT_BYTES), "ciphertext").hex()

    def vector(self) -> tuple[int, list[int]]:
        bits = self.take(1, "ring bits")[0]
        if not SPEC_MIN_BITS <= bits <= SPEC_MAX_BITS:
            raise SpecRefusal("ring-bits", str(bits))
        count = self.count("vector length", SPEC_MAX_VECTOR_ELEMENTS)
        width = spec_container_width(bits)
        elements = np.frombuffer(self.take(count * width, "vector elements"), dtype=f"<u{width}")
        values = [int(v) for v in elements]
        if any(v >> bits for v in values):
            raise SpecRefusal("unreduced", f"element outside Z_2^{bits}")
        return bits, values


def _advertise_body(cursor: _Cursor) -> dict[str, Any]:
    """WIRE.md section 6.1, the 164-byte body."""
    return {
        "config_digest": cursor.hex(32, "config digest"),
        "sender": cursor.u32("sender"),
        "encryption_public_key": cursor.hex(32, "encryption public key"),
        "masking_public_key": cursor.hex(32, "masking public key"),
        "signature": cursor.hex(64, "signature"),
    }


def _shares(cursor: _Cursor, name: str) -> list[dict[str, Any]]:
    return [{"owner": cursor.u32("owner"), "share": cursor.hex(SPEC_SHARE_BYTES, "share")} for _ in range(cursor.count(name))]


def spec_decode(data: bytes) -> tuple[str, dict[str, Any]]:
    """(message name, fields) of one message, by WIRE.md sections 3, 4, 6 and 7."""
    if len(data) < SPEC_HEADER_BYTES:
        raise SpecRefusal("header", "shorter than the header")
    if data[:3] != SPEC_MAGIC:
        raise SpecRefusal("magic", data[:3].hex())
    if data[3] != SPEC_VERSION:
        raise SpecRefusal("version", str(data[3]))
    if data[4] not in SPEC_TYPES:
        raise SpecRefusal("type", str(data[4]))
    name = SPEC_TYPES[data[4]][1]
    c = _Cursor(data)
    fields: dict[str, Any]
    if name == "AdvertiseKeys":
        fields = _advertise_body(c)
    elif name == "KeyList":
        digest = c.hex(32, "config digest")
        fields = {"config_digest": digest, "entries": [_advertise_body(c) for _ in range(c.count("entry count"))]}
    elif name == "ShareKeys":
        fields = {
            "session_id": c.hex(32, "session id"),
            "sender": c.u32("sender"),
            "self_mask_commitment": c.hex(32, "commitment"),
        }
        fields["encrypted_shares"] = [
            {"recipient": c.u32("recipient"), "ciphertext": c.ciphertext()} for _ in range(c.count("ciphertext count"))
        ]
    elif name == "MaskedInputRequest":
        fields = {"session_id": c.hex(32, "session id"), "recipient": c.u32("recipient"), "survivors": c.ids("survivors")}
        fields["encrypted_shares"] = [
            {"sender": c.u32("sender"), "ciphertext": c.ciphertext()} for _ in range(c.count("ciphertext count"))
        ]
    elif name == "MaskedInput":
        fields = {"session_id": c.hex(32, "session id"), "sender": c.u32("sender")}
        fields["bits"], fields["masked_vector"] = c.vector()
    elif name == "ConsistencyCheckRequest":
        fields = {"session_id": c.hex(32, "session id"), "survivors": c.ids("survivors")}
    elif name == "ConsistencyCheck":
        fields = {"session_id": c.hex(32, "session id"), "sender": c.u32("sender"), "signature": c.hex(64, "signature")}
    elif name == "UnmaskingRequest":
        fields = {"session_id": c.hex(32, "session id"), "survivors": c.ids("survivors"), "dropped": c.ids("dropped")}
        fields["signatures"] = [
            {"signer": c.u32("signer"), "signature": c.hex(64, "signature")} for _ in range(c.count("signature count"))
        ]
    else:
        fields = {"session_id": c.hex(32, "session id"), "sender": c.u32("sender")}
        fields["masking_key_shares"] = _shares(c, "masking-key shares")
        fields["self_mask_shares"] = _shares(c, "self-mask shares")
    if c.offset != len(data):
        raise SpecRefusal("trailing", f"{len(data) - c.offset} bytes")
    return name, fields


def _wire(vector: dict[str, Any]) -> bytes:
    return b"".join(bytes.fromhex(piece) for _label, piece in vector["wire"])


def _vector(name: str) -> bytes:
    return _wire(next(v for v in MESSAGE_VECTORS if v["name"] == name))


# ------------------------------------------------------------------ the spec decoder and the vectors


@pytest.mark.parametrize("vector", MESSAGE_VECTORS, ids=[v["name"] for v in MESSAGE_VECTORS])
def test_the_spec_decoder_reads_every_message_vector_as_recorded(vector: dict[str, Any]) -> None:
    name, fields = spec_decode(_wire(vector))
    assert name == vector["type"]
    assert fields == vector["fields"]


def test_the_message_vectors_cover_every_type_of_the_spec() -> None:
    assert {_wire(v)[4] for v in MESSAGE_VECTORS} == set(SPEC_TYPES)


def test_every_message_type_is_documented_in_wire_md_with_its_number() -> None:
    """A new MessageType cannot ship without its row in WIRE.md section 5."""
    from secagg.messages import MESSAGE_CLASSES, MessageType

    text = WIRE_MD.read_text(encoding="utf-8")
    for member in MessageType:
        row = rf"^\|\s*{member.value}\s*\|\s*`{member.name}`\s*\|\s*`{MESSAGE_CLASSES[member].__name__}`\s*\|"
        assert re.search(row, text, flags=re.MULTILINE), f"{member.name} = {member.value} is not in WIRE.md section 5"
        assert re.search(
            rf"^### 6\.\d+ `{MESSAGE_CLASSES[member].__name__}` \(type {member.value}\)", text, flags=re.MULTILINE
        ), f"{member.name} has no layout section in WIRE.md section 6"
    assert {value: names[0] for value, names in SPEC_TYPES.items()} == {m.value: m.name for m in MessageType}


def test_the_constants_of_the_spec_are_the_implementation_s() -> None:
    from secagg import config, encoding, messages, protocol
    from secagg.hazmat import kdf, shamir

    assert (messages.MAGIC, config.PROTOCOL_VERSION, messages.HEADER_BYTES) == (SPEC_MAGIC, SPEC_VERSION, SPEC_HEADER_BYTES)
    assert messages.MAX_LIST_LENGTH == SPEC_MAX_LIST_LENGTH
    assert messages.MAX_CIPHERTEXT_BYTES == SPEC_MAX_CIPHERTEXT_BYTES
    assert messages.MAX_VECTOR_ELEMENTS == SPEC_MAX_VECTOR_ELEMENTS
    assert (encoding.MIN_BITS, encoding.MAX_BITS) == (SPEC_MIN_BITS, SPEC_MAX_BITS)
    assert (shamir.SHARE_BYTES, shamir.FIELD_PRIME) == (SPEC_SHARE_BYTES, SPEC_FIELD_PRIME)
    assert (protocol.SHARE_PLAINTEXT_BYTES, protocol.SHARE_CIPHERTEXT_BYTES) == (
        SPEC_SHARE_PLAINTEXT_BYTES,
        SPEC_SHARE_CIPHERTEXT_BYTES,
    )
    assert kdf.PROTOCOL_LABEL == SPEC_LABEL
    for bits in range(SPEC_MIN_BITS, SPEC_MAX_BITS + 1):
        assert encoding.Ring(bits).element_bytes == spec_container_width(bits)


# ------------------------------------------------------------------ refusals (WIRE.md section 7)


def _mutations() -> list[tuple[str, bytes, str]]:
    advertise = _vector("advertise-keys")
    check_request = _vector("consistency-check-request")  # 3 survivors
    share_keys = _vector("share-keys")
    masked_13 = _vector("masked-input-13-bit")
    session = bytes(range(0x20, 0x40))

    def with_count(prefix: bytes, count: int, items: bytes = b"") -> bytes:
        return prefix + struct.pack(">I", count) + items

    cases = [
        ("short-header", b"SAG\x01", "header"),
        ("bad-magic", b"SAH" + advertise[3:], "magic"),
        ("version-0", advertise[:3] + b"\x00" + advertise[4:], "version"),
        ("version-2", advertise[:3] + b"\x02" + advertise[4:], "version"),
        ("type-0", advertise[:4] + b"\x00" + advertise[5:], "type"),
        ("type-10", advertise[:4] + b"\x0a" + advertise[5:], "type"),
        ("list-over-limit", with_count(check_request[:37], SPEC_MAX_LIST_LENGTH + 1), "limit"),
        (
            "ciphertext-over-limit",
            share_keys[:73] + struct.pack(">III", 1, 9, SPEC_MAX_CIPHERTEXT_BYTES + 1) + bytes(SPEC_MAX_CIPHERTEXT_BYTES + 1),
            "limit",
        ),
        ("vector-over-limit", masked_13[:41] + struct.pack(">BI", 13, SPEC_MAX_VECTOR_ELEMENTS + 1), "limit"),
        ("ring-bits-7", masked_13[:41] + struct.pack(">BI", 7, 0), "ring-bits"),
        ("ring-bits-65", masked_13[:41] + struct.pack(">BI", 65, 0), "ring-bits"),
        ("element-2^13", masked_13[:41] + struct.pack(">BI", 13, 1) + (1 << 13).to_bytes(2, "little"), "unreduced"),
        (
            "element-2^31-in-31-bits",
            b"SAG\x01\x05" + session + struct.pack(">IBI", 1, 31, 1) + (1 << 31).to_bytes(4, "little"),
            "unreduced",
        ),
        ("count-promises-more-ids", with_count(check_request[:37], 4, bytes(12)), "truncated"),
    ]
    for vector in MESSAGE_VECTORS:
        data = _wire(vector)
        cases.append((f"{vector['name']}+trailing", data + b"\x00", "trailing"))
        if len(data) > SPEC_HEADER_BYTES:
            cases.append((f"{vector['name']}-truncated", data[:-1], "truncated"))
    return cases


MUTATIONS = _mutations()
REFERENCE_WORDING = {
    "header": "shorter than its header",
    "magic": "bad magic",
    "version": "unsupported protocol version",
    "type": "unknown message type",
    "limit": "limit",
    "ring-bits": "ring bits",
    "unreduced": "outside Z_2^",
    "truncated": "truncated",
    "trailing": "trailing bytes",
}


@pytest.mark.parametrize(("data", "category"), [(d, c) for _, d, c in MUTATIONS], ids=[n for n, _, _ in MUTATIONS])
def test_the_spec_and_the_implementation_refuse_the_same_bytes_for_the_same_reason(data: bytes, category: str) -> None:
    from secagg.errors import MalformedMessage
    from secagg.messages import decode

    with pytest.raises(SpecRefusal) as refused:
        spec_decode(data)
    assert refused.value.category == category
    with pytest.raises(MalformedMessage, match=re.escape(REFERENCE_WORDING[category])):
        decode(data)


def test_the_limits_are_inclusive_in_the_spec_and_the_implementation() -> None:
    from secagg.messages import decode

    session = bytes(range(0x20, 0x40))
    longest_list = (
        b"SAG\x01\x06"
        + session
        + struct.pack(">I", SPEC_MAX_LIST_LENGTH)
        + np.arange(SPEC_MAX_LIST_LENGTH, dtype=">u4").tobytes()
    )
    longest_ciphertext = (
        b"SAG\x01\x03"
        + session
        + struct.pack(">I", 2)
        + bytes(32)
        + struct.pack(">III", 1, 9, SPEC_MAX_CIPHERTEXT_BYTES)
        + bytes(SPEC_MAX_CIPHERTEXT_BYTES)
    )
    name, fields = spec_decode(longest_list)
    assert (name, len(fields["survivors"])) == ("ConsistencyCheckRequest", SPEC_MAX_LIST_LENGTH)
    assert len(decode(longest_list).survivors) == SPEC_MAX_LIST_LENGTH
    name, fields = spec_decode(longest_ciphertext)
    assert len(bytes.fromhex(fields["encrypted_shares"][0]["ciphertext"])) == SPEC_MAX_CIPHERTEXT_BYTES
    assert len(decode(longest_ciphertext).encrypted_shares[0].ciphertext) == SPEC_MAX_CIPHERTEXT_BYTES


# ------------------------------------------------------------------ derivations (WIRE.md sections 8, 9, 12, 16.1)

SPEC_MODE_INDEX = {"honest-but-curious": 0, "active": 1}
SPEC_GRAPH_INDEX = {"full": 0, "harary": 1}


def spec_config_digest(
    *, round_id: bytes, identity_keys: list[bytes], threshold: int, dim: int, bits: int, mode: str, graph: str, degree: int | None
) -> bytes:
    """WIRE.md section 8."""
    data = (
        b"secagg/v1/round-config/"
        + struct.pack(
            ">BBBBIIIH", 1, bits, SPEC_MODE_INDEX[mode], SPEC_GRAPH_INDEX[graph], threshold, dim, degree or 0, len(round_id)
        )
        + round_id
        + struct.pack(">I", len(identity_keys))
        + b"".join(identity_keys)
    )
    return hashlib.sha256(data).digest()


def spec_session_id(config_digest: bytes, advertised: list[tuple[int, bytes, bytes]]) -> bytes:
    """WIRE.md section 9."""
    data = b"secagg/v1/session/" + config_digest
    for member, c_pk, s_pk in sorted(advertised, key=lambda item: item[0]):
        data += struct.pack(">I", member) + c_pk + s_pk
    return hashlib.sha256(data).digest()


def spec_hkdf(ikm: bytes, purpose: str, context: bytes, length: int = 32) -> bytes:
    """WIRE.md section 12."""
    info = b"secagg/v1/" + purpose.encode("ascii") + b"/" + context
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(ikm)


def spec_prg(key: bytes, count: int, width: int) -> np.ndarray:
    """WIRE.md section 16.1: AES-256-CTR from a zero counter block, little-endian words of ``width`` bytes."""
    stream = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor().update(bytes(count * width))
    return np.frombuffer(stream, dtype=f"<u{width}").copy()


@pytest.mark.parametrize("vector", CONFIG_VECTORS, ids=[v["name"] for v in CONFIG_VECTORS])
def test_the_spec_derives_the_pinned_config_digest_and_session_id(vector: dict[str, Any]) -> None:
    digest = spec_config_digest(
        round_id=bytes.fromhex(vector["round_id"]),
        identity_keys=[bytes.fromhex(key) for key in vector["identity_keys"]],
        threshold=vector["threshold"],
        dim=vector["dim"],
        bits=vector["bits"],
        mode=vector["mode"],
        graph=vector["graph"],
        degree=vector["degree"],
    )
    assert digest.hex() == vector["digest"]
    advertised = [(member, bytes.fromhex(c), bytes.fromhex(s)) for member, c, s in reversed(vector["advertised"])]
    assert spec_session_id(digest, advertised).hex() == vector["session_id"]


SPEC_PURPOSES = {
    "SHARE_ENCRYPTION": "share-encryption",
    "PAIRWISE_MASK": "pairwise-mask",
    "SELF_MASK": "self-mask",
    "NEIGHBOUR_GRAPH": "neighbour-graph",
}


@pytest.mark.parametrize("vector", KDF_VECTORS, ids=[v["name"] for v in KDF_VECTORS])
def test_the_spec_derives_every_pinned_kdf_output(vector: dict[str, Any]) -> None:
    kind = vector["kind"]
    if kind == "derive_key":
        purpose = SPEC_PURPOSES[vector["purpose"]]
        context = bytes.fromhex(vector["context"])
        assert (b"secagg/v1/" + purpose.encode() + b"/" + context).hex() == vector["info"]
        okm = spec_hkdf(bytes.fromhex(vector["secret"]), purpose, context, vector["length"])
    else:
        session = bytes.fromhex(vector["session_id"])
        if kind == "self_mask_prg_seed":
            okm = spec_hkdf(bytes.fromhex(vector["self_mask_seed"]), "self-mask", session + struct.pack(">I", vector["owner"]))
        elif kind == "pairwise_prg_seed":
            low, high = sorted((vector["first"], vector["second"]))
            okm = spec_hkdf(
                bytes.fromhex(vector["x25519_shared_secret"]), "pairwise-mask", session + struct.pack(">II", low, high)
            )
        else:
            assert kind == "share_encryption_key"
            context = session + struct.pack(">II", vector["sender"], vector["recipient"])
            okm = spec_hkdf(bytes.fromhex(vector["x25519_shared_secret"]), "share-encryption", context)
    assert okm.hex() == vector["okm"]


EXPAND_VECTORS = [v for v in PRG_VECTORS if v["kind"] == "expand"]


@pytest.mark.parametrize("vector", EXPAND_VECTORS, ids=[v["name"] for v in EXPAND_VECTORS])
def test_the_spec_prg_gives_every_pinned_expansion(vector: dict[str, Any]) -> None:
    width = np.dtype(vector["dtype"]).itemsize
    words = spec_prg(bytes.fromhex(vector["seed"]), len(vector["words"]), width)
    assert [int(word) for word in words] == [int(word, 16) for word in vector["words"]]


# ------------------------------------------------------------------ real rounds, checked from the spec


class RecordingSource:
    """A deterministic random source that remembers what it handed out, so that the test
    can find each client's X25519 private keys (by matching them to the advertised public
    keys) without reaching into the client's state."""

    def __init__(self, seed: int) -> None:
        from secagg.hazmat.randomness import DeterministicRandom

        self._inner = DeterministicRandom.from_int(seed)
        self.draws: list[bytes] = []

    def random_bytes(self, length: int) -> bytes:
        value = self._inner.random_bytes(length)
        self.draws.append(value)
        return value

    def fill(self, buffer: np.ndarray) -> None:
        self._inner.fill(buffer)


@dataclass
class Transcript:
    """Every message of one round, as bytes, and what the test knows outside the protocol."""

    config: dict[str, Any]
    identity_keys: list[bytes]
    inputs: dict[int, np.ndarray]
    client_messages: dict[int, dict[int, bytes]] = field(default_factory=dict)  # type -> sender -> bytes
    server_messages: dict[int, dict[int, bytes]] = field(default_factory=dict)  # type -> recipient -> bytes
    draws: dict[int, list[bytes]] = field(default_factory=dict)
    result: np.ndarray | None = None


def spec_minimum_threshold(mode: str, size: int) -> int:
    """WIRE.md section 8."""
    return (2 * size) // 3 + 1 if mode == "active" else size // 2 + 1


def spec_neighbours(config: dict[str, Any], members: list[int], session_id: bytes) -> dict[int, set[int]]:
    """WIRE.md section 13."""
    ordered = sorted(members)
    degree = config["degree"]
    if config["graph"] == "full" or degree >= len(ordered) - 1:
        return {u: set(ordered) - {u} for u in ordered}
    keys = spec_prg(spec_hkdf(session_id, "neighbour-graph", b"harary"), len(ordered), 8)
    order = sorted(range(len(ordered)), key=lambda index: (int(keys[index]), index))
    cycle = [ordered[index] for index in order]
    size, half = len(cycle), degree // 2
    return {cycle[p]: {cycle[(p + o) % size] for o in range(-half, half + 1) if o != 0} for p in range(size)}


def spec_cycle(members: list[int], session_id: bytes) -> list[int]:
    """The Harary cycle of WIRE.md section 13 (used to choose dropouts that keep the round alive)."""
    ordered = sorted(members)
    keys = spec_prg(spec_hkdf(session_id, "neighbour-graph", b"harary"), len(ordered), 8)
    return [ordered[index] for index in sorted(range(len(ordered)), key=lambda index: (int(keys[index]), index))]


def spec_share_threshold(config: dict[str, Any]) -> int:
    """WIRE.md section 13."""
    if config["graph"] == "full":
        return config["threshold"]
    return spec_minimum_threshold(config["mode"], config["degree"] + 1)


def spec_reconstruct(shares: dict[int, int], threshold: int) -> bytes:
    """WIRE.md section 14: Lagrange at 0 over the lowest ``threshold`` ids, x = id + 1."""
    p = SPEC_FIELD_PRIME
    chosen = sorted(shares)[:threshold]
    assert len(chosen) == threshold
    secret = 0
    for i in chosen:
        numerator, denominator = 1, 1
        for j in chosen:
            if j != i:
                numerator = numerator * (j + 1) % p
                denominator = denominator * ((j + 1) - (i + 1)) % p
        secret = (secret + shares[i] * numerator * pow(denominator, -1, p)) % p
    assert secret < 2**256
    return secret.to_bytes(32, "big")


def spec_clamp(private: bytes) -> bytes:
    """RFC 7748 section 5: clear bits 0, 1, 2 and 255, set bit 254 (little-endian scalar)."""
    scalar = bytearray(private)
    scalar[0] &= 248
    scalar[31] &= 127
    scalar[31] |= 64
    return bytes(scalar)


def spec_x25519_public(private: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def spec_agree(private: bytes, public: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(private).exchange(X25519PublicKey.from_public_bytes(public))


def spec_verifies(public_key: bytes, signature: bytes, statement: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, statement)
    except InvalidSignature:
        return False
    return True


def run_round(config: dict[str, Any], *, seed: int, drop_after: dict[int, str]) -> Transcript:
    """A real round with secagg's sessions; ``drop_after`` picks, once U1 is known, who stops
    answering: ``{5: "r1"}`` drops the client at cycle position 5 (or id 5 for the full graph)
    before it sends ShareKeys, ``"r2"`` before MaskedInput."""
    from secagg.client import ClientSession
    from secagg.config import RoundConfig
    from secagg.hazmat.keys import SigningKey
    from secagg.hazmat.randomness import DeterministicRandom
    from secagg.messages import encode
    from secagg.server import ServerSession, ServerStage

    n = config["n"]
    identities = [SigningKey.generate(DeterministicRandom.from_int(seed * 100 + i)) for i in range(n)]
    round_config = RoundConfig(
        round_id=bytes(range(16)),
        identity_keys=tuple(key.public_bytes for key in identities),
        threshold=config["threshold"],
        dim=config["dim"],
        bits=config["bits"],
        mode=config["mode"],
        graph=config["graph"],
        degree=config["degree"],
    )
    width = spec_container_width(config["bits"])
    stream = spec_prg(hashlib.sha256(b"inputs %d" % seed).digest(), n * config["dim"], width).reshape(n, config["dim"])
    inputs = {i: stream[i] & np.array((1 << config["bits"]) - 1, dtype=stream.dtype) for i in range(n)}
    transcript = Transcript(config=config, identity_keys=[key.public_bytes for key in identities], inputs=inputs)
    sources = {i: RecordingSource(seed * 1000 + i) for i in range(n)}
    clients = {
        i: ClientSession(round_config, i, identities[i], inputs[i].astype(f"=u{width}"), source=sources[i]) for i in range(n)
    }
    server = ServerSession(round_config)
    stage_of = {"r1": ServerStage.SHARE_KEYS, "r2": ServerStage.MASKED_INPUT_COLLECTION}
    gone: set[int] = set()
    drops: dict[ServerStage, set[int]] = {}
    pending = {i: encode(clients[i].start()) for i in range(n)}
    while True:
        for sender, data in sorted(pending.items()):
            if sender in drops.get(server.stage, set()):
                gone.add(sender)
                continue
            transcript.client_messages.setdefault(data[4], {})[sender] = data
            server.receive_bytes(data)
        closing = server.stage
        outbox = server.advance()
        if server.stage is ServerStage.COMPLETED:
            break
        if closing is ServerStage.ADVERTISE_KEYS:
            key_list = spec_decode(encode(next(iter(outbox.values()))))[1]
            entries = key_list["entries"]
            members = [entry["sender"] for entry in entries]
            session = spec_session_id(
                bytes.fromhex(key_list["config_digest"]),
                [
                    (e["sender"], bytes.fromhex(e["encryption_public_key"]), bytes.fromhex(e["masking_public_key"]))
                    for e in entries
                ],
            )
            order = spec_cycle(members, session) if config["graph"] == "harary" else sorted(members)
            for position, when in drop_after.items():
                drops.setdefault(stage_of[when], set()).add(order[position])
        pending = {}
        for recipient, message in sorted(outbox.items()):
            if recipient in gone:
                continue
            data = encode(message)
            transcript.server_messages.setdefault(data[4], {})[recipient] = data
            pending[recipient] = encode(clients[recipient].receive_bytes(data))
    transcript.draws = {i: source.draws for i, source in sources.items()}
    transcript.result = np.array(server.result)
    return transcript


ROUNDS = {
    # SecAgg+ graph, active mode, 32-bit ring: one client drops before R1, one before R2,
    # six positions apart on the cycle so that no client loses two neighbours.
    "active-harary-n12-k4-bits32": (
        {"n": 12, "threshold": 9, "dim": 37, "bits": 32, "mode": "active", "graph": "harary", "degree": 4},
        {0: "r1", 6: "r2"},
    ),
    # complete graph, honest-but-curious, 13-bit ring (2-byte words, reduction mod 2^13).
    "hbc-full-n5-bits13": (
        {"n": 5, "threshold": 3, "dim": 29, "bits": 13, "mode": "honest-but-curious", "graph": "full", "degree": None},
        {1: "r1", 3: "r2"},
    ),
    # 64-bit ring, complete graph, active, nobody drops.
    "active-full-n4-bits64": (
        {"n": 4, "threshold": 3, "dim": 5, "bits": 64, "mode": "active", "graph": "full", "degree": None},
        {},
    ),
}


@pytest.fixture(scope="module", params=sorted(ROUNDS))
def transcript(request: pytest.FixtureRequest) -> Transcript:
    config, drops = ROUNDS[request.param]
    return run_round(config, seed=sorted(ROUNDS).index(request.param) + 1, drop_after=drops)


def _decoded(messages: dict[int, bytes]) -> dict[int, dict[str, Any]]:
    return {party: spec_decode(data)[1] for party, data in messages.items()}


def test_a_real_round_follows_the_spec_from_r0_to_the_sum(transcript: Transcript) -> None:
    config = transcript.config
    bits, width = config["bits"], spec_container_width(config["bits"])
    mask = np.array((1 << bits) - 1, dtype=f"<u{width}")

    # Section 8: the digest every AdvertiseKeys carries.
    digest = spec_config_digest(
        round_id=bytes(range(16)),
        identity_keys=transcript.identity_keys,
        threshold=config["threshold"],
        dim=config["dim"],
        bits=bits,
        mode=config["mode"],
        graph=config["graph"],
        degree=config["degree"],
    )
    advertised = _decoded(transcript.client_messages[1])
    assert {fields["config_digest"] for fields in advertised.values()} == {digest.hex()}

    # Section 10.1: every R0 signature over the documented statement.
    for sender, fields in advertised.items():
        statement = (
            b"secagg/v1/R0/advertise-keys/"
            + digest
            + struct.pack(">I", sender)
            + bytes.fromhex(fields["encryption_public_key"])
            + bytes.fromhex(fields["masking_public_key"])
        )
        assert len(statement) == 128
        assert spec_verifies(transcript.identity_keys[sender], bytes.fromhex(fields["signature"]), statement)

    # Section 9: the session id from the KeyList; every later message carries it.
    key_lists = _decoded(transcript.server_messages[2])
    entries = next(iter(key_lists.values()))["entries"]
    u1 = sorted(entry["sender"] for entry in entries)
    c_pk = {e["sender"]: bytes.fromhex(e["encryption_public_key"]) for e in entries}
    s_pk = {e["sender"]: bytes.fromhex(e["masking_public_key"]) for e in entries}
    session = spec_session_id(digest, [(u, c_pk[u], s_pk[u]) for u in u1])
    for message_type in (3, 5, 7, 9):
        for fields in _decoded(transcript.client_messages.get(message_type, {})).values():
            assert fields["session_id"] == session.hex()

    # Round private keys, found among each client's random draws by their public keys.
    c_sk = {u: next(d for d in transcript.draws[u] if len(d) == 32 and spec_x25519_public(d) == c_pk[u]) for u in u1}
    s_sk = {u: spec_clamp(next(d for d in transcript.draws[u] if len(d) == 32 and spec_x25519_public(d) == s_pk[u])) for u in u1}

    # Section 13: ShareKeys goes to exactly the spec's neighbours in U1.
    graph = spec_neighbours(config, u1, session)
    t_s = spec_share_threshold(config)
    share_keys = _decoded(transcript.client_messages[3])
    u2 = sorted(share_keys)
    for sender, fields in share_keys.items():
        assert [item["recipient"] for item in fields["encrypted_shares"]] == sorted(graph[sender])

    # Section 15: every ciphertext opens with the spec's key and AD; plaintext layout.
    shares_held: dict[int, dict[int, tuple[int, int]]] = {owner: {} for owner in u2}  # owner -> holder -> (s_sk share, b share)
    for sender, fields in share_keys.items():
        for item in fields["encrypted_shares"]:
            recipient, sealed = item["recipient"], bytes.fromhex(item["ciphertext"])
            assert len(sealed) == SPEC_SHARE_CIPHERTEXT_BYTES
            key = spec_hkdf(
                spec_agree(c_sk[recipient], c_pk[sender]), "share-encryption", session + struct.pack(">II", sender, recipient)
            )
            ad = b"secagg/v1/aead/" + session + b"R1" + bytes(6) + struct.pack(">II", sender, recipient)
            assert len(ad) == 63
            plaintext = AESGCM(key).decrypt(sealed[:12], sealed[12:], ad)
            assert len(plaintext) == SPEC_SHARE_PLAINTEXT_BYTES
            assert struct.unpack(">II", plaintext[:8]) == (sender, recipient)
            shares_held[sender][recipient] = (int.from_bytes(plaintext[8:41], "big"), int.from_bytes(plaintext[41:74], "big"))
            with pytest.raises(InvalidTag):  # the reverse direction's AD does not open it
                AESGCM(key).decrypt(sealed[:12], sealed[12:], ad[:-8] + struct.pack(">II", recipient, sender))

    # Section 14: the neighbours' shares reconstruct s_sk (checked against s_pk) and b
    # (checked against the section 10.3 commitment). The owner's own pair is not sent;
    # t_s of the others suffice.
    self_mask_seed: dict[int, bytes] = {}
    for owner, held in shares_held.items():
        masking_key = spec_reconstruct({holder: pair[0] for holder, pair in held.items()}, t_s)
        assert masking_key == s_sk[owner] and spec_x25519_public(masking_key) == s_pk[owner]
        seed = spec_reconstruct({holder: pair[1] for holder, pair in held.items()}, t_s)
        commitment = hashlib.sha256(b"secagg/v1/self-mask-commitment/" + session + struct.pack(">I", owner) + seed).digest()
        assert commitment.hex() == share_keys[owner]["self_mask_commitment"]
        self_mask_seed[owner] = seed

    # Section 6.4: each MaskedInputRequest lists U2 and relays exactly the ciphertexts for its recipient.
    for recipient, fields in _decoded(transcript.server_messages[4]).items():
        assert fields["survivors"] == u2 and fields["recipient"] == recipient
        relayed = {(item["sender"], item["ciphertext"]) for item in fields["encrypted_shares"]}
        assert relayed == {
            (sender, item["ciphertext"])
            for sender in u2
            for item in share_keys[sender]["encrypted_shares"]
            if item["recipient"] == recipient
        }

    # Section 16: every masked input is x_u + PRG(b_u) + signed pairwise masks with N(u) ∩ U2.
    def self_mask(owner: int) -> np.ndarray:
        return spec_prg(spec_hkdf(self_mask_seed[owner], "self-mask", session + struct.pack(">I", owner)), config["dim"], width)

    def pairwise_mask(u: int, v: int) -> np.ndarray:
        low, high = sorted((u, v))
        key = spec_hkdf(spec_agree(s_sk[u], s_pk[v]), "pairwise-mask", session + struct.pack(">II", low, high))
        return spec_prg(key, config["dim"], width)

    masked = _decoded(transcript.client_messages[5])
    u3 = sorted(masked)
    for u, fields in masked.items():
        assert fields["bits"] == bits
        expected = transcript.inputs[u].astype(f"<u{width}") + self_mask(u)
        for v in sorted(graph[u] & set(u2)):
            expected = expected + pairwise_mask(u, v) if u < v else expected - pairwise_mask(u, v)
        assert fields["masked_vector"] == [int(x) for x in expected & mask]

    # Sections 6.6-6.8 and 10.2: U3 as sent, R3 signatures over the documented statement.
    dropped = sorted(set(u2) - set(u3))
    r3_statement = {
        signer: b"secagg/v1/R3/consistency-check/" + session + struct.pack(f">II{len(u3)}I", signer, len(u3), *u3)
        for signer in u3
    }
    if config["mode"] == "active":
        assert {tuple(f["survivors"]) for f in _decoded(transcript.server_messages[6]).values()} == {tuple(u3)}
        for signer, fields in _decoded(transcript.client_messages[7]).items():
            assert spec_verifies(transcript.identity_keys[signer], bytes.fromhex(fields["signature"]), r3_statement[signer])
    else:
        assert 6 not in transcript.server_messages and 7 not in transcript.client_messages
    for fields in _decoded(transcript.server_messages[8]).values():
        assert (fields["survivors"], fields["dropped"]) == (u3, dropped)
        assert (len(fields["signatures"]) > 0) == (config["mode"] == "active")
        for item in fields["signatures"]:
            assert spec_verifies(
                transcript.identity_keys[item["signer"]], bytes.fromhex(item["signature"]), r3_statement[item["signer"]]
            )

    # Sections 6.9, 14 and 16.4: the revealed shares reconstruct the secrets the server
    # needs, and the spec's unmasking gives the server's result and the sum of the inputs.
    revealed_b: dict[int, dict[int, int]] = {owner: {} for owner in u3}
    revealed_s: dict[int, dict[int, int]] = {owner: {} for owner in dropped}
    for holder, fields in _decoded(transcript.client_messages[9]).items():
        neighbourhood = (graph[holder] | {holder}) & set(u2)
        assert [item["owner"] for item in fields["masking_key_shares"]] == sorted(neighbourhood & set(dropped))
        assert [item["owner"] for item in fields["self_mask_shares"]] == sorted(neighbourhood & set(u3))
        for item in fields["masking_key_shares"]:
            revealed_s[item["owner"]][holder] = int(item["share"], 16)
        for item in fields["self_mask_shares"]:
            revealed_b[item["owner"]][holder] = int(item["share"], 16)
    total = np.zeros(config["dim"], dtype=f"<u{width}")
    for u in u3:
        total = total + np.array(masked[u]["masked_vector"], dtype=f"<u{width}")
        seed = spec_reconstruct(revealed_b[u], t_s)
        assert seed == self_mask_seed[u]
        total = total - self_mask(u)
    for v in dropped:
        recovered = spec_reconstruct(revealed_s[v], t_s)
        assert spec_x25519_public(recovered) == s_pk[v]
        for u in sorted(graph[v] & set(u3)):
            low, high = sorted((u, v))
            key = spec_hkdf(spec_agree(recovered, s_pk[u]), "pairwise-mask", session + struct.pack(">II", low, high))
            prg = spec_prg(key, config["dim"], width)
            total = total - prg if u < v else total + prg
    total &= mask
    inputs_sum = sum((transcript.inputs[u].astype(f"<u{width}") for u in u3), np.zeros(config["dim"], dtype=f"<u{width}")) & mask
    assert np.array_equal(total, inputs_sum)
    assert transcript.result is not None and np.array_equal(total, transcript.result)


def test_the_rounds_exercise_dropouts_and_the_sparse_graph() -> None:
    """The transcripts above are only as strong as the cases they cover."""
    config, drops = ROUNDS["active-harary-n12-k4-bits32"]
    transcript = run_round(config, seed=1, drop_after=drops)
    u1 = sorted(transcript.client_messages[1])
    u2 = sorted(transcript.client_messages[3])
    u3 = sorted(transcript.client_messages[5])
    assert len(u1) == 12 and len(u2) == 11 and len(u3) == 10
    recipients = {len(spec_decode(data)[1]["encrypted_shares"]) for data in transcript.client_messages[3].values()}
    assert recipients == {4}
