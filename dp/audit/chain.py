"""Signed, hash-chained, append-only JSONL: the storage layer under both ledgers.

Both the parties' privacy ledgers (:mod:`dp.audit.privacy_ledger`) and the aggregation server's
round ledger (:mod:`dp.audit.round_records`) are files of this shape. This module knows
nothing about privacy; it owns the encoding, the chain, the signatures, the signed
head file and durable writes, and reports every defect as a :class:`Finding`.

Canonical encoding (what the hash covers)
-----------------------------------------
``canonical_json(value)`` is the UTF-8 encoding of ``json.dumps(value,
sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)``:

* objects with keys sorted by Unicode code point, no insignificant whitespace;
* strings with every non-ASCII character escaped as ``\\uXXXX`` (so the bytes are ASCII);
* integers in decimal; floats as Python's ``repr`` (the shortest decimal string that
  round-trips to the same IEEE-754 double, e.g. ``1e-05``, ``2.5``); NaN and the
  infinities are refused; ``true``/``false``/``null`` as in JSON.

An entry's ``hash`` is the lowercase hex SHA-256 (FIPS 180-4) of the canonical
encoding of the entry *without* its ``hash`` and ``signature`` members. Its
``signature`` is Ed25519 (RFC 8032) over ``entry_domain || bytes.fromhex(hash)``,
where the domain string names the ledger kind and version, so a signature from one
ledger kind (or from the SecAgg protocol, which signs other messages with the same
identity key) can never be replayed as another. Each entry also carries
``previous_hash``: the previous entry's ``hash``, or 64 zeros for entry 0.

A line on disk is the canonical encoding of the full entry followed by ``\\n``, and the
verifier insists on it byte for byte (so every changed byte is a finding, even one that
keeps the meaning); duplicate keys in a line are refused (two JSON parsers could
disagree on them), as are numbers that overflow a double.

Times are ISO-8601 UTC strings of one fixed width (``YYYY-MM-DDTHH:MM:SS.ffffffZ``),
so they order as strings; the writer never records a time before the previous entry's
(a clock stepped back is clamped), and the verifier flags any decrease.

Durability and torn writes
--------------------------
An append is one ``write`` of the whole line including its final newline, then
``fsync``; only then does :meth:`ChainWriter.append` return. A line that does not end
in a newline is never an entry: the reader reports it as a torn tail. A failed write
is rolled back with ``ftruncate`` to the previous length.

The signed head (the defence against truncation)
------------------------------------------------
A hash chain detects modification, deletion, insertion and reordering *inside* the
file, but not dropping its tail: a prefix of a valid chain is a valid chain. So after
every append the writer atomically replaces ``<ledger>.head`` (temporary file in the
same directory, ``fsync``, ``os.replace``, ``fsync`` of the directory) with a signed
checkpoint naming the number of entries and the last hash. The head is created, for
zero entries, together with the ledger. The verifier compares the two.

Limits, stated plainly: this is tamper *evidence* against everyone who lacks the
owner's private key (a storage fault, an operator, an intruder with disk access). The
owner itself can rewrite its whole ledger and re-sign a matching head; an old but
consistent (ledger, head) pair restored from a backup also verifies. Those are caught
only from outside: by the auditor keeping a head from an earlier audit (an *anchor*,
:func:`check_anchor`; ``secagg audit verify --anchor``), and by the cross-check of every party's ledger against the server's signed round records
(:func:`dp.audit.round_records.cross_check`), which shows any round the party contributed
to but does not account for.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import stat
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum
from pathlib import Path
from types import TracebackType
from typing import Any

from dp.atomic_files import sync_directory, write_atomic
from dp.errors import DPError
from secagg.hazmat.keys import PUBLIC_KEY_BYTES, SIGNATURE_BYTES, SigningKey, verify_signature

GENESIS_HASH = "0" * 64
"""``previous_hash`` of entry 0."""

HEAD_SUFFIX = ".head"
ENVELOPE_FIELDS = frozenset({"format", "index", "time", "public_key", "previous_hash", "hash", "signature"})
_HEX_DIGITS = frozenset("0123456789abcdef")

Clock = Callable[[], datetime]
JsonObject = dict[str, Any]


class LedgerError(DPError):
    """A ledger that cannot be opened or appended to as asked."""


class LedgerCorrupted(LedgerError):
    """A writer refused to append to a ledger that does not verify under its own key."""

    def __init__(self, path: Path, findings: tuple[Finding, ...]) -> None:
        self.path = path
        self.findings = findings
        summary = "; ".join(str(finding) for finding in findings[:5])
        super().__init__(f"{path} does not verify; refusing to append: {summary}")


class LedgerLocked(LedgerError):
    """Another process already holds the ledger open for writing."""


class FindingKind(str, Enum):
    """Why a ledger, or one of its entries, fails verification. Stable strings."""

    MALFORMED_LINE = "malformed-line"
    """Not a JSON object, duplicate keys, or an envelope field missing or of the wrong type."""
    MALFORMED_ENTRY = "malformed-entry"
    """The envelope is fine but the body is not a valid entry of this ledger kind."""
    UNSUPPORTED_FORMAT = "unsupported-format"
    NON_CANONICAL_LINE = "non-canonical-line"
    """The bytes differ from the canonical encoding of what they parse to (an edit that
    keeps the meaning, e.g. ``1e-05`` rewritten as ``1E-05``; the hash would not notice)."""
    TORN_TAIL = "torn-tail"
    """Bytes after the last newline: an interrupted write, never an entry."""
    INDEX_OUT_OF_SEQUENCE = "index-out-of-sequence"
    """Deletion, insertion or reordering of entries."""
    HASH_MISMATCH = "hash-mismatch"
    """The entry's content was modified after it was hashed."""
    BROKEN_CHAIN = "broken-chain"
    """``previous_hash`` is not the previous entry's hash."""
    BAD_SIGNATURE = "bad-signature"
    WRONG_KEY = "wrong-key"
    """The entry declares a key other than the one the auditor pinned."""
    KEY_CHANGED = "key-changed"
    OWNER_CHANGED = "owner-changed"
    TIME_REVERSED = "time-reversed"
    HEAD_MISSING = "head-missing"
    HEAD_MALFORMED = "head-malformed"
    HEAD_BAD_SIGNATURE = "head-bad-signature"
    TRUNCATED = "truncated"
    """Fewer entries than the signed head covers."""
    HEAD_MISMATCH = "head-mismatch"
    """The entry the head points at has a different hash: the ledger was rewritten."""
    HEAD_BEHIND = "head-behind"
    """Entries beyond the last signed head (a crash between append and checkpoint)."""
    ANCHOR_INVALID = "anchor-invalid"
    """A head kept from an earlier audit that is malformed or not signed by the ledger's key."""
    ANCHOR_NOT_EXTENDED = "anchor-not-extended"
    """The ledger no longer contains what an earlier audit saw: rolled back or rewritten."""
    EPSILON_INCREMENT_MISMATCH = "epsilon-increment-mismatch"
    EPSILON_CUMULATIVE_MISMATCH = "epsilon-cumulative-mismatch"
    EPSILON_REFUSAL_MISMATCH = "epsilon-refusal-mismatch"
    OVER_BUDGET = "over-budget"
    """A spend whose recomputed cumulative epsilon exceeds the budget it records."""
    SPEND_MISSING_FOR_ROUND = "spend-missing-for-round"
    """The server's records show the party contributed to a round its ledger does not charge."""
    MECHANISM_DIFFERS_FROM_SERVER = "mechanism-differs-from-server"
    """The party charged a round with other parameters than the server's records give."""


