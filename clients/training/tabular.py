"""A bank's tabular data, turned into model features by rules the consortium agreed.

Everything here is numpy and the standard library (no pandas, no torch, nothing
unpickled): a CSV file (``.csv`` or ``.csv.gz``) is read with :mod:`csv` into a
:class:`RawTable` of strings, and a :class:`TabularSchema` turns it into a float
feature matrix and a 0/1 label vector.

Preprocessing rules (:class:`Preprocessor`), column by column:

* **Kinds.** A column is *numeric* if every non-missing cell parses as a finite
  decimal number, else *categorical* (:func:`infer_kinds`). Missing cells are the
  empty string, ``NA``, ``NaN``, ``null`` and ``None`` (any case, surrounding spaces
  ignored).
* **Numeric.** The value is transformed (``identity``, or ``log1p`` for a
  non-negative heavy-tailed column), clipped to the agreed ``[lower, upper]`` (in the
  transformed scale), then standardised, ``(v - mean) / scale``. A missing value
  becomes 0 (the mean after standardisation); when the schema asks for it, an extra
  0/1 feature ``<column>=__missing__`` says the value was missing.
* **Categorical.** One-hot over the agreed categories, at most ``max_categories`` of
  them (the schema draft keeps the most frequent), plus one ``<column>=__other__``
  feature for any value not in the list (an unseen category, or one beyond the cap)
  and one ``<column>=__missing__`` feature for a missing value. A category outside the
  list therefore never fails and never creates a new feature: every bank produces the
  same feature layout.
* **Target.** ``1`` where the target column equals ``positive`` (after stripping
  spaces), ``0`` where it equals one of the schema's ``negative`` values (or, when the
  schema names none, the one other value the column holds). Any other value, and a
  missing one, is refused with its row number: a stray ``defaulted`` is never silently
  counted as negative.
* **Errors** name the data row (1-based, the header not counted) and the value.

Which statistics need other banks' data, and where they come from:

* The column list, kinds, categories, clipping ranges and transforms are agreed in
  advance: they are the consortium's :class:`TabularSchema` file, shared by every bank
  (``secagg train --schema``). :func:`draft_schema` proposes one from a single party's
  data for people to review; it reveals that party's categories and quantiles, so it
  is run on public or synthetic data, or by a bank that accepts to share them.
* The standardisation means and scales are either in the schema too, or computed
  *with secure aggregation* (:func:`moment_sums` and :func:`statistics_from_sums`):
  each bank sends its row count and, per numeric column, the sum and the sum of
  squares of its clipped values rescaled to [0, 1]; the server learns only the
  consortium's totals. Those totals are exact (no DP noise): they reveal the
  consortium-wide mean and variance of each column, and nothing about one bank
  beyond what the totals of at least t banks reveal.
* Never by pooling raw rows.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np

from dp.atomic_files import PUBLIC_MODE, write_atomic

SCHEMA_FORMAT = "secagg-tabular-schema/1"
MISSING_TOKENS = frozenset({"", "na", "nan", "null", "none"})
DEFAULT_MAX_CATEGORIES = 32
DEFAULT_CLIP_QUANTILE = 0.005
"""The schema draft clips numeric columns to their [0.5%, 99.5%] quantiles."""
HEAVY_TAIL_RATIO = 20.0
"""The draft uses ``log1p`` for a non-negative column whose upper clip exceeds 20 x (median + 1)."""
MAX_CSV_BYTES = 1 << 30
OTHER = "__other__"
MISSING = "__missing__"


class TabularError(ValueError):
    """Base error of :mod:`clients.training.tabular`: bad data, a bad schema, or a mismatch between them."""


class ColumnKind(str, Enum):
    NUMERIC = "numeric"
    CATEGORICAL = "categorical"


class Transform(str, Enum):
    IDENTITY = "identity"
    LOG1P = "log1p"

    def apply(self, values: np.ndarray) -> np.ndarray:
        if self is Transform.LOG1P:
            if np.any(values < 0):
                raise TabularError("log1p is only agreed for non-negative columns, but a value is negative")
            return np.log1p(values)
        return values


# --------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class RawTable:
    """A CSV table as strings: ``cells[i, j]`` is row i of ``columns[j]`` (spaces stripped)."""

    columns: tuple[str, ...]
    cells: np.ndarray = field(repr=False)
    row_numbers: np.ndarray | None = field(default=None, repr=False, compare=False)
    """The 1-based data row of each row in the file it was read from (None: 1..rows)."""

    def __post_init__(self) -> None:
        if self.cells.ndim != 2 or self.cells.shape[1] != len(self.columns):
            raise TabularError(f"cells of shape {self.cells.shape} do not match {len(self.columns)} columns")
        if len(set(self.columns)) != len(self.columns):
            duplicated = sorted({name for name in self.columns if self.columns.count(name) > 1})
            raise TabularError(f"duplicate column names: {duplicated}")
        self.cells.setflags(write=False)

    @property
    def rows(self) -> int:
        return int(self.cells.shape[0])

    def column(self, name: str) -> np.ndarray:
        try:
            return self.cells[:, self.columns.index(name)]
        except ValueError:
            raise TabularError(f"the data has no column {name!r} (columns: {', '.join(self.columns)})") from None

    def take(self, rows: np.ndarray) -> RawTable:
        chosen = np.asarray(rows)
        return RawTable(self.columns, self.cells[chosen].copy(), self.data_row_numbers()[chosen])

    def data_row_numbers(self) -> np.ndarray:
        """The 1-based data row numbers of the rows, in the file they came from."""
        if self.row_numbers is not None:
            return self.row_numbers
        return np.arange(1, self.rows + 1)

    def to_csv_bytes(self) -> bytes:
        text = io.StringIO(newline="")
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(self.columns)
        writer.writerows(self.cells.tolist())
        return text.getvalue().encode("utf-8")


def parse_csv(data: bytes, *, source: str = "<bytes>") -> RawTable:
    """Parse UTF-8 CSV bytes with a header row; every row must have the header's width."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise TabularError(f"{source} is not UTF-8 text: {exc}") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        raise TabularError(f"{source} is empty") from None
    except csv.Error as exc:
        raise TabularError(f"{source}: malformed CSV header: {exc}") from None
    columns = tuple(name.strip() for name in header)
    if not columns or any(not name for name in columns):
        raise TabularError(f"{source}: the header has an empty column name")
    try:
        rows = [row for row in reader if row]
    except csv.Error as exc:
        raise TabularError(f"{source}: malformed CSV at line {reader.line_num}: {exc}") from None
    bad = next((index for index, row in enumerate(rows) if len(row) != len(columns)), None)
    if bad is not None:
        raise TabularError(f"{source}: data row {bad + 1} has {len(rows[bad])} cells, the header has {len(columns)}")
    if not rows:
        raise TabularError(f"{source} has a header but no data rows")
    cells = np.char.strip(np.array(rows, dtype=str))
    return RawTable(columns, cells)


