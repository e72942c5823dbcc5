"""The signed-request scheme: canonical string, signing, verification and its refusals."""

from __future__ import annotations

import hashlib

import pytest

from secagg.hazmat.keys import SigningKey
from secagg.hazmat.randomness import DeterministicRandom
from secagg.http_contract import (
    AuthFailure,
    RequestAuthError,
    body_digest,
    canonical_request,
    check_freshness,
    parse_credentials,
    sign_request,
    verify_request,
)

KEY = SigningKey.generate(DeterministicRandom.from_int(900))
NONCE = "0123456789abcdef0123456789abcdef"
PATH = "/v1/rounds/" + "ab" * 16 + "/messages"


def test_canonical_request_is_the_seven_documented_lines() -> None:
    body_hash = hashlib.sha256(b"payload").hexdigest()
    expected = "\n".join(["secagg-request-v1", "POST", PATH, "bank-a", "1700000000", NONCE, body_hash]).encode()
    assert canonical_request("post", PATH, key_id="bank-a", timestamp=1700000000, nonce=NONCE, body_sha256=body_hash) == expected


def test_signed_headers_verify_for_the_same_request() -> None:
    headers = sign_request(KEY, "POST", PATH, b"payload", key_id="bank-a", now=1700000000, nonce=NONCE)
    credentials = parse_credentials(headers)
    verify_request(credentials, KEY.public_bytes, "POST", PATH, body_sha256=body_digest(b"payload"))


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [("GET", PATH, b"payload"), ("POST", PATH + "?x=1", b"payload"), ("POST", PATH, b"payloaD")],
    ids=["other-method", "other-query", "other-body"],
)
def test_any_change_to_a_signed_field_fails_verification(method: str, path: str, body: bytes) -> None:
    credentials = parse_credentials(sign_request(KEY, "POST", PATH, b"payload", key_id="bank-a", now=1700000000, nonce=NONCE))
    with pytest.raises(RequestAuthError) as refused:
        verify_request(credentials, KEY.public_bytes, method, path, body_sha256=body_digest(body))
    assert refused.value.failure is AuthFailure.BAD_REQUEST_SIGNATURE


def test_another_key_id_with_the_same_signature_fails_verification() -> None:
    headers = sign_request(KEY, "GET", "/v1/work", key_id="bank-a", now=1700000000, nonce=NONCE)
    headers["X-Secagg-Key-Id"] = "bank-b"
    with pytest.raises(RequestAuthError):
        verify_request(parse_credentials(headers), KEY.public_bytes, "GET", "/v1/work", body_sha256=body_digest(b""))


@pytest.mark.parametrize(("offset", "fresh"), [(-121, False), (-120, True), (0, True), (120, True), (121, False)])
def test_freshness_window_is_inclusive_at_its_bound(offset: int, fresh: bool) -> None:
    credentials = parse_credentials(sign_request(KEY, "GET", "/v1/work", key_id="bank-a", now=1700000000 + offset, nonce=NONCE))
    if fresh:
        check_freshness(credentials, now=1700000000, max_skew_seconds=120)
    else:
        with pytest.raises(RequestAuthError) as refused:
            check_freshness(credentials, now=1700000000, max_skew_seconds=120)
        assert refused.value.failure is AuthFailure.STALE_TIMESTAMP


@pytest.mark.parametrize(
    ("header", "value", "failure"),
    [
        ("X-Secagg-Signature", "", AuthFailure.MISSING_CREDENTIALS),
        ("X-Secagg-Nonce", "ABCDEF0123456789ABCDEF0123456789", AuthFailure.MALFORMED_CREDENTIALS),
        ("X-Secagg-Timestamp", "-5", AuthFailure.MALFORMED_CREDENTIALS),
        ("X-Secagg-Signature", "AAAA", AuthFailure.MALFORMED_CREDENTIALS),
        ("X-Secagg-Key-Id", "bank a", AuthFailure.MALFORMED_CREDENTIALS),
    ],
)
def test_malformed_headers_are_refused_with_their_reason(header: str, value: str, failure: AuthFailure) -> None:
    headers = sign_request(KEY, "GET", "/v1/work", key_id="bank-a", now=1700000000, nonce=NONCE)
    headers[header] = value
    with pytest.raises(RequestAuthError) as refused:
        parse_credentials(headers)
    assert refused.value.failure is failure
