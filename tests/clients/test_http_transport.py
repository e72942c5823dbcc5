"""The HTTP transport: signed requests, retries with backoff on transient errors only, problem types mapped."""

from __future__ import annotations

import json

import httpx
import pytest

from clients.runtime.errors import ServerRefused, ServerUnavailable
from clients.runtime.http_transport import HttpTransport, parse_retry_after
from clients.runtime.retry import RetryPolicy
from clients.runtime.transport import Accepted, Delivered, Excluded, Pending, RoundAborted, RoundCompleted, StageClosed
from secagg.hazmat.keys import SigningKey
from secagg.hazmat.randomness import DeterministicRandom
from secagg.http_contract import body_digest, parse_credentials, verify_request
from secagg.rounds import Round

IDENTITY = SigningKey.generate(DeterministicRandom.from_int(11))
ROUND = "ab" * 16
NOW = 1_700_000_000.0


def problem(status: int, suffix: str, **extra) -> httpx.Response:
    body = {"type": f"urn:secagg:problem:{suffix}", "title": suffix, "status": status, "detail": suffix, **extra}
    return httpx.Response(status, json=body, headers={"Content-Type": "application/problem+json"})


def make_transport(responses, *, max_attempts: int = 5):
    """A transport whose server answers ``responses`` in order (callables get the request)."""
    seen: list[httpx.Request] = []
    sleeps: list[float] = []
    queue = list(responses)

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        answer = queue.pop(0)
        return answer(request) if callable(answer) else answer

    transport = HttpTransport(
        "http://aggregator.test",
        key_id="bank-a",
        identity=IDENTITY,
        retry=RetryPolicy(max_attempts=max_attempts, initial_delay=0.1, max_delay=2.0),
        client=httpx.Client(transport=httpx.MockTransport(handler)),
        sleep=sleeps.append,
        wall_clock=lambda: NOW,
        source=DeterministicRandom.from_int(5),
    )
    return transport, seen, sleeps


def accepted(request: httpx.Request) -> httpx.Response:
    return httpx.Response(202, json={"status": "accepted"})


def test_every_request_is_signed_over_method_path_and_body_with_a_fresh_nonce() -> None:
    transport, seen, _ = make_transport([httpx.Response(503), accepted])
    payload = b"SAG\x01\x01" + bytes(100)
    assert transport.submit(ROUND, Round.ADVERTISE_KEYS, payload) == Accepted()
    assert len(seen) == 2
    nonces = set()
    for request in seen:
        credentials = parse_credentials(request.headers)
        assert credentials.key_id == "bank-a" and credentials.timestamp == int(NOW)
        verify_request(
            credentials, IDENTITY.public_bytes, "POST", f"/v1/rounds/{ROUND}/messages", body_sha256=body_digest(request.content)
        )
        assert request.headers["Content-Type"] == "application/octet-stream"
        nonces.add(credentials.nonce)
    assert len(nonces) == 2, "a retry must use a fresh nonce"


@pytest.mark.parametrize("status", [429, 502, 503, 504])
def test_transient_status_is_retried_with_growing_jittered_backoff(status: int) -> None:
    transport, seen, sleeps = make_transport([httpx.Response(status)] * 3 + [accepted])
    assert transport.submit(ROUND, Round.SHARE_KEYS, b"x") == Accepted()
    assert len(seen) == 4
    ceilings = [0.1, 0.2, 0.4]
    assert all(ceiling / 2 <= delay <= ceiling for delay, ceiling in zip(sleeps, ceilings, strict=True))


def test_retry_after_is_honoured_when_longer_than_the_backoff() -> None:
    transport, _, sleeps = make_transport([httpx.Response(429, headers={"Retry-After": "7"}), accepted])
    transport.submit(ROUND, Round.ADVERTISE_KEYS, b"x")
    assert sleeps == [7.0]


def test_retry_after_as_http_date_is_parsed() -> None:
    assert parse_retry_after("Tue, 14 Nov 2023 22:13:30 GMT", now=1_700_000_000.0) == 10.0
    assert parse_retry_after("soon", now=NOW) is None


def test_connect_errors_are_retried_then_reported_as_unavailable() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    transport, seen, sleeps = make_transport([refuse] * 3, max_attempts=3)
    with pytest.raises(ServerUnavailable, match="gave up after 3 attempts"):
        transport.fetch(ROUND, Round.ADVERTISE_KEYS)
    assert len(seen) == 3 and len(sleeps) == 2