@dataclass(frozen=True, slots=True)
class Finding:
    """One defect. ``index`` is the entry's 0-based position in the file (line index + 1 is
    the line number), or ``None`` for a finding about the ledger as a whole."""

    kind: FindingKind
    index: int | None
    detail: str

    def __str__(self) -> str:
        where = "ledger" if self.index is None else f"entry {self.index}"
        return f"{where}: {self.kind.value}: {self.detail}"

    def to_dict(self) -> JsonObject:
        return {"kind": self.kind.value, "index": self.index, "detail": self.detail}


@dataclass(frozen=True, slots=True)
class ChainFormat:
    """One ledger kind: its format string, owner field and signature domains."""

    name: str
    owner_field: str
    body_fields: frozenset[str]
    entry_domain: bytes
    head_domain: bytes
    optional_body_fields: frozenset[str] = frozenset()
    """Body members an entry may carry in addition to ``body_fields`` (added to the format
    later; an entry without them is exactly an entry of the format's first definition)."""

    @property
    def head_name(self) -> str:
        return f"{self.name}/head"


def canonical_json(value: Any) -> bytes:
    """The canonical encoding defined in the module docstring. Refuses NaN and infinities."""
    try:
        text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    except ValueError as exc:
        raise LedgerError(f"value has no canonical encoding: {exc}") from exc
    return text.encode("ascii")