def read_csv(path: Path) -> RawTable:
    """Read ``path`` (``.csv``, or gzip-compressed ``.csv.gz``), at most 1 GiB uncompressed."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise TabularError(f"cannot read {path}: {exc.strerror}") from None
    if path.suffix == ".gz":
        try:
            with gzip.GzipFile(fileobj=io.BytesIO(raw)) as archive:
                raw = archive.read(MAX_CSV_BYTES + 1)
        except (OSError, EOFError) as exc:
            raise TabularError(f"{path} is not a valid gzip file: {exc}") from None
    if len(raw) > MAX_CSV_BYTES:
        raise TabularError(f"{path} is larger than {MAX_CSV_BYTES} bytes")
    return parse_csv(raw, source=str(path))


def missing_mask(values: np.ndarray) -> np.ndarray:
    """True where a cell is missing (see the module docstring for the tokens)."""
    return np.isin(np.char.lower(values.astype(str)), list(MISSING_TOKENS))


def _first_row(rows: np.ndarray | None, position: int) -> int:
    return int(rows[position]) if rows is not None else position + 1


def parse_numeric(values: np.ndarray, *, column: str, rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The column as float64 (NaN where missing) and its missing mask; refuses text and infinities,
    naming the first offending data row (``rows`` gives the row numbers; default 1..n) and its value."""
    missing = missing_mask(values)
    numbers = np.full(values.shape, np.nan)
    try:
        numbers[~missing] = values[~missing].astype(np.float64)
    except ValueError:
        for position in np.flatnonzero(~missing):
            try:
                float(values[position])
            except ValueError:
                raise TabularError(
                    f"column {column!r} is numeric in the schema, but data row {_first_row(rows, int(position))} holds "
                    f"{str(values[position])!r}"
                ) from None
        raise
    infinite = np.flatnonzero(~missing & ~np.isfinite(numbers))
    if infinite.size:
        first = int(infinite[0])
        raise TabularError(
            f"column {column!r}: data row {_first_row(rows, first)} holds {str(values[first])!r}, not a finite number"
        )
    return numbers, missing


