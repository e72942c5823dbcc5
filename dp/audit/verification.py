"""The outcome of verifying one chained ledger, whatever kind of entry it holds.

A party's privacy ledger (:mod:`dp.audit.privacy_ledger`) and the server's round ledger
(:mod:`dp.audit.round_records`) share the storage layer of :mod:`dp.audit.chain`, and so
the shape of what their verifiers learn: the ledger's owner and key, every entry that
parsed, where in the file it stood, every finding, and what the signed head covers.
:class:`Verification` is that shape, generic in the entry type; :func:`verify_chain`
fills it from a file, turning every entry that does not parse into a finding.

Invariant: ``ok`` iff there is no finding. ``entries[i]`` stood at 0-based position
``positions[i]`` in the file; positions differ from an entry's own ``index`` claim only
in a tampered ledger, where a finding says so.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

from dp.audit.chain import (
    ChainFormat,
    Finding,
    FindingKind,
    JsonObject,
    check_anchor,
    iter_valid,
    read_chain,
)

__all__ = ["Verification", "sorted_findings", "verify_chain"]

EntryT = TypeVar("EntryT")


@dataclass(frozen=True, slots=True)
class Verification(Generic[EntryT]):
    """What verifying one ledger found. ``owner`` is the party or server the ledger
    declares (``None`` if no entry or head names one); ``public_key`` is the key the
    signatures were checked against, hex (the pinned one if ``key_pinned``, else the one
    the ledger declares); ``head_entries`` is how many entries the signed head covers
    (``None`` when the head is missing or unreadable)."""

    path: Path
    ledger_format: ChainFormat
    owner: str | None
    public_key: str | None
    key_pinned: bool
    entries: tuple[EntryT, ...]
    positions: tuple[int, ...]
    findings: tuple[Finding, ...]
    head_entries: int | None

    @property
    def ok(self) -> bool:
        return not self.findings

    def to_dict(self) -> JsonObject:
        """A summary for JSON output; the owner is keyed by the ledger's owner field
        (``party`` or ``server``)."""
        return {
            "path": str(self.path),
            self.ledger_format.owner_field: self.owner,
            "public_key": self.public_key,
            "key_pinned": self.key_pinned,
            "ok": self.ok,
            "entries": len(self.entries),
            "head_entries": self.head_entries,
            "findings": [finding.to_dict() for finding in self.findings],
        }


def sorted_findings(findings: Iterable[Finding]) -> tuple[Finding, ...]:
    """Findings about the ledger as a whole first, then by entry; stable otherwise."""
    return tuple(sorted(findings, key=lambda finding: finding.index if finding.index is not None else -1))


def verify_chain(
    path: Path | str,
    ledger_format: ChainFormat,
    parse_entry: Callable[[int, JsonObject], EntryT],
    *,
    public_key: bytes | None = None,
    anchors: Sequence[Path] = (),
) -> Verification[EntryT]:
    """Read and check the chain (:func:`dp.audit.chain.read_chain`), compare it with every
    head kept from an earlier audit (``anchors``), and parse each entry whose envelope is
    sound with ``parse_entry(position, raw)``. An entry it refuses is a
    :attr:`FindingKind.MALFORMED_ENTRY` finding, never an exception: the content is
    attacker-controlled."""
    path = Path(path)
    read = read_chain(path, ledger_format, public_key=public_key)
    findings = list(read.findings)
    findings.extend(finding for anchor in anchors for finding in check_anchor(read, ledger_format, Path(anchor)))
    entries: list[EntryT] = []
    positions: list[int] = []
    for position, raw in iter_valid(read):
        try:
            entry = parse_entry(position, raw)
        except ValueError as exc:
            findings.append(Finding(FindingKind.MALFORMED_ENTRY, position, str(exc)))
            continue
        except Exception as exc:  # every other refusal of attacker-controlled content is a finding too
            findings.append(Finding(FindingKind.MALFORMED_ENTRY, position, f"{type(exc).__name__}: {exc}"))
            continue
        entries.append(entry)
        positions.append(position)
    return Verification(
        path=path,
        ledger_format=ledger_format,
        owner=read.owner,
        public_key=None if read.public_key is None else read.public_key.hex(),
        key_pinned=read.key_pinned,
        entries=tuple(entries),
        positions=tuple(positions),
        findings=sorted_findings(findings),
        head_entries=None if read.head is None else read.head.entries,
    )
