"""The consortium manifest (secagg/consortium.py) and the round config's training binding.

Known answers: ``vectors/manifest_v1.json`` (a manifest over the RFC 8032 section 7.1
test keys). Its canonical bytes are re-derived here by an encoder written from
docs/LEDGER.md section 2 (not the implementation's), its hash by SHA-256 of those bytes,
and its signatures verified with ``cryptography`` directly over the documented message.
The training binding of the round digest is re-derived from docs/WIRE.md section 8.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import struct
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from hypothesis import given
from hypothesis import strategies as st

from secagg.config import GraphKind, ProtocolMode, RoundConfig, minimum_threshold
from secagg.consortium import (
    SIGNATURE_DOMAIN,
    CohortMismatch,
    CohortMismatchReason,
    Manifest,
    ManifestError,
    Member,
    MemberRole,
    ProtocolRule,
    SignedManifest,
    canonical_json,
    parse_json,
)
from secagg.errors import ConfigurationError
from secagg.hazmat.keys import SigningKey
from tests.secagg.kat import load_vectors

VECTOR = load_vectors("manifest_v1.json")[0]
KEYS = {member: SigningKey.from_private_bytes(bytes.fromhex(secret)) for member, secret in VECTOR["secret_keys"].items()}


def independent_canonical(value: Any) -> str:
    """docs/LEDGER.md section 2, written from the table there."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        assert math.isfinite(value)
        return repr(value)
    if isinstance(value, str):
        escapes = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b", "\f": "\\f"}
        out = []
        for character in value:
            if character in escapes:
                out.append(escapes[character])
            elif 0x20 <= ord(character) <= 0x7E:
                out.append(character)
            elif ord(character) > 0xFFFF:
                code = ord(character) - 0x10000
                out.append(f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}")
            else:
                out.append(f"\\u{ord(character):04x}")
        return '"' + "".join(out) + '"'
    if isinstance(value, list):
        return "[" + ",".join(independent_canonical(item) for item in value) + "]"
    assert isinstance(value, dict)
    return "{" + ",".join(f"{independent_canonical(k)}:{independent_canonical(value[k])}" for k in sorted(value)) + "}"


def vector_manifest() -> Manifest:
    return Manifest.from_dict(VECTOR["manifest"])


def three_bank_manifest(**changes: Any) -> Manifest:
    keys = [SigningKey.from_private_bytes(bytes([index + 1]) * 32) for index in range(4)]
    members = (
        Member("bank-a", MemberRole.BANK, keys[0].public_bytes),
        Member("bank-b", MemberRole.BANK, keys[1].public_bytes),
        Member("bank-c", MemberRole.BANK, keys[2].public_bytes),
        Member("audit", MemberRole.AUDITOR, keys[3].public_bytes),
    )
    values: dict[str, Any] = {
        "training_id": "t1",
        "members": members,
        "protocol": ProtocolRule(),
        "schema": {"columns": ["x"]},
        "plan": {"rounds": 2},
    }
    values.update(changes)
    return Manifest(**values)


# --- known answers ----------------------------------------------------------------------------


def test_the_vector_manifest_has_the_documented_canonical_bytes_hash_and_signatures() -> None:
    manifest = vector_manifest()
    assert manifest.canonical_bytes().decode("ascii") == VECTOR["canonical"]
    assert independent_canonical(VECTOR["manifest"]) == VECTOR["canonical"]
    assert hashlib.sha256(VECTOR["canonical"].encode("ascii")).hexdigest() == VECTOR["hash"] == manifest.hash.hex()
    assert "\\u00e9" in VECTOR["canonical"] and "1e-05" in VECTOR["canonical"]
    message = b"secagg/consortium-manifest/v1/signature\x00" + bytes.fromhex(VECTOR["hash"])
    assert message == SIGNATURE_DOMAIN + manifest.hash
    for member in VECTOR["manifest"]["members"]:
        Ed25519PublicKey.from_public_bytes(bytes.fromhex(member["public_key"])).verify(
            bytes.fromhex(VECTOR["signatures"][member["id"]]), message
        )


def test_signing_with_the_vector_keys_reproduces_the_vector_signatures() -> None:
    signed = SignedManifest(vector_manifest())
    for key in KEYS.values():
        signed = signed.with_signature(key)
    assert {member: signature.hex() for member, signature in signed.signatures.items()} == VECTOR["signatures"]
    assert signed.verify().complete


