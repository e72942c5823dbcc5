"""``examples/own_model/run.sh`` end to end on a small size (what CI runs): a model defined outside
the package (a DPGRU over transaction histories) federated with the shipped commands."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("opacus")
pytestmark = [pytest.mark.torch, pytest.mark.slow]

ROOT = Path(__file__).parents[2]
SCRIPT = ROOT / "examples" / "own_model" / "run.sh"


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("own-model")
    environment = {key: value for key, value in os.environ.items() if not key.startswith("SECAGG_") and key != "PYTHONPATH"}
    environment["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{environment.get('PATH', '')}"
    environment["PYTHON"] = sys.executable
    done = subprocess.run(
        ["bash", str(SCRIPT), "--out", str(out), "--customers", "150", "--rounds", "2", "--federated-only"],
        env=environment, capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    return out


def test_the_example_federates_its_own_sequence_model_and_the_audit_verifies(run: Path) -> None:
    summary = json.loads((run / "run" / "summary.json").read_text(encoding="utf-8"))
    assert summary["rounds_completed"] == 2 and summary["aborted_rounds"] == 0 and summary["audit_ok"] is True
    assert 0.5 < summary["auc_federated"] <= 1.0 and summary["auc_local"] == {} and summary["auc_pooled_dp"] is None
    manifest = json.loads((run / "run" / "coordinator" / "manifest.json").read_text(encoding="utf-8"))["manifest"]
    layout = manifest["model"]
    assert manifest["plan"]["model"] == "custom" and layout["factory"] == "transactions:fraud_gru"
    names = [item["name"] for item in layout["parameters"]]
    assert names[0].startswith("gru.") and names[-2:] == ["head.weight", "head.bias"]
    model = json.loads((run / "run" / "bank-a" / "work" / "model.json").read_text(encoding="utf-8"))
    assert model["model"] == {"kind": "custom", "layout": layout}
    assert len(model["parameters"]) == layout["parameter_count"]


def test_the_generated_data_are_the_same_for_the_same_seed(tmp_path: Path) -> None:
    for name in ("one", "two"):
        subprocess.run([sys.executable, str(ROOT / "examples" / "own_model" / "generate.py"), "--out", str(tmp_path / name),
                        "--customers", "50"], check=True, capture_output=True)  # fmt: skip
    for file in ("bank-a.csv", "bank-b.csv", "bank-c.csv", "test.csv"):
        assert (tmp_path / "one" / file).read_bytes() == (tmp_path / "two" / file).read_bytes()
