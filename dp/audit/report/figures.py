"""The report's figures: PNGs drawn with matplotlib's Agg canvas, as base64 data URIs.

Invariants:

* no pyplot and no global backend change: each figure is a :class:`matplotlib.figure.Figure`
  on its own :class:`~matplotlib.backends.backend_agg.FigureCanvasAgg`, drawn under an
  ``rc_context`` that turns TeX off, so mathtext is the only parser that sees text;
* ledger text (party ids in legends) reaches matplotlib only through :func:`plot_text`,
  which escapes every ``$`` (an even number of unescaped ``$`` would switch the label to
  mathtext) and keeps a leading ``_`` from hiding the party from the legend;
* the x axis counts rounds 1..R (:attr:`dp.audit.report.model.RoundRow.number`), never
  round ids, which stay in the tables;
* parties whose cumulative epsilon is the same in every round are drawn once, labelled
  with all their names, rather than as lines hidden under one another;
* matplotlib is imported only when a figure is drawn, so verification needs none.
"""

from __future__ import annotations

import base64
import io
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dp.audit.privacy_ledger import EntryKind, PrivacyUnit
from dp.audit.report.model import AuditReport, EntryRow
from dp.audit.round_records import RoundOutcome, RoundStage

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = [
    "EpsilonSeries",
    "FigureImage",
    "epsilon_figure",
    "epsilon_series",
    "is_png_data_uri",
    "plot_text",
    "survivors_figure",
]

PNG_DATA_URI_PREFIX = "data:image/png;base64,"
_PNG_DATA_URI = re.compile(r"data:image/png;base64,[A-Za-z0-9+/]+={0,2}")
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "h", "<", ">")
_LINESTYLES = ("-", "--", "-.", ":")
_BUDGET_SCALE = 2.0
"""A budget more than this many times the highest epsilon is named, not drawn."""
_SIGNIFICANT_DIGITS = 9
"""Series equal to this many significant digits are drawn as one line: closer than any
plot can separate, far coarser than the floating-point noise between equal histories."""


@dataclass(frozen=True, slots=True)
class FigureImage:
    """One figure: its PNG as a data URI, and the text that goes with it."""

    uri: str
    alt: str
    caption: str


@dataclass(frozen=True, slots=True)
class EpsilonSeries:
    """One line of an epsilon figure: the parties it stands for (several when their
    epsilons coincide in every round), their spends and their refusals, each as
    (round number, recomputed cumulative epsilon), in round order, and their budgets.
    An unbounded epsilon has no point (the tables say "unbounded")."""

    parties: tuple[str, ...]
    spends: tuple[tuple[int, float], ...]
    refusals: tuple[tuple[int, float], ...]
    budgets: tuple[float, ...]


def is_png_data_uri(uri: str) -> bool:
    """Whether ``uri`` is exactly a base64 PNG data URI (nothing else may reach ``src``)."""
    return _PNG_DATA_URI.fullmatch(uri) is not None


def plot_text(text: str, limit: int = 40) -> str:
    """Ledger text made safe for matplotlib and short enough for a legend: clipped to
    ``limit`` characters, every ``$`` escaped so mathtext never parses it, and a leading
    ``_`` (which would hide the label from the legend) preceded by a space."""
    clipped = text if len(text) <= limit else text[: limit - 1] + "…"
    escaped = clipped.replace("$", r"\$")
    return " " + escaped if escaped.startswith("_") else escaped


def _points(rows: Sequence[EntryRow], kind: EntryKind) -> tuple[tuple[int, float], ...]:
    return tuple(
        (row.round_number, row.epsilon_cumulative)
        for row in sorted(rows, key=lambda row: row.round_number)
        if row.kind is kind and row.epsilon_cumulative is not None and math.isfinite(row.epsilon_cumulative)
    )


def _shape(points: tuple[tuple[int, float], ...]) -> tuple[tuple[int, float], ...]:
    return tuple((number, float(f"{epsilon:.{_SIGNIFICANT_DIGITS}g}")) for number, epsilon in points)


