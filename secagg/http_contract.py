"""The HTTP contract of protocol version 1, shared by the server and every client.

One module that both sides import (the server in :mod:`service`, the bank's client in
:mod:`clients`), so that what one side sends and the other checks cannot drift apart.
It is pure: no FastAPI, no HTTP library, no clock, no randomness (the caller passes
``now`` and ``nonce``). ``docs/API.md`` is the prose contract; this module is its code.

Three parts:

1. **Signed participant requests.** Every participant request carries five headers
   (``docs/API.md``, section "Participant authentication"):

   =========================  ===============================================================
   ``X-Secagg-Key-Id``        the participant's enrolled id (e.g. ``bank-a``)
   ``X-Secagg-Timestamp``     Unix time in whole seconds, decimal
   ``X-Secagg-Nonce``         128 random bits, 32 lowercase hex digits, never reused
   ``X-Secagg-Signature``     standard base64 of the Ed25519 signature (RFC 8032) over the
                              canonical request below
   ``X-Secagg-Body-Sha256``   the canonical request's last line, declared up front: required
                              on requests with a body, optional (and then of b"") on others
   =========================  ===============================================================

   The canonical request is the UTF-8 encoding of seven lines joined by ``"\\n"``::

       secagg-request-v1
       <METHOD, upper case>
       <path with query string, exactly as sent, e.g. /v1/rounds/ab12?x=1>
       <key id>
       <timestamp>
       <nonce>
       <lowercase hex SHA-256 (FIPS 180-4) of the body bytes; of b"" when there is none>

   The first line is a domain separator: the identity key also signs protocol messages
   (R0 key advertisements, R3 consistency checks), whose statements start with other
   labels, so a request signature can never be replayed as a protocol signature or vice
   versa. The signature binds the method, the target, the body and the sender; the
   timestamp bounds its lifetime to the server's clock-skew window and the nonce, which
   the server remembers for that window, makes each signature single-use.

   Declaring the body's digest in a header lets the server verify the signature from
   the headers alone, before it reads a byte of the body: an unauthenticated caller can
   make it read nothing. The server then streams the body, hashing as it reads, and
   refuses it without storing anything if the bytes do not match the declared digest
   (``body-digest-mismatch``). The signed bytes are the same seven lines as before the
   header existed; the header only announces the last one.

2. **Problem types** (RFC 9457): one stable ``type`` URI per cause, with its HTTP
   status (:class:`ProblemType`). The core's :class:`~secagg.errors.RejectReason`
   values map one-to-one onto problem types with the same suffix, so a client branches
   on the same strings whether a refusal came from the HTTP layer or from the protocol.

3. **Body limits**, derived from the message codec (:mod:`secagg.messages`): the largest
   client message a round admits (:func:`max_client_message_bytes`), the largest server
   message a client accepts (:func:`max_server_message_bytes`), the largest result
   (:func:`result_bytes`) and the cap on every other body, either way.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum

from secagg.encoding import Ring
from secagg.errors import RejectReason
from secagg.hazmat.keys import PUBLIC_KEY_BYTES, SIGNATURE_BYTES, SigningKey, verify_signature
from secagg.hazmat.shamir import SHARE_BYTES
from secagg.messages import (
    AdvertiseKeys,
    ConsistencyCheck,
    ConsistencyCheckRequest,
    EncryptedShares,
    KeyList,
    MaskedInputRequest,
    RevealedShare,
    ShareKeys,
    SignedSurvivors,
    UnmaskingRequest,
    UnmaskingShares,
    encode,
    masked_input_size,
)
from secagg.protocol import SHARE_CIPHERTEXT_BYTES

REQUEST_SIGNATURE_LABEL = "secagg-request-v1"
"""Domain separator, the first line of every canonical request."""

KEY_ID_HEADER = "X-Secagg-Key-Id"
TIMESTAMP_HEADER = "X-Secagg-Timestamp"
NONCE_HEADER = "X-Secagg-Nonce"
SIGNATURE_HEADER = "X-Secagg-Signature"
BODY_SHA256_HEADER = "X-Secagg-Body-Sha256"
SIGNED_HEADERS = (KEY_ID_HEADER, TIMESTAMP_HEADER, NONCE_HEADER, SIGNATURE_HEADER)
"""The headers every signed request carries; :data:`BODY_SHA256_HEADER` is added by
:func:`sign_request` too, and required by the server on requests with a body."""

EMPTY_BODY_SHA256 = hashlib.sha256(b"").hexdigest()

NONCE_BYTES = 16
"""128-bit nonces: a collision among 2^32 requests of one key has probability < 2^-64."""

DEFAULT_MAX_SKEW_SECONDS = 120
"""Requests whose timestamp is further than this from the server's clock are refused."""

