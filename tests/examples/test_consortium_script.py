"""``examples/consortium/run.sh`` end to end on a small split of the shipped data (what CI runs).

The script may use only ``secagg`` commands and ordinary shell; this runs it as a user
would (bash, with the checkout's ``secagg`` on PATH) and checks the summary it writes.
Its measured run on the whole data is in the README.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("opacus")
pytestmark = [pytest.mark.torch, pytest.mark.slow]

ROOT = Path(__file__).parents[2]
SCRIPT = ROOT / "examples" / "consortium" / "run.sh"
REQUIRED = ("auc_federated", "auc_local", "epsilon_per_bank", "delta", "rounds_completed", "audit_ok", "report")


def test_the_script_uses_only_secagg_commands_and_ordinary_shell() -> None:
    text = SCRIPT.read_text(encoding="utf-8")
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    assert not re.search(r"\b(python3?|curl|wget|jq)\b", code)


@pytest.fixture(scope="module")
def summary(tmp_path_factory: pytest.TempPathFactory) -> dict:
    work = tmp_path_factory.mktemp("script")
    environment = {key: value for key, value in os.environ.items() if not key.startswith("SECAGG_")}
    environment["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{environment.get('PATH', '')}"
    subprocess.run(
        ["secagg", "consortium", "example-data", "--banks", "3", "--fraction", "0.25", "--out", str(work / "data")],
        check=True, env=environment, capture_output=True,
    )  # fmt: skip
    banks = [str(work / "data" / f"bank-{name}.csv") for name in "abc"]
    done = subprocess.run(
        ["bash", str(SCRIPT), "--target", "Class", "--positive", "bad", "--test", str(work / "data" / "test.csv"),
         "--out", str(work / "out"), "--rounds", "2", "--epsilon", "8", *banks],
        env=environment, capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads((work / "out" / "summary.json").read_text(encoding="utf-8"))


def test_the_script_writes_the_documented_summary_of_a_verified_training(summary: dict) -> None:
    assert all(key in summary for key in REQUIRED)
    assert summary["rounds_completed"] == 2 and summary["audit_ok"] is True
    assert set(summary["auc_local"]) == set(summary["epsilon_per_bank"]) == {"bank-a", "bank-b", "bank-c"}
    for value in summary["epsilon_per_bank"].values():
        assert 0 < value <= summary["epsilon_budget"] * (1 + 1e-9)
    assert summary["delta"] == 1e-5 and Path(summary["report"]).read_text().lstrip().lower().startswith("<!doctype html")
    assert 0.5 < summary["auc_federated"] <= 1.0 and summary["auc_pooled_dp"] is not None


def test_the_script_refuses_bad_arguments_before_starting_anything(tmp_path: Path) -> None:
    done = subprocess.run(
        ["bash", str(SCRIPT), "--target", "Class", "--out", str(tmp_path / "o")], capture_output=True, text=True
    )
    assert done.returncode == 2 and not (tmp_path / "o").exists()
