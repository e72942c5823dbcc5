"""Problem details (RFC 9457): one stable ``type`` URI per cause, never a 5xx for bad input.

Every refusal the service makes is a :class:`ServiceProblem` raised with a
:class:`ProblemType`; the app's exception handlers render it as
``application/problem+json``. The core's :class:`~secagg.errors.RejectReason` values map
one-to-one onto problem types (same suffix), so a client branches on the same strings
whether the refusal came from the HTTP layer or from the protocol.
"""

from __future__ import annotations

from enum import Enum
from typing import Any

from pydantic import BaseModel, ConfigDict

from secagg.errors import RejectReason

PROBLEM_TYPE_PREFIX = "urn:secagg:problem:"
PROBLEM_CONTENT_TYPE = "application/problem+json"


class ProblemType(Enum):
    """(suffix, HTTP status, title) of every refusal. The suffixes are part of the API."""

    MISSING_CREDENTIALS = ("missing-credentials", 401, "Missing request credentials")
    MALFORMED_CREDENTIALS = ("malformed-credentials", 401, "Malformed request credentials")
    STALE_TIMESTAMP = ("stale-timestamp", 401, "Request timestamp outside the clock-skew window")
    UNKNOWN_KEY = ("unknown-key", 401, "Unknown participant key")
    REVOKED_KEY = ("revoked-key", 401, "Participant key revoked")
    BAD_REQUEST_SIGNATURE = ("bad-request-signature", 401, "Request signature does not verify")
    REPLAYED_NONCE = ("replayed-nonce", 401, "Request nonce already used")
    ADMIN_UNAUTHORIZED = ("admin-unauthorized", 401, "Admin token missing or wrong")
    WRONG_ROLE = ("wrong-role", 403, "Endpoint not available to this participant's role")
    NOT_IN_COHORT = ("not-in-cohort", 403, "Not a member of this round's cohort")
    SENDER_MISMATCH = ("sender-mismatch", 403, "Message sender is not the authenticated participant")
    ROUND_NOT_FOUND = ("round-not-found", 404, "No such round")
    PARTICIPANT_NOT_FOUND = ("participant-not-found", 404, "No such participant")
    NOT_FOUND = ("not-found", 404, "Not found")
    METHOD_NOT_ALLOWED = ("method-not-allowed", 405, "Method not allowed")
    PARTICIPANT_EXISTS = ("participant-exists", 409, "Participant id or key already enrolled")
    EXCLUDED = ("excluded", 409, "Excluded from the round's current stage")
    ROUND_COMPLETED = ("round-completed", 409, "The round has completed")
    RESULT_NOT_READY = ("result-not-ready", 409, "The round has not completed yet")
    ROUND_FINISHED = ("round-finished", 409, "The round is already over")
    ROUND_ABORTED = ("round-aborted", 410, "The round aborted")
    INCOMPLETE_BODY = ("incomplete-body", 400, "Request body ended early")
    PAYLOAD_TOO_LARGE = ("payload-too-large", 413, "Request body too large")
    UNSUPPORTED_MEDIA_TYPE = ("unsupported-media-type", 415, "Unsupported media type")
    VALIDATION_ERROR = ("validation-error", 422, "Request does not match its schema")
    UNSAFE_ROUND = ("unsafe-round", 422, "Round parameters refused")
    SERVICE_UNAVAILABLE = ("service-unavailable", 503, "Service unavailable")
    # The core's RejectReason values (secagg.errors), one each.
    MALFORMED = ("malformed", 400, "Malformed protocol message")
    WRONG_STAGE = ("wrong-stage", 409, "Message for another stage")
    DUPLICATE_SUBMISSION = ("duplicate-submission", 409, "Stage already answered with another message")
    NOT_IN_ROUND = ("not-in-round", 409, "Not expected in this stage")
    UNKNOWN_SENDER = ("unknown-sender", 403, "Sender outside the cohort")
    WRONG_SESSION = ("wrong-session", 422, "Message bound to another round or session")
    INVALID_SIGNATURE = ("invalid-signature", 422, "Protocol signature does not verify")
    WRONG_LENGTH = ("wrong-length", 422, "Wrong vector or ciphertext length")
    NOT_REDUCED = ("not-reduced", 422, "Vector elements outside the ring")
    WRONG_RECIPIENTS = ("wrong-recipients", 422, "Ciphertexts not addressed to exactly the neighbours")
    INVALID_PUBLIC_KEY = ("invalid-public-key", 422, "Malformed or small-order public key")
    DUPLICATE_PUBLIC_KEY = ("duplicate-public-key", 422, "Public key already in use in this round")
    WRONG_SHARES = ("wrong-shares", 422, "Shares do not cover exactly the right owners")

    @property
    def suffix(self) -> str:
        return self.value[0]

    @property
    def status(self) -> int:
        return self.value[1]

    @property
    def title(self) -> str:
        return self.value[2]

    @property
    def uri(self) -> str:
        return PROBLEM_TYPE_PREFIX + self.suffix


PROBLEM_OF_REJECT_REASON: dict[RejectReason, ProblemType] = {
    reason: next(problem for problem in ProblemType if problem.suffix == reason.value) for reason in RejectReason
}
"""Every core rejection has a problem type with the same suffix (checked at import)."""

PROBLEM_OF_SUFFIX: dict[str, ProblemType] = {problem.suffix: problem for problem in ProblemType}


class ServiceProblem(Exception):
    """A refusal with a stable problem type; rendered by the app's exception handler."""

    def __init__(
        self,
        problem: ProblemType,
        detail: str,
        *,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        self.problem = problem
        self.detail = detail
        self.headers = headers or {}
        self.extra = extra or {}
        super().__init__(f"{problem.suffix}: {detail}")

    def body(self) -> dict[str, Any]:
        return problem_body(self.problem, self.detail, **self.extra)


def problem_body(problem: ProblemType, detail: str, **extra: Any) -> dict[str, Any]:
    return {"type": problem.uri, "title": problem.title, "status": problem.status, "detail": detail, **extra}


class Problem(BaseModel):
    """The OpenAPI schema of an ``application/problem+json`` body."""

    model_config = ConfigDict(extra="allow")

    type: str
    title: str
    status: int
    detail: str


def problem_responses(*problems: ProblemType) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for the given problems, grouped by status."""
    by_status: dict[int, list[str]] = {}
    for problem in problems:
        by_status.setdefault(problem.status, []).append(problem.suffix)
    return {
        status: {
            "model": Problem,
            "description": "Problem types: " + ", ".join(sorted(suffixes)),
            "content": {PROBLEM_CONTENT_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}},
        }
        for status, suffixes in sorted(by_status.items())
    }
