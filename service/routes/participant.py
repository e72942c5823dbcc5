"""Participant API (signed requests, role ``bank``): parameters, work, messages, result."""

from __future__ import annotations

import base64
import hashlib
import time
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from starlette.requests import ClientDisconnect

from service.auth import (
    BankCaller,
    EngineDep,
    PendingCaller,
    SettingsDep,
    check_credentials,
    complete_authentication,
    require_role,
    signed_request,
    signing_headers,
)
from service.problems import ProblemType, ServiceProblem, problem_responses
from service.rounds import Acceptance, RoundEngine
from service.schemas import MessageAck, ParticipantRole, ResultOut, RoundId, RoundParameters, TrainingId, TrainingOut, WorkList
from service.watch import FALLBACK_RECHECK_SECONDS, MAX_WAIT_SECONDS, RoundWatch

AUTH_PROBLEMS = (
    ProblemType.MISSING_CREDENTIALS,
    ProblemType.MALFORMED_CREDENTIALS,
    ProblemType.STALE_TIMESTAMP,
    ProblemType.UNKNOWN_KEY,
    ProblemType.REVOKED_KEY,
    ProblemType.BAD_REQUEST_SIGNATURE,
    ProblemType.REPLAYED_NONCE,
    ProblemType.WRONG_ROLE,
    ProblemType.VALIDATION_ERROR,
)
MESSAGE_PROBLEMS = (
    ProblemType.ROUND_NOT_FOUND,
    ProblemType.NOT_IN_COHORT,
    ProblemType.SENDER_MISMATCH,
    ProblemType.ROUND_ABORTED,
    ProblemType.PAYLOAD_TOO_LARGE,
    ProblemType.UNSUPPORTED_MEDIA_TYPE,
    ProblemType.MALFORMED,
    ProblemType.WRONG_STAGE,
    ProblemType.DUPLICATE_SUBMISSION,
    ProblemType.NOT_IN_ROUND,
    ProblemType.UNKNOWN_SENDER,
    ProblemType.WRONG_SESSION,
    ProblemType.INVALID_SIGNATURE,
    ProblemType.WRONG_LENGTH,
    ProblemType.NOT_REDUCED,
    ProblemType.WRONG_RECIPIENTS,
    ProblemType.INVALID_PUBLIC_KEY,
    ProblemType.DUPLICATE_PUBLIC_KEY,
    ProblemType.WRONG_SHARES,
)
OCTET_STREAM = "application/octet-stream"
STAGE_HEADER = "X-Secagg-Stage"

router = APIRouter(prefix="/v1", tags=["participant"], responses=problem_responses(*AUTH_PROBLEMS))

RoundIdPath = Annotated[RoundId, Path(description="The round id (32 hex digits).")]


@router.get("/work", response_model=WorkList, summary="Running rounds where the caller has something to do")
async def work(
    caller: BankCaller,
    engine: EngineDep,
    training: Annotated[
        TrainingId | None, Query(description="Only the rounds of this consortium training (a bank's own training).")
    ] = None,
) -> dict:
    return {"items": await run_in_threadpool(lambda: engine.work_for(caller.participant_id, training=training))}


@router.get(
    "/trainings/{training_id}",
    response_model=TrainingOut,
    responses=problem_responses(ProblemType.TRAINING_NOT_FOUND),
    summary="The caller's training: its signed manifest and its rounds, with their step and outcome",
)
async def training(
    training_id: Annotated[TrainingId, Path(description="The training id.")], caller: BankCaller, engine: EngineDep
) -> dict:
    def load() -> dict:
        from secagg.consortium import MemberRole
        from service.db import TrainingRow

        with engine.database.read() as session:
            row = session.get(TrainingRow, training_id)
            if row is None or row.id not in {
                t.id for t in engine.trainings.of_member(session, caller.participant_id, MemberRole.BANK)
            }:
                raise ServiceProblem(ProblemType.TRAINING_NOT_FOUND, f"no training {training_id!r} of yours")
            return engine.trainings.view(session, row)

    return await run_in_threadpool(load)


@router.get(
    "/rounds/{round_id}",
    response_model=RoundParameters,
    responses=problem_responses(ProblemType.ROUND_NOT_FOUND, ProblemType.NOT_IN_COHORT),
    summary="The round's parameters (to build and check a RoundConfig) and stage",
)
async def round_parameters(round_id: RoundIdPath, caller: BankCaller, engine: EngineDep) -> dict:
    return await run_in_threadpool(_parameters, engine, round_id, caller.participant_id)


def _parameters(engine: RoundEngine, round_id: str, participant_id: str) -> dict:
    engine.advance_if_overdue(round_id)
    engine.member_index(round_id, participant_id)
    with engine.database.read() as session:
        row = engine.round_row(session, round_id)
        return engine.parameters(round_id).public_dict(row)


