"""A party's privacy ledger: every privacy spend and every refusal, signed and chained.

One append-only JSONL file per party. Each line is one :class:`LedgerEntry`:

=====================  =====================================================================
``format``             ``"secagg-privacy-ledger/1"``
``index``              0-based position in the ledger
``time``               ISO-8601 UTC, ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` (injectable clock)
``party``              the party's id (as enrolled with the server)
``round``              the round id (as the server names it)
``unit``               :class:`PrivacyUnit`: ``example`` (a bank's customers, DP-SGD) or
                       ``participant`` (a bank's whole contribution, noise in the ring)
``kind``               :class:`EntryKind`: ``spend``, ``refusal`` or ``unreleased``
``mechanism``          :class:`dp.accounting.MechanismKind` value
``parameters``         the mechanism event's ``to_dict()``
``delta``              the delta at which every epsilon of the entry is stated
``accountant``         :class:`dp.accounting.AccountantKind` value
``epsilon_increment``  cumulative after minus cumulative before (0 for a refusal)
``epsilon_cumulative`` epsilon of the composition of *all spends of this unit so far*
``epsilon_would_reach`` for a spend, equal to the cumulative; for a refusal or an
                       unreleased contribution, the cumulative it would have reached
                       (``null`` if unbounded)
``budget_epsilon``     the policy's maximum for the unit when the entry was written
``reason``             :class:`RefusalReason` for a refusal, :class:`UnreleasedReason`
                       for an unreleased contribution, ``null`` for a spend
``public_key``         the party's Ed25519 identity key, hex
``previous_hash``,     chaining and signature: see :mod:`dp.audit.chain` for the
``hash``, ``signature`` canonical encoding, the domain-separated signed message
                       (``b"secagg/privacy-ledger/v1/entry\\x00" || hash``) and the head
=====================  =====================================================================

Invariants: entries are never rewritten; a spend is written (and fsynced) *before* the
noised update or trained model leaves the party, so a crash over-counts, never
under-counts; epsilon is always the composition of every spend of the unit (not a sum
of per-round epsilons) computed by :func:`dp.accounting.compute_epsilon`.

Threat addressed: :func:`verify_ledger` gives tamper *evidence*. It detects any
modification, deletion, insertion, reordering or truncation by anyone without the
party's private key, and any epsilon claim that the recorded mechanisms and parameters
do not justify: it never takes the ledger's word for an epsilon. It is not tamper
*proofing*: a party holding its own key can rewrite and re-sign its whole ledger and
head. Two things catch that: the cross-check against the server's signed round records
(:func:`dp.audit.round_records.cross_check`), which names a party that leaves out a round it
contributed to or records weaker noise than the round used; and *anchors*, heads the
auditor kept from an earlier audit (``verify_ledger(..., anchors=...)``), which name a
ledger rolled back or rewritten since.

Verification needs only numpy, cryptography and :mod:`dp.accounting`; no torch.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import Any

from dp.accounting import AccountantKind, MechanismEvent, MechanismKind, compute_epsilon, event_from_dict
from dp.audit.chain import (
    ChainFormat,
    ChainRead,
    ChainWriter,
    Clock,
    Finding,
    FindingKind,
    LedgerCorrupted,
    LedgerError,
    canonical_json,
    iter_valid,
    read_chain,
    utc_now,
)
from dp.audit.verification import Verification, sorted_findings, verify_chain
from secagg.hazmat.keys import SigningKey

__all__ = [
    "PRIVACY_LEDGER_FORMAT",
    "EntryKind",
    "EpsilonTolerance",
    "LedgerEntry",
    "LedgerVerification",
    "PrivacyLedger",
    "PrivacyUnit",
    "RecomputedEpsilon",
    "RefusalReason",
    "UnreleasedReason",
    "verify_ledger",
]


class PrivacyUnit(str, Enum):
    """Whose privacy an epsilon protects (threat_model.md, section 4)."""

    EXAMPLE = "example"
    """One customer record of a bank: DP-SGD at the bank (Abadi et al. 2016)."""
    PARTICIPANT = "participant"
    """A bank's whole contribution: distributed noise in the ring (Agarwal et al. 2021)."""


