"""Auditor API (signed requests, role ``auditor``): round records and the server ledger, read-only."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from sqlalchemy import select

from service.auth import AuditorCaller, EngineDep
from service.db import RoundRow
from service.problems import ProblemType, ServiceProblem, problem_responses
from service.routes.participant import AUTH_PROBLEMS
from service.schemas import AuditRound, AuditRoundList, RoundId
from service.views import audit_round_view

router = APIRouter(prefix="/v1/audit", tags=["audit"], responses=problem_responses(*AUTH_PROBLEMS))

RoundIdPath = Annotated[RoundId, Path(description="The round id (32 hex digits).")]


@router.get("/rounds", response_model=AuditRoundList, summary="Every round's record (no vectors, no shares)")
async def audit_rounds(caller: AuditorCaller, engine: EngineDep) -> dict:
    def load() -> dict:
        with engine.database.read() as session:
            rows = session.execute(select(RoundRow).order_by(RoundRow.created_at)).scalars().all()
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
