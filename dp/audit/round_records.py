"""The aggregation server's round ledger, and its cross-check against the parties' ledgers.

One append-only JSONL file, chained, signed and checkpointed exactly like a privacy
ledger (:mod:`dp.audit.chain`), with its own signature domains
(``b"secagg/server-ledger/v1/entry\\x00"`` and ``.../head\\x00``). The server appends one
:class:`ServerRoundRecord` when a round ends, completed or aborted:

==================  ==========================================================================
``round``           the round id, exactly as parties write it in their privacy ledgers
``cohort``          the invited parties' ids, in cohort order (participant ``i`` is ``cohort[i]``)
``threshold``       t
``mode``            :class:`secagg.config.ProtocolMode` value
``dim``, ``bits``   vector length and ring width (Z_2^bits)
``privacy``         the round's DP parameters: a list of ``{unit, mechanism, parameters}``
                    (participant-level noise for the worst case of t survivors, and the
                    example-level DP-SGD parameters if the round prescribes them)
``survivors``       per protocol stage, the parties whose message the server accepted:
                    ``R0-advertise-keys`` (U1), ``R1-share-keys`` (U2),
                    ``R2-masked-input-collection`` (U3), ``R3-consistency-check`` (U4),
                    ``R4-unmasking`` (U5); each a subset of the previous one
``outcome``         :class:`RoundOutcome`
``abort_reason``    the service's stable abort-reason string iff aborted, else ``null``
``training``        only for a round of a consortium's training (docs/CONSORTIUM.md):
                    ``{"id", "manifest_hash", "round"}``, the training, the hash of the manifest
                    its members signed and the step; absent for any other round (a ledger of
                    such rounds is exactly the format's first definition)
==================  ==========================================================================

The stage names are the values of ``secagg.server.stages.ServerStage``.

What the cross-check catches (:func:`cross_check`): a party whose masked input the
server accepted in R2 has released a noised contribution, so its ledger must charge that
round: for each unit the round's ``privacy`` names, a spend with exactly those
parameters. A party that truncates or rewrites its own ledger (which its key lets it
do undetectably from the ledger alone) to hide a round, or records weaker noise than
the round used, is named here. The cross-check trusts the server's records; a server
and a party colluding to omit a round is outside what any log of theirs can reveal.
Rounds whose ``privacy`` is empty impose no requirement.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import Any

from dp.accounting import MechanismEvent, MechanismKind, event_from_dict
from dp.audit.chain import (
    ChainFormat,
    ChainWriter,
    Clock,
    Finding,
    FindingKind,
    JsonObject,
    LedgerError,
    canonical_json,
    utc_now,
)
from dp.audit.privacy_ledger import EntryKind, LedgerVerification, PrivacyUnit
from dp.audit.verification import Verification, verify_chain
from secagg.config import ProtocolMode
from secagg.hazmat.keys import SigningKey
from secagg.rounds import Round

__all__ = [
    "SERVER_LEDGER_FORMAT",
    "CrossCheckFinding",
    "RoundAlreadyRecorded",
    "RoundOutcome",
    "RoundPrivacy",
    "RoundStage",
    "RoundTraining",
    "ServerLedger",
    "ServerLedgerEntry",
    "ServerLedgerVerification",
    "ServerRoundRecord",
    "cross_check",
    "verify_server_ledger",
]


class RoundAlreadyRecorded(LedgerError):
    """The server ledger already holds a record of this round; nothing was written."""


RoundStage = Round
"""The protocol stages whose survivors the server records (:class:`secagg.rounds.Round`)."""


class RoundOutcome(str, Enum):
    COMPLETED = "completed"
    ABORTED = "aborted"


SERVER_LEDGER_FORMAT = ChainFormat(
    name="secagg-server-ledger/1",
    owner_field="server",
    body_fields=frozenset(
        {"round", "cohort", "threshold", "mode", "dim", "bits", "privacy", "survivors", "outcome", "abort_reason"}
    ),
    entry_domain=b"secagg/server-ledger/v1/entry\x00",
    head_domain=b"secagg/server-ledger/v1/head\x00",
    optional_body_fields=frozenset({"training"}),
)


@dataclass(frozen=True, slots=True)
class RoundTraining:
    """The training a round belongs to: its id, the hash of its signed manifest and the step."""

    training_id: str
    manifest_hash: str
    step: int

    def __post_init__(self) -> None:
        if not isinstance(self.training_id, str) or not self.training_id:
            raise ValueError("a training id is a non-empty string")
        if (
            not isinstance(self.manifest_hash, str)
            or len(self.manifest_hash) != 64
            or set(self.manifest_hash) - set("0123456789abcdef")
        ):
            raise ValueError("a manifest hash is 64 lowercase hex digits")
        if not _is_count(self.step) or self.step < 0:
            raise ValueError("a training round is a non-negative integer")

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.training_id, "manifest_hash": self.manifest_hash, "round": self.step}

    @classmethod
    def from_dict(cls, value: Any) -> RoundTraining:
        if not isinstance(value, Mapping) or set(value) != {"id", "manifest_hash", "round"}:
            raise ValueError("training is exactly {id, manifest_hash, round}")
        return cls(training_id=value["id"], manifest_hash=value["manifest_hash"], step=value["round"])


@dataclass(frozen=True, slots=True)
class RoundPrivacy:
    """One DP mechanism a round prescribes, for one unit."""

    unit: PrivacyUnit
    event: MechanismEvent

    def to_dict(self) -> dict[str, Any]:
        return {"unit": self.unit.value, "mechanism": self.event.mechanism.value, "parameters": self.event.to_dict()}

    @classmethod
    def from_dict(cls, value: Mapping[str, Any]) -> RoundPrivacy:
        if not isinstance(value, Mapping) or set(value) != {"unit", "mechanism", "parameters"}:
            raise ValueError("a privacy item has exactly the fields unit, mechanism, parameters")
        unit = PrivacyUnit(value["unit"])
        mechanism = MechanismKind(value["mechanism"])
        if not isinstance(value["parameters"], dict):
            raise ValueError("privacy parameters is not an object")
        event = event_from_dict(dict(value["parameters"]))
        if event.mechanism is not mechanism:
            raise ValueError(f"privacy parameters describe {event.mechanism.value}, not {mechanism.value}")
        return cls(unit=unit, event=event)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True, slots=True)
class ServerRoundRecord:
    """What the server records about one finished round. Validated on construction:
    survivors nest (each stage a subset of the previous, R0 a subset of the cohort),
    the threshold is within the cohort, and an abort reason is given iff aborted."""

    round_id: str
    cohort: tuple[str, ...]
    threshold: int
    mode: ProtocolMode
    dim: int
    bits: int
    privacy: tuple[RoundPrivacy, ...]
    survivors: Mapping[RoundStage, tuple[str, ...]]
    outcome: RoundOutcome
    abort_reason: str | None = None
    training: RoundTraining | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.round_id, str) or not self.round_id:
            raise ValueError("round_id must be a non-empty string")
        if not self.cohort or len(set(self.cohort)) != len(self.cohort) or not all(isinstance(p, str) and p for p in self.cohort):
            raise ValueError("cohort must be non-empty, distinct, non-empty party ids")
        if not _is_count(self.threshold) or not 1 <= self.threshold <= len(self.cohort):
            raise ValueError(f"threshold must be in 1..{len(self.cohort)}")
        if not _is_count(self.dim) or self.dim < 1:
            raise ValueError("dim must be a positive integer")
        if not _is_count(self.bits) or not 1 <= self.bits <= 64:
            raise ValueError("bits must be in 1..64")
        object.__setattr__(self, "mode", ProtocolMode(self.mode))
        object.__setattr__(self, "outcome", RoundOutcome(self.outcome))
        survivors = {RoundStage(stage): tuple(parties) for stage, parties in self.survivors.items()}
        previous = set(self.cohort)
        for stage in RoundStage:
            parties = survivors.setdefault(stage, ())
            if len(set(parties)) != len(parties):
                raise ValueError(f"{stage.value} lists a party twice")
            if not set(parties) <= previous:
                raise ValueError(f"{stage.value} survivors are not a subset of the previous stage's")
            previous = set(parties)
        object.__setattr__(self, "survivors", MappingProxyType(survivors))
        units = [item.unit for item in self.privacy]
        if len(set(units)) != len(units):
            raise ValueError("privacy names a unit twice")
        object.__setattr__(self, "privacy", tuple(self.privacy))
        if (self.outcome is RoundOutcome.ABORTED) != bool(self.abort_reason):
            raise ValueError("an abort reason is given iff the round aborted")

    @property
    def contributors(self) -> tuple[str, ...]:
        """Parties whose masked, noised input the server accepted (R2 survivors, U3)."""
        return self.survivors[RoundStage.MASKED_INPUT_COLLECTION]

    def to_dict(self) -> dict[str, Any]:
        return {
            "round": self.round_id,
            "cohort": list(self.cohort),
            "threshold": self.threshold,
            "mode": self.mode.value,
            "dim": self.dim,
            "bits": self.bits,
            "privacy": [item.to_dict() for item in self.privacy],
            "survivors": {stage.value: list(self.survivors[stage]) for stage in RoundStage},
            "outcome": self.outcome.value,
            "abort_reason": self.abort_reason,
            **({} if self.training is None else {"training": self.training.to_dict()}),
        }

    @classmethod
    def from_dict(cls, value: Mapping[str, Any]) -> ServerRoundRecord:
        """Inverse of :meth:`to_dict`; raises ``ValueError`` on anything else."""
        try:
            cohort = value["cohort"]
            privacy = value["privacy"]
            survivors = value["survivors"]
            if not isinstance(cohort, list) or not isinstance(privacy, list) or not isinstance(survivors, dict):
                raise ValueError("cohort and privacy are lists, survivors an object")
            if set(survivors) != {stage.value for stage in RoundStage}:
                raise ValueError("survivors must name every stage R0..R4")
            if not all(isinstance(parties, list) for parties in survivors.values()):
                raise ValueError("survivors are lists")
            return cls(
                round_id=value["round"],
                cohort=tuple(cohort),
                threshold=value["threshold"],
                mode=ProtocolMode(value["mode"]),
                dim=value["dim"],
                bits=value["bits"],
                privacy=tuple(RoundPrivacy.from_dict(item) for item in privacy),
                survivors={RoundStage(stage): tuple(parties) for stage, parties in survivors.items()},
                outcome=RoundOutcome(value["outcome"]),
                abort_reason=value["abort_reason"],
                training=RoundTraining.from_dict(value["training"]) if "training" in value else None,
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a server round record: {exc!r}") from exc


@dataclass(frozen=True, slots=True)
class ServerLedgerEntry:
    index: int
    time: str
    server: str
    record: ServerRoundRecord
    hash: str


@dataclass(frozen=True, slots=True)
class ServerLedgerVerification(Verification[ServerLedgerEntry]):
    """The outcome of :func:`verify_server_ledger` (see :class:`dp.audit.verification.Verification`)."""

    @property
    def server(self) -> str | None:
        """The server the ledger declares."""
        return self.owner


def _server_entry(position: int, raw: JsonObject) -> ServerLedgerEntry:
    record = ServerRoundRecord.from_dict(raw)
    return ServerLedgerEntry(index=position, time=raw["time"], server=raw["server"], record=record, hash=raw["hash"])


def verify_server_ledger(
    path: Path | str, *, public_key: bytes | None = None, anchors: Sequence[Path] = ()
) -> ServerLedgerVerification:
    """Verify the server's ledger: chain, signatures, head, heads kept from earlier audits
    (``anchors``), and that every record is valid."""
    checked = verify_chain(path, SERVER_LEDGER_FORMAT, _server_entry, public_key=public_key, anchors=anchors)
    return ServerLedgerVerification(
        path=checked.path,
        ledger_format=checked.ledger_format,
        owner=checked.owner,
        public_key=checked.public_key,
        key_pinned=checked.key_pinned,
        entries=checked.entries,
        positions=checked.positions,
        findings=checked.findings,
        head_entries=checked.head_entries,
    )


class ServerLedger:
    """The writer of the server's round ledger (used by the service)."""

    def __init__(self, writer: ChainWriter) -> None:
        self._writer = writer
        self._rounds = {entry["round"] for entry in writer.entries}

    @classmethod
    def open(cls, path: Path | str, *, server_id: str, signing_key: SigningKey, clock: Clock = utc_now) -> ServerLedger:
        writer = ChainWriter.open(Path(path), SERVER_LEDGER_FORMAT, owner=server_id, signing_key=signing_key, clock=clock)
        return cls(writer)

    @property
    def path(self) -> Path:
        return self._writer.path

    def append(self, record: ServerRoundRecord) -> ServerLedgerEntry:
        """Record one finished round durably."""
        if record.round_id in self._rounds:
            raise RoundAlreadyRecorded(f"round {record.round_id!r} is already recorded")
        raw = self._writer.append(record.to_dict())
        self._rounds.add(record.round_id)
        return ServerLedgerEntry(index=raw["index"], time=raw["time"], server=raw["server"], record=record, hash=raw["hash"])

    def close(self) -> None:
        self._writer.close()

    def __enter__(self) -> ServerLedger:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None) -> None:
        self.close()