class EntryKind(str, Enum):
    SPEND = "spend"
    """Privacy was spent: the contribution was (or is about to be) released."""
    REFUSAL = "refusal"
    """The party refused a contribution; nothing was spent."""
    UNRELEASED = "unreleased"
    """The party prepared a contribution for a round that ended before the contribution
    left it (the point of release is the masked input, docs/LEDGER.md section 9.3); nothing
    was spent. Added after the first definition of the format; older ledgers have none."""


class RefusalReason(str, Enum):
    BUDGET_EXCEEDED = "budget-exceeded"


class UnreleasedReason(str, Enum):
    ROUND_ABORTED = "round-aborted"
    """The round aborted before this party sent its masked input."""
    LEFT_OUT = "left-out"
    """The round went on without this party's masked input (it missed that stage)."""


_REASONS_OF_KIND: dict[EntryKind, type[Enum] | None] = {
    EntryKind.SPEND: None,
    EntryKind.REFUSAL: RefusalReason,
    EntryKind.UNRELEASED: UnreleasedReason,
}


PRIVACY_LEDGER_FORMAT = ChainFormat(
    name="secagg-privacy-ledger/1",
    owner_field="party",
    body_fields=frozenset(
        {
            "round",
            "unit",
            "kind",
            "mechanism",
            "parameters",
            "delta",
            "accountant",
            "epsilon_increment",
            "epsilon_cumulative",
            "epsilon_would_reach",
            "budget_epsilon",
            "reason",
        }
    ),
    entry_domain=b"secagg/privacy-ledger/v1/entry\x00",
    head_domain=b"secagg/privacy-ledger/v1/head\x00",
)


@dataclass(frozen=True, slots=True)
class EpsilonTolerance:
    """How far a recorded epsilon may differ from the recomputed one before it is flagged:
    ``|claim - recomputed| <= absolute + relative * recomputed``. The defaults absorb
    floating-point differences between library versions, nothing of privacy relevance."""

    relative: float = 1e-6
    absolute: float = 1e-9

    def matches(self, claim: float, recomputed: float) -> bool:
        return abs(claim - recomputed) <= self.absolute + self.relative * abs(recomputed)

    def exceeds(self, value: float, bound: float) -> bool:
        return value > bound + self.absolute + self.relative * abs(bound)


