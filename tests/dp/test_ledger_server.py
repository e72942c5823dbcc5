"""The server's round ledger and its cross-check against the parties' privacy ledgers."""

from __future__ import annotations

import itertools
import json
import shutil
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from dp.accounting import SampledGaussian, Skellam
from dp.audit.chain import ChainWriter, FindingKind, canonical_json, head_path
from dp.audit.privacy_ledger import PrivacyLedger, PrivacyUnit, verify_ledger
from dp.audit.round_records import (
    SERVER_LEDGER_FORMAT,
    RoundAlreadyRecorded,
    RoundOutcome,
    RoundPrivacy,
    RoundStage,
    ServerLedger,
    ServerRoundRecord,
    cross_check,
    parties_without_ledger,
    verify_server_ledger,
)
from dp.audit.verification import Verification
from secagg.config import ProtocolMode
from secagg.hazmat.keys import SigningKey, verify_signature
from secagg.hazmat.randomness import DeterministicRandom

DELTA = 1e-5
NOISE = Skellam(l1_sensitivity=400.0, l2_sensitivity=20.0, variance=4.0e4, steps=1)
COHORT = ("bank-a", "bank-b", "bank-c")


def fixed_clock() -> Callable[[], datetime]:
    ticks = itertools.count()
    return lambda: datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=next(ticks))


def key(seed: int) -> SigningKey:
    return SigningKey.generate(DeterministicRandom.from_int(seed))


def record(round_id: str, *, contributors: tuple[str, ...] = COHORT, noise: Skellam = NOISE) -> ServerRoundRecord:
    return ServerRoundRecord(
        round_id=round_id,
        cohort=COHORT,
        threshold=2,
        mode=ProtocolMode.ACTIVE,
        dim=1000,
        bits=32,
        privacy=(RoundPrivacy(PrivacyUnit.PARTICIPANT, noise),),
        survivors={
            RoundStage.ADVERTISE_KEYS: COHORT,
            RoundStage.SHARE_KEYS: COHORT,
            RoundStage.MASKED_INPUT_COLLECTION: contributors,
            RoundStage.CONSISTENCY_CHECK: contributors,
            RoundStage.UNMASKING: contributors,
        },
        outcome=RoundOutcome.COMPLETED,
    )


def write_server_ledger(path: Path, records: list[ServerRoundRecord]) -> None:
    with ServerLedger.open(path, server_id="aggregator", signing_key=key(100), clock=fixed_clock()) as ledger:
        for item in records:
            ledger.append(item)


def write_party_ledger(path: Path, party: str, rounds: list[str], *, noise: Skellam = NOISE, seed: int = 1) -> None:
    with PrivacyLedger.open(path, party_id=party, signing_key=key(seed), clock=fixed_clock()) as ledger:
        for round_id in rounds:
            ledger.record_spend(round_id=round_id, unit=PrivacyUnit.PARTICIPANT, event=noise, delta=DELTA)


# --------------------------------------------------------------------------- records


def test_record_round_trips_through_its_dict() -> None:
    original = record("r0", contributors=("bank-a", "bank-c"))
    assert ServerRoundRecord.from_dict(json.loads(canonical_json(original.to_dict()))) == original


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"survivors": {RoundStage.ADVERTISE_KEYS: ("bank-a",), RoundStage.SHARE_KEYS: ("bank-a", "bank-b")}}, "subset"),
        ({"survivors": {RoundStage.ADVERTISE_KEYS: ("bank-z",)}}, "subset"),
        ({"survivors": {RoundStage.ADVERTISE_KEYS: ("bank-a", "bank-a")}}, "twice"),
        ({"threshold": 4}, "threshold"),
        ({"cohort": ("bank-a", "bank-a")}, "distinct"),
        ({"outcome": RoundOutcome.ABORTED}, "abort reason"),
        ({"abort_reason": "too-few-participants"}, "abort reason"),
        ({"bits": 65}, "bits"),
        ({"privacy": (RoundPrivacy(PrivacyUnit.PARTICIPANT, NOISE),) * 2}, "twice"),
    ],
)
def test_inconsistent_record_is_refused(change: dict, message: str) -> None:
    fields = {
        "round_id": "r0",
        "cohort": COHORT,
        "threshold": 2,
        "mode": ProtocolMode.ACTIVE,
        "dim": 10,
        "bits": 32,
        "privacy": (),
        "survivors": {},
        "outcome": RoundOutcome.COMPLETED,
        "abort_reason": None,
    }
    fields.update(change)
    with pytest.raises(ValueError, match=message):
        ServerRoundRecord(**fields)


