"""Test harness for the service: the server in process or as a subprocess, and signed-request helpers.

Two servers answer the same HTTP contract:

* :class:`InProcessServer`: the app from :func:`service.app.create_app` in the test
  process, on an asyncio event loop of its own in a thread (:class:`AppLoop`), reached
  through :class:`httpx.ASGITransport`. Its lifespan runs as under uvicorn (the
  database, the ledger, the recovery pass and the background deadline task), and
  requests share the loop with it, so long polls wait and the background task ticks as
  they do under uvicorn. Its clock is an :class:`OffsetClock` a test moves forward
  instead of sleeping until a deadline, and :meth:`InProcessServer.round_change` waits
  for the app's own notification that a round moved. For every contract test that
  needs no process and no socket.
* :class:`clients.harness.local_server.LocalServer` (``python -m service`` under uvicorn
  on a free loopback port), for what needs a real process or socket: SIGKILL and
  restart on the same database, several worker processes, TLS, the command line.

Clients are the core's :class:`~secagg.client.ClientSession` objects driven over HTTP
with a small signed-request helper (the bank client library is tested separately).
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import logging
import secrets
import tempfile
import threading
import time
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO, TypeVar

import httpx
import numpy as np
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from clients.harness.local_server import LocalServer
from dp.atomic_files import write_private_file
from secagg.client import ClientSession
from secagg.config import GraphKind, ProtocolMode, RoundConfig
from secagg.errors import ProtocolAbort
from secagg.hazmat.keys import SigningKey
from secagg.hazmat.randomness import DeterministicRandom
from secagg.http_contract import sign_request
from secagg.messages import encode
from service.app import create_app
from service.settings import ServiceSettings
from service.storage import check_private_storage
from service.watch import RoundWatch

ServerProcess = LocalServer
"""The subprocess server: the same harness as the demo and the simulations."""

IN_PROCESS_HOST = "in-process.test"
IN_PROCESS_PORT = 8000
IN_PROCESS_OPERATOR_PORT = 8001
SERVER_LOGGERS = ("secagg", "uvicorn", "uvicorn.error", "uvicorn.access")
LIFESPAN_TIMEOUT_SECONDS = 60.0
EXCHANGE_TIMEOUT_SECONDS = 60.0
EXCHANGE_MARGIN_SECONDS = 10.0
T = TypeVar("T")


class OffsetClock:
    """Wall-clock time plus an offset that only grows: the server's clock in process.

    Request signatures are checked against it, so an offset within the clock-skew
    window (120 s by default) keeps requests signed with ``time.time()`` fresh.
    """

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        assert seconds >= 0
        self.offset += seconds


class _ArgumentsOnly(ServiceSettings):
    """Settings from the given arguments only: the ``SECAGG_*`` environment of the test run is ignored."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


