"""Admin API (bearer token): enrol and revoke participants, register trainings, create, inspect and abort rounds."""

from __future__ import annotations

import base64
import binascii
from typing import Annotated

from fastapi import APIRouter, Path
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
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
    SignedManifestIn,
    TrainingId,
    TrainingList,
    TrainingOut,
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
TrainingIdPath = Annotated[TrainingId, Path(description="The training id (the manifest's training_id).")]


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


@router.post(
    "/trainings",
    status_code=201,
    response_model=TrainingOut,
    responses={
        200: {"model": TrainingOut, "description": "The same manifest was already registered."},
        **problem_responses(ProblemType.INVALID_MANIFEST, ProblemType.TRAINING_EXISTS),
    },
    summary="Register a consortium training with the manifest every member signed",
)
async def register_training(body: SignedManifestIn, engine: EngineDep) -> JSONResponse:
    registered = await run_in_threadpool(engine.trainings.register, body.model_dump())
    view = await run_in_threadpool(_training, engine, registered.signed.manifest.training_id)
    return JSONResponse(TrainingOut(**view).model_dump(), status_code=201 if registered.created else 200)


@router.get("/trainings", response_model=TrainingList, summary="Every registered training with its rounds")
async def list_trainings(engine: EngineDep) -> dict:
    def load() -> dict:
        with engine.database.read() as session:
            return {"trainings": [engine.trainings.view(session, row) for row in engine.trainings.all(session)]}

    return await run_in_threadpool(load)


@router.get(
    "/trainings/{training_id}",
    response_model=TrainingOut,
    responses=problem_responses(ProblemType.TRAINING_NOT_FOUND),
    summary="One training: its members, its manifest and its rounds with their step and outcome",
)
async def get_training(training_id: TrainingIdPath, engine: EngineDep) -> dict:
    return await run_in_threadpool(_training, engine, training_id)


def _training(engine, training_id: str) -> dict:
    from service.db import TrainingRow

    with engine.database.read() as session:
        row = session.get(TrainingRow, training_id)
        if row is None:
            raise ServiceProblem(ProblemType.TRAINING_NOT_FOUND, f"no training {training_id!r}")
        return engine.trainings.view(session, row)


def _status(engine, round_id: str) -> dict:
    with engine.database.read() as session:
        row = engine.round_row(session, round_id)
        return round_status_view(session, engine, row)


def _list(engine) -> dict:
    with engine.database.read() as session:
        rows = session.execute(select(RoundRow).order_by(RoundRow.created_at.desc())).scalars().all()
        return {"rounds": [round_status_view(session, engine, row) for row in rows]}
