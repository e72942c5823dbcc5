"""Participant API for vectors in chunks (signed, role ``bank``): masked-input uploads, result chunks.

``docs/API.md`` section 5 is the contract; :mod:`service.rounds.chunks` the storage. Every
request is authenticated from its headers before its body is read: a chunk upload
declares its body's SHA-256 (``X-Secagg-Body-Sha256``), the signature is verified over
it and the nonce recorded, the declared digest must be the one the upload's manifest
gives that chunk, and only then is the body read, bounded by the chunk's exact size and
hashed while streaming. A body that does not hash to the declared digest stores nothing.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from starlette.requests import ClientDisconnect

from secagg.chunks import MASKED_INPUT_HEADER_BYTES
from secagg.http_contract import BODY_SHA256_HEADER, MAX_OTHER_BODY_BYTES
from service.auth import (
    BankCaller,
    Caller,
    EngineDep,
    SettingsDep,
    check_credentials,
    complete_authentication,
    require_role,
    signing_headers,
)
from service.problems import ProblemType, ServiceProblem, problem_responses
from service.rounds import Acceptance
from service.rounds.chunks import ChunkSlot, UploadState
from service.schemas import ChunkAck, MessageAck, ParticipantRole, RoundId, UploadDeclaration, UploadStatus

OCTET_STREAM = "application/octet-stream"
JSON = "application/json"
UPLOAD_PROBLEMS = (
    ProblemType.ROUND_NOT_FOUND,
    ProblemType.NOT_IN_COHORT,
    ProblemType.ROUND_ABORTED,
    ProblemType.WRONG_STAGE,
    ProblemType.MALFORMED,
    ProblemType.SENDER_MISMATCH,
    ProblemType.WRONG_SESSION,
    ProblemType.WRONG_LENGTH,
    ProblemType.NOT_REDUCED,
    ProblemType.DUPLICATE_SUBMISSION,
    ProblemType.UPLOAD_NOT_DECLARED,
    ProblemType.UPLOAD_INCOMPLETE,
    ProblemType.CHUNK_MISMATCH,
    ProblemType.BODY_DIGEST_MISMATCH,
    ProblemType.INCOMPLETE_BODY,
    ProblemType.PAYLOAD_TOO_LARGE,
    ProblemType.UNSUPPORTED_MEDIA_TYPE,
)

router = APIRouter(prefix="/v1", tags=["participant"])

RoundIdPath = Annotated[RoundId, Path(description="The round id (32 hex digits).")]
ChunkIndex = Annotated[int, Path(ge=0, le=(1 << 30), description="The chunk's index, 0-based.")]


def _status(state: UploadState) -> dict:
    return UploadStatus(
        round_id=state.round_id,
        sender=state.sender,
        upload_sha256=state.upload_sha256,
        chunk_bytes=state.chunk_bytes,
        chunks=state.chunks,
        received=list(state.received),
        committed=state.committed,
    ).model_dump()


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def _read_bounded(request: Request, size: int, *, exact: bool) -> bytes:
    """The body: at most ``size`` bytes (exactly ``size`` if ``exact``), refused as soon as it cannot fit."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ServiceProblem(ProblemType.VALIDATION_ERROR, "Content-Length is not a number")
        if int(declared) > size:
            raise ServiceProblem(ProblemType.PAYLOAD_TOO_LARGE, f"this body is at most {size} bytes")
    buffer = bytearray()
    try:
        async for piece in request.stream():
            if len(buffer) + len(piece) > size:
                raise ServiceProblem(ProblemType.PAYLOAD_TOO_LARGE, f"this body is at most {size} bytes")
            buffer += piece
    except ClientDisconnect:
        raise ServiceProblem(ProblemType.INCOMPLETE_BODY, "the client disconnected before sending the whole body") from None
    if exact and len(buffer) != size:
        raise ServiceProblem(ProblemType.WRONG_LENGTH, f"this chunk is {size} bytes, {len(buffer)} were sent")
    return bytes(buffer)


