"""The bank's privacy budgets, kept per population of customers, whatever the work directory.

A budget belongs to the customers whose data it protects, not to a run: training twice
on the same customers, from two directories, in two trainings, spends one budget. The
store lives in the policy's ``[budget] state_dir`` (:class:`clients.runtime.policy.BudgetSettings`)::

    <state_dir>/fingerprint.key            32 random bytes (0600): the key of every tag below
    <state_dir>/budgets/<budget id>/
        customers.tags                     the customers this budget covers (16-byte tags, sorted)
        privacy-ledger.jsonl (+ .head)     the signed ledger of every spend (docs/LEDGER.md)

**What counts as the same data.** Each row of a data file is reduced to a *customer tag*,
HMAC-SHA-256 under the store's key truncated to 128 bits:

* with ``id_column`` set, of the value in that column (spaces stripped): two rows with the
  same customer id are the same customer, whatever else changed;
* otherwise of the whole row: the cells, spaces stripped, keyed by column name (so the
  column order does not matter).

File names, directories, compression, row order and duplicate rows do not matter. A
data set joins the budget that already covers any of its customers (and that budget then
covers all of them); a data set sharing customers with two budgets is refused, because
their spends cannot be split per customer. A data set with no known customer starts a new
budget. Without ``id_column`` an edited row is a new customer: give the column when
records change between trainings.

Why keyed: the tag files and budget ids sit on the bank's disk; a plain hash of a row or
an id could be confirmed by anyone who can guess it. Without the key the tags are
random-looking; the key never leaves the state directory.

Concurrency: one process at a time holds a budget (the ledger's exclusive ``flock``,
:mod:`dp.audit.chain`); a second training on the same customers meanwhile is refused.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clients.runtime.errors import ClientError
from clients.runtime.policy import BudgetSettings
from clients.training.tabular import RawTable
from dp.atomic_files import PUBLIC_MODE, read_private_file, write_atomic, write_private_file
from secagg.hazmat.randomness import SystemRandom

KEY_FILE = "fingerprint.key"
KEY_BYTES = 32
TAG_BYTES = 16
TAGS_FILE = "customers.tags"
LEDGER_FILE = "privacy-ledger.jsonl"


class BudgetStoreError(ClientError):
    """The budget store cannot be used as asked (overlapping budgets, unreadable files)."""


@dataclass(frozen=True, slots=True)
class BudgetAccount:
    """The budget a data set spends: its id and directory, and what the data set added to it."""

    budget_id: str
    directory: Path
    customers: int
    new_customers: int
    data_customers: int

    @property
    def ledger_path(self) -> Path:
        return self.directory / LEDGER_FILE


class BudgetStore:
    """The budgets under one ``state_dir``; see the module docstring."""

    def __init__(self, settings: BudgetSettings) -> None:
        self.settings = settings
        self.root = Path(settings.state_dir)

    def _key(self) -> bytes:
        path = self.root / KEY_FILE
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            if not path.exists():
                with contextlib.suppress(FileExistsError):  # another process created it first
                    write_private_file(path, SystemRandom().random_bytes(KEY_BYTES), overwrite=False)
            key = read_private_file(path)
        except OSError as exc:
            raise BudgetStoreError(f"cannot read the budget key {path}: {exc}") from None
        if len(key) != KEY_BYTES:
            raise BudgetStoreError(f"{path} is not a {KEY_BYTES}-byte key")
        return key

    def customer_tags(self, table: RawTable) -> np.ndarray:
        """The data set's customers: sorted, distinct 16-byte tags (dtype ``S16``)."""
        key = self._key()
        if self.settings.id_column is not None:
            values = table.column(self.settings.id_column)
            messages = [b"secagg/budget/customer-id/v1\x00" + str(value).encode("utf-8") for value in values.tolist()]
        else:
            order = sorted(range(len(table.columns)), key=lambda index: table.columns[index])
            names = [table.columns[index] for index in order]
            messages = [
                b"secagg/budget/row/v1\x00"
                + json.dumps(dict(zip(names, (row[index] for index in order), strict=True)), sort_keys=True).encode("utf-8")
                for row in table.cells.tolist()
            ]
        tags = np.array(
            [hmac.new(key, message, hashlib.sha256).digest()[:TAG_BYTES] for message in messages], dtype=f"S{TAG_BYTES}"
        )
        return np.unique(tags)

    def _budgets(self) -> list[Path]:
        directory = self.root / "budgets"
        if not directory.is_dir():
            return []
        return sorted(path for path in directory.iterdir() if (path / TAGS_FILE).is_file())

    @staticmethod
    def _read_tags(path: Path) -> np.ndarray:
        data = (path / TAGS_FILE).read_bytes()
        if len(data) % TAG_BYTES:
            raise BudgetStoreError(f"{path / TAGS_FILE} is not a list of {TAG_BYTES}-byte tags")
        return np.frombuffer(data, dtype=f"S{TAG_BYTES}")

    def account_for(self, table: RawTable) -> BudgetAccount:
        """The budget ``table``'s customers spend (created, or extended to them, if need be)."""
        tags = self.customer_tags(table)
        overlapping = []
        for path in self._budgets():
            known = self._read_tags(path)
            if np.any(np.isin(tags, known)):
                overlapping.append((path, known))
        if len(overlapping) > 1:
            names = ", ".join(path.name for path, _ in overlapping)
            raise BudgetStoreError(
                f"this data shares customers with {len(overlapping)} budgets ({names}); their spends cannot be split per "
                "customer, so it cannot be trained on without mixing them"
            )
        if overlapping:
            directory, known = overlapping[0]
            merged = np.union1d(known, tags)
            added = int(merged.size - known.size)
            if added:
                write_atomic(directory / TAGS_FILE, merged.tobytes(), mode=PUBLIC_MODE)
        else:
            key = self._key()
            budget_id = hmac.new(key, b"secagg/budget/id/v1\x00" + tags.tobytes(), hashlib.sha256).hexdigest()[:32]
            directory = self.root / "budgets" / budget_id
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            write_atomic(directory / TAGS_FILE, tags.tobytes(), mode=PUBLIC_MODE)
            merged, added = tags, int(tags.size)
        return BudgetAccount(
            budget_id=directory.name,
            directory=directory,
            customers=int(merged.size),
            new_customers=added,
            data_customers=int(tags.size),
        )
