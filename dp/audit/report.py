"""The auditor's report: verify every ledger, then say what was spent, for whom, and whether
to believe it (issue 3, part 6).

:func:`run_audit` verifies each party's privacy ledger (:func:`dp.audit.privacy_ledger.verify_ledger`),
optionally the server's round ledger, and cross-checks them
(:func:`dp.audit.round_records.cross_check`). :func:`build_report` turns the result into an
:class:`AuditReport`, rendered as one self-contained HTML file (:func:`render_html`), or
exported with the same content as JSON (:func:`render_json`) or CSV (:func:`render_csv`).

Invariants:

* every epsilon in the report is the verifier's recomputation from the recorded
  mechanisms, never the ledger's claim (claims appear beside it, labelled);
* the first sentence of the verdict says whether everything verified; if anything
  failed, it says so before any epsilon is quoted;
* everything taken from a ledger (ids, round names, parameters, finding details) is
  attacker-controlled text: it is HTML-escaped in the report, ``$`` is escaped before it
  reaches matplotlib's mathtext, and CSV cells that a spreadsheet would run as a formula
  are prefixed with ``'`` (OWASP, "CSV Injection"). The HTML carries a
  Content-Security-Policy that forbids scripts and any network fetch;
* figures are PNGs rendered with matplotlib's Agg canvas (no pyplot, no global
  backend change) and embedded as base64 data URIs; matplotlib is imported only when a
  figure is drawn, so verification alone needs no matplotlib.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from dp.audit.chain import Finding, LedgerError, anchor_identity, declared_owner, format_time, utc_now
from dp.audit.privacy_ledger import PRIVACY_LEDGER_FORMAT, EntryKind, LedgerEntry, LedgerVerification, PrivacyUnit, verify_ledger
from dp.audit.report_format import ReportFormat
from dp.audit.round_records import (
    SERVER_LEDGER_FORMAT,
    CrossCheckFinding,
    RoundStage,
    ServerLedgerVerification,
    cross_check,
    parties_without_ledger,
    verify_server_ledger,
)

__all__ = [
    "Audit",
    "AuditReport",
    "ReportFormat",
    "build_report",
    "render",
    "render_csv",
    "render_html",
    "render_json",
    "run_audit",
]


UNIT_LABELS = {
    PrivacyUnit.EXAMPLE: "example-level (a bank's customers)",
    PrivacyUnit.PARTICIPANT: "participant-level (a bank's whole contribution)",
}
MECHANISM_LABELS = {
    "gaussian": "Gaussian noise in local training (DP-SGD)",
    "skellam": "Skellam noise added in the secure sum",
}


# --------------------------------------------------------------------------- audit


@dataclass(frozen=True, slots=True)
class Audit:
    """Every verification result of one audit run."""

    ledgers: tuple[LedgerVerification, ...]
    server: ServerLedgerVerification | None
    cross_findings: tuple[CrossCheckFinding, ...]
    parties_without_ledger: tuple[str, ...]

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
) -> Audit:
    """Verify every ledger. A ledger's signatures are checked against the key pinned for
    its path, else for the party it declares, else (unpinned) against its declared key.
    ``anchors`` are head files kept from earlier audits, matched to ledgers by owner;
    one that matches no ledger given is refused (:class:`LedgerError`), as are two
    ledgers declaring the same party."""
    keys_by_path = dict(keys_by_path or {})
    keys_by_party = dict(keys_by_party or {})
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
        ledger_owner = owners[path]
        key = keys_by_path.get(path)
        if key is None and ledger_owner is not None:
            key = keys_by_party.get(ledger_owner)
        verifications.append(verify_ledger(path, public_key=key, anchors=party_anchors.get(ledger_owner or "", ())))
    server = None
    cross: tuple[CrossCheckFinding, ...] = ()
    missing: tuple[str, ...] = ()
    if server_ledger is not None:
        server = verify_server_ledger(server_ledger, public_key=server_public_key, anchors=server_anchors)
        cross = cross_check(verifications, server)
        missing = parties_without_ledger(verifications, server)
    return Audit(ledgers=tuple(verifications), server=server, cross_findings=cross, parties_without_ledger=missing)


# --------------------------------------------------------------------------- report model


@dataclass(frozen=True, slots=True)
class EntryRow:
    """One ledger entry as the report shows it: the claim beside the recomputation.
    ``index`` is the entry's position in its file, as in the findings."""

    ledger: str
    party: str
    index: int
    time: str
    round_id: str
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
    """One round as the server recorded it."""

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

    def to_dict(self) -> dict[str, Any]:
        return {
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
    notes: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        server = self.audit.server
        return {
            "format": "secagg-audit-report/1",
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


def _format_epsilon(value: float | None) -> str:
    if value is None:
        return "–"
    if math.isinf(value):
        return "unbounded"
    return f"{value:.3g}"


def _format_delta(value: float) -> str:
    text = f"{value:g}"
    return text.replace("e-0", "e-").replace("e+0", "e+")


def _finding_label(finding: Finding) -> str:
    where = "ledger" if finding.index is None else f"entry {finding.index}"
    return f"{finding.kind.value} at {where}"


def _rows_for(ledger: LedgerVerification) -> list[EntryRow]:
    by_index: dict[int, list[str]] = {}
    for finding in ledger.findings:
        if finding.index is not None:
            by_index.setdefault(finding.index, []).append(finding.kind.value)
    recomputed_by_position = {item.position: item for item in ledger.recomputed}
    rows = []
    for position, entry in zip(ledger.positions, ledger.entries, strict=True):
        recomputed = recomputed_by_position.get(position)
        rows.append(
            EntryRow(
                ledger=str(ledger.path),
                party=entry.party,
                index=position,
                time=entry.time,
                round_id=entry.round_id,
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


def _round_order(audit: Audit) -> tuple[str, ...]:
    order: dict[str, None] = {}
    if audit.server is not None:
        for server_entry in audit.server.entries:
            order.setdefault(server_entry.record.round_id, None)
    for ledger in audit.ledgers:
        for entry in sorted(ledger.entries, key=lambda item: item.time):
            order.setdefault(entry.round_id, None)
    return tuple(order)


def _verdict(audit: Audit, summaries: Sequence[UnitSummary]) -> tuple[str, bool]:
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
                f"{len(audit.cross_findings)} disagreements with the server's records "
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
        phrase = f"highest {unit.value}-level epsilon {_format_epsilon(top.epsilon)} at delta {_format_delta(top.delta)} ({top.party}), {budget}"
        over = [summary.party for summary in of_unit if summary.over_budget]
        if over:
            phrase += f"; OVER BUDGET: {', '.join(over)}"
        parts.append(phrase)
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
    entries: list[EntryRow] = []
    summaries: list[UnitSummary] = []
    for ledger in audit.ledgers:
        entries.extend(_rows_for(ledger))
        summaries.extend(_summaries_for(ledger))
    rounds: list[RoundRow] = []
    if audit.server is not None:
        for server_entry in audit.server.entries:
            record = server_entry.record
            rounds.append(
                RoundRow(
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
                        f"{item.unit.value}: {item.event.mechanism.value} {_parameters_text(item.event.to_dict())}"
                        for item in record.privacy
                    ),
                )
            )
    notes = []
    if audit.parties_without_ledger:
        notes.append(
            "The server's records show contributions from parties whose ledgers were not provided: "
            + ", ".join(audit.parties_without_ledger)
        )
    verdict, ok = _verdict(audit, summaries)
    return AuditReport(
        generated_at=format_time(clock()),
        verdict=verdict,
        ok=ok,
        audit=audit,
        entries=tuple(entries),
        summaries=tuple(summaries),
        rounds=tuple(rounds),
        round_order=_round_order(audit),
        notes=tuple(notes),
    )


def _parameters_text(parameters: Mapping[str, Any]) -> str:
    return ", ".join(f"{key}={value}" for key, value in sorted(parameters.items()) if key != "mechanism")


# --------------------------------------------------------------------------- JSON and CSV


def render_json(report: AuditReport) -> str:
    return json.dumps(report.to_dict(), indent=2, sort_keys=True, allow_nan=False) + "\n"


CSV_COLUMNS = (
    "record",
    "ledger",
    "party",
    "index",
    "time",
    "round",
    "unit",
    "kind",
    "mechanism",
    "parameters",
    "delta",
    "accountant",
    "epsilon_increment_claimed",
    "epsilon_cumulative_claimed",
    "epsilon_increment",
    "epsilon_cumulative",
    "budget_epsilon",
    "status",
    "finding",
    "detail",
    "cohort_size",
    "threshold",
    "mode",
    "dim",
    "bits",
    *(stage.value for stage in RoundStage),
    "outcome",
    "abort_reason",
)
_FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def _csv_text(value: Any) -> str:
    """A CSV cell: numbers exactly (``repr``), text with formula triggers neutralised."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return "'" + text if text.startswith(_FORMULA_PREFIXES) else text


def render_csv(report: AuditReport) -> str:
    """One table, one row per record; ``record`` says what the row is (verdict, ledger,
    finding, cross-check, summary, entry, round)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()

    def emit(**cells: Any) -> None:
        writer.writerow({column: _csv_text(cells.get(column)) for column in CSV_COLUMNS})

    emit(record="verdict", status="ok" if report.ok else "failed", detail=report.verdict)
    for ledger in report.audit.ledgers:
        emit(
            record="ledger",
            ledger=str(ledger.path),
            party=ledger.party,
            status="ok" if ledger.ok else "failed",
            detail=f"{len(ledger.entries)} entries; key {'pinned' if ledger.key_pinned else 'declared, not pinned'}",
        )
        for finding in ledger.findings:
            emit(
                record="finding",
                ledger=str(ledger.path),
                party=ledger.party,
                index=finding.index,
                status="failed",
                finding=finding.kind.value,
                detail=finding.detail,
            )
    server = report.audit.server
    if server is not None:
        emit(
            record="server-ledger",
            ledger=str(server.path),
            party=server.server,
            status="ok" if server.ok else "failed",
            detail=f"{len(server.entries)} rounds",
        )
        for finding in server.findings:
            emit(
                record="finding",
                ledger=str(server.path),
                party=server.server,
                index=finding.index,
                status="failed",
                finding=finding.kind.value,
                detail=finding.detail,
            )
    for cross in report.audit.cross_findings:
        emit(
            record="cross-check",
            party=cross.party,
            round=cross.round_id,
            index=cross.finding.index,
            status="failed",
            finding=cross.finding.kind.value,
            detail=cross.finding.detail,
        )
    for summary in report.summaries:
        emit(
            record="summary",
            party=summary.party,
            unit=summary.unit.value,
            epsilon_cumulative=summary.epsilon,
            delta=summary.delta,
            accountant=summary.accountant,
            budget_epsilon=summary.budget_epsilon,
            status="ok" if summary.ledger_ok else "failed",
            detail=f"{summary.spends} spends, {summary.refusals} refusals" + ("; over budget" if summary.over_budget else ""),
        )
    for row in report.entries:
        emit(
            record="entry",
            ledger=row.ledger,
            party=row.party,
            index=row.index,
            time=row.time,
            round=row.round_id,
            unit=row.unit.value,
            kind=row.kind.value,
            mechanism=row.mechanism,
            parameters=json.dumps(dict(row.parameters), sort_keys=True),
            delta=row.delta,
            accountant=row.accountant,
            epsilon_increment_claimed=row.claimed_increment,
            epsilon_cumulative_claimed=row.claimed_cumulative,
            epsilon_increment=row.epsilon_increment,
            epsilon_cumulative=row.epsilon_cumulative,
            budget_epsilon=row.budget_epsilon,
            status="failed" if row.findings else "ok",
            finding=" ".join(row.findings),
        )
    for round_row in report.rounds:
        emit(
            record="round",
            index=round_row.index,
            time=round_row.time,
            round=round_row.round_id,
            cohort_size=round_row.cohort_size,
            threshold=round_row.threshold,
            mode=round_row.mode,
            dim=round_row.dim,
            bits=round_row.bits,
            outcome=round_row.outcome,
            abort_reason=round_row.abort_reason,
            detail="; ".join(round_row.privacy),
            **dict(round_row.survivors),
        )
    for note in report.notes:
        emit(record="note", detail=note)
    return buffer.getvalue()


# --------------------------------------------------------------------------- figures


def _plot_text(text: str, limit: int = 40) -> str:
    """Ledger text made safe for matplotlib (no mathtext) and short enough for a legend."""
    clipped = text if len(text) <= limit else text[: limit - 1] + "…"
    return clipped.replace("\\", "\\\\").replace("$", r"\$")


def _png_data_uri(draw: Callable[[Any], None], *, width: float = 8.0, height: float = 4.0) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    draw(axes)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Software": None})
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _set_round_ticks(axes: Any, rounds: Sequence[str]) -> None:
    step = max(1, math.ceil(len(rounds) / 20))
    positions = list(range(0, len(rounds), step))
    axes.set_xticks(positions)
    axes.set_xticklabels([_plot_text(rounds[i], 16) for i in positions], rotation=45, ha="right", fontsize=8)
    axes.set_xlim(-0.5, max(len(rounds) - 0.5, 0.5))


def _epsilon_figure(report: AuditReport, unit: PrivacyUnit) -> str | None:
    rows = [row for row in report.entries if row.unit is unit and row.epsilon_cumulative is not None]
    if not rows:
        return None
    position = {round_id: i for i, round_id in enumerate(report.round_order)}
    parties = list(dict.fromkeys(row.party for row in rows))

    def draw(axes: Any) -> None:
        for number, party in enumerate(parties):
            color = f"C{number % 10}"
            spends = [row for row in rows if row.party == party and row.kind is EntryKind.SPEND]
            refusals = [row for row in rows if row.party == party and row.kind is EntryKind.REFUSAL]
            if spends:
                axes.plot(
                    [position[row.round_id] for row in spends],
                    [row.epsilon_cumulative for row in spends],
                    marker="o",
                    drawstyle="steps-post",
                    color=color,
                    label=_plot_text(party),
                )
            if refusals:
                axes.scatter(
                    [position[row.round_id] for row in refusals],
                    [row.epsilon_cumulative for row in refusals],
                    marker="x",
                    s=80,
                    color=color,
                    label=_plot_text(f"{party}: refused"),
                )
            budgets = {row.budget_epsilon for row in rows if row.party == party and row.budget_epsilon is not None}
            for budget in budgets:
                axes.axhline(budget, linestyle="--", linewidth=1, color=color, alpha=0.7)
        axes.set_title(f"Cumulative {unit.value}-level epsilon per party (dashed: budget)")
        axes.set_xlabel("round")
        axes.set_ylabel("epsilon (recomputed)")
        axes.set_ylim(bottom=0)
        axes.grid(True, alpha=0.3)
        _set_round_ticks(axes, report.round_order)
        axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))

    return _png_data_uri(draw)


def _survivors_figure(report: AuditReport) -> str | None:
    if not report.rounds:
        return None

    def draw(axes: Any) -> None:
        series = [("cohort", [row.cohort_size for row in report.rounds])]
        series += [(stage.value, [row.survivors[stage.value] for row in report.rounds]) for stage in RoundStage]
        width = 0.8 / len(series)
        for number, (label, counts) in enumerate(series):
            offset = (number - (len(series) - 1) / 2) * width
            color = "0.3" if number == 0 else f"C{number - 1}"
            axes.bar([i + offset for i in range(len(report.rounds))], counts, width=width, color=color, label=label)
        for i, row in enumerate(report.rounds):
            axes.hlines(row.threshold, i - 0.45, i + 0.45, colors="red", linestyles="--", label="threshold t" if i == 0 else None)
            if row.outcome == "aborted":
                axes.annotate("aborted", (i, row.cohort_size), ha="center", va="bottom", color="red", fontsize=8)
        axes.set_title("Cohort size and survivors per protocol stage")
        axes.set_xlabel("round")
        axes.set_ylabel("parties")
        axes.yaxis.get_major_locator().set_params(integer=True)
        axes.grid(True, axis="y", alpha=0.3)
        _set_round_ticks(axes, [row.round_id for row in report.rounds])
        axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))

    return _png_data_uri(draw)