def _number(value: Any, name: str, *, allow_none: bool = False) -> float | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} is not a finite number")
    return float(value)


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """One parsed, well-typed ledger line. Parsing does not check hashes or signatures;
    :func:`verify_ledger` does."""

    index: int
    time: str
    party: str
    round_id: str
    unit: PrivacyUnit
    kind: EntryKind
    mechanism: MechanismKind
    parameters: Mapping[str, Any]
    delta: float
    accountant: AccountantKind
    epsilon_increment: float
    epsilon_cumulative: float
    epsilon_would_reach: float | None
    budget_epsilon: float | None
    reason: RefusalReason | UnreleasedReason | None
    public_key: str
    previous_hash: str
    hash: str
    signature: str

    @classmethod
    def from_json(cls, entry: Mapping[str, Any]) -> LedgerEntry:
        """Build from a line whose envelope :func:`dp.audit.chain.read_chain` accepted;
        raises ``ValueError`` naming the first field that is not valid."""
        round_id = entry["round"]
        if not isinstance(round_id, str) or not round_id:
            raise ValueError("round is not a non-empty string")
        try:
            unit = PrivacyUnit(entry["unit"])
            kind = EntryKind(entry["kind"])
            mechanism = MechanismKind(entry["mechanism"])
            accountant = AccountantKind(entry["accountant"])
            reasons = _REASONS_OF_KIND[kind]
            if (reasons is None) != (entry["reason"] is None):
                raise ValueError(f"a {kind.value} entry {'carries no' if reasons is None else 'needs a'} reason")
            reason = None if reasons is None else reasons(entry["reason"])
        except ValueError as exc:
            raise ValueError(f"unknown value: {exc}") from exc
        if not isinstance(entry["parameters"], dict):
            raise ValueError("parameters is not an object")
        delta = _number(entry["delta"], "delta")
        assert delta is not None
        if not 0.0 < delta < 1.0:
            raise ValueError("delta is not in (0, 1)")
        increment = _number(entry["epsilon_increment"], "epsilon_increment")
        cumulative = _number(entry["epsilon_cumulative"], "epsilon_cumulative")
        would_reach = _number(entry["epsilon_would_reach"], "epsilon_would_reach", allow_none=True)
        budget = _number(entry["budget_epsilon"], "budget_epsilon", allow_none=True)
        assert increment is not None and cumulative is not None
        if budget is not None and budget <= 0:
            raise ValueError("budget_epsilon is not positive")
        if kind is EntryKind.SPEND and would_reach is None:
            raise ValueError("a spend must state epsilon_would_reach")
        return cls(
            index=entry["index"],
            time=entry["time"],
            party=entry["party"],
            round_id=round_id,
            unit=unit,
            kind=kind,
            mechanism=mechanism,
            parameters=MappingProxyType(dict(entry["parameters"])),
            delta=delta,
            accountant=accountant,
            epsilon_increment=increment,
            epsilon_cumulative=cumulative,
            epsilon_would_reach=would_reach,
            budget_epsilon=budget,
            reason=reason,  # type: ignore[arg-type]
            public_key=entry["public_key"],
            previous_hash=entry["previous_hash"],
            hash=entry["hash"],
            signature=entry["signature"],
        )

    def event(self) -> MechanismEvent:
        """The mechanism event the entry records; raises if the parameters do not describe
        exactly one valid event of the recorded mechanism."""
        event = event_from_dict(dict(self.parameters))
        if event.mechanism is not self.mechanism:
            raise ValueError(f"parameters describe a {event.mechanism.value} event, the entry says {self.mechanism.value}")
        if canonical_json(event.to_dict()) != canonical_json(dict(self.parameters)):
            raise ValueError("parameters do not round-trip through the mechanism event")
        return event

    def to_dict(self) -> dict[str, Any]:
        """The entry exactly as it appears in the ledger."""
        return {
            "format": PRIVACY_LEDGER_FORMAT.name,
            "index": self.index,
            "time": self.time,
            "party": self.party,
            "round": self.round_id,
            "unit": self.unit.value,
            "kind": self.kind.value,
            "mechanism": self.mechanism.value,
            "parameters": dict(self.parameters),
            "delta": self.delta,
            "accountant": self.accountant.value,
            "epsilon_increment": self.epsilon_increment,
            "epsilon_cumulative": self.epsilon_cumulative,
            "epsilon_would_reach": self.epsilon_would_reach,
            "budget_epsilon": self.budget_epsilon,
            "reason": None if self.reason is None else self.reason.value,
            "public_key": self.public_key,
            "previous_hash": self.previous_hash,
            "hash": self.hash,
            "signature": self.signature,
        }


@dataclass(frozen=True, slots=True)
class RecomputedEpsilon:
    """The verifier's own epsilons for one entry (never the ledger's claims)."""

    position: int
    """The entry's 0-based position in the file (what findings' ``index`` refers to)."""
    increment: float
    cumulative: float
    would_reach: float
    """``math.inf`` when the composition is unbounded."""


