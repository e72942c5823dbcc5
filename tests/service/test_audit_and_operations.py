"""Auditor access, the server ledger, work listing, metrics, logs and long polls, over HTTP.

The app runs in process (:class:`~tests.service.harness.InProcessServer`); HTTPS needs a
real socket and runs on a server subprocess.
"""

from __future__ import annotations

import json
import ssl
from pathlib import Path

import numpy as np
import pytest

from service.ledger import load_or_create_signing_key
from tests.service.harness import Api, InProcessServer, RoundDriver, ServerProcess, make_parties

SKELLAM = {
    "unit": "participant",
    "mechanism": "skellam",
    "parameters": {"mechanism": "skellam", "l1_sensitivity": 40.0, "l2_sensitivity": 10.0, "variance": 400.0, "steps": 1},
}


@pytest.fixture(scope="module")
def finished_rounds(shared_server: InProcessServer, shared_api: Api) -> dict[str, RoundDriver]:
    parties = make_parties(3, prefix="audited", seed=700)
    for party in parties:
        shared_api.enroll(party)
    completed = RoundDriver(
        shared_api,
        parties,
        shared_api.create_round(parties, threshold=2, mode="honest-but-curious", dim=8, dp_policy={"privacy": [SKELLAM]}),
        seed=700,
    )
    completed.send(range(3))
    for stage in ("R1-share-keys", "R2-masked-input-collection", "R4-unmasking"):
        completed.expect_stage(stage)
        completed.fetch(range(3))
        completed.send(range(3))
    completed.wait_for_stage("completed")
    aborted_id = shared_api.create_round(parties, threshold=2, mode="honest-but-curious", dim=8)
    assert shared_api.admin("POST", f"/v1/admin/rounds/{aborted_id}/abort", {"detail": "operator test"}).status_code == 200
    aborted = RoundDriver(shared_api, parties, aborted_id, seed=701)
    for driver in (completed, aborted):  # appended as the round finished, before the answer that finished it
        assert shared_api.status(driver.round_id)["ledger_recorded"], "round not recorded in the ledger when it finished"
    return {"completed": completed, "aborted": aborted}


@pytest.fixture(scope="module")
def auditor(shared_api: Api):
    (party,) = make_parties(1, prefix="auditor-ops", seed=710, role="auditor")
    shared_api.enroll(party)
    return party


def test_auditor_sees_survivors_by_id_and_outcome_but_no_vectors(shared_api: Api, finished_rounds, auditor) -> None:
    completed = finished_rounds["completed"]
    response = shared_api.signed(auditor, "GET", f"/v1/audit/rounds/{completed.round_id}")
    assert response.status_code == 200
    record = response.json()
    ids = [party.participant_id for party in completed.parties]
    assert record["outcome"] == "completed"
    assert record["survivors"]["R2-masked-input-collection"] == ids
    assert record["parameters"]["dp_policy"]["privacy"] == [SKELLAM]
    text = response.text.lower()
    assert not any(word in text for word in ("vector", "share_", "ciphertext", "masked_sum", "result"))
    listing = shared_api.signed(auditor, "GET", "/v1/audit/rounds").json()["rounds"]
    outcomes = {entry["round_id"]: entry["outcome"] for entry in listing}
    assert outcomes[completed.round_id] == "completed"
    assert outcomes[finished_rounds["aborted"].round_id] == "aborted"


def test_server_ledger_served_to_the_auditor_verifies_under_the_server_key(
    shared_server: InProcessServer, shared_api: Api, finished_rounds, auditor, tmp_path: Path
) -> None:
    from dp.audit.round_records import verify_server_ledger

    ledger = shared_api.signed(auditor, "GET", "/v1/audit/ledger")
    head = shared_api.signed(auditor, "GET", "/v1/audit/ledger/head")
    assert ledger.status_code == 200 and head.status_code == 200
    (tmp_path / "server.jsonl").write_bytes(ledger.content)
    (tmp_path / "server.jsonl.head").write_bytes(head.content)
    public_key = load_or_create_signing_key(shared_server.data_dir / "server-ledger.key").public_bytes
    verification = verify_server_ledger(tmp_path / "server.jsonl", public_key=public_key)
    assert verification.ok, verification.findings
    records = {entry.record.round_id: entry.record for entry in verification.entries}
    completed = records[finished_rounds["completed"].round_id]
    assert completed.outcome.value == "completed"
    assert [item.to_dict() for item in completed.privacy] == [SKELLAM]
    assert list(completed.survivors.values())[2] == tuple(party.participant_id for party in finished_rounds["completed"].parties)
    aborted = records[finished_rounds["aborted"].round_id]
    assert (aborted.outcome.value, aborted.abort_reason) == ("aborted", "aborted-by-server")


