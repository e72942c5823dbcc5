"""Closing a round's stages: when everyone answered, at the deadline, or by an operator.

Write discipline: a stage's closing commits in one transaction under the round's row
lock: the new stage, the outbound messages, the history and, at the end, the result or
the abort reason. A message that completes a stage commits together with the closing
(:mod:`service.rounds.acceptance` calls :meth:`StageTransitions.close_stage` inside its
own transaction); stages closed by a deadline or by an operator commit the same way in
their own transaction. A process killed at any point leaves the state before or after
each such transaction, and the next request or the background task (which also runs
once at start-up) picks up from there. Stages advance when every member expected has
answered or the deadline passes; with fewer than t answers the round aborts with the
core's reason.

Deadlines measure the clients' silence, not the server's backlog. A stage's deadline is
its window (the round's ``deadlines``) after its *last progress*: its opening, every
accepted message (the acceptance moves ``stage_deadline``), a member's first fetch of its
request for the stage (``outbound.fetched_at``), a declared upload or a stored chunk
(:mod:`service.rounds.chunks`). A message is judged by the time its request arrived, and
a stage is never closed on its deadline while this process is still working on an upload
for it (:meth:`~service.rounds.context.RoundContext.uploads_in_flight`). So queued or
slow-to-process honest messages keep their stage open; only clients that stay silent for
a whole window are left out.

Closing R4 does not unmask: it commits "shares complete" (stage ``mask-expansion``, the
core having reconstructed and verified every secret) and the expansion runs off the
request path (:mod:`service.rounds.expansion`).

After a round finishes, its message bodies and relayed messages are deleted (data
minimisation); who answered which stage, when, and each message's size and SHA-256 stay.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from secagg.errors import AbortReason, ProtocolAbort
from secagg.messages import encode
from secagg.server import ServerSession, ServerStage
from service.db import MaskedInputUploadRow, MaskExpansionRow, OutboundRow, RoundRow, SubmissionRow
from service.problems import ProblemType, ServiceProblem
from service.rounds.chunks import ChunkStore
from service.rounds.context import RoundContext

EXPANSION = ServerStage.MASK_EXPANSION.value

LOGGER = logging.getLogger("secagg.service.transitions")


class StageTransitions:
    """Advances rounds; ``on_finished(round_id)`` runs after a round's final commit,
    ``on_shares_complete(round_id)`` after the commit that opened the mask expansion and
    ``on_collection_closed(round_id)`` after a commit here that closed R2 (its stored
    chunks are then folded without waiting for a full batch)."""

    def __init__(
        self,
        context: RoundContext,
        *,
        on_finished: Callable[[str], object],
        on_shares_complete: Callable[[str], object] | None = None,
        on_collection_closed: Callable[[str], object] | None = None,
    ) -> None:
        self.context = context
        self._on_finished = on_finished
        self._on_shares_complete = on_shares_complete
        self._on_collection_closed = on_collection_closed

    def advance_if_overdue(self, round_id: str) -> None:
        """The per-request deadline check: close the stage if its deadline has passed."""
        with self.context.database.read() as session:
            found = session.execute(
                select(RoundRow.outcome, RoundRow.stage_deadline).where(RoundRow.id == round_id)
            ).one_or_none()
        overdue = (
            found is not None
            and found.outcome is None
            and found.stage_deadline is not None
            and self.context.clock() >= found.stage_deadline
        )
        if overdue:
            self.advance_if_due(round_id)

    def effective_deadline(self, session: Session, row: RoundRow) -> float | None:
        """The stage's deadline counted from its last progress (see the module docstring)."""
        if row.stage_deadline is None:
            return None
        window = self.context.parameters(row.id).deadline_for(ServerStage(row.stage))
        moments = [
            session.execute(
                select(func.max(OutboundRow.fetched_at)).where(OutboundRow.round_id == row.id, OutboundRow.stage == row.stage)
            ).scalar_one()
        ]
        if row.stage == ServerStage.MASKED_INPUT_COLLECTION.value:
            moments.append(ChunkStore.last_upload_activity(session, row.id))
        latest = max((moment for moment in moments if moment is not None), default=None)
        return row.stage_deadline if latest is None else max(row.stage_deadline, latest + window)

    def is_due(self, session: Session, row: RoundRow) -> bool:
        """Everyone expected answered, or the stage has been silent for its whole window."""
        if row.outcome is not None or row.stage == EXPANSION:
            return False
        answered = session.execute(
            select(func.count())
            .select_from(SubmissionRow)
            .where(SubmissionRow.round_id == row.id, SubmissionRow.stage == row.stage)
        ).scalar_one()
        if answered >= len(json.loads(row.expected)):
            return True
        if self.context.uploads_in_flight(row.id):
            return False
        deadline = self.effective_deadline(session, row)
        return deadline is not None and self.context.clock() >= deadline

    def advance_if_due(self, round_id: str) -> bool:
        """Close the round's current stage if everyone expected answered or its deadline passed."""

        def due(session: Session) -> RoundRow | None:
            row = self.context.database.lock_round(session, round_id)
            if row is None:
                return None
            if self.is_due(session, row):
                return row
            if row.outcome is None and row.stage != EXPANSION:
                # Not due because of progress since: record the later deadline, so that requests
                # stop asking until that one passes.
                later = self.effective_deadline(session, row)
                if later is not None and row.stage_deadline is not None and later > row.stage_deadline:
                    row.stage_deadline = later
            return None

        return self._close_locked(round_id, due)

    def _close_locked(self, round_id: str, lock_row: Callable[[Session], RoundRow | None]) -> bool:
        """Close the current stage of the row ``lock_row`` locks, in one transaction; False if it locks none.

        The cached session is dropped while the transaction runs (it is ahead of the
        database until the commit) and kept for the new revision only after the commit.
        """
        context = self.context
        finished = False
        with context.round_lock(round_id):
            try:
                with context.database.write() as session:
                    row = lock_row(session)
                    if row is None:
                        return False
                    server_session = context.sessions.session(session, row, context.parameters(round_id))
                    context.sessions.forget(round_id)
                    closing = server_session.stage
                    finished = self.close_stage(session, row, server_session, context.clock())
                    session.flush()
                    revision = row.revision
                if finished:
                    context.sessions.drop(round_id)
                else:
                    context.sessions.remember(round_id, revision, server_session)
            except BaseException:
                context.sessions.forget(round_id)
                raise
        context.notify(round_id)
        if finished:
            self._on_finished(round_id)
        elif server_session.stage is ServerStage.MASK_EXPANSION:
            self.shares_complete(round_id)
        elif closing is ServerStage.MASKED_INPUT_COLLECTION and self._on_collection_closed is not None:
            self._on_collection_closed(round_id)
        return True

    def shares_complete(self, round_id: str) -> None:
        """After the commit that moved the round into the mask-expansion stage."""
        if self._on_shares_complete is not None:
            self._on_shares_complete(round_id)

    def close_stage(self, session: Session, row: RoundRow, server_session: ServerSession, now: float) -> bool:
        """Advance the session one stage and persist everything; True iff the round finished."""
        parameters = self.context.parameters(row.id)
        metrics = self.context.metrics
        closing = server_session.stage
        expected = json.loads(row.expected)
        metrics.stage_duration.labels(closing.value).observe(max(0.0, now - row.stage_started_at))
        try:
            outbox = server_session.advance()
        except ProtocolAbort as exc:
            self._record_history(row, server_session, now)
            metrics.dropouts.labels(closing.value).inc(len(expected) - len(server_session.history[-1].responded))
            self.finish(session, row, now, outcome="aborted", reason=exc.reason.value, detail=exc.detail)
            row.closed_stages += 1
            return True
        self._record_history(row, server_session, now)
        record = server_session.history[-1]
        metrics.dropouts.labels(closing.value).inc(len(record.expected) - len(record.responded))
        row.closed_stages += 1
        row.session_id = server_session.session_id
        if closing is ServerStage.MASKED_INPUT_COLLECTION:
            row.survivors = json.dumps(sorted(server_session.survivors))
            ChunkStore.drop_uncommitted(session, row.id)
        opened = server_session.stage
        if opened is ServerStage.MASK_EXPANSION:
            from service.rounds.expansion import start_expansion

            row.stage = opened.value
            row.expected = "[]"
            row.stage_started_at = now
            row.stage_deadline = None
            row.revision += 1
            start_expansion(session, row.id, parameters.layout.count, now)
            LOGGER.info("shares_complete", extra={"round_id": row.id, "responded": len(record.responded)})
            return False
        for recipient, message in sorted(outbox.items()):
            session.add(
                OutboundRow(
                    round_id=row.id,
                    stage=opened.value,
                    recipient=recipient,
                    message_type=type(message).__name__,
                    body=encode(message),
                )
            )
        row.stage = opened.value
        row.expected = json.dumps(sorted(server_session.expected_senders))
        row.stage_started_at = now
        row.stage_deadline = now + parameters.deadline_for(opened)
        row.revision += 1
        LOGGER.info(
            "stage_closed",
            extra={
                "round_id": row.id,
                "stage": closing.value,
                "responded": len(record.responded),
                "expected": len(record.expected),
            },
        )
        return False

    def _record_history(self, row: RoundRow, server_session: ServerSession, now: float) -> None:
        """Append the closed stage to the round's history; after R4, name the holders of wrong shares.

        A share off the polynomial its owner's commitment fixes is a fact about its holder,
        whether spare shares outvoted it (the round completed) or not (the round aborted
        with ``inconsistent-shares``). The history names the holders by protocol index, as
        ``expected`` and ``responded`` do; a warning log names them by participant id.
        """
        history = json.loads(row.history)
        record = server_session.history[-1]
        entry: dict[str, object] = {
            "stage": record.stage.value,
            "expected": sorted(record.expected),
            "responded": sorted(record.responded),
            "closed_at": now,
        }
        if record.stage is ServerStage.UNMASKING:
            holders = sorted({share.holder for share in server_session.inconsistent_shares} | server_session.abort_participants)
            if holders:
                entry["inconsistent_share_holders"] = holders
                cohort = self.context.parameters(row.id).cohort_ids
                LOGGER.warning(
                    "inconsistent_shares",
                    extra={"round_id": row.id, "participants": [cohort[index] for index in holders]},
                )
        history.append(entry)
        row.history = json.dumps(history)

    def finish(
        self, session: Session, row: RoundRow, now: float, *, outcome: str, reason: str | None, detail: str | None
    ) -> None:
        """Record the outcome and drop what a finished round no longer needs (data minimisation):
        the running sum, the relayed messages and the bodies of the accepted messages
        (encrypted shares, revealed shares, signatures). Who answered which stage, when,
        and each message's size and SHA-256 stay, for the audit trail."""
        session.execute(update(SubmissionRow).where(SubmissionRow.round_id == row.id).values(body=None))
        session.execute(delete(OutboundRow).where(OutboundRow.round_id == row.id))
        session.execute(delete(MaskedInputUploadRow).where(MaskedInputUploadRow.round_id == row.id))
        ChunkStore.discard(session, row.id, keep_result=outcome == "completed")
        if outcome != "completed":
            session.execute(delete(MaskExpansionRow).where(MaskExpansionRow.round_id == row.id))
        row.stage = ServerStage.COMPLETED.value if outcome == "completed" else ServerStage.ABORTED.value
        row.outcome = outcome
        row.abort_reason = reason
        row.abort_detail = detail
        row.finished_at = now
        row.expected = "[]"
        row.stage_deadline = None
        row.ledger_recorded = False
        row.revision += 1
        self.context.metrics.rounds_finished.labels(outcome, reason or "").inc()
        LOGGER.info("round_finished", extra={"round_id": row.id, "outcome": outcome, "reason": reason})

    def _lock_unfinished_round(self, session: Session, round_id: str) -> RoundRow:
        """The round's row under its lock, refusing an unknown or already finished round."""
        row = self.context.database.lock_round(session, round_id)
        if row is None:
            raise ServiceProblem(ProblemType.ROUND_NOT_FOUND, "no such round")
        if row.outcome is not None:
            raise ServiceProblem(ProblemType.ROUND_FINISHED, f"the round already {row.outcome}")
        return row

    def close_stage_now(self, round_id: str) -> None:
        """An operator closes the current stage before its deadline, with whoever answered
        (the round aborts if fewer than t did), e.g. when the missing banks are known to be down."""

        def lock_open_stage(session: Session) -> RoundRow:
            row = self._lock_unfinished_round(session, round_id)
            if row.stage == EXPANSION:
                raise ServiceProblem(ProblemType.WRONG_STAGE, "every share has arrived; the server is expanding the masks")
            return row

        self._close_locked(round_id, lock_open_stage)
        LOGGER.info("stage_closed_by_operator", extra={"round_id": round_id})

    def abort(self, round_id: str, detail: str) -> None:
        """An operator aborts a running round (recorded as aborted by the server)."""
        context = self.context
        with context.round_lock(round_id):
            try:
                with context.database.write() as session:
                    row = self._lock_unfinished_round(session, round_id)
                    context.sessions.forget(round_id)
                    self.finish(
                        session,
                        row,
                        context.clock(),
                        outcome="aborted",
                        reason=AbortReason.ABORTED_BY_SERVER.value,
                        detail=detail,
                    )
            finally:
                context.sessions.forget(round_id)
        context.notify(round_id)
        self._on_finished(round_id)