KEY_ID_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
"""Participant ids: lower-case letters, digits, ``.``, ``_``, ``-``; 1..63 characters."""

_NONCE_PATTERN = re.compile(r"^[0-9a-f]{32}$")
_TIMESTAMP_PATTERN = re.compile(r"^[0-9]{1,12}$")
_METHOD_PATTERN = re.compile(r"^[A-Z]{1,16}$")
_DIGEST_PATTERN = re.compile(r"^[0-9a-f]{64}$")


class AuthFailure(str, Enum):
    """Why a request's credentials were refused. Values are the API's problem type suffixes."""

    MISSING_CREDENTIALS = "missing-credentials"
    MALFORMED_CREDENTIALS = "malformed-credentials"
    STALE_TIMESTAMP = "stale-timestamp"
    BAD_REQUEST_SIGNATURE = "bad-request-signature"


class RequestAuthError(ValueError):
    """A request whose signing headers are missing, malformed, stale or do not verify."""

    def __init__(self, failure: AuthFailure, detail: str) -> None:
        self.failure = failure
        self.detail = detail
        super().__init__(f"{failure.value}: {detail}")


@dataclass(frozen=True, slots=True)
class RequestCredentials:
    """The parsed signing headers of one request (not yet verified)."""

    key_id: str
    timestamp: int
    nonce: str
    signature: bytes


def body_digest(body: bytes | bytearray | memoryview) -> str:
    """Lowercase hex SHA-256 of the body."""
    return hashlib.sha256(body).hexdigest()


def canonical_request(method: str, path_with_query: str, *, key_id: str, timestamp: int, nonce: str, body_sha256: str) -> bytes:
    """The exact bytes an Ed25519 request signature covers (see the module docstring)."""
    method = method.upper()
    if not _METHOD_PATTERN.fullmatch(method):
        raise ValueError(f"not an HTTP method: {method!r}")
    if not path_with_query.startswith("/") or "\n" in path_with_query:
        raise ValueError("the path must start with '/' and contain no newline")
    if not KEY_ID_PATTERN.fullmatch(key_id):
        raise ValueError(f"not a participant id: {key_id!r}")
    if not _NONCE_PATTERN.fullmatch(nonce):
        raise ValueError("the nonce must be 32 lowercase hex digits (128 bits)")
    if not 0 <= timestamp < 10**12:
        raise ValueError("the timestamp must be non-negative Unix seconds")
    if not _DIGEST_PATTERN.fullmatch(body_sha256):
        raise ValueError("the body digest must be 64 lowercase hex digits")
    lines = (REQUEST_SIGNATURE_LABEL, method, path_with_query, key_id, str(timestamp), nonce, body_sha256)
    return "\n".join(lines).encode("utf-8")


def sign_request(
    signing_key: SigningKey,
    method: str,
    path_with_query: str,
    body: bytes = b"",
    *,
    key_id: str,
    now: int,
    nonce: str,
    body_sha256: str | None = None,
) -> dict[str, str]:
    """The five signing headers for one request (the four signed ones and the body's digest).

    ``now`` is the current Unix time in seconds; ``nonce`` is 32 lowercase hex digits
    drawn fresh from a CSPRNG for every request (never reuse one, even on retry).
    ``body_sha256`` is the body's digest when the caller has computed it already (a chunk
    whose digest its upload's manifest declares), so a large body is hashed once; a wrong
    one only gets the request refused (the server hashes what it receives).
    """
    digest = body_digest(body) if body_sha256 is None else body_sha256
    message = canonical_request(method, path_with_query, key_id=key_id, timestamp=int(now), nonce=nonce, body_sha256=digest)
    return {
        KEY_ID_HEADER: key_id,
        TIMESTAMP_HEADER: str(int(now)),
        NONCE_HEADER: nonce,
        SIGNATURE_HEADER: base64.b64encode(signing_key.sign(message)).decode("ascii"),
        BODY_SHA256_HEADER: digest,
    }


