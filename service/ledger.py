"""The server's round ledger: one signed, hash-chained record per finished round.

The ledger file itself is :class:`dp.audit.round_records.ServerLedger` (JSONL chain, Ed25519
signatures, signed head); this module is the service's seam to it. Writing follows an
outbox pattern, because the ledger is a file and the round's outcome lives in the
database: the transition that finishes a round commits ``ledger_recorded = false``;
afterwards (right away, and again by the background task until it succeeds) the
record is appended and the flag set. :meth:`ServerLedger.append` refuses a round that is
already recorded, so a crash between the append and the flag update leads to one
entry, not two. The writer holds the file's ``flock`` only for the append, so several
server processes on one host can share the ledger; a process that finds it locked
retries later.

The server's ledger key is created once (0600) beside the ledger; its public half is
written next to it as ``<key file>.pub`` (64 hex digits, the form ``secagg audit
--server-public-key`` reads), so an auditor or the demo pins it without the private key.
The dp modules used here are torch-free (``dp.audit``, ``dp.accounting``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dp.atomic_files import write_atomic
from dp.audit.chain import LedgerError, LedgerLocked
from dp.audit.round_records import RoundPrivacy, ServerLedger, ServerRoundRecord, verify_server_ledger
from secagg.hazmat.keys import PRIVATE_KEY_BYTES, SigningKey
from secagg.hazmat.randomness import SystemRandom
from secagg.rounds import STAGE_NAMES

LOGGER = logging.getLogger("secagg.service.ledger")


def public_key_path(key_path: Path) -> Path:
    """Where the public half of the ledger key at ``key_path`` is exported."""
    return key_path.with_name(key_path.name + ".pub")


def load_or_create_signing_key(path: Path) -> SigningKey:
    """The server's Ed25519 ledger key: 32 raw bytes or 64 hex digits; created (0600) if absent.

    The public key is (re)written to :func:`public_key_path` whenever it is missing or differs.
    """
    key = _load_or_create(path)
    exported = public_key_path(path)
    text = key.public_bytes.hex() + "\n"
    try:
        current = exported.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError):
        current = None
    if current != text:
        write_atomic(exported, text.encode("ascii"), mode=0o644)
    return key


def _load_or_create(path: Path) -> SigningKey:
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        private = SystemRandom().random_bytes(PRIVATE_KEY_BYTES)
        try:
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return _load_or_create(path)  # another worker created it first
        with os.fdopen(descriptor, "w", encoding="ascii") as handle:
            handle.write(private.hex() + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        return SigningKey.from_private_bytes(private)
    data = path.read_bytes()
    text = data.strip()
    if len(text) == 2 * PRIVATE_KEY_BYTES:
        try:
            return SigningKey.from_private_bytes(bytes.fromhex(text.decode("ascii")))
        except (ValueError, UnicodeDecodeError):
            pass
    if len(data) == PRIVATE_KEY_BYTES:
        return SigningKey.from_private_bytes(data)
    raise ValueError(f"{path} is not an Ed25519 private key (32 raw bytes or 64 hex digits)")


MAX_POLICY_STEPS = 10**9
"""More steps than any training runs; accounting for more would only cost the server CPU."""
MAX_NOISE_MULTIPLIER = 1e6
MIN_NOISE_MULTIPLIER = 1e-3
"""Below it the RDP bounds overflow and no epsilon is meaningful; above the upper bound the noise drowns any signal."""
MIN_SAMPLE_RATE = 1e-12
MAX_SKELLAM_MAGNITUDE = 2.0**128
"""Skellam sensitivities and variance beyond 2^128 exceed any ring of at most 64 bits many times over."""


def _policy_bounds_problem(parameters: Mapping[str, Any]) -> str | None:
    """Why a parsed mechanism's parameters are outside the sanity bounds (None if within)."""
    steps = parameters.get("steps")
    if isinstance(steps, int) and steps > MAX_POLICY_STEPS:
        return f"steps must be at most {MAX_POLICY_STEPS}"
    noise = parameters.get("noise_multiplier")
    if isinstance(noise, float) and not MIN_NOISE_MULTIPLIER <= noise <= MAX_NOISE_MULTIPLIER:
        return f"noise_multiplier must be in [{MIN_NOISE_MULTIPLIER:g}, {MAX_NOISE_MULTIPLIER:g}]"
    rate = parameters.get("sample_rate")
    if isinstance(rate, float) and rate < MIN_SAMPLE_RATE:
        return f"sample_rate must be in [{MIN_SAMPLE_RATE:g}, 1]"
    for name in ("l1_sensitivity", "l2_sensitivity", "variance"):
        value = parameters.get(name)
        if isinstance(value, float) and value > MAX_SKELLAM_MAGNITUDE:
            return f"{name} must be at most 2^128"
    return None