def entry_hash(entry: Mapping[str, Any]) -> str:
    """Hex SHA-256 of the canonical encoding of ``entry`` without ``hash`` and ``signature``."""
    unsigned = {key: value for key, value in entry.items() if key not in ("hash", "signature")}
    return hashlib.sha256(canonical_json(unsigned)).hexdigest()


def format_time(moment: datetime) -> str:
    """ISO-8601 in UTC with microseconds and a ``Z`` suffix; refuses naive datetimes."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise LedgerError("ledger clocks must return timezone-aware datetimes")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str) -> datetime:
    """Inverse of :func:`format_time`; raises ``ValueError`` on any other shape."""
    moment = datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    if format_time(moment) != text:
        raise ValueError(f"time {text!r} is not in the fixed-width form YYYY-MM-DDTHH:MM:SS.ffffffZ")
    return moment


def utc_now() -> datetime:
    """The default clock."""
    return datetime.now(UTC)


def head_path(ledger_path: Path) -> Path:
    return ledger_path.with_name(ledger_path.name + HEAD_SUFFIX)


def load_public_key(path: Path) -> bytes:
    """A raw 32-byte Ed25519 public key from a file holding it as 64 hex digits, as 32 raw
    bytes, or as a PEM ``PUBLIC KEY`` (SubjectPublicKeyInfo)."""
    data = path.read_bytes()
    stripped = data.strip()
    if stripped.startswith(b"-----BEGIN"):
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_pem_public_key

        try:
            key = load_pem_public_key(stripped)
        except ValueError as exc:
            raise LedgerError(f"{path}: not a PEM public key: {exc}") from exc
        if not isinstance(key, Ed25519PublicKey):
            raise LedgerError(f"{path}: not an Ed25519 public key")
        return key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    if len(data) == PUBLIC_KEY_BYTES:
        return data
    try:
        raw = bytes.fromhex(stripped.decode("ascii"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise LedgerError(f"{path}: expected 64 hex digits, 32 raw bytes or a PEM public key") from exc
    if len(raw) != PUBLIC_KEY_BYTES:
        raise LedgerError(f"{path}: an Ed25519 public key is {PUBLIC_KEY_BYTES} bytes, got {len(raw)}")
    return raw


# --------------------------------------------------------------------------- reading


@dataclass(frozen=True, slots=True)
class HeadRecord:
    """The signed checkpoint beside a ledger."""

    owner: str
    public_key: str
    entries: int
    last_hash: str
    time: str
    signature: str


@dataclass(frozen=True, slots=True)
class ChainRead:
    """Everything :func:`read_chain` learned. ``entries`` holds, by position, each entry
    that parsed as a JSON object with a well-typed envelope (``None`` where it did not)."""

    path: Path
    entries: tuple[JsonObject | None, ...]
    findings: tuple[Finding, ...]
    owner: str | None
    public_key: bytes | None
    key_pinned: bool
    head: HeadRecord | None
    torn_tail_bytes: int
    complete_bytes: int


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> JsonObject:
    result: JsonObject = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:20]!r} overflows a double")
    return value


def _parse_object(text: str) -> JsonObject:
    value = json.loads(text, object_pairs_hook=_reject_duplicate_keys, parse_constant=_reject_constant, parse_float=_finite_float)
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


def _is_hex(value: Any, length: int) -> bool:
    return isinstance(value, str) and len(value) == length and set(value) <= _HEX_DIGITS


def _envelope_problem(entry: JsonObject, fmt: ChainFormat) -> str | None:
    expected = ENVELOPE_FIELDS | {fmt.owner_field} | fmt.body_fields
    missing = expected - entry.keys()
    extra = entry.keys() - expected - fmt.optional_body_fields
    if missing:
        return f"missing fields {sorted(missing)}"
    if extra:
        return f"unexpected fields {sorted(extra)}"
    if not isinstance(entry["format"], str):
        return "format is not a string"
    index = entry["index"]
    if not isinstance(index, int) or isinstance(index, bool) or index < 0:
        return "index is not a non-negative integer"
    if not isinstance(entry["time"], str):
        return "time is not a string"
    if not isinstance(entry[fmt.owner_field], str) or not entry[fmt.owner_field]:
        return f"{fmt.owner_field} is not a non-empty string"
    if not _is_hex(entry["public_key"], 2 * PUBLIC_KEY_BYTES):
        return "public_key is not 64 lowercase hex digits"
    for name in ("previous_hash", "hash"):
        if not _is_hex(entry[name], 64):
            return f"{name} is not 64 lowercase hex digits"
    if not _is_hex(entry["signature"], 2 * SIGNATURE_BYTES):
        return "signature is not 128 lowercase hex digits"
    return None


def _split_lines(data: bytes) -> tuple[list[bytes], int]:
    """Complete (newline-terminated) lines and the number of trailing torn bytes."""
    complete_end = data.rfind(b"\n") + 1
    lines = data[:complete_end].split(b"\n")[:-1] if complete_end else []
    return lines, len(data) - complete_end


def read_chain(path: Path, fmt: ChainFormat, *, public_key: bytes | None = None) -> ChainRead:
    """Read and check a chained ledger: encoding, envelope, index sequence, hashes, chain,
    signatures, key and owner consistency, time order and the signed head.

    With ``public_key`` the signatures are checked against that pinned key; without it,
    against the key the first entry declares (consistency only: whoever wrote the file
    could have declared any key). Never raises on ledger content; I/O errors propagate.
    """
    data = path.read_bytes()
    lines, torn = _split_lines(data)
    findings: list[Finding] = []
    entries: list[JsonObject | None] = []
    owner: str | None = None
    declared_key: bytes | None = None
    previous_hash: str | None = GENESIS_HASH
    previous_time: datetime | None = None
    wrong_key_reported = False

    for position, raw in enumerate(lines):
        try:
            entry = _parse_object(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            findings.append(Finding(FindingKind.MALFORMED_LINE, position, f"line {position + 1} is not a JSON object: {exc}"))
            entries.append(None)
            previous_hash = None
            continue
        problem = _envelope_problem(entry, fmt)
        if problem is not None:
            findings.append(Finding(FindingKind.MALFORMED_LINE, position, problem))
            entries.append(None)
            previous_hash = entry.get("hash") if _is_hex(entry.get("hash"), 64) else None
            continue
        entries.append(entry)

        if raw != canonical_json(entry):
            findings.append(
                Finding(
                    FindingKind.NON_CANONICAL_LINE,
                    position,
                    "the line is not the canonical encoding of its content: it was re-formatted or edited",
                )
            )
        if entry["format"] != fmt.name:
            findings.append(
                Finding(FindingKind.UNSUPPORTED_FORMAT, position, f"format {entry['format']!r}, expected {fmt.name!r}")
            )
        if entry["index"] != position:
            findings.append(
                Finding(
                    FindingKind.INDEX_OUT_OF_SEQUENCE,
                    position,
                    f"entry at position {position} says index {entry['index']}: entries were deleted, inserted or reordered",
                )
            )
        recomputed = entry_hash(entry)
        if recomputed != entry["hash"]:
            findings.append(
                Finding(
                    FindingKind.HASH_MISMATCH, position, "the entry's content does not match its recorded hash: it was modified"
                )
            )
        if previous_hash is not None and entry["previous_hash"] != previous_hash:
            expected = "the genesis value (64 zeros)" if position == 0 else f"entry {position - 1}'s hash"
            findings.append(
                Finding(
                    FindingKind.BROKEN_CHAIN,
                    position,
                    f"previous_hash is not {expected}: an entry before it was removed, added, reordered or rewritten",
                )
            )
        previous_hash = entry["hash"]

        entry_owner = entry[fmt.owner_field]
        entry_key = bytes.fromhex(entry["public_key"])
        if owner is None:
            owner, declared_key = entry_owner, entry_key
        else:
            if entry_owner != owner:
                findings.append(
                    Finding(FindingKind.OWNER_CHANGED, position, f"{fmt.owner_field} {entry_owner!r}, entry 0 says {owner!r}")
                )
            if entry_key != declared_key:
                findings.append(Finding(FindingKind.KEY_CHANGED, position, "declares a different public key than entry 0"))
        if public_key is not None and entry_key != public_key and not wrong_key_reported:
            findings.append(
                Finding(
                    FindingKind.WRONG_KEY,
                    position,
                    f"declares key {entry_key.hex()[:16]}…, the pinned key is {public_key.hex()[:16]}…",
                )
            )
            wrong_key_reported = True
        verifying_key = public_key if public_key is not None else entry_key if declared_key is None else declared_key
        message = fmt.entry_domain + bytes.fromhex(entry["hash"])
        if not verify_signature(verifying_key, bytes.fromhex(entry["signature"]), message):
            key_name = "the pinned key" if public_key is not None else "the key the ledger declares"
            findings.append(Finding(FindingKind.BAD_SIGNATURE, position, f"the signature does not verify under {key_name}"))

        try:
            moment = parse_time(entry["time"])
        except ValueError:
            findings.append(
                Finding(FindingKind.MALFORMED_LINE, position, f"time {entry['time']!r} is not YYYY-MM-DDTHH:MM:SS.ffffffZ")
            )
        else:
            if previous_time is not None and moment < previous_time:
                findings.append(
                    Finding(FindingKind.TIME_REVERSED, position, f"time {entry['time']} is before the previous entry's")
                )
            previous_time = moment

    if torn:
        findings.append(
            Finding(
                FindingKind.TORN_TAIL, None, f"{torn} bytes after the last complete line (an interrupted write; not an entry)"
            )
        )

    head, head_findings = _check_head(path, fmt, entries, public_key if public_key is not None else declared_key, owner)
    findings.extend(head_findings)
    if owner is None and head is not None and not head_findings:
        # An empty ledger names its owner and key only in its signed head.
        owner, declared_key = head.owner, bytes.fromhex(head.public_key)
    return ChainRead(
        path=path,
        entries=tuple(entries),
        findings=tuple(findings),
        owner=owner,
        public_key=public_key if public_key is not None else declared_key,
        key_pinned=public_key is not None,
        head=head,
        torn_tail_bytes=torn,
        complete_bytes=len(data) - torn,
    )


def _head_message(fmt: ChainFormat, head: Mapping[str, Any]) -> bytes:
    unsigned = {key: value for key, value in head.items() if key != "signature"}
    return fmt.head_domain + canonical_json(unsigned)


def _parse_head(path: Path, fmt: ChainFormat) -> tuple[HeadRecord | None, JsonObject | None, str | None]:
    data = path.read_bytes()
    try:
        raw = _parse_object(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        return None, None, f"not a JSON object: {exc}"
    if data != canonical_json(raw) + b"\n":
        return None, raw, "not the canonical encoding of its content: it was re-formatted or edited"
    expected = {"format", fmt.owner_field, "public_key", "entries", "last_hash", "time", "signature"}
    if raw.keys() != expected:
        return None, raw, f"fields {sorted(raw.keys())}, expected {sorted(expected)}"
    entries = raw["entries"]
    if (
        raw["format"] != fmt.head_name
        or not isinstance(raw[fmt.owner_field], str)
        or not _is_hex(raw["public_key"], 2 * PUBLIC_KEY_BYTES)
        or not isinstance(entries, int)
        or isinstance(entries, bool)
        or entries < 0
        or not _is_hex(raw["last_hash"], 64)
        or not isinstance(raw["time"], str)
        or not _is_hex(raw["signature"], 2 * SIGNATURE_BYTES)
    ):
        return None, raw, "a field has the wrong type or value"
    record = HeadRecord(
        owner=raw[fmt.owner_field],
        public_key=raw["public_key"],
        entries=entries,
        last_hash=raw["last_hash"],
        time=raw["time"],
        signature=raw["signature"],
    )
    return record, raw, None


def _check_head(
    path: Path,
    fmt: ChainFormat,
    entries: list[JsonObject | None],
    key: bytes | None,
    owner: str | None,
) -> tuple[HeadRecord | None, list[Finding]]:
    location = head_path(path)
    if not location.exists():
        return None, [Finding(FindingKind.HEAD_MISSING, None, f"no signed head {location.name}: truncation cannot be ruled out")]
    head, raw, problem = _parse_head(location, fmt)
    if head is None or raw is None:
        return None, [Finding(FindingKind.HEAD_MALFORMED, None, f"{location.name}: {problem}")]
    findings: list[Finding] = []
    head_key = bytes.fromhex(head.public_key)
    # With no entries and no pinned key, the head's own key is the only one there is.
    checking_key = key if key is not None else head_key
    if head_key != checking_key or not verify_signature(checking_key, bytes.fromhex(head.signature), _head_message(fmt, raw)):
        findings.append(Finding(FindingKind.HEAD_BAD_SIGNATURE, None, f"{location.name} is not signed by the ledger's key"))
        return head, findings
    if owner is not None and head.owner != owner:
        findings.append(
            Finding(FindingKind.HEAD_BAD_SIGNATURE, None, f"{location.name} names {head.owner!r}, the ledger {owner!r}")
        )
        return head, findings
    count = len(entries)
    if count < head.entries:
        findings.append(
            Finding(
                FindingKind.TRUNCATED,
                count,
                f"the head signed at {head.time} covers {head.entries} entries, the ledger has {count}: "
                f"entries {count}..{head.entries - 1} were removed",
            )
        )
        return head, findings
    if head.entries > 0:
        pointed = entries[head.entries - 1]
        if pointed is None or pointed["hash"] != head.last_hash:
            findings.append(
                Finding(
                    FindingKind.HEAD_MISMATCH,
                    head.entries - 1,
                    f"the head signed at {head.time} records a different hash for this entry: the ledger was rewritten",
                )
            )
    elif head.last_hash != GENESIS_HASH:
        findings.append(Finding(FindingKind.HEAD_MALFORMED, None, "an empty head must record the genesis hash"))
    if count > head.entries:
        findings.append(
            Finding(
                FindingKind.HEAD_BEHIND,
                head.entries,
                f"{count - head.entries} entries after the last signed head (an append interrupted before its checkpoint)",
            )
        )
    return head, findings


def anchor_identity(path: Path) -> tuple[str, str]:
    """(head format, owner) of a head file kept from an earlier audit, to match it to its
    ledger; raises :class:`LedgerError` if it is not a head file."""
    try:
        raw = _parse_object(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise LedgerError(f"{path}: not a ledger head file: {exc}") from exc
    owner = raw.get("party", raw.get("server"))
    if not isinstance(raw.get("format"), str) or not isinstance(owner, str):
        raise LedgerError(f"{path}: not a ledger head file")
    return raw["format"], owner


def declared_owner(path: Path, fmt: ChainFormat) -> str | None:
    """The owner a ledger declares (first entry, else its head), without verifying
    anything: only to pick which pinned key or anchor applies to it."""
    lines, _ = _split_lines(path.read_bytes())
    sources: list[bytes | Path] = [*lines[:1], head_path(path)]
    for source in sources:
        try:
            text = source.read_bytes() if isinstance(source, Path) else source
            owner = _parse_object(text.decode("utf-8")).get(fmt.owner_field)
        except (OSError, UnicodeDecodeError, ValueError):
            continue
        if isinstance(owner, str) and owner:
            return owner
    return None


def check_anchor(read: ChainRead, fmt: ChainFormat, anchor: Path) -> list[Finding]:
    """Compare a ledger with a signed head the auditor kept from an earlier audit (an
    *anchor*): the entry that head pointed at must still be there, unchanged. This is what
    catches a party that rolls back or rewrites its own ledger between audits, which the
    chain and the current head cannot (see the module docstring)."""
    head, raw, problem = _parse_head(anchor, fmt)
    if head is None or raw is None:
        return [Finding(FindingKind.ANCHOR_INVALID, None, f"{anchor.name}: {problem}")]
    key = read.public_key if read.public_key is not None else bytes.fromhex(head.public_key)
    if (
        bytes.fromhex(head.public_key) != key
        or (read.owner is not None and head.owner != read.owner)
        or not verify_signature(key, bytes.fromhex(head.signature), _head_message(fmt, raw))
    ):
        return [Finding(FindingKind.ANCHOR_INVALID, None, f"{anchor.name} is not a head signed by this ledger's key and owner")]
    count = len(read.entries)
    if count < head.entries:
        return [
            Finding(
                FindingKind.ANCHOR_NOT_EXTENDED,
                count,
                f"an earlier audit saw {head.entries} entries (head of {head.time}); the ledger now has {count}: rolled back",
            )
        ]
    if head.entries > 0:
        pointed = read.entries[head.entries - 1]
        if pointed is None or pointed["hash"] != head.last_hash:
            return [
                Finding(
                    FindingKind.ANCHOR_NOT_EXTENDED,
                    head.entries - 1,
                    f"differs from what an earlier audit saw here (head of {head.time}): the ledger was rewritten",
                )
            ]
    return []


# --------------------------------------------------------------------------- writing


def atomic_write(path: Path, content: bytes, *, mode: int = 0o644) -> None:
    """Replace ``path`` with ``content`` atomically and durably (:func:`dp.atomic_files.write_atomic`)."""
    write_atomic(path, content, mode=mode)


_RECOVERABLE = frozenset({FindingKind.TORN_TAIL, FindingKind.HEAD_BEHIND})


@dataclass(slots=True)
class ChainWriter:
    """The single writer of one chained ledger. Holds an exclusive ``flock`` on the file
    for its lifetime; use as a context manager or call :meth:`close`.

    Opening verifies the existing file under the writer's own key and refuses
    (:class:`LedgerCorrupted`) unless the only defects are those a crash can leave: a
    torn last line (dropped: it was never acknowledged) or exactly one entry past the
    head (the head is re-signed).
    """

    path: Path
    fmt: ChainFormat
    owner: str
    signing_key: SigningKey
    clock: Clock
    _descriptor: int
    _entries: list[JsonObject] = field(default_factory=list)
    _size: int = 0

    @classmethod
    def open(cls, path: Path, fmt: ChainFormat, *, owner: str, signing_key: SigningKey, clock: Clock = utc_now) -> ChainWriter:
        import fcntl

        if not owner:
            raise LedgerError(f"{fmt.owner_field} must be a non-empty string")
        path = Path(path)
        if not path.exists() and head_path(path).exists():
            raise LedgerError(
                f"{path} is missing but its signed head {head_path(path).name} exists: the ledger was deleted or moved"
            )
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as exc:
                raise LedgerLocked(f"{path} is open for writing by another process") from exc
            writer = cls(path=path, fmt=fmt, owner=owner, signing_key=signing_key, clock=clock, _descriptor=descriptor)
            # Decided under the lock: another writer may have created the ledger since the check above.
            if os.fstat(descriptor).st_size == 0 and not head_path(path).exists():
                sync_directory(path.parent)
                writer._write_head()
                return writer
            writer._load_existing()
            return writer
        except BaseException:
            os.close(descriptor)
            raise

    def _load_existing(self) -> None:
        read = read_chain(self.path, self.fmt, public_key=self.signing_key.public_bytes)
        fatal = tuple(finding for finding in read.findings if finding.kind not in _RECOVERABLE)
        behind = [finding for finding in read.findings if finding.kind is FindingKind.HEAD_BEHIND]
        if behind and read.head is not None and len(read.entries) - read.head.entries > 1:
            fatal += tuple(behind)
        if fatal:
            raise LedgerCorrupted(self.path, fatal)
        if read.owner is not None and read.owner != self.owner:
            raise LedgerError(f"{self.path} belongs to {read.owner!r}, not {self.owner!r}")
        if read.torn_tail_bytes:
            os.ftruncate(self._descriptor, read.complete_bytes)
            os.fsync(self._descriptor)
        self._entries = [entry for entry in read.entries if entry is not None]
        self._size = read.complete_bytes
        if behind:
            self._write_head()

    @property
    def entries(self) -> tuple[JsonObject, ...]:
        return tuple(self._entries)

    def seal(self, body: Mapping[str, Any]) -> JsonObject:
        """The full signed entry for ``body`` at the next index (not yet written)."""
        if not self.fmt.body_fields <= body.keys() <= self.fmt.body_fields | self.fmt.optional_body_fields:
            raise LedgerError(f"entry body fields {sorted(body.keys())}, expected {sorted(self.fmt.body_fields)}")
        entry: JsonObject = dict(body)
        moment = format_time(self.clock())
        if self._entries and moment < self._entries[-1]["time"]:
            moment = self._entries[-1]["time"]  # a clock stepped back: times never decrease
        entry.update(
            {
                "format": self.fmt.name,
                "index": len(self._entries),
                "time": moment,
                self.fmt.owner_field: self.owner,
                "public_key": self.signing_key.public_bytes.hex(),
                "previous_hash": self._entries[-1]["hash"] if self._entries else GENESIS_HASH,
            }
        )
        entry["hash"] = entry_hash(entry)
        entry["signature"] = self.signing_key.sign(self.fmt.entry_domain + bytes.fromhex(entry["hash"])).hex()
        return entry

    def append(self, body: Mapping[str, Any]) -> JsonObject:
        """Seal, write durably and checkpoint one entry; returns it once it is on disk."""
        if self._descriptor < 0:
            raise LedgerError(f"{self.path} is closed")
        entry = self.seal(body)
        line = canonical_json(entry) + b"\n"
        try:
            written = 0
            while written < len(line):
                written += os.write(self._descriptor, line[written:])
            os.fsync(self._descriptor)
        except BaseException:
            os.ftruncate(self._descriptor, self._size)
            os.fsync(self._descriptor)
            raise
        self._size += len(line)
        self._entries.append(entry)
        self._write_head()
        return entry

    def _write_head(self) -> None:
        head: JsonObject = {
            "format": self.fmt.head_name,
            self.fmt.owner_field: self.owner,
            "public_key": self.signing_key.public_bytes.hex(),
            "entries": len(self._entries),
            "last_hash": self._entries[-1]["hash"] if self._entries else GENESIS_HASH,
            "time": format_time(self.clock()),
        }
        head["signature"] = self.signing_key.sign(_head_message(self.fmt, head)).hex()
        # The head is as readable as the ledger it signs: a ledger kept private (0600) keeps a private head.
        mode = stat.S_IMODE(os.fstat(self._descriptor).st_mode)
        atomic_write(head_path(self.path), canonical_json(head) + b"\n", mode=mode)

    def close(self) -> None:
        if self._descriptor >= 0:
            os.close(self._descriptor)
            self._descriptor = -1

    def __enter__(self) -> ChainWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None) -> None:
        self.close()


def iter_valid(read: ChainRead) -> Iterator[tuple[int, JsonObject]]:
    """(position, entry) for every entry whose envelope parsed."""
    for position, entry in enumerate(read.entries):
        if entry is not None:
            yield position, entry
