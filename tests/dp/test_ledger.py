"""The privacy ledger: encoding, durable appends, and one test per tamper case."""

from __future__ import annotations

import hashlib
import itertools
import json
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dp.accounting import AccountantKind, SampledGaussian, Skellam, compute_epsilon
from dp.audit.chain import (
    GENESIS_HASH,
    ChainWriter,
    FindingKind,
    LedgerCorrupted,
    LedgerError,
    LedgerLocked,
    canonical_json,
    head_path,
    load_public_key,
)
from dp.audit.privacy_ledger import PRIVACY_LEDGER_FORMAT, EntryKind, PrivacyLedger, PrivacyUnit, verify_ledger
from secagg.hazmat.keys import SigningKey, verify_signature
from secagg.hazmat.randomness import DeterministicRandom

DELTA = 1e-5
PARTY = "bank-a"


def fixed_clock() -> Callable[[], datetime]:
    """One second later on every call, from 2026-01-01T00:00:00Z."""
    ticks = itertools.count()
    start = datetime(2026, 1, 1, tzinfo=UTC)
    return lambda: start + timedelta(seconds=next(ticks))


def signing_key(seed: int) -> SigningKey:
    return SigningKey.generate(DeterministicRandom.from_int(seed))


def gaussian(steps: int = 50) -> SampledGaussian:
    return SampledGaussian(noise_multiplier=1.1, sample_rate=0.01, steps=steps)


def skellam() -> Skellam:
    return Skellam(l1_sensitivity=400.0, l2_sensitivity=20.0, variance=4.0e4, steps=1)


def write_ledger(path: Path, key: SigningKey, *, rounds: int = 5) -> PrivacyLedger:
    ledger = PrivacyLedger.open(path, party_id=PARTY, signing_key=key, clock=fixed_clock())
    for number in range(rounds):
        ledger.record_spend(
            round_id=f"round-{number}", unit=PrivacyUnit.EXAMPLE, event=gaussian(), delta=DELTA, budget_epsilon=10.0
        )
    ledger.close()
    return ledger


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def write_lines(path: Path, entries: list[dict]) -> None:
    path.write_bytes(b"".join(canonical_json(entry) + b"\n" for entry in entries))


def kinds_at(verification, index: int | None) -> set[FindingKind]:
    return {finding.kind for finding in verification.findings if finding.index == index}


@pytest.fixture
def key() -> SigningKey:
    return signing_key(1)


@pytest.fixture
def ledger_path(tmp_path: Path, key: SigningKey) -> Path:
    path = tmp_path / "bank-a.jsonl"
    write_ledger(path, key)
    return path


# --------------------------------------------------------------------------- encoding


def test_canonical_json_sorts_keys_escapes_non_ascii_and_uses_shortest_floats() -> None:
    # Expected bytes follow from the definition in dp.audit.chain's docstring.
    assert canonical_json({"b": 1, "a": [1.5, "é"], "c": 1e-05}) == b'{"a":[1.5,"\\u00e9"],"b":1,"c":1e-05}'


def test_canonical_json_refuses_nan_and_infinity() -> None:
    with pytest.raises(LedgerError):
        canonical_json({"epsilon": float("inf")})


def test_entry_hash_is_sha256_of_canonical_entry_without_hash_and_signature(ledger_path: Path) -> None:
    entry = read_lines(ledger_path)[2]
    unsigned = {name: value for name, value in entry.items() if name not in ("hash", "signature")}
    expected = hashlib.sha256(json.dumps(unsigned, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    assert entry["hash"] == expected


def test_signature_covers_domain_separated_hash_only_with_its_domain(ledger_path: Path, key: SigningKey) -> None:
    entry = read_lines(ledger_path)[0]
    signature = bytes.fromhex(entry["signature"])
    digest = bytes.fromhex(entry["hash"])
    assert verify_signature(key.public_bytes, signature, PRIVACY_LEDGER_FORMAT.entry_domain + digest)
    assert not verify_signature(key.public_bytes, signature, digest)


def test_entries_chain_from_genesis_with_consecutive_indices(ledger_path: Path) -> None:
    entries = read_lines(ledger_path)
    assert [entry["index"] for entry in entries] == list(range(5))
    assert entries[0]["previous_hash"] == GENESIS_HASH
    assert all(later["previous_hash"] == earlier["hash"] for earlier, later in itertools.pairwise(entries))
    assert [entry["time"][:17] for entry in entries] == ["2026-01-01T00:00:"] * 5
    assert all(entry["time"].endswith(".000000Z") for entry in entries)
    assert sorted(entry["time"] for entry in entries) == [entry["time"] for entry in entries]


def test_cumulative_epsilon_is_the_composition_of_every_spend(ledger_path: Path) -> None:
    entries = read_lines(ledger_path)
    expected = compute_epsilon([gaussian()] * 5, delta=DELTA, accountant=AccountantKind.RDP)
    assert entries[-1]["epsilon_cumulative"] == pytest.approx(expected, rel=1e-12)
    assert sum(entry["epsilon_increment"] for entry in entries) == pytest.approx(expected, rel=1e-9)


def test_intact_ledger_verifies_with_pinned_and_with_declared_key(ledger_path: Path, key: SigningKey) -> None:
    pinned = verify_ledger(ledger_path, public_key=key.public_bytes)
    declared = verify_ledger(ledger_path)
    assert pinned.ok and pinned.key_pinned
    assert declared.ok and not declared.key_pinned
    assert pinned.party == PARTY and len(pinned.entries) == 5 and pinned.head_entries == 5


def test_units_compose_separately(tmp_path: Path, key: SigningKey) -> None:
    path = tmp_path / "two-units.jsonl"
    with PrivacyLedger.open(path, party_id=PARTY, signing_key=key, clock=fixed_clock()) as ledger:
        ledger.record_spend(round_id="r0", unit=PrivacyUnit.EXAMPLE, event=gaussian(), delta=DELTA)
        entry = ledger.record_spend(round_id="r0", unit=PrivacyUnit.PARTICIPANT, event=skellam(), delta=DELTA)
    assert entry.epsilon_cumulative == pytest.approx(compute_epsilon([skellam()], delta=DELTA))
    assert verify_ledger(path, public_key=key.public_bytes).ok


# --------------------------------------------------------------------------- writer


def test_reopened_ledger_continues_the_chain_and_never_goes_back_in_time(ledger_path: Path, key: SigningKey) -> None:
    # The fresh clock restarts at 2026-01-01T00:00:00, before the last entry: the writer clamps.
    with PrivacyLedger.open(ledger_path, party_id=PARTY, signing_key=key, clock=fixed_clock()) as ledger:
        assert len(ledger.entries) == 5
        entry = ledger.record_spend(round_id="round-5", unit=PrivacyUnit.EXAMPLE, event=gaussian(), delta=DELTA)
    verification = verify_ledger(ledger_path, public_key=key.public_bytes)
    assert verification.ok and len(verification.entries) == 6
    assert entry.time == verification.entries[4].time
    assert entry.epsilon_cumulative == pytest.approx(compute_epsilon([gaussian()] * 6, delta=DELTA))


def test_writer_refuses_to_recreate_a_deleted_ledger_whose_head_remains(ledger_path: Path, key: SigningKey) -> None:
    ledger_path.unlink()
    with pytest.raises(LedgerError, match="was deleted"):
        PrivacyLedger.open(ledger_path, party_id=PARTY, signing_key=key)
    assert not ledger_path.exists()


def test_second_writer_on_the_same_ledger_is_refused(ledger_path: Path, key: SigningKey) -> None:
    with PrivacyLedger.open(ledger_path, party_id=PARTY, signing_key=key), pytest.raises(LedgerLocked):
        PrivacyLedger.open(ledger_path, party_id=PARTY, signing_key=key)


def test_writer_refuses_a_ledger_of_another_party(ledger_path: Path, key: SigningKey) -> None:
    with pytest.raises(LedgerError, match="belongs to"):
        PrivacyLedger.open(ledger_path, party_id="bank-b", signing_key=key)


def test_writer_refuses_to_extend_a_tampered_ledger_and_leaves_it_unchanged(ledger_path: Path, key: SigningKey) -> None:
    entries = read_lines(ledger_path)
    entries[1]["round"] = "round-x"
    write_lines(ledger_path, entries)
    before = ledger_path.read_bytes()
    with pytest.raises(LedgerCorrupted) as raised:
        PrivacyLedger.open(ledger_path, party_id=PARTY, signing_key=key)
    assert FindingKind.HASH_MISMATCH in {finding.kind for finding in raised.value.findings}
    assert ledger_path.read_bytes() == before


def test_unbounded_spend_is_refused_and_nothing_is_written(
    tmp_path: Path, key: SigningKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    # compute_epsilon returns inf when it cannot certify a finite epsilon; simulate that.
    monkeypatch.setattr("dp.audit.privacy_ledger.compute_epsilon", lambda events, *, delta, accountant: float("inf"))
    path = tmp_path / "ledger.jsonl"
    with PrivacyLedger.open(path, party_id=PARTY, signing_key=key) as ledger:
        with pytest.raises(LedgerError, match="unbounded"):
            ledger.record_spend(round_id="r0", unit=PrivacyUnit.EXAMPLE, event=gaussian(), delta=DELTA)
        refusal = ledger.record_refusal(
            round_id="r0", unit=PrivacyUnit.EXAMPLE, event=gaussian(), delta=DELTA, budget_epsilon=1.0
        )
    assert refusal.epsilon_would_reach is None
    assert [entry.kind for entry in ledger.entries] == [EntryKind.REFUSAL]


def test_torn_last_line_is_not_an_entry_and_the_writer_drops_it(ledger_path: Path, key: SigningKey) -> None:
    complete = ledger_path.read_bytes()
    last_line = complete.splitlines(keepends=True)[-1]
    with ledger_path.open("ab") as handle:
        handle.write(last_line[: len(last_line) // 2])
    torn = verify_ledger(ledger_path, public_key=key.public_bytes)
    assert {finding.kind for finding in torn.findings} == {FindingKind.TORN_TAIL}
    assert len(torn.entries) == 5
    PrivacyLedger.open(ledger_path, party_id=PARTY, signing_key=key).close()
    assert ledger_path.read_bytes() == complete
    assert verify_ledger(ledger_path, public_key=key.public_bytes).ok


def test_crash_between_append_and_checkpoint_is_flagged_and_repaired_on_reopen(ledger_path: Path, key: SigningKey) -> None:
    old_head = head_path(ledger_path).read_bytes()
    with PrivacyLedger.open(
        ledger_path, party_id=PARTY, signing_key=key, clock=lambda: datetime(2027, 1, 1, tzinfo=UTC)
    ) as ledger:
        ledger.record_spend(round_id="round-5", unit=PrivacyUnit.EXAMPLE, event=gaussian(), delta=DELTA)
    head_path(ledger_path).write_bytes(old_head)
    assert kinds_at(verify_ledger(ledger_path), 5) == {FindingKind.HEAD_BEHIND}
    PrivacyLedger.open(ledger_path, party_id=PARTY, signing_key=key, clock=lambda: datetime(2027, 1, 2, tzinfo=UTC)).close()
    assert verify_ledger(ledger_path, public_key=key.public_bytes).ok


def test_public_key_file_loads_from_hex_raw_and_pem(tmp_path: Path, key: SigningKey) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    pem = Ed25519PublicKey.from_public_bytes(key.public_bytes).public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    for name, content in {"hex": key.public_bytes.hex().encode() + b"\n", "raw": key.public_bytes, "pem": pem}.items():
        (tmp_path / name).write_bytes(content)
        assert load_public_key(tmp_path / name) == key.public_bytes
    (tmp_path / "short").write_text("abcd")
    with pytest.raises(LedgerError):
        load_public_key(tmp_path / "short")


# --------------------------------------------------------------------------- tamper cases


def test_modified_field_is_a_hash_mismatch_at_that_entry(ledger_path: Path) -> None:
    entries = read_lines(ledger_path)
    entries[2]["parameters"]["noise_multiplier"] = 5.0
    write_lines(ledger_path, entries)
    verification = verify_ledger(ledger_path)
    assert not verification.ok
    assert FindingKind.HASH_MISMATCH in kinds_at(verification, 2)
    assert all(finding.index == 2 for finding in verification.findings if finding.kind is FindingKind.HASH_MISMATCH)


def test_modified_and_rehashed_entry_without_the_key_fails_its_signature_and_the_chain(ledger_path: Path) -> None:
    entries = read_lines(ledger_path)
    entries[2]["round"] = "round-forged"
    entries[2]["hash"] = hashlib.sha256(
        canonical_json({k: v for k, v in entries[2].items() if k not in ("hash", "signature")})
    ).hexdigest()
    write_lines(ledger_path, entries)
    verification = verify_ledger(ledger_path)
    assert kinds_at(verification, 2) == {FindingKind.BAD_SIGNATURE}
    assert FindingKind.BROKEN_CHAIN in kinds_at(verification, 3)


def test_understated_epsilon_is_flagged_even_when_the_key_holder_re_signs_everything(
    tmp_path: Path, ledger_path: Path, key: SigningKey
) -> None:
    bodies = [{name: entry[name] for name in PRIVACY_LEDGER_FORMAT.body_fields} for entry in read_lines(ledger_path)]
    bodies[3]["epsilon_cumulative"] = bodies[3]["epsilon_cumulative"] / 2
    rewritten = tmp_path / "rewritten.jsonl"
    with ChainWriter.open(rewritten, PRIVACY_LEDGER_FORMAT, owner=PARTY, signing_key=key, clock=fixed_clock()) as writer:
        for body in bodies:
            writer.append(body)
    verification = verify_ledger(rewritten, public_key=key.public_bytes)
    assert {(finding.kind, finding.index) for finding in verification.findings} == {(FindingKind.EPSILON_CUMULATIVE_MISMATCH, 3)}


def test_misstated_increment_is_flagged(tmp_path: Path, ledger_path: Path, key: SigningKey) -> None:
    bodies = [{name: entry[name] for name in PRIVACY_LEDGER_FORMAT.body_fields} for entry in read_lines(ledger_path)]
    bodies[1]["epsilon_increment"] = 0.0
    rewritten = tmp_path / "rewritten.jsonl"
    with ChainWriter.open(rewritten, PRIVACY_LEDGER_FORMAT, owner=PARTY, signing_key=key, clock=fixed_clock()) as writer:
        for body in bodies:
            writer.append(body)
    verification = verify_ledger(rewritten, public_key=key.public_bytes)
    assert {(finding.kind, finding.index) for finding in verification.findings} == {(FindingKind.EPSILON_INCREMENT_MISMATCH, 1)}


def test_spend_beyond_its_recorded_budget_is_flagged(tmp_path: Path, ledger_path: Path, key: SigningKey) -> None:
    bodies = [{name: entry[name] for name in PRIVACY_LEDGER_FORMAT.body_fields} for entry in read_lines(ledger_path)]
    bodies[4]["budget_epsilon"] = bodies[3]["epsilon_cumulative"]
    rewritten = tmp_path / "rewritten.jsonl"
    with ChainWriter.open(rewritten, PRIVACY_LEDGER_FORMAT, owner=PARTY, signing_key=key, clock=fixed_clock()) as writer:
        for body in bodies:
            writer.append(body)
    verification = verify_ledger(rewritten, public_key=key.public_bytes)
    assert {(finding.kind, finding.index) for finding in verification.findings} == {(FindingKind.OVER_BUDGET, 4)}


def test_deleted_middle_entry_is_named_at_the_gap(ledger_path: Path) -> None:
    entries = read_lines(ledger_path)
    del entries[2]
    write_lines(ledger_path, entries)
    verification = verify_ledger(ledger_path)
    assert {FindingKind.INDEX_OUT_OF_SEQUENCE, FindingKind.BROKEN_CHAIN} <= kinds_at(verification, 2)
    assert not kinds_at(verification, 1) and not kinds_at(verification, 0)


def test_reordered_entries_are_named(ledger_path: Path) -> None:
    entries = read_lines(ledger_path)
    entries[1], entries[3] = entries[3], entries[1]
    write_lines(ledger_path, entries)
    verification = verify_ledger(ledger_path)
    for position in (1, 3):
        assert {FindingKind.INDEX_OUT_OF_SEQUENCE, FindingKind.BROKEN_CHAIN} <= kinds_at(verification, position)
    assert FindingKind.TIME_REVERSED in kinds_at(verification, 2)


def test_inserted_entry_forged_with_another_key_is_named(ledger_path: Path, key: SigningKey) -> None:
    entries = read_lines(ledger_path)
    forger = signing_key(99)
    with ChainWriter.open(
        ledger_path.with_name("forger.jsonl"), PRIVACY_LEDGER_FORMAT, owner=PARTY, signing_key=forger
    ) as writer:
        forged = writer.seal({name: entries[2][name] for name in PRIVACY_LEDGER_FORMAT.body_fields})
    forged.update(index=2, previous_hash=entries[1]["hash"], time=entries[1]["time"])
    write_lines(ledger_path, entries[:2] + [forged] + entries[2:])
    unpinned = verify_ledger(ledger_path)
    assert {FindingKind.KEY_CHANGED, FindingKind.BAD_SIGNATURE, FindingKind.HASH_MISMATCH} <= kinds_at(unpinned, 2)
    assert {FindingKind.INDEX_OUT_OF_SEQUENCE, FindingKind.BROKEN_CHAIN} <= kinds_at(unpinned, 3)


def test_inserted_entry_claiming_the_partys_key_fails_its_signature(ledger_path: Path, key: SigningKey) -> None:
    entries = read_lines(ledger_path)
    forged = dict(entries[1], index=2, previous_hash=entries[1]["hash"], round="round-forged")
    forged["hash"] = hashlib.sha256(
        canonical_json({k: v for k, v in forged.items() if k not in ("hash", "signature")})
    ).hexdigest()
    write_lines(ledger_path, entries[:2] + [forged] + entries[2:])
    verification = verify_ledger(ledger_path, public_key=key.public_bytes)
    assert FindingKind.BAD_SIGNATURE in kinds_at(verification, 2)
    assert FindingKind.BROKEN_CHAIN in kinds_at(verification, 3)


def test_truncated_tail_is_detected_by_the_signed_head(ledger_path: Path) -> None:
    entries = read_lines(ledger_path)
    write_lines(ledger_path, entries[:3])
    verification = verify_ledger(ledger_path)
    assert [(finding.kind, finding.index) for finding in verification.findings] == [(FindingKind.TRUNCATED, 3)]
    assert "entries 3..4 were removed" in verification.findings[0].detail


def test_truncation_with_the_head_deleted_is_still_flagged(ledger_path: Path) -> None:
    write_lines(ledger_path, read_lines(ledger_path)[:3])
    head_path(ledger_path).unlink()
    assert [finding.kind for finding in verify_ledger(ledger_path).findings] == [FindingKind.HEAD_MISSING]


def test_truncation_with_a_head_re_signed_by_another_key_is_flagged(ledger_path: Path, key: SigningKey) -> None:
    entries = read_lines(ledger_path)
    forger_path = ledger_path.with_name("forger.jsonl")
    with ChainWriter.open(forger_path, PRIVACY_LEDGER_FORMAT, owner=PARTY, signing_key=signing_key(99)):
        pass
    write_lines(ledger_path, entries[:3])
    head_path(ledger_path).write_bytes(head_path(forger_path).read_bytes())
    verification = verify_ledger(ledger_path, public_key=key.public_bytes)
    assert [finding.kind for finding in verification.findings] == [FindingKind.HEAD_BAD_SIGNATURE]


def test_wrong_pinned_key_fails_every_signature(ledger_path: Path) -> None:
    verification = verify_ledger(ledger_path, public_key=signing_key(2).public_bytes)
    assert FindingKind.WRONG_KEY in kinds_at(verification, 0)
    assert all(FindingKind.BAD_SIGNATURE in kinds_at(verification, index) for index in range(5))
    assert FindingKind.HEAD_BAD_SIGNATURE in kinds_at(verification, None)


def test_corrupted_signature_is_named_at_its_entry(ledger_path: Path) -> None:
    entries = read_lines(ledger_path)
    signature = bytearray.fromhex(entries[1]["signature"])
    signature[10] ^= 0x01
    entries[1]["signature"] = signature.hex()
    write_lines(ledger_path, entries)
    verification = verify_ledger(ledger_path)
    assert [(finding.kind, finding.index) for finding in verification.findings] == [(FindingKind.BAD_SIGNATURE, 1)]


def test_line_with_duplicate_keys_is_malformed(ledger_path: Path) -> None:
    lines = ledger_path.read_bytes().splitlines(keepends=True)
    lines[1] = lines[1].replace(b'{"accountant"', b'{"accountant":"prv","accountant"', 1)
    ledger_path.write_bytes(b"".join(lines))
    verification = verify_ledger(ledger_path)
    assert FindingKind.MALFORMED_LINE in kinds_at(verification, 1)


def test_line_that_is_not_json_is_malformed_and_the_rest_is_still_checked(ledger_path: Path) -> None:
    lines = ledger_path.read_bytes().splitlines(keepends=True)
    lines[1] = b"not json\n"
    ledger_path.write_bytes(b"".join(lines))
    verification = verify_ledger(ledger_path)
    assert kinds_at(verification, 1) == {FindingKind.MALFORMED_LINE}
    assert len(verification.entries) == 4


def test_unknown_mechanism_parameters_are_a_malformed_entry(tmp_path: Path, ledger_path: Path, key: SigningKey) -> None:
    bodies = [{name: entry[name] for name in PRIVACY_LEDGER_FORMAT.body_fields} for entry in read_lines(ledger_path)]
    bodies[0]["parameters"]["steps"] = -3
    rewritten = tmp_path / "rewritten.jsonl"
    with ChainWriter.open(rewritten, PRIVACY_LEDGER_FORMAT, owner=PARTY, signing_key=key, clock=fixed_clock()) as writer:
        for body in bodies:
            writer.append(body)
    verification = verify_ledger(rewritten, public_key=key.public_bytes)
    assert FindingKind.MALFORMED_ENTRY in kinds_at(verification, 0)


def test_refusal_entry_leaves_cumulative_unchanged_and_verifies(tmp_path: Path, key: SigningKey) -> None:
    path = tmp_path / "ledger.jsonl"
    with PrivacyLedger.open(path, party_id=PARTY, signing_key=key, clock=fixed_clock()) as ledger:
        spend = ledger.record_spend(round_id="r0", unit=PrivacyUnit.EXAMPLE, event=gaussian(), delta=DELTA)
        refusal = ledger.record_refusal(
            round_id="r1", unit=PrivacyUnit.EXAMPLE, event=gaussian(), delta=DELTA, budget_epsilon=0.5
        )
    assert refusal.kind is EntryKind.REFUSAL
    assert refusal.epsilon_cumulative == spend.epsilon_cumulative and refusal.epsilon_increment == 0.0
    assert refusal.epsilon_would_reach == pytest.approx(compute_epsilon([gaussian(), gaussian()], delta=DELTA))
    assert verify_ledger(path, public_key=key.public_bytes).ok


def test_empty_ledger_verifies_and_names_its_party_from_the_signed_head(tmp_path: Path, key: SigningKey) -> None:
    path = tmp_path / "empty.jsonl"
    PrivacyLedger.open(path, party_id=PARTY, signing_key=key).close()
    verification = verify_ledger(path, public_key=key.public_bytes)
    assert verification.ok and verification.entries == ()
    assert (verification.party, verification.public_key, verification.head_entries) == (PARTY, key.public_bytes.hex(), 0)


def test_number_that_overflows_a_double_is_malformed_not_a_crash(ledger_path: Path) -> None:
    lines = ledger_path.read_bytes().splitlines(keepends=True)
    lines[1] = lines[1].replace(b'"delta":1e-05', b'"delta":1e999', 1)
    ledger_path.write_bytes(b"".join(lines))
    assert FindingKind.MALFORMED_LINE in kinds_at(verify_ledger(ledger_path), 1)


def test_re_formatted_line_with_the_same_meaning_is_flagged(ledger_path: Path) -> None:
    lines = ledger_path.read_bytes().splitlines(keepends=True)
    lines[1] = lines[1].replace(b'"delta":1e-05', b'"delta":1E-5', 1)
    ledger_path.write_bytes(b"".join(lines))
    assert kinds_at(verify_ledger(ledger_path), 1) == {FindingKind.NON_CANONICAL_LINE}


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, bytes]:
    path = tmp_path_factory.mktemp("pristine") / "ledger.jsonl"
    write_ledger(path, signing_key(1), rounds=3)
    return path.read_bytes(), head_path(path).read_bytes()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_single_byte_change_to_the_ledger_or_its_head_is_detected(pristine: tuple[bytes, bytes], data: st.DataObject) -> None:
    ledger_bytes, head_bytes = pristine
    in_head = data.draw(st.booleans(), label="in_head")
    original = head_bytes if in_head else ledger_bytes
    position = data.draw(st.integers(0, len(original) - 1), label="position")
    replacement = data.draw(st.integers(0, 255).filter(lambda value: value != original[position]), label="byte")
    changed = original[:position] + bytes([replacement]) + original[position + 1 :]
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "ledger.jsonl"
        path.write_bytes(ledger_bytes if in_head else changed)
        head_path(path).write_bytes(changed if in_head else head_bytes)
        assert not verify_ledger(path, public_key=signing_key(1).public_bytes).ok


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(line=st.binary(max_size=200) | st.text(max_size=200).map(str.encode), position=st.integers(0, 3))
def test_verifier_reports_arbitrary_inserted_lines_without_raising(
    pristine: tuple[bytes, bytes], line: bytes, position: int
) -> None:
    ledger_bytes, head_bytes = pristine
    lines = ledger_bytes.splitlines(keepends=True)
    lines.insert(position, line.replace(b"\n", b" ") + b"\n")
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "ledger.jsonl"
        path.write_bytes(b"".join(lines))
        head_path(path).write_bytes(head_bytes)
        verification = verify_ledger(path)
    assert not verification.ok
    assert any(finding.index == position for finding in verification.findings)


# --------------------------------------------------------------------------- anchors (heads kept by the auditor)


def test_ledger_that_extends_an_earlier_audits_head_passes_the_anchor(tmp_path: Path, ledger_path: Path, key: SigningKey) -> None:
    anchor = tmp_path / "anchor.head"
    anchor.write_bytes(head_path(ledger_path).read_bytes())
    with PrivacyLedger.open(
        ledger_path, party_id=PARTY, signing_key=key, clock=lambda: datetime(2027, 1, 1, tzinfo=UTC)
    ) as ledger:
        ledger.record_spend(round_id="round-5", unit=PrivacyUnit.EXAMPLE, event=gaussian(), delta=DELTA)
    assert verify_ledger(ledger_path, public_key=key.public_bytes, anchors=[anchor]).ok


def test_key_holder_rolling_back_to_an_older_consistent_state_fails_the_anchor(
    tmp_path: Path, ledger_path: Path, key: SigningKey
) -> None:
    old_ledger, old_head = ledger_path.read_bytes(), head_path(ledger_path).read_bytes()
    with PrivacyLedger.open(
        ledger_path, party_id=PARTY, signing_key=key, clock=lambda: datetime(2027, 1, 1, tzinfo=UTC)
    ) as ledger:
        ledger.record_spend(round_id="round-5", unit=PrivacyUnit.EXAMPLE, event=gaussian(), delta=DELTA)
    anchor = tmp_path / "anchor.head"
    anchor.write_bytes(head_path(ledger_path).read_bytes())
    ledger_path.write_bytes(old_ledger)
    head_path(ledger_path).write_bytes(old_head)
    assert verify_ledger(ledger_path, public_key=key.public_bytes).ok  # the limit without an anchor
    verification = verify_ledger(ledger_path, public_key=key.public_bytes, anchors=[anchor])
    assert [(finding.kind, finding.index) for finding in verification.findings] == [(FindingKind.ANCHOR_NOT_EXTENDED, 5)]


def test_key_holder_rewriting_history_fails_the_anchor(tmp_path: Path, ledger_path: Path, key: SigningKey) -> None:
    anchor = tmp_path / "anchor.head"
    anchor.write_bytes(head_path(ledger_path).read_bytes())
    bodies = [{name: entry[name] for name in PRIVACY_LEDGER_FORMAT.body_fields} for entry in read_lines(ledger_path)]
    ledger_path.unlink()
    head_path(ledger_path).unlink()
    with ChainWriter.open(ledger_path, PRIVACY_LEDGER_FORMAT, owner=PARTY, signing_key=key, clock=fixed_clock()) as writer:
        for body in bodies:
            writer.append({**body, "round": body["round"] + "-rewritten"})
    verification = verify_ledger(ledger_path, public_key=key.public_bytes, anchors=[anchor])
    assert [(finding.kind, finding.index) for finding in verification.findings] == [(FindingKind.ANCHOR_NOT_EXTENDED, 4)]


def test_anchor_signed_by_another_key_is_invalid(tmp_path: Path, ledger_path: Path) -> None:
    forged = tmp_path / "forged.jsonl"
    with ChainWriter.open(forged, PRIVACY_LEDGER_FORMAT, owner=PARTY, signing_key=signing_key(99)):
        pass
    verification = verify_ledger(ledger_path, anchors=[head_path(forged)])
    assert [finding.kind for finding in verification.findings] == [FindingKind.ANCHOR_INVALID]
