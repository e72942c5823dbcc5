"""The auditor's report: verify every ledger, then say what was spent, for whom, and whether
to believe it.

* :mod:`dp.audit.report.model`: :func:`run_audit` (verification and cross-check),
  :func:`build_report` and the :class:`AuditReport` it returns, with its rows and verdict;
* :mod:`dp.audit.report.html_page`: :func:`render_html`, one self-contained HTML page
  rendered by an autoescaping Jinja2 environment from the package's templates;
* :mod:`dp.audit.report.exports`: :func:`render_json` and :func:`render_csv`, the same
  content as data;
* :mod:`dp.audit.report.figures`: the PNG figures, as data URIs.

Invariants, across all three renderings:

* every epsilon is the verifier's recomputation, never the ledger's claim;
* the verdict's first clause says whether everything verified, before any epsilon;
* everything taken from a ledger is attacker-controlled text: it is HTML-escaped by
  Jinja2 (one escaping path, nothing marked safe), ``$`` is escaped before it reaches
  matplotlib's mathtext, and CSV cells a spreadsheet would run as a formula are
  prefixed with ``'`` (OWASP, "CSV Injection"); the HTML carries a
  Content-Security-Policy that forbids scripts and any network fetch;
* a round that declared no differential privacy is reported as an exact release,
  never as a DP round.
"""

from __future__ import annotations

from dp.audit.report.exports import render_csv, render_json
from dp.audit.report.html_page import render_html
from dp.audit.report.model import (
    Audit,
    AuditReport,
    EntryRow,
    RoundRow,
    UnitSummary,
    build_report,
    run_audit,
)
from dp.audit.report_format import ReportFormat

__all__ = [
    "Audit",
    "AuditReport",
    "EntryRow",
    "ReportFormat",
    "RoundRow",
    "UnitSummary",
    "build_report",
    "render",
    "render_csv",
    "render_html",
    "render_json",
    "run_audit",
]


def render(report: AuditReport, report_format: ReportFormat) -> str:
    """``report`` in ``report_format``."""
    if report_format is ReportFormat.HTML:
        return render_html(report)
    if report_format is ReportFormat.JSON:
        return render_json(report)
    return render_csv(report)
