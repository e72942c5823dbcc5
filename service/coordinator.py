"""The durable shell around :class:`~secagg.server.ServerSession`: the database is the truth.

One :class:`Coordinator` per server process. For every running round it keeps, as a
cache, the round's :class:`ServerSession` together with the round's ``revision``; any
request that finds another revision in the database (another worker moved the round on,
or this process restarted) rebuilds the session by *replay*: a fresh session is fed the
accepted messages of each stage in acceptance order, with ``advance()`` between stages,
exactly as often as the database says stages were closed. The core session is
deterministic, so the replayed session is the one that was lost (``secagg.server.session``).

Masked inputs (R2) and memory: the session is built with ``sum_masked_inputs=False``
and the service keeps a **persisted running sum** in the round's row, updated in the
same transaction that records the submission (so each accepted input is added exactly
once: the submission's unique key and the sum commit or roll back together). Memory is
O(dim) per request and per round, storage is O(dim) per round instead of O(n·dim), and
no individual masked input ever rests on disk (data minimisation: a later leak of the
database cannot single one out). The process keeps the sum it last committed beside
its cached session, valid for the same revision only, so an upload does not read the
sum back: it writes the new sum once and commits. Replaying R2 needs only who
submitted: replay feeds each recorded sender a zero vector (accepted for the same
reasons the real one was: stage, membership, session id, length, ring), and the
persisted sum is handed to the session with :meth:`ServerSession.provide_masked_sum` just before R4 closes.

Note that a masked input's *contents* are never replayed: a wrong running sum would go
unnoticed by replay and yield a wrong result (never a leak). The sum's integrity rests
on the transaction that adds each input exactly once.

Write discipline: every accepted message commits (submission row, running sum,
revision) before the 2xx leaves, and the message that completes a stage commits
together with the stage's closing: the new stage, the outbound messages, the history
and, at the end, the result or the abort reason, all in one transaction under the
round's row lock (see :mod:`service.db`). Stages closed by a deadline or by an operator
commit the same way in their own transaction. A process killed at any point leaves the
state before or after each such transaction, and the next request or the background
task (which also runs once at start-up) picks up from there. After a round finishes,
its message bodies and relayed messages are deleted; who answered what and when stays.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, undefer

from secagg.config import PROTOCOL_VERSION, GraphKind, ProtocolMode, RoundConfig
from secagg.errors import AbortReason, ConfigurationError, MalformedMessage, MessageRejected, ProtocolAbort
from secagg.hazmat.keys import PUBLIC_KEY_BYTES, SIGNATURE_BYTES
from secagg.hazmat.randomness import RandomSource, SystemRandom
from secagg.hazmat.shamir import SHARE_BYTES
from secagg.messages import (
    HEADER_BYTES,
    MaskedInput,
    MessageType,
    decode,
    encode,
    masked_input_size,
    peek_type,
)
from secagg.protocol import SHARE_CIPHERTEXT_BYTES
from secagg.server import ServerSession, ServerStage
from service.db import Database, OutboundRow, ParticipantRow, RoundMemberRow, RoundRow, SubmissionRow
from service.ledger import RoundLedger, LedgerUnavailable, round_record, validate_privacy_policy
from service.metrics import ServiceMetrics
from service.problems import PROBLEM_OF_REJECT_REASON, ProblemType, ServiceProblem
from service.schemas import ParticipantRole, RoundCreate

LOGGER = logging.getLogger("secagg.service.coordinator")

STAGE_OF_MESSAGE_TYPE: dict[MessageType, ServerStage] = {
    MessageType.ADVERTISE_KEYS: ServerStage.ADVERTISE_KEYS,
    MessageType.SHARE_KEYS: ServerStage.SHARE_KEYS,
    MessageType.MASKED_INPUT: ServerStage.MASKED_INPUT_COLLECTION,
    MessageType.CONSISTENCY_CHECK: ServerStage.CONSISTENCY_CHECK,
    MessageType.UNMASKING_SHARES: ServerStage.UNMASKING,
}
"""The client messages and the stage each belongs to; every other type is refused."""

DEADLINE_KEY_OF_STAGE: dict[ServerStage, str] = {
    ServerStage.ADVERTISE_KEYS: "R0",
    ServerStage.SHARE_KEYS: "R1",
    ServerStage.MASKED_INPUT_COLLECTION: "R2",
    ServerStage.CONSISTENCY_CHECK: "R3",
    ServerStage.UNMASKING: "R4",
}
RUNNING_STAGES = tuple(DEADLINE_KEY_OF_STAGE)
ROUND_ID_BYTES = 16
MAX_DIM = 1 << 26
"""The largest vector a round may use: 2^26 elements of up to 8 bytes, a 512 MiB upload."""


@dataclass(frozen=True, slots=True)
class StoredParameters:
    """A round's fixed parameters as stored (canonical JSON in ``rounds.parameters``)."""

    round_id: str
    cohort_ids: tuple[str, ...]
    identity_keys: tuple[bytes, ...]
    threshold: int
    mode: ProtocolMode
    graph: GraphKind
    degree: int | None
    dim: int
    bits: int
    deadlines: dict[str, float]
    dp_policy: dict[str, Any]

    def config(self) -> RoundConfig:
        return RoundConfig(
            round_id=bytes.fromhex(self.round_id),
            identity_keys=self.identity_keys,
            threshold=self.threshold,
            dim=self.dim,
            bits=self.bits,
            mode=self.mode,
            graph=self.graph,
            degree=self.degree,
        )

    @property
    def max_message_bytes(self) -> int:
        return max_client_message_bytes(len(self.cohort_ids), self.dim, self.bits)

    def index_of(self, participant_id: str) -> int | None:
        """The participant's protocol index in this round, or None if not in the cohort."""
        try:
            return self.cohort_ids.index(participant_id)
        except ValueError:
            return None

    def deadline_for(self, stage: ServerStage) -> float:
        return float(self.deadlines[DEADLINE_KEY_OF_STAGE[stage]])

    def to_json(self) -> str:
        return json.dumps(
            {
                "round_id": self.round_id,
                "cohort": [{"id": pid, "public_key": key.hex()} for pid, key in zip(self.cohort_ids, self.identity_keys)],
                "threshold": self.threshold,
                "mode": self.mode.value,
                "graph": self.graph.value,
                "degree": self.degree,
                "dim": self.dim,
                "bits": self.bits,
                "deadlines": self.deadlines,
                "dp_policy": self.dp_policy,
            },
            sort_keys=True,
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str) -> "StoredParameters":
        raw = json.loads(text)
        return cls(
            round_id=raw["round_id"],
            cohort_ids=tuple(member["id"] for member in raw["cohort"]),
            identity_keys=tuple(bytes.fromhex(member["public_key"]) for member in raw["cohort"]),
            threshold=raw["threshold"],
            mode=ProtocolMode(raw["mode"]),
            graph=GraphKind(raw["graph"]),
            degree=raw["degree"],
            dim=raw["dim"],
            bits=raw["bits"],
            deadlines=raw["deadlines"],
            dp_policy=raw["dp_policy"],
        )

    def public_dict(self, row: RoundRow) -> dict[str, Any]:
        """The ``RoundParameters`` response body."""
        return {
            "round_id": self.round_id,
            "protocol_version": PROTOCOL_VERSION,
            "cohort": [
                {"index": index, "id": pid, "public_key": base64.b64encode(key).decode("ascii")}
                for index, (pid, key) in enumerate(zip(self.cohort_ids, self.identity_keys))
            ],
            "threshold": self.threshold,
            "mode": self.mode,
            "graph": self.graph,
            "degree": self.degree,
            "dim": self.dim,
            "bits": self.bits,
            "dp_policy": self.dp_policy,
            "deadlines": self.deadlines,
            "config_digest": self.config().digest().hex(),
            "max_message_bytes": self.max_message_bytes,
            "stage": row.stage,
            "stage_deadline": row.stage_deadline,
            "created_at": row.created_at,
        }


