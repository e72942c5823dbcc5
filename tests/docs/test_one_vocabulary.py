"""The five stage names are written once, in ``secagg/rounds.py``; product code derives them."""

from __future__ import annotations

import re
from pathlib import Path

from secagg.rounds import STAGE_NAMES

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = ("secagg", "dp", "service", "clients", "secagg_cli", "bench")
MIGRATIONS = ROOT / "service" / "migrations" / "versions"


def test_no_product_module_but_the_vocabulary_spells_a_stage_name_as_a_string_literal() -> None:
    literal = re.compile(r"(?<!`)[\"'](" + "|".join(map(re.escape, STAGE_NAMES)) + r")[\"']")
    found = []
    for folder in PRODUCT:
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path == ROOT / "secagg" / "rounds.py":
                continue
            if path.is_relative_to(MIGRATIONS):
                continue  # a migration is frozen: it names the data as stored at its revision
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if literal.search(line):
                    found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not found, "stage names spelled out instead of taken from secagg.rounds.Round:\n" + "\n".join(found)
