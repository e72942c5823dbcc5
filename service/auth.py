"""Authentication dependencies: signed participant requests and the admin bearer token.

Participant requests are checked in the order ``docs/API.md`` section 3 gives:
headers present and well-formed, timestamp within the window, key enrolled and not
revoked, (body limit, for uploads), signature, nonce never seen. The nonce is recorded
only once the signature verifies, so an attacker cannot burn a participant's nonces,
and it is recorded in its own committed transaction, before the request does anything
else: a replay is refused even if the first request failed later on.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from secagg.http_contract import (
    AuthFailure,
    RequestAuthError,
    RequestCredentials,
    check_freshness,
    constant_time_equal,
    parse_credentials,
    verify_request,
)
from service.problems import ProblemType, ServiceProblem
from service.rounds import RoundEngine
from service.schemas import ParticipantRole
from service.settings import ServiceSettings

EMPTY_BODY_SHA256 = hashlib.sha256(b"").hexdigest()

_PROBLEM_OF_AUTH_FAILURE = {
    AuthFailure.MISSING_CREDENTIALS: ProblemType.MISSING_CREDENTIALS,
    AuthFailure.MALFORMED_CREDENTIALS: ProblemType.MALFORMED_CREDENTIALS,
    AuthFailure.STALE_TIMESTAMP: ProblemType.STALE_TIMESTAMP,
    AuthFailure.BAD_REQUEST_SIGNATURE: ProblemType.BAD_REQUEST_SIGNATURE,
}


@dataclass(frozen=True, slots=True)
class Caller:
    """An authenticated participant."""

    participant_id: str
    role: ParticipantRole


@dataclass(frozen=True, slots=True)
class PendingCaller:
    """Credentials that passed every check except the signature and the nonce."""

    credentials: RequestCredentials
    public_key: bytes
    role: ParticipantRole


def engine_of(request: Request) -> RoundEngine:
    return request.app.state.engine


def settings_of(request: Request) -> ServiceSettings:
    return request.app.state.settings


EngineDep = Annotated[RoundEngine, Depends(engine_of)]
SettingsDep = Annotated[ServiceSettings, Depends(settings_of)]


def _auth_problem(request: Request, problem: ProblemType, detail: str) -> ServiceProblem:
    request.app.state.metrics.auth_failures.labels(problem.suffix).inc()
    return ServiceProblem(problem, detail)


def path_with_query(request: Request) -> str:
    """The request target exactly as the client sent it (undecoded path and query)."""
    raw_path = request.scope.get("raw_path") or request.scope["path"].encode("utf-8")
    target = raw_path.decode("latin-1")
    query = request.scope.get("query_string") or b""
    return target + ("?" + query.decode("latin-1") if query else "")


def check_credentials(request: Request, engine: RoundEngine, settings: ServiceSettings) -> PendingCaller:
    """Headers, freshness and enrolment (no signature yet)."""
    try:
        credentials = parse_credentials(request.headers)
        check_freshness(credentials, now=engine.clock(), max_skew_seconds=settings.max_clock_skew_seconds)
    except RequestAuthError as exc:
        raise _auth_problem(request, _PROBLEM_OF_AUTH_FAILURE[exc.failure], exc.detail) from None
    participant = engine.participant(credentials.key_id)
    if participant is None:
        raise _auth_problem(request, ProblemType.UNKNOWN_KEY, "no participant is enrolled under this key id")
    if participant.revoked_at is not None:
        raise _auth_problem(request, ProblemType.REVOKED_KEY, "this participant was revoked")
    return PendingCaller(credentials=credentials, public_key=participant.public_key, role=ParticipantRole(participant.role))


def complete_authentication(
    request: Request, engine: RoundEngine, settings: ServiceSettings, pending: PendingCaller, *, body_sha256: str
) -> Caller:
    """Signature, then the single-use nonce."""
    if settings.require_signatures:
        try:
            verify_request(
                pending.credentials, pending.public_key, request.method, path_with_query(request), body_sha256=body_sha256
            )
        except RequestAuthError as exc:
            raise _auth_problem(request, _PROBLEM_OF_AUTH_FAILURE[exc.failure], exc.detail) from None
    credentials = pending.credentials
    expires_at = max(engine.clock(), credentials.timestamp) + 2 * settings.max_clock_skew_seconds
    if not engine.database.record_nonce(credentials.key_id, credentials.nonce, expires_at):
        raise _auth_problem(request, ProblemType.REPLAYED_NONCE, "this nonce was already used")
    return Caller(participant_id=credentials.key_id, role=pending.role)


def require_role(caller: Caller, role: ParticipantRole) -> Caller:
    if caller.role is not role:
        raise ServiceProblem(ProblemType.WRONG_ROLE, f"this endpoint is for the {role.value} role")
    return caller


def _signed_get(request: Request, engine: RoundEngine, settings: ServiceSettings) -> Caller:
    pending = check_credentials(request, engine, settings)
    return complete_authentication(request, engine, settings, pending, body_sha256=EMPTY_BODY_SHA256)


async def signing_headers(
    key_id: Annotated[str | None, Header(alias="X-Secagg-Key-Id", description="Participant id.")] = None,
    timestamp: Annotated[str | None, Header(alias="X-Secagg-Timestamp", description="Unix seconds.")] = None,
    nonce: Annotated[str | None, Header(alias="X-Secagg-Nonce", description="128-bit nonce, 32 hex digits.")] = None,
    signature: Annotated[str | None, Header(alias="X-Secagg-Signature", description="Base64 Ed25519 signature.")] = None,
) -> None:
    """Declares the signing headers in OpenAPI for endpoints that check them in their body."""


async def signed_request(
    request: Request,
    engine: EngineDep,
    settings: SettingsDep,
    key_id: Annotated[str | None, Header(alias="X-Secagg-Key-Id", description="Participant id.")] = None,
    timestamp: Annotated[str | None, Header(alias="X-Secagg-Timestamp", description="Unix seconds.")] = None,
    nonce: Annotated[str | None, Header(alias="X-Secagg-Nonce", description="128-bit nonce, 32 hex digits.")] = None,
    signature: Annotated[str | None, Header(alias="X-Secagg-Signature", description="Base64 Ed25519 signature.")] = None,
) -> Caller:
    """A signed request without a body (GET); the header parameters are declared for OpenAPI."""
    return await run_in_threadpool(_signed_get, request, engine, settings)


SignedCaller = Annotated[Caller, Depends(signed_request)]


async def bank_caller(caller: SignedCaller) -> Caller:
    return require_role(caller, ParticipantRole.BANK)


async def auditor_caller(caller: SignedCaller) -> Caller:
    return require_role(caller, ParticipantRole.AUDITOR)


BankCaller = Annotated[Caller, Depends(bank_caller)]
AuditorCaller = Annotated[Caller, Depends(auditor_caller)]

_bearer = HTTPBearer(auto_error=False, description="The admin token from --admin-token-file.")


async def admin_caller(request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> None:
    expected = request.app.state.admin_token.get_secret_value()
    presented = credentials.credentials if credentials is not None and credentials.scheme.lower() == "bearer" else ""
    if not constant_time_equal(presented, expected):
        raise _auth_problem(request, ProblemType.ADMIN_UNAUTHORIZED, "a valid admin bearer token is required")


AdminCaller = Depends(admin_caller)
