"""The bank's budgets belong to its customers (clients/training/budget_store.py), not to a work directory.

What counts as the same data: the same customers (by id column, or by whole row), whatever
the file name, directory, compression, column order, row order or duplicates; a data set
joins the budget that covers any of its customers; overlapping two budgets is refused.
"""

from __future__ import annotations

import gzip
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from clients.runtime.policy import ClientPolicy, PolicyFileError
from clients.training.budget_store import BudgetStore, BudgetStoreError
from clients.training.tabular import RawTable, parse_csv, read_csv

ROWS = "id,income,grade,default\n" + "".join(
    f"c{i},{1000 + 37 * i},{'ABC'[i % 3]},{'yes' if i % 5 == 0 else 'no'}\n" for i in range(40)
)


def store(tmp_path: Path, *, id_column: str | None = None) -> BudgetStore:
    text = '[budget]\nstate_dir = "state"\n' + (f'id_column = "{id_column}"\n' if id_column else "")
    text += "[budget.example]\nmax_epsilon = 3.0\ndelta = 1e-5\n"
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "policy.toml").write_text(text)
    policy = ClientPolicy.load(tmp_path / "policy.toml")
    assert policy.budget is not None and policy.budget.state_dir == tmp_path / "state"  # relative to the policy file
    return BudgetStore(policy.budget)


def table(text: str = ROWS) -> RawTable:
    return parse_csv(text.encode())


def test_the_same_rows_in_another_file_order_and_layout_are_the_same_budget(tmp_path: Path) -> None:
    budgets = store(tmp_path)
    first = budgets.account_for(table())
    lines = ROWS.splitlines()
    header, body = lines[0].split(","), lines[1:]
    reordered_columns = [3, 1, 0, 2]
    rewritten = ",".join(header[i] for i in reordered_columns) + "\n"
    rewritten += "".join(",".join(row.split(",")[i] for i in reordered_columns) + "\n" for row in reversed(body))
    rewritten += (
        body[0].split(",")[3] + "," + ",".join(body[0].split(",")[i] for i in reordered_columns[1:]) + "\n"
    )  # a duplicate row
    elsewhere = tmp_path / "other" / "directory" / "renamed.csv.gz"
    elsewhere.parent.mkdir(parents=True)
    elsewhere.write_bytes(gzip.compress(rewritten.encode()))
    again = budgets.account_for(read_csv(elsewhere))
    assert again.budget_id == first.budget_id and again.new_customers == 0 and again.customers == 40


def test_a_grown_data_set_joins_its_budget_and_disjoint_data_gets_another(tmp_path: Path) -> None:
    budgets = store(tmp_path)
    first = budgets.account_for(table())
    grown = budgets.account_for(table(ROWS + "c40,9999,A,no\n"))
    assert grown.budget_id == first.budget_id and grown.new_customers == 1 and grown.customers == 41
    disjoint = budgets.account_for(table("id,income,grade,default\nz1,5,A,no\nz2,6,B,yes\n"))
    assert disjoint.budget_id != first.budget_id and disjoint.customers == 2


def test_data_sharing_customers_with_two_budgets_is_refused(tmp_path: Path) -> None:
    budgets = store(tmp_path)
    budgets.account_for(table("id,income,grade,default\na,1,A,no\n"))
    budgets.account_for(table("id,income,grade,default\nb,2,B,yes\n"))
    with pytest.raises(BudgetStoreError, match="shares customers with 2 budgets"):
        budgets.account_for(table("id,income,grade,default\na,1,A,no\nb,2,B,yes\n"))


def test_with_an_id_column_an_edited_record_is_the_same_customer(tmp_path: Path) -> None:
    by_row, by_id = store(tmp_path / "rows"), store(tmp_path / "ids", id_column="id")
    edited = ROWS.replace("c1,1037,", "c1,2037,")
    assert by_row.account_for(table()).budget_id == by_row.account_for(table(edited)).budget_id  # joined by the other rows
    assert by_row.account_for(table(edited)).customers == 41  # ... but the edited row counts as a new customer
    assert by_id.account_for(table(edited)).budget_id == by_id.account_for(table()).budget_id
    assert by_id.account_for(table()).customers == 40


def test_the_tags_are_keyed_and_the_key_is_private(tmp_path: Path) -> None:
    one, other = store(tmp_path / "one"), store(tmp_path / "two")
    assert not np.array_equal(one.customer_tags(table()), other.customer_tags(table()))
    key = tmp_path / "one" / "state" / "fingerprint.key"
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600 and len(key.read_bytes()) == 32


def test_a_budget_table_without_a_state_dir_or_a_unit_is_refused(tmp_path: Path) -> None:
    for text, message in (
        ("[budget]\n[budget.example]\nmax_epsilon = 1.0\ndelta = 1e-5\n", "state_dir"),
        ('[budget]\nstate_dir = "s"\n', "names no unit"),
        ('[budget]\nstate_dir = "s"\n[budget.example]\nmax_epsilon = 1.0\n', "missing keys"),
        ('[budget]\nstate_dir = "s"\nwhatever = 1\n[budget.example]\nmax_epsilon = 1.0\ndelta = 1e-5\n', "unknown budget keys"),
    ):
        (tmp_path / "policy.toml").write_text(text)
        with pytest.raises(PolicyFileError, match=message):
            ClientPolicy.load(tmp_path / "policy.toml")
