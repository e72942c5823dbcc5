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
    "flower": "bench.flower",
}


def main(argv: list[str]) -> int:
    names = [arg for arg in argv if not arg.startswith("-")] or list(SUITES)
    unknown = [name for name in names if name not in SUITES]
    if unknown:
        print(f"unknown suite(s): {', '.join(unknown)}; known: {', '.join(SUITES)}", file=sys.stderr)
        return 2
    for name in names:
        module = importlib.import_module(SUITES[name])
        module.run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