@dataclass(frozen=True, slots=True)
class LedgerVerification(Verification[LedgerEntry]):
    """The outcome of :func:`verify_ledger` (see :class:`dp.audit.verification.Verification`),
    with the verifier's own epsilons: ``recomputed`` holds one item per entry whose
    mechanism could be evaluated, keyed by the entry's position in the file."""

    recomputed: tuple[RecomputedEpsilon, ...] = field(kw_only=True)

    @property
    def party(self) -> str | None:
        """The party the ledger declares."""
        return self.owner

    def recomputed_at(self, position: int) -> RecomputedEpsilon | None:
        """The verifier's epsilons for the entry at ``position``, if they could be computed."""
        for recomputed in self.recomputed:
            if recomputed.position == position:
                return recomputed
        return None


class _Composition:
    """The spends of each unit so far, and their composed epsilon at a (delta, accountant).

    Spends with identical parameters are handed to :func:`compute_epsilon` as one event
    with their steps added: an event of ``k`` steps *is* ``k`` repetitions of the mechanism
    (:mod:`dp.accounting.events`) and composition is commutative, so the history is the
    same; it keeps each evaluation proportional to the number of distinct mechanisms, not
    to the ledger's length. (Results agree with the unmerged history to floating-point
    rounding, far inside :class:`EpsilonTolerance`.)
    """

    def __init__(self) -> None:
        self._events: dict[PrivacyUnit, list[MechanismEvent]] = {unit: [] for unit in PrivacyUnit}
        self._steps: dict[PrivacyUnit, dict[bytes, tuple[MechanismEvent, int]]] = {unit: {} for unit in PrivacyUnit}
        self._cache: dict[tuple[PrivacyUnit, int, float, AccountantKind], float] = {}

    def events(self, unit: PrivacyUnit) -> tuple[MechanismEvent, ...]:
        return tuple(self._events[unit])

    @staticmethod
    def _merge(steps: dict[bytes, tuple[MechanismEvent, int]], event: MechanismEvent) -> None:
        fields = event.to_dict()
        fields.pop("steps")
        key = canonical_json(fields)
        prototype, total = steps.get(key, (event, 0))
        steps[key] = (prototype, total + event.steps)

    def _merged(self, unit: PrivacyUnit, extra: MechanismEvent | None) -> list[MechanismEvent]:
        steps = dict(self._steps[unit])
        if extra is not None:
            self._merge(steps, extra)
        return [dataclasses.replace(prototype, steps=total) for prototype, total in steps.values()]

    def epsilon(
        self, unit: PrivacyUnit, *, delta: float, accountant: AccountantKind, extra: MechanismEvent | None = None
    ) -> float:
        if not self._events[unit] and extra is None:
            return 0.0
        key = (unit, len(self._events[unit]), delta, accountant)
        if extra is None and key in self._cache:
            return self._cache[key]
        value = float(compute_epsilon(self._merged(unit, extra), delta=delta, accountant=accountant))
        if extra is None:
            self._cache[key] = value
        return value

    def add(self, unit: PrivacyUnit, event: MechanismEvent, *, known: tuple[float, AccountantKind, float] | None = None) -> None:
        """Append a spend; ``known`` = (delta, accountant, epsilon) of the new composition,
        already computed by the caller, saves the next entry recomputing it."""
        self._events[unit].append(event)
        self._merge(self._steps[unit], event)
        if known is not None:
            delta, accountant, epsilon = known
            self._cache[(unit, len(self._events[unit]), delta, accountant)] = epsilon


