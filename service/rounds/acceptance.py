"""Accepting one client message durably, and the running sum of the masked inputs.

Every accepted message commits (submission row, running sum, revision) before the 2xx
leaves, and the message that completes a stage commits together with the stage's
closing (:meth:`~service.rounds.transitions.StageTransitions.close_stage`), in one
transaction under the round's row lock: there is no window in which a complete stage is
left open. A message that arrives after its stage's deadline first lets the stage close
(in its own transaction) and then meets the next stage.

Masked inputs (R2) and memory: the core session is built with ``sum_masked_inputs=False``
and the service keeps a **persisted running sum** in chunks (``round_chunks``). A masked
input that fits in one chunk may come as one body: it is added to the sum in the same
transaction that records the submission, so it is added exactly once (the submission's
unique key and the sum commit or roll back together). A larger one comes as a declared,
chunked upload (:mod:`service.rounds.chunks`): its commit passes the core the message's
header (:class:`~secagg.chunks.MaskedInputHeader`), records the submission with the
manifest's digest, and its stored chunks are folded into the sum afterwards, each exactly
once. Memory: one chunk per request, whatever the dimension.

The sum's integrity rests on those transactions: replay never sees an input's contents
(:mod:`service.rounds.replay`); the expansion checks that each chunk's sum holds exactly
|U3| inputs before it uses it (:mod:`service.rounds.expansion`).

Every accepted message is progress of its stage: it moves the stage's deadline to a full
window from now (:mod:`service.rounds.transitions`). While a message is being accepted,
its round counts it as an upload in flight, so the stage is not closed under it.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from secagg.chunks import MASKED_INPUT_HEADER_BYTES, MaskedInputHeader
from secagg.errors import MalformedMessage, MessageRejected
from secagg.http_contract import PROBLEM_OF_REJECT_REASON
from secagg.messages import ROUND_OF_CLIENT_MESSAGE, ClientMessage, MaskedInput, decode, peek_type
from secagg.server import ServerStage
from service.db import SubmissionRow
from service.problems import ProblemType, ServiceProblem
from service.rounds.chunks import ChunkStore
from service.rounds.context import RoundContext
from service.rounds.transitions import StageTransitions

LOGGER = logging.getLogger("secagg.service.acceptance")


@dataclass(frozen=True, slots=True)
class Acceptance:
    round_id: str
    stage: ServerStage
    sender: int
    message_sha256: str
    already_accepted: bool
    closed_stage: bool = False


class MessageAcceptance:
    """Validates and durably records client messages; ``on_finished(round_id)`` after a round ends,
    ``on_masked_input(round_id)`` after a chunked masked input was committed (its chunks await folding)."""

    def __init__(
        self,
        context: RoundContext,
        transitions: StageTransitions,
        chunks: ChunkStore,
        *,
        on_finished: Callable[[str], object],
        on_masked_input: Callable[[str], object] | None = None,
    ) -> None:
        self.context = context
        self.transitions = transitions
        self.chunks = chunks
        self._on_finished = on_finished
        self._on_masked_input = on_masked_input

    def accept(self, round_id: str, participant_id: str, body: bytes, *, body_sha256: str | None = None) -> Acceptance:
        """Validate and durably record one client message; raise ServiceProblem and change nothing otherwise."""
        try:
            message_type = peek_type(body)
        except MalformedMessage as exc:
            raise ServiceProblem(ProblemType.MALFORMED, str(exc)) from None
        message_round = ROUND_OF_CLIENT_MESSAGE.get(message_type)
        if message_round is None:
            raise ServiceProblem(ProblemType.MALFORMED, f"{message_type.name} is not a client message")
        stage = ServerStage(message_round.value)
        sender = self.context.member_index(round_id, participant_id)
        digest = body_sha256 if body_sha256 is not None else hashlib.sha256(body).hexdigest()
        if stage is ServerStage.MASKED_INPUT_COLLECTION and not self.context.parameters(round_id).masked_input_fits_one_body:
            raise ServiceProblem(
                ProblemType.PAYLOAD_TOO_LARGE, "this round's masked inputs are larger than one chunk: use the chunked upload"
            )
        return self._accept(round_id, stage, sender, body, digest, size=len(body))

    def commit_upload(self, round_id: str, participant_id: str) -> Acceptance:
        """Commit a declared chunked masked input whose chunks are all stored (:mod:`service.rounds.chunks`)."""
        sender = self.context.member_index(round_id, participant_id)
        declared = self.chunks.declared(round_id, sender)
        if declared is None:
            raise ServiceProblem(ProblemType.UPLOAD_NOT_DECLARED, "declare the upload first")
        size = MASKED_INPUT_HEADER_BYTES + self.context.parameters(round_id).layout.vector_bytes
        acceptance = self._accept(
            round_id, ServerStage.MASKED_INPUT_COLLECTION, sender, None, declared.upload_sha256, size=size, header=declared.header
        )
        if not acceptance.already_accepted and self._on_masked_input is not None:
            self._on_masked_input(round_id)
        return acceptance

    def _accept(
        self,
        round_id: str,
        stage: ServerStage,
        sender: int,
        body: bytes | None,
        digest: str,
        *,
        size: int,
        header: MaskedInputHeader | None = None,
    ) -> Acceptance:
        with self.context.upload_in_flight(round_id):
            outcome = self._accept_locked(round_id, stage, sender, body, digest, header=header, size=size)
            if outcome is None:  # the stage was overdue: close it if it is due, then judge the message again
                self.transitions.advance_if_due(round_id)
                outcome = self._accept_locked(round_id, stage, sender, body, digest, header=header, size=size, allow_overdue=True)
        assert outcome is not None
        acceptance, finished = outcome
        if not acceptance.already_accepted:
            self.context.metrics.messages_accepted.labels(stage.value).inc()
            self.context.metrics.bytes_in.labels(stage.value).inc(size)
            LOGGER.info("message_accepted", extra={"round_id": round_id, "stage": stage.value, "sender": sender, "size": size})
        if finished:
            self._on_finished(round_id)
        return acceptance

    def _accept_locked(
        self,
        round_id: str,
        stage: ServerStage,
        sender: int,
        body: bytes | None,
        digest: str,
        *,
        size: int,
        header: MaskedInputHeader | None = None,
        allow_overdue: bool = False,
    ) -> tuple[Acceptance, bool] | None:
        """One locked attempt; None (and no change) if the round's stage is past its deadline."""
        context = self.context
        parameters = context.parameters(round_id)
        session_changed = False
        with context.round_lock(round_id):
            try:
                with context.database.write() as session:
                    row = context.database.lock_round(session, round_id)
                    if row is None:
                        raise ServiceProblem(ProblemType.ROUND_NOT_FOUND, "no such round")
                    now = context.clock()
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
                        raise ServiceProblem(
                            ProblemType.DUPLICATE_SUBMISSION, f"you already answered {stage.value} with another message"
                        )
                    if row.outcome == "aborted":
                        raise ServiceProblem(
                            ProblemType.ROUND_ABORTED, "the round aborted", extra={"abort_reason": row.abort_reason}
                        )
                    if row.outcome == "completed":
                        raise ServiceProblem(ProblemType.WRONG_STAGE, "the round has completed")
                    message: ClientMessage | MaskedInputHeader
                    if header is not None:
                        self.chunks.committable(session, round_id, sender)
                        message = header
                    else:
                        assert body is not None
                        try:
                            message = decode(body)
                        except MalformedMessage as exc:
                            raise ServiceProblem(ProblemType.MALFORMED, str(exc)) from None
                    if message.sender != sender:
                        raise ServiceProblem(
                            ProblemType.SENDER_MISMATCH, f"the message's sender is {message.sender}, your index is {sender}"
                        )
                    server_session = context.sessions.session(session, row, parameters)
                    try:
                        server_session.receive(message)
                    except MessageRejected as exc:
                        # The core refuses without changing the session, so it stays cached for this
                        # revision (the cache holds it already), or every refused message would make
                        # the next request replay the whole round.
                        raise ServiceProblem(PROBLEM_OF_REJECT_REASON[exc.reason], exc.detail) from None
                    # From here on the cached session is ahead of the database until the commit.
                    session_changed = True
                    context.sessions.forget(round_id)
                    submission = SubmissionRow(
                        round_id=round_id,
                        stage=stage.value,
                        sender=sender,
                        body=None if isinstance(message, MaskedInput | MaskedInputHeader) else body,
                        body_sha256=digest,
                        size=size,
                        received_at=now,
                    )
                    session.add(submission)
                    if isinstance(message, MaskedInput):
                        ChunkStore.add_whole_vector(session, round_id, parameters, message.masked_vector)
                    row.revision += 1
                    if row.stage_deadline is not None:
                        row.stage_deadline = max(row.stage_deadline, now + parameters.deadline_for(stage))
                    finished = False
                    closed = server_session.stage_complete
                    session.flush()
                    submission_id = submission.id
                    if closed:
                        finished = self.transitions.close_stage(session, row, server_session, now)
                    session.flush()
                    revision = row.revision
                if finished:
                    context.sessions.drop(round_id)
                else:
                    context.sessions.remember(round_id, revision, server_session, last_submission=submission_id)
                if closed:
                    context.notify(round_id)
                    if server_session.stage is ServerStage.MASK_EXPANSION:
                        self.transitions.shares_complete(round_id)
            except IntegrityError:
                context.sessions.forget(round_id)
                raise ServiceProblem(ProblemType.DUPLICATE_SUBMISSION, f"you already answered {stage.value}") from None
            except BaseException:
                if session_changed:
                    context.sessions.forget(round_id)
                raise
        return Acceptance(round_id, stage, sender, digest, already_accepted=False, closed_stage=closed), finished
