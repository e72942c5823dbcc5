"""The background work of the round engine: due stages, and the server ledger's outbox.

The ledger is a file and a round's outcome lives in the database, so recording a
finished round follows an outbox pattern (:mod:`service.ledger`): the transition that
finishes a round commits ``ledger_recorded = false``; right after, and again on every
:meth:`BackgroundWork.tick` until it succeeds, the record is appended and the flag set.
The tick also closes every stage that became due (silent for its whole window, or
everyone answered while a closing was lost), and runs once at start-up for what became
due while the server was down; at start-up it also resumes what the background threads
were doing (folding committed chunks, expanding masks: :mod:`service.rounds.expansion`).
Rounds in the mask-expansion stage have no deadline: the expansion finishes them.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from sqlalchemy import func, select

from secagg.config import ProtocolMode
from secagg.server import ServerStage
from service.db import RoundRow, SubmissionRow
from service.ledger import RoundLedger, round_record
from service.rounds.context import RoundContext
from service.rounds.expansion import EXPANSION, MaskExpansion
from service.rounds.parameters import StoredParameters
from service.rounds.transitions import StageTransitions

LOGGER = logging.getLogger("secagg.service.background")


class LedgerOutbox:
    """Appends finished rounds to the server ledger, exactly once each."""

    def __init__(self, context: RoundContext, ledger: RoundLedger | None) -> None:
        self.context = context
        self.ledger = ledger

    def record_in_ledger(self, round_id: str) -> bool:
        """Append the finished round to the server ledger unless done; True iff recorded."""
        if self.ledger is None:
            return False
        database = self.context.database
        with database.read() as session:
            row = session.get(RoundRow, round_id)
            if row is None or row.outcome is None or row.ledger_recorded:
                return bool(row and row.ledger_recorded)
            body = ledger_body(row)
        try:
            recorded = self.ledger.record(body)
        except Exception:  # never lose the round over the ledger: retried by the background task
            LOGGER.exception("ledger_append_failed", extra={"round_id": round_id})
            return False
        if recorded:
            with database.write() as session:
                locked = database.lock_round(session, round_id)
                if locked is not None:
                    locked.ledger_recorded = True
            LOGGER.info("round_recorded_in_ledger", extra={"round_id": round_id})
        return recorded


def ledger_body(row: RoundRow) -> dict[str, Any]:
    """The server ledger's record of a finished round (:func:`service.ledger.round_record`)."""
    parameters = StoredParameters.from_json(row.parameters)
    return round_record(
        round_id=row.id,
        cohort=parameters.cohort_ids,
        threshold=parameters.threshold,
        mode=parameters.mode.value,
        dim=parameters.dim,
        bits=parameters.bits,
        privacy=parameters.dp_policy.get("privacy", []),
        survivors=survivors_by_stage(row, parameters),
        outcome=row.outcome or "",
        abort_reason=row.abort_reason,
        training=parameters.training,
    )


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


class BackgroundWork:
    """One pass closes due stages and records finished rounds; run periodically by the app."""

    def __init__(
        self, context: RoundContext, transitions: StageTransitions, outbox: LedgerOutbox, expansion: MaskExpansion | None = None
    ) -> None:
        self.context = context
        self.transitions = transitions
        self.outbox = outbox
        self.expansion = expansion

    def tick(self, *, recovering: bool = False) -> None:
        now = self.context.clock()
        with self.context.database.read() as session:
            running = session.execute(
                select(RoundRow.id, RoundRow.stage, RoundRow.expected, RoundRow.stage_deadline).where(RoundRow.outcome.is_(None))
            ).all()
            due: list[str] = []
            expanding = False
            for round_id, stage, expected, deadline in running:
                if stage == EXPANSION:
                    expanding = True
                    continue
                if recovering and self.expansion is not None:
                    self.expansion.fold_soon(round_id)
                if deadline is not None and now >= deadline:
                    due.append(round_id)
                    continue
                answered = session.execute(
                    select(func.count())
                    .select_from(SubmissionRow)
                    .where(SubmissionRow.round_id == round_id, SubmissionRow.stage == stage)
                ).scalar_one()
                if answered >= len(json.loads(expected)):
                    due.append(round_id)
            unrecorded = list(
                session.execute(
                    select(RoundRow.id).where(RoundRow.outcome.is_not(None), RoundRow.ledger_recorded.is_(False))
                ).scalars()
            )
        if expanding and self.expansion is not None:
            self.expansion.wake()
        for round_id in due:
            self.transitions.advance_if_due(round_id)
        for round_id in unrecorded:
            self.outbox.record_in_ledger(round_id)
