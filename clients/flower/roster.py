"""The consortium's roster: which participant ids exist and their Ed25519 identity keys.

Flower names its nodes with numbers the SuperLink assigns at run time; this protocol
names its parties by the identity keys that sign their round keys (Bonawitz et al.
2017, section 6.2: an active adversary is stopped only if the keys a client accepts
are bound to real parties). The roster is that binding, agreed by the consortium out
of band, one copy at the coordinator and one at every bank:

* the coordinator's :class:`~clients.flower.workflow.SecAggWorkflow` admits to a round
  only a node that names a roster participant and presents exactly its key;
* a bank's :class:`~clients.flower.mod.SecAggMod`, given its own copy, refuses a round
  whose cohort holds any (id, key) pair that is not in it, so a coordinator cannot
  fill a round with identities of its own (a Sybil cohort) to isolate one bank.

File format (JSON), unknown keys refused::

    {"format": "secagg-roster/1",
     "participants": {"bank-a": "<64 hex digits of the raw 32-byte public key>", ...}}

The ``.pub`` file that ``secagg client keygen`` writes holds exactly that text: the one
public-key format of this project (``docs/LEDGER.md`` section 8), also the manifest's.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from secagg.hazmat.keys import PUBLIC_KEY_BYTES

ROSTER_FORMAT = "secagg-roster/1"
PARTICIPANT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_PUBLIC_KEY_HEX = re.compile(r"[0-9a-fA-F]{64}")


class RosterError(ValueError):
    """A roster that cannot be used: malformed, a bad id or key, or a key listed twice."""


@dataclass(frozen=True, slots=True)
class Roster:
    """Participant id -> raw Ed25519 public key; ids and keys are each unique."""

    participants: Mapping[str, bytes]

    def __post_init__(self) -> None:
        checked: dict[str, bytes] = {}
        for participant_id, key in dict(self.participants).items():
            if not isinstance(participant_id, str) or not PARTICIPANT_ID.fullmatch(participant_id):
                raise RosterError(f"participant id {participant_id!r} is not 1-64 letters, digits, '.', '_' or '-'")
            if not isinstance(key, bytes) or len(key) != PUBLIC_KEY_BYTES:
                raise RosterError(f"the key of {participant_id} is not a raw {PUBLIC_KEY_BYTES}-byte Ed25519 public key")
            checked[participant_id] = key
        if len(set(checked.values())) != len(checked):
            raise RosterError("two participants share an identity key")
        if not checked:
            raise RosterError("a roster lists at least one participant")
        object.__setattr__(self, "participants", MappingProxyType(checked))

    def __contains__(self, participant_id: object) -> bool:
        return participant_id in self.participants

    def key_of(self, participant_id: str) -> bytes | None:
        return self.participants.get(participant_id)

    def admits(self, participant_id: str, public_key: bytes) -> bool:
        """True iff ``participant_id`` is on the roster with exactly ``public_key``."""
        return self.participants.get(participant_id) == public_key

    @classmethod
    def from_dict(cls, document: Mapping[str, object]) -> Roster:
        if not isinstance(document, Mapping) or set(document) != {"format", "participants"}:
            raise RosterError("a roster is an object with exactly 'format' and 'participants'")
        if document["format"] != ROSTER_FORMAT:
            raise RosterError(f"not a {ROSTER_FORMAT} document")
        raw = document["participants"]
        if not isinstance(raw, Mapping):
            raise RosterError("'participants' maps participant ids to public keys (64 hex digits)")
        keys: dict[str, bytes] = {}
        for participant_id, encoded in raw.items():
            if not isinstance(encoded, str) or not _PUBLIC_KEY_HEX.fullmatch(encoded.strip()):
                raise RosterError(f"the key of {participant_id!r} is not 64 hex digits (the contents of its .pub file)")
            keys[participant_id] = bytes.fromhex(encoded.strip())
        return cls(keys)

    def to_dict(self) -> dict[str, object]:
        return {
            "format": ROSTER_FORMAT,
            "participants": {pid: key.hex() for pid, key in sorted(self.participants.items())},
        }

    @classmethod
    def load(cls, path: Path) -> Roster:
        try:
            document = json.loads(path.read_bytes())
        except OSError as exc:
            raise RosterError(f"cannot read roster {path}: {exc.strerror}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise RosterError(f"roster {path} is not JSON: {exc}") from None
        return cls.from_dict(document)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=1, sort_keys=True) + "\n", encoding="utf-8")
