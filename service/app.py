"""The FastAPI application factory: ``create_app(settings)``; nothing is built at import time.

The lifespan owns the store: it prepares the private data directory
(:mod:`service.storage`), opens the database (creating the schema), the ledger seam and
the :class:`~service.rounds.RoundEngine`, closes whatever became due while the server
was down (:meth:`RoundEngine.recover`), and runs the background task that closes stages
at their deadlines and records finished rounds in the ledger.

Four pure-ASGI layers stand in front of the routes, so that nothing is read from an
unauthenticated caller beyond its headers: :class:`OperatorEndpoints` (``/docs``,
``/openapi.json``, ``/metrics`` only on the operator listener, or with the admin token),
:class:`AdminTokenGate` (the admin bearer token is checked before FastAPI reads an admin
body), :class:`BodyReadDeadline` (a body that is not delivered within the deadline is
cut off with 408) and :class:`JsonBodyLimit`. Participant uploads are authenticated
from their headers by their route before it streams the body.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline
from starlette.exceptions import HTTPException as StarletteHTTPException

from secagg.http_contract import MAX_OTHER_BODY_BYTES, PROBLEM_TYPE_PREFIX, constant_time_equal
from service.db import Database
from service.ledger import RoundLedger, load_or_create_signing_key
from service.logs import configure_logging
from service.metrics import ServiceMetrics
from service.problems import PROBLEM_CONTENT_TYPE, Problem, ProblemType, ServiceProblem, problem_body
from service.rounds import MAX_DIM, RoundEngine
from service.rounds.engines import ChunkEngine, EngineKind, make_engine
from service.settings import ServiceSettings, load_settings
from service.storage import prepare_private_storage
from service.watch import RoundWatch

LOGGER = logging.getLogger("secagg.service")
NONCE_PURGE_EVERY_TICKS = 120
MAX_JSON_BODY_BYTES = MAX_OTHER_BODY_BYTES
"""Request bodies other than protocol messages (admin JSON) are refused above 4 MiB while
being read: a cohort of 65,536 ids fits; a memory-exhaustion attempt does not."""
DOCS_PREFIX = "/docs"
OPERATOR_PATHS = frozenset({"/openapi.json", "/metrics", DOCS_PREFIX})
"""Served on the operator listener, or with the admin token (``/docs/...`` are Swagger UI's assets)."""
HEALTH_PATHS = frozenset({"/healthz", "/readyz"})
ADMIN_PREFIX = "/v1/admin"


def create_app(settings: ServiceSettings, *, clock: Callable[[], float] | None = None) -> FastAPI:
    """Build the app for ``settings``; the database and ledger open in the lifespan."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        configure_logging(settings.log_level)
        admin_token = settings.read_admin_token()
        prepare_private_storage(settings)
        database = Database(settings.resolved_database_url)
        await run_in_threadpool(database.create_schema)
        ledger_key = load_or_create_signing_key(settings.resolved_ledger_key_file)
        ledger = RoundLedger(settings.resolved_ledger_path, ledger_key, settings.server_id)
        await run_in_threadpool(ledger.ensure_exists)
        metrics = ServiceMetrics.create()
        extra: dict[str, Any] = {"clock": clock} if clock is not None else {}
        engine = RoundEngine(
            database,
            metrics=metrics,
            ledger=ledger,
            max_dim=MAX_DIM,
            max_open_rounds=settings.max_open_rounds,
            on_round_changed=lambda round_id: watch.notify(round_id),
            chunk_engine=lambda: chunk_engine_for(settings),
            **extra,
        )
        watch = RoundWatch(asyncio.get_running_loop(), engine.current_stage)
        app.state.watch = watch
        app.state.long_polls = {}
        app.state.settings = settings
        app.state.admin_token = admin_token
        app.state.metrics = metrics
        app.state.engine = engine
        engine.start_background_threads()
        await run_in_threadpool(engine.recover)
        task = asyncio.create_task(_background(engine, settings.deadline_poll_seconds))
        LOGGER.info(
            "server_started",
            extra={"database": database.engine.url.get_backend_name(), "ledger_public_key": ledger.public_key.hex()},
        )
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await run_in_threadpool(engine.stop_background_threads)
            database.dispose()
            LOGGER.info("server_stopped")

    # Swagger UI's script, stylesheet and icon come from the fastapi-offline package and are
    # served by this server under /docs/static: /docs works on a network without internet.
    app = FastAPIOffline(
        title="secagg aggregation server",
        version="1",
        summary="Secure aggregation (Bonawitz et al. 2017, SecAgg+) between banks, over signed HTTP requests.",
        description="See docs/API.md for the contract. Errors are application/problem+json with a stable type.",
        lifespan=lifespan,
        docs_url=DOCS_PREFIX,
        redoc_url=None,
        static_url=DOCS_PREFIX + "/static",
        favicon_url=DOCS_PREFIX + "/static/favicon.png",
        swagger_ui_oauth2_redirect_url=DOCS_PREFIX + "/oauth2-redirect",
    )
    _install_problem_handlers(app)
    app.add_middleware(JsonBodyLimit, limit=MAX_JSON_BODY_BYTES)
    app.add_middleware(BodyReadDeadline, seconds=settings.body_timeout_seconds)
    app.add_middleware(AdminTokenGate)
    app.add_middleware(OperatorEndpoints, operator_port=settings.operator_port)
    app.add_middleware(ServerIdentityHeader, server_id=settings.server_id)

    from service.routes import admin, audit, chunks, operations, participant

    app.include_router(operations.router)
    app.include_router(admin.router)
    app.include_router(participant.router)
    app.include_router(chunks.router)
    app.include_router(audit.router)
    app.openapi_schema = None
    _register_problem_schema(app)
    return app


class ServerIdentityHeader:
    """Adds ``X-Secagg-Server-Id`` to every response (a client policy may pin it; TLS authenticates it)."""

    def __init__(self, app: Any, *, server_id: str) -> None:
        self.app = app
        self.header = (b"x-secagg-server-id", server_id.encode("ascii"))

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_header(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message = dict(message)
                message["headers"] = [*message.get("headers", []), self.header]
            await send(message)

        await self.app(scope, receive, send_with_header)


def _admin_token_presented(scope: dict[str, Any]) -> bool:
    """True iff the request's ``Authorization: Bearer`` header carries the app's admin token."""
    expected = scope["app"].state.admin_token.get_secret_value()
    value = dict(scope.get("headers", ())).get(b"authorization", b"").decode("latin-1")
    scheme, _, presented = value.partition(" ")
    return scheme.lower() == "bearer" and constant_time_equal(presented.strip(), expected)


def _count_auth_failure(scope: dict[str, Any], problem: ProblemType) -> None:
    scope["app"].state.metrics.auth_failures.labels(problem.suffix).inc()


def _is_operator_path(path: str) -> bool:
    return path in OPERATOR_PATHS or path.startswith(DOCS_PREFIX + "/")


class AdminTokenGate:
    """Refuses admin requests without the admin bearer token before anything reads their body.

    FastAPI reads and parses a JSON body before it runs the route's dependencies, so the
    token check of the admin router alone would parse a stranger's body (and answer 422
    for malformed JSON). This layer checks the ``Authorization`` header first; the router
    checks it again.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if (path == ADMIN_PREFIX or path.startswith(ADMIN_PREFIX + "/")) and not _admin_token_presented(scope):
            _count_auth_failure(scope, ProblemType.ADMIN_UNAUTHORIZED)
            response = _problem_response(
                ProblemType.ADMIN_UNAUTHORIZED, "a valid admin bearer token is required", headers={"Connection": "close"}
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


class OperatorEndpoints:
    """Where ``/docs``, ``/openapi.json`` and ``/metrics`` are served.

    With an operator listener (``operator_port``), only there, without a token; the
    participant listener answers 404 for them, and the operator listener serves nothing
    else but ``/healthz`` and ``/readyz``. Without one, they need the admin bearer token.
    The listener a request came in on is the local port of its connection (ASGI
    ``scope["server"]``), which no header can change.
    """

    def __init__(self, app: Any, *, operator_port: int | None) -> None:
        self.app = app
        self.operator_port = operator_port

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        server = scope.get("server") or (None, None)
        on_operator_listener = self.operator_port is not None and server[1] == self.operator_port
        operator_path = _is_operator_path(path)
        refusal: JSONResponse | None = None
        if on_operator_listener and not (operator_path or path in HEALTH_PATHS):
            refusal = _problem_response(ProblemType.NOT_FOUND, "the operator listener serves /docs, /openapi.json, /metrics")
        elif operator_path and not on_operator_listener:
            if self.operator_port is not None:
                refusal = _problem_response(ProblemType.NOT_FOUND, "served on the operator listener")
            elif not _admin_token_presented(scope):
                _count_auth_failure(scope, ProblemType.ADMIN_UNAUTHORIZED)
                refusal = _problem_response(ProblemType.ADMIN_UNAUTHORIZED, "a valid admin bearer token is required")
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        await self.app(scope, receive, send)


class BodyReadDeadline:
    """Cuts off a request whose body is not delivered within ``seconds`` of its arrival (408).

    A per-read timeout lets a body trickled one byte at a time hold its connection for
    ever; this is a total deadline on the whole body. Once the body is complete nothing
    is timed any more (a long poll holds its request as long as its route decides). The
    408 carries ``Connection: close``, so the server drops the rest of the body.
    """

    def __init__(self, app: Any, *, seconds: float) -> None:
        self.app = app
        self.seconds = seconds

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.seconds
        body_complete = False
        started = False

        async def bounded_receive() -> dict[str, Any]:
            nonlocal body_complete
            if body_complete:
                return await receive()
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise _BodyTimeout
            try:
                message: dict[str, Any] = await asyncio.wait_for(receive(), remaining)
            except TimeoutError:
                raise _BodyTimeout from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_complete = True
            return message

        async def tracking_send(message: dict[str, Any]) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, bounded_receive, tracking_send)
        except _BodyTimeout:
            if not started:
                response = _problem_response(
                    ProblemType.BODY_TIMEOUT,
                    f"the request body was not received within {self.seconds:g} s",
                    headers={"Connection": "close"},
                )
                await response(scope, receive, send)


