"""Preprocessing by the agreed schema: kinds, missing values, unseen categories, the cap, clipping, statistics."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clients.training.metrics import MetricError, accuracy, roc_auc
from clients.training.tabular import (
    CategoricalColumn,
    ColumnKind,
    MomentSums,
    NumericColumn,
    Preprocessor,
    Standardization,
    TabularError,
    TabularSchema,
    Transform,
    draft_schema,
    infer_kinds,
    moment_sums,
    parse_csv,
    statistics_from_sums,
)

CSV = b"""income,region,age,default
52000,north,34,no
,south,45,yes
61000,NA,29,no
43000,east,,yes
75000,north,51,no
38000,south,23,yes
"""


def table():
    return parse_csv(CSV)


def test_missing_tokens_are_recognised_and_kinds_inferred() -> None:
    kinds = infer_kinds(table(), exclude=("default",))
    assert kinds == {"income": ColumnKind.NUMERIC, "region": ColumnKind.CATEGORICAL, "age": ColumnKind.NUMERIC}


def test_draft_schema_orders_categories_by_frequency_and_flags_missing_numeric_columns() -> None:
    schema = draft_schema(table(), target="default", positive="yes", clip_quantile=0.0)
    region = next(column for column in schema.columns if column.name == "region")
    assert isinstance(region, CategoricalColumn) and region.categories == ("north", "south", "east")
    income = next(column for column in schema.columns if column.name == "income")
    assert isinstance(income, NumericColumn) and income.missing_indicator and (income.lower, income.upper) == (38000, 75000)


def test_category_cap_sends_the_rarest_categories_to_other() -> None:
    schema = draft_schema(table(), target="default", positive="yes", max_categories=1)
    region = next(column for column in schema.columns if column.name == "region")
    assert region.categories == ("north",)


def standardized(schema: TabularSchema) -> TabularSchema:
    return schema.with_statistics({column.name: Standardization(0.0, 1.0) for column in schema.numeric_columns})


def test_unseen_and_missing_categories_get_their_own_features_and_the_layout_is_fixed() -> None:
    schema = standardized(TabularSchema("default", "yes", (CategoricalColumn("region", ("north", "south")),)))
    data = parse_csv(b"region,default\nnorth,no\nwest,yes\n,no\nsouth,yes\n")
    dataset = Preprocessor(schema).transform(data)
    assert dataset.feature_names == ("region=north", "region=south", "region=__other__", "region=__missing__")
    assert dataset.features.tolist() == [[1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1], [0, 1, 0, 0]]
    assert dataset.labels.tolist() == [0, 1, 0, 1]


def test_numeric_values_are_clipped_standardised_and_missing_becomes_the_mean_with_an_indicator() -> None:
    column = NumericColumn("x", 0.0, 10.0, Transform.IDENTITY, True, Standardization(4.0, 2.0))
    schema = TabularSchema("y", "1", (column,))
    data = parse_csv(b"x,y\n-5,0\n6,1\nNA,0\n100,1\n")
    dataset = Preprocessor(schema).transform(data)
    assert dataset.features.tolist() == [[-2.0, 0.0], [1.0, 0.0], [0.0, 1.0], [3.0, 0.0]]


def test_log1p_transform_clips_in_the_transformed_scale() -> None:
    column = NumericColumn("x", 0.0, math.log1p(99.0), Transform.LOG1P, False, Standardization(0.0, 1.0))
    dataset = Preprocessor(TabularSchema("y", "1", (column,))).transform(parse_csv(b"x,y\n0,0\n9,1\n1000000,0\n"))
    assert np.allclose(dataset.features[:, 0], [0.0, math.log(10.0), math.log(100.0)])


def test_statistics_from_summed_bank_moments_equal_those_of_the_pooled_rows() -> None:
    schema = draft_schema(table(), target="default", positive="yes", clip_quantile=0.0)
    data = table()
    first, second = data.take(np.arange(0, 3)), data.take(np.arange(3, 6))
    names = [column.name for column in schema.numeric_columns]
    summed = MomentSums.from_vector(names, moment_sums(first, schema).to_vector() + moment_sums(second, schema).to_vector())
    statistics = statistics_from_sums(schema, summed)
    income = np.array([52000, 61000, 43000, 75000, 38000], dtype=float)
    assert statistics["income"].mean == pytest.approx(income.mean())
    assert statistics["income"].scale == pytest.approx(income.std())
    assert statistics["age"].mean == pytest.approx(np.mean([34, 45, 29, 51, 23]))


def test_schema_round_trips_through_its_file(tmp_path) -> None:
    schema = draft_schema(table(), target="default", positive="yes")
    schema = schema.with_statistics({column.name: Standardization(1.5, 2.5) for column in schema.numeric_columns})
    path = tmp_path / "schema.json"
    schema.save(path)
    assert TabularSchema.load(path) == schema


@pytest.mark.parametrize(
    ("csv_bytes", "message"),
    [
        (b"a,b\n1,2\n3\n", "row 2 has 1 cells"),
        (b"a,,c\n1,2,3\n", "empty column name"),
        (b"a,a\n1,2\n", "duplicate column"),
        (b"a,b\n", "no data rows"),
        (b"\xff\xfe,a\n", "not UTF-8"),
    ],
)
def test_malformed_csv_is_refused_with_a_specific_error(csv_bytes: bytes, message: str) -> None:
    with pytest.raises(TabularError, match=message):
        parse_csv(csv_bytes)


def test_text_in_an_agreed_numeric_column_is_refused_naming_the_row_and_the_value() -> None:
    column = NumericColumn("x", 0.0, 1.0, standardization=Standardization(0.0, 1.0))
    with pytest.raises(TabularError, match=r"data row 3 holds '12,5'"):
        Preprocessor(TabularSchema("y", "1", (column,))).transform(parse_csv(b'x,y\n0.1,1\n0.2,0\n"12,5",1\n'))
    with pytest.raises(TabularError, match=r"data row 2 holds 'inf'"):
        Preprocessor(TabularSchema("y", "1", (column,))).transform(parse_csv(b"x,y\n0.1,1\ninf,0\n"))


def test_a_stray_target_value_is_refused_with_its_row_not_counted_as_negative() -> None:
    column = NumericColumn("x", 0.0, 1.0, standardization=Standardization(0.0, 1.0))
    data = parse_csv(b"x,y\n0.1,Bad\n0.2,Good\n0.3,defaulted\n0.4,Good\n")
    with pytest.raises(TabularError, match=r"'Good' \(data row 2\), 'defaulted' \(data row 3\); the schema names no negative"):
        Preprocessor(TabularSchema("y", "Bad", (column,))).labels(data)
    with pytest.raises(TabularError, match=r"data row 3: the target 'y' is 'defaulted', neither the positive value 'Bad' nor"):
        Preprocessor(TabularSchema("y", "Bad", (column,), negative=("Good",))).labels(data)
    both = Preprocessor(TabularSchema("y", "Bad", (column,), negative=("Good", "defaulted"))).labels(data)
    assert both.tolist() == [1.0, 0.0, 0.0, 0.0]
    binary = parse_csv(b"x,y\n0.1,Bad\n0.2,Good\n")
    assert Preprocessor(TabularSchema("y", "Bad", (column,))).labels(binary).tolist() == [1.0, 0.0]


def test_a_row_number_survives_taking_a_subset_of_the_rows() -> None:
    column = NumericColumn("x", 0.0, 1.0, standardization=Standardization(0.0, 1.0))
    table = parse_csv(b"x,y\n0.1,1\n0.2,0\nbad,1\n").take(np.array([2]))
    with pytest.raises(TabularError, match=r"data row 3 holds 'bad'"):
        Preprocessor(TabularSchema("y", "1", (column,))).features(table)


def test_a_draft_asks_which_values_are_negative_when_the_target_holds_several() -> None:
    table = parse_csv(b"x,y\n0.1,Bad\n0.2,Good\n0.3,defaulted\n")
    with pytest.raises(TabularError, match="say which count as negative"):
        draft_schema(table, target="y", positive="Bad")
    drafted = draft_schema(table, target="y", positive="Bad", negative=["Good", "defaulted"])
    assert drafted.negative == ("Good", "defaulted")
    assert TabularSchema.from_dict(drafted.to_dict()) == drafted


def test_a_row_without_target_is_refused() -> None:
    schema = standardized(TabularSchema("y", "1", (NumericColumn("x", 0.0, 1.0),)))
    with pytest.raises(TabularError, match="no value in the target"):
        Preprocessor(schema).transform(parse_csv(b"x,y\n0.5,1\n0.2,\n"))


def test_preprocessing_needs_means_and_scales() -> None:
    with pytest.raises(TabularError, match="without mean and scale"):
        Preprocessor(TabularSchema("y", "1", (NumericColumn("x", 0.0, 1.0),)))


def test_unknown_schema_keys_are_refused() -> None:
    value = draft_schema(table(), target="default", positive="yes").to_dict()
    value["columns"][0]["clip"] = 3
    with pytest.raises(TabularError, match="keys"):
        TabularSchema.from_dict(value)


def brute_force_auc(labels: list[int], scores: list[float]) -> float:
    pairs = [(p, n) for p, n in itertools.product(range(len(labels)), repeat=2) if labels[p] == 1 and labels[n] == 0]
    return sum(1.0 if scores[p] > scores[n] else 0.5 if scores[p] == scores[n] else 0.0 for p, n in pairs) / len(pairs)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1), st.integers(-3, 3)), min_size=2, max_size=30))
def test_rank_auc_equals_the_pairwise_definition_with_ties_counting_half(rows) -> None:
    labels = [label for label, _ in rows]
    scores = [float(score) for _, score in rows]
    if len(set(labels)) < 2:
        with pytest.raises(MetricError):
            roc_auc(np.array(labels), np.array(scores))
        return
    assert roc_auc(np.array(labels), np.array(scores)) == pytest.approx(brute_force_auc(labels, scores))


def test_accuracy_thresholds_at_one_half() -> None:
    assert accuracy(np.array([1, 0, 1, 0]), np.array([0.5, 0.49, 0.2, 0.9])) == 0.5
