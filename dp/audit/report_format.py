"""The auditor's report formats, apart from the :mod:`dp.audit.report` package so that the
CLI can offer them as choices without importing the report machinery at start-up."""

from __future__ import annotations

from enum import Enum


class ReportFormat(str, Enum):
    HTML = "html"
    JSON = "json"
    CSV = "csv"