class AppLoop:
    """An asyncio event loop in a thread of its own, running one ASGI app and its lifespan.

    The lifespan is driven with the ASGI lifespan protocol, as uvicorn drives it: startup
    before the first request, shutdown when :meth:`close` is called. Requests and the
    app's background tasks share this loop, so a long poll waits there while other
    requests are served. Callers in any thread submit work with :meth:`call`.
    """

    def __init__(self, app: Any) -> None:
        self.app = app
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="secagg-app-loop", daemon=True)
        self._thread.start()
        self._lifespan_messages: asyncio.Queue[dict[str, Any]] | None = None
        self._lifespan_task: asyncio.Task[None] | None = None
        self._startup: asyncio.Future[None] | None = None
        self._shutdown: asyncio.Future[None] | None = None
        try:
            self.call(self._start_lifespan(), timeout=LIFESPAN_TIMEOUT_SECONDS)
        except BaseException:
            self._stop_loop()
            raise

    def call(self, coroutine: Coroutine[Any, Any, T], *, timeout: float) -> T:
        """Run ``coroutine`` on the app's loop and return its result (from any other thread)."""
        future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise

    async def _start_lifespan(self) -> None:
        loop = asyncio.get_running_loop()
        self._lifespan_messages = asyncio.Queue()
        self._startup, self._shutdown = loop.create_future(), loop.create_future()
        messages, startup, shutdown = self._lifespan_messages, self._startup, self._shutdown

        async def send(message: dict[str, Any]) -> None:
            kind = message["type"]
            outcome = startup if kind.startswith("lifespan.startup.") else shutdown
            if outcome.done():
                return
            if kind.endswith(".complete"):
                outcome.set_result(None)
            else:
                outcome.set_exception(RuntimeError(f"{kind}: {message.get('message', '')}"))

        async def run() -> None:
            try:
                await self.app({"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}}, messages.get, send)
            except Exception as exc:  # reported through the startup or shutdown it interrupted
                for outcome in (startup, shutdown):
                    if not outcome.done():
                        outcome.set_exception(RuntimeError(f"the lifespan ended with {exc!r}"))

        self._lifespan_task = loop.create_task(run())
        await messages.put({"type": "lifespan.startup"})
        await startup

    async def _stop_lifespan(self) -> None:
        assert self._lifespan_messages is not None and self._shutdown is not None and self._lifespan_task is not None
        await self._lifespan_messages.put({"type": "lifespan.shutdown"})
        await self._shutdown
        await self._lifespan_task

    def close(self) -> None:
        """Shut the app down (its lifespan's exit), then stop the loop and its thread."""
        try:
            self.call(self._stop_lifespan(), timeout=LIFESPAN_TIMEOUT_SECONDS)
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=LIFESPAN_TIMEOUT_SECONDS)
        self.loop.close()


class OnAppLoop(httpx.BaseTransport):
    """A synchronous httpx transport: each request goes to the app through
    :class:`httpx.ASGITransport`, on the app's loop. Usable from any thread.

    The request body is read first (a streamed body reaches the app as one chunk, with
    the headers it was sent with). An app exception becomes the app's own 500 answer,
    as under uvicorn. Timeouts: an exchange that takes longer than the request's read
    timeout plus a margin (or :data:`EXCHANGE_TIMEOUT_SECONDS`) raises
    :class:`httpx.ReadTimeout`.
    """

    def __init__(self, app_loop: AppLoop) -> None:
        self._app_loop = app_loop
        self._asgi = httpx.ASGITransport(app=app_loop.app, raise_app_exceptions=False)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        request.read()

        async def exchange() -> tuple[int, list[tuple[bytes, bytes]], bytes]:
            response = await self._asgi.handle_async_request(request)
            return response.status_code, response.headers.raw, await response.aread()

        read_timeout = (request.extensions.get("timeout") or {}).get("read")
        timeout = EXCHANGE_TIMEOUT_SECONDS if read_timeout is None else read_timeout + EXCHANGE_MARGIN_SECONDS
        try:
            status, headers, content = self._app_loop.call(exchange(), timeout=timeout)
        except concurrent.futures.TimeoutError:
            raise httpx.ReadTimeout(f"no answer from the app within {timeout:g} s", request=request) from None
        return httpx.Response(status, headers=headers, content=content, request=request)


class ObservedLongPolls:
    """The app's :class:`~service.watch.RoundWatch`, seen by a test: which long polls are waiting, and why they woke.

    Installed as ``app.state.watch`` (what the long-poll route reads per request) in front
    of the app's own watch, to which it forwards everything; the engine keeps notifying
    the app's own watch. :meth:`wait_for_parked` returns once the given number of long
    polls on a round found nothing to answer and are waiting, so a test changes the round
    (or sends the next poll) only then; :meth:`wake_ups` tells how each wait ended:
    ``"changed"`` (the engine's notice) or ``"timed-out"`` (the wait ran out, or the
    watch's own read of the stage found it moved).
    """

    def __init__(self, watch: RoundWatch) -> None:
        self._watch = watch
        self._waiting: dict[str, int] = {}
        self._wake_ups: dict[str, list[str]] = {}
        self._changed = threading.Condition()

    def event(self, round_id: str) -> asyncio.Event:
        return self._watch.event(round_id)

    def notify(self, round_id: str) -> None:
        self._watch.notify(round_id)

    async def wait_for_stage_change(self, round_id: str, event: asyncio.Event, *, seen: str, timeout: float) -> None:
        with self._changed:
            self._waiting[round_id] = self._waiting.get(round_id, 0) + 1
            self._changed.notify_all()
        try:
            await self._watch.wait_for_stage_change(round_id, event, seen=seen, timeout=timeout)
        finally:
            with self._changed:
                self._waiting[round_id] -= 1
                self._wake_ups.setdefault(round_id, []).append("changed" if event.is_set() else "timed-out")
                self._changed.notify_all()

    def wait_for_parked(self, round_id: str, count: int = 1, *, timeout: float) -> bool:
        """Block until ``count`` long polls on ``round_id`` are waiting at once (True), or ``timeout`` (False)."""
        with self._changed:
            return self._changed.wait_for(lambda: self._waiting.get(round_id, 0) >= count, timeout)

    def wake_ups(self, round_id: str) -> list[str]:
        with self._changed:
            return list(self._wake_ups.get(round_id, []))


class RoundChange:
    """The app's notification of the next change of one round (taken before causing it)."""

    def __init__(self, app_loop: AppLoop, event: asyncio.Event) -> None:
        self._app_loop = app_loop
        self._event = event

    def wait(self, timeout: float) -> bool:
        """Block until the round changed (True) or ``timeout`` seconds passed (False)."""
        self._app_loop.call(RoundWatch.wait(self._event, timeout), timeout=timeout + EXCHANGE_MARGIN_SECONDS)
        return self._event.is_set()


class InProcessServer:
    """``create_app(settings)`` served in this process, with what the tests read of a server.

    The settings are those :class:`LocalServer` gives ``python -m service`` (a private
    data directory, an admin token file of mode 0600, an operator listener, production
    checks unless ``dev``), with the background task polling every ``poll_seconds`` and
    any further ``settings`` (fields of ``ServiceSettings``, which a subprocess gets as
    ``SECAGG_*`` variables).
    Requests reach the app with the port of their URL as the listener's
    (``scope["server"]``), so :attr:`operator_url` is the operator listener as it is for a
    real server; every client of :meth:`client` reaches both. The lifespan starts with the
    process's stderr pointed at a log file, so the log handler the app installs writes
    there from its first line to its last, as a subprocess's redirected stderr does;
    :meth:`stop` gives the loggers back as they were. Logging is process-wide: start no
    other app while a test reads this one's log.
    """

    port = IN_PROCESS_PORT

    def __init__(
        self,
        *,
        directory: Path | None = None,
        database_url: str | None = None,
        poll_seconds: float = 0.1,
        dev: bool = False,
        clock: OffsetClock | None = None,
        operator_listener: bool = True,
        settings: dict[str, Any] | None = None,
    ) -> None:
        self._directory = directory
        self._settings = dict(settings or {})
        self.operator_port: int | None = IN_PROCESS_OPERATOR_PORT if operator_listener else None
        self.database_url = database_url
        self.poll_seconds = poll_seconds
        self.dev = dev
        self.clock = clock if clock is not None else OffsetClock()
        self.admin_token = secrets.token_urlsafe(32)
        self._temporary: tempfile.TemporaryDirectory[str] | None = None
        self.root: Path | None = None
        self.log_path: Path | None = None
        self._log_file: TextIO | None = None
        self._saved_loggers: list[tuple[logging.Logger, list[logging.Handler], bool, int]] = []
        self._app_loop: AppLoop | None = None
        self.long_polls: ObservedLongPolls | None = None

    @property
    def base_url(self) -> str:
        return f"http://{IN_PROCESS_HOST}:{self.port}"

    @property
    def operator_url(self) -> str:
        """The operator listener: ``/docs``, ``/openapi.json``, ``/metrics`` (and health)."""
        assert self.operator_port is not None, "this server has no operator listener"
        return f"http://{IN_PROCESS_HOST}:{self.operator_port}"

    @property
    def data_dir(self) -> Path:
        assert self.root is not None, "the server was never started"
        return self.root / "data"

    @property
    def app(self) -> Any:
        assert self._app_loop is not None, "the server is not running"
        return self._app_loop.app

    def start(self) -> InProcessServer:
        assert self._app_loop is None, "the server is already running"
        if self.root is None:
            if self._directory is None:
                self._temporary = tempfile.TemporaryDirectory(prefix="secagg-server-")
                self.root = Path(self._temporary.name)
            else:
                self.root = self._directory
                self.root.mkdir(parents=True, exist_ok=True)
            write_private_file(self.root / "admin-token", self.admin_token.encode("ascii"), overwrite=True)
        if not self.data_dir.exists():
            self.data_dir.mkdir(mode=0o700)
            self.data_dir.chmod(0o700)  # private whatever the umask: the server refuses a shared one
        settings = _ArgumentsOnly(
            dev=self.dev,
            port=self.port,
            operator_port=self.operator_port,
            data_dir=self.data_dir,
            database_url=self.database_url,
            admin_token_file=self.root / "admin-token",
            deadline_poll_seconds=self.poll_seconds,
            **self._settings,
        )
        settings.read_admin_token()  # what `secagg server` checks before it listens
        check_private_storage(settings)
        self._saved_loggers = [
            (logger, list(logger.handlers), logger.propagate, logger.level) for logger in map(logging.getLogger, SERVER_LOGGERS)
        ]
        self.log_path = self.root / f"server-{time.time_ns() // 1_000_000}.log"
        self._log_file = open(self.log_path, "a", encoding="utf-8")  # noqa: SIM115 - the app's log handler writes to it until stop()
        try:
            with contextlib.redirect_stderr(self._log_file):  # the app's log handler takes sys.stderr as it is created
                self._app_loop = AppLoop(create_app(settings, clock=self.clock))
        except BaseException:
            self._restore_logging()
            raise
        self.long_polls = ObservedLongPolls(self._app_loop.app.state.watch)
        self._app_loop.app.state.watch = self.long_polls
        return self

    def client(self) -> httpx.Client:
        """A new HTTP client of this server (close it when done; the server keeps running)."""
        assert self._app_loop is not None, "the server is not running"
        return httpx.Client(base_url=self.base_url, transport=OnAppLoop(self._app_loop))

    def round_change(self, round_id: str) -> RoundChange:
        """The next change of ``round_id`` as the app announces it to long polls (:class:`~service.watch.RoundWatch`)."""
        assert self._app_loop is not None, "the server is not running"
        watch = self.long_polls
        assert watch is not None

        async def take() -> asyncio.Event:
            return watch.event(round_id)

        return RoundChange(self._app_loop, self._app_loop.call(take(), timeout=EXCHANGE_MARGIN_SECONDS))

    def log_tail(self, characters: int = 4000) -> str:
        if self._log_file is not None:
            self._log_file.flush()
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")[-characters:]

    def stop(self) -> None:
        """Shut the app down (its lifespan's exit: the background task stops, the database closes)."""
        try:
            if self._app_loop is not None:
                app_loop, self._app_loop = self._app_loop, None
                app_loop.close()
        finally:
            self._restore_logging()

    def _restore_logging(self) -> None:
        for logger, handlers, propagate, level in self._saved_loggers:
            logger.handlers[:] = handlers
            logger.propagate = propagate
            logger.setLevel(level)
        self._saved_loggers = []
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def __enter__(self) -> InProcessServer:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None) -> None:
        self.stop()
        if self._temporary is not None:
            self._temporary.cleanup()


