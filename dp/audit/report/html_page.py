"""The report as one self-contained HTML page, rendered by Jinja2.

Invariants:

* one escaping path: the :func:`environment` has autoescaping on for every template and
  the templates mark nothing safe, so every value, ledger text above all (party and round
  ids, parameters, finding details), is HTML-escaped in element content and in attribute
  values alike; no markup is built in Python;
* the page carries a Content-Security-Policy that forbids scripts, plugins, forms, a
  base URL and any network fetch: images may only be ``data:`` URIs, and each figure's
  URI is checked to be exactly a base64 PNG before it reaches the template;
* undefined template variables are errors (``StrictUndefined``), never empty text;
* the templates ship as package data (``dp/audit/report/templates``); Jinja2 is imported
  when a page is rendered, so verification alone needs none.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from dp.audit.chain import parse_time
from dp.audit.privacy_ledger import PrivacyUnit
from dp.audit.report.figures import (
    FigureImage,
    epsilon_figure,
    is_png_data_uri,
    survivors_figure,
)
from dp.audit.report.model import (
    AuditReport,
    format_budget,
    format_delta,
    format_epsilon,
    parameters_text,
)
from dp.audit.round_records import RoundStage

if TYPE_CHECKING:
    import jinja2

__all__ = ["CONTENT_SECURITY_POLICY", "MECHANISM_LABELS", "UNIT_LABELS", "environment", "render_html", "short_time"]

TEMPLATE = "report.html.j2"
CONTENT_SECURITY_POLICY = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"
UNIT_LABELS = {
    PrivacyUnit.EXAMPLE: "example-level (a bank's customers)",
    PrivacyUnit.PARTICIPANT: "participant-level (a bank's whole contribution)",
}
MECHANISM_LABELS = {
    "gaussian": "DP-SGD: Gaussian noise in local training",
    "skellam": "Skellam noise in the secure sum",
}


def short_time(text: str) -> str:
    """A ledger time as ``YYYY-MM-DD HH:MM:SS`` (UTC); text that is not a ledger time is
    returned unchanged (the template then shows it as it is)."""
    try:
        moment = parse_time(text)
    except ValueError:
        return text
    return moment.strftime("%Y-%m-%d %H:%M:%S")


@functools.cache
def environment() -> jinja2.Environment:
    """The one Jinja2 environment of the report: package templates, autoescape on for
    every template whatever its name, undefined variables an error."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("dp.audit.report", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(
        epsilon=format_epsilon, delta=format_delta, budget=format_budget, parameters=parameters_text, short_time=short_time
    )
    return env


def _checked(image: FigureImage | None) -> FigureImage | None:
    if image is not None and not is_png_data_uri(image.uri):
        raise ValueError("a figure's URI is not a base64 PNG data URI")
    return image


def render_html(report: AuditReport) -> str:
    """The self-contained HTML report (figures inline, no scripts, no external fetch)."""
    epsilon_figures = [(UNIT_LABELS[unit], _checked(epsilon_figure(report, unit))) for unit in PrivacyUnit]
    return (
        environment()
        .get_template(TEMPLATE)
        .render(
            report=report,
            content_security_policy=CONTENT_SECURITY_POLICY,
            unit_labels=UNIT_LABELS,
            mechanism_labels=MECHANISM_LABELS,
            stages=[stage.value for stage in RoundStage],
            epsilon_figures=epsilon_figures,
            survivors_figure=_checked(survivors_figure(report)),
        )
    )