def test_the_file_form_round_trips_and_its_layout_does_not_change_the_hash() -> None:
    signed = SignedManifest(vector_manifest(), {m: bytes.fromhex(s) for m, s in VECTOR["signatures"].items()})
    again = SignedManifest.from_bytes(signed.to_bytes())
    assert again == signed and again.hash.hex() == VECTOR["hash"]
    compact = json.dumps(signed.to_dict(), separators=(",", ":")).encode("ascii")
    assert SignedManifest.from_bytes(compact).hash == signed.hash


# --- what changes the hash, and the signatures ------------------------------------------------


@pytest.mark.parametrize(
    "change",
    [
        {"training_id": "t2"},
        {"schema": {"columns": ["y"]}},
        {"plan": {"rounds": 3}},
        {"plan": {"rounds": 2.0}},
        {"protocol": ProtocolRule(mode=ProtocolMode.HONEST_BUT_CURIOUS)},
        {"protocol": ProtocolRule(min_threshold_fraction=0.9)},
        {"model": {"parameters": 21}},
    ],
    ids=["training_id", "schema", "plan", "plan-number-type", "mode", "threshold-rule", "model"],
)
def test_every_part_of_the_manifest_is_in_its_hash(change: dict[str, Any]) -> None:
    assert three_bank_manifest(**change).hash != three_bank_manifest().hash


def test_the_roster_order_and_every_key_are_in_the_hash() -> None:
    base = three_bank_manifest()
    members = list(base.members)
    swapped = three_bank_manifest(members=(members[1], members[0], *members[2:]))
    other_key = SigningKey.from_private_bytes(bytes([9]) * 32).public_bytes
    rekeyed = three_bank_manifest(members=(dataclasses.replace(members[0], public_key=other_key), *members[1:]))
    role = three_bank_manifest(members=(*members[:3], dataclasses.replace(members[3], role=MemberRole.BANK)))
    assert len({base.hash, swapped.hash, rekeyed.hash, role.hash}) == 4


def test_an_edited_manifest_keeps_none_of_the_old_signatures() -> None:
    keys = [SigningKey.from_private_bytes(bytes([index + 1]) * 32) for index in range(4)]
    signed = SignedManifest(three_bank_manifest())
    for key in keys:
        signed = signed.with_signature(key)
    assert signed.verify().complete
    edited = SignedManifest(three_bank_manifest(plan={"rounds": 20}), signed.signatures)
    verification = edited.verify()
    assert set(verification.invalid) == {"bank-a", "bank-b", "bank-c", "audit"}
    with pytest.raises(ManifestError, match="do not verify: bank-a, bank-b, bank-c, audit"):
        edited.require_complete()


def test_missing_and_foreign_signatures_are_named() -> None:
    keys = [SigningKey.from_private_bytes(bytes([index + 1]) * 32) for index in range(4)]
    signed = SignedManifest(three_bank_manifest()).with_signature(keys[0]).with_signature(keys[2])
    stranger = SignedManifest(signed.manifest, {**signed.signatures, "mallory": bytes(64)})
    verification = stranger.verify()
    assert verification.missing == ("bank-b", "audit") and verification.unknown == ("mallory",)
    assert not verification.complete


def test_copies_signed_separately_combine_and_copies_of_another_manifest_do_not() -> None:
    keys = [SigningKey.from_private_bytes(bytes([index + 1]) * 32) for index in range(4)]
    copies = [SignedManifest(three_bank_manifest()).with_signature(key) for key in keys]
    combined = copies[0].combined(copies[1:])
    assert combined.verify().complete
    forged = SignedManifest(combined.manifest, {**combined.signatures, "bank-a": bytes(64)})
    assert forged.combined([combined]).verify().complete  # a valid signature beats a wrong one
    with pytest.raises(ManifestError, match="different manifests"):
        combined.combined([SignedManifest(three_bank_manifest(plan={"rounds": 9}))])


def test_a_key_outside_the_roster_cannot_sign() -> None:
    with pytest.raises(ManifestError, match="not a member"):
        SignedManifest(three_bank_manifest()).with_signature(SigningKey.from_private_bytes(bytes([8]) * 32))


