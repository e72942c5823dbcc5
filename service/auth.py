"""Authentication dependencies: signed participant requests and the admin bearer token.

Participant requests are checked in the order ``docs/API.md`` section 3 gives, from
the headers alone: headers present and well-formed (uploads also declare their body's
SHA-256), timestamp within the window, signature over the canonical request, key not
revoked, nonce never seen. Only then does an upload's body get read (and bound to the
declared digest while streaming). The nonce is recorded only once the signature
verifies, so an attacker cannot burn a participant's nonces, and it is recorded in its
own committed transaction, before the request does anything else: a replay is refused
even if the first request failed later on.

An unauthenticated caller learns nothing about which ids exist: an unknown key id is
answered exactly like a wrong signature of an enrolled one (``bad-request-signature``,
same detail), after a verification against a decoy key, so the two take the same
work. ``revoked-key`` is answered only to a request whose signature verifies under the
revoked key, i.e. to its holder.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from secagg.hazmat.keys import SigningKey
from secagg.http_contract import (
    EMPTY_BODY_SHA256,
    AuthFailure,
    RequestAuthError,
    RequestCredentials,
    check_freshness,
    constant_time_equal,
    declared_body_digest,
    parse_credentials,
    verify_request,
)
from service.problems import ProblemType, ServiceProblem
from service.rounds import RoundEngine
from service.schemas import ParticipantRole
from service.settings import ServiceSettings

SIGNATURE_DOES_NOT_VERIFY = "the request signature does not verify"
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
    """Well-formed, fresh credentials, not yet verified (``public_key`` None: no such id)."""

    credentials: RequestCredentials
    body_sha256: str
    public_key: bytes | None
    revoked: bool
    role: ParticipantRole | None


@functools.cache
def _decoy_public_key() -> bytes:
    """An Ed25519 key nobody holds, to verify requests of unknown ids against (same cost)."""
    return SigningKey.from_private_bytes(hashlib.sha256(b"secagg decoy request key").digest()).public_bytes


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


def check_credentials(request: Request, engine: RoundEngine, settings: ServiceSettings, *, with_body: bool) -> PendingCaller:
    """Headers, freshness and the key's enrolment record (no verdict on it yet)."""
    try:
        credentials = parse_credentials(request.headers)
        body_sha256 = declared_body_digest(request.headers, required=with_body)
        check_freshness(credentials, now=engine.clock(), max_skew_seconds=settings.max_clock_skew_seconds)
    except RequestAuthError as exc:
        raise _auth_problem(request, _PROBLEM_OF_AUTH_FAILURE[exc.failure], exc.detail) from None
    participant = engine.participant(credentials.key_id)
    if participant is None:
        return PendingCaller(credentials, body_sha256, public_key=None, revoked=False, role=None)
    return PendingCaller(
        credentials,
        body_sha256,
        public_key=participant.public_key,
        revoked=participant.revoked_at is not None,
        role=ParticipantRole(participant.role),
    )


def complete_authentication(request: Request, engine: RoundEngine, settings: ServiceSettings, pending: PendingCaller) -> Caller:
    """Signature (over the declared body digest), revocation, then the single-use nonce."""
    verified = True
    if settings.require_signatures or pending.public_key is None:
        try:
            verify_request(
                pending.credentials,
                pending.public_key if pending.public_key is not None else _decoy_public_key(),
                request.method,
                path_with_query(request),
                body_sha256=pending.body_sha256,
            )
        except RequestAuthError:
            verified = False
    if not verified or pending.public_key is None or pending.role is None:
        raise _auth_problem(request, ProblemType.BAD_REQUEST_SIGNATURE, SIGNATURE_DOES_NOT_VERIFY)
    if pending.revoked:
        raise _auth_problem(request, ProblemType.REVOKED_KEY, "this participant was revoked")
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
    pending = check_credentials(request, engine, settings, with_body=False)
    if pending.body_sha256 != EMPTY_BODY_SHA256:
        raise _auth_problem(request, ProblemType.BAD_REQUEST_SIGNATURE, SIGNATURE_DOES_NOT_VERIFY)
    return complete_authentication(request, engine, settings, pending)


async def signing_headers(
    key_id: Annotated[str | None, Header(alias="X-Secagg-Key-Id", description="Participant id.")] = None,
    timestamp: Annotated[str | None, Header(alias="X-Secagg-Timestamp", description="Unix seconds.")] = None,
    nonce: Annotated[str | None, Header(alias="X-Secagg-Nonce", description="128-bit nonce, 32 hex digits.")] = None,
    signature: Annotated[str | None, Header(alias="X-Secagg-Signature", description="Base64 Ed25519 signature.")] = None,
    body_sha256: Annotated[
        str | None, Header(alias="X-Secagg-Body-Sha256", description="SHA-256 of the body, 64 hex digits (signed).")
    ] = None,
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
    body_sha256: Annotated[
        str | None, Header(alias="X-Secagg-Body-Sha256", description="SHA-256 of the empty body (optional).")
    ] = None,
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
