"""Masked inputs in chunks over HTTP: declared manifests, idempotent chunks, refusals, resumption.

A real server (SQLite, production checks) and real client sessions; the chunk size is
the smallest allowed (1 KiB), so a 1000-element vector of 32 bits is four chunks with a
short last one.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time

import httpx
import numpy as np
import pytest

from secagg.chunks import split_masked_input
from secagg.http_contract import BODY_SHA256_HEADER, sign_request
from tests.service.harness import Api, Party, RoundDriver, make_parties

N = 4
DIM = 1000
CHUNK = 1024
R1, R2, R3, R4 = "R1-share-keys", "R2-masked-input-collection", "R3-consistency-check", "R4-unmasking"


def start_round(api: Api, seed: int, *, dim: int = DIM, chunk_bytes: int = CHUNK) -> RoundDriver:
    parties = make_parties(N, prefix=f"ch{seed}", seed=seed)
    for party in parties:
        api.enroll(party)
    round_id = api.create_round(parties, threshold=3, mode="active", dim=dim, bits=32, chunk_bytes=chunk_bytes)
    driver = RoundDriver(api, parties, round_id, seed=seed)
    driver.send(range(N))
    driver.wait_for_stage(R1)
    driver.fetch(range(N))
    driver.send(range(N))
    driver.wait_for_stage(R2)
    driver.fetch(range(N))
    return driver


def json_request(api: Api, party: Party, method: str, path: str, body: dict) -> httpx.Response:
    return api.signed(party, method, path, json.dumps(body).encode(), content_type="application/json")


def manifest(driver: RoundDriver, index: int) -> tuple[dict, list[bytes]]:
    header, pieces = split_masked_input(driver.pending[index], CHUNK)
    chunks = [bytes(piece) for piece in pieces]
    return {
        "header": base64.b64encode(header.encode()).decode(),
        "chunk_sha256": [hashlib.sha256(chunk).hexdigest() for chunk in chunks],
    }, chunks


def put_chunk(driver: RoundDriver, index: int, k: int, body: bytes, *, declared: str | None = None) -> httpx.Response:
    digest = declared if declared is not None else hashlib.sha256(body).hexdigest()
    return driver.api.signed(
        driver.parties[index],
        "PUT",
        f"/v1/rounds/{driver.round_id}/masked-input/chunks/{k}",
        body,
        headers={BODY_SHA256_HEADER: digest},
    )


def send_other_body(driver: RoundDriver, index: int, k: int, *, signed_body: bytes, sent_body: bytes) -> httpx.Response:
    """A chunk request signed over one body (and declaring its digest) that carries another."""
    path = f"/v1/rounds/{driver.round_id}/masked-input/chunks/{k}"
    party = driver.parties[index]
    headers = sign_request(
        party.key, "PUT", path, signed_body, key_id=party.participant_id, now=int(time.time()), nonce=secrets.token_hex(16)
    )
    headers.update({BODY_SHA256_HEADER: hashlib.sha256(signed_body).hexdigest(), "Content-Type": "application/octet-stream"})
    return driver.api.http.request("PUT", path, content=sent_body, headers=headers)


def upload(driver: RoundDriver, index: int) -> httpx.Response:
    declaration, chunks = manifest(driver, index)
    party = driver.parties[index]
    response = json_request(driver.api, party, "POST", f"/v1/rounds/{driver.round_id}/masked-input", declaration)
    assert response.status_code in (200, 201), response.text
    for k, chunk in enumerate(chunks):
        if k not in response.json()["received"]:
            stored = put_chunk(driver, index, k, chunk)
            assert stored.status_code in (200, 202), stored.text
    return driver.api.signed(party, "POST", f"/v1/rounds/{driver.round_id}/masked-input/commit")


def finish(driver: RoundDriver) -> None:
    driver.wait_for_stage(R3)
    driver.fetch(range(N))
    driver.send(range(N))
    driver.wait_for_stage(R4)
    driver.fetch(range(N))
    driver.send(range(N))
    driver.wait_for_stage("completed")


def test_a_round_with_masked_inputs_in_chunks_completes_with_the_exact_sum(shared_api: Api) -> None:
    driver = start_round(shared_api, seed=301)
    parameters = driver.api.signed(driver.parties[0], "GET", f"/v1/rounds/{driver.round_id}").json()
    assert parameters["chunk_bytes"] == CHUNK and parameters["chunks"] == 4
    for index in range(N):
        committed = upload(driver, index)
        assert committed.status_code == 202, committed.text
        assert committed.json()["closed_stage"] is (index == N - 1)
    finish(driver)
    result, survivors = driver.result()
    assert survivors == list(range(N))
    np.testing.assert_array_equal(result, driver.expected_sum(range(N)))
    chunks = [driver.api.signed(driver.parties[1], "GET", f"/v1/rounds/{driver.round_id}/result/chunks/{k}") for k in range(4)]
    assert [len(chunk.content) for chunk in chunks] == [1024, 1024, 1024, 928]
    for chunk in chunks:
        assert hashlib.sha256(chunk.content).hexdigest() == chunk.headers["X-Secagg-Chunk-Sha256"]
        assert chunk.headers["X-Secagg-Result-Sha256"] == hashlib.sha256(result.tobytes()).hexdigest()
    assert b"".join(chunk.content for chunk in chunks) == result.tobytes()


def test_a_resumed_chunk_upload_sends_only_the_missing_chunks_and_commits_once(shared_api: Api) -> None:
    driver = start_round(shared_api, seed=302)
    declaration, chunks = manifest(driver, 0)
    party = driver.parties[0]
    path = f"/v1/rounds/{driver.round_id}/masked-input"
    first = json_request(shared_api, party, "POST", path, declaration)
    assert first.status_code == 201 and first.json()["received"] == []
    assert put_chunk(driver, 0, 2, chunks[2]).status_code == 202
    assert put_chunk(driver, 0, 0, chunks[0]).status_code == 202
    # the client crashes here and resumes: the same manifest again tells what is stored
    again = json_request(shared_api, party, "POST", path, declaration)
    assert again.status_code == 200 and again.json()["received"] == [0, 2]
    retried = put_chunk(driver, 0, 0, chunks[0])
    assert retried.status_code == 200 and retried.json()["status"] == "already-accepted"
    for k in (1, 3):
        assert put_chunk(driver, 0, k, chunks[k]).status_code == 202
    committed = shared_api.signed(party, "POST", f"{path}/commit")
    assert committed.status_code == 202, committed.text
    assert committed.json()["message_sha256"] == first.json()["upload_sha256"]
    assert shared_api.signed(party, "POST", f"{path}/commit").json()["status"] == "already-accepted"
    status = shared_api.signed(party, "GET", path).json()
    assert status["committed"] is True and status["received"] == [0, 1, 2, 3]
    for index in range(1, N):
        assert upload(driver, index).status_code == 202
    finish(driver)
    result, _ = driver.result()
    np.testing.assert_array_equal(result, driver.expected_sum(range(N)))


def test_a_chunk_with_other_content_for_its_slot_is_refused_and_changes_nothing(shared_api: Api) -> None:
    driver = start_round(shared_api, seed=303)
    declaration, chunks = manifest(driver, 1)
    party = driver.parties[1]
    path = f"/v1/rounds/{driver.round_id}/masked-input"
    assert json_request(shared_api, party, "POST", path, declaration).status_code == 201
    forged = bytes(len(chunks[0]))
    mismatch = put_chunk(driver, 1, 0, forged)  # declares its own digest: not the manifest's
    assert mismatch.status_code == 409 and mismatch.json()["type"].endswith(":chunk-mismatch")
    lying = send_other_body(driver, 1, 0, signed_body=chunks[0], sent_body=forged)  # signs the declared chunk, sends others
    assert lying.status_code == 400 and lying.json()["type"].endswith(":body-digest-mismatch")
    assert shared_api.signed(party, "GET", path).json()["received"] == []
    assert put_chunk(driver, 1, 0, chunks[0]).status_code == 202
    after = put_chunk(driver, 1, 0, forged)
    assert after.status_code == 409 and after.json()["type"].endswith(":chunk-mismatch")
    other = dict(declaration, chunk_sha256=[hashlib.sha256(forged).hexdigest(), *declaration["chunk_sha256"][1:]])
    refused = json_request(shared_api, party, "POST", path, other)
    assert refused.status_code == 409 and refused.json()["type"].endswith(":duplicate-submission")
    incomplete = shared_api.signed(party, "POST", f"{path}/commit")
    assert incomplete.status_code == 409 and incomplete.json()["type"].endswith(":upload-incomplete")
    assert incomplete.json()["missing"] == [1, 2, 3]
    for index in range(N):
        assert upload(driver, index).status_code == 202
    finish(driver)
    result, _ = driver.result()
    np.testing.assert_array_equal(result, driver.expected_sum(range(N)))


def test_refusals_before_any_chunk_is_stored(shared_api: Api) -> None:
    driver = start_round(shared_api, seed=304)
    declaration, chunks = manifest(driver, 2)
    party = driver.parties[2]
    path = f"/v1/rounds/{driver.round_id}/masked-input"
    whole = driver.post(2)  # the whole message does not fit one chunk
    assert whole.status_code == 413 and whole.json()["type"].endswith(":payload-too-large")
    undeclared = put_chunk(driver, 2, 0, chunks[0])
    assert undeclared.status_code == 409 and undeclared.json()["type"].endswith(":upload-not-declared")
    short = json_request(shared_api, party, "POST", path, dict(declaration, chunk_sha256=declaration["chunk_sha256"][:3]))
    assert short.status_code == 422 and short.json()["type"].endswith(":wrong-length")
    other_sender = json_request(shared_api, driver.parties[3], "POST", path, declaration)
    assert other_sender.status_code == 403 and other_sender.json()["type"].endswith(":sender-mismatch")
    assert json_request(shared_api, party, "POST", path, declaration).status_code == 201
    unsigned_digest = shared_api.signed(
        party, "PUT", f"{path}/chunks/0", chunks[0], headers={BODY_SHA256_HEADER: "00" * 32}
    )  # the signature covers the declared digest: a header that differs from the signed body digest fails it
    assert unsigned_digest.status_code == 401
    wrong_size = put_chunk(driver, 2, 3, chunks[3] + b"\x00\x00\x00\x00")
    assert wrong_size.status_code in (409, 413)
    assert shared_api.signed(party, "GET", path).json()["received"] == []


@pytest.mark.parametrize(("dim", "chunks"), [(256, 1), (300, 2)])
def test_dimensions_at_and_just_past_one_chunk(shared_api: Api, dim: int, chunks: int) -> None:
    driver = start_round(shared_api, seed=310 + dim, dim=dim)
    parameters = driver.api.signed(driver.parties[0], "GET", f"/v1/rounds/{driver.round_id}").json()
    assert parameters["chunks"] == chunks
    for index in range(N):
        response = driver.post(index) if chunks == 1 else upload(driver, index)
        assert response.status_code == 202, response.text
    finish(driver)
    result, _ = driver.result()
    np.testing.assert_array_equal(result, driver.expected_sum(range(N)))