@dataclass(frozen=True)
class Party:
    participant_id: str
    key: SigningKey
    role: str = "bank"


class Api:
    """HTTP helpers: admin calls with the bearer token, participant calls signed."""

    def __init__(self, server: ServerProcess | InProcessServer) -> None:
        self.server = server
        if isinstance(server, InProcessServer):
            self.http = server.client()
        else:
            self.http = httpx.Client(base_url=server.base_url, timeout=60.0)

    def close(self) -> None:
        self.http.close()

    def admin(self, method: str, path: str, json: Any = None, *, token: str | None = None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.server.admin_token if token is None else token}"}
        return self.http.request(method, path, json=json, headers=headers)

    def signed(
        self,
        party: Party,
        method: str,
        path: str,
        body: bytes = b"",
        *,
        content_type: str | None = "application/octet-stream",
        headers: dict[str, str] | None = None,
        now: int | None = None,
        nonce: str | None = None,
    ) -> httpx.Response:
        signing = sign_request(
            party.key,
            method,
            path,
            body,
            key_id=party.participant_id,
            now=int(time.time()) if now is None else now,
            nonce=secrets.token_hex(16) if nonce is None else nonce,
        )
        all_headers = dict(signing)
        if body and content_type:
            all_headers["Content-Type"] = content_type
        all_headers.update(headers or {})
        return self.http.request(method, path, content=body if body else None, headers=all_headers)

    def enroll(self, party: Party) -> None:
        response = self.admin(
            "POST",
            "/v1/admin/participants",
            {"id": party.participant_id, "public_key": base64.b64encode(party.key.public_bytes).decode(), "role": party.role},
        )
        assert response.status_code == 201, response.text

    def create_round(self, cohort: Iterable[Party], **parameters: Any) -> str:
        body = {"cohort": [party.participant_id for party in cohort], **parameters}
        response = self.admin("POST", "/v1/admin/rounds", body)
        assert response.status_code == 201, response.text
        return response.json()["round_id"]

    def status(self, round_id: str) -> dict[str, Any]:
        response = self.admin("GET", f"/v1/admin/rounds/{round_id}")
        assert response.status_code == 200, response.text
        return response.json()


