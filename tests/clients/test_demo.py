"""``secagg demo`` end to end, with the shipped commands only: 5 bank processes, 4 rounds, one bank killed and resumed.

The assertions are outcomes that could fail: the federated model beats the mean of the
banks trained alone with the same DP budget, every bank (the killed one included) ends
with the identical model, every bank's epsilon is within its budget, the audit verifies,
and the killed bank's interrupted round is charged exactly once and completes with it.

Five banks, not three: the DP noise is fresh in every run, and with three regions the
federated model's edge over the banks' mean is no larger than the spread between runs,
so the comparison failed about one run in three. With five, each bank holds a fifth of
the loans and trains a noisier model alone while the federated model averages five
banks' noise, and the edge is more than twice that spread.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

pytest.importorskip("opacus")
pytestmark = [pytest.mark.torch, pytest.mark.slow]

from clients.harness.demo import DemoConfig, DemoError, run_demo  # noqa: E402
from secagg.config import ProtocolMode  # noqa: E402

CONFIG = DemoConfig(banks=5, rounds=4, mode=ProtocolMode.ACTIVE, restart=True)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from rich.console import Console

    runs = tmp_path_factory.mktemp("runs")
    config = DemoConfig(**{**CONFIG.__dict__, "runs_dir": runs})
    return run_demo(config, console=Console(file=io.StringIO(), width=120))


def test_the_federated_model_beats_every_bank_alone_and_every_bank_holds_it(demo: dict) -> None:
    assert demo["rounds_completed"] == CONFIG.rounds
    assert demo["auc_federated"] > demo["auc_local_mean"], (demo["auc_federated"], demo["auc_local"])
    assert demo["same_model_everywhere"], demo["model_sha256"]
    assert set(demo["model_sha256"]) == set(CONFIG.bank_ids)


def test_every_bank_stays_within_its_budget_and_the_audit_verifies(demo: dict) -> None:
    assert set(demo["epsilon_per_bank"]) == set(CONFIG.bank_ids)
    for epsilon in demo["epsilon_per_bank"].values():
        assert 0.5 * demo["budget_epsilon"] < epsilon <= demo["budget_epsilon"] * (1 + 1e-9)
    assert demo["audit_ok"], demo["audit"]
    assert demo["audit"]["training"] == demo["training_id"] and demo["audit"]["cross_check"] == []
    html = Path(demo["report"]).read_text(encoding="utf-8")
    assert html.lstrip().lower().startswith("<!doctype html")


def test_the_killed_bank_resumed_its_round_which_completed_with_it_and_was_charged_once(demo: dict) -> None:
    from dp.audit.privacy_ledger import EntryKind, verify_ledger

    resume = demo["resume"]
    assert resume is not None, "the bank was not killed after its masked input"
    bank, round_id = resume["bank"], resume["round_id"]
    run_dir = Path(demo["run_dir"])
    events = [json.loads(line) for line in (run_dir / bank / "work" / "progress.jsonl").read_text().splitlines()]
    started = [event for event in events if event["event"] == "started"]
    assert len(started) == 2 and started[1]["resumed_after"]  # the second process picked up the state
    finished = [event for event in events if event["event"] == "round" and event["round_id"] == round_id]
    assert len(finished) == 1 and finished[0]["contributed"] and finished[0]["survivors"] == CONFIG.banks
    ledger_path = next(iter((run_dir / bank / "budget" / "budgets").glob("*/privacy-ledger.jsonl")))
    verification = verify_ledger(ledger_path)
    assert verification.ok
    spends = [entry for entry in verification.entries if entry.kind is EntryKind.SPEND]
    assert [entry.round_id for entry in spends].count(round_id) == 1
    assert len(spends) == CONFIG.rounds


def test_the_demo_refuses_a_cohort_it_cannot_run_before_anything_starts(tmp_path: Path) -> None:
    with pytest.raises(DemoError, match="3 to 5 banks"):
        DemoConfig(banks=2, runs_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []
