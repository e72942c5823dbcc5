"""What the auditor's report says, independent of how it is rendered.

:func:`run_audit` verifies every party's privacy ledger
(:func:`dp.audit.privacy_ledger.verify_ledger`), optionally the server's round ledger
(:func:`dp.audit.round_records.verify_server_ledger`), and cross-checks them
(:func:`dp.audit.round_records.cross_check`). :func:`build_report` turns that
:class:`Audit` into an :class:`AuditReport`: one row per ledger entry, one summary per
party and privacy unit, one row per round the server recorded, and the verdict.

Invariants:

* every epsilon is the verifier's recomputation from the recorded mechanisms, never the
  ledger's claim (the claims are carried beside it, labelled);
* the verdict's first clause says whether everything verified; if anything failed it
  says so before any epsilon is quoted;
* rounds are numbered 1..R in the order the server recorded them, then any round only
  the parties' ledgers name, in time order; figures use these numbers, tables show both
  the number and the round id;
* a round whose recorded ``privacy`` is empty (the preprocessing statistics round) is
  not differentially private: when it completed, its sum was released exactly. The
  report flags it as such and counts it in no epsilon;
* nothing here builds markup: every string is plain text, escaped by the renderer.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from dp.audit.chain import (
    Finding,
    LedgerError,
    anchor_identity,
    declared_owner,
    format_time,
    utc_now,
)
from dp.audit.privacy_ledger import (
    PRIVACY_LEDGER_FORMAT,
    EntryKind,
    LedgerEntry,
    LedgerVerification,
    PrivacyUnit,
    verify_ledger,
)
from dp.audit.round_records import (
    SERVER_LEDGER_FORMAT,
    CrossCheckFinding,
    RoundOutcome,
    RoundStage,
    ServerLedgerVerification,
    cross_check,
    in_scope,
    parties_without_ledger,
    verify_server_ledger,
)

__all__ = [
    "Audit",
    "AuditReport",
    "EntryRow",
    "RoundRow",
    "UnitSummary",
    "build_report",
    "format_budget",
    "format_delta",
    "format_epsilon",
    "parameters_text",
    "run_audit",
]

REPORT_FORMAT = "secagg-audit-report/1"


# --------------------------------------------------------------------------- audit


@dataclass(frozen=True, slots=True)
class Audit:
    """Every verification result of one audit run."""

    ledgers: tuple[LedgerVerification, ...]
    server: ServerLedgerVerification | None
    cross_findings: tuple[CrossCheckFinding, ...]
    parties_without_ledger: tuple[str, ...]
    training: str | None = None
    """The training the audit is scoped to (every ledger and the whole server ledger are still
    verified; the cross-check and the report's rounds cover only this training's rounds)."""

    @property
    def ok(self) -> bool:
        return all(ledger.ok for ledger in self.ledgers) and (self.server is None or self.server.ok) and not self.cross_findings


def run_audit(
    ledger_paths: Sequence[Path],
    *,
    keys_by_path: Mapping[Path, bytes] | None = None,
    keys_by_party: Mapping[str, bytes] | None = None,
    server_ledger: Path | None = None,
    server_public_key: bytes | None = None,
    anchors: Sequence[Path] = (),
    training: str | None = None,
) -> Audit:
    """Verify every ledger. A ledger's signatures are checked against the key pinned for
    its path, else for the party it declares, else (unpinned) against its declared key.
    ``anchors`` are head files kept from earlier audits, matched to ledgers by owner;
    one that matches no ledger given is refused (:class:`LedgerError`), as are two
    ledgers declaring the same party."""
    pinned_by_path = dict(keys_by_path or {})
    pinned_by_party = dict(keys_by_party or {})
    owners = {Path(path): declared_owner(Path(path), PRIVACY_LEDGER_FORMAT) for path in ledger_paths}
    declared = [owner for owner in owners.values() if owner is not None]
    duplicated = sorted({owner for owner in declared if declared.count(owner) > 1})
    if duplicated:
        raise LedgerError(f"several ledgers declare party {', '.join(map(repr, duplicated))}: give one ledger per party")
    server_owner = None if server_ledger is None else declared_owner(server_ledger, SERVER_LEDGER_FORMAT)
    party_anchors: dict[str, list[Path]] = {}
    server_anchors: list[Path] = []
    for anchor in anchors:
        head_format, owner = anchor_identity(Path(anchor))
        if head_format == PRIVACY_LEDGER_FORMAT.head_name and owner in owners.values():
            party_anchors.setdefault(owner, []).append(Path(anchor))
        elif head_format == SERVER_LEDGER_FORMAT.head_name and server_owner is not None and owner == server_owner:
            server_anchors.append(Path(anchor))
        else:
            raise LedgerError(f"{anchor}: a {head_format} head of {owner!r}, which matches no ledger given")
    verifications: list[LedgerVerification] = []
    for path in map(Path, ledger_paths):
        party = owners[path]
        key = pinned_by_path.get(path)
        if key is None and party is not None:
            key = pinned_by_party.get(party)
        verifications.append(verify_ledger(path, public_key=key, anchors=party_anchors.get(party or "", ())))
    server = None
    cross: tuple[CrossCheckFinding, ...] = ()
    missing: tuple[str, ...] = ()
    if server_ledger is not None:
        server = verify_server_ledger(server_ledger, public_key=server_public_key, anchors=server_anchors)
        cross = cross_check(verifications, server, training=training)
        missing = parties_without_ledger(verifications, server, training=training)
    return Audit(
        ledgers=tuple(verifications), server=server, cross_findings=cross, parties_without_ledger=missing, training=training
    )


# --------------------------------------------------------------------------- text


def format_epsilon(value: float | None) -> str:
    """Three significant digits; ``–`` when it could not be recomputed."""
    if value is None:
        return "–"
    if math.isinf(value):
        return "unbounded"
    return f"{value:.3g}"


def format_delta(value: float) -> str:
    text = f"{value:g}"
    return text.replace("e-0", "e-").replace("e+0", "e+")


def format_budget(value: float | None) -> str:
    return "–" if value is None else f"{value:g}"


def parameters_text(parameters: Mapping[str, Any]) -> str:
    """A mechanism's parameters as ``name=value, ...``, sorted, without the mechanism."""
    return ", ".join(f"{key}={value}" for key, value in sorted(parameters.items()) if key != "mechanism")


