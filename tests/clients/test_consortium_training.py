"""Consortium trainings over the real server: the bank's checks against its manifest, budgets, resuming, scoping.

Banks run what ``secagg train`` runs and coordinators what ``secagg consortium run`` runs,
in threads of this process (tests/clients/consortium_support.py), against one server
subprocess. Each scenario has its own training (several at once on the server is the
point of one of them) and its own bank directories, so its own budgets.

The cases a hostile server could produce (a cohort with a key it invented) are made by
editing the server's database behind its back: the server itself refuses to create such
a round, which is checked in tests/service/test_trainings.py.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

pytest.importorskip("opacus")
pytestmark = [pytest.mark.torch, pytest.mark.slow]

from clients.consortium.admin import AdminClient  # noqa: E402
from clients.consortium.coordinator import CoordinatorError  # noqa: E402
from clients.harness.local_server import LocalServer  # noqa: E402
from clients.runtime.transport import RoundTransport  # noqa: E402
from clients.training.federated import BudgetRefused, ProgressLog, TrainingIncomplete  # noqa: E402
from clients.training.plan import FederatedPlan  # noqa: E402
from clients.training.rules import TrainingRules  # noqa: E402
from dp.audit.privacy_ledger import EntryKind, verify_ledger  # noqa: E402
from secagg.rounds import Round  # noqa: E402
from tests.clients.consortium_support import (  # noqa: E402
    SMALL_PLAN,
    BankRun,
    CoordinatorRun,
    bank_job,
    bank_tables,
    build_manifest,
    key_of,
    lending_club,
    shuffled,
    standardized_schema,
)

BANKS = ["bank-a", "bank-b", "bank-c"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    with LocalServer(directory=tmp_path_factory.mktemp("server"), poll_seconds=0.1) as handle:
        yield handle


def admin_of(server: LocalServer) -> AdminClient:
    return AdminClient(server.base_url, server.admin_token, unavailable_timeout=10.0)


def write_manifest(path: Path, signed) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(signed.to_bytes())
    return path


def events(job) -> list[dict[str, Any]]:
    return ProgressLog.read(job.work_dir / "progress.jsonl")


def ledger_of(job) -> Path:
    (path,) = (job.policy.parent / "budget" / "budgets").glob("*/privacy-ledger.jsonl")
    return path


def register(server: LocalServer, signed) -> None:
    from clients.consortium.coordinator import enrol_members

    with admin_of(server) as admin:
        enrol_members(admin, signed)
        admin.register_training(signed.to_dict())


# --------------------------------------------------------------------------- two trainings at once


@pytest.fixture(scope="module")
def two_trainings(server: LocalServer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The same three banks in two trainings at once, each on other rows of their own data."""
    root = tmp_path_factory.mktemp("two")
    full = bank_tables(0.24)
    halves = {
        name: (table.take(np.arange(0, table.rows, 2)), table.take(np.arange(1, table.rows, 2))) for name, table in full.items()
    }
    runs: dict[str, Any] = {}
    from clients.training.datasets import lending_club_schema

    for training, half, schema in (("t-one", 0, standardized_schema()), ("t-two", 1, lending_club_schema())):
        signed = build_manifest(training, BANKS, schema=schema)
        manifest = write_manifest(root / training / "manifest.json", signed)
        jobs = {name: bank_job(root / training, server, name, halves[name][half], manifest, budget=1.5) for name in BANKS}
        runs[training] = {"signed": signed, "manifest": manifest, "jobs": jobs}
    coordinators = [CoordinatorRun(runs[t]["signed"], server).start() for t in runs]
    banks = {(t, name): BankRun(name, job).start() for t in runs for name, job in runs[t]["jobs"].items()}
    for run in banks.values():
        run.join()
    for coordinator in coordinators:
        coordinator.join()
    for (training, name), run in banks.items():
        assert run.error is None, (training, name, repr(run.error))
        runs[training].setdefault("results", {})[name] = run.result
    for coordinator in coordinators:
        assert coordinator.error is None, repr(coordinator.error)
        runs[coordinator.signed.manifest.training_id]["coordinator"] = coordinator.result
    return {"root": root, "runs": runs}


