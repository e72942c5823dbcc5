"""Property-based fuzzing of every operation in the OpenAPI document: no input causes a 5xx.

Schemathesis generates requests from the server's own ``/openapi.json``. Admin calls
carry the real bearer token and participant calls are really signed (over whatever
body and query Schemathesis produced), so generated inputs reach the handlers instead
of stopping at authentication. The app runs in process
(:class:`~tests.service.harness.InProcessServer`, its lifespan and background task
included); a 5xx is the app's own answer, as under uvicorn. The number of examples per
operation is bounded to keep the run short.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from secagg.http_contract import sign_request
from tests.service.harness import Api, InProcessServer, Party, make_parties

EXAMPLES_PER_OPERATION = 12


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessServer]:
    server = InProcessServer(directory=tmp_path_factory.mktemp("fuzz-server"), poll_seconds=0.1, dev=False).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def fuzz_round(fuzz_server: InProcessServer) -> tuple[Party, str]:
    """An enrolled bank in one running round, so participant operations get past authentication."""
    api = Api(fuzz_server)
    parties = make_parties(3, prefix="fuzz", seed=500)
    for party in parties:
        api.enroll(party)
    round_id = api.create_round(parties, threshold=2, mode="honest-but-curious", dim=8)
    api.close()
    return parties[0], round_id


def test_generated_requests_never_get_a_server_error(fuzz_server: InProcessServer, fuzz_round: tuple[Party, str]) -> None:
    party, round_id = fuzz_round
    with fuzz_server.client() as client:
        document = client.get(f"{fuzz_server.operator_url}/openapi.json")
    assert document.status_code == 200
    schema = schemathesis.openapi.from_dict(document.json())
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 15
    failures: list[str] = []
    sent: list[object] = []
    with fuzz_server.client() as client:
        for operation in operations:

            @given(case=operation.as_strategy())
            @settings(
                max_examples=EXAMPLES_PER_OPERATION,
                deadline=None,
                suppress_health_check=list(HealthCheck),
                derandomize=True,
                database=None,
            )
            def exercise(case) -> None:
                sent.append(case)
                if "round_id" in (case.path_parameters or {}) and len(sent) % 2:
                    case.path_parameters["round_id"] = round_id  # half the cases aim at the live round
                failure = _send(client, case, fuzz_server, party)
                if failure:
                    failures.append(failure)

            exercise()
    assert not failures, failures[:10]


def _send(client: httpx.Client, case, server: InProcessServer, party: Party) -> str | None:
    """Send one generated request (authenticated as the path requires); describe any defect."""
    kwargs = case.as_transport_kwargs(base_url=server.base_url)
    request = client.build_request(
        kwargs["method"],
        kwargs["url"],
        params=kwargs.get("params"),
        headers={key: str(value) for key, value in (kwargs.get("headers") or {}).items()},
        content=_body_bytes(kwargs),
    )
    target = urlsplit(str(request.url))
    path_with_query = target.path + (f"?{target.query}" if target.query else "")
    if target.path.startswith("/v1/admin"):
        request.headers["Authorization"] = f"Bearer {server.admin_token}"
    elif target.path.startswith("/v1/"):
        request.headers.update(
            sign_request(
                party.key,
                request.method,
                path_with_query,
                request.content,
                key_id=party.participant_id,
                now=int(time.time()),
                nonce=secrets.token_hex(16),
            )
        )
    response = client.send(request)
    if response.status_code >= 500:
        return f"{request.method} {path_with_query}: {response.status_code} {response.text[:200]}"
    if response.status_code >= 400:
        if not response.headers.get("content-type", "").startswith("application/problem+json"):
            return f"{request.method} {path_with_query}: {response.status_code} without problem+json"
        if not response.json().get("type", "").startswith("urn:secagg:problem:"):
            return f"{request.method} {path_with_query}: problem without a secagg type"
    return None


def _body_bytes(kwargs: dict) -> bytes:
    if kwargs.get("json") is not None:
        return httpx.Request("POST", "http://x", json=kwargs["json"]).content
    data = kwargs.get("data")
    if data is None:
        return b""
    if isinstance(data, str):
        return data.encode("utf-8")
    return bytes(data)
