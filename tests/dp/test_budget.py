"""Budgets enforced at the data holder: refusal before spending, recorded in the ledger."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from dp.accounting import AccountantKind, SampledGaussian, Skellam, compute_epsilon
from dp.audit.privacy_ledger import EntryKind, PrivacyLedger, PrivacyUnit, RefusalReason, verify_ledger
from dp.budget import BudgetExceeded, BudgetGuard, BudgetPolicy, BudgetPolicyError, UnitBudget
from dp.errors import DPError
from secagg.hazmat.keys import SigningKey
from secagg.hazmat.randomness import DeterministicRandom

DELTA = 1e-5
PARTY = "bank-a"
EVENT = SampledGaussian(noise_multiplier=1.0, sample_rate=0.02, steps=100)
NOISE = Skellam(l1_sensitivity=400.0, l2_sensitivity=20.0, variance=4.0e4, steps=1)


def fixed_clock() -> Callable[[], datetime]:
    ticks = itertools.count()
    return lambda: datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=next(ticks))


@pytest.fixture
def key() -> SigningKey:
    return SigningKey.generate(DeterministicRandom.from_int(7))


@pytest.fixture
def ledger(tmp_path: Path, key: SigningKey):
    with PrivacyLedger.open(tmp_path / "bank-a.jsonl", party_id=PARTY, signing_key=key, clock=fixed_clock()) as opened:
        yield opened


def budget_for_rounds(rounds: float) -> float:
    """A budget between the epsilon of ``floor(rounds)`` and of ``floor(rounds) + 1`` rounds of EVENT."""
    below = compute_epsilon([EVENT] * int(rounds), delta=DELTA)
    above = compute_epsilon([EVENT] * (int(rounds) + 1), delta=DELTA)
    return (below + above) / 2


def test_charges_within_budget_are_spent_and_composed(ledger: PrivacyLedger) -> None:
    guard = BudgetGuard(BudgetPolicy({PrivacyUnit.EXAMPLE: UnitBudget(max_epsilon=budget_for_rounds(3.5), delta=DELTA)}), ledger)
    entries = [guard.charge(round_id=f"r{n}", unit=PrivacyUnit.EXAMPLE, event=EVENT) for n in range(3)]
    assert [entry.kind for entry in entries] == [EntryKind.SPEND] * 3
    assert guard.spent(PrivacyUnit.EXAMPLE) == pytest.approx(compute_epsilon([EVENT] * 3, delta=DELTA))
    assert entries[-1].budget_epsilon == pytest.approx(budget_for_rounds(3.5))


def test_contribution_over_budget_is_refused_before_spending_and_the_refusal_is_recorded(
    ledger: PrivacyLedger, key: SigningKey
) -> None:
    budget = budget_for_rounds(2.5)
    guard = BudgetGuard(BudgetPolicy({PrivacyUnit.EXAMPLE: UnitBudget(max_epsilon=budget, delta=DELTA)}), ledger)
    for number in range(2):
        guard.charge(round_id=f"r{number}", unit=PrivacyUnit.EXAMPLE, event=EVENT)
    spent_before = guard.spent(PrivacyUnit.EXAMPLE)
    released: list[str] = []

    with pytest.raises(BudgetExceeded) as raised:
        guard.charge(round_id="r2", unit=PrivacyUnit.EXAMPLE, event=EVENT)
        released.append("r2")  # what a client does after charge() returns: never reached

    assert released == []
    assert raised.value.would_reach == pytest.approx(compute_epsilon([EVENT] * 3, delta=DELTA))
    assert raised.value.would_reach > budget >= raised.value.spent
    assert isinstance(raised.value, DPError)
    assert guard.spent(PrivacyUnit.EXAMPLE) == spent_before
    assert len(ledger.spent_events(PrivacyUnit.EXAMPLE)) == 2
    refusal = ledger.entries[-1]
    assert (refusal.kind, refusal.round_id, refusal.reason) == (EntryKind.REFUSAL, "r2", RefusalReason.BUDGET_EXCEEDED)
    assert refusal.epsilon_cumulative == pytest.approx(spent_before)
    assert refusal.epsilon_increment == 0.0
    assert verify_ledger(ledger.path, public_key=key.public_bytes).ok


def test_refusal_survives_reopening_and_later_small_contributions_still_fit(tmp_path: Path, key: SigningKey) -> None:
    path = tmp_path / "ledger.jsonl"
    policy = BudgetPolicy({PrivacyUnit.EXAMPLE: UnitBudget(max_epsilon=budget_for_rounds(1.5), delta=DELTA)})
    with PrivacyLedger.open(path, party_id=PARTY, signing_key=key, clock=fixed_clock()) as ledger:
        BudgetGuard(policy, ledger).charge(round_id="r0", unit=PrivacyUnit.EXAMPLE, event=EVENT)
        with pytest.raises(BudgetExceeded):
            BudgetGuard(policy, ledger).charge(round_id="r1", unit=PrivacyUnit.EXAMPLE, event=EVENT)
    small = SampledGaussian(noise_multiplier=1.0, sample_rate=0.02, steps=1)
    with PrivacyLedger.open(path, party_id=PARTY, signing_key=key, clock=lambda: datetime(2026, 2, 1, tzinfo=UTC)) as ledger:
        guard = BudgetGuard(policy, ledger)
        assert guard.spent(PrivacyUnit.EXAMPLE) == pytest.approx(compute_epsilon([EVENT], delta=DELTA))
        assert guard.charge(round_id="r2", unit=PrivacyUnit.EXAMPLE, event=small).kind is EntryKind.SPEND
    assert [entry.kind for entry in verify_ledger(path).entries] == [EntryKind.SPEND, EntryKind.REFUSAL, EntryKind.SPEND]


def test_round_spending_two_units_spends_neither_if_one_is_over_budget(ledger: PrivacyLedger) -> None:
    policy = BudgetPolicy(
        {
            PrivacyUnit.EXAMPLE: UnitBudget(max_epsilon=100.0, delta=DELTA),
            PrivacyUnit.PARTICIPANT: UnitBudget(max_epsilon=compute_epsilon([NOISE], delta=DELTA) / 2, delta=DELTA),
        }
    )
    guard = BudgetGuard(policy, ledger)
    with pytest.raises(BudgetExceeded) as raised:
        guard.charge_round(round_id="r0", contributions={PrivacyUnit.EXAMPLE: EVENT, PrivacyUnit.PARTICIPANT: NOISE})
    assert raised.value.unit is PrivacyUnit.PARTICIPANT
    assert [(entry.kind, entry.unit) for entry in ledger.entries] == [(EntryKind.REFUSAL, PrivacyUnit.PARTICIPANT)]
    assert ledger.spent_events(PrivacyUnit.EXAMPLE) == ()


def test_authorize_reports_without_writing(ledger: PrivacyLedger) -> None:
    guard = BudgetGuard(BudgetPolicy({PrivacyUnit.EXAMPLE: UnitBudget(max_epsilon=0.01, delta=DELTA)}), ledger)
    authorization = guard.authorize(round_id="r0", unit=PrivacyUnit.EXAMPLE, event=EVENT)
    assert not authorization.allowed
    assert authorization.would_reach == pytest.approx(compute_epsilon([EVENT], delta=DELTA))
    assert ledger.entries == ()
    assert ledger.path.read_bytes() == b""


def test_unit_without_a_budget_is_refused_and_nothing_is_written(ledger: PrivacyLedger) -> None:
    guard = BudgetGuard(BudgetPolicy({PrivacyUnit.EXAMPLE: UnitBudget(max_epsilon=5.0, delta=DELTA)}), ledger)
    with pytest.raises(BudgetPolicyError, match="no budget for participant"):
        guard.charge(round_id="r0", unit=PrivacyUnit.PARTICIPANT, event=NOISE)
    assert ledger.entries == ()


def test_policy_for_another_party_is_refused(ledger: PrivacyLedger) -> None:
    policy = BudgetPolicy({PrivacyUnit.EXAMPLE: UnitBudget(max_epsilon=5.0, delta=DELTA)}, party_id="bank-b")
    with pytest.raises(BudgetPolicyError, match="bank-b"):
        BudgetGuard(policy, ledger)


# --------------------------------------------------------------------------- policy files


def test_policy_loads_from_toml_and_json_identically(tmp_path: Path) -> None:
    toml_path = tmp_path / "policy.toml"
    toml_path.write_text(
        'party = "bank-a"\n[budgets.example]\nmax_epsilon = 3.0\ndelta = 1e-5\naccountant = "prv"\n'
        "[budgets.participant]\nmax_epsilon = 1\ndelta = 1e-6\n"
    )
    json_path = tmp_path / "policy.json"
    json_path.write_text(
        json.dumps(
            {
                "party": "bank-a",
                "budgets": {
                    "example": {"max_epsilon": 3.0, "delta": 1e-5, "accountant": "prv"},
                    "participant": {"max_epsilon": 1, "delta": 1e-6},
                },
            }
        )
    )
    from_toml, from_json = BudgetPolicy.load(toml_path), BudgetPolicy.load(json_path)
    assert from_toml == from_json
    assert from_toml.party_id == "bank-a"
    assert from_toml.budget_for(PrivacyUnit.EXAMPLE) == UnitBudget(max_epsilon=3.0, delta=1e-5, accountant=AccountantKind.PRV)
    assert from_toml.budget_for(PrivacyUnit.PARTICIPANT).accountant is AccountantKind.RDP
    assert BudgetPolicy.from_dict(from_toml.to_dict()) == from_toml


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        ({"budgets": {}}, "at least one unit"),
        ({"budgets": {"customer": {"max_epsilon": 1.0, "delta": 1e-5}}}, "unknown unit"),
        ({"budgets": {"example": {"max_epsilon": -1.0, "delta": 1e-5}}}, "positive"),
        ({"budgets": {"example": {"max_epsilon": float("inf"), "delta": 1e-5}}}, "finite"),
        ({"budgets": {"example": {"max_epsilon": 1.0, "delta": 1.0}}}, "delta"),
        ({"budgets": {"example": {"max_epsilon": 1.0}}}, "missing keys"),
        ({"budgets": {"example": {"max_epsilon": 1.0, "delta": 1e-5, "epsilon": 2}}}, "unknown keys"),
        ({"budgets": {"example": {"max_epsilon": 1.0, "delta": 1e-5, "accountant": "moments"}}}, "accountant"),
        ({"budgets": {"example": {"max_epsilon": True, "delta": 1e-5}}}, "finite number"),
        ({"budget": {}}, "unknown policy keys"),
        ({"party": "", "budgets": {"example": {"max_epsilon": 1.0, "delta": 1e-5}}}, "party"),
    ],
)
def test_invalid_policy_is_refused_with_a_specific_message(policy: dict, message: str) -> None:
    with pytest.raises(BudgetPolicyError, match=message):
        BudgetPolicy.from_dict(policy)


def test_unparsable_or_missing_policy_file_is_refused(tmp_path: Path) -> None:
    broken = tmp_path / "policy.toml"
    broken.write_text("[budgets.example\n")
    with pytest.raises(BudgetPolicyError, match="does not parse"):
        BudgetPolicy.load(broken)
    with pytest.raises(BudgetPolicyError, match="cannot read"):
        BudgetPolicy.load(tmp_path / "absent.json")
