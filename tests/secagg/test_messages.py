"""Wire encoding of the protocol messages (secagg/messages.py, version 1).

Known answers: ``vectors/messages_v1.json`` holds one frozen encoding per message
type, assembled field by field from the format documented in the module docstring.
Round trips are checked with hypothesis, and every decoding refusal (truncation,
trailing bytes, bad magic, unknown version or type, oversize lists, ring bits out
of range, vector elements outside Z_2^b) raises :class:`MalformedMessage`.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secagg.encoding import Ring
from secagg.errors import MalformedMessage
from secagg.messages import (
    HEADER_BYTES,
    MAX_CIPHERTEXT_BYTES,
    MAX_LIST_LENGTH,
    AdvertiseKeys,
    ConsistencyCheck,
    ConsistencyCheckRequest,
    EncryptedShares,
    KeyList,
    MaskedInput,
    MaskedInputRequest,
    MessageType,
    RevealedShare,
    ShareKeys,
    SignedSurvivors,
    UnmaskingRequest,
    UnmaskingShares,
    decode,
    encode,
    masked_input_size,
    peek_type,
)
from tests.secagg.kat import load_vectors, vector_ids

MESSAGE_VECTORS = load_vectors("messages_v1.json")
SESSION = bytes(range(0x20, 0x40))


def _hex(value: str) -> bytes:
    return bytes.fromhex(value)


def _advertise(fields: dict[str, Any]) -> AdvertiseKeys:
    return AdvertiseKeys(
        config_digest=_hex(fields["config_digest"]),
        sender=fields["sender"],
        encryption_public_key=_hex(fields["encryption_public_key"]),
        masking_public_key=_hex(fields["masking_public_key"]),
        signature=_hex(fields["signature"]),
    )


def _revealed(items: list[dict[str, Any]]) -> tuple[RevealedShare, ...]:
    return tuple(RevealedShare(owner=item["owner"], share=_hex(item["share"])) for item in items)


def build_message(type_name: str, fields: dict[str, Any]) -> Any:
    """The message a vector's ``fields`` describe (the JSON mirrors the dataclass fields)."""
    if type_name == "AdvertiseKeys":
        return _advertise(fields)
    if type_name == "KeyList":
        return KeyList(config_digest=_hex(fields["config_digest"]), entries=tuple(_advertise(e) for e in fields["entries"]))
    if type_name == "ShareKeys":
        return ShareKeys(
            session_id=_hex(fields["session_id"]),
            sender=fields["sender"],
            self_mask_commitment=_hex(fields["self_mask_commitment"]),
            encrypted_shares=tuple(
                EncryptedShares(sender=fields["sender"], recipient=item["recipient"], ciphertext=_hex(item["ciphertext"]))
                for item in fields["encrypted_shares"]
            ),
        )
    if type_name == "MaskedInputRequest":
        return MaskedInputRequest(
            session_id=_hex(fields["session_id"]),
            recipient=fields["recipient"],
            survivors=tuple(fields["survivors"]),
            encrypted_shares=tuple(
                EncryptedShares(sender=item["sender"], recipient=fields["recipient"], ciphertext=_hex(item["ciphertext"]))
                for item in fields["encrypted_shares"]
            ),
        )
    if type_name == "MaskedInput":
        ring = Ring(fields["bits"])
        return MaskedInput(
            session_id=_hex(fields["session_id"]),
            sender=fields["sender"],
            bits=fields["bits"],
            masked_vector=np.array(fields["masked_vector"], dtype=ring.dtype.newbyteorder("=")),
        )
    if type_name == "ConsistencyCheckRequest":
        return ConsistencyCheckRequest(session_id=_hex(fields["session_id"]), survivors=tuple(fields["survivors"]))
    if type_name == "ConsistencyCheck":
        return ConsistencyCheck(
            session_id=_hex(fields["session_id"]), sender=fields["sender"], signature=_hex(fields["signature"])
        )
    if type_name == "UnmaskingRequest":
        return UnmaskingRequest(
            session_id=_hex(fields["session_id"]),
            survivors=tuple(fields["survivors"]),
            dropped=tuple(fields["dropped"]),
            signatures=tuple(SignedSurvivors(signer=s["signer"], signature=_hex(s["signature"])) for s in fields["signatures"]),
        )
    if type_name == "UnmaskingShares":
        return UnmaskingShares(
            session_id=_hex(fields["session_id"]),
            sender=fields["sender"],
            masking_key_shares=_revealed(fields["masking_key_shares"]),
            self_mask_shares=_revealed(fields["self_mask_shares"]),
        )
    raise AssertionError(f"no builder for {type_name}")