def test_aborted_round_records_its_reason_and_verifies(tmp_path: Path) -> None:
    aborted = ServerRoundRecord(
        round_id="r0",
        cohort=COHORT,
        threshold=2,
        mode=ProtocolMode.HONEST_BUT_CURIOUS,
        dim=10,
        bits=32,
        privacy=(),
        survivors={RoundStage.ADVERTISE_KEYS: COHORT, RoundStage.SHARE_KEYS: ("bank-a",)},
        outcome=RoundOutcome.ABORTED,
        abort_reason="too-few-participants",
    )
    path = tmp_path / "server.jsonl"
    write_server_ledger(path, [aborted])
    verification = verify_server_ledger(path, public_key=key(100).public_bytes)
    assert verification.ok
    assert verification.entries[0].record == aborted
    assert verification.entries[0].record.contributors == ()


def test_server_ledger_signs_with_its_own_domain(tmp_path: Path) -> None:
    path = tmp_path / "server.jsonl"
    write_server_ledger(path, [record("r0")])
    entry = json.loads(path.read_text().splitlines()[0])
    message = SERVER_LEDGER_FORMAT.entry_domain + bytes.fromhex(entry["hash"])
    assert verify_signature(key(100).public_bytes, bytes.fromhex(entry["signature"]), message)
    assert entry["format"] == "secagg-server-ledger/1" and entry["server"] == "aggregator"


def test_server_ledger_refuses_a_round_twice_even_after_reopening(tmp_path: Path) -> None:
    path = tmp_path / "server.jsonl"
    with ServerLedger.open(path, server_id="aggregator", signing_key=key(100)) as ledger:
        ledger.append(record("r0"))
        with pytest.raises(RoundAlreadyRecorded, match="already recorded"):
            ledger.append(record("r0"))
    before = path.read_bytes()
    with ServerLedger.open(path, server_id="aggregator", signing_key=key(100)) as ledger, pytest.raises(RoundAlreadyRecorded):
        ledger.append(record("r0"))
    assert path.read_bytes() == before
    assert verify_server_ledger(path).ok


def test_tampered_server_record_is_a_hash_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "server.jsonl"
    write_server_ledger(path, [record("r0"), record("r1")])
    entries = [json.loads(line) for line in path.read_text().splitlines()]
    for stage in (RoundStage.MASKED_INPUT_COLLECTION, RoundStage.CONSISTENCY_CHECK, RoundStage.UNMASKING):
        entries[0]["survivors"][stage.value] = ["bank-a"]
    path.write_bytes(b"".join(canonical_json(entry) + b"\n" for entry in entries))
    verification = verify_server_ledger(path)
    assert [(finding.kind, finding.index) for finding in verification.findings] == [(FindingKind.HASH_MISMATCH, 0)]


def test_truncated_server_ledger_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "server.jsonl"
    write_server_ledger(path, [record("r0"), record("r1")])
    path.write_bytes(path.read_bytes().splitlines(keepends=True)[0])
    assert [finding.kind for finding in verify_server_ledger(path).findings] == [FindingKind.TRUNCATED]


def test_both_ledger_kinds_verify_to_one_result_type(tmp_path: Path) -> None:
    """The party's and the server's verifications share fields, ``ok`` and the JSON
    summary; only the owner's key in it differs, named after the ledger's owner field."""
    write_server_ledger(tmp_path / "server.jsonl", [record("r0"), record("r1")])
    write_party_ledger(tmp_path / "a.jsonl", "bank-a", ["r0"])
    server = verify_server_ledger(tmp_path / "server.jsonl", public_key=key(100).public_bytes)
    party = verify_ledger(tmp_path / "a.jsonl")
    assert isinstance(server, Verification) and isinstance(party, Verification)
    assert (server.owner, server.server, server.positions, server.head_entries) == ("aggregator", "aggregator", (0, 1), 2)
    assert (party.owner, party.party, party.positions, party.head_entries) == ("bank-a", "bank-a", (0,), 1)
    server_summary, party_summary = server.to_dict(), party.to_dict()
    assert server_summary.pop("server") == "aggregator" and party_summary.pop("party") == "bank-a"
    assert server_summary.keys() == party_summary.keys()
    assert (server_summary["key_pinned"], party_summary["key_pinned"]) == (True, False)


