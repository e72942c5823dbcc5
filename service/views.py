"""Database rows to response bodies (the only place that shapes API output)."""

from __future__ import annotations

import base64
import json
from typing import Any

from sqlalchemy.orm import Session

from service.db import ParticipantRow, RoundRow
from service.rounds import RoundEngine, StoredParameters


def participant_view(row: ParticipantRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "public_key": base64.b64encode(row.public_key).decode("ascii"),
        "role": row.role,
        "status": "revoked" if row.revoked_at is not None else "active",
        "enrolled_at": row.enrolled_at,
        "revoked_at": row.revoked_at,
    }


def round_status_view(session: Session, engine: RoundEngine, row: RoundRow) -> dict[str, Any]:
    parameters = StoredParameters.from_json(row.parameters)
    running = row.outcome is None
    return {
        "round_id": row.id,
        "stage": row.stage,
        "stage_started_at": row.stage_started_at,
        "stage_deadline": row.stage_deadline,
        "parameters": parameters.public_dict(row),
        "expected": json.loads(row.expected),
        "responded": engine.responded(session, row.id, row.stage) if running else [],
        "history": json.loads(row.history),
        "survivors": json.loads(row.survivors) if row.survivors is not None else None,
        "outcome": row.outcome,
        "abort_reason": row.abort_reason,
        "abort_detail": row.abort_detail,
        "created_at": row.created_at,
        "finished_at": row.finished_at,
        "ledger_recorded": row.ledger_recorded,
    }


def audit_round_view(row: RoundRow) -> dict[str, Any]:
    """What an auditor sees: parameters, survivors by id, outcome. Never vectors or shares."""
    parameters = StoredParameters.from_json(row.parameters)
    return {
        "round_id": row.id,
        "parameters": parameters.public_dict(row),
        "stage": row.stage,
        "survivors": RoundEngine.survivors_by_stage(row, parameters),
        "outcome": row.outcome,
        "abort_reason": row.abort_reason,
        "abort_detail": row.abort_detail,
        "created_at": row.created_at,
        "finished_at": row.finished_at,
        "ledger_recorded": row.ledger_recorded,
    }