def wire_bytes(vector: dict[str, Any]) -> bytes:
    return b"".join(bytes.fromhex(piece) for _label, piece in vector["wire"])


def assert_same_message(decoded: Any, expected: Any) -> None:
    """Equality, field by field for MaskedInput (its numpy field makes it eq=False)."""
    assert type(decoded) is type(expected)
    if isinstance(expected, MaskedInput):
        assert (decoded.session_id, decoded.sender, decoded.bits) == (expected.session_id, expected.sender, expected.bits)
        assert decoded.masked_vector.dtype == expected.masked_vector.dtype
        assert np.array_equal(decoded.masked_vector, expected.masked_vector)
    else:
        assert decoded == expected


# --- known answers -------------------------------------------------------------------------


def test_vectors_cover_every_message_type() -> None:
    covered = {MessageType(int(vector["wire"][2][1], 16)) for vector in MESSAGE_VECTORS}
    assert covered == set(MessageType)


@pytest.mark.parametrize("vector", MESSAGE_VECTORS, ids=vector_ids(MESSAGE_VECTORS))
def test_encode_produces_the_documented_wire_bytes(vector: dict[str, Any]) -> None:
    message = build_message(vector["type"], vector["fields"])
    assert encode(message).hex() == wire_bytes(vector).hex()


@pytest.mark.parametrize("vector", MESSAGE_VECTORS, ids=vector_ids(MESSAGE_VECTORS))
def test_decode_of_the_documented_wire_bytes_gives_the_message(vector: dict[str, Any]) -> None:
    expected = build_message(vector["type"], vector["fields"])
    assert_same_message(decode(wire_bytes(vector)), expected)
    assert_same_message(decode(wire_bytes(vector), type(expected)), expected)
    assert peek_type(wire_bytes(vector)) is expected.message_type


@pytest.mark.parametrize("vector", MESSAGE_VECTORS, ids=vector_ids(MESSAGE_VECTORS))
def test_every_strict_prefix_of_a_message_is_refused_as_malformed(vector: dict[str, Any]) -> None:
    data = wire_bytes(vector)
    for length in range(len(data)):
        with pytest.raises(MalformedMessage):
            decode(data[:length])


@pytest.mark.parametrize("vector", MESSAGE_VECTORS, ids=vector_ids(MESSAGE_VECTORS))
def test_a_trailing_byte_is_refused_as_malformed(vector: dict[str, Any]) -> None:
    with pytest.raises(MalformedMessage, match="trailing"):
        decode(wire_bytes(vector) + b"\x00")


# --- header refusals -----------------------------------------------------------------------

CONSISTENCY_CHECK = encode(ConsistencyCheck(session_id=SESSION, sender=5, signature=bytes(64)))


@pytest.mark.parametrize("magic", [b"SAH", b"sag", b"\x00\x00\x00", b"GAS"])
def test_bad_magic_is_refused_as_malformed(magic: bytes) -> None:
    with pytest.raises(MalformedMessage, match="magic"):
        decode(magic + CONSISTENCY_CHECK[3:])


@pytest.mark.parametrize("version", [0, 2, 255])
def test_unknown_protocol_version_is_refused_as_malformed(version: int) -> None:
    data = CONSISTENCY_CHECK[:3] + bytes([version]) + CONSISTENCY_CHECK[4:]
    with pytest.raises(MalformedMessage, match="version"):
        decode(data)


@pytest.mark.parametrize("type_byte", [0, 10, 127, 255])
def test_unknown_message_type_is_refused_as_malformed(type_byte: int) -> None:
    data = CONSISTENCY_CHECK[:4] + bytes([type_byte]) + CONSISTENCY_CHECK[5:]
    with pytest.raises(MalformedMessage, match="unknown message type"):
        decode(data)


def test_decode_with_an_expected_type_refuses_another_type() -> None:
    with pytest.raises(MalformedMessage, match="expected AdvertiseKeys"):
        decode(CONSISTENCY_CHECK, AdvertiseKeys)


