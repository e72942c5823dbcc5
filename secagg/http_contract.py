"""Signed participant requests: the canonical string, the signer and the verifier.

Every participant request to the aggregation server carries four headers
(``docs/API.md``, section "Participant authentication"):

=========================  ===============================================================
``X-Secagg-Key-Id``        the participant's enrolled id (e.g. ``bank-a``)
``X-Secagg-Timestamp``     Unix time in whole seconds, decimal
``X-Secagg-Nonce``         128 random bits, 32 lowercase hex digits, never reused
``X-Secagg-Signature``     standard base64 of the Ed25519 signature (RFC 8032) over the
                           canonical request below
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

This module is pure (hashlib, base64 and :mod:`secagg.hazmat.keys`): the client
library imports it, and nothing here reads a clock or draws randomness. The caller
passes ``now`` and ``nonce`` (use ``secrets.token_hex(16)`` or a
:class:`~secagg.hazmat.randomness.RandomSource`).
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

from secagg.hazmat.keys import SIGNATURE_BYTES, SigningKey, verify_signature

REQUEST_SIGNATURE_LABEL = "secagg-request-v1"
"""Domain separator, the first line of every canonical request."""

KEY_ID_HEADER = "X-Secagg-Key-Id"
TIMESTAMP_HEADER = "X-Secagg-Timestamp"
NONCE_HEADER = "X-Secagg-Nonce"
SIGNATURE_HEADER = "X-Secagg-Signature"
SIGNED_HEADERS = (KEY_ID_HEADER, TIMESTAMP_HEADER, NONCE_HEADER, SIGNATURE_HEADER)

NONCE_BYTES = 16
"""128-bit nonces: a collision among 2^32 requests of one key has probability < 2^-64."""

DEFAULT_MAX_SKEW_SECONDS = 120
"""Requests whose timestamp is further than this from the server's clock are refused."""

KEY_ID_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
"""Participant ids: lower-case letters, digits, ``.``, ``_``, ``-``; 1..63 characters."""

_NONCE_PATTERN = re.compile(r"^[0-9a-f]{32}$")
_TIMESTAMP_PATTERN = re.compile(r"^[0-9]{1,12}$")
_METHOD_PATTERN = re.compile(r"^[A-Z]{1,16}$")


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
    if not re.fullmatch(r"[0-9a-f]{64}", body_sha256):
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
) -> dict[str, str]:
    """The four signing headers for one request.

    ``now`` is the current Unix time in seconds; ``nonce`` is 32 lowercase hex digits
    drawn fresh from a CSPRNG for every request (never reuse one, even on retry).
    """
    message = canonical_request(
        method, path_with_query, key_id=key_id, timestamp=int(now), nonce=nonce, body_sha256=body_digest(body)
    )
    return {
        KEY_ID_HEADER: key_id,
        TIMESTAMP_HEADER: str(int(now)),
        NONCE_HEADER: nonce,
        SIGNATURE_HEADER: base64.b64encode(signing_key.sign(message)).decode("ascii"),
    }


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