@router.post(
    "/rounds/{round_id}/masked-input",
    status_code=201,
    response_model=UploadStatus,
    responses={
        200: {"model": UploadStatus, "description": "The same manifest was already declared."},
        **problem_responses(*UPLOAD_PROBLEMS),
    },
    summary="Declare a chunked masked-input upload: its header and the SHA-256 of every chunk",
    dependencies=[Depends(signing_headers)],
    openapi_extra={
        "requestBody": {"required": True, "content": {JSON: {"schema": {"$ref": "#/components/schemas/UploadDeclaration"}}}}
    },
)
async def declare_upload(round_id: RoundIdPath, request: Request, engine: EngineDep, settings: SettingsDep) -> Response:
    def authenticate() -> tuple[Caller, str]:
        pending = check_credentials(request, engine, settings, with_body=True)
        caller = require_role(complete_authentication(request, engine, settings, pending), ParticipantRole.BANK)
        if _media_type(request) != JSON:
            raise ServiceProblem(ProblemType.UNSUPPORTED_MEDIA_TYPE, f"an upload declaration is {JSON}")
        return caller, pending.body_sha256

    caller, declared = await run_in_threadpool(authenticate)
    body = await _read_bounded(request, MAX_OTHER_BODY_BYTES, exact=False)
    if hashlib.sha256(body).hexdigest() != declared:
        raise ServiceProblem(ProblemType.BODY_DIGEST_MISMATCH, f"the body's SHA-256 is not the declared {BODY_SHA256_HEADER}")

    def declare() -> tuple[UploadState, bool]:
        try:
            declaration = UploadDeclaration.model_validate_json(body)
        except ValidationError as exc:
            raise ServiceProblem(
                ProblemType.VALIDATION_ERROR,
                "the declaration does not match its schema",
                extra={"errors": exc.errors(include_url=False, include_context=False)},
            ) from None
        header = _decode_header(declaration.header)
        try:
            before = engine.upload_state(round_id, caller.participant_id)
        except ServiceProblem:
            before = None
        state = engine.declare_upload(round_id, caller.participant_id, header, declaration.chunk_sha256)
        return state, before is not None

    state, existed = await run_in_threadpool(declare)
    return JSONResponse(_status(state), status_code=200 if existed else 201)


def _decode_header(text: str) -> bytes:
    try:
        header = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ServiceProblem(ProblemType.MALFORMED, "header is not base64") from None
    if len(header) != MASKED_INPUT_HEADER_BYTES:
        raise ServiceProblem(ProblemType.MALFORMED, f"a masked-input header is {MASKED_INPUT_HEADER_BYTES} bytes")
    return header


@router.get(
    "/rounds/{round_id}/masked-input",
    response_model=UploadStatus,
    responses=problem_responses(ProblemType.ROUND_NOT_FOUND, ProblemType.NOT_IN_COHORT, ProblemType.UPLOAD_NOT_DECLARED),
    summary="The caller's declared upload: which chunks are stored, whether it is committed",
)
async def upload_status(round_id: RoundIdPath, caller: BankCaller, engine: EngineDep) -> dict:
    return _status(await run_in_threadpool(engine.upload_state, round_id, caller.participant_id))