def declared_body_digest(headers: Mapping[str, str], *, required: bool) -> str:
    """The body digest a request declares in :data:`BODY_SHA256_HEADER` (lowercase hex).

    ``required`` for requests with a body, whose signature the server checks before
    reading it; without a body an absent header means the digest of b"".
    """
    value = headers.get(BODY_SHA256_HEADER)
    if value is None or value == "":
        if required:
            raise RequestAuthError(AuthFailure.MISSING_CREDENTIALS, f"missing header(s): {BODY_SHA256_HEADER}")
        return EMPTY_BODY_SHA256
    if not _DIGEST_PATTERN.fullmatch(value):
        raise RequestAuthError(AuthFailure.MALFORMED_CREDENTIALS, f"{BODY_SHA256_HEADER} is not 64 lowercase hex digits")
    return value


def parse_credentials(headers: Mapping[str, str]) -> RequestCredentials:
    """Read and syntax-check the four signing headers (``headers`` is case-insensitive
    for Starlette and httpx; a plain dict must use the canonical spelling)."""
    values = {name: headers.get(name) for name in SIGNED_HEADERS}
    missing = [name for name, value in values.items() if value is None or value == ""]
    if missing:
        raise RequestAuthError(AuthFailure.MISSING_CREDENTIALS, f"missing header(s): {', '.join(missing)}")
    key_id = str(values[KEY_ID_HEADER])
    timestamp = str(values[TIMESTAMP_HEADER])
    nonce = str(values[NONCE_HEADER])
    signature_text = str(values[SIGNATURE_HEADER])
    if not KEY_ID_PATTERN.fullmatch(key_id):
        raise RequestAuthError(AuthFailure.MALFORMED_CREDENTIALS, f"{KEY_ID_HEADER} is not a participant id")
    if not _TIMESTAMP_PATTERN.fullmatch(timestamp):
        raise RequestAuthError(AuthFailure.MALFORMED_CREDENTIALS, f"{TIMESTAMP_HEADER} is not Unix seconds")
    if not _NONCE_PATTERN.fullmatch(nonce):
        raise RequestAuthError(AuthFailure.MALFORMED_CREDENTIALS, f"{NONCE_HEADER} is not 32 lowercase hex digits")
    try:
        signature = base64.b64decode(signature_text, validate=True)
    except (binascii.Error, ValueError):
        raise RequestAuthError(AuthFailure.MALFORMED_CREDENTIALS, f"{SIGNATURE_HEADER} is not base64") from None
    if len(signature) != SIGNATURE_BYTES:
        raise RequestAuthError(AuthFailure.MALFORMED_CREDENTIALS, f"{SIGNATURE_HEADER} is not a {SIGNATURE_BYTES}-byte signature")
    return RequestCredentials(key_id=key_id, timestamp=int(timestamp), nonce=nonce, signature=signature)


def check_freshness(credentials: RequestCredentials, *, now: float, max_skew_seconds: int = DEFAULT_MAX_SKEW_SECONDS) -> None:
    """Refuse a timestamp further than ``max_skew_seconds`` from ``now`` (either way)."""
    if abs(credentials.timestamp - now) > max_skew_seconds:
        raise RequestAuthError(
            AuthFailure.STALE_TIMESTAMP, f"timestamp is more than {max_skew_seconds} s away from the server's clock"
        )


def verify_request(
    credentials: RequestCredentials,
    public_key: bytes,
    method: str,
    path_with_query: str,
    *,
    body_sha256: str,
) -> None:
    """Check the Ed25519 signature over the canonical request; raise on any mismatch.

    Freshness (:func:`check_freshness`) and nonce replay are checked separately by the
    server, which owns the clock and the nonce store. The failure is deliberately
    opaque: it does not say which signed field differed.
    """
    try:
        message = canonical_request(
            method,
            path_with_query,
            key_id=credentials.key_id,
            timestamp=credentials.timestamp,
            nonce=credentials.nonce,
            body_sha256=body_sha256,
        )
    except ValueError:
        raise RequestAuthError(AuthFailure.BAD_REQUEST_SIGNATURE, "the request signature does not verify") from None
    if not verify_signature(public_key, credentials.signature, message):
        raise RequestAuthError(AuthFailure.BAD_REQUEST_SIGNATURE, "the request signature does not verify")