def _recompute(
    entries: Sequence[tuple[int, LedgerEntry]],
    tolerance: EpsilonTolerance,
) -> tuple[list[RecomputedEpsilon], list[Finding], _Composition]:
    composition = _Composition()
    recomputed: list[RecomputedEpsilon] = []
    findings: list[Finding] = []
    for position, entry in entries:
        try:
            event = entry.event()
        except Exception as exc:  # attacker-controlled parameters: every refusal is a finding, never a crash
            findings.append(Finding(FindingKind.MALFORMED_ENTRY, position, f"parameters: {type(exc).__name__}: {exc}"))
            continue
        try:
            before = composition.epsilon(entry.unit, delta=entry.delta, accountant=entry.accountant)
            with_event = composition.epsilon(entry.unit, delta=entry.delta, accountant=entry.accountant, extra=event)
        except Exception as exc:  # an accountant that cannot evaluate these parameters
            findings.append(
                Finding(FindingKind.MALFORMED_ENTRY, position, f"epsilon cannot be computed: {type(exc).__name__}: {exc}")
            )
            continue
        if entry.kind is EntryKind.SPEND:
            cumulative, increment = with_event, with_event - before
            composition.add(entry.unit, event, known=(entry.delta, entry.accountant, with_event))
        else:
            cumulative, increment = before, 0.0
        recomputed.append(
            RecomputedEpsilon(position=position, increment=increment, cumulative=cumulative, would_reach=with_event)
        )
        if not tolerance.matches(entry.epsilon_increment, increment):
            findings.append(
                Finding(
                    FindingKind.EPSILON_INCREMENT_MISMATCH,
                    position,
                    f"claims increment {entry.epsilon_increment!r}, the recorded mechanism gives {increment!r}",
                )
            )
        if not tolerance.matches(entry.epsilon_cumulative, cumulative):
            findings.append(
                Finding(
                    FindingKind.EPSILON_CUMULATIVE_MISMATCH,
                    position,
                    f"claims cumulative {entry.epsilon_cumulative!r}, composing the recorded spends gives {cumulative!r}",
                )
            )
        claimed_reach = math.inf if entry.epsilon_would_reach is None else entry.epsilon_would_reach
        if not (math.isinf(claimed_reach) and math.isinf(with_event)) and not tolerance.matches(claimed_reach, with_event):
            findings.append(
                Finding(
                    FindingKind.EPSILON_REFUSAL_MISMATCH
                    if entry.kind is not EntryKind.SPEND
                    else FindingKind.EPSILON_CUMULATIVE_MISMATCH,
                    position,
                    f"claims epsilon_would_reach {entry.epsilon_would_reach!r}, recomputed {with_event!r}",
                )
            )
        if (
            entry.kind is EntryKind.SPEND
            and entry.budget_epsilon is not None
            and tolerance.exceeds(cumulative, entry.budget_epsilon)
        ):
            findings.append(
                Finding(
                    FindingKind.OVER_BUDGET,
                    position,
                    f"{entry.unit.value}-level epsilon {cumulative:.6g} exceeds the recorded budget {entry.budget_epsilon:.6g}",
                )
            )
    return recomputed, findings, composition


def _entries_of(read: ChainRead) -> tuple[list[tuple[int, LedgerEntry]], list[Finding]]:
    parsed: list[tuple[int, LedgerEntry]] = []
    findings: list[Finding] = []
    for position, raw in iter_valid(read):
        try:
            parsed.append((position, LedgerEntry.from_json(raw)))
        except ValueError as exc:
            findings.append(Finding(FindingKind.MALFORMED_ENTRY, position, str(exc)))
    return parsed, findings


def verify_ledger(
    path: Path | str,
    *,
    public_key: bytes | None = None,
    anchors: Sequence[Path] = (),
    tolerance: EpsilonTolerance = EpsilonTolerance(),
) -> LedgerVerification:
    """Verify a privacy ledger completely: chain, signatures (against ``public_key`` if
    pinned, else against the key the ledger declares), the signed head, every head the
    auditor kept from earlier audits (``anchors``), and every epsilon claim recomputed
    from the recorded mechanisms. Findings are sorted by entry."""
    checked = verify_chain(
        path, PRIVACY_LEDGER_FORMAT, lambda _, raw: LedgerEntry.from_json(raw), public_key=public_key, anchors=anchors
    )
    recomputed, epsilon_findings, _ = _recompute(list(zip(checked.positions, checked.entries, strict=True)), tolerance)
    return LedgerVerification(
        path=checked.path,
        ledger_format=checked.ledger_format,
        owner=checked.owner,
        public_key=checked.public_key,
        key_pinned=checked.key_pinned,
        entries=checked.entries,
        positions=checked.positions,
        findings=sorted_findings((*checked.findings, *epsilon_findings)),
        head_entries=checked.head_entries,
        recomputed=tuple(recomputed),
    )


