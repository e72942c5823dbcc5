"""The HTTP transport: ``docs/API.md`` (version 1) over httpx.

Every participant request is signed with the bank's identity key as the contract
prescribes (:func:`secagg.http_contract.sign_request`; a pure module, no FastAPI):
key id, Unix timestamp, a fresh 128-bit nonce from the OS CSPRNG (fresh on every
retry too) and the body's SHA-256. Transient failures (connection errors and
timeouts, 429, 502, 503, 504) are retried with jittered exponential backoff,
honouring ``Retry-After`` (:mod:`clients.runtime.retry`); every other 4xx is the server's
answer and is mapped by its problem ``type`` (RFC 9457), never by its text.

Every response is bounded before it is buffered: its body is streamed and refused
(``response-too-large``, not retried) as soon as it exceeds a cap derived from the round's
parameters with the codec (:func:`secagg.http_contract.max_server_message_bytes` for
``messages/me``, the exact :func:`~secagg.http_contract.result_bytes` for the result, 4 MiB
for JSON and 64 KiB for a problem). Every request also has a total deadline (not a
per-read timeout, which a server trickling one byte at a time resets for ever): each
socket operation's timeout is clamped to what is left of it (:class:`DeadlineHTTPTransport`),
and a request past it fails like a timeout (retried, then ``ServerUnavailable``).

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

Vectors in chunks (API.md section 5): a masked input larger than one chunk of the round
(``chunk_bytes`` in the round description) is uploaded as a declared upload: the manifest
(the message's 46-byte header and every chunk's SHA-256, signed), then each chunk the
server does not hold yet (``PUT .../chunks/{k}``, its SHA-256 declared in
``X-Secagg-Body-Sha256`` and signed), then the commit. Each step is idempotent, so a
retried or resumed upload sends only the missing chunks. A result larger than one chunk
is downloaded chunk by chunk, each chunk checked against its SHA-256 and the whole against
``X-Secagg-Result-Sha256``.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import contextvars
import email.utils
import functools
import hashlib
import json
import ssl
import time
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, NoReturn
from urllib.parse import urlsplit

import httpcore
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
    TrainingBinding,
)
from secagg.chunks import ChunkLayout, split_masked_input
from secagg.config import RoundConfig
from secagg.encoding import Ring
from secagg.errors import ConfigurationError, EncodingError, MalformedMessage
from secagg.hazmat.keys import SigningKey
from secagg.hazmat.randomness import RandomSource, SystemRandom
from secagg.http_contract import (
    MAX_LONG_POLL_SECONDS,
    MAX_OTHER_BODY_BYTES,
    MAX_PROBLEM_BODY_BYTES,
    NONCE_BYTES,
    TRANSIENT_STATUSES,
    ProblemType,
    max_server_message_bytes,
    problem_suffix,
    result_bytes,
    sign_request,
)
from secagg.rounds import STAGE_NAMES, Round

OPEN_STAGES = frozenset(STAGE_NAMES)
DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=5.0)
LONG_POLL_SECONDS = min(20.0, MAX_LONG_POLL_SECONDS)
"""How long the server may hold a ``messages/me`` request (at most the contract's maximum)."""
LONG_POLL_READ_MARGIN_SECONDS = 10.0
"""Read timeout of a long poll beyond its wait: the server's last database check and the reply."""
DEFAULT_REQUEST_DEADLINE_SECONDS = 120.0
"""Total time one request may take, connection, upload and whole response included (a long
poll gets its wait on top). Generous for the largest upload over a slow link; a server that
trickles its answer is cut off here."""
RESPONSE_TOO_LARGE = "response-too-large"

_REQUEST_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar("secagg_request_deadline", default=None)
"""The ``time.monotonic()`` by which the request in progress on this thread must be done."""


def _clamped(timeout: float | None) -> float | None:
    """``timeout`` clamped to what is left of the current request's total deadline."""
    deadline = _REQUEST_DEADLINE.get()
    if deadline is None:
        return timeout
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise httpcore.ReadTimeout("the request's total deadline passed")
    return remaining if timeout is None else min(timeout, remaining)


class _DeadlineStream(httpcore.NetworkStream):
    """A network stream whose every read, write and TLS handshake ends by the request's deadline."""

    def __init__(self, stream: httpcore.NetworkStream) -> None:
        self._stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, _clamped(timeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        # One write per chunk: a server that reads slowly cannot hold the upload past the deadline either.
        self._stream.write(buffer, _clamped(timeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        return _DeadlineStream(self._stream.start_tls(ssl_context, server_hostname, _clamped(timeout)))

    def get_extra_info(self, info: str) -> typing.Any:
        return self._stream.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    def __init__(self) -> None:
        self._backend = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        return _DeadlineStream(self._backend.connect_tcp(host, port, _clamped(timeout), local_address, socket_options))

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None
    ) -> httpcore.NetworkStream:
        return _DeadlineStream(self._backend.connect_unix_socket(path, _clamped(timeout), socket_options))

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


class DeadlineHTTPTransport(httpx.HTTPTransport):
    """httpx's own transport (same TLS context, pooling and error mapping) over a network
    backend that clamps every socket operation to the request's total deadline."""

    def __init__(self, *, verify: ssl.SSLContext) -> None:
        super().__init__(verify=verify)
        self._pool = httpcore.ConnectionPool(ssl_context=verify, network_backend=_DeadlineBackend())


@contextlib.contextmanager
def request_deadline(seconds: float) -> Iterator[float]:
    """Run one request within ``seconds`` from now (see :class:`DeadlineHTTPTransport`)."""
    deadline = time.monotonic() + seconds
    token = _REQUEST_DEADLINE.set(deadline)
    try:
        yield deadline
    finally:
        _REQUEST_DEADLINE.reset(token)


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


@dataclass(frozen=True, slots=True)
class Answer:
    """A whole response, read within its size cap and its request's deadline."""

    status_code: int
    headers: httpx.Headers
    content: bytes

    @property
    def reason_phrase(self) -> str:
        return httpx.codes.get_reason_phrase(self.status_code)

    def json(self) -> Any:
        return json.loads(self.content)


def _read_bounded(response: httpx.Response, cap: int, deadline: float) -> bytes:
    """The response body, refused as soon as it is known to exceed ``cap`` bytes (never buffered
    past it); a body still arriving at ``deadline`` fails like a read timeout."""
    if response.headers.get("Content-Encoding", "identity").lower() != "identity":
        raise ServerRefused(response.status_code, "unusable-response", "the server compressed a response it was asked not to")
    declared = response.headers.get("Content-Length")
    if declared is not None and declared.isdigit() and int(declared) > cap:
        raise ServerRefused(response.status_code, RESPONSE_TOO_LARGE, f"the response declares {declared} bytes, at most {cap}")
    buffer = bytearray()
    chunks = iter((response.content,)) if response.is_stream_consumed else response.iter_raw()  # in memory already: a mock
    for chunk in chunks:
        if len(buffer) + len(chunk) > cap:
            raise ServerRefused(response.status_code, RESPONSE_TOO_LARGE, f"the response exceeds {cap} bytes")
        buffer += chunk
        if time.monotonic() > deadline:
            raise httpx.ReadTimeout("the request's total deadline passed", request=response.request)
    return bytes(buffer)


def _problem(response: Answer) -> tuple[str, str, dict[str, Any]]:
    """(type suffix, detail, body) of a problem+json response; ``http-<status>`` when it is not one."""
    try:
        body = response.json()
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    suffix = problem_suffix(str(body.get("type", ""))) or f"http-{response.status_code}"
    return suffix, str(body.get("detail", response.reason_phrase)), body


def _accepted(response: Answer) -> Accepted:
    try:
        ack = response.json()
        return Accepted(already_accepted=ack.get("status") == "already-accepted", closed_stage=ack.get("closed_stage") is True)
    except (ValueError, AttributeError):
        raise ServerRefused(response.status_code, "unusable-acknowledgement", "the upload's answer is not JSON") from None


def _training_binding(value: Any) -> TrainingBinding | None:
    """The round's ``training`` member (docs/API.md section 5), or None when absent or null."""
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) != {"id", "manifest_hash", "round"}:
        raise ValueError("training must be {id, manifest_hash, round}")
    manifest_hash = bytes.fromhex(str(value["manifest_hash"]))
    step = value["round"]
    if not isinstance(value["id"], str) or isinstance(step, bool) or not isinstance(step, int):
        raise ValueError("training id must be a string and round an integer")
    return TrainingBinding(training_id=value["id"], manifest_hash=manifest_hash, step=step)


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
        request_deadline_seconds: float = DEFAULT_REQUEST_DEADLINE_SECONDS,
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
        if client is None:
            tls = shared_tls_context(verify)
            client = httpx.Client(timeout=timeout, verify=tls, transport=DeadlineHTTPTransport(verify=tls))
        self._client = client
        self._request_deadline_seconds = request_deadline_seconds
        self._configs: dict[str, RoundConfig] = {}
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
        self._chunk_bytes: dict[str, int] = {}

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
        response = self._signed("GET", f"/v1/rounds/{round_id}", max_bytes=MAX_OTHER_BODY_BYTES)
        if response.status_code != 200:
            self._refuse(response)
        try:
            body = response.json()
        except ValueError:
            raise ServerRefused(200, "unusable-round-description", "the round description is not JSON") from None
        if not isinstance(body, dict) or body.get("round_id") != round_id:
            raise ServerRefused(200, "unusable-round-description", f"the server described another round than {round_id}")
        try:
            cohort = sorted(body["cohort"], key=lambda member: int(member["index"]))
            if [int(member["index"]) for member in cohort] != list(range(len(cohort))):
                raise ValueError("cohort indices are not 0..n-1")
            training = _training_binding(body.get("training"))
            config = RoundConfig(
                round_id=bytes.fromhex(body["round_id"]),
                identity_keys=tuple(base64.b64decode(member["public_key"], validate=True) for member in cohort),
                threshold=int(body["threshold"]),
                dim=int(body["dim"]),
                bits=int(body["bits"]),
                mode=body["mode"],
                graph=body["graph"],
                degree=body.get("degree"),
                manifest_hash=None if training is None else training.manifest_hash,
                training_round=None if training is None else training.step,
            )
        except (KeyError, TypeError, ValueError, binascii.Error, ConfigurationError) as exc:
            raise ServerRefused(200, "unusable-round-description", f"the round description cannot be used: {exc}") from None
        if config.digest().hex() != body.get("config_digest"):
            raise PolicyViolation(
                PolicyViolationReason.CONFIG_DIGEST_MISMATCH,
                "the server's config_digest does not match the parameters it sent",
            )
        stage = str(body.get("stage", ""))
        self._configs[round_id] = config
        chunk_bytes = body.get("chunk_bytes")
        if isinstance(chunk_bytes, int):
            self._chunk_bytes[round_id] = chunk_bytes
        return RoundDescription(
            round_id=round_id,
            config=config,
            status=stage,
            is_open=stage in OPEN_STAGES,
            member_ids=tuple(str(member["id"]) for member in cohort),
            dp_policy=body.get("dp_policy"),
            server_identity=response.headers.get("X-Secagg-Server-Id"),
            chunk_bytes=chunk_bytes if isinstance(chunk_bytes, int) else None,
            training=training,
        )

    def submit(self, round_id: str, protocol_round: Round, payload: bytes) -> SubmitOutcome:
        chunk_bytes = self._chunk_bytes.get(round_id)
        if protocol_round is Round.MASKED_INPUT_COLLECTION and chunk_bytes is not None:
            try:
                header, pieces = split_masked_input(payload, chunk_bytes)
            except (EncodingError, MalformedMessage) as exc:
                raise ValueError(f"not a masked input of this round: {exc}") from None
            if len(pieces) > 1:
                return self._submit_in_chunks(round_id, header.encode(), pieces)
        response = self._signed(
            "POST",
            f"/v1/rounds/{round_id}/messages",
            payload,
            headers={"Content-Type": "application/octet-stream"},
            max_bytes=MAX_PROBLEM_BODY_BYTES,
        )
        if response.status_code in (200, 202):
            return _accepted(response)
        problem_type, _, body = _problem(response)
        if problem_type == ProblemType.WRONG_STAGE.suffix:
            return StageClosed()
        if problem_type in (ProblemType.EXCLUDED.suffix, ProblemType.NOT_IN_ROUND.suffix):
            return Excluded()
        if problem_type == ProblemType.ROUND_ABORTED.suffix:
            return RoundAborted(str(body.get("abort_reason") or "aborted"))
        self._refuse(response)

    def _submit_in_chunks(self, round_id: str, header: bytes, pieces: list[memoryview]) -> SubmitOutcome:
        """Declare, put the missing chunks, commit (see the module docstring)."""
        digests = [hashlib.sha256(piece).hexdigest() for piece in pieces]
        declaration = json.dumps({"header": base64.b64encode(header).decode("ascii"), "chunk_sha256": digests}).encode("ascii")
        base = f"/v1/rounds/{round_id}/masked-input"
        response = self._signed(
            "POST", base, declaration, headers={"Content-Type": "application/json"}, max_bytes=MAX_OTHER_BODY_BYTES
        )
        if response.status_code not in (200, 201):
            return self._upload_refusal(response)
        status = response.json()
        received = set(status.get("received", ())) if isinstance(status, dict) else set()
        if not (isinstance(status, dict) and status.get("committed")):
            for index, piece in enumerate(pieces):
                if index in received:
                    continue
                body = bytes(piece)
                response = self._signed(
                    "PUT",
                    f"{base}/chunks/{index}",
                    body,
                    headers={"Content-Type": "application/octet-stream"},
                    max_bytes=MAX_PROBLEM_BODY_BYTES,
                    body_sha256=digests[index],
                )
                if response.status_code not in (200, 202):
                    return self._upload_refusal(response)
        response = self._signed("POST", f"{base}/commit", max_bytes=MAX_PROBLEM_BODY_BYTES)
        if response.status_code in (200, 202):
            return _accepted(response)
        return self._upload_refusal(response)

    def _upload_refusal(self, response: Answer) -> SubmitOutcome:
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
        config = self._configs.get(round_id)
        response = self._signed(
            "GET",
            path,
            timeout=self._long_poll_timeout if long_poll else None,
            max_bytes=max_server_message_bytes(config.participant_count) if config is not None else MAX_OTHER_BODY_BYTES,
            extra_seconds=self._long_poll_seconds,
        )
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

    def _fetch_result_in_chunks(self, round_id: str, first: Answer) -> RoundResult:
        """The rest of a chunked result after its chunk 0 (``first``); every digest checked."""
        try:
            ring = Ring(int(first.headers["X-Secagg-Bits"]))
            dim = int(first.headers["X-Secagg-Dim"])
            layout = ChunkLayout(dim, ring.bits, int(first.headers["X-Secagg-Chunk-Bytes"]))
            survivors = tuple(int(item) for item in first.headers.get("X-Secagg-Survivors", "").split(",") if item)
            declared_total = first.headers["X-Secagg-Result-Sha256"].lower()
        except (KeyError, ValueError, EncodingError) as exc:
            raise ServerRefused(200, "unusable-result", f"the result headers cannot be used: {exc}") from None
        vector = np.empty(dim, dtype=ring.dtype)
        view = vector.view(np.uint8)
        total = hashlib.sha256()
        response = first
        for index, start, stop in layout.ranges():
            if index:
                response = self._signed(
                    "GET",
                    f"/v1/rounds/{round_id}/result/chunks/{index}",
                    headers={"Accept": "application/octet-stream"},
                    max_bytes=layout.chunk_bytes,
                )
                if response.status_code != 200:
                    self._refuse(response)
            body = response.content
            if (
                len(body) != layout.size(index)
                or hashlib.sha256(body).hexdigest() != response.headers.get("X-Secagg-Chunk-Sha256", "").lower()
            ):
                raise ServerRefused(
                    200, "unusable-result", f"chunk {index} of the result does not match its size or X-Secagg-Chunk-Sha256"
                )
            if response.headers.get("X-Secagg-Result-Sha256", "").lower() != declared_total:
                raise ServerRefused(200, "unusable-result", "the chunks of the result name different results")
            view[start * ring.element_bytes : stop * ring.element_bytes] = np.frombuffer(body, dtype=np.uint8)
            total.update(body)
        if total.hexdigest() != declared_total:
            raise ServerRefused(200, "unusable-result", "the result does not match its X-Secagg-Result-Sha256")
        return RoundResult(vector=vector, survivors=survivors)

    def fetch_result(self, round_id: str) -> ResultDelivery:
        chunk_bytes = self._chunk_bytes.get(round_id)
        if chunk_bytes is not None:
            response = self._signed(
                "GET",
                f"/v1/rounds/{round_id}/result/chunks/0",
                headers={"Accept": "application/octet-stream"},
                max_bytes=chunk_bytes,
            )
            if response.status_code == 200:
                return self._fetch_result_in_chunks(round_id, response)
            return self._result_refusal(round_id, response)
        config = self._configs.get(round_id)
        response = self._signed(
            "GET",
            f"/v1/rounds/{round_id}/result",
            headers={"Accept": "application/octet-stream"},
            max_bytes=result_bytes(config.dim, config.bits) if config is not None else MAX_OTHER_BODY_BYTES,
        )
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
        return self._result_refusal(round_id, response)

    def _result_refusal(self, round_id: str, response: Answer) -> ResultDelivery:
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

    def signed_get(self, path: str, *, max_bytes: int) -> Answer:
        """A signed GET of any participant endpoint (the auditor's ledger, a training's rounds), retried
        like the rest, its body read up to ``max_bytes``."""
        return self._signed("GET", path, max_bytes=max_bytes)

    def refuse(self, response: Answer) -> NoReturn:
        """Raise :class:`ServerRefused` with the response's problem type."""
        self._refuse(response)

    # ------------------------------------------------------------- plumbing
    def _signed(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        *,
        max_bytes: int,
        headers: dict[str, str] | None = None,
        timeout: httpx.Timeout | None = None,
        extra_seconds: float = 0.0,
        body_sha256: str | None = None,
    ) -> Answer:
        """One signed request, retried on transient failures; its 2xx body is read up to
        ``max_bytes`` (a problem body up to 64 KiB), all within the total deadline (plus
        ``extra_seconds``, a long poll's wait)."""

        def attempt() -> Answer:
            signing_headers = sign_request(
                self._identity,
                method,
                path,
                body,
                key_id=self._key_id,
                now=int(self._wall_clock()),
                nonce=self._source.random_bytes(NONCE_BYTES).hex(),
                body_sha256=body_sha256,
            )
            self.requests_sent += 1
            try:
                with request_deadline(self._request_deadline_seconds + extra_seconds) as deadline:
                    request = self._client.build_request(
                        method,
                        self._base_url + path,
                        content=body if body else None,
                        headers={**(headers or {}), **signing_headers, "Accept-Encoding": "identity"},
                        timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT,
                    )
                    response = self._client.send(request, stream=True)
                    try:
                        cap = max_bytes if 200 <= response.status_code < 300 else MAX_PROBLEM_BODY_BYTES
                        answer = Answer(response.status_code, response.headers, _read_bounded(response, cap, deadline))
                    finally:
                        response.close()
            except httpx.TransportError as exc:
                raise TransientFailure(f"{method} {path}: {type(exc).__name__}: {exc}") from None
            if answer.status_code in TRANSIENT_STATUSES:
                raise TransientFailure(
                    f"{method} {path}: HTTP {answer.status_code}",
                    retry_after=parse_retry_after(answer.headers.get("Retry-After"), now=self._wall_clock()),
                )
            return answer

        return call_with_retries(
            attempt,
            policy=self._retry,
            description=f"{method} {self._base_url}{path}",
            sleep=self._sleep,
            source=self._source,
            on_retry=self._on_retry,
        )

    @staticmethod
    def _refuse(response: Answer) -> NoReturn:
        problem_type, detail, _ = _problem(response)
        raise ServerRefused(response.status_code, problem_type, detail)