def test_two_trainings_at_once_on_one_server_each_bank_joins_only_its_own(
    two_trainings: dict[str, Any], server: LocalServer
) -> None:
    runs = two_trainings["runs"]
    with admin_of(server) as admin:
        round_ids = {training: {item["round_id"] for item in admin.training(training)["rounds"]} for training in runs}
    assert not round_ids["t-one"] & round_ids["t-two"]
    models = {}
    for training, run in runs.items():
        assert run["coordinator"]["rounds_completed"] == SMALL_PLAN.rounds
        hashes = {result["model_sha256"] for result in run["results"].values()}
        assert len(hashes) == 1, (training, hashes)  # every bank of a training holds the same model
        models[training] = hashes.pop()
        for name, job in run["jobs"].items():
            logged = events(job)
            assert not [event for event in logged if event["event"] == "refused"], (training, name)
            joined = {event["round_id"] for event in logged if event["event"] in ("round", "statistics")}
            assert joined and joined <= round_ids[training]
    assert models["t-one"] != models["t-two"]
    assert any(event["event"] == "statistics" for event in events(runs["t-two"]["jobs"]["bank-a"]))


def _server_ledger(server: LocalServer, rounds: int) -> Path:
    path = server.data_dir / "server-ledger.jsonl"
    for _ in range(200):
        if path.exists() and len(path.read_text().splitlines()) >= rounds:
            return path
        time.sleep(0.1)
    raise AssertionError("the server ledger did not record every round")


def test_an_audit_scoped_to_one_of_two_trainings_verifies_and_an_unscoped_one_flags_the_other(
    two_trainings: dict[str, Any], server: LocalServer
) -> None:
    from dp.audit.chain import load_public_key
    from dp.audit.report import run_audit
    from dp.audit.round_records import verify_server_ledger
    from secagg_cli import app

    runs = two_trainings["runs"]
    one = runs["t-one"]
    ledgers = [ledger_of(job) for job in one["jobs"].values()]
    server_key = load_public_key(server.data_dir / "server-ledger.key.pub")
    server_ledger = _server_ledger(server, 5)
    assert {e.record.training.training_id for e in verify_server_ledger(server_ledger).entries if e.record.training} >= {
        "t-one",
        "t-two",
    }
    keys = {name: key_of(name).public_bytes for name in BANKS}
    scoped = run_audit(ledgers, keys_by_party=keys, server_ledger=server_ledger, server_public_key=server_key, training="t-one")
    assert scoped.ok and scoped.parties_without_ledger == ()
    unscoped = run_audit(ledgers, keys_by_party=keys, server_ledger=server_ledger, server_public_key=server_key)
    assert not unscoped.ok
    assert {finding.finding.kind.value for finding in unscoped.cross_findings} == {"spend-missing-for-round"}
    arguments = ["audit", "verify", *map(str, ledgers), "--server-ledger", str(server_ledger),
                 "--server-public-key", str(server.data_dir / "server-ledger.key.pub")]  # fmt: skip
    assert CliRunner().invoke(app, [*arguments, "--manifest", str(one["manifest"])]).exit_code == 0
    assert CliRunner().invoke(app, arguments).exit_code == 1