def max_client_message_bytes(participants: int, dim: int, bits: int) -> int:
    """The largest encoding any client message of this round can have (the body limit).

    The maximum over the five client messages (``secagg.messages``): AdvertiseKeys and
    ConsistencyCheck are fixed; ShareKeys carries at most one ciphertext per other
    member; UnmaskingShares at most one share per member; MaskedInput is exact
    (:func:`secagg.messages.masked_input_size`).
    """
    advertise = HEADER_BYTES + 32 + 4 + 2 * PUBLIC_KEY_BYTES + SIGNATURE_BYTES
    share_keys = HEADER_BYTES + 32 + 4 + 32 + 4 + participants * (4 + 4 + SHARE_CIPHERTEXT_BYTES)
    consistency = HEADER_BYTES + 32 + 4 + SIGNATURE_BYTES
    unmasking = HEADER_BYTES + 32 + 4 + 4 + 4 + participants * (4 + SHARE_BYTES)
    return max(advertise, share_keys, consistency, unmasking, masked_input_size(dim, bits))


@dataclass(slots=True)
class _CachedSession:
    """A round's session as of ``revision``; with the running sum of masked inputs as of the
    same revision when this process last wrote it (read-only; None: read it from the row)."""

    revision: int
    session: ServerSession
    masked_sum: np.ndarray | None = None


@dataclass(frozen=True, slots=True)
class Acceptance:
    round_id: str
    stage: ServerStage
    sender: int
    message_sha256: str
    already_accepted: bool


@dataclass(frozen=True, slots=True)
class OutboundMessage:
    stage: str
    message_type: str
    body: bytes


