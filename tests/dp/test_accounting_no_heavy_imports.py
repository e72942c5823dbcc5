"""dp.accounting works where torch, opacus and scipy are not installed (server, auditor).

A fresh interpreter is started with an import hook that makes those packages
unimportable, then the pinned values are computed through the public API.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

REPOSITORY_ROOT = Path(__file__).resolve().parents[2]

_SCRIPT = textwrap.dedent(
    """
    import importlib.abc
    import json
    import sys

    BLOCKED = {"torch", "opacus", "scipy"}

    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{name} is not installed on this machine")
            return None

    sys.meta_path.insert(0, Blocker())

    from dp.accounting import AccountantKind, SampledGaussian, Skellam, compute_epsilon

    gaussian = SampledGaussian(noise_multiplier=1.0, sample_rate=0.1, steps=100)
    skellam = Skellam(l1_sensitivity=256.0, l2_sensitivity=16.0, variance=1e5, steps=3)
    print(json.dumps({
        "rdp": compute_epsilon([gaussian], delta=1e-5, accountant=AccountantKind.RDP),
        "prv": compute_epsilon([gaussian], delta=1e-5, accountant=AccountantKind.PRV),
        "skellam": compute_epsilon([gaussian, skellam], delta=1e-5),
        "loaded": sorted(name for name in sys.modules if name.split(".")[0] in BLOCKED),
    }))
    """
)


def test_accounting_imports_and_computes_pinned_values_without_torch_opacus_or_scipy() -> None:
    completed = subprocess.run(
        [sys.executable, "-c", _SCRIPT],
        cwd=REPOSITORY_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    assert result["loaded"] == []
    assert round(result["rdp"], 3) == 7.899
    assert round(result["prv"], 3) == 7.057
    assert result["skellam"] > result["rdp"]