def test_unparseable_server_record_is_a_finding_with_the_parsers_reason(tmp_path: Path) -> None:
    path = tmp_path / "server.jsonl"
    with ChainWriter.open(path, SERVER_LEDGER_FORMAT, owner="aggregator", signing_key=key(100), clock=fixed_clock()) as writer:
        body = record("r0").to_dict()
        body["threshold"] = 9
        writer.append(body)
    verification = verify_server_ledger(path, public_key=key(100).public_bytes)
    assert verification.entries == () and verification.positions == ()
    assert [(finding.kind, finding.index) for finding in verification.findings] == [(FindingKind.MALFORMED_ENTRY, 0)]
    assert verification.findings[0].detail == "threshold must be in 1..3"


# --------------------------------------------------------------------------- cross-check


def test_consistent_ledgers_pass_the_cross_check(tmp_path: Path) -> None:
    server_path = tmp_path / "server.jsonl"
    write_server_ledger(server_path, [record("r0"), record("r1", contributors=("bank-a", "bank-b"))])
    write_party_ledger(tmp_path / "a.jsonl", "bank-a", ["r0", "r1"])
    write_party_ledger(tmp_path / "b.jsonl", "bank-b", ["r0", "r1"], seed=2)
    write_party_ledger(tmp_path / "c.jsonl", "bank-c", ["r0"], seed=3)
    ledgers = [verify_ledger(tmp_path / name) for name in ("a.jsonl", "b.jsonl", "c.jsonl")]
    server = verify_server_ledger(server_path)
    assert cross_check(ledgers, server) == ()
    assert parties_without_ledger(ledgers, server) == ()
    assert parties_without_ledger(ledgers[:2], server) == ("bank-c",)


def test_party_that_rewrites_its_ledger_to_hide_a_round_is_caught_by_the_cross_check(tmp_path: Path) -> None:
    server_path = tmp_path / "server.jsonl"
    write_server_ledger(server_path, [record("r0"), record("r1"), record("r2")])
    # bank-a holds its own key: it re-signs a ledger without r1, which verifies on its own.
    write_party_ledger(tmp_path / "a.jsonl", "bank-a", ["r0", "r2"])
    ledger = verify_ledger(tmp_path / "a.jsonl", public_key=key(1).public_bytes)
    assert ledger.ok
    findings = cross_check([ledger], verify_server_ledger(server_path))
    assert [(item.party, item.round_id, item.finding.kind, item.finding.index) for item in findings] == [
        ("bank-a", "r1", FindingKind.SPEND_MISSING_FOR_ROUND, 1)
    ]