# --- malformed manifests -----------------------------------------------------------------------


def _raw(**changes: Any) -> dict[str, Any]:
    value = three_bank_manifest().to_dict()
    value.update(changes)
    return value


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (_raw(extra=1), "unknown"),
        ({key: value for key, value in _raw().items() if key != "plan"}, "missing"),
        (_raw(format="secagg-consortium-manifest/2"), "not a"),
        (_raw(training_id="Has Spaces"), "training_id"),
        (_raw(members=_raw()["members"][:1] + _raw()["members"][3:]), "at least two banks"),
        (_raw(members=_raw()["members"] + [_raw()["members"][0]]), "listed twice"),
        (
            _raw(members=[*_raw()["members"][:3], {**_raw()["members"][3], "public_key": _raw()["members"][0]["public_key"]}]),
            "share",
        ),
        (_raw(members=[{**_raw()["members"][0], "public_key": "AB" * 32}, *_raw()["members"][1:]]), "lowercase hex"),
        (_raw(members=[{**_raw()["members"][0], "role": "coordinator"}, *_raw()["members"][1:]]), "unknown role"),
        (_raw(protocol={"mode": "active", "graph": "full", "degree": 2, "min_threshold_fraction": None}), "degree"),
        (_raw(protocol={"mode": "active", "graph": "harary", "degree": 2, "min_threshold_fraction": None}), "at most 1"),
        (_raw(protocol={"mode": "active", "graph": "full", "degree": None, "min_threshold_fraction": 1.5}), "fraction"),
        (_raw(schema=[1, 2]), "schema must be a JSON object"),
    ],
)
def test_malformed_manifests_are_refused_by_name(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(ManifestError, match=message):
        Manifest.from_dict(raw)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b'{"a": 1, "a": 2}', "appears twice"),
        (b'{"a": NaN}', "not a JSON number"),
        (b'{"a": 1e400}', "overflows"),
        (b"\xff", "UTF-8"),
        (b"{", "not JSON"),
    ],
)
def test_the_json_reader_refuses_what_has_no_canonical_form(data: bytes, message: str) -> None:
    with pytest.raises(ManifestError, match=message):
        parse_json(data)


def test_canonical_json_refuses_nan() -> None:
    with pytest.raises(ManifestError):
        canonical_json({"x": float("nan")})


# --- threshold rule and the round checks -------------------------------------------------------


def test_the_threshold_fraction_is_taken_as_written() -> None:
    assert ProtocolRule(mode=ProtocolMode.HONEST_BUT_CURIOUS, min_threshold_fraction=0.7).threshold(10) == 7
    assert ProtocolRule(mode=ProtocolMode.ACTIVE).threshold(3) == 3
    assert ProtocolRule(mode=ProtocolMode.HONEST_BUT_CURIOUS).threshold(5) == 3


@given(
    st.sampled_from(list(ProtocolMode)),
    st.integers(min_value=2, max_value=500),
    st.one_of(st.none(), st.floats(min_value=0.01, max_value=1.0)),
)
def test_the_threshold_rule_never_goes_below_the_mode_or_the_fraction_nor_above_n(
    mode: ProtocolMode, n: int, fraction: float | None
) -> None:
    t = ProtocolRule(mode=mode, min_threshold_fraction=fraction).threshold(n)
    assert minimum_threshold(mode, n) <= t <= n
    if fraction is not None:
        assert t >= min(n, fraction * n - 1e-9)


def test_a_cohort_with_a_key_outside_the_roster_is_refused_naming_the_key() -> None:
    manifest = three_bank_manifest()
    banks = manifest.banks
    invented = SigningKey.from_private_bytes(bytes([7]) * 32).public_bytes
    with pytest.raises(CohortMismatch) as refused:
        manifest.check_cohort([b.id for b in banks] + ["bank-x"], [b.public_key for b in banks] + [invented])
    assert refused.value.reason is CohortMismatchReason.KEY_NOT_IN_MANIFEST and invented.hex()[:16] in refused.value.detail


def test_an_auditor_key_in_a_cohort_is_refused_as_outside_the_banks() -> None:
    manifest = three_bank_manifest()
    auditor = manifest.auditors[0]
    with pytest.raises(CohortMismatch) as refused:
        manifest.check_cohort(["bank-a", "bank-b", "audit"], [*[b.public_key for b in manifest.banks[:2]], auditor.public_key])
    assert refused.value.reason is CohortMismatchReason.KEY_NOT_IN_MANIFEST