class PrivacyLedger:
    """The writer of one party's privacy ledger (the bank's side).

    :meth:`open` verifies the existing ledger under the party's own key, epsilons
    included, and refuses to extend one that does not verify. Budget enforcement lives in
    :mod:`dp.budget`; this class records what it is told, computing every epsilon itself.
    """

    def __init__(self, writer: ChainWriter, entries: list[LedgerEntry], composition: _Composition) -> None:
        self._writer = writer
        self._entries = entries
        self._composition = composition

    @classmethod
    def open(cls, path: Path | str, *, party_id: str, signing_key: SigningKey, clock: Clock = utc_now) -> PrivacyLedger:
        writer = ChainWriter.open(Path(path), PRIVACY_LEDGER_FORMAT, owner=party_id, signing_key=signing_key, clock=clock)
        try:
            read = read_chain(writer.path, PRIVACY_LEDGER_FORMAT, public_key=signing_key.public_bytes)
            parsed, parse_findings = _entries_of(read)
            _, epsilon_findings, composition = _recompute(parsed, EpsilonTolerance())
            if parse_findings or epsilon_findings:
                raise LedgerCorrupted(writer.path, tuple(parse_findings + epsilon_findings))
        except BaseException:
            writer.close()
            raise
        return cls(writer, [entry for _, entry in parsed], composition)

    @property
    def path(self) -> Path:
        return self._writer.path

    @property
    def party_id(self) -> str:
        return self._writer.owner

    @property
    def entries(self) -> tuple[LedgerEntry, ...]:
        return tuple(self._entries)

    def spent_events(self, unit: PrivacyUnit) -> tuple[MechanismEvent, ...]:
        """Every event spent for ``unit``, in order."""
        return self._composition.events(unit)

    def cumulative_epsilon(self, unit: PrivacyUnit, *, delta: float, accountant: AccountantKind = AccountantKind.RDP) -> float:
        """Epsilon at ``delta`` of the composition of every spend of ``unit`` so far."""
        return self._composition.epsilon(unit, delta=delta, accountant=accountant)

    def epsilon_with(
        self, unit: PrivacyUnit, event: MechanismEvent, *, delta: float, accountant: AccountantKind = AccountantKind.RDP
    ) -> float:
        """Epsilon at ``delta`` the unit would reach if ``event`` were spent next."""
        return self._composition.epsilon(unit, delta=delta, accountant=accountant, extra=event)

    def record_spend(
        self,
        *,
        round_id: str,
        unit: PrivacyUnit,
        event: MechanismEvent,
        delta: float,
        accountant: AccountantKind = AccountantKind.RDP,
        budget_epsilon: float | None = None,
    ) -> LedgerEntry:
        """Record a spend durably; call it *before* releasing the contribution. Does not
        check the budget (that is :meth:`dp.budget.BudgetGuard.charge`)."""
        before = self.cumulative_epsilon(unit, delta=delta, accountant=accountant)
        after = self.epsilon_with(unit, event, delta=delta, accountant=accountant)
        if not math.isfinite(after):
            raise LedgerError(f"the {unit.value}-level epsilon of this spend is unbounded; it cannot be recorded or released")
        entry = self._append(
            round_id=round_id,
            unit=unit,
            kind=EntryKind.SPEND,
            event=event,
            delta=delta,
            accountant=accountant,
            increment=after - before,
            cumulative=after,
            would_reach=after,
            budget_epsilon=budget_epsilon,
            reason=None,
        )
        self._composition.add(unit, event, known=(delta, AccountantKind(accountant), after))
        return entry

    def record_refusal(
        self,
        *,
        round_id: str,
        unit: PrivacyUnit,
        event: MechanismEvent,
        delta: float,
        accountant: AccountantKind = AccountantKind.RDP,
        budget_epsilon: float | None,
        reason: RefusalReason = RefusalReason.BUDGET_EXCEEDED,
    ) -> LedgerEntry:
        """Record that ``event`` was refused; the cumulative epsilon is unchanged."""
        return self._append_without_spend(
            EntryKind.REFUSAL, round_id, unit, event, delta, accountant, budget_epsilon, RefusalReason(reason)
        )

    def record_unreleased(
        self,
        *,
        round_id: str,
        unit: PrivacyUnit,
        event: MechanismEvent,
        delta: float,
        accountant: AccountantKind = AccountantKind.RDP,
        budget_epsilon: float | None,
        reason: UnreleasedReason,
    ) -> LedgerEntry:
        """Record that a contribution prepared for ``round_id`` never left; nothing is spent."""
        return self._append_without_spend(
            EntryKind.UNRELEASED, round_id, unit, event, delta, accountant, budget_epsilon, UnreleasedReason(reason)
        )

    def _append_without_spend(
        self,
        kind: EntryKind,
        round_id: str,
        unit: PrivacyUnit,
        event: MechanismEvent,
        delta: float,
        accountant: AccountantKind,
        budget_epsilon: float | None,
        reason: RefusalReason | UnreleasedReason,
    ) -> LedgerEntry:
        """An entry that leaves the cumulative epsilon unchanged and states what ``event`` would have reached."""
        before = self.cumulative_epsilon(unit, delta=delta, accountant=accountant)
        would_reach = self.epsilon_with(unit, event, delta=delta, accountant=accountant)
        return self._append(
            round_id=round_id,
            unit=unit,
            kind=kind,
            event=event,
            delta=delta,
            accountant=accountant,
            increment=0.0,
            cumulative=before,
            would_reach=would_reach if math.isfinite(would_reach) else None,
            budget_epsilon=budget_epsilon,
            reason=reason,
        )

    def entries_for(self, round_id: str) -> tuple[LedgerEntry, ...]:
        """Every entry recorded for ``round_id``, in order."""
        return tuple(entry for entry in self._entries if entry.round_id == round_id)

    def _append(
        self,
        *,
        round_id: str,
        unit: PrivacyUnit,
        kind: EntryKind,
        event: MechanismEvent,
        delta: float,
        accountant: AccountantKind,
        increment: float,
        cumulative: float,
        would_reach: float | None,
        budget_epsilon: float | None,
        reason: RefusalReason | UnreleasedReason | None,
    ) -> LedgerEntry:
        if not isinstance(round_id, str) or not round_id:
            raise LedgerError("round_id must be a non-empty string")
        if not 0.0 < delta < 1.0:
            raise LedgerError(f"delta must be in (0, 1), got {delta!r}")
        body = {
            "round": round_id,
            "unit": PrivacyUnit(unit).value,
            "kind": kind.value,
            "mechanism": event.mechanism.value,
            "parameters": event.to_dict(),
            "delta": float(delta),
            "accountant": AccountantKind(accountant).value,
            "epsilon_increment": float(increment),
            "epsilon_cumulative": float(cumulative),
            "epsilon_would_reach": None if would_reach is None else float(would_reach),
            "budget_epsilon": None if budget_epsilon is None else float(budget_epsilon),
            "reason": None if reason is None else reason.value,
        }
        entry = LedgerEntry.from_json(self._writer.append(body))
        self._entries.append(entry)
        return entry

    def close(self) -> None:
        self._writer.close()

    def __enter__(self) -> PrivacyLedger:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None) -> None:
        self.close()