def infer_kinds(table: RawTable, *, exclude: Sequence[str] = ()) -> dict[str, ColumnKind]:
    """Numeric where every non-missing cell is a finite number (and one at least is present), else categorical."""
    kinds: dict[str, ColumnKind] = {}
    for name in table.columns:
        if name in exclude:
            continue
        values = table.column(name)
        present = values[~missing_mask(values)]
        try:
            numbers = present.astype(np.float64)
            numeric = present.size > 0 and bool(np.all(np.isfinite(numbers)))
        except ValueError:
            numeric = False
        kinds[name] = ColumnKind.NUMERIC if numeric else ColumnKind.CATEGORICAL
    return kinds


# --------------------------------------------------------------------------- schema


@dataclass(frozen=True)
class Standardization:
    """``(v - mean) / scale`` of the transformed, clipped value."""

    mean: float
    scale: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.mean) and math.isfinite(self.scale) and self.scale > 0):
            raise TabularError(f"a standardisation needs a finite mean and a positive scale, got {self.mean}, {self.scale}")


@dataclass(frozen=True)
class NumericColumn:
    name: str
    lower: float
    upper: float
    transform: Transform = Transform.IDENTITY
    missing_indicator: bool = False
    standardization: Standardization | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.lower) and math.isfinite(self.upper) and self.lower < self.upper):
            raise TabularError(f"column {self.name!r}: the clipping range needs lower < upper, got [{self.lower}, {self.upper}]")

    @property
    def feature_names(self) -> tuple[str, ...]:
        return (self.name, f"{self.name}={MISSING}") if self.missing_indicator else (self.name,)


@dataclass(frozen=True)
class CategoricalColumn:
    name: str
    categories: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(set(self.categories)) != len(self.categories):
            raise TabularError(f"column {self.name!r} lists a category twice")
        if any(category in (OTHER, MISSING) or category.lower() in MISSING_TOKENS for category in self.categories):
            raise TabularError(f"column {self.name!r}: {OTHER}, {MISSING} and missing tokens are reserved, not categories")

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(f"{self.name}={category}" for category in self.categories) + (
            f"{self.name}={OTHER}",
            f"{self.name}={MISSING}",
        )


Column = NumericColumn | CategoricalColumn


