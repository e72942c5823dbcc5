"""Agreeing one schema from the banks' drafts, and showing a bank what its draft reveals.

Each bank drafts a schema from its own file (``secagg train --draft-schema``,
:func:`clients.training.tabular.draft_schema`); the coordinator merges the drafts
(``secagg consortium schema merge``, :func:`merge_drafts`) into the schema the manifest
carries. The rules, applied column by column, never resolve a conflict silently:

* **Target.** The target column and its positive value must be the same in every draft;
  the negative values are the union of the drafts' (reported when they differ).
* **Columns.** Every draft must list the same columns (``drop`` removes columns from all
  drafts first); a column missing from some drafts is a conflict naming them.
* **Kinds.** A column must be numeric in every draft or categorical in every draft.
* **Categories.** The union of the drafts' categories, in code-point order (a draft lists
  them by decreasing frequency in its bank's file; the merged order reveals no ranking).
* **Numeric ranges.** The widest range: the smallest lower and the largest upper bound, in
  the common transform's scale. Transforms are reconciled: if some drafts chose ``log1p``
  (a heavy-tailed column) and others ``identity``, the merged column uses ``log1p`` and the
  identity drafts' bounds are mapped through it, which needs their lower bound to be >= 0
  (otherwise a conflict); every reconciliation is reported.
* **Missing values.** A missing-value indicator if any draft has one.
* **Statistics.** Drafts carry no means or scales (they are computed with secure
  aggregation); a draft with them is a conflict.
* **Order.** Columns in code-point order of their names, so the merge does not depend on
  the order the drafts are given in.

:func:`describe_draft` lists, for a bank's own review, everything its draft discloses
about its file before the bank sends it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from clients.training.tabular import (
    DEFAULT_CLIP_QUANTILE,
    DEFAULT_MAX_CATEGORIES,
    CategoricalColumn,
    Column,
    NumericColumn,
    TabularError,
    TabularSchema,
    Transform,
)


class SchemaConflict(TabularError):
    """The drafts disagree in a way the merge rules do not reconcile; every conflict is named."""

    def __init__(self, conflicts: Sequence[str]) -> None:
        self.conflicts = tuple(conflicts)
        super().__init__("the drafts cannot be merged:\n" + "\n".join(f"  - {conflict}" for conflict in self.conflicts))


@dataclass(frozen=True)
class MergedSchema:
    schema: TabularSchema
    notes: tuple[str, ...]
    """What the merge reconciled (transforms, negative values), for the coordinator to review."""


def _numeric_merge(
    name: str, columns: list[tuple[str, NumericColumn]], notes: list[str], conflicts: list[str]
) -> NumericColumn | None:
    transforms = {column.transform for _, column in columns}
    transform = Transform.LOG1P if Transform.LOG1P in transforms else Transform.IDENTITY
    lowers, uppers = [], []
    for draft, column in columns:
        lower, upper = column.lower, column.upper
        if column.transform is not transform:
            if lower < 0:
                conflicts.append(
                    f"column {name!r}: log1p in some drafts, but draft {draft} has values down to {lower:g} (< 0) under identity"
                )
                return None
            lower, upper = math.log1p(lower), math.log1p(upper)
        lowers.append(lower)
        uppers.append(upper)
    if len(transforms) > 1:
        identity = [draft for draft, column in columns if column.transform is Transform.IDENTITY]
        notes.append(f"column {name!r}: log1p chosen by some drafts; the bounds of {', '.join(identity)} mapped through log1p")
    return NumericColumn(name, min(lowers), max(uppers), transform, any(column.missing_indicator for _, column in columns))


def merge_drafts(drafts: Sequence[tuple[str, TabularSchema]], *, drop: Sequence[str] = ()) -> MergedSchema:
    """The agreed schema of ``drafts`` (``(name, schema)`` pairs); :class:`SchemaConflict` lists every conflict."""
    if len(drafts) < 1:
        raise TabularError("merging needs at least one draft")
    conflicts: list[str] = []
    notes: list[str] = []
    targets = {(schema.target, schema.positive) for _, schema in drafts}
    if len(targets) > 1:
        conflicts.append(
            "target: " + "; ".join(f"{name} predicts {schema.target} == {schema.positive!r}" for name, schema in drafts)
        )
    target, positive = drafts[0][1].target, drafts[0][1].positive
    negatives = [set(schema.negative or ()) for _, schema in drafts]
    negative = sorted(set().union(*negatives))
    if any(values != set(negative) for values in negatives):
        notes.append(f"target: the negative values are the union of the drafts' ({', '.join(map(repr, negative))})")
    by_name: dict[str, list[tuple[str, Column]]] = {}
    for draft, schema in drafts:
        for column in schema.columns:
            if column.name not in drop:
                by_name.setdefault(column.name, []).append((draft, column))
    names = [draft for draft, _ in drafts]
    merged: list[Column] = []
    for name in sorted(by_name):
        columns = by_name[name]
        present = [draft for draft, _ in columns]
        if len(present) != len(drafts):
            absent = [draft for draft in names if draft not in present]
            conflicts.append(f"column {name!r} is in {', '.join(present)} but not in {', '.join(absent)} (drop it, or add it)")
            continue
        kinds = {type(column) for _, column in columns}
        if len(kinds) > 1:
            numeric = [draft for draft, column in columns if isinstance(column, NumericColumn)]
            categorical = [draft for draft, column in columns if isinstance(column, CategoricalColumn)]
            conflicts.append(f"column {name!r} is numeric in {', '.join(numeric)} and categorical in {', '.join(categorical)}")
            continue
        if all(isinstance(column, CategoricalColumn) for _, column in columns):
            categories = sorted({category for _, column in columns for category in column.categories})  # type: ignore[union-attr]
            merged.append(CategoricalColumn(name, tuple(categories)))
            continue
        numeric_columns = [(draft, column) for draft, column in columns if isinstance(column, NumericColumn)]
        standardized = [draft for draft, column in numeric_columns if column.standardization is not None]
        if standardized:
            conflicts.append(f"column {name!r} carries a mean and scale in {', '.join(standardized)}: drafts carry none")
            continue
        merged_column = _numeric_merge(name, numeric_columns, notes, conflicts)
        if merged_column is not None:
            merged.append(merged_column)
    if conflicts:
        raise SchemaConflict(conflicts)
    if not merged:
        raise TabularError("the merged schema has no column")
    return MergedSchema(TabularSchema(target, positive, tuple(merged), tuple(negative) if negative else None), tuple(notes))


def describe_draft(schema: TabularSchema, *, source: str = "the file") -> str:
    """Everything ``schema`` (a draft) discloses about ``source``, one line per item, for the bank to review."""
    lines = [f"What this draft discloses about {source} (review it before sending it to the coordinator):"]
    negative = f", negative {', '.join(map(repr, schema.negative))}" if schema.negative else ""
    lines.append(f"  target {schema.target!r}: the values it holds (positive {schema.positive!r}{negative})")
    quantile = f"{100 * DEFAULT_CLIP_QUANTILE:g}% and {100 * (1 - DEFAULT_CLIP_QUANTILE):g}%"
    for column in schema.columns:
        if isinstance(column, NumericColumn):
            scale = " after log1p (chosen because the column is heavy-tailed)" if column.transform is Transform.LOG1P else ""
            missing = "some values are missing" if column.missing_indicator else "no value is missing"
            lines.append(
                f"  {column.name!r} (numeric): its {quantile} quantiles{scale}, [{column.lower:.6g}, {column.upper:.6g}]; {missing}"
            )
            if column.standardization is not None:
                lines.append(f"      and a mean {column.standardization.mean:.6g} and scale {column.standardization.scale:.6g}")
        else:
            shown = ", ".join(column.categories[:12]) + (", …" if len(column.categories) > 12 else "")
            capped = f" (the {DEFAULT_MAX_CATEGORIES} most frequent)" if len(column.categories) >= DEFAULT_MAX_CATEGORIES else ""
            lines.append(
                f"  {column.name!r} (categorical): {len(column.categories)} values present{capped}, listed by decreasing "
                f"frequency (the order ranks them): {shown}"
            )
    lines.append("  and which columns hold only numbers. No row, count, sum or mean leaves with it.")
    return "\n".join(lines)
