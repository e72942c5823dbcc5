"""Errors of the protocol core: one base class, reasons as enums.

Two families, following docs/DESIGN.md section 2:

* :class:`ProtocolAbort` – a party refuses to go on. Raised by a session that has
  moved to its terminal *aborted* state; every later input raises
  :class:`SessionAborted`. A client aborts on anything a malicious server could
  use against it (Bonawitz et al. 2017, section 6, "active adversary").
* :class:`MessageRejected` – the server refuses one client message and changes
  nothing: one misbehaving client cannot disturb the round for the others.

Messages never carry secrets, shares or vector contents.
"""

from __future__ import annotations

from enum import Enum


class SecAggError(Exception):
    """Base class of every error raised by :mod:`secagg`."""


class ConfigurationError(SecAggError, ValueError):
    """Round parameters that are invalid or unsafe (e.g. a threshold below the mode's rule)."""


class EncodingError(SecAggError, ValueError):
    """A vector that cannot be encoded into the ring as asked."""


class RingOverflowError(EncodingError):
    """The sum of the configured number of inputs could wrap the ring."""


class MalformedMessage(SecAggError, ValueError):
    """Bytes that do not decode to a well-formed message of this protocol version."""


class AbortReason(str, Enum):
    """Why a session aborted. Stable strings: used in logs, metrics and API errors."""

    TOO_FEW_PARTICIPANTS = "too-few-participants"
    NOT_A_SUBSET = "not-a-subset"
    ALIVE_DEAD_OVERLAP = "alive-dead-overlap"
    INCONSISTENT_DROPOUT_LISTS = "inconsistent-dropout-lists"
    DUPLICATE_PARTICIPANT = "duplicate-participant"
    UNKNOWN_PARTICIPANT = "unknown-participant"
    INVALID_SIGNATURE = "invalid-signature"
    WRONG_SESSION = "wrong-session"
    UNEXPECTED_MESSAGE = "unexpected-message"
    DECRYPTION_FAILED = "decryption-failed"
    PREMATURE_UNMASK_REQUEST = "premature-unmask-request"
    EXCLUDED = "excluded"
    INVALID_PUBLIC_KEY = "invalid-public-key"
    OWN_KEYS_ALTERED = "own-keys-altered"
    DUPLICATE_PUBLIC_KEY = "duplicate-public-key"
    MISSING_SHARES = "missing-shares"
    # Named the owner of a secret that failed its check; INCONSISTENT_SHARES, which names
    # the holders, replaced it. Kept so that reasons recorded earlier still parse.
    CORRUPT_SHARE = "corrupt-share"
    INCONSISTENT_SHARES = "inconsistent-shares"
    MALFORMED_MESSAGE = "malformed-message"
    ABORTED_BY_SERVER = "aborted-by-server"
    SURVIVOR_GRAPH_DISCONNECTED = "survivor-graph-disconnected"


class ProtocolAbort(SecAggError):
    """A session refused to continue; it is now in its terminal aborted state.

    ``participants`` are the participant ids the abort implicates, for callers that name
    them (e.g. the holders whose revealed shares are inconsistent); empty when it names none.
    """

    reason: AbortReason

    def __init__(self, reason: AbortReason, detail: str, *, participants: frozenset[int] = frozenset()) -> None:
        self.reason = reason
        self.detail = detail
        self.participants = frozenset(participants)
        super().__init__(f"{reason.value}: {detail}")


class SessionAborted(SecAggError):
    """Input given to a session that has already aborted."""

    def __init__(self, reason: AbortReason) -> None:
        self.reason = reason
        super().__init__(f"session already aborted ({reason.value})")


class RejectReason(str, Enum):
    """Why the server refused one client message. Stable strings for the HTTP layer."""

    WRONG_STAGE = "wrong-stage"
    WRONG_SESSION = "wrong-session"
    UNKNOWN_SENDER = "unknown-sender"
    NOT_IN_ROUND = "not-in-round"
    DUPLICATE_SUBMISSION = "duplicate-submission"
    INVALID_SIGNATURE = "invalid-signature"
    WRONG_LENGTH = "wrong-length"
    NOT_REDUCED = "not-reduced"
    WRONG_RECIPIENTS = "wrong-recipients"
    INVALID_PUBLIC_KEY = "invalid-public-key"
    DUPLICATE_PUBLIC_KEY = "duplicate-public-key"
    WRONG_SHARES = "wrong-shares"
    MALFORMED = "malformed"


class MessageRejected(SecAggError):
    """The server refused one message; its state is unchanged."""

    def __init__(self, reason: RejectReason, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason.value}: {detail}")