def test_a_message_shorter_than_its_header_is_refused_as_malformed() -> None:
    for length in range(HEADER_BYTES):
        with pytest.raises(MalformedMessage):
            peek_type(CONSISTENCY_CHECK[:length])


# --- list and blob limits ------------------------------------------------------------------


def _survivor_list_message(count: int) -> bytes:
    """A ConsistencyCheckRequest whose survivor list claims ``count`` items (none present)."""
    return b"SAG" + bytes([1, MessageType.CONSISTENCY_CHECK_REQUEST]) + SESSION + struct.pack(">I", count)


def test_a_list_count_above_the_limit_is_refused_before_reading_items() -> None:
    with pytest.raises(MalformedMessage, match=f"limit {MAX_LIST_LENGTH}"):
        decode(_survivor_list_message(MAX_LIST_LENGTH + 1))


def test_a_list_count_at_the_limit_is_read_as_items() -> None:
    data = _survivor_list_message(MAX_LIST_LENGTH) + np.arange(MAX_LIST_LENGTH, dtype=">u4").tobytes()
    assert decode(data).survivors == tuple(range(MAX_LIST_LENGTH))


def test_a_ciphertext_length_above_the_limit_is_refused() -> None:
    data = (
        b"SAG"
        + bytes([1, MessageType.SHARE_KEYS])
        + SESSION
        + struct.pack(">I", 2)
        + bytes(32)
        + struct.pack(">II", 1, 0)  # one ciphertext for recipient 0
        + struct.pack(">I", MAX_CIPHERTEXT_BYTES + 1)
        + bytes(MAX_CIPHERTEXT_BYTES + 1)
    )
    with pytest.raises(MalformedMessage, match=f"limit {MAX_CIPHERTEXT_BYTES}"):
        decode(data)


def test_encoding_a_ciphertext_above_the_limit_is_refused() -> None:
    message = ShareKeys(
        session_id=SESSION,
        sender=1,
        self_mask_commitment=bytes(32),
        encrypted_shares=(EncryptedShares(sender=1, recipient=0, ciphertext=bytes(MAX_CIPHERTEXT_BYTES + 1)),),
    )
    with pytest.raises(MalformedMessage):
        encode(message)


# --- vectors -------------------------------------------------------------------------------


def _masked_input_bytes(bits: int, count: int, payload: bytes) -> bytes:
    return b"SAG" + bytes([1, MessageType.MASKED_INPUT]) + SESSION + struct.pack(">IBI", 3, bits, count) + payload


@pytest.mark.parametrize("bits", [0, 1, 7, 65, 128, 255])
def test_ring_bits_outside_8_to_64_are_refused_as_malformed(bits: int) -> None:
    with pytest.raises(MalformedMessage, match="ring bits"):
        decode(_masked_input_bytes(bits, 1, bytes(8)))


@pytest.mark.parametrize("bits", [9, 13, 17, 31, 33, 63])
def test_vector_element_at_or_above_two_to_the_bits_is_refused_for_non_full_width_rings(bits: int) -> None:
    ring = Ring(bits)
    below = np.array([0, (1 << bits) - 1], dtype=ring.dtype)
    assert decode(_masked_input_bytes(bits, 2, below.tobytes())).masked_vector.tolist() == below.tolist()
    above = np.array([0, 1 << bits], dtype=ring.dtype)
    with pytest.raises(MalformedMessage, match="outside"):
        decode(_masked_input_bytes(bits, 2, above.tobytes()))


@pytest.mark.parametrize("bits", [8, 16, 32, 64])
def test_full_width_rings_accept_every_container_value(bits: int) -> None:
    ring = Ring(bits)
    values = np.array([0, (1 << bits) - 1], dtype=ring.dtype)
    assert decode(_masked_input_bytes(bits, 2, values.tobytes())).masked_vector.tolist() == values.tolist()


def test_vector_element_count_longer_than_the_payload_is_refused() -> None:
    with pytest.raises(MalformedMessage, match="truncated"):
        decode(_masked_input_bytes(32, 3, bytes(8)))


def test_encoding_a_vector_of_the_wrong_dtype_is_refused() -> None:
    message = MaskedInput(session_id=SESSION, sender=1, bits=32, masked_vector=np.zeros(4, dtype=np.uint64))
    with pytest.raises(MalformedMessage):
        encode(message)