@dataclass(frozen=True)
class TabularSchema:
    """What every bank of the consortium agreed: target, columns in order, and their rules."""

    target: str
    positive: str
    columns: tuple[Column, ...]
    negative: tuple[str, ...] | None = None
    """The target values that count as 0; None: the one other value the target column holds."""

    def __post_init__(self) -> None:
        if self.negative is not None:
            object.__setattr__(self, "negative", tuple(self.negative))
            if not self.negative or self.positive in self.negative or len(set(self.negative)) != len(self.negative):
                raise TabularError("negative must list distinct values, none of them the positive value")
        names = [column.name for column in self.columns]
        if len(set(names)) != len(names):
            raise TabularError("the schema lists a column twice")
        if self.target in names:
            raise TabularError(f"the target {self.target!r} cannot also be a feature column")
        if not self.columns:
            raise TabularError("the schema has no feature column")

    @property
    def numeric_columns(self) -> tuple[NumericColumn, ...]:
        return tuple(column for column in self.columns if isinstance(column, NumericColumn))

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(name for column in self.columns for name in column.feature_names)

    @property
    def num_features(self) -> int:
        return len(self.feature_names)

    @property
    def is_standardized(self) -> bool:
        return all(column.standardization is not None for column in self.numeric_columns)

    def with_statistics(self, statistics: Mapping[str, Standardization]) -> TabularSchema:
        """This schema with the numeric columns' standardisation set (every numeric column required)."""
        missing = [column.name for column in self.numeric_columns if column.name not in statistics]
        if missing:
            raise TabularError(f"no standardisation for the numeric columns {missing}")
        columns = tuple(
            NumericColumn(c.name, c.lower, c.upper, c.transform, c.missing_indicator, statistics[c.name])
            if isinstance(c, NumericColumn)
            else c
            for c in self.columns
        )
        return TabularSchema(self.target, self.positive, columns, self.negative)

    # ------------------------------------------------------------- files
    def to_dict(self) -> dict[str, Any]:
        def column_dict(column: Column) -> dict[str, Any]:
            if isinstance(column, CategoricalColumn):
                return {"name": column.name, "kind": ColumnKind.CATEGORICAL.value, "categories": list(column.categories)}
            result: dict[str, Any] = {
                "name": column.name,
                "kind": ColumnKind.NUMERIC.value,
                "lower": column.lower,
                "upper": column.upper,
                "transform": column.transform.value,
                "missing_indicator": column.missing_indicator,
            }
            if column.standardization is not None:
                result["mean"] = column.standardization.mean
                result["scale"] = column.standardization.scale
            return result

        value: dict[str, Any] = {
            "format": SCHEMA_FORMAT,
            "target": self.target,
            "positive": self.positive,
            "columns": [column_dict(column) for column in self.columns],
        }
        if self.negative is not None:
            value["negative"] = list(self.negative)
        return value

    @classmethod
    def from_dict(cls, value: Mapping[str, Any]) -> TabularSchema:
        if not isinstance(value, Mapping) or value.get("format") != SCHEMA_FORMAT:
            raise TabularError(f"not a {SCHEMA_FORMAT} schema")
        unknown = set(value) - {"format", "target", "positive", "negative", "columns"}
        if unknown:
            raise TabularError(f"unknown schema keys {sorted(unknown)}")
        columns: list[Column] = []
        for raw in value.get("columns") or []:
            try:
                kind = ColumnKind(raw["kind"])
                if kind is ColumnKind.CATEGORICAL:
                    if set(raw) != {"name", "kind", "categories"}:
                        raise TabularError(f"categorical column keys are name, kind, categories; got {sorted(raw)}")
                    columns.append(CategoricalColumn(str(raw["name"]), tuple(str(c) for c in raw["categories"])))
                    continue
                allowed = {"name", "kind", "lower", "upper", "transform", "missing_indicator", "mean", "scale"}
                if not set(raw) <= allowed or ("mean" in raw) != ("scale" in raw):
                    raise TabularError(f"numeric column keys are {sorted(allowed)} (mean and scale together); got {sorted(raw)}")
                standardization = Standardization(float(raw["mean"]), float(raw["scale"])) if "mean" in raw else None
                columns.append(
                    NumericColumn(
                        str(raw["name"]),
                        float(raw["lower"]),
                        float(raw["upper"]),
                        Transform(raw.get("transform", Transform.IDENTITY.value)),
                        bool(raw.get("missing_indicator", False)),
                        standardization,
                    )
                )
            except (KeyError, TypeError, ValueError) as exc:
                if isinstance(exc, TabularError):
                    raise
                raise TabularError(f"invalid schema column {raw!r}: {exc}") from None
        negative = value.get("negative")
        if negative is not None and (not isinstance(negative, list) or not all(isinstance(item, str) for item in negative)):
            raise TabularError("negative must be a list of strings")
        return cls(
            str(value.get("target", "")),
            str(value.get("positive", "")),
            tuple(columns),
            None if negative is None else tuple(negative),
        )

    def save(self, path: Path) -> None:
        write_atomic(path, (json.dumps(self.to_dict(), indent=2) + "\n").encode("utf-8"), mode=PUBLIC_MODE)

    @classmethod
    def load(cls, path: Path) -> TabularSchema:
        try:
            value = json.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise TabularError(f"cannot read schema {path}: {exc.strerror}") from None
        except json.JSONDecodeError as exc:
            raise TabularError(f"schema {path} is not JSON: {exc}") from None
        return cls.from_dict(value)


