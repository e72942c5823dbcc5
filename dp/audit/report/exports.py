"""The report as data: JSON (:func:`render_json`) and one CSV table (:func:`render_csv`).

Both carry the same content as the HTML page. Numbers are exact (JSON numbers; ``repr``
in CSV, which round-trips every double). Ledger text is attacker-controlled: a CSV cell
that a spreadsheet would evaluate as a formula (it starts with ``=``, ``+``, ``-``,
``@``, a tab or a carriage return) is prefixed with ``'`` (OWASP, "CSV Injection").
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from dp.audit.report.model import AuditReport
from dp.audit.round_records import RoundStage

__all__ = ["CSV_COLUMNS", "csv_cell", "render_csv", "render_json"]


def render_json(report: AuditReport) -> str:
    return json.dumps(report.to_dict(), indent=2, sort_keys=True, allow_nan=False) + "\n"


CSV_COLUMNS = (
    "record",
    "ledger",
    "party",
    "index",
    "time",
    "round",
    "round_number",
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


def csv_cell(value: Any) -> str:
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
    server-ledger, finding, cross-check, summary, entry, round, note)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()

    def emit(**cells: Any) -> None:
        writer.writerow({column: csv_cell(cells.get(column)) for column in CSV_COLUMNS})

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
            round_number=row.round_number,
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
        if round_row.differentially_private:
            privacy = "; ".join(round_row.privacy)
        elif round_row.exact_release:
            privacy = "no differential privacy: the sum was released exactly"
        else:
            privacy = "no differential privacy declared"
        emit(
            record="round",
            index=round_row.index,
            time=round_row.time,
            round=round_row.round_id,
            round_number=round_row.number,
            cohort_size=round_row.cohort_size,
            threshold=round_row.threshold,
            mode=round_row.mode,
            dim=round_row.dim,
            bits=round_row.bits,
            outcome=round_row.outcome,
            abort_reason=round_row.abort_reason,
            detail=privacy,
            **dict(round_row.survivors),
        )
    for note in report.notes:
        emit(record="note", detail=note)
    return buffer.getvalue()
