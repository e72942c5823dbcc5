"""Auditor API (signed requests, role ``auditor``): round records and the server ledger, read-only.

An auditor sees the trainings whose manifest lists it as an auditor (``/v1/audit/trainings``)
and can list the rounds of one of them (``/v1/audit/rounds?training=ID``). The server ledger
is one hash chain for the whole server, served whole: verifying it needs every entry, so an
auditor also sees the round records (ids, parameters, survivors, outcomes; never vectors or
shares) of the other trainings on the same server.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from sqlalchemy import select

from secagg.consortium import MemberRole
from service.auth import AuditorCaller, EngineDep
from service.db import RoundRow, TrainingRoundRow, TrainingRow
from service.problems import ProblemType, ServiceProblem, problem_responses
from service.routes.participant import AUTH_PROBLEMS
from service.schemas import AuditRound, AuditRoundList, RoundId, TrainingId, TrainingList, TrainingOut
from service.views import audit_round_view

router = APIRouter(prefix="/v1/audit", tags=["audit"], responses=problem_responses(*AUTH_PROBLEMS))

RoundIdPath = Annotated[RoundId, Path(description="The round id (32 hex digits).")]


TrainingIdPath = Annotated[TrainingId, Path(description="The training id.")]


def _audited_training(session, engine, training_id: str, auditor: str) -> TrainingRow:
    """The training, if ``auditor`` is an auditor in its manifest; not found otherwise (no oracle)."""
    row = session.get(TrainingRow, training_id)
    if row is None or row.id not in {t.id for t in engine.trainings.of_member(session, auditor, MemberRole.AUDITOR)}:
        raise ServiceProblem(ProblemType.TRAINING_NOT_FOUND, f"no training {training_id!r} that you audit")
    return row


@router.get("/trainings", response_model=TrainingList, summary="The trainings whose manifest lists the caller as auditor")
async def audit_trainings(caller: AuditorCaller, engine: EngineDep) -> dict:
    def load() -> dict:
        with engine.database.read() as session:
            rows = engine.trainings.of_member(session, caller.participant_id, MemberRole.AUDITOR)
            return {"trainings": [engine.trainings.view(session, row) for row in rows]}

    return await run_in_threadpool(load)


@router.get(
    "/trainings/{training_id}",
    response_model=TrainingOut,
    responses=problem_responses(ProblemType.TRAINING_NOT_FOUND),
    summary="One audited training: its signed manifest and its rounds",
)
async def audit_training(training_id: TrainingIdPath, caller: AuditorCaller, engine: EngineDep) -> dict:
    def load() -> dict:
        with engine.database.read() as session:
            return engine.trainings.view(session, _audited_training(session, engine, training_id, caller.participant_id))

    return await run_in_threadpool(load)


@router.get(
    "/rounds",
    response_model=AuditRoundList,
    responses=problem_responses(ProblemType.TRAINING_NOT_FOUND),
    summary="Every round's record, or one training's (no vectors, no shares)",
)
async def audit_rounds(
    caller: AuditorCaller,
    engine: EngineDep,
    training: Annotated[TrainingId | None, Query(description="Only the rounds of this training (one the caller audits).")] = None,
) -> dict:
    def load() -> dict:
        with engine.database.read() as session:
            query = select(RoundRow).order_by(RoundRow.created_at)
            if training is not None:
                _audited_training(session, engine, training, caller.participant_id)
                query = query.join(TrainingRoundRow, TrainingRoundRow.round_id == RoundRow.id).where(
                    TrainingRoundRow.training_id == training
                )
            rows = session.execute(query).scalars().all()
            return {"rounds": [audit_round_view(row) for row in rows]}

    return await run_in_threadpool(load)


@router.get(
    "/rounds/{round_id}",
    response_model=AuditRound,
    responses=problem_responses(ProblemType.ROUND_NOT_FOUND),
    summary="One round's record",
)
async def audit_round(round_id: RoundIdPath, caller: AuditorCaller, engine: EngineDep) -> dict:
    def load() -> dict:
        with engine.database.read() as session:
            return audit_round_view(engine.round_row(session, round_id))

    return await run_in_threadpool(load)


@router.get(
    "/ledger",
    response_class=Response,
    responses={
        200: {
            "description": "The server ledger, byte for byte.",
            "content": {"application/x-ndjson": {"schema": {"type": "string"}}},
        }
    },
    summary="The server's signed, hash-chained round ledger (JSONL)",
)
async def audit_ledger(request: Request, caller: AuditorCaller, engine: EngineDep) -> Response:
    if engine.ledger is None:
        raise ServiceProblem(ProblemType.SERVICE_UNAVAILABLE, "this server keeps no ledger")
    content = await run_in_threadpool(engine.ledger.read_entries)
    return Response(content=content, media_type="application/x-ndjson")


@router.get(
    "/ledger/head",
    response_class=Response,
    responses={
        200: {"description": "The ledger's signed head.", "content": {"application/json": {"schema": {"type": "object"}}}},
        **problem_responses(ProblemType.SERVICE_UNAVAILABLE),
    },
    summary="The server ledger's signed head (the defence against truncation)",
)
async def audit_ledger_head(caller: AuditorCaller, engine: EngineDep) -> Response:
    head = await run_in_threadpool(engine.ledger.read_head) if engine.ledger is not None else None
    if head is None:
        raise ServiceProblem(ProblemType.SERVICE_UNAVAILABLE, "the ledger has no head yet")
    return Response(content=head, media_type="application/json")
