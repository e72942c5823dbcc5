"""Every document the code and the docs cite exists in the repository."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CITED = re.compile(r"(?<![\w/.-])((?:docs/)?[A-Z][A-Z_]+\.md)\b")
SOURCES = ("secagg", "dp", "service", "clients", "secagg_cli", "bench", "docs")


def _cited() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    paths = [path for folder in SOURCES for path in (ROOT / folder).rglob("*") if path.suffix in {".py", ".md"}]
    paths += [ROOT / "README.md", ROOT / "threat_model.md"]
    for path in paths:
        for name in CITED.findall(path.read_text(encoding="utf-8")):
            found.setdefault(name, set()).add(str(path.relative_to(ROOT)))
    return found


def test_every_cited_document_exists() -> None:
    cited = _cited()
    assert "docs/DESIGN.md" in cited or "DESIGN.md" in cited
    missing = {
        name: sorted(where) for name, where in cited.items() if not (ROOT / name).exists() and not (ROOT / "docs" / name).exists()
    }
    assert not missing, f"cited but not in the repository: {missing}"


def test_the_design_draws_every_top_level_package() -> None:
    design = (ROOT / "docs" / "DESIGN.md").read_text(encoding="utf-8")
    for package in ("secagg/", "dp/", "service/", "clients/", "secagg_cli/"):
        assert f"\n{package}" in design, package


TEST_FILE = re.compile(r"`(tests/[\w/]+\.py)(?:::(test_\w+))?`(?:\s*\(([^)]*)\))?")


def _tests_the_threat_model_names() -> list[tuple[str, str | None]]:
    named: list[tuple[str, str | None]] = []
    for row in (ROOT / "threat_model.md").read_text(encoding="utf-8").splitlines():
        if not row.startswith("| T"):
            continue
        for path, test, listed in TEST_FILE.findall(row):
            named.append((path, test or None))
            named.extend((path, name) for name in re.findall(r"`(test_\w+)`", listed))
    return named


def test_every_test_the_threat_model_names_exists() -> None:
    named = _tests_the_threat_model_names()
    assert len(named) > 40, "the threat table names its tests"
    missing = []
    for path, test in named:
        source = ROOT / path
        if not source.exists():
            missing.append(path)
        elif test is not None and f"def {test}(" not in source.read_text(encoding="utf-8"):
            missing.append(f"{path}::{test}")
    assert not missing, f"threat_model.md names tests that do not exist: {missing}"
