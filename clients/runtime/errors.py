"""Errors of the bank client: one base class, reasons as enums.

Every refusal the client makes on purpose derives from :class:`ClientError`, so the
command line maps the whole family to exit codes in one place (:class:`ExitCode`)
without also swallowing programming errors. Messages never carry key material,
seeds, shares or vector contents.
"""

from __future__ import annotations

from enum import Enum, IntEnum


class ExitCode(IntEnum):
    """Exit codes of ``secagg client``; stable, documented in ``secagg client --help``."""

    OK = 0
    USAGE = 2
    POLICY_REFUSED = 3
    PROTOCOL_ABORTED = 4
    ROUND_ABORTED_BY_SERVER = 5
    RESUME_REFUSED = 6
    SERVER_REFUSED = 7
    UNAVAILABLE = 8
    KEY_FILE = 9
    EXCLUDED = 10
    TRAINING_INCOMPLETE = 11
    """``secagg train``: the consortium opened no round of the next step within ``--round-timeout``."""


class ClientError(Exception):
    """Base class of every error raised on purpose by :mod:`clients`."""

    exit_code: ExitCode = ExitCode.USAGE


class KeyFileError(ClientError):
    """A key file that cannot be written or read as asked (exists, bad passphrase, wrong type)."""

    exit_code = ExitCode.KEY_FILE


class InputFileError(ClientError, ValueError):
    """An input vector that cannot be used (not a 1-D numeric ``.npy``, wrong length, wrong dtype)."""

    exit_code = ExitCode.USAGE


class PolicyFileError(ClientError, ValueError):
    """A policy file that is malformed, has unknown keys or unsafe values."""

    exit_code = ExitCode.USAGE


class PolicyViolationReason(str, Enum):
    """Why the local policy refused a round. Stable strings: shown to operators and in logs."""

    COHORT_TOO_SMALL = "cohort-too-small"
    THRESHOLD_TOO_LOW = "threshold-too-low"
    MODE_NOT_ALLOWED = "mode-not-allowed"
    GRAPH_NOT_ALLOWED = "graph-not-allowed"
    DIM_TOO_LARGE = "dim-too-large"
    BITS_NOT_ALLOWED = "bits-not-allowed"
    DP_POLICY_REQUIRED = "dp-policy-required"
    DP_NOISE_TOO_LOW = "dp-noise-too-low"
    DP_EPSILON_TOO_HIGH = "dp-epsilon-too-high"
    DP_POLICY_MALFORMED = "dp-policy-malformed"
    SERVER_IDENTITY_MISMATCH = "server-identity-mismatch"
    NOT_IN_COHORT = "not-in-cohort"
    WRONG_POSITION = "wrong-position"
    DIM_MISMATCH = "dim-mismatch"
    ROUND_NOT_OPEN = "round-not-open"
    CONFIG_DIGEST_MISMATCH = "config-digest-mismatch"


class PolicyViolation(ClientError):
    """The round's parameters break the bank's local policy; nothing was sent."""

    exit_code = ExitCode.POLICY_REFUSED

    def __init__(self, reason: PolicyViolationReason, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason.value}: {detail}")


class ResumeRefused(ClientError):
    """The local state file forbids continuing (changed input, other round, finished round, diverging replay)."""

    exit_code = ExitCode.RESUME_REFUSED


class StateFileError(ResumeRefused):
    """A state file that is unreadable, of an unknown format or not private (mode other than 0600)."""


class TransportError(ClientError):
    """Base of the transport's failures."""

    exit_code = ExitCode.UNAVAILABLE


class ServerUnavailable(TransportError):
    """Transient failures (connect errors, 429, 502-504) persisted past the retry budget."""

    exit_code = ExitCode.UNAVAILABLE


class ServerRefused(TransportError):
    """The server refused a request with a 4xx (or answered something the client cannot use).

    ``problem_type`` is the stable ``type`` of the server's ``application/problem+json``
    body when it sent one.
    """

    exit_code = ExitCode.SERVER_REFUSED

    def __init__(self, status: int, problem_type: str, detail: str) -> None:
        self.status = status
        self.problem_type = problem_type
        self.detail = detail
        super().__init__(f"HTTP {status} {problem_type}: {detail}")


class RoundAbortedByServer(ClientError):
    """The server reports that the round aborted (e.g. fewer than t answered)."""

    exit_code = ExitCode.ROUND_ABORTED_BY_SERVER

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"the server aborted the round: {reason}")


class ClientRefusedRound(ClientError):
    """This client's protocol session refused the server's message and aborted (a named core refusal)."""

    exit_code = ExitCode.PROTOCOL_ABORTED

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")


class ExcludedFromRound(ClientError):
    """The server left this client out of the round (it missed a stage's deadline); the round goes on without it."""

    exit_code = ExitCode.EXCLUDED
