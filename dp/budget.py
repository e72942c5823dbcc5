"""Privacy budgets, enforced by the data holder before anything is spent.

A party's :class:`BudgetPolicy` names, per :class:`~dp.audit.privacy_ledger.PrivacyUnit`, the largest
epsilon at delta (under a named accountant) that the composition of all its spends may
ever reach. :class:`BudgetGuard` is the only door to the ledger's spends:

* :meth:`BudgetGuard.authorize` answers, without side effects, what the unit would
  reach if a contribution (a :class:`~dp.accounting.MechanismEvent`) were spent;
* :meth:`BudgetGuard.charge` records the spend in the ledger (durably, before the
  caller trains or releases anything), or, if the budget would be exceeded, records a
  refusal and raises :class:`BudgetExceeded`; the cumulative epsilon is unchanged;
* :meth:`BudgetGuard.charge_round` does the same for a round that spends several units
  at once (DP-SGD plus noise in the ring): every unit is checked first, and if any would
  exceed its budget, none is spent;
* :meth:`BudgetGuard.check_round` refuses a round (recording the refusal) that would
  exceed a budget, without spending: a bank calls it before it trains, and
  :meth:`charge_round` at the point of release (before its masked input leaves);
* :meth:`BudgetGuard.record_unreleased` records that a contribution prepared for a round
  never left (the round ended first): nothing is spent.

Invariant: the recorded cumulative epsilon of a unit never exceeds its budget, and a
contribution is released only after :meth:`charge` returned. A unit the policy does not
name cannot be charged (fail closed, :class:`BudgetPolicyError`). Threat addressed: a
coordinator (or a bug) asking a bank for more rounds than its compliance team agreed;
the bank refuses locally, whatever the server says.

A bank client's round, in order::

    ledger = PrivacyLedger.open(ledger_path, party_id="bank-a", signing_key=identity_key)
    guard = BudgetGuard(BudgetPolicy.load("policy.toml"), ledger)
    guard.charge_round(round_id=round_id, contributions={
        PrivacyUnit.EXAMPLE: dp_sgd_config.round_event(),      # SampledGaussian
        PrivacyUnit.PARTICIPANT: round_noise_event,             # Skellam, worst case of t survivors
    })                                                          # raises BudgetExceeded: stop here
    # only now: train, add noise in the ring, mask, send

Policy files (JSON, or TOML by the ``.toml`` suffix), unknown keys refused::

    party = "bank-a"                 # optional; must match the ledger's party
    [budgets.example]
    max_epsilon = 3.0
    delta = 1e-5
    accountant = "rdp"               # optional, default "rdp"
    [budgets.participant]
    max_epsilon = 1.0
    delta = 1e-6
"""

from __future__ import annotations

import json
import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from dp.accounting import AccountantKind, MechanismEvent
from dp.audit.privacy_ledger import EntryKind, LedgerEntry, PrivacyLedger, PrivacyUnit, RefusalReason, UnreleasedReason
from dp.errors import DPError

__all__ = ["Authorization", "BudgetExceeded", "BudgetGuard", "BudgetPolicy", "BudgetPolicyError", "UnitBudget"]


class BudgetPolicyError(DPError, ValueError):
    """A policy that is malformed or unsafe, or a unit the policy does not budget."""


class BudgetExceeded(DPError):
    """A contribution was refused because it would take a unit over its budget. Nothing
    was spent; the ledger records the refusal."""

    def __init__(
        self, *, unit: PrivacyUnit, round_id: str, spent: float, would_reach: float, budget: float, delta: float
    ) -> None:
        self.unit = unit
        self.round_id = round_id
        self.spent = spent
        self.would_reach = would_reach
        self.budget = budget
        self.delta = delta
        super().__init__(
            f"round {round_id}: {unit.value}-level epsilon would reach {would_reach:.6g} at delta {delta:g}, "
            f"over the budget {budget:.6g} (spent so far {spent:.6g}); refused, nothing spent"
        )


