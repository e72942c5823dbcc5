"""The consortium manifest: the one document every member signs before a training starts.

A manifest fixes, for one training, who takes part and under which rules
(``docs/CONSORTIUM.md`` is the prose specification, with a worked example):

=================  ===========================================================================
``format``         ``"secagg-consortium-manifest/1"``
``training_id``    the training's id (``^[a-z0-9][a-z0-9._-]{0,62}$``), unique on a server
``members``        the roster: ``{"id", "role", "public_key"}`` per member, ``role`` one of
                   ``bank`` (joins every round, in roster order) and ``auditor`` (reads the
                   server's records); ``public_key`` the member's Ed25519 identity key
                   (RFC 8032), 64 lowercase hex digits
``protocol``       the protocol mode, the neighbour graph (and its degree) and the threshold
                   rule: ``t(n) = max(minimum_threshold(mode, n), ceil(min_threshold_fraction * n))``
``schema``         the agreed data schema, a JSON object this module hashes but never reads
``plan``           the agreed training plan, likewise
``model``          optional: a model description, likewise
=================  ===========================================================================

Its **hash** is the SHA-256 (FIPS 180-4) of its canonical JSON encoding
(:func:`canonical_json`, the encoding of ``docs/LEDGER.md`` section 2). Each member signs
``SIGNATURE_DOMAIN || hash`` with its identity key (pure Ed25519); a
:class:`SignedManifest` carries the manifest and the members' signatures, and is complete
when every member's signature verifies and no one else's is present.

Why it exists (threat_model.md, Sybil cohort): a bank that checks a round's cohort against
the roster it signed cannot be put in a round with identities a server invented, and a
round bound to the manifest's hash (:attr:`secagg.config.RoundConfig.manifest_hash`, in the
round's config digest) cannot be mistaken for a round of another training, another schema
or another plan. The schema and the plan are interpreted by the bank's training code
(``clients.training``); the server, the coordinator and the auditor need only this module.

Pure: no I/O, no clock; the callers read and write the files.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from fractions import Fraction
from types import MappingProxyType
from typing import Any

from secagg.config import GraphKind, ProtocolMode, minimum_threshold
from secagg.errors import SecAggError
from secagg.hazmat.keys import PUBLIC_KEY_BYTES, SIGNATURE_BYTES, SigningKey, verify_signature

MANIFEST_FORMAT = "secagg-consortium-manifest/1"
SIGNED_MANIFEST_FORMAT = "secagg-signed-manifest/1"
SIGNATURE_DOMAIN = b"secagg/consortium-manifest/v1/signature\x00"
"""Prefix of every signed manifest hash: no other statement secagg signs begins like it."""
MANIFEST_HASH_BYTES = 32
IDENTIFIER = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
"""Training and member ids: the participant ids of the HTTP API."""
_HEX_KEY = re.compile(r"^[0-9a-f]{64}$")
_HEX_SIGNATURE = re.compile(r"^[0-9a-f]{128}$")
_REQUIRED_MEMBERS = frozenset({"format", "training_id", "members", "protocol", "schema", "plan"})
_OPTIONAL_MEMBERS = frozenset({"model"})


class ManifestError(SecAggError, ValueError):
    """A manifest or a signed manifest that is malformed, incomplete or not what was signed."""


class CohortMismatchReason(str, Enum):
    """Why a round does not follow from a manifest. Stable strings: logged by the bank and the server."""

    KEY_NOT_IN_MANIFEST = "cohort-not-in-manifest"
    COHORT_DIFFERS = "cohort-differs-from-manifest"
    PROTOCOL_DIFFERS = "protocol-differs-from-manifest"


class CohortMismatch(ManifestError):
    """A round's cohort or protocol parameters do not follow from the manifest."""

    def __init__(self, reason: CohortMismatchReason, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason.value}: {detail}")


# --------------------------------------------------------------------------- canonical JSON


def canonical_json(value: Any) -> bytes:
    """``docs/LEDGER.md`` section 2: sorted keys, no whitespace, ASCII with lowercase ``\\u``
    escapes, floats as their shortest round-tripping decimal; NaN and infinities refused."""
    try:
        text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ManifestError(f"value has no canonical JSON encoding: {exc}") from None
    return text.encode("ascii")


def _refuse_constant(name: str) -> Any:
    raise ManifestError(f"{name} is not a JSON number")


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ManifestError(f"the member {key!r} appears twice in one object")
        result[key] = value
    return result