def test_result_is_also_served_as_json(shared_api: Api, finished_rounds) -> None:
    import base64

    completed = finished_rounds["completed"]
    response = shared_api.signed(
        completed.parties[1], "GET", f"/v1/rounds/{completed.round_id}/result", headers={"Accept": "application/json"}
    )
    body = response.json()
    vector = np.frombuffer(base64.b64decode(body["vector_base64"]), dtype="<u4")
    np.testing.assert_array_equal(vector, completed.expected_sum(range(3)))
    assert body["survivors"] == [0, 1, 2]


def test_round_with_an_unknown_dp_mechanism_is_refused(shared_api: Api, finished_rounds) -> None:
    parties = finished_rounds["completed"].parties
    bad = dict(SKELLAM, mechanism="laplace")
    response = shared_api.admin(
        "POST",
        "/v1/admin/rounds",
        {
            "cohort": [p.participant_id for p in parties],
            "threshold": 2,
            "mode": "honest-but-curious",
            "dim": 8,
            "dp_policy": {"privacy": [bad]},
        },
    )
    assert response.status_code == 422
    assert response.json()["type"] == "urn:secagg:problem:unsafe-round"


def test_work_lists_a_round_until_the_member_has_answered_its_stage(shared_api: Api) -> None:
    parties = make_parties(3, prefix="worker", seed=720)
    for party in parties:
        shared_api.enroll(party)
    driver = RoundDriver(
        shared_api, parties, shared_api.create_round(parties, threshold=2, mode="honest-but-curious", dim=8), seed=720
    )
    items = shared_api.signed(parties[0], "GET", "/v1/work").json()["items"]
    assert [(item["round_id"], item["action"]) for item in items] == [(driver.round_id, "advertise-keys")]
    driver.send([0])
    assert shared_api.signed(parties[0], "GET", "/v1/work").json()["items"] == []
    driver.send([1, 2])
    driver.expect_stage("R1-share-keys")
    items = shared_api.signed(parties[0], "GET", "/v1/work").json()["items"]
    assert [(item["round_id"], item["action"]) for item in items] == [(driver.round_id, "respond")]
    waiting = shared_api.signed(parties[0], "GET", f"/v1/rounds/{driver.round_id}/messages/me")
    assert waiting.status_code == 200
    driver.fetch([0])
    driver.send([0])
    waiting = shared_api.signed(parties[0], "GET", f"/v1/rounds/{driver.round_id}/messages/me")
    assert waiting.status_code == 204
    assert waiting.headers["Retry-After"] == "1"
    assert waiting.headers["X-Secagg-Stage"] == "R1-share-keys"


def test_metrics_count_finished_rounds_and_bytes_in(shared_api: Api, finished_rounds) -> None:
    text = shared_api.http.get(shared_api.server.operator_url + "/metrics").text
    completed = [line for line in text.splitlines() if line.startswith('secagg_rounds_finished_total{outcome="completed"')]
    assert completed and float(completed[0].split()[-1]) >= 1
    assert any(line.startswith('secagg_message_bytes_in_total{stage="R2-masked-input-collection"}') for line in text.splitlines())
    assert "secagg_stage_duration_seconds_bucket" in text