def test_a_cohort_in_another_order_or_missing_a_bank_or_with_swapped_ids_is_refused() -> None:
    manifest = three_bank_manifest()
    ids = [bank.id for bank in manifest.banks]
    keys = [bank.public_key for bank in manifest.banks]
    for cohort_ids, cohort_keys in (
        (ids[::-1], keys[::-1]),
        (ids[:2], keys[:2]),
        ([ids[1], ids[0], ids[2]], keys),
    ):
        with pytest.raises(CohortMismatch) as refused:
            manifest.check_cohort(cohort_ids, cohort_keys)
        assert refused.value.reason is CohortMismatchReason.COHORT_DIFFERS
    manifest.check_cohort(ids, keys)


def test_protocol_parameters_must_be_what_the_rule_gives() -> None:
    manifest = three_bank_manifest()
    manifest.check_protocol(mode=ProtocolMode.ACTIVE, graph=GraphKind.FULL, degree=None, threshold=3, cohort_size=3)
    for changes in ({"mode": ProtocolMode.HONEST_BUT_CURIOUS, "threshold": 2}, {"threshold": 2}):
        arguments = {"mode": ProtocolMode.ACTIVE, "graph": GraphKind.FULL, "degree": None, "threshold": 3, "cohort_size": 3}
        arguments.update(changes)
        with pytest.raises(CohortMismatch) as refused:
            manifest.check_protocol(**arguments)  # type: ignore[arg-type]
        assert refused.value.reason is CohortMismatchReason.PROTOCOL_DIFFERS


# --- the round config's training binding (docs/WIRE.md section 8) -------------------------------

ROUND_ID = bytes.fromhex("726f756e642d323032362d31312d32352d30303031")
BOUND_DIGEST = "edbe683cea353f1821097e4a7361c8b6313e93760d444a74816ca104e575fd4b"


def bound_config(**changes: Any) -> RoundConfig:
    values: dict[str, Any] = {
        "round_id": ROUND_ID,
        "identity_keys": (KEYS["bank-a"].public_bytes, KEYS["bank-b"].public_bytes),
        "threshold": 2,
        "dim": 21,
        "bits": 32,
        "mode": ProtocolMode.HONEST_BUT_CURIOUS,
        "manifest_hash": bytes.fromhex(VECTOR["hash"]),
        "training_round": 3,
    }
    values.update(changes)
    return RoundConfig(**values)


def test_the_bound_digest_is_the_documented_layout() -> None:
    config = bound_config()
    layout = (
        b"secagg/v1/round-config/"
        + struct.pack(">BBBBIIIH", 1, 32, 0, 0, 2, 21, 0, len(ROUND_ID))
        + ROUND_ID
        + struct.pack(">I", 2)
        + b"".join(config.identity_keys)
        + b"/training/"
        + bytes.fromhex(VECTOR["hash"])
        + struct.pack(">I", 3)
    )
    assert hashlib.sha256(layout).hexdigest() == BOUND_DIGEST == config.digest().hex()


def test_an_unbound_round_has_the_version_1_digest_and_binding_changes_it() -> None:
    unbound = bound_config(manifest_hash=None, training_round=None)
    layout = (
        b"secagg/v1/round-config/"
        + struct.pack(">BBBBIIIH", 1, 32, 0, 0, 2, 21, 0, len(ROUND_ID))
        + ROUND_ID
        + struct.pack(">I", 2)
        + b"".join(unbound.identity_keys)
    )
    assert unbound.digest() == hashlib.sha256(layout).digest()
    digests = {
        unbound.digest(),
        bound_config().digest(),
        bound_config(training_round=4).digest(),
        bound_config(training_round=0).digest(),
        bound_config(manifest_hash=bytes(32)).digest(),
    }
    assert len(digests) == 5


@pytest.mark.parametrize(
    "changes",
    [
        {"training_round": None},
        {"manifest_hash": None},
        {"manifest_hash": bytes(31)},
        {"training_round": -1},
        {"training_round": 1 << 32},
        {"training_round": True},
    ],
)
def test_a_half_or_malformed_binding_is_refused(changes: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        bound_config(**changes)