def _finding_label(finding: Finding) -> str:
    where = "ledger" if finding.index is None else f"entry {finding.index}"
    return f"{finding.kind.value} at {where}"


# --------------------------------------------------------------------------- rows


@dataclass(frozen=True, slots=True)
class EntryRow:
    """One ledger entry as the report shows it: the claim beside the recomputation.
    ``index`` is the entry's position in its file, as in the findings; ``round_number``
    is the round's number in the report (1..R)."""

    ledger: str
    party: str
    index: int
    time: str
    round_id: str
    round_number: int
    unit: PrivacyUnit
    kind: EntryKind
    mechanism: str
    parameters: Mapping[str, Any]
    delta: float
    accountant: str
    claimed_increment: float
    claimed_cumulative: float
    epsilon_increment: float | None
    epsilon_cumulative: float | None
    budget_epsilon: float | None
    findings: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "ledger": self.ledger,
            "party": self.party,
            "index": self.index,
            "time": self.time,
            "round": self.round_id,
            "round_number": self.round_number,
            "unit": self.unit.value,
            "kind": self.kind.value,
            "mechanism": self.mechanism,
            "parameters": dict(self.parameters),
            "delta": self.delta,
            "accountant": self.accountant,
            "epsilon_increment_claimed": self.claimed_increment,
            "epsilon_cumulative_claimed": self.claimed_cumulative,
            "epsilon_increment": self.epsilon_increment,
            "epsilon_cumulative": self.epsilon_cumulative,
            "budget_epsilon": self.budget_epsilon,
            "findings": list(self.findings),
        }


