"""docs/LEDGER.md is a complete specification: a verifier written from it alone accepts the
ledgers the real code writes and finds exactly what the reference verifier finds in
tampered copies of them.

Everything named ``spec_*`` below is written from LEDGER.md only (section numbers in the
comments) with ``json``, ``hashlib``, ``math`` and ``cryptography``: its own canonical
encoder, chain and signature checks, head and anchor rules, body validation, the RDP
accountant for the mechanisms LEDGER.md section 9.4 gives in closed form, and the
cross-check. dp is imported to *write* ledgers through its public API (a bank's
``PrivacyLedger`` behind its ``BudgetGuard``, the server's ``ServerLedger``) and to
compare: the reference verifier's findings must be the spec verifier's, kind for kind
and entry for entry.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import math
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import given, settings
from hypothesis import strategies as st

# ------------------------------------------------------------------ LEDGER.md section 2


def spec_canonical(value: Any) -> bytes:
    """The canonical JSON encoding of LEDGER.md section 2, written from its table."""
    return _canonical(value).encode("ascii")


_SHORT_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b", "\f": "\\f"}


def _string(text: str) -> str:
    out = ['"']
    for character in text:
        code = ord(character)
        if character in _SHORT_ESCAPES:
            out.append(_SHORT_ESCAPES[character])
        elif 0x20 <= code <= 0x7E:
            out.append(character)
        elif code > 0xFFFF:
            code -= 0x10000
            out.append(f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}")
        else:
            out.append(f"\\u{code:04x}")
    out.append('"')
    return "".join(out)


def _float(number: float) -> str:
    if not math.isfinite(number):
        raise ValueError("no canonical form")
    return repr(number)  # the shortest round-trip decimal, in the layout of section 2


def _canonical(value: Any) -> str:
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _float(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, list):
        return "[" + ",".join(_canonical(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(_string(key) + ":" + _canonical(value[key]) for key in sorted(value)) + "}"
    raise TypeError(type(value).__name__)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError("duplicate key")
        result[key] = value
    return result


def _no_constant(name: str) -> Any:
    raise ValueError(name)


def _finite(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError("overflow")
    return number


def spec_parse(data: bytes) -> dict[str, Any]:
    """Section 12.1 step 1."""
    value = json.loads(data.decode("utf-8"), object_pairs_hook=_no_duplicates, parse_constant=_no_constant, parse_float=_finite)
    if not isinstance(value, dict):
        raise ValueError("not an object")
    return value


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(JSON_VALUES)
def test_the_documented_canonical_encoding_is_the_implementation_s(value: Any) -> None:
    from dp.audit.chain import canonical_json

    assert spec_canonical(value) == canonical_json(value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1e-05, b"1e-05"),
        (0.0001, b"0.0001"),
        (1e16, b"1e+16"),
        (1e15, b"1000000000000000.0"),
        (-0.0, b"-0.0"),
        (2.0, b"2.0"),
        (2, b"2"),
        ("\x7f\u00e9\U0001f600/", b'"\\u007f\\u00e9\\ud83d\\ude00/"'),
        ({"\U0001f600": 1, "\uffff": 2, "Z": 3, "a": 4}, b'{"Z":3,"a":4,"\\uffff":2,"\\ud83d\\ude00":1}'),
    ],
)
def test_the_examples_of_section_2(value: Any, expected: bytes) -> None:
    assert spec_canonical(value) == expected


# ------------------------------------------------------------------ LEDGER.md sections 3-8

GENESIS = "0" * 64
ENVELOPE = {"format", "index", "time", "public_key", "previous_hash", "hash", "signature"}


@dataclass(frozen=True)
class SpecKind:
    name: str
    owner: str
    body: frozenset[str]
    entry_domain: bytes
    head_domain: bytes
    optional: frozenset[str] = frozenset()


PRIVACY = SpecKind(
    "secagg-privacy-ledger/1",
    "party",
    frozenset(
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
    b"secagg/privacy-ledger/v1/entry\x00",
    b"secagg/privacy-ledger/v1/head\x00",
)
SERVER = SpecKind(
    "secagg-server-ledger/1",
    "server",
    frozenset({"round", "cohort", "threshold", "mode", "dim", "bits", "privacy", "survivors", "outcome", "abort_reason"}),
    b"secagg/server-ledger/v1/entry\x00",
    b"secagg/server-ledger/v1/head\x00",
    frozenset({"training"}),
)
STAGES = ("R0-advertise-keys", "R1-share-keys", "R2-masked-input-collection", "R3-consistency-check", "R4-unmasking")


def _hex(value: Any, length: int) -> bool:
    return isinstance(value, str) and len(value) == length and set(value) <= set("0123456789abcdef")


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def spec_hash(entry: dict[str, Any]) -> str:
    """Section 4."""
    return hashlib.sha256(spec_canonical({k: v for k, v in entry.items() if k not in ("hash", "signature")})).hexdigest()


def spec_signed(key: bytes, signature: str, message: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(key).verify(bytes.fromhex(signature), message)
    except (InvalidSignature, ValueError):
        return False
    return True


def spec_time(text: str) -> datetime | None:
    """Section 3: exactly YYYY-MM-DDTHH:MM:SS.ffffffZ, a valid moment."""
    if len(text) != 27 or text[4] != "-" or text[7] != "-" or text[10] != "T" or text[19] != "." or text[26] != "Z":
        return None
    try:
        moment = datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ")
    except ValueError:
        return None
    return moment if moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ") == text else None


def _envelope_ok(entry: dict[str, Any], kind: SpecKind) -> bool:
    """Section 3 / 12.1 step 2."""
    required = ENVELOPE | {kind.owner} | kind.body
    if not required <= set(entry) <= required | kind.optional:
        return False
    return (
        isinstance(entry["format"], str)
        and _integer(entry["index"])
        and entry["index"] >= 0
        and isinstance(entry["time"], str)
        and isinstance(entry[kind.owner], str)
        and entry[kind.owner] != ""
        and _hex(entry["public_key"], 64)
        and _hex(entry["previous_hash"], 64)
        and _hex(entry["hash"], 64)
        and _hex(entry["signature"], 128)
    )


def spec_head(path: Path, kind: SpecKind) -> dict[str, Any] | None:
    """Section 6 / 12.2 step 2: the head object, or None if malformed."""
    data = path.read_bytes()
    try:
        head = spec_parse(data)
    except (UnicodeDecodeError, ValueError):
        return None
    if data != spec_canonical(head) + b"\n":
        return None
    if set(head) != {"format", kind.owner, "public_key", "entries", "last_hash", "time", "signature"}:
        return None
    ok = (
        head["format"] == kind.name + "/head"
        and isinstance(head[kind.owner], str)
        and _hex(head["public_key"], 64)
        and _integer(head["entries"])
        and head["entries"] >= 0
        and _hex(head["last_hash"], 64)
        and isinstance(head["time"], str)
        and _hex(head["signature"], 128)
    )
    return head if ok else None


def _head_signed(head: dict[str, Any], kind: SpecKind, key: bytes) -> bool:
    unsigned = {k: v for k, v in head.items() if k != "signature"}
    return bytes.fromhex(head["public_key"]) == key and spec_signed(
        key, head["signature"], kind.head_domain + spec_canonical(unsigned)
    )


Finding = tuple[str, int | None]


@dataclass
class SpecRead:
    findings: list[Finding]
    usable: dict[int, dict[str, Any]]
    lines: int
    owner: str | None
    key: bytes | None


def spec_read(path: Path, kind: SpecKind, *, pinned: bytes | None = None, anchors: Sequence[Path] = ()) -> SpecRead:
    """Sections 12.1, 12.2 and 12.3."""
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    lines = data[:end].split(b"\n")[:-1] if end else []
    findings: list[Finding] = []
    usable: dict[int, dict[str, Any]] = {}
    ref: str | None = GENESIS
    owner: str | None = None
    first_key: bytes | None = None
    wrong_key_reported = False
    previous_time: datetime | None = None
    for i, raw in enumerate(lines):
        try:
            entry = spec_parse(raw)
        except (UnicodeDecodeError, ValueError):
            findings.append(("malformed-line", i))
            ref = None
            continue
        if not _envelope_ok(entry, kind):
            findings.append(("malformed-line", i))
            ref = entry.get("hash") if _hex(entry.get("hash"), 64) else None
            continue
        usable[i] = entry
        if raw != spec_canonical(entry):
            findings.append(("non-canonical-line", i))
        if entry["format"] != kind.name:
            findings.append(("unsupported-format", i))
        if entry["index"] != i:
            findings.append(("index-out-of-sequence", i))
        if spec_hash(entry) != entry["hash"]:
            findings.append(("hash-mismatch", i))
        if ref is not None and entry["previous_hash"] != ref:
            findings.append(("broken-chain", i))
        ref = entry["hash"]
        key = bytes.fromhex(entry["public_key"])
        if owner is None:
            owner, first_key = entry[kind.owner], key
        else:
            if entry[kind.owner] != owner:
                findings.append(("owner-changed", i))
            if key != first_key:
                findings.append(("key-changed", i))
        if pinned is not None and key != pinned and not wrong_key_reported:
            findings.append(("wrong-key", i))
            wrong_key_reported = True
        checking = pinned if pinned is not None else first_key
        assert checking is not None
        if not spec_signed(checking, entry["signature"], kind.entry_domain + bytes.fromhex(entry["hash"])):
            findings.append(("bad-signature", i))
        moment = spec_time(entry["time"])
        if moment is None:
            findings.append(("malformed-line", i))
        else:
            if previous_time is not None and moment < previous_time:
                findings.append(("time-reversed", i))
            previous_time = moment
    if len(data) > end:
        findings.append(("torn-tail", None))
    n = len(lines)
    checking_key = pinned if pinned is not None else first_key

    def against(head: dict[str, Any], prefix: str) -> list[Finding]:
        if n < head["entries"]:
            return [("truncated" if prefix == "head" else "anchor-not-extended", n)]
        out: list[Finding] = []
        if head["entries"] > 0:
            pointed = usable.get(head["entries"] - 1)
            if pointed is None or pointed["hash"] != head["last_hash"]:
                out.append(("head-mismatch" if prefix == "head" else "anchor-not-extended", head["entries"] - 1))
        return out

    head_path = path.with_name(path.name + ".head")
    head_findings: list[Finding] = []
    head = None
    if not head_path.exists():
        head_findings.append(("head-missing", None))
    else:
        head = spec_head(head_path, kind)
        if head is None:
            head_findings.append(("head-malformed", None))
        elif not _head_signed(head, kind, checking_key or bytes.fromhex(head["public_key"])) or (
            owner is not None and head[kind.owner] != owner
        ):
            head_findings.append(("head-bad-signature", None))
        else:
            head_findings.extend(against(head, "head"))
            if not any(found == "truncated" for found, _ in head_findings):
                if head["entries"] == 0 and head["last_hash"] != GENESIS:
                    head_findings.append(("head-malformed", None))
                if n > head["entries"]:
                    head_findings.append(("head-behind", head["entries"]))
    findings.extend(head_findings)
    if owner is None and head is not None and not head_findings:
        owner, checking_key = head[kind.owner], bytes.fromhex(head["public_key"])
    for anchor in anchors:
        head = spec_head(anchor, kind)
        if (
            head is None
            or not _head_signed(head, kind, checking_key or bytes.fromhex(head["public_key"]))
            or (owner is not None and head[kind.owner] != owner)
        ):
            findings.append(("anchor-invalid", None))
            continue
        found = against(head, "anchor")
        findings.extend(found[:1])
    return SpecRead(findings, usable, n, owner, checking_key)


# ------------------------------------------------------------------ LEDGER.md sections 9 and 10

RDP_ORDERS = [1.0 + x / 10.0 for x in range(1, 100)] + [float(order) for order in range(12, 64)]
INTEGER_ORDERS = [order for order in RDP_ORDERS if order.is_integer()]
REAL_MEMBERS = {"gaussian": ("noise_multiplier", "sample_rate"), "skellam": ("l1_sensitivity", "l2_sensitivity", "variance")}


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def spec_event(parameters: Any, mechanism: str, *, normal_form: bool) -> dict[str, Any] | None:
    """Section 9.2: the event in normal form, or None if invalid."""
    if not isinstance(parameters, dict) or not isinstance(mechanism, str) or mechanism not in REAL_MEMBERS:
        return None
    reals = REAL_MEMBERS[mechanism]
    if set(parameters) != {"mechanism", "steps", *reals} or parameters["mechanism"] != mechanism:
        return None
    if not _integer(parameters["steps"]) or parameters["steps"] < 1:
        return None
    if not all(_number(parameters[name]) and parameters[name] > 0 for name in reals):
        return None
    normal = {"mechanism": mechanism, "steps": parameters["steps"], **{name: float(parameters[name]) for name in reals}}
    if mechanism == "gaussian" and normal["sample_rate"] > 1.0:
        return None
    if mechanism == "skellam" and normal["l1_sensitivity"] < normal["l2_sensitivity"]:
        return None
    if normal_form and spec_canonical(normal) != spec_canonical(parameters):
        return None
    return normal


def _rdp(event: dict[str, Any], alpha: float) -> float | None:
    """Section 9.4, per event (all its steps); None where this test has no closed form."""
    if event["mechanism"] == "skellam":
        d1, d2, v = event["l1_sensitivity"], event["l2_sensitivity"], event["variance"]
        per_step = alpha * d2 * d2 / (2 * v) + min(((2 * alpha - 1) * d2 * d2 + 6 * d1) / (4 * v * v), 3 * d1 / (2 * v))
    elif event["sample_rate"] == 1.0:
        per_step = alpha / (2 * event["noise_multiplier"] ** 2)
    else:
        return None
    return per_step * event["steps"]


def spec_epsilon(events: list[dict[str, Any]], delta: float) -> float | None:
    """Section 9.4, RDP accountant; None when some event needs the subsampled-Gaussian series."""
    if not events:
        return 0.0
    orders = INTEGER_ORDERS if any(e["mechanism"] == "skellam" for e in events) else RDP_ORDERS
    best = math.inf
    for alpha in orders:
        total = 0.0
        for event in events:
            value = _rdp(event, alpha)
            if value is None:
                return None
            total += value
        candidate = total + math.log((alpha - 1) / alpha) - (math.log(delta) + math.log(alpha)) / (alpha - 1)
        if math.isfinite(candidate):
            best = min(best, candidate)
    return max(best, 0.0)


def _matches(claim: float, recomputed: float) -> bool:
    return abs(claim - recomputed) <= 1e-9 + 1e-6 * abs(recomputed)


def _privacy_body_ok(e: dict[str, Any]) -> bool:
    """Section 9.1."""
    reasons = {"spend": (None,), "refusal": ("budget-exceeded",), "unreleased": ("round-aborted", "left-out")}
    kind_ok = e["kind"] in reasons and e["reason"] in reasons.get(e["kind"], ())
    return (
        isinstance(e["round"], str)
        and e["round"] != ""
        and e["unit"] in ("example", "participant")
        and kind_ok
        and e["mechanism"] in ("gaussian", "skellam")
        and e["accountant"] in ("rdp", "prv")
        and isinstance(e["parameters"], dict)
        and _number(e["delta"])
        and 0 < e["delta"] < 1
        and _number(e["epsilon_increment"])
        and _number(e["epsilon_cumulative"])
        and (e["epsilon_would_reach"] is None or _number(e["epsilon_would_reach"]))
        and (e["budget_epsilon"] is None or (_number(e["budget_epsilon"]) and e["budget_epsilon"] > 0))
        and not (e["kind"] == "spend" and e["epsilon_would_reach"] is None)
    )


@dataclass
class SpecLedger:
    findings: list[Finding]
    owner: str | None
    spends: list[dict[str, Any]]  # usable, body-valid spend entries


def spec_verify_privacy(path: Path, *, pinned: bytes | None = None, anchors: Sequence[Path] = ()) -> SpecLedger:
    """Sections 12.1-12.4 for a privacy ledger."""
    read = spec_read(path, PRIVACY, pinned=pinned, anchors=anchors)
    findings = list(read.findings)
    history: dict[str, list[dict[str, Any]]] = {"example": [], "participant": []}
    spends = []
    for i, entry in sorted(read.usable.items()):
        if not _privacy_body_ok(entry):
            findings.append(("malformed-entry", i))
            continue
        if entry["kind"] == "spend":
            spends.append(entry)
        event = spec_event(entry["parameters"], entry["mechanism"], normal_form=True)
        if event is None:
            findings.append(("malformed-entry", i))
            continue
        if entry["accountant"] == "prv" and event["mechanism"] == "skellam":
            findings.append(("malformed-entry", i))
            continue
        before = spec_epsilon(history[entry["unit"]], entry["delta"])
        with_event = spec_epsilon(history[entry["unit"]] + [event], entry["delta"])
        assert before is not None and with_event is not None and entry["accountant"] == "rdp", "outside this test's accountant"
        spend = entry["kind"] == "spend"
        cumulative, increment = (with_event, with_event - before) if spend else (before, 0.0)
        if not _matches(entry["epsilon_increment"], increment):
            findings.append(("epsilon-increment-mismatch", i))
        if not _matches(entry["epsilon_cumulative"], cumulative):
            findings.append(("epsilon-cumulative-mismatch", i))
        reach = math.inf if entry["epsilon_would_reach"] is None else entry["epsilon_would_reach"]
        if not (math.isinf(reach) and math.isinf(with_event)) and not _matches(reach, with_event):
            findings.append(("epsilon-cumulative-mismatch" if spend else "epsilon-refusal-mismatch", i))
        budget = entry["budget_epsilon"]
        if spend and budget is not None and cumulative > budget + 1e-9 + 1e-6 * budget:
            findings.append(("over-budget", i))
        if spend:
            history[entry["unit"]].append(event)
    return SpecLedger(findings, read.owner, spends)


def _record_ok(e: dict[str, Any]) -> bool:
    """Section 10."""
    cohort, privacy, survivors = e["cohort"], e["privacy"], e["survivors"]
    if not (isinstance(cohort, list) and isinstance(privacy, list) and isinstance(survivors, dict)):
        return False
    if set(survivors) != set(STAGES) or not all(isinstance(v, list) for v in survivors.values()):
        return False
    if not (isinstance(e["round"], str) and e["round"]) or not cohort or not all(isinstance(p, str) and p for p in cohort):
        return False
    if len(set(cohort)) != len(cohort):
        return False
    if not (_integer(e["threshold"]) and 1 <= e["threshold"] <= len(cohort) and _integer(e["dim"]) and e["dim"] >= 1):
        return False
    if not (_integer(e["bits"]) and 1 <= e["bits"] <= 64) or e["mode"] not in ("honest-but-curious", "active"):
        return False
    if e["outcome"] not in ("completed", "aborted"):
        return False
    previous = set(cohort)
    for stage in STAGES:
        parties = survivors[stage]
        if len(set(parties)) != len(parties) or not set(parties) <= previous:
            return False
        previous = set(parties)
    units = []
    for item in privacy:
        if (
            not isinstance(item, dict)
            or set(item) != {"unit", "mechanism", "parameters"}
            or item["unit"] not in ("example", "participant")
        ):
            return False
        if spec_event(item["parameters"], item["mechanism"], normal_form=False) is None:
            return False
        units.append(item["unit"])
    if len(set(units)) != len(units):
        return False
    if "training" in e:
        training = e["training"]
        if not (isinstance(training, dict) and set(training) == {"id", "manifest_hash", "round"}):
            return False
        if not (isinstance(training["id"], str) and training["id"] and _hex(training["manifest_hash"], 64)):
            return False
        if not (_integer(training["round"]) and training["round"] >= 0):
            return False
    return (e["outcome"] == "aborted") == bool(e["abort_reason"])


def spec_verify_server(path: Path, *, pinned: bytes | None = None) -> tuple[list[Finding], list[tuple[int, dict[str, Any]]]]:
    read = spec_read(path, SERVER, pinned=pinned)
    findings = list(read.findings)
    records = []
    for i, entry in sorted(read.usable.items()):
        if _record_ok(entry):
            records.append((i, entry))
        else:
            findings.append(("malformed-entry", i))
    return findings, records


def spec_cross_check(
    ledgers: list[SpecLedger], records: list[tuple[int, dict[str, Any]]], training: str | None = None
) -> list[tuple[str, str, Finding]]:
    """Section 11 (scoped to one training's records when ``training`` is given)."""
    by_party = {ledger.owner: ledger for ledger in ledgers if ledger.owner is not None}
    out = []
    for position, record in records:
        if training is not None and record.get("training", {}).get("id") != training:
            continue
        for party in record["survivors"]["R2-masked-input-collection"]:
            if party not in by_party:
                continue
            for item in record["privacy"]:
                spends = [e for e in by_party[party].spends if e["round"] == record["round"] and e["unit"] == item["unit"]]
                if not spends:
                    out.append((party, record["round"], ("spend-missing-for-round", position)))
                    continue
                wanted = spec_canonical(spec_event(item["parameters"], item["mechanism"], normal_form=False))
                if not any(e["mechanism"] == item["mechanism"] and spec_canonical(e["parameters"]) == wanted for e in spends):
                    out.append((party, record["round"], ("mechanism-differs-from-server", position)))
    return out


# ------------------------------------------------------------------ ledgers written by the real code

DELTA = 1e-5
ROUNDS = [f"{r:032x}" for r in (0xA1, 0xA2, 0xA3, 0xA4)]


def _clock() -> Callable[[], datetime]:
    ticks = itertools.count()
    return lambda: datetime(2026, 3, 1, tzinfo=UTC) + timedelta(seconds=next(ticks))


def _events() -> dict[Any, Any]:
    from dp.accounting import SampledGaussian, Skellam
    from dp.audit.privacy_ledger import PrivacyUnit

    return {
        PrivacyUnit.PARTICIPANT: Skellam(l1_sensitivity=400.0, l2_sensitivity=20.0, variance=4.0e4, steps=1),
        PrivacyUnit.EXAMPLE: SampledGaussian(noise_multiplier=4.0, sample_rate=1.0, steps=2),
    }


@dataclass
class Ledgers:
    bank: Path
    server: Path
    bank_key: bytes
    server_key: bytes
    bank_signer: Any
    server_signer: Any


@pytest.fixture
def ledgers(tmp_path: Path) -> Ledgers:
    """A bank's ledger (three rounds spent, the fourth refused by its budget) and the
    server's records of the same four rounds, written through dp's public API."""
    from dp.accounting import AccountantKind
    from dp.audit.privacy_ledger import PrivacyLedger, PrivacyUnit
    from dp.audit.round_records import RoundOutcome, RoundPrivacy, RoundStage, ServerLedger, ServerRoundRecord
    from dp.budget import BudgetExceeded, BudgetGuard, BudgetPolicy, UnitBudget
    from secagg.config import ProtocolMode
    from secagg.hazmat.keys import SigningKey
    from secagg.hazmat.randomness import DeterministicRandom

    bank_signer = SigningKey.generate(DeterministicRandom.from_int(11))
    server_signer = SigningKey.generate(DeterministicRandom.from_int(12))
    bank_path, server_path = tmp_path / "bank-a" / "privacy-ledger.jsonl", tmp_path / "server" / "server-ledger.jsonl"
    bank_path.parent.mkdir()
    server_path.parent.mkdir()
    events = _events()
    policy = BudgetPolicy(
        {
            PrivacyUnit.PARTICIPANT: UnitBudget(max_epsilon=0.7, delta=DELTA, accountant=AccountantKind.RDP),
            PrivacyUnit.EXAMPLE: UnitBudget(max_epsilon=3.0, delta=DELTA, accountant=AccountantKind.RDP),
        },
        "bank-a",
    )
    contributed = []
    with PrivacyLedger.open(bank_path, party_id="bank-a", signing_key=bank_signer, clock=_clock()) as ledger:
        guard = BudgetGuard(policy, ledger)
        for round_id in ROUNDS:
            try:
                guard.charge_round(round_id=round_id, contributions=events)
                contributed.append(round_id)
            except BudgetExceeded:
                pass
    assert contributed == ROUNDS[:3]
    cohort = ("bank-a", "bank-b", "bank-c")
    privacy = tuple(RoundPrivacy(unit, event) for unit, event in events.items())
    with ServerLedger.open(server_path, server_id="aggregator", signing_key=server_signer, clock=_clock()) as server:
        for round_id in ROUNDS:
            r2 = cohort if round_id in contributed else ("bank-b",)
            aborted = round_id not in contributed
            server.append(
                ServerRoundRecord(
                    round_id=round_id,
                    cohort=cohort,
                    threshold=2,
                    mode=ProtocolMode.ACTIVE,
                    dim=1000,
                    bits=32,
                    privacy=privacy,
                    survivors={
                        RoundStage.ADVERTISE_KEYS: cohort,
                        RoundStage.SHARE_KEYS: cohort if not aborted else ("bank-b",),
                        RoundStage.MASKED_INPUT_COLLECTION: r2,
                        RoundStage.CONSISTENCY_CHECK: r2 if not aborted else (),
                        RoundStage.UNMASKING: r2 if not aborted else (),
                    },
                    outcome=RoundOutcome.ABORTED if aborted else RoundOutcome.COMPLETED,
                    abort_reason="too-few-participants" if aborted else None,
                )
            )
    return Ledgers(bank_path, server_path, bank_signer.public_bytes, server_signer.public_bytes, bank_signer, server_signer)


def reference_findings(path: Path, *, pinned: bytes | None, anchors: Sequence[Path] = ()) -> list[Finding]:
    from dp.audit.privacy_ledger import verify_ledger

    return [(f.kind.value, f.index) for f in verify_ledger(path, public_key=pinned, anchors=anchors).findings]


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def _write(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(b"".join(lines))


def _both(path: Path, key: bytes, anchors: Sequence[Path] = ()) -> list[Finding]:
    """The spec verifier's findings, after checking that they are the reference's."""
    spec = sorted(spec_verify_privacy(path, pinned=key, anchors=anchors).findings, key=repr)
    assert spec == sorted(reference_findings(path, pinned=key, anchors=anchors), key=repr)
    return spec


def test_the_spec_verifier_accepts_the_ledgers_the_code_writes(ledgers: Ledgers) -> None:
    from dp.audit.round_records import verify_server_ledger

    bank = spec_verify_privacy(ledgers.bank, pinned=ledgers.bank_key)
    assert bank.findings == [] and bank.owner == "bank-a"
    kinds = [(e["round"], e["unit"], e["kind"]) for e in map(json.loads, _lines(ledgers.bank))]
    assert [k for _, _, k in kinds] == ["spend"] * 6 + ["refusal"] * 2
    server_findings, records = spec_verify_server(ledgers.server, pinned=ledgers.server_key)
    assert server_findings == [] and len(records) == 4
    assert spec_cross_check([bank], records) == []
    assert reference_findings(ledgers.bank, pinned=ledgers.bank_key) == []
    assert verify_server_ledger(ledgers.server, public_key=ledgers.server_key).ok


def test_the_spec_recomputes_every_epsilon_the_bank_recorded(ledgers: Ledgers) -> None:
    """Both mechanisms of the fixture have closed forms in LEDGER.md section 9.4."""
    entries = [json.loads(line) for line in _lines(ledgers.bank)]
    history: dict[str, list[dict[str, Any]]] = {"example": [], "participant": []}
    for entry in entries:
        event = spec_event(entry["parameters"], entry["mechanism"], normal_form=True)
        assert event is not None
        with_event = spec_epsilon(history[entry["unit"]] + [event], entry["delta"])
        assert with_event is not None and _matches(entry["epsilon_would_reach"], with_event)
        if entry["kind"] == "spend":
            history[entry["unit"]].append(event)
        else:
            assert with_event > entry["budget_epsilon"] and entry["reason"] == "budget-exceeded"


def test_a_modified_entry_is_found(ledgers: Ledgers) -> None:
    lines = _lines(ledgers.bank)
    entry = json.loads(lines[1])
    entry["parameters"]["noise_multiplier"] = 8.0  # weaker claim of spend, canonical bytes
    lines[1] = spec_canonical(entry) + b"\n"
    _write(ledgers.bank, lines)
    findings = _both(ledgers.bank, ledgers.bank_key)
    assert ("hash-mismatch", 1) in findings


def test_a_modified_entry_with_a_recomputed_hash_is_found(ledgers: Ledgers) -> None:
    lines = _lines(ledgers.bank)
    entry = json.loads(lines[2])
    entry["epsilon_cumulative"] = 0.01
    entry["hash"] = spec_hash(entry)
    lines[2] = spec_canonical(entry) + b"\n"
    _write(ledgers.bank, lines)
    findings = _both(ledgers.bank, ledgers.bank_key)
    assert {("bad-signature", 2), ("broken-chain", 3), ("epsilon-cumulative-mismatch", 2)} <= set(findings)


def test_a_deleted_entry_is_found(ledgers: Ledgers) -> None:
    lines = _lines(ledgers.bank)
    del lines[3]
    _write(ledgers.bank, lines)
    findings = _both(ledgers.bank, ledgers.bank_key)
    assert ("index-out-of-sequence", 3) in findings and ("broken-chain", 3) in findings


def test_a_reordered_pair_is_found(ledgers: Ledgers) -> None:
    lines = _lines(ledgers.bank)
    lines[2], lines[3] = lines[3], lines[2]
    _write(ledgers.bank, lines)
    findings = _both(ledgers.bank, ledgers.bank_key)
    assert {("index-out-of-sequence", 2), ("index-out-of-sequence", 3), ("broken-chain", 2), ("broken-chain", 3)} <= set(findings)


def test_a_truncation_is_found_through_the_signed_head(ledgers: Ledgers) -> None:
    lines = _lines(ledgers.bank)
    _write(ledgers.bank, lines[:-2])
    assert _both(ledgers.bank, ledgers.bank_key) == [("truncated", len(lines) - 2)]
    head = ledgers.bank.with_name(ledgers.bank.name + ".head")
    head.unlink()
    assert _both(ledgers.bank, ledgers.bank_key) == [("head-missing", None)]


def test_a_torn_tail_and_a_reformatted_line_are_found(ledgers: Ledgers) -> None:
    lines = _lines(ledgers.bank)
    lines[0] = lines[0].replace(b'"delta":1e-05', b'"delta":1E-05')
    _write(ledgers.bank, lines + [b'{"format":'])
    assert sorted(_both(ledgers.bank, ledgers.bank_key), key=repr) == sorted(
        [("non-canonical-line", 0), ("torn-tail", None)], key=repr
    )


def test_another_key_is_found(ledgers: Ledgers) -> None:
    findings = _both(ledgers.bank, ledgers.server_key)
    assert ("wrong-key", 0) in findings and ("head-bad-signature", None) in findings


def test_a_roll_back_re_signed_by_the_owner_passes_alone_and_fails_against_an_anchor(ledgers: Ledgers, tmp_path: Path) -> None:
    """The owner keeps the first four entries and signs a head for them (LEDGER.md
    sections 6 and 7): only the head an earlier audit kept reveals it."""
    anchor = tmp_path / "audit-1.head"
    shutil.copy(ledgers.bank.with_name(ledgers.bank.name + ".head"), anchor)
    lines = _lines(ledgers.bank)
    _write(ledgers.bank, lines[:4])
    last = json.loads(lines[3])
    head = {
        "format": "secagg-privacy-ledger/1/head",
        "party": "bank-a",
        "public_key": ledgers.bank_key.hex(),
        "entries": 4,
        "last_hash": last["hash"],
        "time": "2026-03-02T00:00:00.000000Z",
    }
    head["signature"] = ledgers.bank_signer.sign(b"secagg/privacy-ledger/v1/head\x00" + spec_canonical(head)).hex()
    ledgers.bank.with_name(ledgers.bank.name + ".head").write_bytes(spec_canonical(head) + b"\n")
    assert _both(ledgers.bank, ledgers.bank_key) == []
    assert _both(ledgers.bank, ledgers.bank_key, anchors=[anchor]) == [("anchor-not-extended", 4)]


def test_a_modified_server_record_is_found(ledgers: Ledgers) -> None:
    from dp.audit.round_records import verify_server_ledger

    lines = _lines(ledgers.server)
    record = json.loads(lines[0])
    record["survivors"]["R2-masked-input-collection"] = ["bank-b", "bank-c"]
    record["survivors"]["R3-consistency-check"] = ["bank-b", "bank-c"]
    record["survivors"]["R4-unmasking"] = ["bank-b", "bank-c"]
    lines[0] = spec_canonical(record) + b"\n"
    _write(ledgers.server, lines)
    findings, _ = spec_verify_server(ledgers.server, pinned=ledgers.server_key)
    reference = [(f.kind.value, f.index) for f in verify_server_ledger(ledgers.server, public_key=ledgers.server_key).findings]
    assert sorted(findings, key=repr) == sorted(reference, key=repr) == [("hash-mismatch", 0)]


def test_the_cross_check_names_a_hidden_round_and_weaker_recorded_noise(ledgers: Ledgers, tmp_path: Path) -> None:
    """The bank drops its round-3 example-level spend and re-signs its head (its key lets it), and the
    server's record of round 2 prescribes other example-level noise than the bank charged.
    The server's record of round 1 writes a parameter as an integer: not normal form, still
    a valid record, and equal to the bank's float after normalisation (LEDGER.md sections 10, 11)."""
    from dp.audit.chain import ChainWriter
    from dp.audit.privacy_ledger import verify_ledger
    from dp.audit.round_records import SERVER_LEDGER_FORMAT, cross_check, verify_server_ledger

    bank_lines = _lines(ledgers.bank)
    hidden = tmp_path / "hidden" / "privacy-ledger.jsonl"
    hidden.parent.mkdir()
    assert [json.loads(line)["unit"] for line in bank_lines[4:6]] == ["participant", "example"]
    _write(hidden, bank_lines[:5])
    head = {
        "format": "secagg-privacy-ledger/1/head",
        "party": "bank-a",
        "public_key": ledgers.bank_key.hex(),
        "entries": 5,
        "last_hash": json.loads(bank_lines[4])["hash"],
        "time": "2026-03-02T00:00:00.000000Z",
    }
    head["signature"] = ledgers.bank_signer.sign(b"secagg/privacy-ledger/v1/head\x00" + spec_canonical(head)).hex()
    hidden.with_name(hidden.name + ".head").write_bytes(spec_canonical(head) + b"\n")

    bodies = [{k: v for k, v in json.loads(line).items() if k in SERVER.body} for line in _lines(ledgers.server)]
    assert bodies[0]["privacy"][1]["parameters"]["noise_multiplier"] == 4.0
    bodies[0]["privacy"][1]["parameters"]["noise_multiplier"] = 4
    bodies[1]["privacy"][1]["parameters"]["noise_multiplier"] = 5.0
    altered = tmp_path / "altered" / "server-ledger.jsonl"
    altered.parent.mkdir()
    with ChainWriter.open(
        altered, SERVER_LEDGER_FORMAT, owner="aggregator", signing_key=ledgers.server_signer, clock=_clock()
    ) as writer:
        for body in bodies:
            writer.append(body)
    assert b'"noise_multiplier":4,' in altered.read_bytes()

    bank = spec_verify_privacy(hidden, pinned=ledgers.bank_key)
    assert bank.findings == []
    server_findings, records = spec_verify_server(altered, pinned=ledgers.server_key)
    assert server_findings == []
    assert verify_server_ledger(altered, public_key=ledgers.server_key).ok
    spec = spec_cross_check([bank], records)
    reference = cross_check(
        [verify_ledger(hidden, public_key=ledgers.bank_key)], verify_server_ledger(altered, public_key=ledgers.server_key)
    )
    assert sorted(spec) == sorted((c.party, c.round_id, (c.finding.kind.value, c.finding.index)) for c in reference)
    assert sorted(spec) == [
        ("bank-a", ROUNDS[1], ("mechanism-differs-from-server", 1)),
        ("bank-a", ROUNDS[2], ("spend-missing-for-round", 2)),
    ]


# ------------------------------------------------------------------ LEDGER.md section 8: key files


def spec_load_key(data: bytes) -> bytes | None:
    """Section 8, the three accepted forms in order; None for anything else."""
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    stripped = data.strip()
    if stripped.startswith(b"-----BEGIN"):
        try:
            key = load_pem_public_key(stripped)
        except ValueError:
            return None
        return key.public_bytes(Encoding.Raw, PublicFormat.Raw) if isinstance(key, Ed25519PublicKey) else None
    if len(data) == 32:
        return data
    try:
        raw = bytes.fromhex(stripped.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return None
    return raw if len(raw) == 32 else None


def test_the_key_file_formats_are_the_implementation_s(tmp_path: Path) -> None:
    from dp.audit.chain import LedgerError, load_public_key

    private = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    raw = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    forms = {
        "hex": raw.hex().encode() + b"\n",
        "hex-upper": raw.hex().upper().encode(),
        "raw": raw,
        "pem": private.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo),
        "base64": base64.b64encode(raw) + b"\n",
        "short-hex": raw.hex()[:62].encode(),
    }
    for name, data in forms.items():
        path = tmp_path / f"{name}.pub"
        path.write_bytes(data)
        expected = spec_load_key(data)
        if expected is None:
            with pytest.raises(LedgerError):
                load_public_key(path)
        else:
            assert load_public_key(path) == expected == raw, name
    assert spec_load_key(forms["base64"]) is None  # base64 (the admin API's form) is not a key file


# ------------------------------------------------------------------ unreleased contributions and trainings (sections 9.3, 10, 11)


def test_unreleased_entries_and_training_records_verify_and_the_cross_check_can_be_scoped(tmp_path: Path) -> None:
    """Entries added to the formats later: a contribution that never left (kind unreleased), and a
    server record naming its training. Old readers never see them in ledgers that have none."""
    from dp.accounting import SampledGaussian
    from dp.audit.privacy_ledger import PrivacyLedger, PrivacyUnit, UnreleasedReason, verify_ledger
    from dp.audit.round_records import (
        RoundOutcome,
        RoundPrivacy,
        RoundStage,
        RoundTraining,
        ServerLedger,
        ServerRoundRecord,
        verify_server_ledger,
    )
    from dp.budget import BudgetGuard, BudgetPolicy, UnitBudget
    from secagg.config import ProtocolMode
    from secagg.hazmat.keys import SigningKey
    from secagg.hazmat.randomness import DeterministicRandom

    bank_signer = SigningKey.generate(DeterministicRandom.from_int(21))
    server_signer = SigningKey.generate(DeterministicRandom.from_int(22))
    event = SampledGaussian(noise_multiplier=4.0, sample_rate=1.0, steps=2)  # a closed form (section 9.4)
    contributions = {PrivacyUnit.EXAMPLE: event}
    bank_path, server_path = tmp_path / "privacy-ledger.jsonl", tmp_path / "server-ledger.jsonl"
    policy = BudgetPolicy({PrivacyUnit.EXAMPLE: UnitBudget(max_epsilon=9.0, delta=DELTA)}, "bank-a")
    with PrivacyLedger.open(bank_path, party_id="bank-a", signing_key=bank_signer, clock=_clock()) as ledger:
        guard = BudgetGuard(policy, ledger)
        guard.record_unreleased(round_id=ROUNDS[0], contributions=contributions, reason=UnreleasedReason.ROUND_ABORTED)
        guard.charge_round(round_id=ROUNDS[1], contributions=contributions)
        guard.record_unreleased(round_id=ROUNDS[2], contributions=contributions, reason=UnreleasedReason.LEFT_OUT)
        guard.record_unreleased(
            round_id=ROUNDS[1], contributions=contributions, reason=UnreleasedReason.LEFT_OUT
        )  # charged: no-op
    entries = [json.loads(line) for line in _lines(bank_path)]
    assert [(e["kind"], e["reason"]) for e in entries] == [
        ("unreleased", "round-aborted"), ("spend", None), ("unreleased", "left-out")
    ]  # fmt: skip
    assert entries[0]["epsilon_increment"] == 0.0 and entries[0]["epsilon_cumulative"] == 0.0
    assert entries[2]["epsilon_cumulative"] == entries[1]["epsilon_cumulative"] < entries[2]["epsilon_would_reach"]
    bank = spec_verify_privacy(bank_path, pinned=bank_signer.public_bytes)
    assert bank.findings == [] and verify_ledger(bank_path, public_key=bank_signer.public_bytes).ok

    cohort = ("bank-a", "bank-b")
    privacy = (RoundPrivacy(PrivacyUnit.EXAMPLE, event),)

    def record(round_id: str, training: RoundTraining | None, r2: tuple[str, ...]) -> ServerRoundRecord:
        return ServerRoundRecord(
            round_id=round_id, cohort=cohort, threshold=2, mode=ProtocolMode.ACTIVE, dim=10, bits=32, privacy=privacy,
            survivors={stage: cohort if stage.number < 2 else r2 for stage in RoundStage},
            outcome=RoundOutcome.COMPLETED if r2 == cohort else RoundOutcome.ABORTED,
            abort_reason=None if r2 == cohort else "too-few-participants", training=training,
        )  # fmt: skip

    mine, theirs = RoundTraining("t-mine", "ab" * 32, 1), RoundTraining("t-theirs", "cd" * 32, 1)
    with ServerLedger.open(server_path, server_id="aggregator", signing_key=server_signer, clock=_clock()) as server:
        server.append(record(ROUNDS[1], mine, cohort))
        server.append(record(ROUNDS[3], theirs, cohort))  # bank-a contributed there too, under another ledger
        server.append(record(ROUNDS[0], None, ()))
    lines = [json.loads(line) for line in _lines(server_path)]
    assert [line.get("training") for line in lines] == [mine.to_dict(), theirs.to_dict(), None]
    assert "training" not in lines[2]  # a round of no training is exactly the first format
    server_findings, records = spec_verify_server(server_path, pinned=server_signer.public_bytes)
    assert server_findings == [] and verify_server_ledger(server_path, public_key=server_signer.public_bytes).ok
    assert spec_cross_check([bank], records, "t-mine") == []
    assert spec_cross_check([bank], records) == [("bank-a", ROUNDS[3], ("spend-missing-for-round", 1))]
    from dp.audit.round_records import cross_check

    reference = verify_ledger(bank_path, public_key=bank_signer.public_bytes)
    server_verification = verify_server_ledger(server_path, public_key=server_signer.public_bytes)
    assert cross_check([reference], server_verification, training="t-mine") == ()
    assert [(c.party, c.round_id, c.finding.kind.value) for c in cross_check([reference], server_verification)] == [
        ("bank-a", ROUNDS[3], "spend-missing-for-round")
    ]
    for bad in ({"id": "", "manifest_hash": "ab" * 32, "round": 1}, {"id": "x", "manifest_hash": "AB" * 32, "round": 1},
                {"id": "x", "manifest_hash": "ab" * 32, "round": -1}, {"id": "x", "manifest_hash": "ab" * 32}):  # fmt: skip
        assert not _record_ok({**lines[0], "training": bad})