def draft_schema(
    table: RawTable,
    *,
    target: str,
    positive: str,
    max_categories: int = DEFAULT_MAX_CATEGORIES,
    clip_quantile: float = DEFAULT_CLIP_QUANTILE,
    exclude: Sequence[str] = (),
    negative: Sequence[str] | None = None,
) -> TabularSchema:
    """A schema proposed from one party's data (see the module docstring for what it reveals).

    Kinds by :func:`infer_kinds`; categories by decreasing frequency (ties by name), at
    most ``max_categories``; numeric ranges at the ``clip_quantile`` and
    ``1 - clip_quantile`` quantiles, with ``log1p`` for heavy-tailed non-negative
    columns (:data:`HEAVY_TAIL_RATIO`) and a missing indicator where values are missing.
    No means or scales: those are agreed separately or computed with secure aggregation.
    The negative target values are ``negative`` if given, else the one value other than
    ``positive`` the target holds (more than one is refused: say which count as 0).
    """
    if max_categories < 1 or not 0 <= clip_quantile < 0.5:
        raise TabularError("max_categories must be positive and clip_quantile in [0, 0.5)")
    labels = table.column(target)
    if not np.any(labels == positive):
        raise TabularError(f"no row has {target} == {positive!r}")
    others = sorted(set(labels[~missing_mask(labels)].tolist()) - {positive})
    if negative is None:
        if len(others) > 1:
            raise TabularError(
                f"the target {target!r} holds {len(others)} values besides {positive!r} ({', '.join(map(repr, others[:5]))}): "
                "say which count as negative (--negative, repeatable)"
            )
        negative = others
    stray = sorted(set(others) - set(negative))
    if stray:
        raise TabularError(f"the target {target!r} holds {stray[0]!r}, which is neither positive nor a listed negative value")
    columns: list[Column] = []
    for name, kind in infer_kinds(table, exclude=(target, *exclude)).items():
        values = table.column(name)
        if kind is ColumnKind.CATEGORICAL:
            missing = missing_mask(values)
            counts = Counter(values[~missing].tolist())
            ranked = sorted(counts, key=lambda category: (-counts[category], category))[:max_categories]
            columns.append(CategoricalColumn(name, tuple(ranked)))
            continue
        numbers, missing = parse_numeric(values, column=name, rows=table.data_row_numbers())
        present = numbers[~missing]
        lower, upper = (float(q) for q in np.quantile(present, [clip_quantile, 1.0 - clip_quantile]))
        transform = Transform.IDENTITY
        if lower >= 0 and upper > HEAVY_TAIL_RATIO * (float(np.median(present)) + 1.0):
            transform = Transform.LOG1P
            lower, upper = math.log1p(lower), math.log1p(upper)
        if not lower < upper:
            upper = lower + 1.0  # a constant column: any range with lower < upper clips it to lower
        columns.append(NumericColumn(name, lower, upper, transform, bool(np.any(missing))))
    return TabularSchema(target, positive, tuple(columns), tuple(negative) if negative else None)


# --------------------------------------------------------------------------- features


def _numeric_values(table: RawTable, column: NumericColumn) -> tuple[np.ndarray, np.ndarray]:
    """Transformed and clipped values (NaN where missing) and the missing mask."""
    numbers, missing = parse_numeric(table.column(column.name), column=column.name, rows=table.data_row_numbers())
    transformed = np.full(numbers.shape, np.nan)
    transformed[~missing] = np.clip(column.transform.apply(numbers[~missing]), column.lower, column.upper)
    return transformed, missing


@dataclass(frozen=True)
class MomentSums:
    """Per numeric column: rows present, and sums of u and u^2 with u = (v - lower) / (upper - lower) in [0, 1]."""

    columns: tuple[str, ...]
    counts: np.ndarray
    sums: np.ndarray
    squares: np.ndarray

    def to_vector(self) -> np.ndarray:
        return np.concatenate([self.counts, self.sums, self.squares]).astype(np.float64)

    @classmethod
    def from_vector(cls, columns: Sequence[str], vector: np.ndarray) -> MomentSums:
        width = len(columns)
        vector = np.asarray(vector, dtype=np.float64)
        if vector.shape != (3 * width,):
            raise TabularError(f"a moment vector for {width} columns has {3 * width} values, got shape {vector.shape}")
        return cls(tuple(columns), vector[:width], vector[width : 2 * width], vector[2 * width :])


def moment_sums(table: RawTable, schema: TabularSchema) -> MomentSums:
    """This bank's contribution to the consortium's standardisation statistics (vectorised per column)."""
    counts, sums, squares = [], [], []
    for column in schema.numeric_columns:
        values, missing = _numeric_values(table, column)
        unit = (values[~missing] - column.lower) / (column.upper - column.lower)
        counts.append(float(unit.size))
        sums.append(float(unit.sum()))
        squares.append(float(np.dot(unit, unit)))
    names = tuple(column.name for column in schema.numeric_columns)
    return MomentSums(names, np.array(counts), np.array(sums), np.array(squares))


