"""Vectors in chunks: the layout, the seekable PRG and chunk-by-chunk unmasking.

The reference for every chunked computation is the whole-vector one it replaces:
``expand`` / ``accumulate_masks`` over the full vector, and the in-process
:class:`~secagg.server.ServerSession` that sums and unmasks by itself.
"""

from __future__ import annotations

import hashlib
import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secagg.chunks import (
    MASKED_INPUT_HEADER_BYTES,
    MIN_CHUNK_BYTES,
    ChunkLayout,
    MaskedInputHeader,
    split_masked_input,
    upload_digest,
)
from secagg.config import GraphKind, ProtocolMode
from secagg.errors import EncodingError, MalformedMessage, MessageRejected, RejectReason
from secagg.hazmat.prg import SignedSeed, accumulate_masks, accumulate_masks_range, expand, expand_range
from secagg.hazmat.randomness import DeterministicRandom
from secagg.messages import MaskedInput, encode
from secagg.protocol import pairwise_mask_sign
from secagg.server import ServerSession, ServerStage
from secagg.server.chunk_tasks import chunk_tasks, run_mask_chunk_task, unmask_chunk, unmasking_masks
from tests.secagg.harness import ROUND_NUMBER, collect, make_round, start

DTYPES = [np.uint8, np.uint16, np.uint32, np.uint64]


# --- the layout -----------------------------------------------------------------------------


def test_a_dimension_that_is_not_a_multiple_of_the_chunk_ends_with_a_short_chunk() -> None:
    layout = ChunkLayout(dim=1000, bits=32, chunk_bytes=1024)  # 256 elements per chunk
    assert layout.chunk_elements == 256
    assert layout.count == 4
    assert [layout.elements(k) for k in range(4)] == [(0, 256), (256, 512), (512, 768), (768, 1000)]
    assert [layout.size(k) for k in range(4)] == [1024, 1024, 1024, 928]
    assert sum(layout.size(k) for k in range(layout.count)) == layout.vector_bytes == 4000


def test_a_dimension_smaller_than_one_chunk_is_one_short_chunk() -> None:
    layout = ChunkLayout(dim=3, bits=64, chunk_bytes=4096)
    assert layout.count == 1
    assert layout.elements(0) == (0, 3)
    assert layout.size(0) == 24


def test_an_exact_multiple_has_no_empty_trailing_chunk() -> None:
    layout = ChunkLayout(dim=512, bits=16, chunk_bytes=1024)
    assert layout.count == 1
    assert layout.elements(0) == (0, 512)
    with pytest.raises(IndexError):
        layout.elements(1)


@pytest.mark.parametrize("chunk_bytes", [0, 64, MIN_CHUNK_BYTES + 8, (64 << 20) + 64, 1000])
def test_chunk_sizes_off_the_alignment_or_out_of_range_are_refused(chunk_bytes: int) -> None:
    with pytest.raises(EncodingError):
        ChunkLayout(dim=10, bits=32, chunk_bytes=chunk_bytes)


def test_split_gives_views_that_concatenate_to_the_vector() -> None:
    layout = ChunkLayout(dim=1000, bits=13, chunk_bytes=1024)
    data = bytes(range(256)) * 7 + bytes(208)
    pieces = layout.split(data)
    assert [len(piece) for piece in pieces] == [1024, 976]
    assert b"".join(bytes(piece) for piece in pieces) == data
    with pytest.raises(EncodingError):
        layout.split(data[:-1])


def test_a_masked_input_splits_into_its_header_and_chunks() -> None:
    vector = np.arange(1000, dtype=np.uint32)
    message = MaskedInput(session_id=bytes(range(32)), sender=7, bits=32, masked_vector=vector)
    payload = encode(message)
    header, pieces = split_masked_input(payload, 1024)
    assert header == MaskedInputHeader(session_id=bytes(range(32)), sender=7, bits=32, dim=1000)
    assert header.encode() == payload[:MASKED_INPUT_HEADER_BYTES]
    assert b"".join(bytes(piece) for piece in pieces) == vector.tobytes()


