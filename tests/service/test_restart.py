"""SIGKILL and restart: the server finishes the round with the same exact result, losing nothing.

The server process group is killed with SIGKILL (no shutdown hook runs) after every
stage boundary and in the middle of the R2 uploads, then started again on the same
database. Clients keep their sessions (they did not crash); a client whose request got
no answer retries it with the same bytes; a client that got a 2xx never resends. If any
acknowledged submission were lost, its stage would never see every expected member and
the round would stall or finish without that member: both fail the test.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from secagg.http_contract import sign_request
from tests.service.harness import Api, RoundDriver, make_parties

N = 6
DIM = 1000
STAGES = ("R1-share-keys", "R2-masked-input-collection", "R3-consistency-check", "R4-unmasking")


def _restart(server, api: Api) -> Api:
    api.close()
    server.restart_after_kill()
    return Api(server)


def test_sigkill_at_every_stage_boundary_and_mid_r2_finishes_with_the_exact_sum(server_factory, backend: str) -> None:
    server = server_factory(backend)
    api = Api(server)
    parties = make_parties(N, prefix=f"restart-{backend}", seed=400)
    for party in parties:
        api.enroll(party)
    round_id = api.create_round(parties, threshold=5, mode="active", dim=DIM, bits=32, deadlines={f"R{i}": 120 for i in range(5)})
    driver = RoundDriver(api, parties, round_id, seed=400)

    driver.send(range(N))
    driver.expect_stage(STAGES[0])
    for stage in STAGES:
        api = _restart(server, api)  # boundary: the previous stage closed, this one just opened
        driver.api = api
        status = driver.expect_stage(stage)
        assert status["responded"] == []
        responses = driver.fetch(range(N))
        assert {response.headers["X-Secagg-Stage"] for response in responses.values()} == {stage}
        if stage == "R2-masked-input-collection":
            api = _uploads_interrupted_by_sigkill(server, api, driver)
            driver.api = api
        else:
            driver.send(range(N))
    status = driver.wait_for_stage("completed")
    api = _restart(server, api)
    driver.api = api
    result, survivors = driver.result(0)
    assert survivors == list(range(N))
    np.testing.assert_array_equal(result, driver.expected_sum(range(N)))
    assert api.status(round_id)["history"] == status["history"]
    api.close()


def _uploads_interrupted_by_sigkill(server, api: Api, driver: RoundDriver) -> Api:
    """Upload masked inputs from a thread; SIGKILL the server while the third upload's body is on the wire.

    The third upload sends half its body, then holds the rest until the kill, so the
    server dies with that request read in part and unanswered, and the uploads after it
    find no server: each is retried after the restart with the same bytes.
    """
    acknowledged: list[int] = []
    unanswered: list[int] = []
    in_flight = threading.Event()
    killed = threading.Event()

    def held_body(body: bytes) -> Iterator[bytes]:
        yield body[: len(body) // 2]
        in_flight.set()  # the first half was handed to the socket
        killed.wait(timeout=60)
        yield body[len(body) // 2 :]

    def upload() -> None:
        for index in range(N):
            try:
                response = _post_streamed(driver, index, held_body(driver.pending[index])) if index == 2 else driver.post(index)
            except httpx.HTTPError:
                unanswered.append(index)
                continue
            if response.status_code in (200, 202):
                acknowledged.append(index)
            else:
                unanswered.append(index)

    uploader = threading.Thread(target=upload)
    uploader.start()
    try:
        assert in_flight.wait(timeout=60)
        server.kill()
    finally:
        killed.set()
    uploader.join(timeout=120)
    assert not uploader.is_alive()
    assert acknowledged == [0, 1] and unanswered == list(range(2, N)), (acknowledged, unanswered)
    api.close()
    server.start()
    api = Api(server)
    driver.api = api
    status = api.status(driver.round_id)
    assert status["stage"] == "R2-masked-input-collection"
    assert set(acknowledged) <= set(status["responded"])  # nothing acknowledged was lost
    for index in unanswered:  # retry with the same bytes: accepted now, or already accepted before the kill
        response = driver.post(index)
        assert response.status_code in (200, 202), response.text
    return api


def _post_streamed(driver: RoundDriver, index: int, chunks: Iterator[bytes]) -> httpx.Response:
    """Member ``index``'s pending message, signed over its bytes and sent as a chunked body from ``chunks``."""
    path = f"/v1/rounds/{driver.round_id}/messages"
    headers = sign_request(
        driver.parties[index].key,
        "POST",
        path,
        driver.pending[index],
        key_id=driver.parties[index].participant_id,
        now=int(time.time()),
        nonce=secrets.token_hex(16),
    )
    headers["Content-Type"] = "application/octet-stream"
    return driver.api.http.post(path, content=chunks, headers=headers)


@pytest.mark.parametrize("workers", [2])
def test_round_with_two_worker_processes_on_postgresql_completes_with_the_exact_sum(server_factory, workers: int) -> None:
    server = server_factory("postgres", workers=workers)
    api = Api(server)
    parties = make_parties(N, prefix="workers", seed=450)
    for party in parties:
        api.enroll(party)
    round_id = api.create_round(parties, threshold=5, mode="active", dim=DIM, bits=32, deadlines={f"R{i}": 120 for i in range(5)})
    driver = RoundDriver(api, parties, round_id, seed=450)
    _send_concurrently(driver, range(N))
    for stage in STAGES:
        driver.expect_stage(stage)
        driver.fetch(range(N))
        _send_concurrently(driver, range(N))
    driver.wait_for_stage("completed")
    result, survivors = driver.result(0)
    assert survivors == list(range(N))
    np.testing.assert_array_equal(result, driver.expected_sum(range(N)))
    entries = [json.loads(line) for line in server.log_tail(10_000_000).splitlines() if line.startswith("{")]
    started = {entry["process"] for entry in entries if entry["event"] == "server_started"}
    assert len(started) == workers  # separate processes, one database
    api.close()


def _send_concurrently(driver: RoundDriver, indices) -> None:
    """Every member's upload at once, on separate connections, so both workers serve them."""
    failures: list[str] = []

    def one(index: int) -> None:
        with httpx.Client(base_url=driver.api.server.base_url, timeout=60) as http:
            api = Api.__new__(Api)
            api.server, api.http = driver.api.server, http
            response = api.signed(driver.parties[index], "POST", f"/v1/rounds/{driver.round_id}/messages", driver.pending[index])
            if response.status_code not in (200, 202):
                failures.append(f"{index}: {response.status_code} {response.text}")

    threads = [threading.Thread(target=one, args=(index,)) for index in indices]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not failures, failures