def epsilon_series(report: AuditReport, unit: PrivacyUnit) -> tuple[EpsilonSeries, ...]:
    """The lines of the epsilon figure of ``unit``, parties with equal epsilons merged."""
    by_party: dict[str, list[EntryRow]] = {}
    for row in report.entries:
        if row.unit is unit and row.epsilon_cumulative is not None:
            by_party.setdefault(row.party, []).append(row)
    groups: dict[tuple[object, ...], list[str]] = {}
    points: dict[str, tuple[tuple[tuple[int, float], ...], tuple[tuple[int, float], ...]]] = {}
    budgets: dict[str, set[float]] = {}
    for party, of_party in by_party.items():
        spends, refusals = _points(of_party, EntryKind.SPEND), _points(of_party, EntryKind.REFUSAL)
        points[party] = (spends, refusals)
        budgets[party] = {row.budget_epsilon for row in of_party if row.budget_epsilon is not None}
        groups.setdefault((_shape(spends), _shape(refusals)), []).append(party)
    series = []
    for parties in groups.values():
        spends, refusals = points[parties[0]]
        budget_values = sorted(set().union(*(budgets[party] for party in parties)))
        series.append(EpsilonSeries(parties=tuple(parties), spends=spends, refusals=refusals, budgets=tuple(budget_values)))
    return tuple(series)


def _png_data_uri(draw: Callable[[Axes], None], *, width: float = 10.0, height: float = 4.2) -> str:
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    with matplotlib.rc_context({"text.usetex": False}):
        figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
        FigureCanvasAgg(figure)
        axes = figure.add_subplot()
        draw(axes)
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", metadata={"Software": None})
    return PNG_DATA_URI_PREFIX + base64.b64encode(buffer.getvalue()).decode("ascii")


def _set_round_ticks(axes: Axes, count: int) -> None:
    step = max(1, math.ceil(count / 25))
    axes.set_xticks(list(range(1, count + 1, step)))
    axes.set_xlim(0.5, max(count, 1) + 0.5)
    axes.set_xlabel("round number (as in the tables)")


def _mark_rounds_without_dp(axes: Axes, report: AuditReport) -> None:
    for number, row in enumerate(report.exact_releases):
        axes.axvspan(
            row.number - 0.5,
            row.number + 0.5,
            color="0.85",
            zorder=0,
            label="no DP: released exactly" if number == 0 else None,
        )


def _legend_label(parties: Sequence[str]) -> str:
    if len(parties) == 1:
        return plot_text(parties[0])
    shown = " = ".join(plot_text(party, 20) for party in parties[:4])
    more = "" if len(parties) <= 4 else f" and {len(parties) - 4} more"
    return f"{shown}{more} (equal, one line)"


def _budget_label(budget: float, series: Sequence[EpsilonSeries]) -> str:
    parties = [party for line in series if budget in line.budgets for party in line.parties]
    owners = ", ".join(plot_text(party, 16) for party in parties) if len(parties) <= 3 else f"{len(parties)} parties"
    return f"budget {budget:g} ({owners})"