def test_a_header_of_another_message_type_or_version_is_malformed() -> None:
    header = MaskedInputHeader(session_id=bytes(32), sender=1, bits=32, dim=4).encode()
    for tampered in (header[:3] + b"\x02" + header[4:], header[:4] + b"\x03" + header[5:], header[:-1]):
        with pytest.raises(MalformedMessage):
            MaskedInputHeader.decode(tampered)


def test_the_upload_digest_is_the_formula_of_wire_md_section_17_1() -> None:
    header = MaskedInputHeader(session_id=bytes(range(32)), sender=3, bits=32, dim=600).encode()
    chunks = [bytes([k]) * 1024 for k in range(2)] + [bytes(352)]
    written = hashlib.sha256(
        b"secagg/v1" + b"/masked-input-upload/" + header + (1024).to_bytes(4, "big") + (3).to_bytes(4, "big")
        + b"".join(hashlib.sha256(chunk).digest() for chunk in chunks)
    ).digest()  # fmt: skip
    assert upload_digest(header, 1024, [hashlib.sha256(chunk).digest() for chunk in chunks]) == written


def test_the_upload_digest_binds_header_chunk_size_and_every_chunk_digest_in_order() -> None:
    header = MaskedInputHeader(session_id=bytes(32), sender=1, bits=32, dim=600).encode()
    digests = [hashlib.sha256(bytes([k])).digest() for k in range(3)]
    reference = upload_digest(header, 1024, digests)
    assert upload_digest(header, 1024, list(reversed(digests))) != reference
    assert upload_digest(header, 2048, digests) != reference
    assert upload_digest(header[:-1] + b"\x01", 1024, digests) != reference
    assert upload_digest(header, 1024, digests[:2]) != reference


# --- the seekable PRG -----------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    dtype=st.sampled_from(DTYPES),
    total=st.integers(min_value=1, max_value=3000),
    data=st.data(),
    seed=st.binary(min_size=32, max_size=32),
)
def test_expanding_a_range_equals_the_slice_of_the_whole_expansion(dtype, total, data, seed) -> None:
    start = data.draw(st.integers(min_value=0, max_value=total - 1))
    stop = data.draw(st.integers(min_value=start, max_value=total))
    whole = expand(seed, np.empty(total, dtype=dtype))
    part = expand_range(seed, np.empty(stop - start, dtype=dtype), start)
    np.testing.assert_array_equal(part, whole[start:stop])


