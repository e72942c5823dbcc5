"""Consortium trainings on the server: registration, rounds bound to a manifest, the scoped views.

What is checked: the server refuses a manifest that is not signed by every member or whose
members are not enrolled exactly as listed; a training round's cohort and protocol must
follow from the manifest (an enrolled stranger is refused); the round's parameters carry
the binding and the config digest a client rebuilds includes it; ``/v1/work?training=``
and the auditor's endpoints only show one training; finished rounds are recorded in the
server ledger with their training.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from typing import Any

import pytest

from secagg.config import RoundConfig
from secagg.consortium import Manifest, Member, MemberRole, ProtocolRule, SignedManifest
from tests.service.harness import Api, Party, ServerProcess, make_parties


def signed_manifest(training_id: str, banks: list[Party], auditors: list[Party], *, plan: dict | None = None) -> SignedManifest:
    members = [Member(p.participant_id, MemberRole.BANK, p.key.public_bytes) for p in banks]
    members += [Member(p.participant_id, MemberRole.AUDITOR, p.key.public_bytes) for p in auditors]
    manifest = Manifest(training_id, tuple(members), ProtocolRule(), {"columns": []}, plan or {"rounds": 2})
    signed = SignedManifest(manifest)
    for party in banks + auditors:
        signed = signed.with_signature(party.key)
    return signed


def round_body(banks: list[Party], training: str | None, step: int = 1, **changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"cohort": [p.participant_id for p in banks], "threshold": 3, "mode": "active", "dim": 8, "bits": 32}
    if training is not None:
        body["training"] = {"id": training, "round": step}
    body.update(changes)
    return body


@pytest.fixture(scope="module")
def setting(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Api, list[Party], list[Party], Party, Party]]:
    server = ServerProcess(directory=tmp_path_factory.mktemp("server"), poll_seconds=0.1, dev=False)
    with server:
        api = Api(server)
        banks = make_parties(3, prefix="bank", seed=41)
        others = make_parties(3, prefix="other", seed=42)
        auditor = make_parties(1, prefix="auditor", seed=43, role="auditor")[0]
        stranger = make_parties(1, prefix="stranger", seed=44)[0]
        for party in [*banks, *others, auditor, stranger]:
            api.enroll(party)
        yield api, banks, others, auditor, stranger
        api.close()


def test_a_complete_manifest_registers_once_and_another_under_the_same_id_is_refused(setting) -> None:
    api, banks, _, auditor, _ = setting
    signed = signed_manifest("reg-1", banks, [auditor])
    first = api.admin("POST", "/v1/admin/trainings", signed.to_dict())
    assert first.status_code == 201, first.text
    assert first.json()["manifest_hash"] == signed.hash.hex()
    assert [m["id"] for m in first.json()["members"]] == ["bank-00", "bank-01", "bank-02", "auditor-00"]
    again = api.admin("POST", "/v1/admin/trainings", signed.to_dict())
    assert again.status_code == 200 and again.json()["manifest_hash"] == signed.hash.hex()
    other = signed_manifest("reg-1", banks, [auditor], plan={"rounds": 3})
    clash = api.admin("POST", "/v1/admin/trainings", other.to_dict())
    assert clash.status_code == 409 and clash.json()["type"].endswith("training-exists")


def test_a_manifest_missing_a_signature_or_with_a_forged_one_is_refused_by_name(setting) -> None:
    api, banks, _, auditor, _ = setting
    complete = signed_manifest("reg-2", banks, [auditor])
    missing = SignedManifest(complete.manifest, {k: v for k, v in complete.signatures.items() if k != "bank-01"})
    response = api.admin("POST", "/v1/admin/trainings", missing.to_dict())
    assert response.status_code == 422 and response.json()["type"].endswith("invalid-manifest")
    assert "bank-01" in response.json()["detail"]
    forged = SignedManifest(complete.manifest, {**complete.signatures, "bank-02": bytes(64)})
    response = api.admin("POST", "/v1/admin/trainings", forged.to_dict())
    assert response.status_code == 422 and "bank-02" in response.json()["detail"]
    assert api.admin("GET", "/v1/admin/trainings/reg-2").status_code == 404


def test_members_must_be_enrolled_as_listed(setting) -> None:
    api, banks, _, auditor, stranger = setting
    impostor = Party("bank-01", stranger.key)  # the id of one bank, another key
    response = api.admin(
        "POST", "/v1/admin/trainings", signed_manifest("reg-3", [banks[0], impostor, banks[2]], [auditor]).to_dict()
    )
    assert response.status_code == 422 and "another key" in response.json()["detail"]
    as_bank = Party(auditor.participant_id, auditor.key)
    response = api.admin("POST", "/v1/admin/trainings", signed_manifest("reg-4", [*banks, as_bank], []).to_dict())
    assert response.status_code == 422 and "enrolled as auditor" in response.json()["detail"]
    unknown = make_parties(1, prefix="nobody", seed=45)[0]
    response = api.admin("POST", "/v1/admin/trainings", signed_manifest("reg-5", [*banks, unknown], []).to_dict())
    assert response.status_code == 422 and "not enrolled" in response.json()["detail"]


def test_a_training_round_must_have_the_manifest_s_cohort_and_protocol(setting) -> None:
    api, banks, _, auditor, stranger = setting
    signed = signed_manifest("rounds-1", banks, [auditor])
    assert api.admin("POST", "/v1/admin/trainings", signed.to_dict()).status_code == 201
    refused = {
        "an enrolled stranger": round_body([*banks, stranger], "rounds-1", threshold=3),
        "another order": round_body(banks[::-1], "rounds-1"),
        "a lower threshold": round_body(banks, "rounds-1", mode="honest-but-curious", threshold=2),
        "an unknown training": round_body(banks, "no-such-training"),
    }
    for why, body in refused.items():
        response = api.admin("POST", "/v1/admin/rounds", body)
        assert response.status_code in (404, 422), (why, response.text)
    assert "cohort-not-in-manifest" in api.admin("POST", "/v1/admin/rounds", refused["an enrolled stranger"]).json()["detail"]

    created = api.admin("POST", "/v1/admin/rounds", round_body(banks, "rounds-1", step=4))
    assert created.status_code == 201, created.text
    parameters = api.signed(banks[1], "GET", f"/v1/rounds/{created.json()['round_id']}").json()
    assert parameters["training"] == {"id": "rounds-1", "manifest_hash": signed.hash.hex(), "round": 4}
    config = RoundConfig(
        round_id=bytes.fromhex(parameters["round_id"]),
        identity_keys=tuple(base64.b64decode(m["public_key"]) for m in parameters["cohort"]),
        threshold=3,
        dim=8,
        bits=32,
        manifest_hash=signed.hash,
        training_round=4,
    )
    assert config.digest().hex() == parameters["config_digest"]
    unbound = RoundConfig(config.round_id, config.identity_keys, 3, 8, 32)
    assert unbound.digest().hex() != parameters["config_digest"]


def test_work_and_audit_views_are_scoped_to_one_training(setting) -> None:
    from dp.audit.round_records import verify_server_ledger

    api, banks, others, auditor, _ = setting
    mine = signed_manifest("scope-a", banks, [auditor])
    theirs = signed_manifest("scope-b", [banks[0], *others[:2]], [])
    for signed in (mine, theirs):
        assert api.admin("POST", "/v1/admin/trainings", signed.to_dict()).status_code == 201
    round_a = api.admin("POST", "/v1/admin/rounds", round_body(banks, "scope-a", step=0)).json()["round_id"]
    round_b = api.admin("POST", "/v1/admin/rounds", round_body([banks[0], *others[:2]], "scope-b", step=0)).json()["round_id"]
    unbound = api.admin("POST", "/v1/admin/rounds", round_body(banks, None)).json()["round_id"]

    def work(query: str) -> list[dict[str, Any]]:
        response = api.signed(banks[0], "GET", "/v1/work" + query)
        assert response.status_code == 200, response.text
        return response.json()["items"]

    assert [item["round_id"] for item in work("?training=scope-a")] == [round_a]
    assert [item["round_id"] for item in work("?training=scope-b")] == [round_b]
    everything = {item["round_id"]: item for item in work("")}
    assert {round_a, round_b, unbound} <= set(everything)
    assert everything[round_a]["training_id"] == "scope-a" and everything[round_a]["training_round"] == 0
    assert everything[unbound]["training_id"] is None

    audited = api.signed(auditor, "GET", "/v1/audit/trainings").json()["trainings"]
    assert "scope-a" in [t["training_id"] for t in audited] and "scope-b" not in [t["training_id"] for t in audited]
    assert api.signed(auditor, "GET", "/v1/audit/trainings/scope-b").status_code == 404
    assert api.signed(auditor, "GET", "/v1/audit/rounds?training=scope-b").status_code == 404
    listed = api.signed(auditor, "GET", "/v1/audit/rounds?training=scope-a").json()["rounds"]
    assert [r["round_id"] for r in listed] == [round_a] and listed[0]["parameters"]["training"]["id"] == "scope-a"
    document = api.signed(auditor, "GET", "/v1/audit/trainings/scope-a").json()["document"]
    assert SignedManifest.from_dict(document).hash == mine.hash

    for round_id in (round_a, unbound):
        assert api.admin("POST", f"/v1/admin/rounds/{round_id}/abort", {"detail": "test"}).status_code == 200
    server = api.server
    key = bytes.fromhex((server.data_dir / "server-ledger.key.pub").read_text().strip())
    records: dict[str, Any] = {}
    for _ in range(100):
        verification = verify_server_ledger(server.data_dir / "server-ledger.jsonl", public_key=key)
        records = {entry.record.round_id: entry.record for entry in verification.entries}
        if {round_a, unbound} <= set(records):
            break
        time.sleep(0.1)
    assert verification.ok
    assert records[round_a].training is not None
    assert records[round_a].training.to_dict() == {"id": "scope-a", "manifest_hash": mine.hash.hex(), "round": 0}
    assert records[unbound].training is None
    raw_lines = (server.data_dir / "server-ledger.jsonl").read_text().splitlines()
    assert sum('"training"' in line for line in raw_lines) >= 1 and any('"training"' not in line for line in raw_lines)


@pytest.mark.postgres
def test_trainings_and_their_rounds_on_postgresql_survive_a_restart(server_factory) -> None:
    """The new tables on PostgreSQL: registration, a bound round, the work filter, after a SIGKILL and restart."""
    server = server_factory("postgres")
    api = Api(server)
    banks = make_parties(3, prefix="pg", seed=51)
    for party in banks:
        api.enroll(party)
    signed = signed_manifest("pg-training", banks, [])
    assert api.admin("POST", "/v1/admin/trainings", signed.to_dict()).status_code == 201
    round_id = api.admin("POST", "/v1/admin/rounds", round_body(banks, "pg-training", step=2)).json()["round_id"]
    server.restart_after_kill()
    listed = api.admin("GET", "/v1/admin/trainings/pg-training").json()
    assert listed["manifest_hash"] == signed.hash.hex() and [r["round_id"] for r in listed["rounds"]] == [round_id]
    items = api.signed(banks[2], "GET", "/v1/work?training=pg-training").json()["items"]
    assert [(item["round_id"], item["training_round"]) for item in items] == [(round_id, 2)]
    assert api.signed(banks[0], "GET", "/v1/trainings/pg-training").json()["rounds"][0]["round"] == 2
    api.close()