def test_a_second_training_on_the_same_customers_from_another_directory_counts_against_the_same_budget(
    two_trainings: dict[str, Any], server: LocalServer, tmp_path: Path
) -> None:
    first = two_trainings["runs"]["t-one"]["jobs"]["bank-a"]
    spent = first_spent = verify_ledger(ledger_of(first)).entries[-1].epsilon_cumulative
    assert 0.9 < first_spent <= 1.0 + 1e-9
    signed = build_manifest("t-again", BANKS, schema=standardized_schema())
    manifest = write_manifest(tmp_path / "manifest.json", signed)
    copy = tmp_path / "elsewhere" / "same-customers.csv"
    copy.parent.mkdir()
    from clients.training.tabular import read_csv

    copy.write_bytes(shuffled(read_csv(first.data)).to_csv_bytes())
    from tests.clients.consortium_support import write_policy

    stricter = write_policy(tmp_path / "policy", budget=1.2, state_dir=first.policy.parent / "budget")
    job = bank_job(tmp_path, server, "bank-a", read_csv(copy), manifest, budget=1.2)
    job = type(job)(**{**job.__dict__, "data": copy, "policy": stricter, "work_dir": tmp_path / "new-work", "round_timeout": 2.0})
    run = BankRun("bank-a", job).start().join()
    assert isinstance(run.error, BudgetRefused), repr(run.error)
    assert f"spent so far on these customers: {spent:.4g}" in str(run.error)
    assert verify_ledger(ledger_of(first)).entries[-1].epsilon_cumulative == first_spent  # nothing recorded
    from clients.training.datasets import split_regions

    held_out = split_regions(lending_club(), banks=3).test  # rows no bank trained on: other customers
    other = bank_job(tmp_path, server, "bank-a", held_out.take(np.arange(0, 400)), manifest, budget=1.2)
    other = type(other)(**{**other.__dict__, "policy": stricter, "round_timeout": 1.0})
    run = BankRun("bank-a", other).start().join()
    assert isinstance(run.error, TrainingIncomplete)  # other customers: another budget, so it went on to wait for rounds


# --------------------------------------------------------------------------- what a bank refuses


def _single_round_training(server: LocalServer, root: Path, training: str, *, rounds: int = 1) -> tuple[Any, Path]:
    plan = FederatedPlan(rounds=rounds, sample_rate=SMALL_PLAN.sample_rate, target_epsilon=SMALL_PLAN.target_epsilon)
    signed = build_manifest(training, BANKS, schema=standardized_schema(), plan=plan)
    register(server, signed)
    return signed, write_manifest(root / "manifest.json", signed)


def _tamper_add_member(server: LocalServer, round_id: str, member: str, key: bytes) -> None:
    """What a compromised server would do: add an identity of its own to a round's cohort."""
    database = sqlite3.connect(server.data_dir / "secagg.db")
    try:
        (text,) = database.execute("SELECT parameters FROM rounds WHERE id = ?", (round_id,)).fetchone()
        parameters = json.loads(text)
        parameters["cohort"].append({"id": member, "public_key": key.hex()})
        size = len(parameters["cohort"])
        database.execute("UPDATE rounds SET parameters = ?, expected = ? WHERE id = ?",
                         (json.dumps(parameters, sort_keys=True, separators=(",", ":")), json.dumps(list(range(size))), round_id))  # fmt: skip
        database.execute("INSERT INTO round_members (round_id, \"index\", participant_id, public_key) VALUES (?, ?, ?, ?)",
                         (round_id, size - 1, member, key))  # fmt: skip
        database.commit()
    finally:
        database.close()