@dataclass(frozen=True, slots=True)
class UnitSummary:
    """Where one party stands for one unit, after its last entry (recomputed)."""

    party: str
    unit: PrivacyUnit
    epsilon: float | None
    """``None`` when the last entry's epsilon could not be recomputed (see its findings)."""
    delta: float
    accountant: str
    budget_epsilon: float | None
    spends: int
    refusals: int
    ledger_ok: bool

    @property
    def over_budget(self) -> bool:
        return self.budget_epsilon is not None and self.epsilon is not None and self.epsilon > self.budget_epsilon * (1 + 1e-6)

    def to_dict(self) -> dict[str, Any]:
        return {
            "party": self.party,
            "unit": self.unit.value,
            "epsilon": self.epsilon,
            "delta": self.delta,
            "accountant": self.accountant,
            "budget_epsilon": self.budget_epsilon,
            "spends": self.spends,
            "refusals": self.refusals,
            "ledger_ok": self.ledger_ok,
            "over_budget": self.over_budget,
        }


@dataclass(frozen=True, slots=True)
class RoundRow:
    """One round as the server recorded it. ``number`` is its number in the report
    (1..R), ``index`` its entry in the server's ledger."""

    number: int
    index: int
    time: str
    round_id: str
    cohort_size: int
    threshold: int
    mode: str
    dim: int
    bits: int
    survivors: Mapping[str, int]
    outcome: str
    abort_reason: str | None
    privacy: tuple[str, ...]

    @property
    def differentially_private(self) -> bool:
        """Whether the round declared any DP mechanism at all."""
        return bool(self.privacy)

    @property
    def exact_release(self) -> bool:
        """A completed round without DP: its sum was released exactly."""
        return not self.differentially_private and self.outcome == RoundOutcome.COMPLETED.value

    def to_dict(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "index": self.index,
            "time": self.time,
            "round": self.round_id,
            "cohort_size": self.cohort_size,
            "threshold": self.threshold,
            "mode": self.mode,
            "dim": self.dim,
            "bits": self.bits,
            "survivors": dict(self.survivors),
            "outcome": self.outcome,
            "abort_reason": self.abort_reason,
            "privacy": list(self.privacy),
            "differentially_private": self.differentially_private,
            "exact_release": self.exact_release,
        }


@dataclass(frozen=True, slots=True)
class AuditReport:
    """Everything the HTML, JSON and CSV renderings show."""

    generated_at: str
    verdict: str
    ok: bool
    audit: Audit
    entries: tuple[EntryRow, ...]
    summaries: tuple[UnitSummary, ...]
    rounds: tuple[RoundRow, ...]
    round_order: tuple[str, ...]
    """Round ids by number: ``round_order[n - 1]`` is round ``n``."""
    notes: tuple[str, ...] = field(default=())

    @property
    def exact_releases(self) -> tuple[RoundRow, ...]:
        """Rounds that completed without differential privacy."""
        return tuple(row for row in self.rounds if row.exact_release)

    def to_dict(self) -> dict[str, Any]:
        server = self.audit.server
        return {
            "format": REPORT_FORMAT,
            "generated_at": self.generated_at,
            "verdict": self.verdict,
            "ok": self.ok,
            "notes": list(self.notes),
            "ledgers": [ledger.to_dict() for ledger in self.audit.ledgers],
            "server_ledger": None if server is None else server.to_dict(),
            "cross_check": [finding.to_dict() for finding in self.audit.cross_findings],
            "parties_without_ledger": list(self.audit.parties_without_ledger),
            "summaries": [summary.to_dict() for summary in self.summaries],
            "entries": [row.to_dict() for row in self.entries],
            "rounds": [row.to_dict() for row in self.rounds],
        }


# --------------------------------------------------------------------------- building


def _round_order(audit: Audit) -> tuple[str, ...]:
    """The rounds the report numbers 1..R: the server's records first, then ledger-only rounds.
    Scoped to a training, only that training's recorded rounds."""
    order: dict[str, None] = {}
    if audit.server is not None:
        for server_entry in audit.server.entries:
            if in_scope(server_entry.record, audit.training):
                order.setdefault(server_entry.record.round_id, None)
    if audit.training is not None and audit.server is not None:
        return tuple(order)
    for ledger in audit.ledgers:
        for entry in sorted(ledger.entries, key=lambda item: item.time):
            order.setdefault(entry.round_id, None)
    return tuple(order)