def make_parties(count: int, *, prefix: str = "bank", seed: int = 0, role: str = "bank") -> list[Party]:
    return [
        Party(f"{prefix}-{index:02d}", SigningKey.generate(DeterministicRandom.from_int(seed * 1000 + index)), role)
        for index in range(count)
    ]


def config_from_parameters(parameters: dict[str, Any]) -> RoundConfig:
    """The client's view of the round, rebuilt from ``GET /v1/rounds/{id}`` as API.md says."""
    config = RoundConfig(
        round_id=bytes.fromhex(parameters["round_id"]),
        identity_keys=tuple(base64.b64decode(member["public_key"]) for member in parameters["cohort"]),
        threshold=parameters["threshold"],
        dim=parameters["dim"],
        bits=parameters["bits"],
        mode=ProtocolMode(parameters["mode"]),
        graph=GraphKind(parameters["graph"]),
        degree=parameters["degree"],
    )
    assert config.digest().hex() == parameters["config_digest"]
    return config


def client_input(index: int, dim: int, bits: int, seed: int = 7) -> np.ndarray:
    """A deterministic pseudo-random input vector of participant ``index``, reduced to Z_2^bits."""
    from secagg.encoding import Ring

    ring = Ring(bits)
    vector = np.empty(dim, dtype=ring.dtype)
    DeterministicRandom.from_int(seed * 100_000 + index).fill(vector)
    return ring.reduce(vector)