@pytest.mark.parametrize(
    ("status", "suffix"),
    [
        (401, "bad-request-signature"),
        (403, "not-in-cohort"),
        (422, "wrong-length"),
        (409, "duplicate-submission"),
        (400, "malformed"),
    ],
)
def test_protocol_refusals_are_not_retried(status: int, suffix: str) -> None:
    transport, seen, sleeps = make_transport([problem(status, suffix)])
    with pytest.raises(ServerRefused) as refused:
        transport.submit(ROUND, Round.MASKED_INPUT_COLLECTION, b"x")
    assert refused.value.problem_type == suffix and refused.value.status == status
    assert len(seen) == 1 and sleeps == []


def test_submit_outcomes_map_from_problem_types() -> None:
    transport, _, _ = make_transport(
        [
            httpx.Response(200, json={"status": "already-accepted"}),
            problem(409, "wrong-stage"),
            problem(409, "excluded"),
            problem(410, "round-aborted", abort_reason="too-few-participants"),
        ]
    )
    assert transport.submit(ROUND, Round.SHARE_KEYS, b"x") == Accepted(already_accepted=True)
    assert transport.submit(ROUND, Round.SHARE_KEYS, b"x") == StageClosed()
    assert transport.submit(ROUND, Round.SHARE_KEYS, b"x") == Excluded()
    assert transport.submit(ROUND, Round.SHARE_KEYS, b"x") == RoundAborted("too-few-participants")


def test_fetch_outcomes_map_from_status_and_problem_types() -> None:
    transport, seen, _ = make_transport(
        [
            httpx.Response(204, headers={"Retry-After": "2"}),
            httpx.Response(200, content=b"SAG-message"),
            problem(409, "excluded"),
            problem(409, "round-completed"),
            problem(410, "round-aborted", abort_reason="aborted-by-server"),
        ]
    )
    assert transport.fetch(ROUND, Round.ADVERTISE_KEYS) == Pending(2.0)
    assert transport.fetch(ROUND, Round.ADVERTISE_KEYS) == Delivered(b"SAG-message")
    assert transport.fetch(ROUND, Round.SHARE_KEYS) == Excluded()
    assert transport.fetch(ROUND, Round.SHARE_KEYS) == RoundCompleted()
    assert transport.fetch(ROUND, Round.SHARE_KEYS) == RoundAborted("aborted-by-server")
    assert all(request.url.path == f"/v1/rounds/{ROUND}/messages/me" for request in seen)


def test_round_description_with_wrong_config_digest_is_refused() -> None:
    import base64

    from clients.runtime.errors import PolicyViolation, PolicyViolationReason

    keys = [SigningKey.generate(DeterministicRandom.from_int(i)).public_bytes for i in range(3)]
    body = {
        "round_id": ROUND,
        "cohort": [{"index": i, "id": f"bank-{i}", "public_key": base64.b64encode(k).decode()} for i, k in enumerate(keys)],
        "threshold": 3,
        "mode": "active",
        "graph": "full",
        "degree": None,
        "dim": 10,
        "bits": 32,
        "dp_policy": None,
        "config_digest": "00" * 32,
        "stage": "R0-advertise-keys",
    }
    transport, _, _ = make_transport([httpx.Response(200, content=json.dumps(body).encode())])
    with pytest.raises(PolicyViolation) as refused:
        transport.describe_round(ROUND)
    assert refused.value.reason is PolicyViolationReason.CONFIG_DIGEST_MISMATCH


def test_description_of_another_round_is_refused() -> None:
    transport, _, _ = make_transport([httpx.Response(200, json={"round_id": "cd" * 16})])
    with pytest.raises(ServerRefused) as refused:
        transport.describe_round(ROUND)
    assert refused.value.problem_type == "unusable-round-description"


def test_result_whose_digest_does_not_match_is_refused() -> None:
    import hashlib

    import numpy as np

    content = np.arange(4, dtype="<u4").tobytes()
    headers = {"X-Secagg-Dim": "4", "X-Secagg-Bits": "32", "X-Secagg-Survivors": "0,1,2"}
    good = httpx.Response(
        200, content=content, headers={**headers, "X-Secagg-Result-Sha256": hashlib.sha256(content).hexdigest()}
    )
    bad = httpx.Response(200, content=content, headers={**headers, "X-Secagg-Result-Sha256": "00" * 32})
    transport, _, _ = make_transport([good, bad])
    result = transport.fetch_result(ROUND)
    assert result.survivors == (0, 1, 2) and result.vector.tolist() == [0, 1, 2, 3]
    with pytest.raises(ServerRefused, match="does not match"):
        transport.fetch_result(ROUND)