def test_a_cohort_holding_a_key_outside_the_manifest_is_refused_and_nothing_is_sent(server: LocalServer, tmp_path: Path) -> None:
    """The Sybil case: the server enrolled an extra key and put it in the bank's round."""
    signed, manifest = _single_round_training(server, tmp_path, "t-sybil")
    stranger = key_of("bank-x")
    with admin_of(server) as admin:
        admin.enroll("bank-x", stranger.public_bytes)
        round_id = admin.create_round(TrainingRules(signed.manifest).round_request(1))["round_id"]
    _tamper_add_member(server, round_id, "bank-x", stranger.public_bytes)
    job = bank_job(tmp_path, server, "bank-a", bank_tables()["bank-a"], manifest, budget=10.0, round_timeout=4.0)
    run = BankRun("bank-a", job).start().join()
    assert isinstance(run.error, TrainingIncomplete)  # skipped the round, kept waiting for a proper one: not killed by it
    refused = [event for event in events(job) if event["event"] == "refused"]
    assert [(event["round_id"], event["reason"]) for event in refused] == [(round_id, "cohort-not-in-manifest")]
    assert stranger.public_bytes.hex()[:16] in refused[0]["detail"]
    with admin_of(server) as admin:
        status = admin.round_status(round_id)
    assert status["stage"] == "R0-advertise-keys" and status["responded"] == []
    assert verify_ledger(ledger_of(job)).entries == ()
    assert json.loads((job.work_dir / "training-state.json").read_text())["refused"] == [round_id]


@pytest.mark.parametrize("edit", ["plan-rounds", "category-order"])
def test_a_bank_whose_manifest_differs_from_the_server_s_refuses_every_round(
    server: LocalServer, tmp_path: Path, edit: str
) -> None:
    """An edited plan, or a schema of the same width with another category order: another manifest hash."""
    signed, _ = _single_round_training(server, tmp_path, f"t-{edit}")
    schema = standardized_schema().to_dict()
    plan = signed.manifest.plan
    if edit == "plan-rounds":
        plan = {**plan, "rounds": 2}
    else:
        column = next(c for c in schema["columns"] if c["kind"] == "categorical" and len(c["categories"]) > 2)
        column["categories"] = column["categories"][::-1]
    mine = build_manifest(f"t-{edit}", BANKS, schema=schema, plan=plan)
    assert TrainingRules(mine.manifest).parameter_count == TrainingRules(signed.manifest).parameter_count  # same width
    with admin_of(server) as admin:
        round_id = admin.create_round(TrainingRules(signed.manifest).round_request(1))["round_id"]
    manifest = write_manifest(tmp_path / "mine.json", mine)
    job = bank_job(tmp_path, server, "bank-a", bank_tables()["bank-a"], manifest, budget=10.0, round_timeout=4.0)
    run = BankRun("bank-a", job).start().join()
    assert isinstance(run.error, TrainingIncomplete)
    refused = [event for event in events(job) if event["event"] == "refused"]
    assert [(event["round_id"], event["reason"]) for event in refused] == [(round_id, "manifest-hash-mismatch")]
    assert verify_ledger(ledger_of(job)).entries == ()


def test_a_stray_round_is_refused_once_and_skipped_and_the_training_completes(server: LocalServer, tmp_path: Path) -> None:
    """One wrong round (a dimension the plan does not give) neither kills the banks nor is taken again."""
    signed, manifest = _single_round_training(server, tmp_path, "t-stray")
    body = TrainingRules(signed.manifest).round_request(1, deadlines={"R0": 3.0})
    body["dim"] += 1
    with admin_of(server) as admin:
        stray = admin.create_round(body)["round_id"]
    coordinator = CoordinatorRun(signed, server).start()
    tables = bank_tables()
    jobs = {name: bank_job(tmp_path, server, name, tables[name], manifest, budget=10.0) for name in BANKS}
    runs = [BankRun(name, job).start() for name, job in jobs.items()]
    for run in runs:
        assert run.join().error is None, repr(run.error)
    assert coordinator.join().error is None
    assert coordinator.result["aborted_rounds"] == 1 and coordinator.result["rounds_completed"] == 1
    (aborted,) = coordinator.result["steps"][0]["aborts"]
    assert aborted["round_id"] == stray and aborted["reason"].startswith("too-few-participants")
    for job in jobs.values():
        refused = [event for event in events(job) if event["event"] == "refused"]
        assert [(event["round_id"], event["reason"]) for event in refused] == [(stray, "dimension-differs-from-plan")]
        ledger = verify_ledger(ledger_of(job))
        assert ledger.ok and stray not in {entry.round_id for entry in ledger.entries}
        assert [entry.kind for entry in ledger.entries] == [EntryKind.SPEND]


