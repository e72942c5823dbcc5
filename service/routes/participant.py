"""Participant API (signed requests, role ``bank``): parameters, work, messages, result."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import time
from collections.abc import Iterator
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.requests import ClientDisconnect

from secagg.http_contract import BODY_SHA256_HEADER
from service.auth import (
    BankCaller,
    Caller,
    EngineDep,
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
from service.settings import ServiceSettings
from service.watch import MAX_WAIT_SECONDS, RoundWatch

AUTH_PROBLEMS = (
    ProblemType.MISSING_CREDENTIALS,
    ProblemType.MALFORMED_CREDENTIALS,
    ProblemType.STALE_TIMESTAMP,
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
    ProblemType.BODY_DIGEST_MISMATCH,
    ProblemType.BODY_TIMEOUT,
    ProblemType.INCOMPLETE_BODY,
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

    def authenticate() -> tuple[Caller, str, int]:
        pending = check_credentials(request, engine, settings, with_body=True)
        caller = require_role(complete_authentication(request, engine, settings, pending), ParticipantRole.BANK)
        if content_type != OCTET_STREAM:
            raise ServiceProblem(ProblemType.UNSUPPORTED_MEDIA_TYPE, f"messages are {OCTET_STREAM}")
        return caller, pending.body_sha256, engine.max_message_bytes(round_id)

    caller, declared_sha256, limit = await run_in_threadpool(authenticate)
    body = await _read_bound_body(request, limit, declared_sha256)

    def accept() -> Acceptance:
        try:
            return engine.accept(round_id, caller.participant_id, body, body_sha256=declared_sha256)
        except ServiceProblem as problem:
            request.app.state.metrics.messages_rejected.labels(problem.problem.suffix).inc()
            raise

    acceptance = await run_in_threadpool(accept)
    ack = MessageAck(
        round_id=round_id,
        stage=acceptance.stage.value,
        sender=acceptance.sender,
        status="already-accepted" if acceptance.already_accepted else "accepted",
        message_sha256=acceptance.message_sha256,
        closed_stage=acceptance.closed_stage,
    )
    return JSONResponse(ack.model_dump(), status_code=200 if acceptance.already_accepted else 202)


async def _read_bound_body(request: Request, limit: int, declared_sha256: str) -> bytes:
    """The body of an authenticated upload, refused with 413 as soon as it is known to exceed
    ``limit`` (before reading it all) and with ``body-digest-mismatch`` if its SHA-256, computed
    while streaming, is not the one the request declared and signed."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ServiceProblem(ProblemType.VALIDATION_ERROR, "Content-Length is not a number")
        if int(declared) > limit:
            raise ServiceProblem(ProblemType.PAYLOAD_TOO_LARGE, f"this round's messages are at most {limit} bytes")
    buffer = bytearray()
    digest = hashlib.sha256()
    try:
        async for chunk in request.stream():
            if len(buffer) + len(chunk) > limit:
                raise ServiceProblem(ProblemType.PAYLOAD_TOO_LARGE, f"this round's messages are at most {limit} bytes")
            buffer += chunk
            digest.update(chunk)
    except ClientDisconnect:
        raise ServiceProblem(ProblemType.INCOMPLETE_BODY, "the client disconnected before sending the whole body") from None
    if digest.hexdigest() != declared_sha256:
        raise ServiceProblem(ProblemType.BODY_DIGEST_MISMATCH, f"the body's SHA-256 is not the declared {BODY_SHA256_HEADER}")
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
            ProblemType.TOO_MANY_REQUESTS,
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
    with _long_poll_slot(request, caller, settings, held=wait > 0):
        while True:
            changed = watch.event(round_id)  # taken before the check, so no change slips between
            stage, outbound = await run_in_threadpool(engine.message_for, round_id, caller.participant_id)
            remaining = give_up - time.monotonic()
            if outbound is not None or remaining <= 0:
                break
            await watch.wait_for_stage_change(round_id, changed, seen=stage, timeout=remaining)
    if outbound is None:
        retry_after = "0" if wait > 0 else str(settings.retry_after_seconds)
        return Response(status_code=204, headers={"Retry-After": retry_after, STAGE_HEADER: stage})
    return Response(
        content=outbound.body,
        media_type=OCTET_STREAM,
        headers={STAGE_HEADER: outbound.stage, "X-Secagg-Message-Type": outbound.message_type},
    )


@contextlib.contextmanager
def _long_poll_slot(request: Request, caller: Caller, settings: ServiceSettings, *, held: bool) -> Iterator[None]:
    """Counts the caller's long polls held by this process; refuses one beyond the cap (429).

    Runs on the event loop only (never in the threadpool), so the counter needs no lock.
    A plain poll (``wait=0``) holds nothing and is not counted.
    """
    if not held:
        yield
        return
    held_polls: dict[str, int] = request.app.state.long_polls
    participant = caller.participant_id
    if held_polls.get(participant, 0) >= settings.max_long_polls_per_participant:
        raise ServiceProblem(
            ProblemType.TOO_MANY_REQUESTS,
            f"at most {settings.max_long_polls_per_participant} long polls per participant at once",
            headers={"Retry-After": str(settings.retry_after_seconds)},
        )
    held_polls[participant] = held_polls.get(participant, 0) + 1
    try:
        yield
    finally:
        held_polls[participant] -= 1
        if not held_polls[participant]:
            del held_polls[participant]


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
        parameters, digest, survivors = await run_in_threadpool(engine.result_for, round_id, caller.participant_id)
    except ServiceProblem as problem:
        if problem.problem is ProblemType.RESULT_NOT_READY:
            problem.headers["Retry-After"] = str(settings.retry_after_seconds)
        raise
    if "application/json" in request.headers.get("accept", ""):
        return StreamingResponse(
            result_json(round_id, parameters.dim, parameters.bits, survivors, digest, engine.result_bytes(round_id)),
            media_type="application/json",
        )
    return StreamingResponse(
        engine.result_bytes(round_id),
        media_type=OCTET_STREAM,
        headers={
            "Content-Length": str(parameters.layout.vector_bytes),
            "X-Secagg-Dim": str(parameters.dim),
            "X-Secagg-Bits": str(parameters.bits),
            "X-Secagg-Survivors": ",".join(str(index) for index in survivors),
            "X-Secagg-Result-Sha256": digest,
        },
    )


def result_json(
    round_id: str, dim: int, bits: int, survivors: list[int], digest: str, chunks: Iterator[bytes]
) -> Iterator[bytes]:
    """The ``ResultOut`` JSON body, streamed: the vector's base64 is produced chunk by chunk."""
    head = ResultOut(round_id=round_id, dim=dim, bits=bits, survivors=survivors, result_sha256=digest, vector_base64="")
    text = json.dumps(head.model_dump(), separators=(",", ":"))
    prefix, suffix = text.rsplit('""', 1)
    yield (prefix + '"').encode("ascii")
    carry = b""
    for chunk in chunks:
        data = carry + chunk
        whole = len(data) - len(data) % 3
        yield base64.b64encode(data[:whole])
        carry = data[whole:]
    yield base64.b64encode(carry) + ('"' + suffix).encode("ascii")


__all__ = ["router", "signed_request"]