@router.put(
    "/rounds/{round_id}/masked-input/chunks/{index}",
    status_code=202,
    response_model=ChunkAck,
    responses={200: {"model": ChunkAck, "description": "This chunk was already stored."}, **problem_responses(*UPLOAD_PROBLEMS)},
    summary="Store one chunk of the declared upload (durable when acknowledged; retries are idempotent)",
    dependencies=[Depends(signing_headers)],
    openapi_extra={
        "requestBody": {"required": True, "content": {OCTET_STREAM: {"schema": {"type": "string", "format": "binary"}}}}
    },
)
async def put_chunk(
    round_id: RoundIdPath, index: ChunkIndex, request: Request, engine: EngineDep, settings: SettingsDep
) -> Response:
    def authenticate() -> tuple[str, ChunkSlot]:
        pending = check_credentials(request, engine, settings, with_body=True)
        caller = require_role(complete_authentication(request, engine, settings, pending), ParticipantRole.BANK)
        if _media_type(request) != OCTET_STREAM:
            raise ServiceProblem(ProblemType.UNSUPPORTED_MEDIA_TYPE, f"chunks are {OCTET_STREAM}")
        return pending.body_sha256, engine.chunk_slot(round_id, caller.participant_id, index, pending.body_sha256)

    with engine.context.upload_in_flight(round_id):
        declared, slot = await run_in_threadpool(authenticate)
        body = await _read_bounded(request, slot.size, exact=True)
        if hashlib.sha256(body).hexdigest() != declared:
            raise ServiceProblem(ProblemType.BODY_DIGEST_MISMATCH, f"the body's SHA-256 is not the declared {BODY_SHA256_HEADER}")
        stored = False if slot.stored else await run_in_threadpool(engine.store_chunk, round_id, slot, body)
    ack = ChunkAck(
        round_id=round_id,
        sender=slot.sender,
        chunk=index,
        status="accepted" if stored else "already-accepted",
        chunk_sha256=declared,
    )
    return JSONResponse(ack.model_dump(), status_code=202 if stored else 200)


@router.post(
    "/rounds/{round_id}/masked-input/commit",
    status_code=202,
    response_model=MessageAck,
    responses={200: {"model": MessageAck, "description": "Already committed."}, **problem_responses(*UPLOAD_PROBLEMS)},
    summary="Commit the declared upload once every chunk is stored: the masked input is accepted",
)
async def commit_upload(round_id: RoundIdPath, caller: BankCaller, engine: EngineDep) -> Response:
    acceptance: Acceptance = await run_in_threadpool(engine.commit_upload, round_id, caller.participant_id)
    ack = MessageAck(
        round_id=round_id,
        stage=acceptance.stage.value,
        sender=acceptance.sender,
        status="already-accepted" if acceptance.already_accepted else "accepted",
        message_sha256=acceptance.message_sha256,
        closed_stage=acceptance.closed_stage,
    )
    return JSONResponse(ack.model_dump(), status_code=200 if acceptance.already_accepted else 202)


@router.get(
    "/rounds/{round_id}/result/chunks/{index}",
    response_class=Response,
    responses={
        200: {
            "description": "One chunk of the result.",
            "content": {OCTET_STREAM: {"schema": {"type": "string", "format": "binary"}}},
        },
        **problem_responses(
            ProblemType.ROUND_NOT_FOUND,
            ProblemType.NOT_IN_COHORT,
            ProblemType.RESULT_NOT_READY,
            ProblemType.ROUND_ABORTED,
            ProblemType.NOT_FOUND,
        ),
    },
    summary="One chunk of the round's result, with its SHA-256 and the whole result's",
)
async def result_chunk(
    round_id: RoundIdPath, index: ChunkIndex, caller: BankCaller, engine: EngineDep, settings: SettingsDep
) -> Response:
    try:
        parameters, digest, survivors, body, chunk_digest = await run_in_threadpool(
            engine.result_chunk, round_id, caller.participant_id, index
        )
    except ServiceProblem as problem:
        if problem.problem is ProblemType.RESULT_NOT_READY:
            problem.headers["Retry-After"] = str(settings.retry_after_seconds)
        raise
    return Response(
        content=body,
        media_type=OCTET_STREAM,
        headers={
            "X-Secagg-Dim": str(parameters.dim),
            "X-Secagg-Bits": str(parameters.bits),
            "X-Secagg-Chunk-Bytes": str(parameters.chunk_bytes),
            "X-Secagg-Chunks": str(parameters.layout.count),
            "X-Secagg-Chunk-Sha256": chunk_digest,
            "X-Secagg-Survivors": ",".join(str(item) for item in survivors),
            "X-Secagg-Result-Sha256": digest,
        },
    )
