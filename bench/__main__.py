"""Run every benchmark suite: ``python -m bench [suite ...]``.

Suites write a markdown table and a JSON file under ``bench/results/``. Absolute
times on shared 2-core machines are noisy; every suite reports ratios against a
physical limit (or a non-private baseline) measured in the same run.
"""

from __future__ import annotations

import importlib
import sys

SUITES = {
    "core": "bench.core",
    "dp": "bench.dp",
    "http": "bench.http",
    "hardening": "bench.hardening",
    "scale": "bench.scale",
    "flower": "bench.flower",
}
SUITES_WITH_PARTS = {"scale": ("unmask", "big", "round", "replays", "ray", "load")}
"""Suites whose own arguments may follow them: ``python -m bench scale big unmask``."""


def main(argv: list[str]) -> int:
    names = [arg for arg in argv if not arg.startswith("-")]
    parts = {part for suite in names if suite in SUITES_WITH_PARTS for part in SUITES_WITH_PARTS[suite]}
    suites = [name for name in names if name not in parts] or list(SUITES)
    unknown = [name for name in suites if name not in SUITES]
    if unknown:
        print(f"unknown suite(s): {', '.join(unknown)}; known: {', '.join(SUITES)}", file=sys.stderr)
        return 2
    for name in suites:
        module = importlib.import_module(SUITES[name])
        if name in SUITES_WITH_PARTS:
            module.run([arg for arg in argv if arg in SUITES_WITH_PARTS[name] or arg.startswith("-")])
        else:
            module.run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