def _finite_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ManifestError(f"the number {text} overflows a double")
    return number


def parse_json(data: bytes) -> Any:
    """UTF-8 JSON with the strictness canonical encoding needs: no duplicate member names,
    no ``NaN``/``Infinity``, no float literal that overflows a double."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ManifestError(f"not UTF-8 text: {exc}") from None
    try:
        return json.loads(text, object_pairs_hook=_no_duplicate_keys, parse_constant=_refuse_constant, parse_float=_finite_float)
    except json.JSONDecodeError as exc:
        raise ManifestError(f"not JSON: {exc}") from None


def _frozen_json_object(value: Any, name: str) -> Mapping[str, Any]:
    """A deep copy of a JSON object (through its canonical encoding), read-only at the top."""
    if not isinstance(value, Mapping):
        raise ManifestError(f"{name} must be a JSON object")
    copied = json.loads(canonical_json(dict(value)))
    assert isinstance(copied, dict)
    return MappingProxyType(copied)


# --------------------------------------------------------------------------- roster and rules


class MemberRole(str, Enum):
    BANK = "bank"
    """Contributes to every round of the training (its cohort is the banks, in roster order)."""
    AUDITOR = "auditor"
    """Reads the server's round records and ledger; never in a cohort."""


@dataclass(frozen=True, slots=True)
class Member:
    """One signatory: participant id (as enrolled with the server), role, Ed25519 identity key."""

    id: str
    role: MemberRole
    public_key: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not IDENTIFIER.fullmatch(self.id):
            raise ManifestError(f"member id {self.id!r} does not match {IDENTIFIER.pattern}")
        try:
            object.__setattr__(self, "role", MemberRole(self.role))
        except ValueError:
            raise ManifestError(f"member {self.id}: unknown role {self.role!r}") from None
        if not isinstance(self.public_key, bytes) or len(self.public_key) != PUBLIC_KEY_BYTES:
            raise ManifestError(f"member {self.id}: an Ed25519 public key is {PUBLIC_KEY_BYTES} bytes")

    def to_dict(self) -> dict[str, str]:
        return {"id": self.id, "role": self.role.value, "public_key": self.public_key.hex()}

    @classmethod
    def from_dict(cls, value: Any) -> Member:
        if not isinstance(value, Mapping) or set(value) != {"id", "role", "public_key"}:
            raise ManifestError("a member is exactly {id, role, public_key}")
        key = value["public_key"]
        if not isinstance(key, str) or not _HEX_KEY.fullmatch(key):
            raise ManifestError(f"member {value['id']!r}: public_key must be 64 lowercase hex digits")
        return cls(id=value["id"], role=value["role"], public_key=bytes.fromhex(key))


@dataclass(frozen=True, slots=True)
class ProtocolRule:
    """The protocol mode, the neighbour graph and the threshold rule every round of the training uses."""

    mode: ProtocolMode = ProtocolMode.ACTIVE
    graph: GraphKind = GraphKind.FULL
    degree: int | None = None
    min_threshold_fraction: float | None = None

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "mode", ProtocolMode(self.mode))
            object.__setattr__(self, "graph", GraphKind(self.graph))
        except ValueError as exc:
            raise ManifestError(f"protocol: {exc}") from None
        if self.graph is GraphKind.FULL and self.degree is not None:
            raise ManifestError("protocol: degree applies only to the harary graph")
        if self.graph is GraphKind.HARARY and (
            isinstance(self.degree, bool) or not isinstance(self.degree, int) or self.degree < 2 or self.degree % 2
        ):
            raise ManifestError("protocol: the harary graph needs an even degree of at least 2")
        fraction = self.min_threshold_fraction
        if fraction is not None and (
            isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1
        ):
            raise ManifestError("protocol: min_threshold_fraction must be in (0, 1] or null")
        if fraction is not None:
            object.__setattr__(self, "min_threshold_fraction", float(fraction))

    def threshold(self, cohort_size: int) -> int:
        """t for a cohort of ``cohort_size``: the mode's minimum, raised to ``ceil(fraction * n)``.

        The fraction is taken as the decimal it is written as (``0.7`` is 7/10), so
        ``ceil(0.7 * 10)`` is 7, not 8.
        """
        rule = minimum_threshold(self.mode, cohort_size)
        if self.min_threshold_fraction is not None:
            rule = max(rule, math.ceil(Fraction(repr(self.min_threshold_fraction)) * cohort_size))
        return min(rule, cohort_size)

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode.value,
            "graph": self.graph.value,
            "degree": self.degree,
            "min_threshold_fraction": self.min_threshold_fraction,
        }

    @classmethod
    def from_dict(cls, value: Any) -> ProtocolRule:
        if not isinstance(value, Mapping) or set(value) != {"mode", "graph", "degree", "min_threshold_fraction"}:
            raise ManifestError("protocol is exactly {mode, graph, degree, min_threshold_fraction}")
        return cls(
            mode=value["mode"],
            graph=value["graph"],
            degree=value["degree"],
            min_threshold_fraction=value["min_threshold_fraction"],
        )