def test_a_round_that_aborts_before_the_masked_input_charges_nothing(server: LocalServer, tmp_path: Path) -> None:
    """Two of three banks show up; R0 closes below the threshold; their trained updates never leave."""
    from dp.audit.round_records import verify_server_ledger

    signed, manifest = _single_round_training(server, tmp_path, "t-abort")
    coordinator = CoordinatorRun(signed, server, deadlines={"R0": 8.0}, max_attempts=1).start()
    tables = bank_tables()
    jobs = {name: bank_job(tmp_path, server, name, tables[name], manifest, budget=10.0, round_timeout=12.0) for name in BANKS[:2]}
    runs = [BankRun(name, job).start() for name, job in jobs.items()]
    assert isinstance(coordinator.join().error, CoordinatorError)
    for run in runs:
        assert isinstance(run.join().error, TrainingIncomplete)
    round_ids = set()
    for job in jobs.values():
        ledger = verify_ledger(ledger_of(job))
        assert ledger.ok
        assert [(entry.kind, entry.reason.value if entry.reason else None) for entry in ledger.entries] == [
            (EntryKind.UNRELEASED, "round-aborted")
        ]
        assert ledger.entries[0].epsilon_cumulative == 0.0 and ledger.entries[0].epsilon_increment == 0.0
        round_ids.add(ledger.entries[0].round_id)
    (round_id,) = round_ids
    server_ledger = _server_ledger(server, 1)
    for _ in range(100):
        records = {e.record.round_id: e.record for e in verify_server_ledger(server_ledger).entries}
        if round_id in records:
            break
        time.sleep(0.1)
    record = records[round_id]
    assert record.outcome.value == "aborted" and record.contributors == ()


class _CrashAfterMaskedInput(BaseException):
    """The process dies (as with SIGKILL) right after its masked input was accepted."""


class _Crashing:
    def __init__(self, inner: RoundTransport, step_round: int) -> None:
        self.inner = inner
        self.endpoint = inner.endpoint
        self.target = step_round

    def describe_round(self, round_id: str):
        description = self.inner.describe_round(round_id)
        self.current = description.training.step if description.training else None
        return description

    def submit(self, round_id: str, protocol_round: Round, payload: bytes):
        outcome = self.inner.submit(round_id, protocol_round, payload)
        if protocol_round is Round.MASKED_INPUT_COLLECTION and self.current == self.target:
            raise _CrashAfterMaskedInput()
        return outcome

    def fetch(self, round_id: str, protocol_round: Round):
        return self.inner.fetch(round_id, protocol_round)

    def fetch_result(self, round_id: str):
        return self.inner.fetch_result(round_id)


def test_a_bank_that_crashes_after_its_masked_input_resumes_and_ends_with_the_others_model(
    server: LocalServer, tmp_path: Path
) -> None:
    signed, manifest = _single_round_training(server, tmp_path, "t-resume", rounds=2)
    coordinator = CoordinatorRun(signed, server).start()
    tables = bank_tables()
    jobs = {name: bank_job(tmp_path, server, name, tables[name], manifest, budget=10.0) for name in BANKS}
    steady = [BankRun(name, jobs[name]).start() for name in ("bank-a", "bank-c")]
    crashing = BankRun("bank-b", jobs["bank-b"]).start(wrap_transport=lambda inner: _Crashing(inner, 1)).join()
    assert isinstance(crashing.error, _CrashAfterMaskedInput)
    state = json.loads((jobs["bank-b"].work_dir / "training-state.json").read_text())
    assert state["current"]["step"] == 1 and state["completed"] == []
    resumed = BankRun("bank-b", jobs["bank-b"]).start().join()
    assert resumed.error is None, repr(resumed.error)
    for run in steady:
        assert run.join().error is None
    assert coordinator.join().error is None and coordinator.result["aborted_rounds"] == 0
    assert {run.result["model_sha256"] for run in [*steady, resumed]} == {resumed.result["model_sha256"]}
    logged = events(jobs["bank-b"])
    assert [event["resumed_after"] for event in logged if event["event"] == "started"] == [[], []]
    rounds = [event for event in logged if event["event"] == "round"]
    assert [(event["round"], event["contributed"]) for event in rounds] == [(1, True), (2, True)]
    spends = [entry.round_id for entry in verify_ledger(ledger_of(jobs["bank-b"])).entries if entry.kind is EntryKind.SPEND]
    assert len(spends) == len(set(spends)) == 2  # the interrupted round charged once


