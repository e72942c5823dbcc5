"""The round state file: how the client resumes after its own crash.

Invariant: this client never sends two different messages for one protocol round,
and in particular never two different masked inputs for one round (which, with
different masks, could let a server learn about the input).

How (simple and auditable):

* the session's randomness is ``DeterministicRandom(seed)`` (an AES-256-CTR DRBG)
  with a fresh 256-bit seed from the OS CSPRNG; the core draws every secret of the
  round from it in a fixed order, and Ed25519 signatures are deterministic
  (RFC 8032, section 5.1.6), so the same seed, input and server messages regenerate
  byte-identical outgoing messages;
* the state file records the seed, the SHA-256 of the input, every server message
  received so far and the SHA-256 of every message produced, **before** that message
  is sent (write-ahead): after a crash the client rebuilds the session, replays the
  recorded server messages, and checks each regenerated message against its recorded
  hash before sending it again; a mismatch refuses to resume;
* a server message is used only once: once recorded, a later (possibly different)
  copy from the server is never looked at, because the recorded one is replayed;
* the input's hash is checked on resume: a changed input file refuses to resume.

The file holds secrets: the seed regenerates this round's X25519 private keys and the
self-mask seed, so with the masked input it would reveal this bank's input. It is
created with mode 0600, written atomically (temporary file, fsync, rename, directory
fsync; :mod:`dp.atomic_files`), and refused on load if group or others can
read it. When the round ends (completed, aborted by the server, or refused by this
client) the file is atomically replaced by a *tombstone* without the seed or the
messages, recording the outcome and the hashes of what was sent; a tombstone makes
the client refuse to run the same round again. Deleting a tombstone by hand removes
that protection (a new run would draw new keys; an honest server refuses them as a
duplicate submission).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from clients.runtime.errors import ResumeRefused, StateFileError
from dp.atomic_files import NotPrivate, read_private_file, remove_file, write_private_file
from secagg.hazmat.randomness import SEED_BYTES

STATE_FORMAT = "secagg-client-round-state/1"
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class RoundStatus(str, Enum):
    IN_PROGRESS = "in-progress"
    FINISHED = "finished"


def sha256(data: bytes | bytearray | memoryview) -> bytes:
    return hashlib.sha256(data).digest()


@dataclass(slots=True)
class RoundState:
    """Everything needed to regenerate this client's messages for one round.

    ``sent_sha256[k]`` is the hash of this client's message for protocol round k,
    recorded before it was first sent; ``received[k]`` is the server's message that
    answered it. So ``len(sent_sha256)`` is ``len(received)`` or ``len(received) + 1``.
    """

    server: str
    round_id: str
    participant_id: int
    identity_public_key: bytes
    config_digest: bytes
    input_sha256: bytes
    seed: bytes = field(repr=False)
    encoding_seed: bytes = field(repr=False)
    received: list[bytes] = field(default_factory=list, repr=False)
    sent_sha256: list[bytes] = field(default_factory=list)
    status: RoundStatus = RoundStatus.IN_PROGRESS
    outcome: str | None = None

    def to_json(self) -> bytes:
        b64 = lambda data: base64.b64encode(data).decode("ascii")  # noqa: E731
        document = {
            "format": STATE_FORMAT,
            "status": self.status.value,
            "outcome": self.outcome,
            "server": self.server,
            "round_id": self.round_id,
            "participant_id": self.participant_id,
            "identity_public_key": b64(self.identity_public_key),
            "config_digest": self.config_digest.hex(),
            "input_sha256": self.input_sha256.hex(),
            "sent_sha256": [digest.hex() for digest in self.sent_sha256],
        }
        if self.status is RoundStatus.IN_PROGRESS:
            document["secret_seed"] = b64(self.seed)
            document["secret_encoding_seed"] = b64(self.encoding_seed)
            document["received"] = [b64(message) for message in self.received]
        return json.dumps(document, indent=1, sort_keys=True).encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes, origin: Path) -> RoundState:
        try:
            document = json.loads(data)
            if document.get("format") != STATE_FORMAT:
                raise StateFileError(f"{origin} is not a {STATE_FORMAT} file")
            status = RoundStatus(document["status"])
            in_progress = status is RoundStatus.IN_PROGRESS
            state = cls(
                server=str(document["server"]),
                round_id=str(document["round_id"]),
                participant_id=int(document["participant_id"]),
                identity_public_key=base64.b64decode(document["identity_public_key"], validate=True),
                config_digest=bytes.fromhex(document["config_digest"]),
                input_sha256=bytes.fromhex(document["input_sha256"]),
                seed=base64.b64decode(document["secret_seed"], validate=True) if in_progress else b"",
                encoding_seed=base64.b64decode(document["secret_encoding_seed"], validate=True) if in_progress else b"",
                received=[base64.b64decode(m, validate=True) for m in document["received"]] if in_progress else [],
                sent_sha256=[bytes.fromhex(h) for h in document["sent_sha256"]],
                status=status,
                outcome=document.get("outcome"),
            )
        except StateFileError:
            raise
        except (ValueError, KeyError, TypeError) as exc:
            raise StateFileError(f"{origin} is corrupt ({type(exc).__name__}: {exc}); refusing to resume") from None
        if in_progress and (len(state.seed) != SEED_BYTES or len(state.encoding_seed) != SEED_BYTES):
            raise StateFileError(f"{origin} holds a seed of the wrong length; refusing to resume")
        if in_progress and not len(state.received) <= len(state.sent_sha256) <= len(state.received) + 1:
            raise StateFileError(f"{origin} records {len(state.received)} server messages for {len(state.sent_sha256)} sent")
        return state


class StateStore:
    """The directory of round state files (one per round and identity key)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def path_for(self, round_id: str, identity_public_key: bytes) -> Path:
        key_tag = hashlib.sha256(identity_public_key).hexdigest()[:16]
        name = round_id if _SAFE_NAME.fullmatch(round_id) else hashlib.sha256(round_id.encode("utf-8")).hexdigest()[:32]
        return self.directory / f"round-{name}-{key_tag}.state.json"

    def load(self, round_id: str, identity_public_key: bytes) -> RoundState | None:
        path = self.path_for(round_id, identity_public_key)
        try:
            data = read_private_file(path)
        except FileNotFoundError:
            return None
        except NotPrivate as exc:
            raise StateFileError(str(exc)) from None
        except OSError as exc:
            raise StateFileError(f"cannot read state file {path}: {exc.strerror}") from None
        state = RoundState.from_json(data, path)
        if state.round_id != round_id or state.identity_public_key != identity_public_key:
            raise StateFileError(f"{path} belongs to another round or identity; refusing to resume")
        return state

    def save(self, state: RoundState) -> None:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_private_file(self.path_for(state.round_id, state.identity_public_key), state.to_json(), overwrite=True)

    def finish(self, state: RoundState, outcome: str) -> None:
        """Replace the state by a tombstone: no seed, no messages; the outcome and sent hashes stay."""
        state.status = RoundStatus.FINISHED
        state.outcome = outcome
        state.seed = b""
        state.encoding_seed = b""
        state.received = []
        self.save(state)

    def forget(self, round_id: str, identity_public_key: bytes) -> None:
        """Delete a round's state or tombstone (operators only; see the module docstring)."""
        remove_file(self.path_for(round_id, identity_public_key))


def require_resumable(
    state: RoundState,
    *,
    server: str,
    participant_id: int,
    config_digest: bytes,
    input_sha256: bytes,
) -> None:
    """Refuse to resume a finished round, or one whose server, position, parameters or input changed."""
    if state.status is RoundStatus.FINISHED:
        raise ResumeRefused(f"round {state.round_id} already finished for this identity ({state.outcome}); it is never run twice")
    if state.input_sha256 != input_sha256:
        raise ResumeRefused(
            f"the input changed since round {state.round_id} started (SHA-256 {input_sha256.hex()[:16]}..., "
            f"recorded {state.input_sha256.hex()[:16]}...); a second, different masked input is never sent"
        )
    if state.config_digest != config_digest:
        raise ResumeRefused(f"the server now describes round {state.round_id} with different parameters or cohort")
    if state.participant_id != participant_id:
        raise ResumeRefused(f"this client's position in round {state.round_id} changed")
    if state.server != server:
        raise ResumeRefused(f"round {state.round_id} was started against {state.server}, not {server}")