class _BodyTimeout(BaseException):
    """Raised from ``receive`` past the body deadline (a BaseException for the same reason as
    :class:`_BodyTooLarge`)."""


class JsonBodyLimit:
    """Refuses request bodies above ``limit`` bytes (413 problem), except message uploads.

    Checked from ``Content-Length`` before anything is read, and while streaming. Message
    uploads (``POST /v1/rounds/{id}/messages``) are exempt: their route enforces the
    round's own limit, computed from its dim and bits, the same way.
    """

    def __init__(self, app: Any, *, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or _is_message_upload(scope):
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", ())).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            response = _problem_response(ProblemType.PAYLOAD_TOO_LARGE, f"request bodies are at most {self.limit} bytes")
            await response(scope, receive, send)
            return
        received = 0
        started = False

        async def limited_receive() -> dict[str, Any]:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise _BodyTooLarge
            return message

        async def tracking_send(message: dict[str, Any]) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge:
            if not started:
                response = _problem_response(ProblemType.PAYLOAD_TOO_LARGE, f"request bodies are at most {self.limit} bytes")
                await response(scope, receive, send)


class _BodyTooLarge(BaseException):
    """Raised from ``receive`` past the limit. A BaseException so that no handler on the
    way (FastAPI turns body-reading errors into 422) mistakes it for a parsing error."""


def _is_message_upload(scope: dict[str, Any]) -> bool:
    """``POST /v1/rounds/{id}/messages`` and ``PUT /v1/rounds/{id}/masked-input/chunks/{k}``: their routes set the limit."""
    parts = scope.get("path", "").split("/")
    if len(parts) < 5 or parts[:3] != ["", "v1", "rounds"]:
        return False
    if scope.get("method") == "POST" and len(parts) == 5 and parts[4] == "messages":
        return True
    return scope.get("method") == "PUT" and len(parts) == 7 and parts[4:6] == ["masked-input", "chunks"]


def chunk_engine_for(settings: ServiceSettings) -> ChunkEngine:
    """The engine of the mask expansion's chunk tasks, as configured (started on first use)."""
    kind = EngineKind.RAY if settings.ray_address is not None else EngineKind(settings.unmask_engine)
    if kind is EngineKind.RAY:
        address = None if settings.ray_address in (None, "local") else settings.ray_address
        return make_engine(kind, workers=settings.unmask_workers, ray_address=address)
    return make_engine(kind, workers=settings.unmask_workers)


def create_app_from_environment() -> FastAPI:
    """Factory for ``uvicorn --factory`` (the workers of ``secagg server --workers N``)."""
    return create_app(load_settings())


async def _background(engine: RoundEngine, interval: float) -> None:
    ticks = 0
    while True:
        await asyncio.sleep(interval)
        try:
            await run_in_threadpool(engine.tick)
            await run_in_threadpool(engine.database.checkpoint)
            ticks += 1
            if ticks % NONCE_PURGE_EVERY_TICKS == 0:
                await run_in_threadpool(engine.database.purge_nonces, engine.clock())
        except asyncio.CancelledError:
            raise
        except Exception:  # the loop must survive a transient database error
            LOGGER.exception("background_tick_failed")


def _problem_response(problem: ProblemType, detail: str, *, headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    return JSONResponse(
        problem_body(problem, detail, **extra), status_code=problem.status, media_type=PROBLEM_CONTENT_TYPE, headers=headers
    )


def _install_problem_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceProblem)
    async def service_problem(request: Request, exc: ServiceProblem) -> JSONResponse:
        return _problem_response(exc.problem, exc.detail, headers=exc.headers or None, **exc.extra)

    @app.exception_handler(RequestValidationError)
    async def validation_problem(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {
                "loc": [str(part) for part in error.get("loc", ())],
                "msg": str(error.get("msg", "")),
                "type": str(error.get("type", "")),
            }
            for error in exc.errors()
        ]
        return _problem_response(ProblemType.VALIDATION_ERROR, "the request does not match its schema", errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def http_problem(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        problem = {404: ProblemType.NOT_FOUND, 405: ProblemType.METHOD_NOT_ALLOWED}.get(exc.status_code)
        if problem is None:
            problem = ProblemType.VALIDATION_ERROR if 400 <= exc.status_code < 500 else ProblemType.SERVICE_UNAVAILABLE
        return _problem_response(problem, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def internal_problem(request: Request, exc: Exception) -> JSONResponse:
        LOGGER.error("internal_error", extra={"error": type(exc).__name__, "path": request.url.path}, exc_info=exc)
        return JSONResponse(
            {
                "type": PROBLEM_TYPE_PREFIX + "internal-error",
                "title": "Internal error",
                "status": 500,
                "detail": "see the server log",
            },
            status_code=500,
            media_type=PROBLEM_CONTENT_TYPE,
        )


def _register_problem_schema(app: FastAPI) -> None:
    """Make sure ``#/components/schemas/Problem`` exists in the OpenAPI document."""
    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = original()
        schema.setdefault("components", {}).setdefault("schemas", {}).setdefault("Problem", Problem.model_json_schema())
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
