"""A small ``secagg demo`` through the real server: 3 bank processes, 2 rounds, one dropout recovered."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

pytest.importorskip("opacus")
pytestmark = [pytest.mark.torch, pytest.mark.slow]

from clients.harness.demo import DemoConfig, run_demo  # noqa: E402
from clients.training.federated import LEDGER_FILE, PROGRESS_FILE, ProgressLog  # noqa: E402
from secagg.config import ProtocolMode  # noqa: E402

REQUIRED_KEYS = (
    "rounds", "auc_federated", "auc_centralized", "auc_centralized_dp", "auc_local_mean",
    "epsilon_per_bank", "delta", "dropouts", "report",
)  # fmt: skip
CONFIG = DemoConfig(banks=3, rounds=2, mode=ProtocolMode.HONEST_BUT_CURIOUS, dropout=True)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from rich.console import Console

    runs = tmp_path_factory.mktemp("runs")
    config = DemoConfig(**{**CONFIG.__dict__, "runs_dir": runs})
    return run_demo(config, console=Console(file=io.StringIO(), width=120))


def test_summary_has_the_documented_figures(demo: dict) -> None:
    written = json.loads((Path(demo["run_dir"]) / "summary.json").read_text(encoding="utf-8"))
    assert all(key in written for key in REQUIRED_KEYS)
    assert written["rounds"] == 2 and written["delta"] == 1e-5
    assert set(written["epsilon_per_bank"]) == {"bank-a", "bank-b", "bank-c"}
    assert all(0 < epsilon <= CONFIG.target_epsilon for epsilon in written["epsilon_per_bank"].values())
    for key in ("auc_federated", "auc_centralized", "auc_centralized_dp", "auc_local_mean"):
        assert 0.0 <= written[key] <= 1.0
    assert [row["round"] for row in written["round_table"]] == [1, 2]


def test_the_dropout_happened_mid_protocol_and_the_round_completed_without_that_bank(demo: dict) -> None:
    from dp.audit.round_records import RoundOutcome, RoundStage, verify_server_ledger

    assert demo["dropouts"] == 1
    (dropout,) = demo["dropout_rounds"]
    assert dropout["round"] == CONFIG.dropout_round + 1 and dropout["banks"] == ["bank-c"] and dropout["survivors"] == 2
    round_id = dropout["round_id"]
    assert demo["server_outcomes"][round_id] == "completed"
    assert demo["server_r2_responded"][round_id] == [0, 1]  # bank-c (index 2) never sent its masked input
    run_dir = Path(demo["run_dir"])
    server = verify_server_ledger(run_dir / "server" / "data" / "server-ledger.jsonl")
    record = next(entry.record for entry in server.entries if entry.record.round_id == round_id)
    assert record.outcome is RoundOutcome.COMPLETED
    assert "bank-c" in record.survivors[RoundStage.SHARE_KEYS]  # it shared its keys (R1) ...
    assert "bank-c" not in record.survivors[RoundStage.MASKED_INPUT_COLLECTION]  # ... then dropped before R2
    events = ProgressLog.read(run_dir / "banks" / "bank-c" / PROGRESS_FILE)
    assert any(event["event"] == "dropped-out" and event["round_id"] == round_id for event in events)


def test_every_bank_ends_with_the_same_global_model_and_keeps_training_after_the_dropout(demo: dict) -> None:
    run_dir = Path(demo["run_dir"])
    digests = {}
    for bank in ("bank-a", "bank-b", "bank-c"):
        rounds = [event for event in ProgressLog.read(run_dir / "banks" / bank / PROGRESS_FILE) if event["event"] == "round"]
        assert [event["round"] for event in rounds] == [1, 2]
        digests[bank] = rounds[-1]["model_sha256"]
    assert len(set(digests.values())) == 1


def test_audit_report_verifies_every_ledger_against_the_server_records(demo: dict) -> None:
    from dp.audit.privacy_ledger import verify_ledger

    assert demo["audit_ok"], demo["audit_verdict"]
    html = Path(demo["report"]).read_text(encoding="utf-8")
    assert html.lstrip().lower().startswith("<!doctype html") and "data:image/png;base64," in html
    for bank in ("bank-a", "bank-b", "bank-c"):
        verification = verify_ledger(Path(demo["run_dir"]) / "banks" / bank / LEDGER_FILE)
        assert verification.ok and len(verification.entries) == 2  # the dropped bank spent its round too


def test_a_dropout_that_would_fall_below_the_threshold_is_refused_before_anything_starts(tmp_path: Path) -> None:
    from clients.harness.demo import DemoError

    with pytest.raises(DemoError, match="threshold is 3"):
        DemoConfig(banks=3, rounds=2, mode=ProtocolMode.ACTIVE, dropout=True, runs_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_standardisation_from_the_secure_sum_matches_the_banks_pooled_statistics(demo: dict) -> None:
    """The means and scales every bank derived from the secure-aggregation round equal what pooling the
    banks' rows would have given (up to the ring's fixed-point precision) — without pooling them."""
    from clients.training.datasets import lending_club_schema
    from clients.training.tabular import MomentSums, TabularSchema, moment_sums, read_csv, statistics_from_sums

    run_dir = Path(demo["run_dir"])
    agreed = lending_club_schema()
    total = sum(
        moment_sums(read_csv(run_dir / "banks" / bank / "loans.csv"), agreed).to_vector()
        for bank in ("bank-a", "bank-b", "bank-c")
    )
    names = [column.name for column in agreed.numeric_columns]
    expected = statistics_from_sums(agreed, MomentSums.from_vector(names, total))
    for bank in ("bank-a", "bank-b", "bank-c"):
        derived = TabularSchema.load(run_dir / "banks" / bank / "schema-standardized.json")
        for column in derived.numeric_columns:
            assert column.standardization.mean == pytest.approx(expected[column.name].mean, rel=1e-9, abs=1e-9)
            assert column.standardization.scale == pytest.approx(expected[column.name].scale, rel=1e-6)