# --------------------------------------------------------------------------- HTML


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]], *, raw_cells: bool = False) -> str:
    head = "".join(f"<th>{_e(header)}</th>" for header in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell if raw_cells else _e(cell)}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:75em;color:#222;line-height:1.45}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ccc}
.verdict{font-size:1.15em;padding:.8em 1em;border-radius:6px;font-weight:600}
.ok{background:#e6f4ea;border:1px solid #34a853}.failed{background:#fce8e6;border:1px solid #d93025}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}th,td{border:1px solid #ccc;padding:.25em .5em;text-align:left;vertical-align:top}
th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}.bad{color:#b00020;font-weight:600}
code{font-size:.9em}img{max-width:100%;border:1px solid #ddd}.small{font-size:.85em;color:#555}
"""


def _status(ok: bool) -> str:
    return '<span class="ok-text">verified</span>' if ok else '<span class="bad">FAILED</span>'


def render_html(report: AuditReport) -> str:
    """The self-contained HTML report (figures inline, no scripts, no external fetch)."""
    audit = report.audit
    parts: list[str] = []
    parts.append(
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; style-src 'unsafe-inline'\">"
        "<title>secagg privacy audit</title>"
        f"<style>{_STYLE}</style></head><body>"
    )
    parts.append("<h1>Privacy audit of federated training</h1>")
    parts.append(f'<p class="verdict {"ok" if report.ok else "failed"}" id="verdict">{_e(report.verdict)}</p>')
    parts.append(f'<p class="small">Generated {_e(report.generated_at)} by <code>secagg audit report</code>.</p>')
    for note in report.notes:
        parts.append(f'<p class="bad">{_e(note)}</p>')

    parts.append(
        "<h2>How to read this report</h2><p>Each bank keeps a <em>privacy ledger</em>: a signed, tamper-evident list of "
        "every time it released information derived from its data. <em>Epsilon</em> (&epsilon;) measures the worst-case "
        "privacy loss; smaller is more private, and it only grows as rounds accumulate. It is stated together with "
        "<em>delta</em> (&delta;), the small probability that the bound fails. Two kinds of privacy are reported: "
        "<strong>example-level</strong> protects each customer record of a bank, <strong>participant-level</strong> "
        "protects whether and what a bank as a whole contributed. Every epsilon below was recomputed by this tool "
        "from the recorded noise parameters; the ledgers' own claims are only compared against it.</p>"
    )

    parts.append("<h2>Verification of each ledger</h2>")
    ledger_rows = []
    for ledger in audit.ledgers:
        findings = "<br>".join(_e(str(finding)) for finding in ledger.findings) or "none"
        key = (
            "–"
            if ledger.public_key is None
            else f"{ledger.public_key[:16]}… ({'pinned' if ledger.key_pinned else 'declared by the ledger, not pinned'})"
        )
        ledger_rows.append(
            [
                _e(ledger.path.name),
                _e(ledger.party or "–"),
                _e(len(ledger.entries)),
                _e("missing" if ledger.head_entries is None else ledger.head_entries),
                _e(key),
                _status(ledger.ok),
                findings,
            ]
        )
    if audit.server is not None:
        server = audit.server
        findings = "<br>".join(_e(str(finding)) for finding in server.findings) or "none"
        key = (
            "–"
            if server.public_key is None
            else f"{server.public_key[:16]}… ({'pinned' if server.key_pinned else 'declared, not pinned'})"
        )
        ledger_rows.append(
            [
                _e(server.path.name) + " (server)",
                _e(server.server or "–"),
                _e(len(server.entries)),
                _e("missing" if server.head_entries is None else server.head_entries),
                _e(key),
                _status(server.ok),
                findings,
            ]
        )
    parts.append(
        _table(
            ["file", "party", "entries", "signed head covers", "signing key", "status", "findings"], ledger_rows, raw_cells=True
        )
    )
    parts.append(
        '<p class="small">A ledger verifies when every entry is intact (SHA-256 hash chain), signed by the party\'s '
        "Ed25519 key, in sequence, not truncated (signed head file), and every epsilon it claims matches the "
        "recomputation. This is tamper evidence against anyone without the party's key; a party can rewrite its own "
        "ledger, which the cross-check against the server's records below is there to catch.</p>"
    )
    parts.append("<h2>Cross-check against the server's round records</h2>")
    if audit.server is None:
        parts.append(
            "<p>Not performed: no server ledger was given (<code>--server-ledger</code>). Without it, a party that "
            "rewrote or shortened its own ledger with its own key would not be detected.</p>"
        )
    else:
        if audit.cross_findings:
            parts.append(
                _table(
                    ["party", "round", "finding", "detail"],
                    [[c.party, c.round_id, c.finding.kind.value, c.finding.detail] for c in audit.cross_findings],
                )
            )
        else:
            parts.append(
                "<p>Every party whose masked input the server accepted charges that round in its ledger with the parameters the server recorded.</p>"
            )

    parts.append("<h2>Where each party stands</h2>")
    parts.append(
        _table(
            ["party", "privacy unit", "epsilon (recomputed)", "delta", "accountant", "budget", "spends", "refusals", "ledger"],
            [
                [
                    _e(s.party),
                    _e(UNIT_LABELS[s.unit]),
                    f'<span class="{"bad" if s.over_budget else ""}">{_e(_format_epsilon(s.epsilon))}</span>',
                    _e(_format_delta(s.delta)),
                    _e(s.accountant),
                    _e("–" if s.budget_epsilon is None else f"{s.budget_epsilon:g}"),
                    _e(s.spends),
                    _e(s.refusals),
                    _status(s.ledger_ok),
                ]
                for s in report.summaries
            ],
            raw_cells=True,
        )
    )

    parts.append("<h2>Cumulative epsilon per round</h2>")
    for unit in PrivacyUnit:
        uri = _epsilon_figure(report, unit)
        if uri is None:
            parts.append(f"<p>No {_e(UNIT_LABELS[unit])} spends recorded.</p>")
        else:
            alt = f"cumulative {unit.value}-level epsilon per party per round"
            parts.append(
                f'<figure><img alt="{_e(alt)}" src="{uri}"><figcaption>{_e(UNIT_LABELS[unit]).capitalize()}; crosses mark refused rounds.</figcaption></figure>'
            )

    if report.rounds:
        parts.append("<h2>Rounds as the server recorded them</h2>")
        uri = _survivors_figure(report)
        if uri is not None:
            parts.append(f'<figure><img alt="cohort size and survivors per round" src="{uri}"></figure>')
        stages = [stage.value for stage in RoundStage]
        parts.append(
            _table(
                [
                    "round",
                    "time",
                    "cohort",
                    "threshold",
                    "mode",
                    "dim",
                    "bits",
                    *stages,
                    "outcome",
                    "abort reason",
                    "DP parameters",
                ],
                [
                    [
                        r.round_id,
                        r.time,
                        str(r.cohort_size),
                        str(r.threshold),
                        r.mode,
                        str(r.dim),
                        str(r.bits),
                        *(str(r.survivors[stage]) for stage in stages),
                        r.outcome,
                        r.abort_reason or "",
                        "; ".join(r.privacy),
                    ]
                    for r in report.rounds
                ],
            )
        )

    parts.append("<h2>Every ledger entry: mechanisms and parameters</h2>")
    parts.append(
        _table(
            [
                "party",
                "#",
                "time",
                "round",
                "unit",
                "kind",
                "mechanism",
                "parameters",
                "delta",
                "accountant",
                "epsilon increment",
                "cumulative epsilon",
                "claimed cumulative",
                "budget",
                "findings",
            ],
            [
                [
                    r.party,
                    str(r.index),
                    r.time,
                    r.round_id,
                    r.unit.value,
                    r.kind.value,
                    MECHANISM_LABELS.get(r.mechanism, r.mechanism),
                    _parameters_text(r.parameters),
                    _format_delta(r.delta),
                    r.accountant,
                    _format_epsilon(r.epsilon_increment),
                    _format_epsilon(r.epsilon_cumulative),
                    _format_epsilon(r.claimed_cumulative),
                    "–" if r.budget_epsilon is None else f"{r.budget_epsilon:g}",
                    " ".join(r.findings),
                ]
                for r in report.entries
            ],
        )
    )
    parts.append(
        '<h2>Method</h2><p class="small">Hash: SHA-256 over a canonical JSON encoding of each entry without its hash and '
        "signature (sorted keys, no whitespace, ASCII escapes, shortest round-trip floats); signature: Ed25519 (RFC 8032) "
        "over a domain-separated message holding that hash; epsilon: composition of every recorded spend of the unit "
        "with the recorded accountant (RDP: Mironov 2017, converted by Balle et al. 2020; Skellam: Agarwal, Kairouz, Liu "
        "2021), tolerance 1e-6 relative. Limits: a party holding its own key can rewrite its whole ledger; only the "
        "cross-check against the server's signed round records, or a head kept from an earlier audit "
        "(<code>--anchor</code>), reveals that. Keep this audit's <code>.head</code> files for the next one.</p>"
    )
    parts.append("</body></html>\n")
    return "".join(parts)


def render(report: AuditReport, report_format: ReportFormat) -> str:
    if report_format is ReportFormat.HTML:
        return render_html(report)
    if report_format is ReportFormat.JSON:
        return render_json(report)
    return render_csv(report)