@router.post(
    "/rounds/{round_id}/messages",
    status_code=202,
    response_model=MessageAck,
    responses={
        200: {"model": MessageAck, "description": "Byte-identical resubmission of an accepted message."},
        **problem_responses(*MESSAGE_PROBLEMS),
    },
    summary="Send one encoded client message for the round's current stage",
    dependencies=[Depends(signing_headers)],
    openapi_extra={
        "requestBody": {
            "required": True,
            "description": "One client message in the core's binary encoding (secagg.messages.encode).",
            "content": {OCTET_STREAM: {"schema": {"type": "string", "format": "binary"}}},
        },
    },
)
async def post_message(round_id: RoundIdPath, request: Request, engine: EngineDep, settings: SettingsDep) -> Response:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()

    def before_body() -> tuple[PendingCaller, int]:
        pending = check_credentials(request, engine, settings)
        if content_type != OCTET_STREAM:
            raise ServiceProblem(ProblemType.UNSUPPORTED_MEDIA_TYPE, f"messages are {OCTET_STREAM}")
        return pending, engine.max_message_bytes(round_id)

    pending, limit = await run_in_threadpool(before_body)
    body = await _read_limited(request, limit)

    def after_body() -> Acceptance:
        digest = hashlib.sha256(body).hexdigest()
        caller = complete_authentication(request, engine, settings, pending, body_sha256=digest)
        require_role(caller, ParticipantRole.BANK)
        try:
            return engine.accept(round_id, caller.participant_id, body, body_sha256=digest)
        except ServiceProblem as problem:
            request.app.state.metrics.messages_rejected.labels(problem.problem.suffix).inc()
            raise

    acceptance = await run_in_threadpool(after_body)
    ack = MessageAck(
        round_id=round_id,
        stage=acceptance.stage.value,
        sender=acceptance.sender,
        status="already-accepted" if acceptance.already_accepted else "accepted",
        message_sha256=acceptance.message_sha256,
    )
    return JSONResponse(ack.model_dump(), status_code=200 if acceptance.already_accepted else 202)


async def _read_limited(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed ``limit`` (before reading it all)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ServiceProblem(ProblemType.VALIDATION_ERROR, "Content-Length is not a number")
        if int(declared) > limit:
            raise ServiceProblem(ProblemType.PAYLOAD_TOO_LARGE, f"this round's messages are at most {limit} bytes")
    buffer = bytearray()
    try:
        async for chunk in request.stream():
            if len(buffer) + len(chunk) > limit:
                raise ServiceProblem(ProblemType.PAYLOAD_TOO_LARGE, f"this round's messages are at most {limit} bytes")
            buffer += chunk
    except ClientDisconnect:
        raise ServiceProblem(ProblemType.INCOMPLETE_BODY, "the client disconnected before sending the whole body") from None
    return bytes(buffer)


@router.get(
    "/rounds/{round_id}/messages/me",
    responses={
        200: {
            "description": "The server message to answer now; the stage it opens is in X-Secagg-Stage.",
            "content": {OCTET_STREAM: {"schema": {"type": "string", "format": "binary"}}},
        },
        204: {
            "description": "Nothing to answer yet (R0, or already answered) within the wait; see Retry-After and X-Secagg-Stage."
        },
        **problem_responses(
            ProblemType.ROUND_NOT_FOUND,
            ProblemType.NOT_IN_COHORT,
            ProblemType.EXCLUDED,
            ProblemType.ROUND_COMPLETED,
            ProblemType.ROUND_ABORTED,
        ),
    },
    response_class=Response,
    summary="The server message addressed to the caller for the current stage",
)
async def my_message(
    round_id: RoundIdPath,
    request: Request,
    caller: BankCaller,
    engine: EngineDep,
    settings: SettingsDep,
    wait: Annotated[
        float,
        Query(ge=0, le=MAX_WAIT_SECONDS, description="Long poll: wait up to this many seconds for something to answer."),
    ] = 0,
) -> Response:
    watch: RoundWatch = request.app.state.watch
    give_up = time.monotonic() + wait
    while True:
        changed = watch.event(round_id)  # taken before the check, so no change slips between
        stage, outbound = await run_in_threadpool(engine.message_for, round_id, caller.participant_id)
        remaining = give_up - time.monotonic()
        if outbound is not None or remaining <= 0:
            break
        await watch.wait(changed, min(remaining, FALLBACK_RECHECK_SECONDS))
    if outbound is None:
        retry_after = "0" if wait > 0 else str(settings.retry_after_seconds)
        return Response(status_code=204, headers={"Retry-After": retry_after, STAGE_HEADER: stage})
    return Response(
        content=outbound.body,
        media_type=OCTET_STREAM,
        headers={STAGE_HEADER: outbound.stage, "X-Secagg-Message-Type": outbound.message_type},
    )


@router.get(
    "/rounds/{round_id}/result",
    responses={
        200: {
            "description": "The sum in Z_2^b: dim little-endian unsigned integers of the ring's container width "
            "(or ResultOut as JSON with Accept: application/json).",
            "content": {
                OCTET_STREAM: {"schema": {"type": "string", "format": "binary"}},
                "application/json": {"schema": {"$ref": "#/components/schemas/ResultOut"}},
            },
        },
        **problem_responses(
            ProblemType.ROUND_NOT_FOUND, ProblemType.NOT_IN_COHORT, ProblemType.RESULT_NOT_READY, ProblemType.ROUND_ABORTED
        ),
    },
    response_class=Response,
    summary="The round's result once completed",
)
async def result(
    round_id: RoundIdPath, request: Request, caller: BankCaller, engine: EngineDep, settings: SettingsDep
) -> Response:
    try:
        parameters, vector, digest, survivors = await run_in_threadpool(engine.result_for, round_id, caller.participant_id)
    except ServiceProblem as problem:
        if problem.problem is ProblemType.RESULT_NOT_READY:
            problem.headers["Retry-After"] = str(settings.retry_after_seconds)
        raise
    if "application/json" in request.headers.get("accept", ""):
        body = ResultOut(
            round_id=round_id,
            dim=parameters.dim,
            bits=parameters.bits,
            survivors=survivors,
            result_sha256=digest,
            vector_base64=base64.b64encode(vector).decode("ascii"),
        )
        return JSONResponse(body.model_dump())
    return Response(
        content=vector,
        media_type=OCTET_STREAM,
        headers={
            "X-Secagg-Dim": str(parameters.dim),
            "X-Secagg-Bits": str(parameters.bits),
            "X-Secagg-Survivors": ",".join(str(index) for index in survivors),
            "X-Secagg-Result-Sha256": digest,
        },
    )


__all__ = ["router", "signed_request"]
