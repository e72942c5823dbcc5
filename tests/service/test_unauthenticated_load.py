"""What an unauthenticated caller, a greedy bank and a careless round creator can make the server do.

Nothing is read from an unauthenticated caller beyond its headers (admin bodies after the
token, uploads after the signature over their declared digest); a body trickled past the
deadline is cut off; connections beyond the limit get 503; long polls beyond the
per-participant cap get 429 with Retry-After; rounds beyond the open-round limit are
refused; DP policies outside sanity bounds are refused; an unauthenticated caller cannot
tell enrolled, revoked and unknown ids apart; a refused upload does not make the next
request replay the round. The behaviour is observed from outside: the server answers
before the client finished sending, or from its own log.

What happens on the wire (answers before the body, a trickled body, the connection
limit) is watched on a server subprocess over raw sockets; the rest runs against the app
in process (:class:`~tests.service.harness.InProcessServer`), whose long polls a test
sees parked before it sends the next.
"""

from __future__ import annotations

import base64
import json
import secrets
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from secagg.http_contract import sign_request
from tests.service.harness import Api, InProcessServer, Party, RoundDriver, ServerProcess, make_parties

DECLARED_BODY_BYTES = 4 * 1024 * 1024


def _status_of_partial_request(port: int, head: bytes, sent_body: bytes, *, wait: float = 5.0) -> int | None:
    """Send ``head`` and the first bytes of a body it declares longer; the status if the server
    answers within ``wait`` seconds while the rest of the body is still unsent (None if not)."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as connection:
        connection.sendall(head + sent_body)
        received = b""
        try:
            while b"\r\n" not in received:
                chunk = connection.recv(4096)
                if not chunk:
                    break
                received += chunk
        except TimeoutError:
            return None
    if not received.startswith(b"HTTP/1.1 "):
        return None
    return int(received.split(b" ")[1])


def _head(method: str, path: str, headers: dict[str, str]) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *(f"{name}: {value}" for name, value in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


@pytest.fixture(scope="module")
def limited_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = ServerProcess(
        directory=tmp_path_factory.mktemp("limited-server"),
        poll_seconds=0.1,
        dev=False,
        extra_env={"SECAGG_BODY_TIMEOUT_SECONDS": "2"},
    ).start()
    yield server
    server.kill()


@pytest.fixture(scope="module")
def limited_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessServer]:
    server = InProcessServer(
        directory=tmp_path_factory.mktemp("limited-app"),
        dev=False,
        settings={"max_long_polls_per_participant": 2, "max_open_rounds": 3},
    ).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def limited_api(limited_app: InProcessServer) -> Iterator[Api]:
    api = Api(limited_app)
    yield api
    api.close()


def test_an_admin_request_without_the_token_is_answered_401_before_its_body_is_read(socket_server: ServerProcess) -> None:
    head = _head(
        "POST",
        "/v1/admin/rounds",
        {"Content-Type": "application/json", "Content-Length": str(DECLARED_BODY_BYTES), "Authorization": "Bearer wrong"},
    )
    assert _status_of_partial_request(socket_server.port, head, b"{" + b" " * 1023) == 401


def test_an_upload_with_a_bad_signature_is_answered_401_before_its_body_is_read(socket_server: ServerProcess) -> None:
    api = Api(socket_server)
    parties = make_parties(3, prefix="unread", seed=810)
    for party in parties:
        api.enroll(party)
    round_id = api.create_round(parties, threshold=2, mode="honest-but-curious", dim=1 << 20, bits=32)
    path = f"/v1/rounds/{round_id}/messages"
    impostor = make_parties(1, prefix="unread", seed=811)[0]  # same id as parties[0], another key
    headers = sign_request(
        impostor.key,
        "POST",
        path,
        b"\x00" * 1024,
        key_id=parties[0].participant_id,
        now=int(time.time()),
        nonce=secrets.token_hex(16),
    )
    headers.update({"Content-Type": "application/octet-stream", "Content-Length": str(DECLARED_BODY_BYTES)})
    assert _status_of_partial_request(socket_server.port, _head("POST", path, headers), b"\x00" * 1024) == 401
    api.close()


def test_a_body_trickled_past_the_deadline_is_cut_off_with_408(limited_server: ServerProcess) -> None:
    body = json.dumps({"id": "trickled-bank", "public_key": base64.b64encode(bytes(32)).decode(), "role": "bank"}).encode()
    head = _head(
        "POST",
        "/v1/admin/participants",
        {
            "Content-Type": "application/json",
            "Content-Length": str(len(body)),
            "Authorization": f"Bearer {limited_server.admin_token}",
        },
    )
    with socket.create_connection(("127.0.0.1", limited_server.port), timeout=10) as connection:
        connection.sendall(head)
        started = time.monotonic()
        answered = b""
        connection.settimeout(0.25)
        for index in range(len(body)):  # one byte every 0.25 s: the whole body would take over 15 s
            try:
                connection.sendall(body[index : index + 1])
            except OSError:
                break
            try:
                answered += connection.recv(4096)
            except TimeoutError:
                continue
            if answered:
                break
        sent_for = time.monotonic() - started
        connection.settimeout(2)
        while answered and b"body-timeout" not in answered:
            more = connection.recv(4096)
            if not more:
                break
            answered += more
    assert answered.startswith(b"HTTP/1.1 408"), answered[:200]
    assert b"body-timeout" in answered
    assert sent_for < len(body) * 0.25 / 2, "the server waited for the whole trickled body"


def test_connections_beyond_the_limit_are_answered_503(tmp_path_factory: pytest.TempPathFactory) -> None:
    server = ServerProcess(
        directory=tmp_path_factory.mktemp("few-connections"), dev=False, extra_env={"SECAGG_MAX_CONNECTIONS": "4"}
    ).start()
    idle = [socket.create_connection(("127.0.0.1", server.port), timeout=5) for _ in range(4)]
    try:
        time.sleep(0.3)
        with httpx.Client(timeout=10) as client:
            assert client.get(server.base_url + "/healthz").status_code == 503
    finally:
        for connection in idle:
            connection.close()
        server.kill()


def test_long_polls_beyond_the_per_participant_cap_are_answered_429_with_retry_after(
    limited_app: InProcessServer, limited_api: Api
) -> None:
    parties = make_parties(3, prefix="poller", seed=820)
    for party in parties:
        limited_api.enroll(party)
    round_id = limited_api.create_round(parties, threshold=2, mode="honest-but-curious", dim=8)
    try:
        path = f"/v1/rounds/{round_id}/messages/me?wait=3"  # R0: nothing to answer, so each poll is held
        answers: list[httpx.Response] = []

        def poll() -> None:
            with limited_app.client() as client:
                headers = sign_request(
                    parties[0].key, "GET", path, b"", key_id=parties[0].participant_id, now=int(time.time()),
                    nonce=secrets.token_hex(16),
                )  # fmt: skip
                answers.append(client.get(path, headers=headers))

        held = [threading.Thread(target=poll) for _ in range(2)]
        for thread in held:
            thread.start()
        assert limited_app.long_polls is not None
        assert limited_app.long_polls.wait_for_parked(round_id, 2, timeout=30), "two long polls were never held at once"
        poll()  # the third while both are held
        for thread in held:
            thread.join(timeout=60)
        statuses = sorted(answer.status_code for answer in answers)
        assert statuses == [204, 204, 429], [answer.text for answer in answers]
        [refused] = [answer for answer in answers if answer.status_code == 429]
        assert refused.json()["type"] == "urn:secagg:problem:too-many-requests"
        assert int(refused.headers["Retry-After"]) >= 1
        another_bank = limited_api.signed(parties[1], "GET", f"/v1/rounds/{round_id}/messages/me?wait=0.1")
        assert another_bank.status_code == 204  # the cap is per participant
    finally:
        limited_api.admin("POST", f"/v1/admin/rounds/{round_id}/abort", {"detail": "test over"})


def test_creating_a_round_beyond_the_open_round_limit_is_refused_until_one_finishes(limited_api: Api) -> None:
    parties = make_parties(3, prefix="opener", seed=830)
    for party in parties:
        limited_api.enroll(party)
    body = {"cohort": [party.participant_id for party in parties], "threshold": 2, "mode": "honest-but-curious", "dim": 8}
    created: list[str] = []
    while True:
        response = limited_api.admin("POST", "/v1/admin/rounds", body)
        if response.status_code != 201:
            break
        created.append(response.json()["round_id"])
        assert len(created) <= 3, "more rounds running than the limit allows"
    assert response.status_code == 409, response.text
    assert response.json()["type"] == "urn:secagg:problem:open-round-limit"
    assert limited_api.admin("POST", f"/v1/admin/rounds/{created[0]}/abort", {"detail": "make room"}).status_code == 200
    again = limited_api.admin("POST", "/v1/admin/rounds", body)
    assert again.status_code == 201, again.text
    for round_id in [*created[1:], again.json()["round_id"]]:
        limited_api.admin("POST", f"/v1/admin/rounds/{round_id}/abort", {"detail": "test over"})


@pytest.fixture(scope="module")
def policy_cohort(shared_api: Api) -> list[Party]:
    parties = make_parties(3, prefix="policy", seed=840)
    for party in parties:
        shared_api.enroll(party)
    return parties


GAUSSIAN = {"mechanism": "gaussian", "noise_multiplier": 1.1, "sample_rate": 0.01, "steps": 100}
SKELLAM = {"mechanism": "skellam", "l1_sensitivity": 100.0, "l2_sensitivity": 10.0, "variance": 1e6, "steps": 10}


@pytest.mark.parametrize(
    ("parameters", "named"),
    [
        ({**GAUSSIAN, "steps": 10**30}, "steps"),
        ({**GAUSSIAN, "steps": 10**9 + 1}, "steps"),
        ({**GAUSSIAN, "noise_multiplier": 1e300}, "noise_multiplier"),
        ({**GAUSSIAN, "noise_multiplier": 1e-9}, "noise_multiplier"),
        ({**GAUSSIAN, "sample_rate": 1e-300}, "sample_rate"),
        ({**SKELLAM, "variance": 1e300}, "variance"),
        ({**SKELLAM, "l1_sensitivity": 1e300, "l2_sensitivity": 1e299}, "l1_sensitivity"),
    ],
    ids=["steps-1e30", "steps-above-1e9", "noise-1e300", "noise-1e-9", "rate-1e-300", "variance-1e300", "sensitivity-1e300"],
)
def test_a_dp_policy_outside_the_sanity_bounds_is_refused(
    policy_cohort: list[Party], shared_api: Api, parameters: dict, named: str
) -> None:
    parties = policy_cohort
    unit = "example" if parameters["mechanism"] == "gaussian" else "participant"
    body = {
        "cohort": [party.participant_id for party in parties], "threshold": 2, "mode": "honest-but-curious", "dim": 8,
        "dp_policy": {"privacy": [{"unit": unit, "mechanism": parameters["mechanism"], "parameters": parameters}]},
    }  # fmt: skip
    response = shared_api.admin("POST", "/v1/admin/rounds", body)
    assert response.status_code == 422, response.text
    assert response.json()["type"] == "urn:secagg:problem:unsafe-round"
    assert named in response.json()["detail"]


def test_a_dp_policy_within_the_bounds_is_accepted(shared_api: Api) -> None:
    parties = make_parties(3, prefix="policy-ok", seed=841)
    for party in parties:
        shared_api.enroll(party)
    body = {
        "cohort": [party.participant_id for party in parties], "threshold": 2, "mode": "honest-but-curious", "dim": 8,
        "dp_policy": {"privacy": [
            {"unit": "example", "mechanism": "gaussian", "parameters": {**GAUSSIAN, "steps": 10**9}},
            {"unit": "participant", "mechanism": "skellam", "parameters": SKELLAM},
        ]},
    }  # fmt: skip
    response = shared_api.admin("POST", "/v1/admin/rounds", body)
    assert response.status_code == 201, response.text
    shared_api.admin("POST", f"/v1/admin/rounds/{response.json()['round_id']}/abort", {"detail": "test over"})


def test_unknown_revoked_and_enrolled_ids_look_the_same_to_a_caller_without_their_key(shared_api: Api) -> None:
    enrolled, revoked, stranger, forger = make_parties(4, prefix="oracle", seed=850)
    shared_api.enroll(enrolled)
    shared_api.enroll(revoked)
    assert shared_api.admin("DELETE", f"/v1/admin/participants/{revoked.participant_id}").status_code == 200

    def answer_to(party: Party) -> tuple[int, str, str]:
        response = shared_api.signed(Party(party.participant_id, forger.key), "GET", "/v1/work")
        body = response.json()
        return response.status_code, body["type"], body["detail"]

    answers = {name: answer_to(party) for name, party in (("enrolled", enrolled), ("revoked", revoked), ("unknown", stranger))}
    assert len(set(answers.values())) == 1, answers
    assert answers["unknown"][1] == "urn:secagg:problem:bad-request-signature"
    holder = shared_api.signed(revoked, "GET", "/v1/work")
    assert holder.status_code == 401
    assert holder.json()["type"] == "urn:secagg:problem:revoked-key"  # told only to the holder of the revoked key


def _replays(server: InProcessServer, round_id: str) -> int:
    lines = [line for line in server.log_tail(50_000_000).splitlines() if line.strip().startswith("{")]
    return sum(
        1 for entry in map(json.loads, lines) if entry.get("event") == "session_replayed" and entry.get("round_id") == round_id
    )


def test_refused_uploads_do_not_make_the_next_request_replay_the_round(shared_server: InProcessServer, shared_api: Api) -> None:
    import dataclasses

    from secagg.messages import AdvertiseKeys, decode, encode

    parties = make_parties(5, prefix="replay", seed=860)
    for party in parties:
        shared_api.enroll(party)
    round_id = shared_api.create_round(parties, threshold=4, mode="active", dim=8)
    driver = RoundDriver(shared_api, parties, round_id, seed=860)
    driver.send([0])
    replays_before = _replays(shared_server, round_id)
    advertised: AdvertiseKeys = decode(driver.pending[1])
    forged = encode(dataclasses.replace(advertised, signature=b"\x01" * 64))
    for _ in range(20):
        refused = driver.post(1, forged)
        assert refused.status_code == 422 and refused.json()["type"] == "urn:secagg:problem:invalid-signature"
    driver.send([1, 2])
    assert _replays(shared_server, round_id) - replays_before == 0
    shared_api.admin("POST", f"/v1/admin/rounds/{round_id}/abort", {"detail": "test over"})