def epsilon_figure(report: AuditReport, unit: PrivacyUnit) -> FigureImage | None:
    """Cumulative recomputed epsilon of ``unit`` per party per round, with the budgets.

    Where lines of different parties overlap (equal up to some round), each line is drawn
    narrower than the one before it, so every line stays visible at the edges of the
    ones beneath. A budget far above every epsilon is named in the legend instead of
    flattening the curves."""
    series = epsilon_series(report, unit)
    if not series:
        return None
    epsilons = [point[1] for line in series for point in (*line.spends, *line.refusals)]
    highest = max(epsilons, default=0.0)
    budgets = sorted({budget for line in series for budget in line.budgets})
    drawn = [budget for budget in budgets if highest <= 0 or budget <= _BUDGET_SCALE * highest]

    def draw(axes: Axes) -> None:
        _mark_rounds_without_dp(axes, report)
        for number, line in enumerate(series):
            layer = min(len(series) - 1 - number, 4)
            color = f"C{number % 10}"
            label = _legend_label(line.parties)
            if line.spends:
                axes.plot(
                    [point[0] for point in line.spends],
                    [point[1] for point in line.spends],
                    marker=_MARKERS[number % len(_MARKERS)],
                    markersize=5 + 2 * layer,
                    linewidth=1.6 + 1.4 * layer,
                    linestyle=_LINESTYLES[(number // 10) % len(_LINESTYLES)],
                    drawstyle="steps-post",
                    color=color,
                    zorder=2 + number,
                    label=label,
                )
            if line.refusals:
                axes.scatter(
                    [point[0] for point in line.refusals],
                    [point[1] for point in line.refusals],
                    marker="x",
                    s=90,
                    linewidths=2.5,
                    color=color,
                    zorder=2 + len(series) + number,
                    label=f"{label}: refused",
                )
        for number, budget in enumerate(budgets):
            label = _budget_label(budget, series)
            if budget in drawn:
                axes.axhline(budget, linestyle=(0, (6, 2 + 2 * number)), linewidth=1.2, color="0.25", zorder=1, label=label)
            else:
                axes.plot([], [], linestyle="none", label=f"{label}: above the plotted range")
        axes.set_title(f"Cumulative {unit.value}-level epsilon per party (recomputed)")
        axes.set_ylabel("epsilon")
        top = max([highest, *drawn])
        axes.set_ylim(bottom=0, top=(top if math.isfinite(top) and top > 0 else 1.0) * 1.12)
        axes.grid(True, alpha=0.3)
        _set_round_ticks(axes, len(report.round_order))
        axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))

    notes = []
    if any(line.refusals for line in series):
        notes.append("Crosses mark refused contributions.")
    if drawn:
        notes.append("Dashed horizontal lines are the budgets.")
    if len(drawn) < len(budgets):
        notes.append("A budget far above every epsilon is named in the legend, not drawn.")
    caption = " ".join(notes)
    if len(series) > 1:
        caption += " Where lines overlap, the line drawn wider underneath shows at the edges."
    if any(len(line.parties) > 1 for line in series):
        caption += " Parties whose epsilon is equal in every round share one line, labelled with all their names."
    if report.exact_releases:
        caption += " Grey bands mark rounds released exactly, without differential privacy."
    return FigureImage(
        uri=_png_data_uri(draw),
        alt=f"cumulative {unit.value}-level epsilon per party per round",
        caption=caption.strip(),
    )


def survivors_figure(report: AuditReport) -> FigureImage | None:
    """Cohort size and survivors of every protocol stage per round, with the threshold."""
    if not report.rounds:
        return None

    def draw(axes: Axes) -> None:
        from matplotlib.ticker import MaxNLocator

        _mark_rounds_without_dp(axes, report)
        series = [("cohort", [row.cohort_size for row in report.rounds])]
        series += [(stage.value, [row.survivors[stage.value] for row in report.rounds]) for stage in RoundStage]
        width = 0.8 / len(series)
        for number, (label, counts) in enumerate(series):
            offset = (number - (len(series) - 1) / 2) * width
            color = "0.3" if number == 0 else f"C{number - 1}"
            axes.bar([row.number + offset for row in report.rounds], counts, width=width, color=color, label=label)
        axes.hlines(
            [row.threshold for row in report.rounds],
            [row.number - 0.45 for row in report.rounds],
            [row.number + 0.45 for row in report.rounds],
            colors="red",
            linestyles="--",
            label="threshold t",
        )
        for row in report.rounds:
            if row.outcome == RoundOutcome.ABORTED.value:
                axes.annotate("aborted", (row.number, row.cohort_size), ha="center", va="bottom", color="red", fontsize=8)
        axes.set_title("Cohort size and survivors per protocol stage")
        axes.set_ylabel("parties")
        axes.set_ylim(0, max(row.cohort_size for row in report.rounds) * 1.15)
        axes.yaxis.set_major_locator(MaxNLocator(integer=True))
        axes.grid(True, axis="y", alpha=0.3)
        _set_round_ticks(axes, len(report.round_order))
        axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))

    return FigureImage(
        uri=_png_data_uri(draw),
        alt="cohort size and survivors per protocol stage per round",
        caption="Bars: invited cohort, then the parties whose message the server accepted at each stage; "
        "red dashes: the threshold t.",
    )
