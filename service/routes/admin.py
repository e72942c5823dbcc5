"""Admin API (bearer token): enrol and revoke participants, create, inspect and abort rounds."""

from __future__ import annotations

import base64
import binascii
from typing import Annotated

from fastapi import APIRouter, Path
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import select

from service.auth import AdminCaller, EngineDep
from service.db import RoundRow
from service.problems import ProblemType, ServiceProblem, problem_responses
from service.schemas import (
    AbortRequest,
    ParticipantCreate,
    ParticipantId,
    ParticipantList,
    ParticipantOut,
    RoundCreate,
    RoundId,
    RoundList,
    RoundStatus,
)
from service.views import participant_view, round_status_view

router = APIRouter(
    prefix="/v1/admin",
    tags=["admin"],
    dependencies=[AdminCaller],
    responses=problem_responses(ProblemType.ADMIN_UNAUTHORIZED, ProblemType.VALIDATION_ERROR),
)

RoundIdPath = Annotated[RoundId, Path(description="The round id (32 hex digits).")]
ParticipantIdPath = Annotated[ParticipantId, Path(description="The participant id.")]


@router.post(
    "/participants",
    status_code=201,
    response_model=ParticipantOut,
    responses=problem_responses(ProblemType.PARTICIPANT_EXISTS),
    summary="Enrol a participant with its Ed25519 identity key",
)
async def enroll_participant(body: ParticipantCreate, engine: EngineDep) -> dict:
    try:
        public_key = base64.b64decode(body.public_key, validate=True)
    except (binascii.Error, ValueError):
        raise ServiceProblem(ProblemType.VALIDATION_ERROR, "public_key is not standard base64") from None
    row = await run_in_threadpool(engine.enroll, body.id, public_key, body.role)
    return participant_view(row)


@router.get("/participants", response_model=ParticipantList, summary="List participants")
async def list_participants(engine: EngineDep) -> dict:
    rows = await run_in_threadpool(engine.participants)
    return {"participants": [participant_view(row) for row in rows]}


@router.delete(
    "/participants/{participant_id}",
    response_model=ParticipantOut,
    responses=problem_responses(ProblemType.PARTICIPANT_NOT_FOUND),
    summary="Revoke a participant (its requests are refused from now on)",
)
async def revoke_participant(participant_id: ParticipantIdPath, engine: EngineDep) -> dict:
    row = await run_in_threadpool(engine.revoke, participant_id)
    return participant_view(row)


@router.post(
    "/rounds",
    status_code=201,
    response_model=RoundStatus,
    responses=problem_responses(ProblemType.UNSAFE_ROUND),
    summary="Create a round",
)
async def create_round(body: RoundCreate, engine: EngineDep) -> dict:
    round_id = await run_in_threadpool(engine.create_round, body)
    return await run_in_threadpool(_status, engine, round_id)


@router.get("/rounds", response_model=RoundList, summary="List rounds, newest first")
async def list_rounds(engine: EngineDep) -> dict:
    return await run_in_threadpool(_list, engine)


@router.get(
    "/rounds/{round_id}",
    response_model=RoundStatus,
    responses=problem_responses(ProblemType.ROUND_NOT_FOUND),
    summary="A round's stage, responders, history and outcome",
)
async def round_status(round_id: RoundIdPath, engine: EngineDep) -> dict:
    await run_in_threadpool(engine.advance_if_overdue, round_id)
    return await run_in_threadpool(_status, engine, round_id)


@router.post(
    "/rounds/{round_id}/close-stage",
    response_model=RoundStatus,
    responses=problem_responses(ProblemType.ROUND_NOT_FOUND, ProblemType.ROUND_FINISHED),
    summary="Close the current stage now with whoever answered (aborts below the threshold)",
)
async def close_stage(round_id: RoundIdPath, engine: EngineDep) -> dict:
    await run_in_threadpool(engine.close_stage_now, round_id)
    return await run_in_threadpool(_status, engine, round_id)


@router.post(
    "/rounds/{round_id}/abort",
    response_model=RoundStatus,
    responses=problem_responses(ProblemType.ROUND_NOT_FOUND, ProblemType.ROUND_FINISHED),
    summary="Abort a running round",
)
async def abort_round(round_id: RoundIdPath, body: AbortRequest, engine: EngineDep) -> dict:
    await run_in_threadpool(engine.abort, round_id, body.detail)
    return await run_in_threadpool(_status, engine, round_id)


def _status(engine, round_id: str) -> dict:
    with engine.database.read() as session:
        row = engine.round_row(session, round_id)
        return round_status_view(session, engine, row)


def _list(engine) -> dict:
    with engine.database.read() as session:
        rows = session.execute(select(RoundRow).order_by(RoundRow.created_at.desc())).scalars().all()
        return {"rounds": [round_status_view(session, engine, row) for row in rows]}
