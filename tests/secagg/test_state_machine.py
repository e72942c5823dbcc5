"""State-machine properties (in the manner of h2): every (state, message) pair outside the
transition table aborts the client; the server refuses out-of-stage client messages
without changing; random message sequences never crash either side."""

from __future__ import annotations

import contextlib
from functools import lru_cache

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secagg.client import ClientStage
from secagg.client.session import TRANSITIONS
from secagg.config import ProtocolMode
from secagg.errors import AbortReason, MessageRejected, ProtocolAbort, SecAggError, SessionAborted
from secagg.messages import ConsistencyCheckRequest, KeyList, MaskedInputRequest, UnmaskingRequest
from secagg.server import ServerStage
from tests.secagg.harness import collect, deliver, make_round, start

SERVER_MESSAGE_TYPES = (KeyList, MaskedInputRequest, ConsistencyCheckRequest, UnmaskingRequest)
CLIENT_STAGES_REACHED_BY_SERVER_MESSAGES = 5  # NotStarted, after R0, R1, R2, R3 (then Completed)


@lru_cache(maxsize=1)
def _reference_messages():
    """One genuine message of every server type, addressed to client 0, from a real round."""
    round_ = make_round(5, seed=21)
    start(round_)
    found = {}
    while round_.server.stage is not ServerStage.COMPLETED:
        outbox = collect(round_)
        if 0 in outbox:
            found[type(outbox[0])] = outbox[0]
        deliver(round_, outbox)
    return found


def _client_in(steps: int):
    """A fresh client of the same round (seed 21) after ``steps`` legal transitions."""
    round_ = make_round(5, seed=21)
    start(round_)
    outboxes = []
    while round_.server.stage is not ServerStage.COMPLETED:
        outbox = collect(round_)
        outboxes.append(outbox)
        deliver(round_, outbox)
    client = make_round(5, seed=21).clients[0]
    if steps >= 1:
        client.start()
    for outbox in outboxes[: max(0, steps - 1)]:
        client.receive(outbox[0])
    return client


STATE_STEPS = range(0, 6)


@pytest.mark.parametrize("steps", STATE_STEPS)
@pytest.mark.parametrize("message_type", SERVER_MESSAGE_TYPES, ids=lambda t: t.__name__)
def test_any_message_the_state_does_not_expect_aborts_the_client(steps, message_type):
    client = _client_in(steps)
    message = _reference_messages()[message_type]
    if (type(client._state), message_type) in TRANSITIONS[client.config.mode]:
        reply = client.receive(message)
        assert reply is not None
        assert client.stage is not ClientStage.ABORTED
        return
    with pytest.raises(ProtocolAbort) as caught:
        client.receive(message)
    assert caught.value.reason in {AbortReason.UNEXPECTED_MESSAGE, AbortReason.PREMATURE_UNMASK_REQUEST}
    assert client.stage is ClientStage.ABORTED
    with pytest.raises(SessionAborted):
        client.receive(message)


def test_the_transition_tables_are_exactly_the_protocol_paths():
    def names(mode):
        return {(state.__name__, message.__name__) for state, message in TRANSITIONS[mode]}

    common = {("AwaitingKeyList", "KeyList"), ("AwaitingMaskedInputRequest", "MaskedInputRequest")}
    assert names(ProtocolMode.ACTIVE) == common | {
        ("AwaitingSurvivors", "ConsistencyCheckRequest"),
        ("AwaitingUnmaskingRequest", "UnmaskingRequest"),
    }
    assert names(ProtocolMode.HONEST_BUT_CURIOUS) == common | {("AwaitingSurvivors", "UnmaskingRequest")}


@settings(max_examples=40, deadline=None)
@given(st.lists(st.sampled_from(SERVER_MESSAGE_TYPES), min_size=1, max_size=6))
def test_random_message_sequences_follow_the_protocol_or_abort_cleanly(sequence):
    client = _client_in(1)
    messages = _reference_messages()
    for message_type in sequence:
        try:
            client.receive(messages[message_type])
        except (ProtocolAbort, SessionAborted):
            assert client.stage is ClientStage.ABORTED
        except SecAggError as unexpected:  # pragma: no cover - a failure message
            pytest.fail(f"unexpected error {unexpected!r}")


@settings(max_examples=40, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_crash_a_client(data):
    client = _client_in(1)
    try:
        client.receive_bytes(data)
    except ProtocolAbort as refusal:
        assert refusal.reason in {
            AbortReason.MALFORMED_MESSAGE,
            AbortReason.UNEXPECTED_MESSAGE,
            AbortReason.WRONG_SESSION,
            AbortReason.DUPLICATE_PARTICIPANT,
            AbortReason.UNKNOWN_PARTICIPANT,
            AbortReason.TOO_FEW_PARTICIPANTS,
            AbortReason.EXCLUDED,
            AbortReason.PREMATURE_UNMASK_REQUEST,
        }
    assert client.stage is ClientStage.ABORTED


@pytest.mark.parametrize("collecting", range(5))
def test_server_refuses_client_messages_of_other_stages_without_changing(collecting):
    pool = make_round(6, seed=33)
    start(pool)
    by_stage = {}
    while pool.server.stage is not ServerStage.COMPLETED:
        by_stage[pool.server.stage] = dict(pool.pending)
        deliver(pool, collect(pool))
    stages = list(by_stage)
    round_ = make_round(6, seed=33)
    start(round_)
    for _ in range(collecting):
        deliver(round_, collect(round_))
    server = round_.server
    assert server.stage is stages[collecting]
    before = (server.stage, server.responded, server.expected_senders)
    for stage, messages in by_stage.items():
        if stage is server.stage:
            continue
        with pytest.raises(MessageRejected):
            server.receive(messages[1])
    assert (server.stage, server.responded, server.expected_senders) == before


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=400))
def test_arbitrary_bytes_never_change_the_server(data):
    round_ = make_round(4, seed=3)
    start(round_)
    before = (round_.server.stage, round_.server.responded)
    with contextlib.suppress(MessageRejected):
        round_.server.receive_bytes(data)
    assert (round_.server.stage, round_.server.responded) == before
