"""The hashed lock file of a server deployment matches pyproject's server extra.

``make install-server`` installs ``requirements/server.lock`` with ``pip --require-hashes``;
``make lock`` regenerates it. This test fails when an extra gained, lost or re-bounded a
dependency without the lock following: every direct dependency of the server (the core's,
the ``server`` and the ``postgres`` extras) must be pinned with ``==`` to a version its
specifier allows, and every pinned package must carry at least one SHA-256.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "requirements" / "server.lock"
SERVER_EXTRAS = ("server", "postgres")
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s\\]+)")


def _locked() -> dict[str, tuple[str, int]]:
    """name -> (version, number of hashes), from the lock file."""
    pins: dict[str, tuple[str, int]] = {}
    current: str | None = None
    for line in LOCK.read_text().splitlines():
        match = PIN.match(line)
        if match:
            current = canonicalize_name(match.group(1))
            pins[current] = (match.group(2), 0)
        elif current is not None and line.strip().startswith("--hash=sha256:"):
            version, hashes = pins[current]
            pins[current] = (version, hashes + 1)
    return pins


def _direct_dependencies() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    listed = list(project["dependencies"])
    for extra in SERVER_EXTRAS:
        listed += project["optional-dependencies"][extra]
    return [Requirement(item) for item in listed]


def test_every_direct_dependency_of_the_server_is_pinned_within_its_specifier_with_hashes() -> None:
    pins = _locked()
    for requirement in _direct_dependencies():
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement} is not in {LOCK.name}: run `make lock`"
        version, _ = pins[name]
        assert requirement.specifier.contains(version, prereleases=True), f"{name}=={version} does not satisfy {requirement}"
    unhashed = [name for name, (_, hashes) in pins.items() if hashes == 0]
    assert not unhashed, f"pinned without a hash: {unhashed}"


def test_the_lock_names_no_index_of_the_machine_it_was_made_on_and_no_torch() -> None:
    text = LOCK.read_text()
    assert "--index-url" not in text and "--extra-index-url" not in text and "--find-links" not in text
    assert "torch" not in _locked()