def test_a_bank_budget_stricter_than_the_plan_refuses_before_anything_is_trained_or_sent(tmp_path: Path) -> None:
    from secagg_cli import app
    from tests.clients.consortium_support import write_key_file

    signed = build_manifest("t-strict", BANKS, schema=standardized_schema())
    manifest = write_manifest(tmp_path / "manifest.json", signed)
    job = bank_job(tmp_path, "http://127.0.0.1:9", "bank-a", bank_tables()["bank-a"], manifest, budget=0.5)
    key = write_key_file(tmp_path / "bank-a" / "identity.key", key_of("bank-a"), b"a long passphrase")
    (tmp_path / "bank-a" / "pass").write_text("a long passphrase\n")
    result = CliRunner().invoke(app, [
        "train", "--data", str(job.data), "--work-dir", str(job.work_dir), "--manifest", str(manifest),
        "--server", job.server, "--key", str(key), "--passphrase-file", str(tmp_path / "bank-a" / "pass"), "--policy", str(job.policy),
    ])  # fmt: skip
    assert result.exit_code == 3, result.output
    assert "over its budget 0.5" in result.output and "nothing was trained or sent" in result.output
    assert not (job.work_dir / "accountant.json").exists() and not (job.work_dir / "updates").exists()
    assert verify_ledger(ledger_of(job)).entries == ()


def test_the_auditor_fetches_the_server_ledger_with_signed_requests(
    two_trainings: dict[str, Any], server: LocalServer, tmp_path: Path
) -> None:
    """No hand-written request signing: ``secagg audit fetch`` with the auditor's (passphrase-protected) key."""
    from secagg.consortium import SignedManifest
    from secagg_cli import app
    from tests.clients.consortium_support import write_key_file

    key = write_key_file(tmp_path / "auditor.key", key_of("auditor"), b"a long passphrase")
    (tmp_path / "pass").write_text("a long passphrase\n")
    base = ["audit", "fetch", "--server", server.base_url, "--key", str(key), "--passphrase-file", str(tmp_path / "pass")]
    fetched = CliRunner().invoke(app, [*base, "--participant-id", "auditor", "--training", "t-one", "--out", str(tmp_path / "f")])
    assert fetched.exit_code == 0, fetched.output
    ledger = (tmp_path / "f" / "server-ledger.jsonl").read_bytes()
    assert ledger and (server.data_dir / "server-ledger.jsonl").read_bytes().startswith(ledger)
    assert (tmp_path / "f" / "server-ledger.jsonl.head").exists()
    registered = SignedManifest.from_bytes((tmp_path / "f" / "t-one.manifest.json").read_bytes())
    assert registered.hash == two_trainings["runs"]["t-one"]["signed"].hash
    unknown = CliRunner().invoke(
        app, [*base, "--participant-id", "auditor", "--training", "nobody", "--out", str(tmp_path / "g")]
    )
    assert unknown.exit_code == 7 and "training-not-found" in unknown.output
    as_bank = CliRunner().invoke(app, [*base, "--participant-id", "bank-a", "--out", str(tmp_path / "h")])
    assert as_bank.exit_code == 7 and not (tmp_path / "h").exists()
