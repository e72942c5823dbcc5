"""A consortium's ledgers as the deployed system writes them, for the report's tests.

:func:`build_consortium` writes five banks' privacy ledgers and the server's round
ledger for eleven rounds: the preprocessing statistics round first (no DP declared, an
exact sum), then ten training rounds that each prescribe one DP-SGD event and one
Skellam event for every bank, so banks that contribute to the same rounds spend exactly
the same epsilon. bank-d drops out in training round 4 before sending its masked input
(it spends nothing there); bank-c drops out of training round 7 after sending it (it
spent); bank-e's smaller example-level budget makes it refuse the last two rounds.
Round ids are 32 hex digits, as the service draws them.

``python -m tests.dp.audit_scenarios OUT_DIR`` writes the ledgers and the HTML report
into OUT_DIR, to look at the report in a browser.
"""

from __future__ import annotations

import hashlib
import itertools
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from dp.accounting import SampledGaussian, Skellam, compute_epsilon
from dp.audit.privacy_ledger import PrivacyLedger, PrivacyUnit
from dp.audit.round_records import (
    RoundOutcome,
    RoundPrivacy,
    RoundStage,
    ServerLedger,
    ServerRoundRecord,
)
from dp.budget import BudgetExceeded, BudgetGuard, BudgetPolicy, UnitBudget
from secagg.config import ProtocolMode
from secagg.hazmat.keys import SigningKey
from secagg.hazmat.randomness import DeterministicRandom

DELTA = 1e-5
BANKS = ("bank-a", "bank-b", "bank-c", "bank-d", "bank-e")
TRAINING_ROUNDS = 10
TRAINING = SampledGaussian(noise_multiplier=1.1, sample_rate=0.02, steps=40)
NOISE = Skellam(l1_sensitivity=400.0, l2_sensitivity=20.0, variance=4.0e4, steps=1)
SERVER = "aggregator-1"
STAGES = tuple(RoundStage)


def round_id(number: int) -> str:
    return hashlib.sha256(f"consortium round {number}".encode()).hexdigest()[:32]


def bank_key(bank: str) -> SigningKey:
    return SigningKey.generate(DeterministicRandom.from_int(200 + BANKS.index(bank)))


def server_key() -> SigningKey:
    return SigningKey.generate(DeterministicRandom.from_int(299))


def clock() -> Callable[[], datetime]:
    ticks = itertools.count()
    return lambda: datetime(2026, 2, 2, 9, tzinfo=UTC) + timedelta(minutes=7 * next(ticks))


@dataclass(frozen=True)
class Consortium:
    ledgers: tuple[Path, ...]
    server: Path
    statistics_round: str
    training_rounds: tuple[str, ...]
    example_budget: float
    tight_budget: float


def build_consortium(directory: Path) -> Consortium:
    example_budget = 3.0
    tight_budget = compute_epsilon([TRAINING] * 8, delta=DELTA) * 1.001
    statistics = round_id(0)
    training = tuple(round_id(number) for number in range(1, TRAINING_ROUNDS + 1))
    dropped_before_input = {training[3]: {"bank-d"}}
    dropped_after_input = {training[6]: {"bank-c"}}
    contributed: dict[str, list[str]] = {round_: [] for round_ in training}
    paths = []
    for bank in BANKS:
        path = directory / f"{bank}.jsonl"
        paths.append(path)
        budget = tight_budget if bank == "bank-e" else example_budget
        policy = BudgetPolicy(
            {
                PrivacyUnit.EXAMPLE: UnitBudget(max_epsilon=budget, delta=DELTA),
                PrivacyUnit.PARTICIPANT: UnitBudget(max_epsilon=20.0, delta=DELTA),
            },
            party_id=bank,
        )
        with PrivacyLedger.open(path, party_id=bank, signing_key=bank_key(bank), clock=clock()) as ledger:
            guard = BudgetGuard(policy, ledger)
            for round_ in training:
                if bank in dropped_before_input.get(round_, set()):
                    continue
                try:
                    guard.charge_round(
                        round_id=round_, contributions={PrivacyUnit.EXAMPLE: TRAINING, PrivacyUnit.PARTICIPANT: NOISE}
                    )
                except BudgetExceeded:
                    continue
                contributed[round_].append(bank)
    server = directory / "server-ledger.jsonl"
    with ServerLedger.open(server, server_id=SERVER, signing_key=server_key(), clock=clock()) as ledger:
        ledger.append(
            ServerRoundRecord(
                round_id=statistics,
                cohort=BANKS,
                threshold=3,
                mode=ProtocolMode.ACTIVE,
                dim=24,
                bits=64,
                privacy=(),
                survivors=dict.fromkeys(STAGES, BANKS),
                outcome=RoundOutcome.COMPLETED,
            )
        )
        for round_ in training:
            inputs = tuple(contributed[round_])
            finished = tuple(bank for bank in inputs if bank not in dropped_after_input.get(round_, set()))
            shared = tuple(bank for bank in BANKS if bank not in dropped_before_input.get(round_, set()))
            ledger.append(
                ServerRoundRecord(
                    round_id=round_,
                    cohort=BANKS,
                    threshold=3,
                    mode=ProtocolMode.ACTIVE,
                    dim=1_000,
                    bits=32,
                    privacy=(RoundPrivacy(PrivacyUnit.EXAMPLE, TRAINING), RoundPrivacy(PrivacyUnit.PARTICIPANT, NOISE)),
                    survivors={
                        RoundStage.ADVERTISE_KEYS: BANKS,
                        RoundStage.SHARE_KEYS: shared,
                        RoundStage.MASKED_INPUT_COLLECTION: inputs,
                        RoundStage.CONSISTENCY_CHECK: finished,
                        RoundStage.UNMASKING: finished,
                    },
                    outcome=RoundOutcome.COMPLETED,
                )
            )
    return Consortium(
        ledgers=tuple(paths),
        server=server,
        statistics_round=statistics,
        training_rounds=training,
        example_budget=example_budget,
        tight_budget=tight_budget,
    )


def main(arguments: list[str]) -> None:
    from dp.audit.report import build_report, render_html, run_audit

    directory = Path(arguments[0])
    directory.mkdir(parents=True, exist_ok=True)
    consortium = build_consortium(directory)
    audit = run_audit(
        consortium.ledgers,
        keys_by_party={bank: bank_key(bank).public_bytes for bank in BANKS},
        server_ledger=consortium.server,
        server_public_key=server_key().public_bytes,
    )
    report = build_report(audit)
    (directory / "report.html").write_text(render_html(report), encoding="utf-8")
    print(report.verdict)
    print(directory / "report.html")


if __name__ == "__main__":
    main(sys.argv[1:])