STAGE_ROUNDS = {
    "R0-advertise-keys": 0,
    "R1-share-keys": 1,
    "R2-masked-input-collection": 2,
    "R3-consistency-check": 3,
    "R4-unmasking": 4,
}


class RoundDriver:
    """Drives one ClientSession per cohort member through a round over HTTP, stage by stage."""

    def __init__(self, api: Api, parties: list[Party], round_id: str, *, seed: int = 7) -> None:
        self.api = api
        self.parties = parties
        self.round_id = round_id
        self.seed = seed
        parameters = api.signed(parties[0], "GET", f"/v1/rounds/{round_id}").json()
        self.config = config_from_parameters(parameters)
        self.sessions: dict[int, ClientSession] = {}
        self.pending: dict[int, bytes] = {}
        self.client_aborts: dict[int, str] = {}
        for index, party in enumerate(parties):
            vector = client_input(index, self.config.dim, self.config.bits, seed)
            session = ClientSession(
                self.config, index, party.key, vector, source=DeterministicRandom.from_int(seed * 977 + index)
            )
            self.sessions[index] = session
            self.pending[index] = encode(session.start())

    def post(self, index: int, body: bytes | None = None) -> httpx.Response:
        payload = self.pending[index] if body is None else body
        return self.api.signed(self.parties[index], "POST", f"/v1/rounds/{self.round_id}/messages", payload)

    def send(self, indices: Iterable[int]) -> None:
        """POST each listed member's pending message; every one must be accepted."""
        for index in indices:
            response = self.post(index)
            assert response.status_code in (200, 202), (index, response.status_code, response.text)

    def fetch(self, indices: Iterable[int]) -> dict[int, httpx.Response]:
        """GET messages/me for each listed member; feed 200s to the session and keep the reply pending."""
        responses: dict[int, httpx.Response] = {}
        for index in indices:
            response = self.api.signed(self.parties[index], "GET", f"/v1/rounds/{self.round_id}/messages/me")
            responses[index] = response
            if response.status_code == 200:
                try:
                    self.pending[index] = encode(self.sessions[index].receive_bytes(response.content))
                except ProtocolAbort as refusal:
                    self.client_aborts[index] = refusal.reason.value
        return responses

    def expect_stage(self, stage: str) -> dict[str, Any]:
        """The round's admin status, which must already show ``stage``.

        No waiting: a stage's closing commits with its last message (API.md section 7),
        and with an operator's close or a restart's recovery, before the answer. A
        deadline's closing is awaited with :meth:`InProcessServer.round_change`.
        """
        status = self.api.status(self.round_id)
        assert status["stage"] == stage, f"round in {status['stage']}, expected {stage}: {status}"
        return status

    def wait_for_stage(self, stage: str, *, timeout: float = 60.0) -> dict[str, Any]:
        """The round's admin status once it shows ``stage``, polled.

        For what no answer waits for: the mask expansion runs off the request path (the
        upload that completes R4 returns before it, API.md section 7), so ``completed``
        follows R4 later; with several workers or a restarted server the status comes from
        whichever process answers. ``timeout`` only bounds a stuck round.
        """
        deadline = time.monotonic() + timeout
        while True:
            status = self.api.status(self.round_id)
            if status["stage"] == stage:
                return status
            if time.monotonic() > deadline:
                raise AssertionError(f"round stuck in {status['stage']} (waiting for {stage}): {status}")
            time.sleep(0.05)

    def expected_sum(self, survivors: Iterable[int]) -> np.ndarray:
        ring = self.config.ring
        total = ring.zeros(self.config.dim)
        for index in survivors:
            np.add(total, client_input(index, self.config.dim, self.config.bits, self.seed), out=total)
        return ring.reduce(total)

    def result(self, index: int = 0) -> tuple[np.ndarray, list[int]]:
        response = self.api.signed(self.parties[index], "GET", f"/v1/rounds/{self.round_id}/result")
        assert response.status_code == 200, response.text
        survivors = [int(value) for value in response.headers["X-Secagg-Survivors"].split(",") if value]
        return np.frombuffer(response.content, dtype=self.config.ring.dtype), survivors