def test_logs_are_json_lines_without_secrets(shared_server: InProcessServer, finished_rounds) -> None:
    lines = [line for line in shared_server.log_tail(10_000_000).splitlines() if line.strip()]
    entries = [json.loads(line) for line in lines]
    assert any(entry["event"] == "round_finished" for entry in entries)
    text = "\n".join(lines)
    assert shared_server.admin_token not in text
    ledger_private_key = (shared_server.data_dir / "server-ledger.key").read_text().strip()
    assert ledger_private_key not in text


def test_health_and_readiness(shared_api: Api) -> None:
    assert shared_api.http.get("/healthz").json() == {"status": "ok"}
    assert shared_api.http.get("/readyz").status_code == 200


def test_openapi_declares_binary_bodies_and_problem_responses(shared_api: Api) -> None:
    document = shared_api.http.get(shared_api.server.operator_url + "/openapi.json").json()
    upload = document["paths"]["/v1/rounds/{round_id}/messages"]["post"]
    assert upload["requestBody"]["content"]["application/octet-stream"]["schema"] == {"type": "string", "format": "binary"}
    assert (
        "application/octet-stream" in document["paths"]["/v1/rounds/{round_id}/messages/me"]["get"]["responses"]["200"]["content"]
    )
    assert "Problem" in document["components"]["schemas"]
    for path, operations in document["paths"].items():
        if not path.startswith("/v1/"):
            continue
        for method, operation in operations.items():
            problem_statuses = [
                status for status, response in operation["responses"].items()
                if "application/problem+json" in response.get("content", {})
            ]  # fmt: skip
            assert problem_statuses, f"{method.upper()} {path} documents no problem response"
    assert shared_api.http.get(shared_api.server.operator_url + "/docs").status_code == 200


def test_server_serves_https_with_the_given_certificate(tmp_path: Path) -> None:
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    server = ServerProcess(
        directory=tmp_path / "server",
        poll_seconds=0.1,
        dev=False,
        extra_arguments=("--tls-cert", str(cert_path), "--tls-key", str(key_path)),
        scheme="https",
        verify=ssl.create_default_context(cafile=str(cert_path)),
    ).start()
    try:
        import httpx

        assert httpx.get(f"{server.base_url}/healthz", verify=server.verify).json() == {"status": "ok"}
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{server.port}/healthz", timeout=5)
    finally:
        server.kill()


def test_long_poll_answers_with_the_message_once_the_stage_closes(shared_server: InProcessServer, shared_api: Api) -> None:
    import threading

    from secagg.messages import KeyList, decode

    parties = make_parties(3, prefix="longpoll", seed=730)
    for party in parties:
        shared_api.enroll(party)
    driver = RoundDriver(
        shared_api, parties, shared_api.create_round(parties, threshold=2, mode="honest-but-curious", dim=8), seed=730
    )
    driver.send([0])
    waited: dict[str, object] = {}

    def long_poll() -> None:
        api = Api(shared_api.server)
        try:
            waited["response"] = api.signed(parties[0], "GET", f"/v1/rounds/{driver.round_id}/messages/me?wait=25")
        finally:
            api.close()

    poller = threading.Thread(target=long_poll)
    poller.start()
    assert shared_server.long_polls is not None
    assert shared_server.long_polls.wait_for_parked(driver.round_id, timeout=30), "the long poll never started waiting"
    assert poller.is_alive() and "response" not in waited
    driver.send([1, 2])  # closes R0 while the request is waiting
    poller.join(timeout=60)
    assert not poller.is_alive()
    response = waited["response"]
    assert response.status_code == 200
    assert response.headers["X-Secagg-Stage"] == "R1-share-keys"
    assert isinstance(decode(response.content), KeyList)
    assert shared_server.long_polls.wake_ups(driver.round_id)[-1] == "changed"  # woken by the closing, not a re-check
    driver.fetch([0])
    driver.send([0])
    idle = shared_api.signed(parties[0], "GET", f"/v1/rounds/{driver.round_id}/messages/me?wait=0.5")
    assert idle.status_code == 204 and idle.headers["Retry-After"] == "0"
    too_long = shared_api.signed(parties[0], "GET", f"/v1/rounds/{driver.round_id}/messages/me?wait=600")
    assert too_long.status_code == 422