@settings(max_examples=40, deadline=None)
@given(
    dtype=st.sampled_from(DTYPES),
    total=st.integers(min_value=1, max_value=5000),
    cuts=st.lists(st.integers(min_value=1, max_value=4999), max_size=6),
    signs=st.lists(st.sampled_from([1, -1]), min_size=1, max_size=4),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_accumulating_in_arbitrary_pieces_equals_accumulating_the_whole_vector(dtype, total, cuts, signs, seed) -> None:
    source = DeterministicRandom.from_int(seed)
    masks = [SignedSeed(source.random_bytes(32), sign) for sign in signs]
    start_vector = np.empty(total, dtype=dtype)
    source.fill(start_vector)
    whole = accumulate_masks(start_vector.copy(), masks)
    bounds = sorted({0, total, *(cut for cut in cuts if cut < total)})
    pieces = [accumulate_masks_range(start_vector[a:b].copy(), masks, a) for a, b in itertools.pairwise(bounds)]
    np.testing.assert_array_equal(np.concatenate(pieces), whole)


def test_ranges_across_the_keystream_block_size_are_exact() -> None:
    seed = bytes(range(32))
    total = 3 * (256 * 1024) // 4 + 5
    whole = expand(seed, np.empty(total, dtype=np.uint32))
    start = 256 * 1024 // 4 - 3
    part = expand_range(seed, np.empty(total - start, dtype=np.uint32), start)
    np.testing.assert_array_equal(part, whole[start:])


def test_negative_starts_and_bad_buffers_are_refused() -> None:
    with pytest.raises(ValueError):
        expand_range(bytes(32), np.empty(4, np.uint32), -1)
    with pytest.raises(ValueError):
        accumulate_masks_range(np.empty(4, np.int32), [SignedSeed(bytes(32), 1)], 0)
    with pytest.raises(ValueError):
        accumulate_masks_range(np.empty(4, np.uint32), [SignedSeed(bytes(31), 1)], 0)


# --- chunk-by-chunk unmasking of real rounds ----------------------------------------------------


def deferred_round(participants: int, dim: int, bits: int, drop_in_r2: set[int], **kwargs):
    """Run a round whose server stops in MASK_EXPANSION; return it and the sum of the masked inputs."""
    round_ = make_round(participants, dim=dim, bits=bits, **kwargs)
    round_.server = ServerSession(round_.config, sum_masked_inputs=False, expand_masks=False)
    ring = round_.config.ring
    masked_sum = ring.zeros(dim)
    start(round_)
    while round_.server.stage is not ServerStage.MASK_EXPANSION:
        if round_.server.stage is ServerStage.MASKED_INPUT_COLLECTION:
            for message in round_.pending.values():
                np.add(masked_sum, message.masked_vector, out=masked_sum)
        outbox = collect(round_)
        if round_.server.stage is ServerStage.MASK_EXPANSION:
            break
        stage_number = ROUND_NUMBER[round_.server.stage]
        for member, message in sorted(outbox.items()):
            if stage_number >= 2 and member in drop_in_r2:
                continue
            round_.pending[member] = round_.clients[member].receive(message)
    return round_, masked_sum


def in_process_result(participants: int, dim: int, bits: int, drop_in_r2: set[int], **kwargs) -> np.ndarray:
    from tests.secagg.harness import run

    outcome = run(make_round(participants, dim=dim, bits=bits, **kwargs), drop={2: drop_in_r2})
    assert outcome.completed
    return outcome.result


@pytest.mark.parametrize(
    ("bits", "dim", "chunk_bytes"),
    [
        (32, 1000, 1024),  # D not a multiple of the chunk
        (32, 100, 4096),  # D smaller than one chunk
        (13, 2049, 1024),  # a ring narrower than its container
        (64, 777, 1024),
        (8, 3000, 1024),
    ],
)
def test_chunk_by_chunk_unmasking_equals_the_whole_vector_unmasking(bits: int, dim: int, chunk_bytes: int) -> None:
    """Every mask kind: the survivors' self-masks, and the dropped clients' pairwise masks of both signs."""
    dropped = {1, 3}
    round_, masked_sum = deferred_round(7, dim, bits, dropped, seed=11)
    plan = round_.server.unmasking_plan
    masks = unmasking_masks(plan)
    survivors = round_.server.survivors
    assert survivors == frozenset(range(7)) - dropped
    self_masks = len(survivors)
    pairwise_signs = {-pairwise_mask_sign(peer, owner) for owner in dropped for peer in survivors}
    assert pairwise_signs == {1, -1}, "the dropped clients have surviving neighbours on both sides"
    assert len(masks) == self_masks + len(dropped) * len(survivors)
    assert [mask.sign for mask in masks[:self_masks]] == [-1] * self_masks

    layout = ChunkLayout(dim=dim, bits=bits, chunk_bytes=chunk_bytes)
    pieces = {}
    for task in reversed(chunk_tasks(layout, masks)):  # any order
        start_, stop = layout.elements(task.index)
        pieces[task.index] = unmask_chunk(masked_sum[start_:stop], run_mask_chunk_task(task), bits)
    chunked = np.concatenate([pieces[index] for index in range(layout.count)])

    whole = round_.config.ring.reduce(accumulate_masks(masked_sum.copy(), masks))
    np.testing.assert_array_equal(chunked, whole)
    np.testing.assert_array_equal(chunked, round_.expected_sum(survivors))
    np.testing.assert_array_equal(chunked, in_process_result(7, dim, bits, dropped, seed=11))


def test_chunked_unmasking_on_a_harary_graph_in_honest_but_curious_mode() -> None:
    dropped = {2}
    round_, masked_sum = deferred_round(
        8, 1500, 32, dropped, mode=ProtocolMode.HONEST_BUT_CURIOUS, graph=GraphKind.HARARY, degree=4, seed=5
    )
    masks = unmasking_masks(round_.server.unmasking_plan)
    layout = ChunkLayout(dim=1500, bits=32, chunk_bytes=1024)
    chunked = np.concatenate(
        [unmask_chunk(masked_sum[task.start : task.stop], run_mask_chunk_task(task), 32) for task in chunk_tasks(layout, masks)]
    )
    np.testing.assert_array_equal(chunked, round_.expected_sum(round_.server.survivors))


def test_a_task_run_twice_gives_the_same_bytes() -> None:
    round_, _ = deferred_round(5, 700, 32, {4}, seed=3)
    layout = ChunkLayout(dim=700, bits=32, chunk_bytes=1024)
    task = chunk_tasks(layout, unmasking_masks(round_.server.unmasking_plan), [1])[0]
    assert run_mask_chunk_task(task).tobytes() == run_mask_chunk_task(task).tobytes()


# --- the deferred session ---------------------------------------------------------------------


def test_a_deferred_session_accepts_headers_and_stops_in_mask_expansion() -> None:
    round_ = make_round(4, dim=50, seed=2)
    round_.server = ServerSession(round_.config, sum_masked_inputs=False, expand_masks=False)
    start(round_)
    while round_.server.stage is not ServerStage.MASK_EXPANSION:
        if round_.server.stage is ServerStage.MASKED_INPUT_COLLECTION:
            for member, message in sorted(round_.pending.items()):
                header = MaskedInputHeader(session_id=message.session_id, sender=member, bits=32, dim=50)
                round_.server.receive(header)
            round_.pending = {}
            outbox = round_.server.advance()
        else:
            outbox = collect(round_)
        for member, message in sorted(outbox.items()):
            round_.pending[member] = round_.clients[member].receive(message)
    assert round_.server.expected_senders == frozenset()
    assert not round_.server.stage_complete
    assert round_.server.unmasking_plan.survivors == frozenset(range(4))
    with pytest.raises(MessageRejected) as refused:
        round_.server.advance()
    assert refused.value.reason is RejectReason.WRONG_STAGE


def to_masked_input_collection(round_) -> bytes:
    start(round_)
    outbox = collect(round_)
    for member, message in outbox.items():
        round_.pending[member] = round_.clients[member].receive(message)
    collect(round_)
    assert round_.server.stage is ServerStage.MASKED_INPUT_COLLECTION
    return round_.server.session_id


def test_a_header_of_the_wrong_length_is_refused_and_changes_nothing() -> None:
    round_ = make_round(3, dim=10, seed=1)
    round_.server = ServerSession(round_.config, sum_masked_inputs=False, expand_masks=False)
    session_id = to_masked_input_collection(round_)
    with pytest.raises(MessageRejected) as refused:
        round_.server.receive(MaskedInputHeader(session_id=session_id, sender=0, bits=32, dim=11))
    assert refused.value.reason is RejectReason.WRONG_LENGTH
    assert round_.server.responded == frozenset()


def test_a_summing_session_refuses_headers() -> None:
    round_ = make_round(3, dim=10, seed=1)
    session_id = to_masked_input_collection(round_)
    with pytest.raises(MessageRejected) as refused:
        round_.server.receive(MaskedInputHeader(session_id=session_id, sender=0, bits=32, dim=10))
    assert refused.value.reason is RejectReason.MALFORMED
    assert round_.server.responded == frozenset()


def test_a_deferred_session_must_not_sum_and_has_no_plan_before_mask_expansion() -> None:
    round_ = make_round(3, dim=10, seed=1)
    with pytest.raises(ValueError):
        ServerSession(round_.config, expand_masks=False)
    deferred = ServerSession(round_.config, sum_masked_inputs=False, expand_masks=False)
    with pytest.raises(RuntimeError):
        deferred.unmasking_plan  # noqa: B018
