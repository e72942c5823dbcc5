"""Run this bank's side of one round against a server, resuming after a crash.

:func:`run_round` is the library call behind ``secagg client run``. In order:

1. fetch the round's description and check it against the local policy
   (:meth:`clients.runtime.policy.ClientPolicy.check`) — a refusal here sends nothing;
2. open or create the round state file (:mod:`clients.runtime.state`) — a new one gets a
   fresh 256-bit seed from the OS CSPRNG and is written before the first message;
3. build :class:`secagg.client.ClientSession` over ``DeterministicRandom(seed)`` and
   replay the recorded server messages, checking every regenerated message against
   its recorded hash;
4. loop: record the hash of the next message (write-ahead), send it (idempotent,
   retried on transient failures), poll for the server's answer, record it, let the
   session answer it. Every refusal of the core aborts with its named reason.
5. when the round ends, replace the state file by a tombstone.

Nothing here touches HTTP; see :class:`clients.runtime.transport.RoundTransport`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from clients.runtime.errors import (
    ClientRefusedRound,
    ExcludedFromRound,
    InputFileError,
    PolicyViolation,
    PolicyViolationReason,
    ResumeRefused,
    RoundAbortedByServer,
    ServerUnavailable,
)
from clients.runtime.inputs import ClientInput
from clients.runtime.policy import ClientPolicy
from clients.runtime.retry import PollSchedule
from clients.runtime.state import RoundState, StateStore, require_resumable, sha256
from clients.runtime.transport import (
    Accepted,
    Delivered,
    Excluded,
    Pending,
    RoundAborted,
    RoundCompleted,
    RoundResult,
    RoundTransport,
)
from secagg.client import ClientSession
from secagg.errors import AbortReason, EncodingError, ProtocolAbort, SessionAborted
from secagg.hazmat.keys import InvalidPublicKey, SigningKey
from secagg.hazmat.randomness import SEED_BYTES, DeterministicRandom, RandomSource, SystemRandom
from secagg.messages import ROUND_OF_CLIENT_MESSAGE, encode, peek_type
from secagg.rounds import Round
from secagg.server.stages import ServerStage

_ABORT_REASONS = frozenset(reason.value for reason in AbortReason)
INTERNAL_ERROR = "internal-error"


def refusal_of_raw_error(error: Exception) -> tuple[str, str]:
    """(reason, detail) for an exception other than ProtocolAbort raised by the core on a
    server message: an invalid X25519 key (small order, wrong length) is the named
    ``invalid-public-key``; anything else is ``internal-error`` with the exception's type."""
    if isinstance(error, InvalidPublicKey):
        return AbortReason.INVALID_PUBLIC_KEY.value, f"a public key in the server's message is unusable: {error}"
    return INTERNAL_ERROR, f"the protocol session failed on the server's message ({type(error).__name__}: {error})"


def protocol_round_of(payload: bytes) -> Round:
    """The round a client message belongs to (honest-but-curious mode skips R3)."""
    return ROUND_OF_CLIENT_MESSAGE[peek_type(payload)]


class EventKind(str, Enum):
    POLICY_ACCEPTED = "policy-accepted"
    RESUMED = "resumed"
    SENT = "sent"
    WAITING = "waiting"
    RECEIVED = "received"
    FINISHED = "finished"


@dataclass(frozen=True, slots=True)
class RoundEvent:
    """Progress of the round, for display (no secrets, no vectors)."""

    kind: EventKind
    protocol_round: Round | None = None
    detail: str = ""


class Outcome(str, Enum):
    COMPLETED = "completed"
    COMPLETED_WITHOUT_THIS_CLIENT = "completed-without-this-client"


@dataclass(frozen=True, slots=True)
class RoundOutcome:
    """How the round ended for this client (refusals and aborts raise instead)."""

    round_id: str
    participant_id: int
    outcome: Outcome
    resumed: bool
    messages_sent: int
    bytes_sent: int
    state_file: Path
    result: RoundResult | None = None
    compute_seconds: dict[str, float] = field(default_factory=dict)
    """Time spent in this client's own protocol computation (encoding included), by round."""