def statistics_from_sums(schema: TabularSchema, sums: MomentSums) -> dict[str, Standardization]:
    """Means and scales from (securely aggregated) moment sums. A column with no spread gets scale 1."""
    if sums.columns != tuple(column.name for column in schema.numeric_columns):
        raise TabularError("the moment sums do not cover the schema's numeric columns in order")
    statistics: dict[str, Standardization] = {}
    for index, column in enumerate(schema.numeric_columns):
        count = float(sums.counts[index])
        if count < 1:
            raise TabularError(f"no bank has a value for column {column.name!r}")
        width = column.upper - column.lower
        mean_unit = float(sums.sums[index]) / count
        variance_unit = max(float(sums.squares[index]) / count - mean_unit * mean_unit, 0.0)
        scale = width * math.sqrt(variance_unit)
        statistics[column.name] = Standardization(column.lower + width * mean_unit, scale if scale > 1e-12 else 1.0)
    return statistics


def category_indices(values: np.ndarray, categories: Sequence[str]) -> np.ndarray:
    """The position of each value in ``categories``, or ``len(categories)`` (other) if absent; vectorised."""
    other = len(categories)
    if other == 0:
        return np.full(values.shape, 0, dtype=np.int64)
    listed = np.array(categories, dtype=str)
    order = np.argsort(listed, kind="stable")
    ordered = listed[order]
    position = np.clip(np.searchsorted(ordered, values), 0, other - 1)
    return np.where(ordered[position] == values, order[position], other).astype(np.int64)


@dataclass(frozen=True)
class Dataset:
    """Features (rows x ``schema.num_features``, float32) and labels: 0/1 float32 for a binary model, class
    indices for a multi-class one, numbers for a regression (:func:`clients.training.plan.labels_for`)."""

    features: np.ndarray = field(repr=False)
    labels: np.ndarray = field(repr=False)
    feature_names: tuple[str, ...]

    @property
    def rows(self) -> int:
        return int(self.labels.size)


def target_labels(schema: TabularSchema, table: RawTable) -> np.ndarray:
    """The 0/1 labels of ``table`` under ``schema``'s target rule (module docstring); anything else refused with its row."""
    values = table.column(schema.target)
    rows = table.data_row_numbers()
    missing = np.flatnonzero(missing_mask(values))
    if missing.size:
        raise TabularError(
            f"{missing.size} row(s) have no value in the target column {schema.target!r} (first: data row {int(rows[missing[0]])})"
        )
    positive = values == schema.positive
    if schema.negative is None:
        others, first_positions = np.unique(values[~positive], return_index=True)
        if others.size > 1:
            where = np.flatnonzero(~positive)[first_positions]
            listed = ", ".join(f"{str(value)!r} (data row {int(rows[p])})" for value, p in zip(others, where, strict=True))
            raise TabularError(
                f"the target {schema.target!r} holds several values besides the positive {schema.positive!r}: {listed}; "
                "the schema names no negative value, so none is counted as 0 (list them in the schema's negative)"
            )
        return positive.astype(np.float32)
    stray = np.flatnonzero(~positive & ~np.isin(values, list(schema.negative)))
    if stray.size:
        first = int(stray[0])
        raise TabularError(
            f"data row {int(rows[first])}: the target {schema.target!r} is {str(values[first])!r}, neither the positive "
            f"value {schema.positive!r} nor a negative one ({', '.join(map(repr, schema.negative))})"
        )
    return positive.astype(np.float32)


@dataclass(frozen=True)
class Preprocessor:
    """Applies a standardised :class:`TabularSchema` to a :class:`RawTable` (rules in the module docstring)."""

    schema: TabularSchema

    def __post_init__(self) -> None:
        if not self.schema.is_standardized:
            raise TabularError("the schema has numeric columns without mean and scale: agree them or compute them first")

    def labels(self, table: RawTable) -> np.ndarray:
        """1 for the positive value, 0 for a negative one; anything else refused with its row number."""
        return target_labels(self.schema, table)

    def features(self, table: RawTable) -> np.ndarray:
        blocks: list[np.ndarray] = []
        for column in self.schema.columns:
            if isinstance(column, NumericColumn):
                values, missing = _numeric_values(table, column)
                assert column.standardization is not None
                standardized = (values - column.standardization.mean) / column.standardization.scale
                standardized[missing] = 0.0
                blocks.append(standardized[:, None])
                if column.missing_indicator:
                    blocks.append(missing.astype(np.float64)[:, None])
                continue
            values = table.column(column.name)
            missing = missing_mask(values)
            index = category_indices(values, column.categories)
            other = len(column.categories)
            index[missing] = other + 1
            blocks.append(np.eye(other + 2)[index])
        return np.hstack(blocks).astype(np.float32)

    def transform(self, table: RawTable) -> Dataset:
        return Dataset(self.features(table), self.labels(table), self.schema.feature_names)