# --------------------------------------------------------------------------- the manifest


@dataclass(frozen=True)
class Manifest:
    """The content every member signs (see the module docstring). Immutable once built."""

    training_id: str
    members: tuple[Member, ...]
    protocol: ProtocolRule
    schema: Mapping[str, Any]
    plan: Mapping[str, Any]
    model: Mapping[str, Any] | None = None
    _hash: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.training_id, str) or not IDENTIFIER.fullmatch(self.training_id):
            raise ManifestError(f"training_id {self.training_id!r} does not match {IDENTIFIER.pattern}")
        members = tuple(self.members)
        if not all(isinstance(member, Member) for member in members):
            raise ManifestError("members must be Member values")
        ids = [member.id for member in members]
        keys = [member.public_key for member in members]
        if len(set(ids)) != len(ids):
            raise ManifestError(f"a member id is listed twice: {sorted({i for i in ids if ids.count(i) > 1})}")
        if len(set(keys)) != len(keys):
            raise ManifestError("two members share one public key")
        banks = [member for member in members if member.role is MemberRole.BANK]
        if len(banks) < 2:
            raise ManifestError("a consortium needs at least two banks")
        if self.protocol.graph is GraphKind.HARARY and self.protocol.degree is not None and self.protocol.degree > len(banks) - 2:
            raise ManifestError(f"protocol: a harary degree of at most {len(banks) - 2} for {len(banks)} banks")
        object.__setattr__(self, "members", members)
        object.__setattr__(self, "schema", _frozen_json_object(self.schema, "schema"))
        object.__setattr__(self, "plan", _frozen_json_object(self.plan, "plan"))
        if self.model is not None:
            object.__setattr__(self, "model", _frozen_json_object(self.model, "model"))
        object.__setattr__(self, "_hash", hashlib.sha256(canonical_json(self.to_dict())).digest())

    @property
    def hash(self) -> bytes:
        """SHA-256 of :meth:`canonical_bytes`: what every round of the training is bound to."""
        return self._hash

    @property
    def banks(self) -> tuple[Member, ...]:
        """The banks in roster order: the cohort of every round, participant i is ``banks[i]``."""
        return tuple(member for member in self.members if member.role is MemberRole.BANK)

    @property
    def auditors(self) -> tuple[Member, ...]:
        return tuple(member for member in self.members if member.role is MemberRole.AUDITOR)

    def member(self, member_id: str) -> Member | None:
        return next((member for member in self.members if member.id == member_id), None)

    def member_with_key(self, public_key: bytes) -> Member | None:
        return next((member for member in self.members if member.public_key == public_key), None)

    def to_dict(self) -> dict[str, Any]:
        value: dict[str, Any] = {
            "format": MANIFEST_FORMAT,
            "training_id": self.training_id,
            "members": [member.to_dict() for member in self.members],
            "protocol": self.protocol.to_dict(),
            "schema": dict(self.schema),
            "plan": dict(self.plan),
        }
        if self.model is not None:
            value["model"] = dict(self.model)
        return value

    def canonical_bytes(self) -> bytes:
        return canonical_json(self.to_dict())

    @classmethod
    def from_dict(cls, value: Any) -> Manifest:
        if not isinstance(value, Mapping):
            raise ManifestError("a manifest is a JSON object")
        if value.get("format") != MANIFEST_FORMAT:
            raise ManifestError(f"not a {MANIFEST_FORMAT} manifest")
        present = set(value)
        missing = _REQUIRED_MEMBERS - present
        unknown = present - _REQUIRED_MEMBERS - _OPTIONAL_MEMBERS
        if missing or unknown:
            raise ManifestError(f"manifest members: missing {sorted(missing)}, unknown {sorted(unknown)}")
        members = value["members"]
        if not isinstance(members, list):
            raise ManifestError("members must be a list")
        return cls(
            training_id=value["training_id"],
            members=tuple(Member.from_dict(member) for member in members),
            protocol=ProtocolRule.from_dict(value["protocol"]),
            schema=value["schema"],
            plan=value["plan"],
            model=value.get("model"),
        )

    def signing_message(self) -> bytes:
        return SIGNATURE_DOMAIN + self.hash

    def sign(self, key: SigningKey) -> bytes:
        """This key's signature of the manifest (the key must be a member's)."""
        if self.member_with_key(key.public_bytes) is None:
            raise ManifestError("this key is not a member's key in the manifest")
        return key.sign(self.signing_message())

    def check_cohort(self, member_ids: Sequence[str], identity_keys: Sequence[bytes]) -> None:
        """Refuse a round whose cohort is not exactly the banks, in roster order, with their keys.

        A key the roster does not hold is named first (:attr:`CohortMismatchReason.KEY_NOT_IN_MANIFEST`):
        it is what a server that invented identities produces.
        """
        roster = {member.public_key: member for member in self.members}
        for index, key in enumerate(identity_keys):
            member = roster.get(bytes(key))
            if member is None or member.role is not MemberRole.BANK:
                raise CohortMismatch(
                    CohortMismatchReason.KEY_NOT_IN_MANIFEST,
                    f"participant {index} of the round has the key {bytes(key).hex()[:16]}…, which is no bank's key in the "
                    f"manifest of {self.training_id}",
                )
        banks = self.banks
        expected_ids = [bank.id for bank in banks]
        expected_keys = [bank.public_key for bank in banks]
        if list(member_ids) != expected_ids or [bytes(key) for key in identity_keys] != expected_keys:
            raise CohortMismatch(
                CohortMismatchReason.COHORT_DIFFERS,
                f"the round's cohort is {list(member_ids)}, the manifest's banks are {expected_ids} (same order, same keys)",
            )

    def check_protocol(
        self, *, mode: ProtocolMode, graph: GraphKind, degree: int | None, threshold: int, cohort_size: int
    ) -> None:
        """Refuse a round whose mode, graph or threshold is not what the manifest's rule gives."""
        rule = self.protocol
        expected = rule.threshold(cohort_size)
        problems = []
        if ProtocolMode(mode) is not rule.mode:
            problems.append(f"mode {ProtocolMode(mode).value}, the manifest says {rule.mode.value}")
        if GraphKind(graph) is not rule.graph or degree != rule.degree:
            problems.append(
                f"graph {GraphKind(graph).value} (degree {degree}), the manifest says {rule.graph.value} ({rule.degree})"
            )
        if threshold != expected:
            problems.append(f"threshold {threshold}, the manifest's rule gives {expected} for {cohort_size}")
        if problems:
            raise CohortMismatch(CohortMismatchReason.PROTOCOL_DIFFERS, "; ".join(problems))