@pytest.mark.parametrize("bits", [13, 31, 33])
def test_encoding_a_vector_with_elements_outside_the_ring_is_refused(bits: int) -> None:
    ring = Ring(bits)
    message = MaskedInput(session_id=SESSION, sender=1, bits=bits, masked_vector=np.array([0, 1 << bits], dtype=ring.dtype))
    with pytest.raises(MalformedMessage, match="outside"):
        encode(message)


def test_encoding_a_two_dimensional_vector_is_refused() -> None:
    message = MaskedInput(session_id=SESSION, sender=1, bits=32, masked_vector=np.zeros((2, 2), dtype=np.uint32))
    with pytest.raises(MalformedMessage):
        encode(message)


@pytest.mark.parametrize(
    "message",
    [
        AdvertiseKeys(
            config_digest=bytes(31), sender=0, encryption_public_key=bytes(32), masking_public_key=bytes(32), signature=bytes(64)
        ),
        ConsistencyCheck(session_id=SESSION, sender=1 << 32, signature=bytes(64)),
        ConsistencyCheck(session_id=SESSION, sender=-1, signature=bytes(64)),
        ConsistencyCheck(session_id=SESSION[:-1], sender=1, signature=bytes(64)),
        UnmaskingShares(
            session_id=SESSION, sender=1, masking_key_shares=(RevealedShare(owner=2, share=bytes(32)),), self_mask_shares=()
        ),
        ShareKeys(
            session_id=SESSION,
            sender=1,
            self_mask_commitment=bytes(32),
            encrypted_shares=(EncryptedShares(sender=2, recipient=0, ciphertext=b"x"),),
        ),
        MaskedInputRequest(
            session_id=SESSION,
            recipient=1,
            survivors=(1,),
            encrypted_shares=(EncryptedShares(sender=2, recipient=3, ciphertext=b"x"),),
        ),
    ],
    ids=["short-digest", "sender-2^32", "negative-sender", "short-session", "short-share", "foreign-sender", "foreign-recipient"],
)
def test_encoding_a_field_of_the_wrong_size_or_owner_is_refused_as_malformed(message: Any) -> None:
    with pytest.raises(MalformedMessage):
        encode(message)


def test_a_vector_decoded_from_bytes_is_a_read_only_view() -> None:
    vector = np.arange(5, dtype=np.uint32)
    decoded = decode(encode(MaskedInput(session_id=SESSION, sender=1, bits=32, masked_vector=vector)))
    assert not decoded.masked_vector.flags.writeable
    assert np.array_equal(decoded.masked_vector, vector)


def test_a_vector_decoded_from_a_bytearray_is_read_only() -> None:
    buffer = bytearray(encode(MaskedInput(session_id=SESSION, sender=1, bits=32, masked_vector=np.arange(5, dtype=np.uint32))))
    decoded = decode(buffer)
    assert not decoded.masked_vector.flags.writeable


@pytest.mark.parametrize("bits", [8, 13, 16, 17, 32, 33, 63, 64])
@pytest.mark.parametrize("dim", [0, 1, 7, 1000])
def test_masked_input_size_equals_the_encoded_length(bits: int, dim: int) -> None:
    ring = Ring(bits)
    message = MaskedInput(session_id=SESSION, sender=4, bits=bits, masked_vector=ring.zeros(dim))
    assert masked_input_size(dim, bits) == len(encode(message))


# --- round trips (hypothesis) --------------------------------------------------------------

ids_st = st.integers(min_value=0, max_value=(1 << 32) - 1)
small_id_lists = st.lists(ids_st, max_size=8).map(tuple)
digest_st = st.binary(min_size=32, max_size=32)
signature_st = st.binary(min_size=64, max_size=64)
share_st = st.binary(min_size=33, max_size=33)
ciphertext_st = st.binary(max_size=80)

advertise_st = st.builds(
    AdvertiseKeys,
    config_digest=digest_st,
    sender=ids_st,
    encryption_public_key=digest_st,
    masking_public_key=digest_st,
    signature=signature_st,
)