def validate_privacy_policy(items: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Check each ``{unit, mechanism, parameters}`` item; return them normalised.

    Each item must parse as
    :class:`dp.audit.round_records.RoundPrivacy` (known unit, known mechanism, valid
    parameters) and is normalised through it, so the ledger records exactly what the
    parties' ledgers must match. On top of the mechanisms' own validation (finite,
    positive, 0 < q <= 1, steps >= 1) the parameters must be within sanity bounds
    (:data:`MAX_POLICY_STEPS` and the others above): a round's policy is accounted by the
    server, every bank and the auditor, and a value like 10^30 steps only costs them time.
    Raises ``ValueError`` with a specific message.
    """
    normalised: list[dict[str, Any]] = []
    units: set[str] = set()
    for position, item in enumerate(items):
        if not isinstance(item, Mapping) or set(item) != {"unit", "mechanism", "parameters"}:
            raise ValueError(f"dp_policy.privacy[{position}] must have exactly unit, mechanism, parameters")
        if not isinstance(item["parameters"], Mapping):
            raise ValueError(f"dp_policy.privacy[{position}].parameters must be an object")
        try:
            parsed = RoundPrivacy.from_dict(dict(item))
        except Exception as exc:  # the dp package's validation errors vary by field
            raise ValueError(f"dp_policy.privacy[{position}]: {exc}") from None
        normalised_item = parsed.to_dict()
        out_of_bounds = _policy_bounds_problem(normalised_item["parameters"])
        if out_of_bounds is not None:
            raise ValueError(f"dp_policy.privacy[{position}].parameters: {out_of_bounds}")
        if normalised_item["unit"] in units:
            raise ValueError(f"dp_policy.privacy names the unit {normalised_item['unit']!r} twice")
        units.add(normalised_item["unit"])
        normalised.append(normalised_item)
    return normalised


def round_record(
    *,
    round_id: str,
    cohort: Sequence[str],
    threshold: int,
    mode: str,
    dim: int,
    bits: int,
    privacy: Sequence[Mapping[str, Any]],
    survivors: Mapping[str, Sequence[str]],
    outcome: str,
    abort_reason: str | None,
    training: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The ledger body of one finished round (the fields of ``dp.audit.round_records.ServerRoundRecord``);
    ``training`` only for a round of a consortium's training."""
    return {
        "round": round_id,
        "cohort": list(cohort),
        "threshold": threshold,
        "mode": mode,
        "dim": dim,
        "bits": bits,
        "privacy": [dict(item) for item in privacy],
        "survivors": {stage: list(survivors.get(stage, ())) for stage in STAGE_NAMES},
        "outcome": outcome,
        "abort_reason": abort_reason,
        **({} if training is None else {"training": dict(training)}),
    }


class RoundLedger:
    """Appends round records to the server ledger file; opened per append (short flock)."""

    def __init__(self, path: Path, signing_key: SigningKey, server_id: str) -> None:
        self.path = path
        self._signing_key = signing_key
        self.server_id = server_id

    @property
    def public_key(self) -> bytes:
        return self._signing_key.public_bytes

    def ensure_exists(self) -> None:
        """Create an empty ledger and its signed head if there is none yet."""
        if self.path.exists():
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            ServerLedger.open(self.path, server_id=self.server_id, signing_key=self._signing_key).close()
        except Exception as exc:  # a concurrent worker holding the lock creates it instead
            LOGGER.info("ledger_create_deferred", extra={"event": "ledger_create_deferred", "error": type(exc).__name__})

    def record(self, body: Mapping[str, Any]) -> bool:
        """Append ``body`` unless the round is already recorded. True iff it is in the ledger now."""
        record = ServerRoundRecord.from_dict(body)
        try:
            ledger = ServerLedger.open(self.path, server_id=self.server_id, signing_key=self._signing_key)
        except LedgerLocked:
            return False
        with ledger:
            try:
                ledger.append(record)
            except LedgerError:
                if self.contains(record.round_id):
                    return True  # recorded before a crash that lost the database flag
                raise
        return True

    def contains(self, round_id: str) -> bool:
        """True iff the ledger (verified under the server's key) records ``round_id``."""
        if not self.path.exists():
            return False
        verification = verify_server_ledger(self.path, public_key=self.public_key)
        return any(entry.record.round_id == round_id for entry in verification.entries)

    def read_entries(self) -> bytes:
        return self.path.read_bytes() if self.path.exists() else b""

    def read_head(self) -> bytes | None:
        head = self.path.with_name(self.path.name + ".head")
        return head.read_bytes() if head.exists() else None