# --------------------------------------------------------------------------- signatures


@dataclass(frozen=True, slots=True)
class ManifestVerification:
    """Whose signatures are missing, do not verify, or come from someone outside the roster."""

    manifest_hash: bytes
    missing: tuple[str, ...]
    invalid: tuple[str, ...]
    unknown: tuple[str, ...]

    @property
    def complete(self) -> bool:
        return not (self.missing or self.invalid or self.unknown)

    def describe(self) -> str:
        parts = []
        if self.missing:
            parts.append(f"not signed by {', '.join(self.missing)}")
        if self.invalid:
            parts.append(f"signatures that do not verify: {', '.join(self.invalid)}")
        if self.unknown:
            parts.append(f"signatures of non-members: {', '.join(self.unknown)}")
        return "; ".join(parts) if parts else "signed by every member"


@dataclass(frozen=True)
class SignedManifest:
    """A manifest and its members' signatures (64-byte Ed25519, keyed by member id)."""

    manifest: Manifest
    signatures: Mapping[str, bytes] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for member_id, signature in self.signatures.items():
            if not isinstance(signature, bytes) or len(signature) != SIGNATURE_BYTES:
                raise ManifestError(f"the signature of {member_id!r} is not {SIGNATURE_BYTES} bytes")
        object.__setattr__(self, "signatures", MappingProxyType(dict(sorted(self.signatures.items()))))

    @property
    def hash(self) -> bytes:
        return self.manifest.hash

    def verify(self) -> ManifestVerification:
        message = self.manifest.signing_message()
        missing, invalid = [], []
        for member in self.manifest.members:
            signature = self.signatures.get(member.id)
            if signature is None:
                missing.append(member.id)
            elif not verify_signature(member.public_key, signature, message):
                invalid.append(member.id)
        roster = {member.id for member in self.manifest.members}
        unknown = sorted(member_id for member_id in self.signatures if member_id not in roster)
        return ManifestVerification(self.hash, tuple(missing), tuple(invalid), tuple(unknown))

    def require_complete(self) -> None:
        """Raise :class:`ManifestError` naming every member whose signature is missing or wrong."""
        verification = self.verify()
        if not verification.complete:
            raise ManifestError(f"the manifest of {self.manifest.training_id} is not complete: {verification.describe()}")

    def with_signature(self, key: SigningKey) -> SignedManifest:
        """This manifest with ``key``'s signature added (or replaced) under its member id."""
        member = self.manifest.member_with_key(key.public_bytes)
        if member is None:
            raise ManifestError("this key is not a member's key in the manifest")
        return SignedManifest(self.manifest, {**self.signatures, member.id: self.manifest.sign(key)})

    def combined(self, others: Iterable[SignedManifest]) -> SignedManifest:
        """The signatures of several copies of the same manifest together; copies must hash alike.

        Ed25519 signatures are deterministic (RFC 8032, section 5.1.6), so two copies that
        differ for one member hold at most one valid signature: that one is kept.
        """
        message = self.manifest.signing_message()
        signatures = dict(self.signatures)
        for other in others:
            if other.hash != self.hash:
                raise ManifestError(
                    f"cannot combine signatures of different manifests ({other.hash.hex()[:16]}… is not {self.hash.hex()[:16]}…)"
                )
            for member_id, signature in other.signatures.items():
                member = self.manifest.member(member_id)
                current = signatures.get(member_id)
                if current is not None and member is not None and verify_signature(member.public_key, current, message):
                    continue
                signatures[member_id] = signature
        return SignedManifest(self.manifest, signatures)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": SIGNED_MANIFEST_FORMAT,
            "manifest": self.manifest.to_dict(),
            "signatures": {member_id: signature.hex() for member_id, signature in self.signatures.items()},
        }

    def to_bytes(self) -> bytes:
        """The file form: indented JSON with sorted keys (for people to read), then a newline."""
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True, ensure_ascii=True, allow_nan=False)
        return (text + "\n").encode("ascii")

    @classmethod
    def from_dict(cls, value: Any) -> SignedManifest:
        if not isinstance(value, Mapping):
            raise ManifestError("a signed manifest is a JSON object")
        if value.get("format") == MANIFEST_FORMAT:
            return cls(Manifest.from_dict(value))  # a bare manifest: no signature yet
        if value.get("format") != SIGNED_MANIFEST_FORMAT or set(value) != {"format", "manifest", "signatures"}:
            raise ManifestError(f"not a {SIGNED_MANIFEST_FORMAT} file (format, manifest, signatures)")
        raw = value["signatures"]
        if not isinstance(raw, Mapping):
            raise ManifestError("signatures must map member ids to hex signatures")
        signatures: dict[str, bytes] = {}
        for member_id, signature in raw.items():
            if not isinstance(signature, str) or not _HEX_SIGNATURE.fullmatch(signature):
                raise ManifestError(f"the signature of {member_id!r} is not 128 lowercase hex digits")
            signatures[str(member_id)] = bytes.fromhex(signature)
        return cls(Manifest.from_dict(value["manifest"]), signatures)

    @classmethod
    def from_bytes(cls, data: bytes) -> SignedManifest:
        return cls.from_dict(parse_json(data))


def parse_manifest_hash(text: str) -> bytes:
    """A manifest hash written as 64 hex digits (either case)."""
    try:
        value = bytes.fromhex(text.strip())
    except ValueError:
        raise ManifestError(f"{text!r} is not a hex manifest hash") from None
    if len(value) != MANIFEST_HASH_BYTES:
        raise ManifestError(f"a manifest hash is {MANIFEST_HASH_BYTES} bytes, got {len(value)}")
    return value


__all__ = [
    "MANIFEST_FORMAT",
    "SIGNATURE_DOMAIN",
    "SIGNED_MANIFEST_FORMAT",
    "CohortMismatch",
    "CohortMismatchReason",
    "Manifest",
    "ManifestError",
    "ManifestVerification",
    "Member",
    "MemberRole",
    "ProtocolRule",
    "SignedManifest",
    "canonical_json",
    "parse_json",
    "parse_manifest_hash",
]