@st.composite
def share_keys_st(draw: st.DrawFn) -> ShareKeys:
    sender = draw(ids_st)
    items = draw(st.lists(st.tuples(ids_st, ciphertext_st), max_size=5))
    return ShareKeys(
        session_id=draw(digest_st),
        sender=sender,
        self_mask_commitment=draw(digest_st),
        encrypted_shares=tuple(EncryptedShares(sender=sender, recipient=r, ciphertext=c) for r, c in items),
    )


@st.composite
def masked_input_request_st(draw: st.DrawFn) -> MaskedInputRequest:
    recipient = draw(ids_st)
    items = draw(st.lists(st.tuples(ids_st, ciphertext_st), max_size=5))
    return MaskedInputRequest(
        session_id=draw(digest_st),
        recipient=recipient,
        survivors=draw(small_id_lists),
        encrypted_shares=tuple(EncryptedShares(sender=s, recipient=recipient, ciphertext=c) for s, c in items),
    )


@st.composite
def masked_input_st(draw: st.DrawFn) -> MaskedInput:
    bits = draw(st.integers(min_value=8, max_value=64))
    ring = Ring(bits)
    values = draw(st.lists(st.integers(min_value=0, max_value=ring.modulus - 1), max_size=20))
    return MaskedInput(
        session_id=draw(digest_st),
        sender=draw(ids_st),
        bits=bits,
        masked_vector=np.array(values, dtype=ring.dtype.newbyteorder("=")),
    )


revealed_st = st.builds(RevealedShare, owner=ids_st, share=share_st)
message_st = st.one_of(
    advertise_st,
    st.builds(KeyList, config_digest=digest_st, entries=st.lists(advertise_st, max_size=3).map(tuple)),
    share_keys_st(),
    masked_input_request_st(),
    masked_input_st(),
    st.builds(ConsistencyCheckRequest, session_id=digest_st, survivors=small_id_lists),
    st.builds(ConsistencyCheck, session_id=digest_st, sender=ids_st, signature=signature_st),
    st.builds(
        UnmaskingRequest,
        session_id=digest_st,
        survivors=small_id_lists,
        dropped=small_id_lists,
        signatures=st.lists(st.builds(SignedSurvivors, signer=ids_st, signature=signature_st), max_size=3).map(tuple),
    ),
    st.builds(
        UnmaskingShares,
        session_id=digest_st,
        sender=ids_st,
        masking_key_shares=st.lists(revealed_st, max_size=3).map(tuple),
        self_mask_shares=st.lists(revealed_st, max_size=3).map(tuple),
    ),
)


@settings(max_examples=150, deadline=None)
@given(message=message_st)
def test_decode_of_encode_is_the_identity_for_every_message_type(message: Any) -> None:
    data = encode(message)
    assert_same_message(decode(data), message)
    assert peek_type(data) is message.message_type
    assert encode(decode(data)) == data


@settings(max_examples=100, deadline=None)
@given(message=masked_input_st())
def test_masked_input_size_matches_every_encoded_masked_input(message: MaskedInput) -> None:
    assert masked_input_size(message.masked_vector.size, message.bits) == len(encode(message))


# --- fuzzing: decode never fails with anything but MalformedMessage ------------------------

WIRE_SAMPLES = [wire_bytes(vector) for vector in MESSAGE_VECTORS]


@st.composite
def mutated_wire(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(WIRE_SAMPLES)))
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        kind = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
        position = draw(st.integers(min_value=0, max_value=max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data[position] ^= 1 << draw(st.integers(min_value=0, max_value=7))
        elif kind == "set" and data:
            data[position] = draw(st.sampled_from([0x00, 0x01, 0x7F, 0x80, 0xFF]))
        elif kind == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete" and data:
            del data[position : position + draw(st.integers(min_value=1, max_value=8))]
        elif kind == "truncate":
            del data[position:]
    return bytes(data)


@settings(max_examples=200, deadline=None)
@given(data=st.one_of(mutated_wire(), st.binary(max_size=64)))
def test_decoding_arbitrary_or_mutated_bytes_either_succeeds_or_raises_malformed_message(data: bytes) -> None:
    """No other exception escapes (the HTTP layer maps MalformedMessage to a 4xx), and whatever decodes
    re-encodes to the same bytes: the encoding is canonical."""
    try:
        message = decode(data)
    except MalformedMessage:
        return
    assert encode(message) == data