def make_long_polling_transport(responses, *, held_seconds: float):
    """A transport whose server answers ``responses`` in order, each after ``held_seconds`` (on an injected clock)."""
    seen: list[httpx.Request] = []
    now = {"t": 0.0}
    queue = list(responses)

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        now["t"] += held_seconds
        return queue.pop(0)

    transport = HttpTransport(
        "http://aggregator.test",
        key_id="bank-a",
        identity=IDENTITY,
        client=httpx.Client(transport=httpx.MockTransport(handler)),
        sleep=lambda seconds: None,
        wall_clock=lambda: NOW,
        monotonic=lambda: now["t"],
        source=DeterministicRandom.from_int(6),
        long_poll_seconds=20.0,
    )
    return transport, seen


def test_fetch_long_polls_with_the_wait_in_the_signed_target_and_a_read_timeout_above_it() -> None:
    transport, seen = make_long_polling_transport([httpx.Response(204, headers={"Retry-After": "0"})], held_seconds=20.0)
    assert transport.fetch(ROUND, Round.SHARE_KEYS) == Pending(0.0, long_polled=True)
    (request,) = seen
    assert request.url.params["wait"] == "20"
    target = f"/v1/rounds/{ROUND}/messages/me?wait=20"
    verify_request(parse_credentials(request.headers), IDENTITY.public_bytes, "GET", target, body_sha256=body_digest(b""))
    assert request.extensions["timeout"]["read"] > 20


@pytest.mark.parametrize(
    ("held_seconds", "retry_after"),
    [(0.1, "0"), (20.0, "1")],
    ids=["answered-early", "server-asks-for-a-pause"],
)
def test_a_204_not_held_for_the_wait_or_asking_for_a_pause_is_an_ordinary_poll_answer(
    held_seconds: float, retry_after: str
) -> None:
    transport, _ = make_long_polling_transport(
        [httpx.Response(204, headers={"Retry-After": retry_after})], held_seconds=held_seconds
    )
    delivery = transport.fetch(ROUND, Round.SHARE_KEYS)
    assert isinstance(delivery, Pending) and not delivery.long_polled


def test_waiting_for_the_result_long_polls_until_the_round_completes_then_asks_again_at_once() -> None:
    transport, seen = make_long_polling_transport(
        [problem(409, "result-not-ready"), problem(409, "round-completed")], held_seconds=0.5
    )
    assert transport.fetch_result(ROUND) == Pending(0.0, long_polled=True)
    assert [request.url.path for request in seen] == [f"/v1/rounds/{ROUND}/result", f"/v1/rounds/{ROUND}/messages/me"]


def test_waiting_for_the_result_reports_an_abort_seen_by_the_long_poll() -> None:
    transport, _ = make_long_polling_transport(
        [problem(409, "result-not-ready"), problem(410, "round-aborted", abort_reason="too-few-participants")], held_seconds=0.5
    )
    assert transport.fetch_result(ROUND) == RoundAborted("too-few-participants")


def test_long_polling_can_be_disabled_and_then_fetch_sends_no_wait() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(204, headers={"Retry-After": "1"})

    transport = HttpTransport(
        "http://aggregator.test", key_id="bank-a", identity=IDENTITY,
        client=httpx.Client(transport=httpx.MockTransport(handler)), long_poll_seconds=0,
    )  # fmt: skip
    assert transport.fetch(ROUND, Round.SHARE_KEYS) == Pending(1.0)
    assert "wait" not in seen[0].url.params


def test_transports_share_one_tls_context_that_verifies_certificates_and_host_names() -> None:
    import ssl

    from clients.runtime.http_transport import shared_tls_context

    context = shared_tls_context(True)
    assert shared_tls_context(True) is context
    assert context.verify_mode is ssl.CERT_REQUIRED and context.check_hostname
    assert context.get_ca_certs() or context.cert_store_stats()["x509_ca"] > 0


def test_without_verification_the_tls_context_checks_nothing() -> None:
    import ssl

    from clients.runtime.http_transport import shared_tls_context

    context = shared_tls_context(False)
    assert context.verify_mode is ssl.CERT_NONE and not context.check_hostname
