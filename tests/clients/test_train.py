"""``secagg train`` on a bank's own small CSV with categorical columns and missing values."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from clients.training.plan import FederatedPlan
from clients.training.tabular import TabularSchema
from secagg_cli import app

pytest.importorskip("opacus")
pytestmark = pytest.mark.torch

ROWS = [
    ("52000", "north", "34", "A", "no"),
    ("", "south", "45", "B", "yes"),
    ("61000", "NA", "29", "A", "no"),
    ("43000", "east", "", "C", "yes"),
    ("75000", "north", "51", "B", "no"),
    ("38000", "south", "23", "C", "yes"),
    ("58000", "east", "40", "", "no"),
    ("49000", "north", "37", "B", "no"),
]


@pytest.fixture
def bank_csv(tmp_path: Path) -> Path:
    path = tmp_path / "loans.csv"
    lines = ["income,region,age,grade,default"] + [",".join(row) for _ in range(15) for row in ROWS]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def short_plan(tmp_path: Path) -> Path:
    path = tmp_path / "plan.json"
    FederatedPlan(rounds=2, sample_rate=0.2).save(path)
    return path


def last_json_line(output: str) -> dict:
    return json.loads(output.strip().splitlines()[-1])


def test_local_training_handles_categories_and_missing_values_and_keeps_a_verified_ledger(
    tmp_path: Path, bank_csv: Path, short_plan: Path
) -> None:
    from dp.audit.privacy_ledger import verify_ledger

    work = tmp_path / "work"
    result = CliRunner().invoke(
        app,
        ["train", "--data", str(bank_csv), "--target", "default", "--positive", "yes", "--work-dir", str(work),
         "--plan", str(short_plan), "--local", "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = last_json_line(result.output)
    names = report["feature_names"]
    assert "income=__missing__" in names and "age=__missing__" in names  # numeric columns with gaps get indicators
    assert {"region=north", "region=__other__", "region=__missing__", "grade=__missing__"} <= set(names)
    assert report["rows_train"] + report["rows_validation"] == 120
    assert 0 < report["epsilon"] <= 3.0
    model = np.load(work / "model.npy", allow_pickle=False)
    assert model.shape == (len(names) + 1,) and np.all(np.isfinite(model))
    verification = verify_ledger(work / "privacy-ledger.jsonl")
    assert verification.ok and len(verification.entries) == 2
    standardized = TabularSchema.load(work / "schema-standardized.json")
    assert standardized.is_standardized


def test_a_second_run_past_the_planned_budget_is_refused(tmp_path: Path, bank_csv: Path, short_plan: Path) -> None:
    arguments = ["train", "--data", str(bank_csv), "--target", "default", "--positive", "yes",
                 "--work-dir", str(tmp_path / "work"), "--plan", str(short_plan), "--local"]  # fmt: skip
    assert CliRunner().invoke(app, arguments).exit_code == 0
    again = CliRunner().invoke(app, arguments)
    assert again.exit_code == 3  # refused by the budget, as documented
    assert "epsilon" in again.output and "refused" in again.output


def test_a_text_target_without_positive_is_refused_with_the_values(tmp_path: Path, bank_csv: Path) -> None:
    result = CliRunner().invoke(
        app, ["train", "--data", str(bank_csv), "--target", "default", "--work-dir", str(tmp_path), "--local"]
    )
    assert result.exit_code == 2
    assert "--positive" in result.output and "no, yes" in result.output


def test_draft_schema_is_written_for_review_and_nothing_is_trained(tmp_path: Path, bank_csv: Path) -> None:
    draft = tmp_path / "draft.json"
    result = CliRunner().invoke(
        app,
        [
            "train",
            "--data",
            str(bank_csv),
            "--target",
            "default",
            "--positive",
            "yes",
            "--work-dir",
            str(tmp_path / "w"),
            "--draft-schema",
            str(draft),
        ],
    )
    assert result.exit_code == 0, result.output
    schema = TabularSchema.load(draft)
    assert [column.name for column in schema.columns] == ["income", "region", "age", "grade"]
    assert not (tmp_path / "w").exists()


def test_federated_mode_needs_the_agreed_schema_server_and_key(tmp_path: Path, bank_csv: Path) -> None:
    result = CliRunner().invoke(
        app, ["train", "--data", str(bank_csv), "--target", "default", "--positive", "yes", "--work-dir", str(tmp_path)]
    )
    assert result.exit_code != 0
    assert "--manifest" in result.output and "--server" in result.output and "--policy" in result.output


def test_plan_round_trips_through_its_file_and_refuses_unknown_keys(tmp_path: Path) -> None:
    from clients.training.plan import FederatedError

    plan = FederatedPlan(rounds=3, participant_epsilon=8.0)
    path = tmp_path / "plan.json"
    plan.save(path)
    assert FederatedPlan.load(path) == plan
    value = json.loads(path.read_text(encoding="utf-8"))
    value["epsilon"] = 100.0
    path.write_text(json.dumps(value), encoding="utf-8")
    with pytest.raises(FederatedError, match="unknown plan keys"):
        FederatedPlan.load(path)


def test_a_round_declares_the_example_event_and_with_participant_dp_also_skellam_over_a_padded_ring() -> None:
    from dp.accounting import compute_epsilon
    from dp.audit.privacy_ledger import PrivacyUnit
    from dp.audit.round_records import RoundPrivacy

    cohort = {"min_survivors": 4, "max_clients": 5}
    plain = FederatedPlan()
    (example,) = [RoundPrivacy.from_dict(item) for item in plain.round_privacy(75, **cohort)]
    assert example.unit is PrivacyUnit.EXAMPLE and example.event == plain.round_event()
    # ten rounds of the declared event spend the planned epsilon (calibration tolerance 0.01, dp.accounting.calibration)
    assert compute_epsilon([plain.round_event()] * plain.rounds, delta=plain.delta) == pytest.approx(3.0, abs=0.01)
    assert plain.round_dim(75, **cohort) == 75

    private = FederatedPlan(participant_epsilon=10.0, update_clip=2.0)
    items = [RoundPrivacy.from_dict(item) for item in private.round_privacy(75, **cohort)]
    assert [item.unit for item in items] == [PrivacyUnit.EXAMPLE, PrivacyUnit.PARTICIPANT]
    assert private.round_dim(75, **cohort) == 128  # randomized Hadamard pads to the next power of two
    spent = compute_epsilon([items[1].event] * private.rounds, delta=private.participant_delta)
    assert spent <= 10.0 and spent == pytest.approx(10.0, rel=0.05)


def test_federated_mode_gives_up_on_an_unreachable_server_with_a_clear_error(
    tmp_path: Path, bank_csv: Path, short_plan: Path
) -> None:
    from clients.harness.local_server import free_loopback_port
    from clients.runtime.keyfile import generate_key_file, load_identity_key
    from clients.training.tabular import draft_schema, read_csv
    from secagg.consortium import Manifest, Member, MemberRole, ProtocolRule, SignedManifest
    from secagg.hazmat.keys import SigningKey
    from secagg.hazmat.randomness import DeterministicRandom

    generate_key_file(tmp_path / "bank.key", passphrase=b"correct horse battery")
    (tmp_path / "pass").write_text("correct horse battery\n")
    mine = load_identity_key(tmp_path / "bank.key", passphrase=b"correct horse battery")
    others = [SigningKey.generate(DeterministicRandom.from_int(index)) for index in (1, 2)]
    members = [Member("bank-a", MemberRole.BANK, mine.public_bytes)]
    members += [Member(f"bank-{name}", MemberRole.BANK, key.public_bytes) for name, key in zip("bc", others, strict=True)]
    schema = draft_schema(read_csv(bank_csv), target="default", positive="yes").to_dict()
    manifest = Manifest("t-unreachable", tuple(members), ProtocolRule(), schema, FederatedPlan.load(short_plan).to_dict())
    signed = SignedManifest(manifest).with_signature(mine).with_signature(others[0]).with_signature(others[1])
    (tmp_path / "manifest.json").write_bytes(signed.to_bytes())
    policy = tmp_path / "policy.toml"
    policy.write_text(
        '[dp]\nallow_exact_statistics = true\n[budget]\nstate_dir = "budget"\n[budget.example]\nmax_epsilon = 3.0\ndelta = 1e-5\n'
    )
    result = CliRunner().invoke(
        app,
        ["train", "--data", str(bank_csv), "--work-dir", str(tmp_path / "w"), "--manifest", str(tmp_path / "manifest.json"),
         "--server", f"http://127.0.0.1:{free_loopback_port()}", "--key", str(tmp_path / "bank.key"),
         "--passphrase-file", str(tmp_path / "pass"), "--policy", str(policy), "--server-timeout", "1"],
    )  # fmt: skip
    assert result.exit_code == 8, result.output  # the server stayed unreachable, as documented
    assert "cannot reach" in result.output
    from dp.audit.privacy_ledger import verify_ledger

    (ledger,) = (tmp_path / "budget" / "budgets").glob("*/privacy-ledger.jsonl")
    assert verify_ledger(ledger).entries == ()  # nothing was spent


def test_a_passphrase_protected_key_trains_locally_and_the_model_file_scores_and_evaluates(
    tmp_path: Path, bank_csv: Path, short_plan: Path
) -> None:
    from clients.runtime.keyfile import generate_key_file

    generate_key_file(tmp_path / "bank.key", passphrase=b"correct horse battery")
    (tmp_path / "pass").write_text("correct horse battery\n")
    work = tmp_path / "work"
    base = ["train", "--data", str(bank_csv), "--target", "default", "--positive", "yes", "--work-dir", str(work),
            "--plan", str(short_plan), "--local", "--key", str(tmp_path / "bank.key")]  # fmt: skip
    refused = CliRunner().invoke(app, base)
    assert refused.exit_code == 9 and "--passphrase-file" in refused.output  # the option it names exists
    result = CliRunner().invoke(app, [*base, "--passphrase-file", str(tmp_path / "pass"), "--json"])
    assert result.exit_code == 0, result.output
    model = json.loads((work / "model.json").read_text())
    assert model["format"] == "secagg-model/1" and model["schema"]["target"] == "default"
    assert model["threshold_source"].startswith("a stratified 0.2 hold-out")
    evaluated = CliRunner().invoke(app, ["evaluate", "--model", str(work / "model.json"), "--data", str(bank_csv), "--json"])
    assert evaluated.exit_code == 0, evaluated.output
    figures = last_json_line(evaluated.output)
    assert 0.0 <= figures["auc"] <= 1.0 and figures["threshold"] == model["threshold"] and figures["rows"] == 120
    scores = tmp_path / "scores.csv"
    scored = CliRunner().invoke(
        app, ["predict", "--model", str(work / "model.json"), "--data", str(bank_csv), "--out", str(scores)]
    )
    assert scored.exit_code == 0, scored.output
    lines = scores.read_text().splitlines()
    assert lines[0] == "row,probability,predicted" and len(lines) == 121
    assert {line.split(",")[2] for line in lines[1:]} <= {"0", "1"}
    tampered = dict(model, parameters=[value + 1.0 for value in model["parameters"]])
    (tmp_path / "tampered.json").write_text(json.dumps(tampered))
    refused_model = CliRunner().invoke(app, ["evaluate", "--model", str(tmp_path / "tampered.json"), "--data", str(bank_csv)])
    assert refused_model.exit_code == 2 and "parameters_sha256" in refused_model.output