def _rows_for(ledger: LedgerVerification, numbers: Mapping[str, int]) -> list[EntryRow]:
    by_index: dict[int, list[str]] = {}
    for finding in ledger.findings:
        if finding.index is not None:
            by_index.setdefault(finding.index, []).append(finding.kind.value)
    recomputed_by_position = {item.position: item for item in ledger.recomputed}
    rows = []
    for position, entry in zip(ledger.positions, ledger.entries, strict=True):
        if entry.round_id not in numbers:
            continue  # a round of another training: verified, not reported
        recomputed = recomputed_by_position.get(position)
        rows.append(
            EntryRow(
                ledger=str(ledger.path),
                party=entry.party,
                index=position,
                time=entry.time,
                round_id=entry.round_id,
                round_number=numbers[entry.round_id],
                unit=entry.unit,
                kind=entry.kind,
                mechanism=entry.mechanism.value,
                parameters=entry.parameters,
                delta=entry.delta,
                accountant=entry.accountant.value,
                claimed_increment=entry.epsilon_increment,
                claimed_cumulative=entry.epsilon_cumulative,
                epsilon_increment=None if recomputed is None else recomputed.increment,
                epsilon_cumulative=None if recomputed is None else recomputed.cumulative,
                budget_epsilon=entry.budget_epsilon,
                findings=tuple(by_index.get(position, ())),
            )
        )
    return rows


def _summaries_for(ledger: LedgerVerification) -> list[UnitSummary]:
    summaries = []
    for unit in PrivacyUnit:
        of_unit = [
            (position, entry) for position, entry in zip(ledger.positions, ledger.entries, strict=True) if entry.unit is unit
        ]
        if not of_unit:
            continue
        entries: list[LedgerEntry] = [entry for _, entry in of_unit]
        last_position, last = of_unit[-1]
        recomputed = ledger.recomputed_at(last_position)
        summaries.append(
            UnitSummary(
                party=last.party,
                unit=unit,
                epsilon=None if recomputed is None else recomputed.cumulative,
                delta=last.delta,
                accountant=last.accountant.value,
                budget_epsilon=last.budget_epsilon,
                spends=sum(entry.kind is EntryKind.SPEND for entry in entries),
                refusals=sum(entry.kind is EntryKind.REFUSAL for entry in entries),
                ledger_ok=ledger.ok,
            )
        )
    return summaries


def _rounds_for(server: ServerLedgerVerification, numbers: Mapping[str, int]) -> list[RoundRow]:
    rounds = []
    for server_entry in server.entries:
        record = server_entry.record
        if record.round_id not in numbers:
            continue
        rounds.append(
            RoundRow(
                number=numbers[record.round_id],
                index=server_entry.index,
                time=server_entry.time,
                round_id=record.round_id,
                cohort_size=len(record.cohort),
                threshold=record.threshold,
                mode=record.mode.value,
                dim=record.dim,
                bits=record.bits,
                survivors={stage.value: len(record.survivors[stage]) for stage in RoundStage},
                outcome=record.outcome.value,
                abort_reason=record.abort_reason,
                privacy=tuple(
                    f"{item.unit.value}: {item.event.mechanism.value} {parameters_text(item.event.to_dict())}"
                    for item in record.privacy
                ),
            )
        )
    return rounds


def _named_rounds(rounds: Sequence[RoundRow]) -> str:
    named = ", ".join(f"#{row.number} {row.round_id}" for row in rounds[:3])
    return named if len(rounds) <= 3 else f"{named} and {len(rounds) - 3} more"


