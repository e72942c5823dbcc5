"""Accepting one client message durably, and the running sum of the masked inputs.

Every accepted message commits (submission row, running sum, revision) before the 2xx
leaves, and the message that completes a stage commits together with the stage's
closing (:meth:`~service.rounds.transitions.StageTransitions.close_stage`), in one
transaction under the round's row lock: there is no window in which a complete stage is
left open. A message that arrives after its stage's deadline first lets the stage close
(in its own transaction) and then meets the next stage.

Masked inputs (R2) and memory: the core session is built with ``sum_masked_inputs=False``
and the service keeps a **persisted running sum** in the round's row, updated in the
same transaction that records the submission, so each accepted input is added exactly
once: the submission's unique key and the sum commit or roll back together. Memory is
O(dim) per request and per round, storage is O(dim) per round instead of O(n·dim), and no
individual masked input ever rests on disk (data minimisation: a later leak of the
database cannot single one out). The process keeps the sum it last committed beside its
cached session, valid for the same revision only, so an upload does not read the sum
back: it writes the new sum once and commits.

The sum's integrity rests on that transaction: replay never sees an input's contents
(:mod:`service.rounds.replay`), so a wrong running sum would go unnoticed by replay and
yield a wrong result (never a leak).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from secagg.config import RoundConfig
from secagg.errors import MalformedMessage, MessageRejected
from secagg.http_contract import PROBLEM_OF_REJECT_REASON
from secagg.messages import ROUND_OF_CLIENT_MESSAGE, ClientMessage, MaskedInput, decode, peek_type
from secagg.server import ServerStage
from service.db import RoundRow, SubmissionRow
from service.problems import ProblemType, ServiceProblem
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


class MessageAcceptance:
    """Validates and durably records client messages; ``on_finished(round_id)`` after a round ends."""

    def __init__(self, context: RoundContext, transitions: StageTransitions, *, on_finished: Callable[[str], object]) -> None:
        self.context = context
        self.transitions = transitions
        self._on_finished = on_finished

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
        outcome = self._accept_locked(round_id, stage, sender, body, digest)
        if outcome is None:  # the stage was overdue: close it, then judge the message again
            self.transitions.advance_if_due(round_id)
            outcome = self._accept_locked(round_id, stage, sender, body, digest, allow_overdue=True)
        assert outcome is not None
        acceptance, finished = outcome
        if not acceptance.already_accepted:
            self.context.metrics.messages_accepted.labels(stage.value).inc()
            self.context.metrics.bytes_in.labels(stage.value).inc(len(body))
            LOGGER.info(
                "message_accepted", extra={"round_id": round_id, "stage": stage.value, "sender": sender, "size": len(body)}
            )
        if finished:
            self._on_finished(round_id)
        return acceptance

    def _accept_locked(
        self, round_id: str, stage: ServerStage, sender: int, body: bytes, digest: str, *, allow_overdue: bool = False
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
                    try:
                        message: ClientMessage = decode(body)
                    except MalformedMessage as exc:
                        raise ServiceProblem(ProblemType.MALFORMED, str(exc)) from None
                    if message.sender != sender:
                        raise ServiceProblem(
                            ProblemType.SENDER_MISMATCH, f"the message's sender is {message.sender}, your index is {sender}"
                        )
                    server_session = context.sessions.session(session, row, parameters)
                    known_sum = context.sessions.masked_sum(round_id, row.revision)
                    try:
                        server_session.receive(message)
                    except MessageRejected as exc:
                        # The core refuses without changing the session, so it stays valid for this
                        # revision: keep it (or the one just replayed) cached, or every refused message
                        # would make the next request replay the whole round.
                        context.sessions.remember(round_id, row.revision, server_session, known_sum)
                        raise ServiceProblem(PROBLEM_OF_REJECT_REASON[exc.reason], exc.detail) from None
                    # From here on the cached session is ahead of the database until the commit.
                    session_changed = True
                    context.sessions.forget(round_id)
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
                        known_sum = add_to_masked_sum(session, row, server_session.config, message, known_sum)
                    row.revision += 1
                    finished = False
                    closed = server_session.stage_complete
                    if closed:
                        session.flush()
                        finished = self.transitions.close_stage(session, row, server_session, now)
                    session.flush()
                    revision = row.revision
                if not finished:
                    context.sessions.remember(round_id, revision, server_session, known_sum)
                if closed:
                    context.notify(round_id)
            except IntegrityError:
                context.sessions.forget(round_id)
                raise ServiceProblem(ProblemType.DUPLICATE_SUBMISSION, f"you already answered {stage.value}") from None
            except BaseException:
                if session_changed:
                    context.sessions.forget(round_id)
                raise
        return Acceptance(round_id, stage, sender, digest, already_accepted=False), finished


def add_to_masked_sum(
    session: Session, row: RoundRow, config: RoundConfig, message: MaskedInput, known_sum: np.ndarray | None
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
