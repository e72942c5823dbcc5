"""The server's round engine: the durable shell around :class:`~secagg.server.ServerSession`.

The database is the truth (:mod:`service.db`). One :class:`RoundEngine` per server
process, safe to use from many threads and many processes, composed of one part per job:

* :mod:`service.rounds.parameters` — a round's fixed parameters and limits;
* :mod:`service.rounds.acceptance` — accepting a client message and the running sum of
  the masked inputs;
* :mod:`service.rounds.transitions` — closing stages (everyone answered, deadline,
  operator) and finishing rounds;
* :mod:`service.rounds.replay` — rebuilding a round's session from the database, and
  the per-process cache of sessions;
* :mod:`service.rounds.chunks` — chunked masked-input uploads, the running sum and the
  result by chunk; :mod:`service.rounds.group_commit` shares transactions between them;
* :mod:`service.rounds.expansion` — the mask-expansion stage, off the request path, on
  an engine of :mod:`service.rounds.engines`;
* :mod:`service.rounds.background` — the periodic tick and the server ledger's outbox.

This module holds what is left: enrolment, round creation (for a consortium's training,
checked against its manifest by :mod:`service.trainings`), and the reads the participant
and admin routes answer from.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from secagg.errors import ConfigurationError
from secagg.hazmat.keys import PUBLIC_KEY_BYTES
from secagg.hazmat.randomness import RandomSource, SystemRandom
from secagg.server import ServerStage
from service.db import Database, OutboundRow, ParticipantRow, RoundMemberRow, RoundRow, SubmissionRow, TrainingRoundRow
from service.ledger import RoundLedger, validate_privacy_policy
from service.metrics import ServiceMetrics
from service.problems import ProblemType, ServiceProblem
from service.rounds.acceptance import Acceptance, MessageAcceptance
from service.rounds.background import BackgroundWork, LedgerOutbox, ledger_body, survivors_by_stage
from service.rounds.chunks import ChunkSlot, ChunkStore, UploadState
from service.rounds.context import RoundContext
from service.rounds.engines import ChunkEngine, EngineKind, make_engine
from service.rounds.expansion import MaskExpansion
from service.rounds.group_commit import GroupCommit
from service.rounds.parameters import ROUND_ID_BYTES, StoredParameters
from service.rounds.transitions import StageTransitions
from service.schemas import ParticipantRole, RoundCreate
from service.trainings import TrainingRegistry

LOGGER = logging.getLogger("secagg.service.rounds")


@dataclass(frozen=True, slots=True)
class OutboundMessage:
    stage: str
    message_type: str
    body: bytes


class RoundEngine:
    """Runs rounds over the database; safe to use from many threads and many processes."""

    def __init__(
        self,
        database: Database,
        *,
        metrics: ServiceMetrics,
        ledger: RoundLedger | None,
        max_dim: int,
        max_open_rounds: int | None = None,
        clock: Callable[[], float] = time.time,
        source: RandomSource | None = None,
        on_round_changed: Callable[[str], None] | None = None,
        chunk_engine: Callable[[], ChunkEngine] | None = None,
    ) -> None:
        self.database = database
        self.metrics = metrics
        self.ledger = ledger
        self.max_dim = max_dim
        self.max_open_rounds = max_open_rounds
        self.clock = clock
        self._source = source if source is not None else SystemRandom()
        self.context = RoundContext(database, metrics, clock, on_round_changed)
        self.group_commit = GroupCommit(database, on_batch=metrics.group_commit_batch.observe)
        self.chunks = ChunkStore(self.context, self.group_commit)
        self.outbox = LedgerOutbox(self.context, ledger)
        self.transitions = StageTransitions(
            self.context,
            on_finished=self.outbox.record_in_ledger,
            on_shares_complete=lambda round_id: self.expansion.wake(),
            on_collection_closed=lambda round_id: self.expansion.fold_soon(round_id),
        )
        self.expansion = MaskExpansion(
            self.context,
            self.transitions,
            self.chunks,
            chunk_engine or (lambda: make_engine(EngineKind.PROCESS)),
            on_finished=self.outbox.record_in_ledger,
        )
        self.acceptance = MessageAcceptance(
            self.context,
            self.transitions,
            self.chunks,
            on_finished=self.outbox.record_in_ledger,
            on_masked_input=self.expansion.fold_soon,
        )
        self.background = BackgroundWork(self.context, self.transitions, self.outbox, self.expansion)
        self.trainings = TrainingRegistry(database, clock)

    # ------------------------------------------------------------ participants
    def enroll(self, participant_id: str, public_key: bytes, role: ParticipantRole) -> ParticipantRow:
        if len(public_key) != PUBLIC_KEY_BYTES:
            raise ServiceProblem(ProblemType.VALIDATION_ERROR, "public_key must be 32 bytes (raw Ed25519)")
        try:
            with self.database.write() as session:
                clash = session.execute(
                    select(ParticipantRow).where(
                        (ParticipantRow.id == participant_id) | (ParticipantRow.public_key == public_key)
                    )
                ).first()
                if clash is not None:
                    raise ServiceProblem(ProblemType.PARTICIPANT_EXISTS, "this id or public key is already enrolled")
                row = ParticipantRow(
                    id=participant_id, public_key=public_key, role=role.value, enrolled_at=self.clock(), revoked_at=None
                )
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
            if self.max_open_rounds is not None:
                running = session.execute(
                    select(func.count()).select_from(RoundRow).where(RoundRow.outcome.is_(None))
                ).scalar_one()
                if running >= self.max_open_rounds:
                    raise ServiceProblem(
                        ProblemType.OPEN_ROUND_LIMIT,
                        f"{running} rounds are running, this server's limit is {self.max_open_rounds}; finish or abort one first",
                    )
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
            training = None
            if request.training is not None:
                training = self.trainings.binding_for(
                    session,
                    request.training.id,
                    request.training.round,
                    cohort=request.cohort,
                    identity_keys=[rows[pid].public_key for pid in request.cohort],
                    mode=request.mode,
                    graph=request.graph,
                    degree=request.degree,
                    threshold=request.threshold,
                )
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
                chunk_bytes=request.chunk_bytes,
                training=training,
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
            ChunkStore.create_rows(session, round_id, parameters)
            if training is not None:
                self.trainings.record_round(session, round_id, training)
        LOGGER.info("round_created", extra={"round_id": round_id, "count": len(request.cohort)})
        return round_id

    def round_row(self, session: Session, round_id: str) -> RoundRow:
        row = session.get(RoundRow, round_id)
        if row is None:
            raise ServiceProblem(ProblemType.ROUND_NOT_FOUND, "no such round")
        return row

    def parameters(self, round_id: str) -> StoredParameters:
        """The round's fixed parameters (cached in process: they never change once created)."""
        return self.context.parameters(round_id)

    def member_index(self, round_id: str, participant_id: str) -> int:
        return self.context.member_index(round_id, participant_id)

    def max_message_bytes(self, round_id: str) -> int:
        return self.parameters(round_id).max_message_bytes

    def responded(self, session: Session, round_id: str, stage: str) -> list[int]:
        return sorted(
            session.execute(
                select(SubmissionRow.sender).where(SubmissionRow.round_id == round_id, SubmissionRow.stage == stage)
            ).scalars()
        )

    # ------------------------------------------------------------------- reads
    def message_for(
        self, round_id: str, participant_id: str, *, deadline_checked: bool = False
    ) -> tuple[str, OutboundMessage | None]:
        """The round's current stage and the server message ``participant_id`` must answer in
        it, or None (nothing yet in R0, or already answered). One read in the usual case."""
        index = self.member_index(round_id, participant_id)
        found: tuple[OutboundMessage, bool] | None = None
        with self.database.read() as session:
            stage, outcome, abort_reason, deadline = session.execute(
                select(RoundRow.stage, RoundRow.outcome, RoundRow.abort_reason, RoundRow.stage_deadline).where(
                    RoundRow.id == round_id
                )
            ).one()
            overdue = outcome is None and deadline is not None and self.clock() >= deadline
            if not (overdue and not deadline_checked):
                found = self._message_in(session, round_id, index, stage, outcome, abort_reason)
        if overdue and not deadline_checked:
            self.advance_if_due(round_id)  # the per-request deadline check, then look again
            return self.message_for(round_id, participant_id, deadline_checked=True)
        if found is None:
            return stage, None
        message, first_fetch = found
        if first_fetch:
            self._record_first_fetch(round_id, message.stage, index)
        return stage, message

    def _record_first_fetch(self, round_id: str, stage: str, index: int) -> None:
        """The recipient's first fetch of its request is progress of the stage (its silence deadline)."""
        now = self.clock()

        def work(session: Session) -> None:
            session.execute(
                update(OutboundRow)
                .where(
                    OutboundRow.round_id == round_id,
                    OutboundRow.stage == stage,
                    OutboundRow.recipient == index,
                    OutboundRow.fetched_at.is_(None),
                )
                .values(fetched_at=now)
            )

        self.group_commit.run(work)

    @staticmethod
    def _message_in(
        session: Session, round_id: str, index: int, stage: str, outcome: str | None, abort_reason: str | None
    ) -> tuple[OutboundMessage, bool] | None:
        if outcome == "aborted":
            raise ServiceProblem(ProblemType.ROUND_ABORTED, "the round aborted", extra={"abort_reason": abort_reason})
        if outcome == "completed":
            raise ServiceProblem(ProblemType.ROUND_COMPLETED, "the round has completed; fetch its result")
        if stage in (ServerStage.ADVERTISE_KEYS.value, ServerStage.MASK_EXPANSION.value):
            return None
        answered = session.execute(
            select(SubmissionRow.id).where(
                SubmissionRow.round_id == round_id, SubmissionRow.stage == stage, SubmissionRow.sender == index
            )
        ).first()
        if answered is not None:
            return None  # only members expected in this stage can have answered it
        outbound = session.execute(
            select(OutboundRow.message_type, OutboundRow.body, OutboundRow.fetched_at).where(
                OutboundRow.round_id == round_id, OutboundRow.stage == stage, OutboundRow.recipient == index
            )
        ).one_or_none()
        if outbound is None:
            raise ServiceProblem(ProblemType.EXCLUDED, f"you are not among the recipients of {stage}")
        return OutboundMessage(stage=stage, message_type=outbound.message_type, body=outbound.body), outbound.fetched_at is None

    def current_stage(self, round_id: str) -> str:
        with self.database.read() as session:
            return self.round_row(session, round_id).stage

    def result_for(self, round_id: str, participant_id: str) -> tuple[StoredParameters, str, list[int]]:
        """The completed round's parameters, result SHA-256 and U3 (the bytes: :meth:`result_bytes`, :meth:`result_chunk`)."""
        self.advance_if_overdue(round_id)
        with self.database.read() as session:
            row = self.round_row(session, round_id)
            self.member_index(round_id, participant_id)
            if row.outcome == "aborted":
                raise ServiceProblem(ProblemType.ROUND_ABORTED, "the round aborted", extra={"abort_reason": row.abort_reason})
            if row.outcome != "completed":
                raise ServiceProblem(ProblemType.RESULT_NOT_READY, f"the round is in {row.stage}")
            assert row.result_sha256 is not None
            return StoredParameters.from_json(row.parameters), row.result_sha256, json.loads(row.survivors or "[]")

    def result_bytes(self, round_id: str) -> Iterator[bytes]:
        """The completed round's result, chunk by chunk (memory: one chunk)."""
        return self.chunks.iter_result(round_id)

    def result_chunk(self, round_id: str, participant_id: str, index: int) -> tuple[StoredParameters, str, list[int], bytes, str]:
        parameters, digest, survivors = self.result_for(round_id, participant_id)
        if not 0 <= index < parameters.layout.count:
            raise ServiceProblem(ProblemType.NOT_FOUND, f"chunk indices of this round are 0..{parameters.layout.count - 1}")
        body, chunk_digest = self.chunks.result_chunk(round_id, index)
        return parameters, digest, survivors, body, chunk_digest

    # ---------------------------------------------------------- chunked uploads
    def declare_upload(self, round_id: str, participant_id: str, header: bytes, chunk_sha256: Sequence[str]) -> UploadState:
        with self.context.upload_in_flight(round_id):
            return self.chunks.declare(round_id, participant_id, header, chunk_sha256)

    def upload_state(self, round_id: str, participant_id: str) -> UploadState:
        return self.chunks.upload_state(round_id, participant_id)

    def chunk_slot(self, round_id: str, participant_id: str, index: int, declared_sha256: str) -> ChunkSlot:
        return self.chunks.slot(round_id, participant_id, index, declared_sha256)

    def store_chunk(self, round_id: str, slot: ChunkSlot, body: bytes) -> bool:
        stored = self.chunks.store(round_id, slot, body)
        if stored:
            self.metrics.chunks_stored.inc()
            self.metrics.bytes_in.labels(ServerStage.MASKED_INPUT_COLLECTION.value).inc(len(body))
        return stored

    def commit_upload(self, round_id: str, participant_id: str) -> Acceptance:
        return self.acceptance.commit_upload(round_id, participant_id)

    def work_for(self, participant_id: str, *, training: str | None = None) -> list[dict[str, Any]]:
        """The running rounds where the caller has something to do; with ``training``, only that training's."""
        with self.database.read() as session:
            query = (
                select(RoundRow, RoundMemberRow.index, TrainingRoundRow.training_id, TrainingRoundRow.step)
                .join(RoundMemberRow, RoundMemberRow.round_id == RoundRow.id)
                .outerjoin(TrainingRoundRow, TrainingRoundRow.round_id == RoundRow.id)
                .where(RoundMemberRow.participant_id == participant_id, RoundRow.outcome.is_(None))
                .order_by(RoundRow.created_at)
            )
            if training is not None:
                query = query.where(TrainingRoundRow.training_id == training)
            memberships = session.execute(query).all()
            items: list[dict[str, Any]] = []
            for row, index, training_id, step in memberships:
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
                items.append(
                    {
                        "round_id": row.id,
                        "stage": row.stage,
                        "action": action,
                        "stage_deadline": row.stage_deadline,
                        "training_id": training_id,
                        "training_round": step,
                    }
                )
            return items

    # ------------------------------------------------------- messages and stages
    def accept(self, round_id: str, participant_id: str, body: bytes, *, body_sha256: str | None = None) -> Acceptance:
        """Validate and durably record one client message (:mod:`service.rounds.acceptance`)."""
        return self.acceptance.accept(round_id, participant_id, body, body_sha256=body_sha256)

    def advance_if_overdue(self, round_id: str) -> None:
        self.transitions.advance_if_overdue(round_id)

    def advance_if_due(self, round_id: str) -> bool:
        return self.transitions.advance_if_due(round_id)

    def close_stage_now(self, round_id: str) -> None:
        self.transitions.close_stage_now(round_id)

    def abort(self, round_id: str, detail: str) -> None:
        self.transitions.abort(round_id, detail)

    # -------------------------------------------------------------- background
    def tick(self) -> None:
        """One pass of the background task: close due stages, record finished rounds in the ledger."""
        self.background.tick()

    def recover(self) -> None:
        """At start-up: close whatever became due while the server was down, resume folds and expansions."""
        self.background.tick(recovering=True)

    def start_background_threads(self) -> None:
        self.expansion.start()

    def stop_background_threads(self) -> None:
        self.expansion.stop()

    def record_in_ledger(self, round_id: str) -> bool:
        return self.outbox.record_in_ledger(round_id)

    @staticmethod
    def ledger_body(row: RoundRow) -> dict[str, Any]:
        return ledger_body(row)

    @staticmethod
    def survivors_by_stage(row: RoundRow, parameters: StoredParameters) -> dict[str, list[str]]:
        return survivors_by_stage(row, parameters)