class Coordinator:
    """Runs rounds over the database; safe to use from many threads and many processes."""

    def __init__(
        self,
        database: Database,
        *,
        metrics: ServiceMetrics,
        ledger: RoundLedger | None,
        max_dim: int,
        clock: Callable[[], float] = time.time,
        source: RandomSource | None = None,
        on_round_changed: Callable[[str], None] | None = None,
    ) -> None:
        self.database = database
        self.metrics = metrics
        self.ledger = ledger
        self.max_dim = max_dim
        self.clock = clock
        self._source = source if source is not None else SystemRandom()
        self._on_round_changed = on_round_changed
        self._cache: dict[str, _CachedSession] = {}
        self._parameters: dict[str, StoredParameters] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()

    # ------------------------------------------------------------ participants
    def enroll(self, participant_id: str, public_key: bytes, role: ParticipantRole) -> ParticipantRow:
        if len(public_key) != PUBLIC_KEY_BYTES:
            raise ServiceProblem(ProblemType.VALIDATION_ERROR, "public_key must be 32 bytes (raw Ed25519)")
        try:
            with self.database.write() as session:
                clash = session.execute(
                    select(ParticipantRow).where((ParticipantRow.id == participant_id) | (ParticipantRow.public_key == public_key))
                ).first()
                if clash is not None:
                    raise ServiceProblem(ProblemType.PARTICIPANT_EXISTS, "this id or public key is already enrolled")
                row = ParticipantRow(id=participant_id, public_key=public_key, role=role.value, enrolled_at=self.clock(), revoked_at=None)
                session.add(row)
        except IntegrityError:
            raise ServiceProblem(ProblemType.PARTICIPANT_EXISTS, "this id or public key is already enrolled") from None
        LOGGER.info("participant_enrolled", extra={"participant": participant_id, "role": role.value})
        return row

    def revoke(self, participant_id: str) -> ParticipantRow:
        with self.database.write() as session:
            row = session.get(ParticipantRow, participant_id)
            if row is None:
                raise ServiceProblem(ProblemType.PARTICIPANT_NOT_FOUND, f"no participant {participant_id!r}")
            if row.revoked_at is None:
                row.revoked_at = self.clock()
        LOGGER.info("participant_revoked", extra={"participant": participant_id})
        return row

    def participants(self) -> list[ParticipantRow]:
        with self.database.read() as session:
            return list(session.execute(select(ParticipantRow).order_by(ParticipantRow.id)).scalars())

    def participant(self, participant_id: str) -> ParticipantRow | None:
        with self.database.read() as session:
            return session.get(ParticipantRow, participant_id)

    # ------------------------------------------------------------------ rounds
    def create_round(self, request: RoundCreate) -> str:
        if len(set(request.cohort)) != len(request.cohort):
            raise ServiceProblem(ProblemType.UNSAFE_ROUND, "the cohort lists a participant twice")
        if request.dim > self.max_dim:
            raise ServiceProblem(ProblemType.UNSAFE_ROUND, f"dim above this server's limit of {self.max_dim}")
        try:
            privacy = validate_privacy_policy([item.model_dump() for item in request.dp_policy.privacy])
        except ValueError as exc:
            raise ServiceProblem(ProblemType.UNSAFE_ROUND, str(exc)) from None
        dp_policy: dict[str, Any] = {"privacy": privacy}
        if request.dp_policy.notes is not None:
            dp_policy["notes"] = request.dp_policy.notes
        round_id = self._source.random_bytes(ROUND_ID_BYTES).hex()
        now = self.clock()
        with self.database.write() as session:
            rows = {
                row.id: row
                for row in session.execute(select(ParticipantRow).where(ParticipantRow.id.in_(request.cohort))).scalars()
            }
            for pid in request.cohort:
                row = rows.get(pid)
                if row is None:
                    raise ServiceProblem(ProblemType.UNSAFE_ROUND, f"cohort member {pid!r} is not enrolled")
                if row.revoked_at is not None:
                    raise ServiceProblem(ProblemType.UNSAFE_ROUND, f"cohort member {pid!r} is revoked")
                if row.role != ParticipantRole.BANK.value:
                    raise ServiceProblem(ProblemType.UNSAFE_ROUND, f"cohort member {pid!r} is not a bank")
            parameters = StoredParameters(
                round_id=round_id,
                cohort_ids=tuple(request.cohort),
                identity_keys=tuple(rows[pid].public_key for pid in request.cohort),
                threshold=request.threshold,
                mode=request.mode,
                graph=request.graph,
                degree=request.degree,
                dim=request.dim,
                bits=request.bits,
                deadlines=request.deadlines.model_dump(),
                dp_policy=dp_policy,
            )
            try:
                parameters.config()
            except ConfigurationError as exc:
                raise ServiceProblem(ProblemType.UNSAFE_ROUND, str(exc)) from None
            session.add(
                RoundRow(
                    id=round_id,
                    created_at=now,
                    parameters=parameters.to_json(),
                    stage=ServerStage.ADVERTISE_KEYS.value,
                    closed_stages=0,
                    revision=0,
                    stage_started_at=now,
                    stage_deadline=now + parameters.deadline_for(ServerStage.ADVERTISE_KEYS),
                    expected=json.dumps(list(range(len(request.cohort)))),
                    history="[]",
                    ledger_recorded=False,
                )
            )
            session.flush()
            for index, pid in enumerate(request.cohort):
                session.add(RoundMemberRow(round_id=round_id, index=index, participant_id=pid, public_key=rows[pid].public_key))
        LOGGER.info("round_created", extra={"round_id": round_id, "count": len(request.cohort)})
        return round_id

    def round_row(self, session: Session, round_id: str) -> RoundRow:
        row = session.get(RoundRow, round_id)
        if row is None:
            raise ServiceProblem(ProblemType.ROUND_NOT_FOUND, "no such round")
        return row

    def parameters(self, round_id: str) -> StoredParameters:
        """The round's fixed parameters (cached in process: they never change once created)."""
        cached = self._parameters.get(round_id)
        if cached is not None:
            return cached
        with self.database.read() as session:
            text = session.execute(select(RoundRow.parameters).where(RoundRow.id == round_id)).scalar_one_or_none()
        if text is None:
            raise ServiceProblem(ProblemType.ROUND_NOT_FOUND, "no such round")
        parameters = StoredParameters.from_json(text)
        self._parameters[round_id] = parameters
        return parameters

    def member_index(self, round_id: str, participant_id: str) -> int:
        index = self.parameters(round_id).index_of(participant_id)
        if index is None:
            raise ServiceProblem(ProblemType.NOT_IN_COHORT, "you are not in this round's cohort")
        return index

    def max_message_bytes(self, round_id: str) -> int:
        return self.parameters(round_id).max_message_bytes

    def responded(self, session: Session, round_id: str, stage: str) -> list[int]:
        return sorted(
            session.execute(
                select(SubmissionRow.sender).where(SubmissionRow.round_id == round_id, SubmissionRow.stage == stage)
            ).scalars()
        )

    # --------------------------------------------------------------- messages
    def accept(self, round_id: str, participant_id: str, body: bytes, *, body_sha256: str | None = None) -> Acceptance:
        """Validate and durably record one client message; raise ServiceProblem and change nothing otherwise.

        The acceptance and, when it completes the stage, the stage's closing commit in one
        transaction under the round's lock: there is no window in which a complete stage
        is left open. A message that arrives after its stage's deadline first lets the
        stage close (in its own transaction) and then meets the next stage.
        """
        try:
            message_type = peek_type(body)
        except MalformedMessage as exc:
            raise ServiceProblem(ProblemType.MALFORMED, str(exc)) from None
        stage = STAGE_OF_MESSAGE_TYPE.get(message_type)
        if stage is None:
            raise ServiceProblem(ProblemType.MALFORMED, f"{message_type.name} is not a client message")
        sender = self.member_index(round_id, participant_id)
        digest = body_sha256 if body_sha256 is not None else hashlib.sha256(body).hexdigest()
        outcome = self._accept_locked(round_id, stage, sender, body, digest)
        if outcome is None:  # the stage was overdue: close it, then judge the message again
            self.advance_if_due(round_id)
            outcome = self._accept_locked(round_id, stage, sender, body, digest, allow_overdue=True)
        assert outcome is not None
        acceptance, finished = outcome
        if not acceptance.already_accepted:
            self.metrics.messages_accepted.labels(stage.value).inc()
            self.metrics.bytes_in.labels(stage.value).inc(len(body))
            LOGGER.info("message_accepted", extra={"round_id": round_id, "stage": stage.value, "sender": sender, "size": len(body)})
        if finished:
            self.record_in_ledger(round_id)
        return acceptance

    def _accept_locked(
        self, round_id: str, stage: ServerStage, sender: int, body: bytes, digest: str, *, allow_overdue: bool = False
    ) -> tuple[Acceptance, bool] | None:
        """One locked attempt; None (and no change) if the round's stage is past its deadline."""
        parameters = self.parameters(round_id)
        with self._round_lock(round_id):
            try:
                with self.database.write() as session:
                    row = self.database.lock_round(session, round_id)
                    if row is None:
                        raise ServiceProblem(ProblemType.ROUND_NOT_FOUND, "no such round")
                    now = self.clock()
                    if not allow_overdue and row.outcome is None and row.stage_deadline is not None and now >= row.stage_deadline:
                        return None
                    previous = session.execute(
                        select(SubmissionRow.body_sha256).where(
                            SubmissionRow.round_id == round_id, SubmissionRow.stage == stage.value, SubmissionRow.sender == sender
                        )
                    ).scalar_one_or_none()
                    if previous is not None:
                        if previous == digest:
                            return Acceptance(round_id, stage, sender, digest, already_accepted=True), False
                        raise ServiceProblem(ProblemType.DUPLICATE_SUBMISSION, f"you already answered {stage.value} with another message")
                    if row.outcome == "aborted":
                        raise ServiceProblem(ProblemType.ROUND_ABORTED, "the round aborted", extra={"abort_reason": row.abort_reason})
                    if row.outcome == "completed":
                        raise ServiceProblem(ProblemType.WRONG_STAGE, "the round has completed")
                    try:
                        message = decode(body)
                    except MalformedMessage as exc:
                        raise ServiceProblem(ProblemType.MALFORMED, str(exc)) from None
                    if message.sender != sender:
                        raise ServiceProblem(ProblemType.SENDER_MISMATCH, f"the message's sender is {message.sender}, your index is {sender}")
                    server_session = self._session(session, row, parameters)
                    cached = self._cache.get(round_id)
                    known_sum = cached.masked_sum if cached is not None and cached.revision == row.revision else None
                    try:
                        server_session.receive(message)
                    except MessageRejected as exc:
                        raise ServiceProblem(PROBLEM_OF_REJECT_REASON[exc.reason], exc.detail) from None
                    # From here on the cached session is ahead of the database until the commit.
                    self._cache.pop(round_id, None)
                    session.add(
                        SubmissionRow(
                            round_id=round_id,
                            stage=stage.value,
                            sender=sender,
                            body=None if isinstance(message, MaskedInput) else body,
                            body_sha256=digest,
                            size=len(body),
                            received_at=now,
                        )
                    )
                    if isinstance(message, MaskedInput):
                        known_sum = self._add_to_masked_sum(session, row, server_session.config, message, known_sum)
                    row.revision += 1
                    finished = False
                    closed = server_session.stage_complete
                    if closed:
                        session.flush()
                        finished = self._close_stage(session, row, server_session, now)
                    session.flush()
                    revision = row.revision
                if not finished:
                    self._cache[round_id] = _CachedSession(revision, server_session, known_sum)
                if closed:
                    self._notify(round_id)
            except IntegrityError:
                self._cache.pop(round_id, None)
                raise ServiceProblem(ProblemType.DUPLICATE_SUBMISSION, f"you already answered {stage.value}") from None
            except BaseException:
                self._cache.pop(round_id, None)
                raise
        return Acceptance(round_id, stage, sender, digest, already_accepted=False), finished

    def _add_to_masked_sum(
        self, session: Session, row: RoundRow, config: RoundConfig, message: MaskedInput, known_sum: np.ndarray | None
    ) -> np.ndarray:
        """Set the row's running sum to the stored one plus ``message``'s vector; return the new sum (read-only).

        ``known_sum`` is the stored sum as this process last wrote it, valid for the row's
        current revision (the caller checked); without it the sum is read from the row.
        The new sum is a fresh array, so ``known_sum`` stays intact if the transaction
        rolls back (and the cache entry holding it is dropped then anyway).
        """
        ring = config.ring
        if known_sum is None:
            stored = session.execute(select(RoundRow.masked_sum).where(RoundRow.id == row.id)).scalar_one()
            known_sum = ring.zeros(config.dim) if stored is None else np.frombuffer(stored, dtype=ring.dtype)
        total = np.add(known_sum, message.masked_vector, dtype=ring.dtype)
        ring.reduce(total)
        total.setflags(write=False)
        row.masked_sum = total.tobytes()
        return total

    def message_for(self, round_id: str, participant_id: str, *, deadline_checked: bool = False) -> tuple[str, OutboundMessage | None]:
        """The round's current stage and the server message ``participant_id`` must answer in
        it, or None (nothing yet in R0, or already answered). One read in the usual case."""
        index = self.member_index(round_id, participant_id)
        with self.database.read() as session:
            stage, outcome, abort_reason, deadline = session.execute(
                select(RoundRow.stage, RoundRow.outcome, RoundRow.abort_reason, RoundRow.stage_deadline).where(RoundRow.id == round_id)
            ).one()
            overdue = outcome is None and deadline is not None and self.clock() >= deadline
            if not (overdue and not deadline_checked):
                return stage, self._message_in(session, round_id, index, stage, outcome, abort_reason)
        self.advance_if_due(round_id)  # the per-request deadline check, then look again
        return self.message_for(round_id, participant_id, deadline_checked=True)

    @staticmethod
    def _message_in(
        session: Session, round_id: str, index: int, stage: str, outcome: str | None, abort_reason: str | None
    ) -> OutboundMessage | None:
        if outcome == "aborted":
            raise ServiceProblem(ProblemType.ROUND_ABORTED, "the round aborted", extra={"abort_reason": abort_reason})
        if outcome == "completed":
            raise ServiceProblem(ProblemType.ROUND_COMPLETED, "the round has completed; fetch its result")
        if stage == ServerStage.ADVERTISE_KEYS.value:
            return None
        answered = session.execute(
            select(SubmissionRow.id).where(SubmissionRow.round_id == round_id, SubmissionRow.stage == stage, SubmissionRow.sender == index)
        ).first()
        if answered is not None:
            return None  # only members expected in this stage can have answered it
        outbound = session.execute(
            select(OutboundRow.message_type, OutboundRow.body).where(
                OutboundRow.round_id == round_id, OutboundRow.stage == stage, OutboundRow.recipient == index
            )
        ).one_or_none()
        if outbound is None:
            raise ServiceProblem(ProblemType.EXCLUDED, f"you are not among the recipients of {stage}")
        return OutboundMessage(stage=stage, message_type=outbound.message_type, body=outbound.body)

    def current_stage(self, round_id: str) -> str:
        with self.database.read() as session:
            return self.round_row(session, round_id).stage

    def result_for(self, round_id: str, participant_id: str) -> tuple[StoredParameters, bytes, str, list[int]]:
        self.advance_if_overdue(round_id)
        with self.database.read() as session:
            row = self.round_row(session, round_id)
            self.member_index(round_id, participant_id)
            if row.outcome == "aborted":
                raise ServiceProblem(ProblemType.ROUND_ABORTED, "the round aborted", extra={"abort_reason": row.abort_reason})
            if row.outcome != "completed":
                raise ServiceProblem(ProblemType.RESULT_NOT_READY, f"the round is in {row.stage}")
            result = session.execute(select(RoundRow.result).where(RoundRow.id == round_id)).scalar_one()
            assert result is not None and row.result_sha256 is not None
            return StoredParameters.from_json(row.parameters), result, row.result_sha256, json.loads(row.survivors or "[]")

    def work_for(self, participant_id: str) -> list[dict[str, Any]]:
        with self.database.read() as session:
            memberships = session.execute(
                select(RoundRow, RoundMemberRow.index)
                .join(RoundMemberRow, RoundMemberRow.round_id == RoundRow.id)
                .where(RoundMemberRow.participant_id == participant_id, RoundRow.outcome.is_(None))
                .order_by(RoundRow.created_at)
            ).all()
            items: list[dict[str, Any]] = []
            for row, index in memberships:
                answered = session.execute(
                    select(SubmissionRow.id).where(
                        SubmissionRow.round_id == row.id, SubmissionRow.stage == row.stage, SubmissionRow.sender == index
                    )
                ).first()
                if answered is not None:
                    continue
                if row.stage == ServerStage.ADVERTISE_KEYS.value:
                    action = "advertise-keys"
                else:
                    waiting = session.execute(
                        select(OutboundRow.recipient).where(
                            OutboundRow.round_id == row.id, OutboundRow.stage == row.stage, OutboundRow.recipient == index
                        )
                    ).first()
                    if waiting is None:
                        continue
                    action = "respond"
                items.append({"round_id": row.id, "stage": row.stage, "action": action, "stage_deadline": row.stage_deadline})
            return items

    # ------------------------------------------------------------ transitions
    def advance_if_overdue(self, round_id: str) -> None:
        """The per-request deadline check: close the stage if its deadline has passed."""
        with self.database.read() as session:
            found = session.execute(
                select(RoundRow.outcome, RoundRow.stage_deadline).where(RoundRow.id == round_id)
            ).one_or_none()
        overdue = found is not None and found.outcome is None and found.stage_deadline is not None and self.clock() >= found.stage_deadline
        if overdue:
            self.advance_if_due(round_id)

    def advance_if_due(self, round_id: str) -> bool:
        """Close the round's current stage if everyone expected answered or its deadline passed."""
        finished = False
        with self._round_lock(round_id):
            try:
                with self.database.write() as session:
                    row = self.database.lock_round(session, round_id)
                    if row is None or row.outcome is not None:
                        return False
                    now = self.clock()
                    expected = json.loads(row.expected)
                    answered = session.execute(
                        select(func.count()).select_from(SubmissionRow).where(
                            SubmissionRow.round_id == round_id, SubmissionRow.stage == row.stage
                        )
                    ).scalar_one()
                    overdue = row.stage_deadline is not None and now >= row.stage_deadline
                    if answered < len(expected) and not overdue:
                        return False
                    server_session = self._session(session, row, self.parameters(round_id))
                    self._cache.pop(round_id, None)
                    finished = self._close_stage(session, row, server_session, now)
                    session.flush()
                    revision = row.revision
                if not finished:
                    self._cache[round_id] = _CachedSession(revision, server_session)
            except BaseException:
                self._cache.pop(round_id, None)
                raise
        self._notify(round_id)
        if finished:
            self.record_in_ledger(round_id)
        return True

    def _close_stage(self, session: Session, row: RoundRow, server_session: ServerSession, now: float) -> bool:
        """Advance the session one stage and persist everything; True iff the round finished."""
        parameters = self.parameters(row.id)
        closing = server_session.stage
        if closing is ServerStage.UNMASKING:
            config = server_session.config
            stored = session.execute(select(RoundRow.masked_sum).where(RoundRow.id == row.id)).scalar_one()
            total = config.ring.zeros(config.dim) if stored is None else np.frombuffer(stored, dtype=config.ring.dtype).copy()
            server_session.provide_masked_sum(total)
        expected = json.loads(row.expected)
        self.metrics.stage_duration.labels(closing.value).observe(max(0.0, now - row.stage_started_at))
        try:
            outbox = server_session.advance()
        except ProtocolAbort as exc:
            self._record_history(row, server_session, now)
            self.metrics.dropouts.labels(closing.value).inc(len(expected) - len(server_session.history[-1].responded))
            self._finish(session, row, now, outcome="aborted", reason=exc.reason.value, detail=exc.detail)
            row.closed_stages += 1
            return True
        self._record_history(row, server_session, now)
        record = server_session.history[-1]
        self.metrics.dropouts.labels(closing.value).inc(len(record.expected) - len(record.responded))
        row.closed_stages += 1
        row.session_id = server_session.session_id
        if closing is ServerStage.MASKED_INPUT_COLLECTION:
            row.survivors = json.dumps(sorted(server_session.survivors))
        if server_session.stage is ServerStage.COMPLETED:
            result = server_session.result
            row.result = result.tobytes()
            row.result_sha256 = hashlib.sha256(row.result).hexdigest()
            self._finish(session, row, now, outcome="completed", reason=None, detail=None)
            return True
        opened = server_session.stage
        for recipient, message in sorted(outbox.items()):
            session.add(
                OutboundRow(
                    round_id=row.id, stage=opened.value, recipient=recipient, message_type=type(message).__name__, body=encode(message)
                )
            )
        row.stage = opened.value
        row.expected = json.dumps(sorted(server_session.expected_senders))
        row.stage_started_at = now
        row.stage_deadline = now + parameters.deadline_for(opened)
        row.revision += 1
        LOGGER.info(
            "stage_closed",
            extra={"round_id": row.id, "stage": closing.value, "responded": len(record.responded), "expected": len(record.expected)},
        )
        return False

    def _record_history(self, row: RoundRow, server_session: ServerSession, now: float) -> None:
        history = json.loads(row.history)
        record = server_session.history[-1]
        history.append(
            {"stage": record.stage.value, "expected": sorted(record.expected), "responded": sorted(record.responded), "closed_at": now}
        )
        row.history = json.dumps(history)

    def _finish(self, session: Session, row: RoundRow, now: float, *, outcome: str, reason: str | None, detail: str | None) -> None:
        """Record the outcome and drop what a finished round no longer needs (data minimisation):
        the running sum, the relayed messages and the bodies of the accepted messages
        (encrypted shares, revealed shares, signatures). Who answered which stage, when,
        and each message's size and SHA-256 stay, for the audit trail."""
        session.execute(update(SubmissionRow).where(SubmissionRow.round_id == row.id).values(body=None))
        session.execute(delete(OutboundRow).where(OutboundRow.round_id == row.id))
        row.stage = ServerStage.COMPLETED.value if outcome == "completed" else ServerStage.ABORTED.value
        row.outcome = outcome
        row.abort_reason = reason
        row.abort_detail = detail
        row.finished_at = now
        row.expected = "[]"
        row.stage_deadline = None
        row.masked_sum = None
        row.ledger_recorded = False
        row.revision += 1
        self.metrics.rounds_finished.labels(outcome, reason or "").inc()
        LOGGER.info("round_finished", extra={"round_id": row.id, "outcome": outcome, "reason": reason})

    def _lock_unfinished_round(self, session: Session, round_id: str) -> RoundRow:
        """The round's row under its lock, refusing an unknown or already finished round."""
        row = self.database.lock_round(session, round_id)
        if row is None:
            raise ServiceProblem(ProblemType.ROUND_NOT_FOUND, "no such round")
        if row.outcome is not None:
            raise ServiceProblem(ProblemType.ROUND_FINISHED, f"the round already {row.outcome}")
        return row

    def close_stage_now(self, round_id: str) -> None:
        """An operator closes the current stage before its deadline, with whoever answered
        (the round aborts if fewer than t did), e.g. when the missing banks are known to be down."""
        finished = False
        with self._round_lock(round_id):
            try:
                with self.database.write() as session:
                    row = self._lock_unfinished_round(session, round_id)
                    server_session = self._session(session, row, self.parameters(round_id))
                    self._cache.pop(round_id, None)
                    finished = self._close_stage(session, row, server_session, self.clock())
                    session.flush()
                    revision = row.revision
                if not finished:
                    self._cache[round_id] = _CachedSession(revision, server_session)
            except BaseException:
                self._cache.pop(round_id, None)
                raise
        LOGGER.info("stage_closed_by_operator", extra={"round_id": round_id})
        self._notify(round_id)
        if finished:
            self.record_in_ledger(round_id)

    def abort(self, round_id: str, detail: str) -> None:
        with self._round_lock(round_id):
            try:
                with self.database.write() as session:
                    row = self._lock_unfinished_round(session, round_id)
                    self._cache.pop(round_id, None)
                    self._finish(
                        session, row, self.clock(), outcome="aborted", reason=AbortReason.ABORTED_BY_SERVER.value, detail=detail
                    )
            finally:
                self._cache.pop(round_id, None)
        self._notify(round_id)
        self.record_in_ledger(round_id)

    # ------------------------------------------------------------------ replay
    def _session(self, session: Session, row: RoundRow, parameters: StoredParameters) -> ServerSession:
        cached = self._cache.get(row.id)
        if cached is not None and cached.revision == row.revision:
            return cached.session
        return self._replay(session, row, parameters)

    def _replay(self, session: Session, row: RoundRow, parameters: StoredParameters) -> ServerSession:
        """Rebuild the round's session from the database (see the module docstring)."""
        config = parameters.config()
        server_session = ServerSession(config, sum_masked_inputs=False)
        by_stage: dict[str, list[SubmissionRow]] = {}
        for submission in session.execute(
            select(SubmissionRow).options(undefer(SubmissionRow.body)).where(SubmissionRow.round_id == row.id).order_by(SubmissionRow.id)
        ).scalars():
            by_stage.setdefault(submission.stage, []).append(submission)
        placeholder = config.ring.zeros(config.dim)
        placeholder.setflags(write=False)
        for step in range(row.closed_stages + 1):
            stage = server_session.stage
            for submission in by_stage.get(stage.value, ()):
                if stage is ServerStage.MASKED_INPUT_COLLECTION:
                    assert server_session.session_id is not None
                    message: Any = MaskedInput(
                        session_id=server_session.session_id, sender=submission.sender, bits=config.bits, masked_vector=placeholder
                    )
                else:
                    assert submission.body is not None
                    message = decode(submission.body)
                server_session.receive(message)
            if step < row.closed_stages:
                server_session.advance()
        if server_session.stage.value != row.stage:
            raise RuntimeError(f"replay of round {row.id} reached {server_session.stage.value}, the database says {row.stage}")
        LOGGER.info("session_replayed", extra={"round_id": row.id, "stage": row.stage, "closed_stages": row.closed_stages})
        return server_session

    # ------------------------------------------------------------ background
    def tick(self) -> None:
        """One pass of the background task: close due stages, record finished rounds in the ledger."""
        now = self.clock()
        with self.database.read() as session:
            running = session.execute(
                select(RoundRow.id, RoundRow.stage, RoundRow.expected, RoundRow.stage_deadline).where(RoundRow.outcome.is_(None))
            ).all()
            due: list[str] = []
            for round_id, stage, expected, deadline in running:
                if deadline is not None and now >= deadline:
                    due.append(round_id)
                    continue
                answered = session.execute(
                    select(func.count()).select_from(SubmissionRow).where(SubmissionRow.round_id == round_id, SubmissionRow.stage == stage)
                ).scalar_one()
                if answered >= len(json.loads(expected)):
                    due.append(round_id)
            unrecorded = list(
                session.execute(select(RoundRow.id).where(RoundRow.outcome.is_not(None), RoundRow.ledger_recorded.is_(False))).scalars()
            )
        for round_id in due:
            self.advance_if_due(round_id)
        for round_id in unrecorded:
            self.record_in_ledger(round_id)

    def record_in_ledger(self, round_id: str) -> bool:
        """Append the finished round to the server ledger unless done; True iff recorded."""
        if self.ledger is None:
            return False
        with self.database.read() as session:
            row = session.get(RoundRow, round_id)
            if row is None or row.outcome is None or row.ledger_recorded:
                return bool(row and row.ledger_recorded)
            body = self.ledger_body(row)
        try:
            recorded = self.ledger.record(body)
        except LedgerUnavailable:
            return False
        except Exception:  # never lose the round over the ledger: retried by the background task
            LOGGER.exception("ledger_append_failed", extra={"round_id": round_id})
            return False
        if recorded:
            with self.database.write() as session:
                row = self.database.lock_round(session, round_id)
                if row is not None:
                    row.ledger_recorded = True
            LOGGER.info("round_recorded_in_ledger", extra={"round_id": round_id})
        return recorded

    def ledger_body(self, row: RoundRow) -> dict[str, Any]:
        parameters = StoredParameters.from_json(row.parameters)
        survivors = self.survivors_by_stage(row, parameters)
        return round_record(
            round_id=row.id,
            cohort=parameters.cohort_ids,
            threshold=parameters.threshold,
            mode=parameters.mode.value,
            dim=parameters.dim,
            bits=parameters.bits,
            privacy=parameters.dp_policy.get("privacy", []),
            survivors=survivors,
            outcome=row.outcome or "",
            abort_reason=row.abort_reason,
        )

    @staticmethod
    def survivors_by_stage(row: RoundRow, parameters: StoredParameters) -> dict[str, list[str]]:
        """Participant ids that answered each closed stage. In honest-but-curious mode there
        is no R3; its entry repeats U3 so that the stages nest (``dp.audit.round_records``)."""
        survivors = {
            entry["stage"]: [parameters.cohort_ids[index] for index in entry["responded"]] for entry in json.loads(row.history)
        }
        r2, r3 = ServerStage.MASKED_INPUT_COLLECTION.value, ServerStage.CONSISTENCY_CHECK.value
        if parameters.mode is ProtocolMode.HONEST_BUT_CURIOUS and r2 in survivors:
            survivors[r3] = list(survivors[r2])
        return survivors

    def recover(self) -> None:
        """At start-up: close whatever became due while the server was down."""
        self.tick()

    # ----------------------------------------------------------------- helpers
    def _notify(self, round_id: str) -> None:
        """Tell this process's long-polling requests that the round moved (after the commit)."""
        if self._on_round_changed is not None:
            self._on_round_changed(round_id)

    def _round_lock(self, round_id: str) -> threading.Lock:
        with self._locks_guard:
            lock = self._locks.get(round_id)
            if lock is None:
                lock = self._locks[round_id] = threading.Lock()
            return lock