def test_rolled_back_ledger_and_head_verify_alone_but_fail_the_cross_check(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    with PrivacyLedger.open(path, party_id="bank-a", signing_key=key(1), clock=fixed_clock()) as ledger:
        ledger.record_spend(round_id="r0", unit=PrivacyUnit.PARTICIPANT, event=NOISE, delta=DELTA)
        shutil.copy(path, tmp_path / "backup.jsonl")
        shutil.copy(head_path(path), tmp_path / "backup.jsonl.head")
        ledger.record_spend(round_id="r1", unit=PrivacyUnit.PARTICIPANT, event=NOISE, delta=DELTA)
    shutil.copy(tmp_path / "backup.jsonl", path)
    shutil.copy(tmp_path / "backup.jsonl.head", head_path(path))
    ledger_result = verify_ledger(path, public_key=key(1).public_bytes)
    assert ledger_result.ok  # the documented limit: an old consistent pair verifies on its own
    server_path = tmp_path / "server.jsonl"
    write_server_ledger(server_path, [record("r0", contributors=("bank-a",)), record("r1", contributors=("bank-a",))])
    findings = cross_check([ledger_result], verify_server_ledger(server_path))
    assert [(item.round_id, item.finding.kind) for item in findings] == [("r1", FindingKind.SPEND_MISSING_FOR_ROUND)]


def test_party_that_records_weaker_noise_than_the_round_used_is_caught(tmp_path: Path) -> None:
    server_path = tmp_path / "server.jsonl"
    write_server_ledger(server_path, [record("r0", contributors=("bank-a",))])
    weaker_claim = Skellam(l1_sensitivity=400.0, l2_sensitivity=20.0, variance=8.0e4, steps=1)
    write_party_ledger(tmp_path / "a.jsonl", "bank-a", ["r0"], noise=weaker_claim)
    findings = cross_check([verify_ledger(tmp_path / "a.jsonl")], verify_server_ledger(server_path))
    assert [item.finding.kind for item in findings] == [FindingKind.MECHANISM_DIFFERS_FROM_SERVER]


def test_party_that_did_not_reach_r2_owes_no_spend(tmp_path: Path) -> None:
    server_path = tmp_path / "server.jsonl"
    write_server_ledger(server_path, [record("r0", contributors=("bank-b",))])
    write_party_ledger(tmp_path / "a.jsonl", "bank-a", [])
    assert cross_check([verify_ledger(tmp_path / "a.jsonl")], verify_server_ledger(server_path)) == ()


def test_round_without_prescribed_privacy_imposes_no_requirement(tmp_path: Path) -> None:
    plain = ServerRoundRecord(
        round_id="r0",
        cohort=COHORT,
        threshold=2,
        mode=ProtocolMode.ACTIVE,
        dim=10,
        bits=32,
        privacy=(),
        survivors=dict.fromkeys(RoundStage, COHORT),
        outcome=RoundOutcome.COMPLETED,
    )
    server_path = tmp_path / "server.jsonl"
    write_server_ledger(server_path, [plain])
    write_party_ledger(tmp_path / "a.jsonl", "bank-a", [])
    assert cross_check([verify_ledger(tmp_path / "a.jsonl")], verify_server_ledger(server_path)) == ()


def test_example_level_prescription_is_checked_too(tmp_path: Path) -> None:
    training = SampledGaussian(noise_multiplier=1.0, sample_rate=0.01, steps=20)
    prescribed = ServerRoundRecord(
        round_id="r0",
        cohort=COHORT,
        threshold=2,
        mode=ProtocolMode.ACTIVE,
        dim=10,
        bits=32,
        privacy=(RoundPrivacy(PrivacyUnit.EXAMPLE, training), RoundPrivacy(PrivacyUnit.PARTICIPANT, NOISE)),
        survivors=dict.fromkeys(RoundStage, ("bank-a",)),
        outcome=RoundOutcome.COMPLETED,
    )
    server_path = tmp_path / "server.jsonl"
    write_server_ledger(server_path, [prescribed])
    write_party_ledger(tmp_path / "a.jsonl", "bank-a", ["r0"])
    findings = cross_check([verify_ledger(tmp_path / "a.jsonl")], verify_server_ledger(server_path))
    assert [(item.finding.kind, "example-level" in item.finding.detail) for item in findings] == [
        (FindingKind.SPEND_MISSING_FOR_ROUND, True)
    ]


def test_workers_sharing_the_ledger_with_short_locks_produce_one_valid_chain(tmp_path: Path) -> None:
    import threading
    import time

    from dp.audit.chain import LedgerLocked

    path = tmp_path / "server.jsonl"
    errors: list[BaseException] = []

    def worker(number: int) -> None:
        try:
            for round_number in range(4):
                while True:
                    try:
                        ledger = ServerLedger.open(path, server_id="aggregator", signing_key=key(100))
                    except LedgerLocked:
                        time.sleep(0.001)
                        continue
                    with ledger:
                        ledger.append(record(f"w{number}-r{round_number}"))
                    break
        except BaseException as exc:  # surfaced to the test thread below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(number,)) for number in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    verification = verify_server_ledger(path, public_key=key(100).public_bytes)
    assert verification.ok
    assert sorted(entry.record.round_id for entry in verification.entries) == sorted(
        f"w{n}-r{r}" for n in range(4) for r in range(4)
    )