def _verdict(audit: Audit, summaries: Sequence[UnitSummary], rounds: Sequence[RoundRow]) -> tuple[str, bool]:
    count = len(audit.ledgers)
    failing = [ledger for ledger in audit.ledgers if not ledger.ok]
    parts: list[str] = []
    ok = audit.ok
    if not ok:
        problems = []
        if failing:
            named = ", ".join(
                f"{ledger.party or ledger.path.name}: {_finding_label(ledger.findings[0])}" for ledger in failing[:3]
            )
            more = "" if len(failing) <= 3 else f" and {len(failing) - 3} more"
            problems.append(f"{len(failing)} of {count} ledgers fail ({named}{more})")
        if audit.server is not None and not audit.server.ok:
            problems.append(f"the server ledger fails ({_finding_label(audit.server.findings[0])})")
        if audit.cross_findings:
            first = audit.cross_findings[0]
            problems.append(
                f"{len(audit.cross_findings)} disagreement{'s' if len(audit.cross_findings) != 1 else ''} with the server's records "
                f"({first.party}, round {first.round_id}: {first.finding.kind.value})"
            )
        parts.append("VERIFICATION FAILED: " + "; ".join(problems))
    else:
        text = f"{count} ledger{'s' if count != 1 else ''} verif{'y' if count != 1 else 'ies'}"
        if audit.server is not None:
            text += " and agree with the server's signed round records"
        parts.append(text)
    for unit in PrivacyUnit:
        of_unit = [summary for summary in summaries if summary.unit is unit and summary.epsilon is not None]
        if not of_unit:
            continue
        top = max(of_unit, key=lambda summary: summary.epsilon or 0.0)
        budget = "no budget recorded" if top.budget_epsilon is None else f"budget {top.budget_epsilon:g}"
        phrase = f"highest {unit.value}-level epsilon {format_epsilon(top.epsilon)} at delta {format_delta(top.delta)} ({top.party}), {budget}"
        over = [summary.party for summary in of_unit if summary.over_budget]
        if over:
            phrase += f"; OVER BUDGET: {', '.join(over)}"
        parts.append(phrase)
    exact = [row for row in rounds if row.exact_release]
    if exact:
        single = len(exact) == 1
        subject = "1 round" if single else f"{len(exact)} rounds"
        released = "its sum was" if single else "their sums were"
        parts.append(
            f"{subject} ({_named_rounds(exact)}) declared no differential privacy: {released} released exactly, "
            f"without noise, and no epsilon here covers {'it' if single else 'them'}"
        )
    unpinned = [ledger for ledger in audit.ledgers if not ledger.key_pinned]
    if unpinned:
        if len(unpinned) == 1:
            parts.append("1 ledger checked only against the key it declares (no --public-key)")
        else:
            parts.append(f"{len(unpinned)} ledgers checked only against the keys they declare (no --public-key)")
    if audit.server is not None and not audit.server.key_pinned:
        parts.append("the server ledger checked only against the key it declares (no --server-public-key)")
    return "; ".join(parts) + ".", ok


def build_report(audit: Audit, *, clock: Callable[[], datetime] = utc_now) -> AuditReport:
    """The report of ``audit``; ``clock`` stamps it (injectable for reproducible output)."""
    order = _round_order(audit)
    numbers = {round_id: number for number, round_id in enumerate(order, start=1)}
    entries: list[EntryRow] = []
    summaries: list[UnitSummary] = []
    for ledger in audit.ledgers:
        entries.extend(_rows_for(ledger, numbers))
        summaries.extend(_summaries_for(ledger))
    rounds = [] if audit.server is None else _rounds_for(audit.server, numbers)
    notes = []
    if audit.training is not None:
        notes.append(
            f"Scoped to training {audit.training}: every ledger and the whole server ledger were verified; the rounds and "
            "entries shown are this training's. Each epsilon is the bank's cumulative over everything its ledger records, "
            "other trainings included."
        )
    if audit.parties_without_ledger:
        notes.append(
            "The server's records show contributions from parties whose ledgers were not provided: "
            + ", ".join(audit.parties_without_ledger)
        )
    verdict, ok = _verdict(audit, summaries, rounds)
    return AuditReport(
        generated_at=format_time(clock()),
        verdict=verdict,
        ok=ok,
        audit=audit,
        entries=tuple(entries),
        summaries=tuple(summaries),
        rounds=tuple(rounds),
        round_order=order,
        notes=tuple(notes),
    )