@dataclass(frozen=True, slots=True)
class UnitBudget:
    """The maximum epsilon at ``delta`` for one unit, under ``accountant``."""

    max_epsilon: float
    delta: float
    accountant: AccountantKind = AccountantKind.RDP

    def __post_init__(self) -> None:
        for name in ("max_epsilon", "delta"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise BudgetPolicyError(f"{name} must be a finite number, got {value!r}")
            object.__setattr__(self, name, float(value))
        if self.max_epsilon <= 0:
            raise BudgetPolicyError(f"max_epsilon must be positive, got {self.max_epsilon!r}")
        if not 0.0 < self.delta < 1.0:
            raise BudgetPolicyError(f"delta must be in (0, 1), got {self.delta!r}")
        try:
            object.__setattr__(self, "accountant", AccountantKind(self.accountant))
        except ValueError as exc:
            choices = ", ".join(kind.value for kind in AccountantKind)
            raise BudgetPolicyError(f"accountant must be one of {choices}, got {self.accountant!r}") from exc


@dataclass(frozen=True, slots=True)
class BudgetPolicy:
    """A party's budgets per unit. At least one unit must be budgeted."""

    budgets: Mapping[PrivacyUnit, UnitBudget]
    party_id: str | None = None

    def __post_init__(self) -> None:
        if not self.budgets:
            raise BudgetPolicyError("a policy must budget at least one unit")
        object.__setattr__(
            self, "budgets", MappingProxyType({PrivacyUnit(unit): budget for unit, budget in self.budgets.items()})
        )
        if self.party_id is not None and (not isinstance(self.party_id, str) or not self.party_id):
            raise BudgetPolicyError("party must be a non-empty string")

    def budget_for(self, unit: PrivacyUnit) -> UnitBudget:
        try:
            return self.budgets[unit]
        except KeyError:
            raise BudgetPolicyError(f"the policy sets no budget for {unit.value}-level privacy; refusing to spend it") from None

    @classmethod
    def from_dict(cls, value: Mapping[str, Any]) -> BudgetPolicy:
        if not isinstance(value, Mapping):
            raise BudgetPolicyError("a policy is an object with 'budgets' and optionally 'party'")
        unknown = set(value) - {"party", "budgets"}
        if unknown:
            raise BudgetPolicyError(f"unknown policy keys {sorted(unknown)}")
        raw_budgets = value.get("budgets")
        if not isinstance(raw_budgets, Mapping):
            raise BudgetPolicyError("'budgets' must map a unit (example, participant) to its budget")
        budgets: dict[PrivacyUnit, UnitBudget] = {}
        for name, raw in raw_budgets.items():
            try:
                unit = PrivacyUnit(name)
            except ValueError:
                raise BudgetPolicyError(f"unknown unit {name!r}; expected one of {[u.value for u in PrivacyUnit]}") from None
            if not isinstance(raw, Mapping):
                raise BudgetPolicyError(f"budget for {name} must be a table")
            unknown = set(raw) - {"max_epsilon", "delta", "accountant"}
            missing = {"max_epsilon", "delta"} - set(raw)
            if unknown or missing:
                raise BudgetPolicyError(f"budget for {name}: unknown keys {sorted(unknown)}, missing keys {sorted(missing)}")
            budgets[unit] = UnitBudget(
                max_epsilon=raw["max_epsilon"], delta=raw["delta"], accountant=raw.get("accountant", AccountantKind.RDP.value)
            )
        return cls(budgets=budgets, party_id=value.get("party"))

    @classmethod
    def load(cls, path: Path | str) -> BudgetPolicy:
        """Read a JSON policy, or a TOML one if the file name ends in ``.toml``."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise BudgetPolicyError(f"cannot read policy {path}: {exc}") from exc
        try:
            value = tomllib.loads(text) if path.suffix.lower() == ".toml" else json.loads(text)
        except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
            raise BudgetPolicyError(f"{path} does not parse: {exc}") from exc
        return cls.from_dict(value)

    def to_dict(self) -> dict[str, Any]:
        result: dict[str, Any] = {
            "budgets": {
                unit.value: {"max_epsilon": budget.max_epsilon, "delta": budget.delta, "accountant": budget.accountant.value}
                for unit, budget in self.budgets.items()
            }
        }
        if self.party_id is not None:
            result["party"] = self.party_id
        return result


@dataclass(frozen=True, slots=True)
class Authorization:
    """What spending ``event`` would do to ``unit``; ``allowed`` iff within budget."""

    round_id: str
    unit: PrivacyUnit
    event: MechanismEvent
    budget: UnitBudget
    spent: float
    would_reach: float

    @property
    def allowed(self) -> bool:
        return self.would_reach <= self.budget.max_epsilon

    @property
    def remaining_after(self) -> float:
        return self.budget.max_epsilon - self.would_reach


@dataclass(frozen=True, slots=True)
class BudgetGuard:
    """Enforces ``policy`` on ``ledger``'s spends. See the module docstring."""

    policy: BudgetPolicy
    ledger: PrivacyLedger

    def __post_init__(self) -> None:
        if self.policy.party_id is not None and self.policy.party_id != self.ledger.party_id:
            raise BudgetPolicyError(f"the policy is for {self.policy.party_id!r}, the ledger for {self.ledger.party_id!r}")

    def spent(self, unit: PrivacyUnit) -> float:
        """Epsilon spent so far for ``unit``, at the policy's delta and accountant."""
        budget = self.policy.budget_for(unit)
        return self.ledger.cumulative_epsilon(unit, delta=budget.delta, accountant=budget.accountant)

    def remaining(self, unit: PrivacyUnit) -> float:
        return self.policy.budget_for(unit).max_epsilon - self.spent(unit)

    def authorize(self, *, round_id: str, unit: PrivacyUnit, event: MechanismEvent) -> Authorization:
        """What spending ``event`` would do; writes nothing."""
        budget = self.policy.budget_for(unit)
        return Authorization(
            round_id=round_id,
            unit=unit,
            event=event,
            budget=budget,
            spent=self.ledger.cumulative_epsilon(unit, delta=budget.delta, accountant=budget.accountant),
            would_reach=self.ledger.epsilon_with(unit, event, delta=budget.delta, accountant=budget.accountant),
        )

    def charge(self, *, round_id: str, unit: PrivacyUnit, event: MechanismEvent) -> LedgerEntry:
        """Spend ``event`` if it fits the budget, else record a refusal and raise
        :class:`BudgetExceeded`. Call before training or releasing anything."""
        return self.charge_round(round_id=round_id, contributions={unit: event})[0]

    def check_round(self, *, round_id: str, contributions: Mapping[PrivacyUnit, MechanismEvent]) -> tuple[Authorization, ...]:
        """What spending the round would do; if any unit would exceed its budget, a refusal
        is recorded for each such unit and :class:`BudgetExceeded` is raised. Spends nothing."""
        if not contributions:
            raise BudgetPolicyError("a round contribution spends at least one unit")
        authorizations = tuple(self.authorize(round_id=round_id, unit=unit, event=event) for unit, event in contributions.items())
        self._refuse_if_over(round_id, authorizations)
        return authorizations

    def spent_in(self, round_id: str) -> frozenset[PrivacyUnit]:
        """The units already charged for ``round_id`` (a resumed round is not charged twice)."""
        return frozenset(entry.unit for entry in self.ledger.entries_for(round_id) if entry.kind is EntryKind.SPEND)

    def record_unreleased(
        self, *, round_id: str, contributions: Mapping[PrivacyUnit, MechanismEvent], reason: UnreleasedReason
    ) -> tuple[LedgerEntry, ...]:
        """Record that the contribution prepared for ``round_id`` never left; nothing is spent.

        Units already charged for the round, or already recorded as unreleased, are left alone.
        """
        recorded = {
            entry.unit for entry in self.ledger.entries_for(round_id) if entry.kind in (EntryKind.SPEND, EntryKind.UNRELEASED)
        }
        entries = []
        for unit, event in contributions.items():
            if unit in recorded:
                continue
            budget = self.policy.budget_for(unit)
            entries.append(
                self.ledger.record_unreleased(
                    round_id=round_id,
                    unit=unit,
                    event=event,
                    delta=budget.delta,
                    accountant=budget.accountant,
                    budget_epsilon=budget.max_epsilon,
                    reason=reason,
                )
            )
        return tuple(entries)

    def _refuse_if_over(self, round_id: str, authorizations: tuple[Authorization, ...]) -> None:
        refused = [authorization for authorization in authorizations if not authorization.allowed]
        if not refused:
            return
        for authorization in refused:
            self.ledger.record_refusal(
                round_id=round_id,
                unit=authorization.unit,
                event=authorization.event,
                delta=authorization.budget.delta,
                accountant=authorization.budget.accountant,
                budget_epsilon=authorization.budget.max_epsilon,
                reason=RefusalReason.BUDGET_EXCEEDED,
            )
        first = refused[0]
        raise BudgetExceeded(
            unit=first.unit,
            round_id=round_id,
            spent=first.spent,
            would_reach=first.would_reach,
            budget=first.budget.max_epsilon,
            delta=first.budget.delta,
        )

    def charge_round(self, *, round_id: str, contributions: Mapping[PrivacyUnit, MechanismEvent]) -> tuple[LedgerEntry, ...]:
        """Spend every unit's event of one round, or none: if any unit would exceed its
        budget, a refusal is recorded for each such unit and :class:`BudgetExceeded` (for
        the first) is raised before any spend is written."""
        if not contributions:
            raise BudgetPolicyError("a round contribution spends at least one unit")
        authorizations = tuple(self.authorize(round_id=round_id, unit=unit, event=event) for unit, event in contributions.items())
        self._refuse_if_over(round_id, authorizations)
        return tuple(
            self.ledger.record_spend(
                round_id=round_id,
                unit=authorization.unit,
                event=authorization.event,
                delta=authorization.budget.delta,
                accountant=authorization.budget.accountant,
                budget_epsilon=authorization.budget.max_epsilon,
            )
            for authorization in authorizations
        )