def run_round(
    *,
    transport: RoundTransport,
    round_id: str,
    identity: SigningKey,
    client_input: ClientInput,
    policy: ClientPolicy,
    state_dir: Path,
    participant_id: str | None = None,
    poll: PollSchedule = PollSchedule(),
    on_event: Callable[[RoundEvent], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    seed_source: RandomSource | None = None,
    wait_for_result: bool = True,
    before_release: Callable[[], None] | None = None,
) -> RoundOutcome:
    """Run (or resume) this client's side of round ``round_id``; see the module docstring.

    ``participant_id`` is this client's enrolled id; when given, the cohort must list
    it at the index where this client's identity key is. ``seed_source`` draws the
    state file's seeds (the OS CSPRNG unless a test injects one).

    ``before_release`` is called before every submission of this client's masked input
    (R2), the first message that depends on its data; it must be idempotent (a resumed
    client calls it again before re-sending the same bytes). A bank charges its privacy
    budget there (docs/LEDGER.md section 9.3); if it raises, nothing is sent.
    """
    emit = on_event or (lambda event: None)
    description = transport.describe_round(round_id)
    config = description.config
    position = policy.check(description, identity_public_key=identity.public_bytes, participant_id=participant_id)
    emit(RoundEvent(EventKind.POLICY_ACCEPTED, detail=f"participant {position} of {config.participant_count}"))

    store = StateStore(state_dir)
    input_digest = client_input.digest()
    state = store.load(round_id, identity.public_bytes)
    resumed = state is not None
    if state is None:
        seeds = seed_source if seed_source is not None else SystemRandom()
        state = RoundState(
            server=transport.endpoint,
            round_id=round_id,
            participant_id=position,
            identity_public_key=identity.public_bytes,
            config_digest=config.digest(),
            input_sha256=input_digest,
            seed=seeds.random_bytes(SEED_BYTES),
            encoding_seed=seeds.random_bytes(SEED_BYTES),
        )
    else:
        require_resumable(
            state, server=transport.endpoint, participant_id=position, config_digest=config.digest(), input_sha256=input_digest
        )
    state_path = store.path_for(round_id, identity.public_bytes)
    if not description.is_open:
        if not resumed:
            raise PolicyViolation(PolicyViolationReason.ROUND_NOT_OPEN, f"round {round_id} is {description.status}")
        return _finish_closed_round(
            transport, store, state, position, description.status, poll, sleep, clock, emit, state_path, resumed=True
        )

    encoded = client_input.encode(config, DeterministicRandom(state.encoding_seed))
    try:
        session = ClientSession(config, position, identity, encoded, source=DeterministicRandom(state.seed))
    except EncodingError as exc:
        raise InputFileError(str(exc)) from None
    compute_seconds: dict[str, float] = {}
    started = time.perf_counter()
    outgoing = encode(session.start())
    outgoing = _replay(session, state, outgoing)
    compute_seconds[protocol_round_of(outgoing).value] = time.perf_counter() - started
    index = len(state.received)
    if len(state.sent_sha256) == index:
        state.sent_sha256.append(sha256(outgoing))
    elif state.sent_sha256[index] != sha256(outgoing):
        raise ResumeRefused(
            f"the regenerated {protocol_round_of(outgoing).value} message differs from the one recorded; refusing to send it"
        )
    store.save(state)
    if resumed:
        emit(RoundEvent(EventKind.RESUMED, protocol_round_of(outgoing), f"after {index} server message(s)"))

    messages_sent = 0
    bytes_sent = 0
    while True:
        protocol_round = protocol_round_of(outgoing)
        if protocol_round is Round.MASKED_INPUT_COLLECTION and before_release is not None:
            before_release()
        # StageClosed: the stage closed before this message arrived, or (after a crash) the server
        # already holds it and moved on. Either way the next poll tells: the next request, or excluded.
        submitted = transport.submit(round_id, protocol_round, outgoing)
        if isinstance(submitted, Accepted) and not submitted.already_accepted:
            messages_sent += 1
            bytes_sent += len(outgoing)
        emit(RoundEvent(EventKind.SENT, protocol_round, f"{len(outgoing)} bytes"))
        if protocol_round is Round.UNMASKING and isinstance(submitted, Accepted):
            store.finish(state, Outcome.COMPLETED.value)
            result = _await_result(transport, round_id, poll, sleep, clock, emit) if wait_for_result else None
            emit(RoundEvent(EventKind.FINISHED, protocol_round, Outcome.COMPLETED.value))
            return RoundOutcome(
                round_id, position, Outcome.COMPLETED, resumed, messages_sent, bytes_sent, state_path, result, compute_seconds
            )
        delivery = (
            submitted
            if isinstance(submitted, (Excluded, RoundAborted))
            else _await_answer(transport, round_id, protocol_round, poll, sleep, clock, emit)
        )
        if isinstance(delivery, RoundAborted):
            session.abort()
            store.finish(state, f"aborted-by-server: {delivery.reason}")
            raise RoundAbortedByServer(delivery.reason)
        if isinstance(delivery, Excluded):
            session.abort(AbortReason.EXCLUDED, "left out by the server")
            store.finish(state, "excluded")
            raise ExcludedFromRound(f"the server left this client out of the round after its {protocol_round.key} message")
        if isinstance(delivery, RoundCompleted):
            return _finish_closed_round(
                transport, store, state, position, "completed", poll, sleep, clock, emit, state_path,
                resumed=resumed, messages_sent=messages_sent, bytes_sent=bytes_sent, compute_seconds=compute_seconds,
                wait_for_result=wait_for_result,
            )  # fmt: skip
        emit(RoundEvent(EventKind.RECEIVED, protocol_round, f"{len(delivery.payload)} bytes"))
        started = time.perf_counter()
        try:
            reply = encode(session.receive_bytes(delivery.payload))
        except ProtocolAbort as refusal:
            store.finish(state, f"refused: {refusal.reason.value}")
            raise ClientRefusedRound(refusal.reason.value, refusal.detail) from None
        except Exception as error:
            # The core refuses by raising ProtocolAbort; anything else it raises on a server
            # message is still a refusal of that message, never a usage error: abort the
            # session, write the tombstone (a rerun must not meet the same message again).
            reason, detail = refusal_of_raw_error(error)
            session.abort(AbortReason(reason) if reason in _ABORT_REASONS else AbortReason.MALFORMED_MESSAGE, detail)
            store.finish(state, f"refused: {reason}")
            raise ClientRefusedRound(reason, detail) from None
        compute_seconds[protocol_round_of(reply).value] = time.perf_counter() - started
        state.received.append(bytes(delivery.payload))
        state.sent_sha256.append(sha256(reply))
        store.save(state)
        outgoing = reply


def _finish_closed_round(
    transport: RoundTransport,
    store: StateStore,
    state: RoundState,
    position: int,
    status: str,
    poll: PollSchedule,
    sleep: Callable[[float], None],
    clock: Callable[[], float],
    emit: Callable[[RoundEvent], None],
    state_path: Path,
    *,
    resumed: bool,
    messages_sent: int = 0,
    bytes_sent: int = 0,
    compute_seconds: dict[str, float] | None = None,
    wait_for_result: bool = True,
) -> RoundOutcome:
    """The round ended while this client waited or was down: record the outcome, send nothing more.

    Whether this client's input is in the sum is decided by U3 (the survivors of
    R2), which the result names; without the result the outcome is counted as
    without this client.
    """
    if status not in (ServerStage.COMPLETED.value, ServerStage.MASK_EXPANSION.value):
        store.finish(state, f"aborted-by-server: {status}")
        raise RoundAbortedByServer(status)
    result = _await_result(transport, state.round_id, poll, sleep, clock, emit) if wait_for_result else None
    included = result is not None and position in result.survivors
    outcome = Outcome.COMPLETED if included else Outcome.COMPLETED_WITHOUT_THIS_CLIENT
    store.finish(state, outcome.value)
    emit(RoundEvent(EventKind.FINISHED, None, outcome.value))
    return RoundOutcome(
        state.round_id, position, outcome, resumed, messages_sent, bytes_sent, state_path, result, dict(compute_seconds or {})
    )


def _replay(session: ClientSession, state: RoundState, first_message: bytes) -> bytes:
    """Feed the recorded server messages to a fresh session; return the message to send next."""
    outgoing = first_message
    for index, recorded in enumerate(state.received):
        if sha256(outgoing) != state.sent_sha256[index]:
            raise ResumeRefused(
                f"the regenerated {protocol_round_of(outgoing).value} message differs from the one sent before the crash; "
                "refusing to resume"
            )
        try:
            outgoing = encode(session.receive_bytes(recorded))
        except (ProtocolAbort, SessionAborted) as exc:
            raise ResumeRefused(f"replaying the recorded server message {index + 1} failed: {exc}") from None
        except Exception as error:
            reason, detail = refusal_of_raw_error(error)
            raise ResumeRefused(f"replaying the recorded server message {index + 1} failed: {reason}: {detail}") from None
    return outgoing


def _await_answer(
    transport: RoundTransport,
    round_id: str,
    protocol_round: Round,
    poll: PollSchedule,
    sleep: Callable[[float], None],
    clock: Callable[[], float],
    emit: Callable[[RoundEvent], None],
) -> Delivered | Excluded | RoundAborted | RoundCompleted:
    deadline = clock() + poll.timeout
    polls = 0
    while True:
        delivery = transport.fetch(round_id, protocol_round)
        if not isinstance(delivery, Pending):
            return delivery
        if polls == 0:
            emit(RoundEvent(EventKind.WAITING, protocol_round, "waiting for the other participants"))
        if clock() >= deadline:
            raise ServerUnavailable(
                f"no answer to this client's {protocol_round.key} message within {poll.timeout:g} s; "
                "the state file is kept: run again to resume"
            )
        if not delivery.long_polled:
            sleep(poll.interval(polls, delivery.retry_after))
        polls += 1


def _await_result(
    transport: RoundTransport,
    round_id: str,
    poll: PollSchedule,
    sleep: Callable[[float], None],
    clock: Callable[[], float],
    emit: Callable[[RoundEvent], None],
) -> RoundResult | None:
    """The round's sum once the server completes it (None if it aborted after this client's last message)."""
    deadline = clock() + poll.timeout
    polls = 0
    while True:
        delivery = transport.fetch_result(round_id)
        if isinstance(delivery, RoundResult):
            return delivery
        if isinstance(delivery, RoundAborted):
            raise RoundAbortedByServer(delivery.reason)
        if polls == 0:
            emit(RoundEvent(EventKind.WAITING, Round.UNMASKING, "waiting for the result"))
        if clock() >= deadline:
            raise ServerUnavailable(f"no result within {poll.timeout:g} s after this client's last message")
        if not delivery.long_polled:
            sleep(poll.interval(polls, delivery.retry_after))
        polls += 1
