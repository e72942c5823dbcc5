"""The HTTP transport: ``docs/API.md`` (version 1) over httpx.

Every participant request is signed with the bank's identity key as the contract
prescribes (:func:`secagg.http_contract.sign_request`; a pure module, no FastAPI):
key id, Unix timestamp, a fresh 128-bit nonce from the OS CSPRNG (fresh on every
retry too) and the body's SHA-256. Transient failures (connection errors and
timeouts, 429, 502, 503, 504) are retried with jittered exponential backoff,
honouring ``Retry-After`` (:mod:`clients.runtime.retry`); every other 4xx is the server's
answer and is mapped by its problem ``type`` (RFC 9457), never by its text.

A retried POST is safe: the payload is byte-identical and the server answers
``already-accepted`` for a message it already committed (API.md section 5).

Waiting for a stage to close uses long polling: ``GET .../messages/me?wait=S`` (the
query is part of the signed target) is held by the server until there is something to
answer or S seconds passed, so a stage change reaches the client within one request
round trip instead of up to one polling interval. The read timeout of that request is
S plus a margin. A 204 that comes back with ``Retry-After: 0`` after the server held it
for at least half the wait is reported as :class:`Pending` with ``long_polled=True``
(ask again at once); any other 204 (a server that ignores ``wait``, or answers early)
is an ordinary poll answer, paced by the client's poll schedule, so a misbehaving
server is never polled in a tight loop. Waiting for the result rides on the same long
poll: the server answers ``round-completed`` on ``messages/me`` once the result exists.
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import functools
import hashlib
import ssl
import time
from collections.abc import Callable
from typing import Any, NoReturn
from urllib.parse import urlsplit

import httpx
import numpy as np

from clients.runtime.errors import PolicyViolation, PolicyViolationReason, ServerRefused
from clients.runtime.retry import RetryPolicy, TransientFailure, call_with_retries
from clients.runtime.transport import (
    Accepted,
    Delivered,
    Delivery,
    Excluded,
    Pending,
    ResultDelivery,
    RoundAborted,
    RoundCompleted,
    RoundDescription,
    RoundResult,
    StageClosed,
    SubmitOutcome,
)
from secagg.config import RoundConfig
from secagg.encoding import Ring
from secagg.errors import ConfigurationError
from secagg.hazmat.keys import SigningKey
from secagg.hazmat.randomness import RandomSource, SystemRandom
from secagg.http_contract import MAX_LONG_POLL_SECONDS, NONCE_BYTES, TRANSIENT_STATUSES, ProblemType, problem_suffix, sign_request
from secagg.rounds import STAGE_NAMES, Round

OPEN_STAGES = frozenset(STAGE_NAMES)
DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=5.0)
LONG_POLL_SECONDS = min(20.0, MAX_LONG_POLL_SECONDS)
"""How long the server may hold a ``messages/me`` request (at most the contract's maximum)."""
LONG_POLL_READ_MARGIN_SECONDS = 10.0
"""Read timeout of a long poll beyond its wait: the server's last database check and the reply."""


@functools.lru_cache(maxsize=8)
def shared_tls_context(verify: bool | str) -> ssl.SSLContext:
    """One TLS client context per ``verify`` setting for the whole process.

    Exactly the context httpx would build itself (:func:`httpx.create_ssl_context`:
    certificate and host name verified against certifi's bundle, or the CA file or
    directory given), built once instead of once per transport: loading the CA bundle
    costs CPU that a cohort of clients in one process (``secagg simulate --transport
    http``) would otherwise pay per client. A CA file changed on disk is read again only
    by a new process.
    """
    return httpx.create_ssl_context(verify=verify)


def parse_retry_after(value: str | None, *, now: float) -> float | None:
    """``Retry-After`` as seconds: delta-seconds or an HTTP date (RFC 9110, section 10.2.3)."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, moment.timestamp() - now)


def _problem(response: httpx.Response) -> tuple[str, str, dict[str, Any]]:
    """(type suffix, detail, body) of a problem+json response; ``http-<status>`` when it is not one."""
    try:
        body = response.json()
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    suffix = problem_suffix(str(body.get("type", ""))) or f"http-{response.status_code}"
    return suffix, str(body.get("detail", response.reason_phrase)), body


class HttpTransport:
    """A :class:`~clients.runtime.transport.RoundTransport` speaking API version 1 to one server."""

    def __init__(
        self,
        base_url: str,
        *,
        key_id: str,
        identity: SigningKey,
        retry: RetryPolicy = RetryPolicy(),
        client: httpx.Client | None = None,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
        verify: bool | str = True,
        sleep: Callable[[float], None] = time.sleep,
        wall_clock: Callable[[], float] = time.time,
        source: RandomSource | None = None,
        on_retry: Callable[[int, float, str], None] | None = None,
        long_poll_seconds: float = LONG_POLL_SECONDS,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"server URL must be http(s)://host[:port], got {base_url!r}")
        if not 0 <= long_poll_seconds <= 30:
            raise ValueError(f"long_poll_seconds must be in 0..30 (0 disables long polling), got {long_poll_seconds}")
        self._base_url = base_url.rstrip("/")
        self._key_id = key_id
        self._identity = identity
        self._retry = retry
        self._client = client if client is not None else httpx.Client(timeout=timeout, verify=shared_tls_context(verify))
        self._owns_client = client is None
        self._sleep = sleep
        self._wall_clock = wall_clock
        self._source = source if source is not None else SystemRandom()
        self._on_retry = on_retry
        self._long_poll_seconds = long_poll_seconds
        self._monotonic = monotonic
        self._long_poll_timeout = httpx.Timeout(
            max(timeout.read or 0.0, long_poll_seconds + LONG_POLL_READ_MARGIN_SECONDS),
            connect=timeout.connect,
            write=timeout.write,
            pool=timeout.pool,
        )
        self.requests_sent = 0

    @property
    def endpoint(self) -> str:
        return self._base_url

    def close(self) -> None:
        if self._owns_client:
            self._client.close()

    def __enter__(self) -> HttpTransport:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------ API
    def describe_round(self, round_id: str) -> RoundDescription:
        response = self._signed("GET", f"/v1/rounds/{round_id}")
        if response.status_code != 200:
            self._refuse(response)
        body = response.json()
        if not isinstance(body, dict) or body.get("round_id") != round_id:
            raise ServerRefused(200, "unusable-round-description", f"the server described another round than {round_id}")
        try:
            cohort = sorted(body["cohort"], key=lambda member: int(member["index"]))
            if [int(member["index"]) for member in cohort] != list(range(len(cohort))):
                raise ValueError("cohort indices are not 0..n-1")
            config = RoundConfig(
                round_id=bytes.fromhex(body["round_id"]),
                identity_keys=tuple(base64.b64decode(member["public_key"], validate=True) for member in cohort),
                threshold=int(body["threshold"]),
                dim=int(body["dim"]),
                bits=int(body["bits"]),
                mode=body["mode"],
                graph=body["graph"],
                degree=body.get("degree"),
            )
        except (KeyError, TypeError, ValueError, binascii.Error, ConfigurationError) as exc:
            raise ServerRefused(200, "unusable-round-description", f"the round description cannot be used: {exc}") from None
        if config.digest().hex() != body.get("config_digest"):
            raise PolicyViolation(
                PolicyViolationReason.CONFIG_DIGEST_MISMATCH,
                "the server's config_digest does not match the parameters it sent",
            )
        stage = str(body.get("stage", ""))
        return RoundDescription(
            round_id=round_id,
            config=config,
            status=stage,
            is_open=stage in OPEN_STAGES,
            member_ids=tuple(str(member["id"]) for member in cohort),
            dp_policy=body.get("dp_policy"),
            server_identity=response.headers.get("X-Secagg-Server-Id"),
        )

    def submit(self, round_id: str, protocol_round: Round, payload: bytes) -> SubmitOutcome:
        response = self._signed(
            "POST", f"/v1/rounds/{round_id}/messages", payload, headers={"Content-Type": "application/octet-stream"}
        )
        if response.status_code in (200, 202):
            return Accepted(already_accepted=response.json().get("status") == "already-accepted")
        problem_type, _, body = _problem(response)
        if problem_type == ProblemType.WRONG_STAGE.suffix:
            return StageClosed()
        if problem_type in (ProblemType.EXCLUDED.suffix, ProblemType.NOT_IN_ROUND.suffix):
            return Excluded()
        if problem_type == ProblemType.ROUND_ABORTED.suffix:
            return RoundAborted(str(body.get("abort_reason") or "aborted"))
        self._refuse(response)

    def fetch(self, round_id: str, protocol_round: Round) -> Delivery:
        path = f"/v1/rounds/{round_id}/messages/me"
        long_poll = self._long_poll_seconds > 0
        if long_poll:
            path += f"?wait={self._long_poll_seconds:g}"
        started = self._monotonic()
        response = self._signed("GET", path, timeout=self._long_poll_timeout if long_poll else None)
        if response.status_code == 200:
            return Delivered(response.content)
        if response.status_code == 204:
            retry_after = parse_retry_after(response.headers.get("Retry-After"), now=self._wall_clock())
            held = long_poll and self._monotonic() - started >= self._long_poll_seconds / 2
            return Pending(retry_after, long_polled=held and retry_after == 0)
        problem_type, _, body = _problem(response)
        if problem_type == ProblemType.EXCLUDED.suffix:
            return Excluded()
        if problem_type == ProblemType.ROUND_COMPLETED.suffix:
            return RoundCompleted()
        if problem_type == ProblemType.ROUND_ABORTED.suffix:
            return RoundAborted(str(body.get("abort_reason") or "aborted"))
        self._refuse(response)

    def fetch_result(self, round_id: str) -> ResultDelivery:
        response = self._signed("GET", f"/v1/rounds/{round_id}/result", headers={"Accept": "application/octet-stream"})
        if response.status_code == 200:
            try:
                ring = Ring(int(response.headers["X-Secagg-Bits"]))
                dim = int(response.headers["X-Secagg-Dim"])
                survivors_header = response.headers.get("X-Secagg-Survivors", "")
                survivors = tuple(int(item) for item in survivors_header.split(",") if item)
            except (KeyError, ValueError) as exc:
                raise ServerRefused(200, "unusable-result", f"the result headers cannot be used: {exc}") from None
            declared_digest = response.headers.get("X-Secagg-Result-Sha256")
            if declared_digest is not None and hashlib.sha256(response.content).hexdigest() != declared_digest.lower():
                raise ServerRefused(200, "unusable-result", "the result does not match its X-Secagg-Result-Sha256")
            if len(response.content) != dim * ring.element_bytes:
                raise ServerRefused(200, "unusable-result", f"the result has {len(response.content)} bytes, not {dim} elements")
            vector = np.frombuffer(response.content, dtype=ring.dtype)
            if vector.size != dim:
                raise ServerRefused(200, "unusable-result", f"the result has {vector.size} elements, not {dim}")
            return RoundResult(vector=vector, survivors=survivors)
        problem_type, _, body = _problem(response)
        if problem_type == ProblemType.RESULT_NOT_READY.suffix:
            not_ready = Pending(parse_retry_after(response.headers.get("Retry-After"), now=self._wall_clock()))
            if self._long_poll_seconds == 0:
                return not_ready
            change = self.fetch(round_id, Round.UNMASKING)  # held until the round moves (or the wait ends)
            if isinstance(change, RoundAborted):
                return change
            if isinstance(change, RoundCompleted):
                return Pending(0.0, long_polled=True)  # the result exists now: fetch it at once
            if isinstance(change, Pending) and change.long_polled:
                return change
            return not_ready
        if problem_type == ProblemType.ROUND_ABORTED.suffix:
            return RoundAborted(str(body.get("abort_reason") or "aborted"))
        self._refuse(response)

    # ------------------------------------------------------------- plumbing
    def _signed(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        *,
        headers: dict[str, str] | None = None,
        timeout: httpx.Timeout | None = None,
    ) -> httpx.Response:
        def attempt() -> httpx.Response:
            signing_headers = sign_request(
                self._identity,
                method,
                path,
                body,
                key_id=self._key_id,
                now=int(self._wall_clock()),
                nonce=self._source.random_bytes(NONCE_BYTES).hex(),
            )
            self.requests_sent += 1
            try:
                response = self._client.request(
                    method,
                    self._base_url + path,
                    content=body if body else None,
                    headers={**(headers or {}), **signing_headers},
                    timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT,
                )
            except httpx.TransportError as exc:
                raise TransientFailure(f"{method} {path}: {type(exc).__name__}: {exc}") from None
            if response.status_code in TRANSIENT_STATUSES:
                raise TransientFailure(
                    f"{method} {path}: HTTP {response.status_code}",
                    retry_after=parse_retry_after(response.headers.get("Retry-After"), now=self._wall_clock()),
                )
            return response

        return call_with_retries(
            attempt,
            policy=self._retry,
            description=f"{method} {self._base_url}{path}",
            sleep=self._sleep,
            source=self._source,
            on_retry=self._on_retry,
        )

    @staticmethod
    def _refuse(response: httpx.Response) -> NoReturn:
        problem_type, detail, _ = _problem(response)
        raise ServerRefused(response.status_code, problem_type, detail)