def constant_time_equal(left: str, right: str) -> bool:
    """Compare two secrets (e.g. bearer tokens) without a timing oracle."""
    return hmac.compare_digest(left.encode("utf-8"), right.encode("utf-8"))


# --------------------------------------------------------------------------- problem types

PROBLEM_TYPE_PREFIX = "urn:secagg:problem:"
PROBLEM_CONTENT_TYPE = "application/problem+json"


class ProblemType(Enum):
    """(suffix, HTTP status, title) of every refusal. The suffixes are part of the API."""

    MISSING_CREDENTIALS = ("missing-credentials", 401, "Missing request credentials")
    MALFORMED_CREDENTIALS = ("malformed-credentials", 401, "Malformed request credentials")
    STALE_TIMESTAMP = ("stale-timestamp", 401, "Request timestamp outside the clock-skew window")
    UNKNOWN_KEY = ("unknown-key", 401, "Unknown participant key")
    """Kept for old clients that branch on it; the server answers an unknown key id
    with ``bad-request-signature``, like a wrong signature of an enrolled one."""
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
    BODY_DIGEST_MISMATCH = ("body-digest-mismatch", 400, "Request body does not match its declared SHA-256")
    BODY_TIMEOUT = ("body-timeout", 408, "Request body not received within the deadline")
    TOO_MANY_REQUESTS = ("too-many-requests", 429, "Too many concurrent requests of this kind")
    OPEN_ROUND_LIMIT = ("open-round-limit", 409, "Too many rounds running")
    CHUNK_MISMATCH = ("chunk-mismatch", 409, "Chunk differs from the digest declared for its slot")
    UPLOAD_NOT_DECLARED = ("upload-not-declared", 409, "No masked-input upload declared")
    UPLOAD_INCOMPLETE = ("upload-incomplete", 409, "Chunks of the declared upload are missing")
    PAYLOAD_TOO_LARGE = ("payload-too-large", 413, "Request body too large")
    UNSUPPORTED_MEDIA_TYPE = ("unsupported-media-type", 415, "Unsupported media type")
    VALIDATION_ERROR = ("validation-error", 422, "Request does not match its schema")
    UNSAFE_ROUND = ("unsafe-round", 422, "Round parameters refused")
    INVALID_MANIFEST = ("invalid-manifest", 422, "Consortium manifest refused")
    TRAINING_EXISTS = ("training-exists", 409, "Another manifest is registered under this training id")
    TRAINING_NOT_FOUND = ("training-not-found", 404, "No such training")
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
        return str(self.value[0])

    @property
    def status(self) -> int:
        return int(self.value[1])

    @property
    def title(self) -> str:
        return str(self.value[2])

    @property
    def uri(self) -> str:
        return PROBLEM_TYPE_PREFIX + self.suffix


PROBLEM_OF_REJECT_REASON: dict[RejectReason, ProblemType] = {
    reason: next(problem for problem in ProblemType if problem.suffix == reason.value) for reason in RejectReason
}
"""Every core rejection has a problem type with the same suffix (checked at import)."""

PROBLEM_OF_SUFFIX: dict[str, ProblemType] = {problem.suffix: problem for problem in ProblemType}

TRANSIENT_STATUSES = frozenset({429, 502, 503, 504})
"""Statuses a client retries (with backoff, honouring ``Retry-After``); every other 4xx is an answer."""


def problem_body(problem: ProblemType, detail: str, **extra: object) -> dict[str, object]:
    """The ``application/problem+json`` body of a refusal."""
    return {"type": problem.uri, "title": problem.title, "status": problem.status, "detail": detail, **extra}


def problem_suffix(problem_type_uri: str) -> str | None:
    """The suffix of a problem ``type`` URI of this API, or None for any other value."""
    if not problem_type_uri.startswith(PROBLEM_TYPE_PREFIX):
        return None
    return problem_type_uri[len(PROBLEM_TYPE_PREFIX) :]


# --------------------------------------------------------------------------- body limits

MAX_OTHER_BODY_BYTES = 4 * 1024 * 1024
"""Every request body other than a protocol message upload (JSON bodies): at most 4 MiB.
A client applies the same cap to every JSON answer (round descriptions, work lists)."""