@dataclass(frozen=True, slots=True)
class CrossCheckFinding:
    """A disagreement between one party's ledger and the server's records. ``finding.index``
    is the server ledger entry of the round."""

    party: str
    round_id: str
    finding: Finding

    def to_dict(self) -> dict[str, Any]:
        return {"party": self.party, "round": self.round_id, **self.finding.to_dict()}


def in_scope(record: ServerRoundRecord, training: str | None) -> bool:
    """True iff the record is one of ``training``'s rounds (every record when ``training`` is None)."""
    return training is None or (record.training is not None and record.training.training_id == training)


def cross_check(
    ledgers: Sequence[LedgerVerification], server: ServerLedgerVerification, *, training: str | None = None
) -> tuple[CrossCheckFinding, ...]:
    """Every R2 contributor of every recorded round whose ledger was given must charge the
    round, for each unit the round prescribes, with exactly the prescribed parameters.
    Parties without a ledger here are not judged (see :func:`parties_without_ledger`).
    With ``training``, only that training's rounds are checked (the other trainings of a
    shared server are other consortia's business; their records still count for the chain)."""
    by_party = {ledger.party: ledger for ledger in ledgers if ledger.party is not None}
    findings: list[CrossCheckFinding] = []
    for server_entry in server.entries:
        record = server_entry.record
        if not in_scope(record, training):
            continue
        for party in record.contributors:
            ledger = by_party.get(party)
            if ledger is None:
                continue
            spends = [entry for entry in ledger.entries if entry.kind is EntryKind.SPEND and entry.round_id == record.round_id]
            for prescribed in record.privacy:
                of_unit = [entry for entry in spends if entry.unit is prescribed.unit]
                if not of_unit:
                    findings.append(
                        CrossCheckFinding(
                            party,
                            record.round_id,
                            Finding(
                                FindingKind.SPEND_MISSING_FOR_ROUND,
                                server_entry.index,
                                f"{party} contributed to round {record.round_id} (R2) but its ledger charges no "
                                f"{prescribed.unit.value}-level spend for it",
                            ),
                        )
                    )
                    continue
                expected = canonical_json(prescribed.event.to_dict())
                if not any(
                    entry.mechanism is prescribed.event.mechanism and canonical_json(dict(entry.parameters)) == expected
                    for entry in of_unit
                ):
                    findings.append(
                        CrossCheckFinding(
                            party,
                            record.round_id,
                            Finding(
                                FindingKind.MECHANISM_DIFFERS_FROM_SERVER,
                                server_entry.index,
                                f"{party} charged round {record.round_id} with other {prescribed.unit.value}-level "
                                f"parameters than the server recorded ({prescribed.event.to_dict()})",
                            ),
                        )
                    )
    return tuple(findings)


def parties_without_ledger(
    ledgers: Sequence[LedgerVerification], server: ServerLedgerVerification, *, training: str | None = None
) -> tuple[str, ...]:
    """R2 contributors in the server's records (of ``training``, if given) whose ledger the auditor was not given."""
    known = {ledger.party for ledger in ledgers}
    missing = {
        party
        for entry in server.entries
        if in_scope(entry.record, training)
        for party in entry.record.contributors
        if party not in known
    }
    return tuple(sorted(missing))