MAX_PROBLEM_BODY_BYTES = 64 * 1024
"""The largest ``application/problem+json`` body a client reads; a longer one is cut off."""

MAX_LONG_POLL_SECONDS = 30.0
"""The longest the server holds a ``messages/me?wait=S`` or ``result?wait=S`` request."""


def _linear_size(build: object, count: int) -> int:
    """Encoded size of a message with ``count`` list items, from two real encodings.

    Every list in the codec is a u32 count followed by fixed-size items, so the size is
    affine in ``count``: encoding the message with zero and with one item gives both
    coefficients without hand-counting any field.
    """
    assert callable(build)
    empty = len(encode(build(0)))
    return empty + count * (len(encode(build(1))) - empty)


def max_client_message_bytes(participants: int, dim: int, bits: int) -> int:
    """The largest encoding any client message of a round can have: its upload body limit.

    The maximum over the five client messages, each measured with the codec itself:
    AdvertiseKeys and ConsistencyCheck are fixed; ShareKeys carries at most one share
    ciphertext per other member; UnmaskingShares at most one revealed share per member
    (a share of s_sk or of b, never both for one owner); MaskedInput is exact.
    """
    digest = bytes(32)
    advertise = _advertisement()
    consistency = ConsistencyCheck(session_id=digest, sender=0, signature=bytes(SIGNATURE_BYTES))
    share_keys = _linear_size(
        lambda count: ShareKeys(
            session_id=digest,
            sender=0,
            self_mask_commitment=digest,
            encrypted_shares=tuple(
                EncryptedShares(sender=0, recipient=1, ciphertext=bytes(SHARE_CIPHERTEXT_BYTES)) for _ in range(count)
            ),
        ),
        participants,
    )
    unmasking = _linear_size(
        lambda count: UnmaskingShares(
            session_id=digest,
            sender=0,
            masking_key_shares=(),
            self_mask_shares=tuple(RevealedShare(owner=1, share=bytes(SHARE_BYTES)) for _ in range(count)),
        ),
        participants,
    )
    return max(len(encode(advertise)), len(encode(consistency)), share_keys, unmasking, masked_input_size(dim, bits))


def _advertisement() -> AdvertiseKeys:
    return AdvertiseKeys(
        config_digest=bytes(32),
        sender=0,
        encryption_public_key=bytes(PUBLIC_KEY_BYTES),
        masking_public_key=bytes(PUBLIC_KEY_BYTES),
        signature=bytes(SIGNATURE_BYTES),
    )


def max_server_message_bytes(participants: int) -> int:
    """The largest encoding any server message of a round of ``participants`` can have.

    A client reads at most this many bytes of a ``messages/me`` answer and refuses a
    longer one before buffering it. The maximum over the four server messages, each
    measured with the codec with every list at its longest: the key list names at most
    every member; a masked-input request relays at most one ciphertext from every other
    member; U3, the dropped and the R3 signatures are each at most the whole cohort.
    """
    digest = bytes(32)
    key_list = _linear_size(lambda count: KeyList(config_digest=digest, entries=(_advertisement(),) * count), participants)
    masked_input_request = _linear_size(
        lambda count: MaskedInputRequest(
            session_id=digest,
            recipient=0,
            survivors=tuple(range(count)),
            encrypted_shares=tuple(
                EncryptedShares(sender=1, recipient=0, ciphertext=bytes(SHARE_CIPHERTEXT_BYTES)) for _ in range(count)
            ),
        ),
        participants,
    )
    consistency_request = _linear_size(
        lambda count: ConsistencyCheckRequest(session_id=digest, survivors=tuple(range(count))), participants
    )
    unmasking_request = _linear_size(
        lambda count: UnmaskingRequest(
            session_id=digest,
            survivors=tuple(range(count)),
            dropped=tuple(range(count)),
            signatures=tuple(SignedSurvivors(signer=0, signature=bytes(SIGNATURE_BYTES)) for _ in range(count)),
        ),
        participants,
    )
    return max(key_list, masked_input_request, consistency_request, unmasking_request)


def result_bytes(dim: int, bits: int) -> int:
    """The exact size of a round's binary result: ``dim`` elements of the ring's container width."""
    return dim * Ring(bits).element_bytes
