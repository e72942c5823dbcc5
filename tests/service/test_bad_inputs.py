"""A catalogue of bad requests: each gets its 4xx and problem type, and changes nothing.

Three rounds are parked with long deadlines, one in each of R0, R1 and R2, with some
members having answered. Every case sends one bad request and then checks that the
round it aimed at has the same stage, the same responders and the same history as
before (the admin status), so a refused request provably left no trace in the round.
"""

from __future__ import annotations

import dataclasses
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
import pytest

from secagg.http_contract import BODY_SHA256_HEADER, body_digest, sign_request
from secagg.messages import (
    AdvertiseKeys,
    KeyList,
    MaskedInput,
    RevealedShare,
    ShareKeys,
    UnmaskingShares,
    decode,
    encode,
)
from secagg.protocol import advertise_statement
from tests.service.harness import Api, InProcessServer, Party, RoundDriver, make_parties

N = 5
DIM = 16
LONG = 3600.0
PREFIX = "urn:secagg:problem:"


@dataclass
class Catalogue:
    api: Api
    rounds: dict[str, RoundDriver]
    outsider: Party
    auditor: Party
    revoked: Party
    stranger: Party

    def path(self, stage: str, suffix: str = "/messages") -> str:
        return f"/v1/rounds/{self.rounds[stage].round_id}{suffix}"

    def member(self, stage: str, index: int) -> Party:
        return self.rounds[stage].parties[index]


def _park(api: Api, seed: int, target: str) -> RoundDriver:
    parties = make_parties(N, prefix=f"cat{seed}", seed=seed)
    for party in parties:
        api.enroll(party)
    round_id = api.create_round(
        parties, threshold=3, mode="honest-but-curious", dim=DIM, bits=32,
        deadlines={"R0": LONG, "R1": LONG, "R2": LONG, "R3": LONG, "R4": LONG},
    )  # fmt: skip
    driver = RoundDriver(api, parties, round_id, seed=seed)
    if target == "R0":
        driver.send([0])
        return driver
    driver.send(range(N))
    driver.expect_stage("R1-share-keys")
    driver.fetch(range(N))
    if target == "R1":
        driver.send([0])
        return driver
    driver.send(range(N))
    driver.expect_stage("R2-masked-input-collection")
    driver.fetch(range(N))
    driver.send([0])
    return driver


@pytest.fixture(scope="module")
def catalogue(shared_server: InProcessServer, shared_api: Api) -> Iterator[Catalogue]:
    api = shared_api
    rounds = {"R0": _park(api, 301, "R0"), "R1": _park(api, 302, "R1"), "R2": _park(api, 303, "R2")}
    outsider, stranger = make_parties(2, prefix="outsider", seed=310)
    api.enroll(outsider)
    (auditor,) = make_parties(1, prefix="auditor", seed=311, role="auditor")
    api.enroll(auditor)
    (revoked,) = make_parties(1, prefix="revoked", seed=312)
    api.enroll(revoked)
    assert api.admin("DELETE", f"/v1/admin/participants/{revoked.participant_id}").status_code == 200
    yield Catalogue(api, rounds, outsider, auditor, revoked, stranger)


def _raw(cat: Catalogue, party: Party, method: str, path: str, body: bytes = b"", **overrides: Any) -> httpx.Response:
    """A signed request with individual signing inputs or headers overridden."""
    now = overrides.pop("now", int(time.time()))
    nonce = overrides.pop("nonce", secrets.token_hex(16))
    signed_body = overrides.pop("signed_body", body)
    signed_path = overrides.pop("signed_path", path)
    signer = overrides.pop("signer", party.key)
    headers = sign_request(signer, method, signed_path, signed_body, key_id=party.participant_id, now=now, nonce=nonce)
    headers["Content-Type"] = overrides.pop("content_type", "application/octet-stream")
    for name in overrides.pop("drop", ()):
        headers.pop(name)
    headers.update(overrides.pop("headers", {}))
    assert not overrides, overrides
    return cat.api.http.request(method, path, content=body or None, headers=headers)


def _admin(cat: Catalogue) -> dict[str, str]:
    return {"Authorization": f"Bearer {cat.api.server.admin_token}"}


def _pending(cat: Catalogue, stage: str, index: int) -> bytes:
    return cat.rounds[stage].pending[index]


def _post(cat: Catalogue, stage: str, index: int, body: bytes, **overrides: Any) -> httpx.Response:
    return _raw(cat, cat.member(stage, index), "POST", cat.path(stage), body, **overrides)


def _masked(cat: Catalogue, index: int) -> MaskedInput:
    return decode(_pending(cat, "R2", index))


def _with_vector(message: MaskedInput, vector: np.ndarray, bits: int | None = None) -> bytes:
    return encode(dataclasses.replace(message, masked_vector=vector, bits=message.bits if bits is None else bits))


def _replayed_nonce(cat: Catalogue) -> httpx.Response:
    nonce = secrets.token_hex(16)
    party = cat.member("R2", 1)
    first = _raw(cat, party, "GET", cat.path("R2", ""), nonce=nonce)
    assert first.status_code == 200
    return _raw(cat, party, "GET", cat.path("R2", ""), nonce=nonce)


def _advertise(cat: Catalogue, index: int, **changes: Any) -> bytes:
    """Member ``index`` of the R0 round advertising altered keys, properly signed unless told otherwise."""
    original: AdvertiseKeys = decode(_pending(cat, "R0", index))
    message = dataclasses.replace(original, **{k: v for k, v in changes.items() if k != "resign"})
    if changes.get("resign", True):
        statement = advertise_statement(
            message.config_digest, message.sender, message.encryption_public_key, message.masking_public_key
        )
        message = dataclasses.replace(message, signature=cat.member("R0", index).key.sign(statement))
    return encode(message)


def _share_keys(cat: Catalogue, index: int, transform: Callable[[ShareKeys], ShareKeys]) -> bytes:
    return encode(transform(decode(_pending(cat, "R1", index))))


def _oversized(cat: Catalogue) -> httpx.Response:
    limit = cat.api.signed(cat.member("R2", 1), "GET", cat.path("R2", "")).json()["max_message_bytes"]
    return _post(cat, "R2", 1, b"\x00" * (limit + 1))


def _admin_round(cat: Catalogue, **body: Any) -> httpx.Response:
    cohort = [party.participant_id for party in cat.rounds["R2"].parties]
    return cat.api.admin("POST", "/v1/admin/rounds", {"cohort": cohort, "threshold": 3, "dim": 8, **body})


CASES: list[tuple[str, str, Callable[[Catalogue], httpx.Response], int, str]] = [
    # --- credentials
    (
        "no signing headers",
        "R2",
        lambda c: c.api.http.post(
            c.path("R2"), content=_pending(c, "R2", 1), headers={"Content-Type": "application/octet-stream"}
        ),
        401,
        "missing-credentials",
    ),
    (
        "nonce header missing",
        "R2",
        lambda c: _post(c, "R2", 1, _pending(c, "R2", 1), drop=["X-Secagg-Nonce"]),
        401,
        "missing-credentials",
    ),
    (
        "timestamp not a number",
        "R2",
        lambda c: _post(c, "R2", 1, _pending(c, "R2", 1), headers={"X-Secagg-Timestamp": "soon"}),
        401,
        "malformed-credentials",
    ),
    (
        "nonce too short",
        "R2",
        lambda c: _post(c, "R2", 1, _pending(c, "R2", 1), headers={"X-Secagg-Nonce": "abcd"}),
        401,
        "malformed-credentials",
    ),
    (
        "signature not base64",
        "R2",
        lambda c: _post(c, "R2", 1, _pending(c, "R2", 1), headers={"X-Secagg-Signature": "***"}),
        401,
        "malformed-credentials",
    ),
    (
        "key id with upper case",
        "R2",
        lambda c: _post(c, "R2", 1, _pending(c, "R2", 1), headers={"X-Secagg-Key-Id": "Bank-A"}),
        401,
        "malformed-credentials",
    ),
    (
        "stale timestamp",
        "R2",
        lambda c: _post(c, "R2", 1, _pending(c, "R2", 1), now=int(time.time()) - 1000),
        401,
        "stale-timestamp",
    ),
    (
        "timestamp in the future",
        "R2",
        lambda c: _post(c, "R2", 1, _pending(c, "R2", 1), now=int(time.time()) + 1000),
        401,
        "stale-timestamp",
    ),
    (
        "unknown participant",
        "R2",
        lambda c: _raw(c, c.stranger, "POST", c.path("R2"), _pending(c, "R2", 1)),
        401,
        "bad-request-signature",
    ),
    ("revoked key", "R2", lambda c: _raw(c, c.revoked, "GET", "/v1/work"), 401, "revoked-key"),
    (
        "signed by another key",
        "R2",
        lambda c: _post(c, "R2", 1, _pending(c, "R2", 1), signer=c.member("R2", 2).key),
        401,
        "bad-request-signature",
    ),
    (
        "body altered after signing",
        "R2",
        lambda c: _post(c, "R2", 1, _pending(c, "R2", 1), signed_body=_pending(c, "R2", 2)),
        400,
        "body-digest-mismatch",
    ),
    (
        "declared body digest altered after signing",
        "R2",
        lambda c: _post(c, "R2", 1, _pending(c, "R2", 1), headers={BODY_SHA256_HEADER: body_digest(_pending(c, "R2", 2))}),
        401,
        "bad-request-signature",
    ),
    (
        "upload without its declared body digest",
        "R2",
        lambda c: _post(c, "R2", 1, _pending(c, "R2", 1), drop=(BODY_SHA256_HEADER,)),
        401,
        "missing-credentials",
    ),
    (
        "malformed declared body digest",
        "R2",
        lambda c: _post(c, "R2", 1, _pending(c, "R2", 1), headers={BODY_SHA256_HEADER: "AB" * 32}),
        401,
        "malformed-credentials",
    ),
    (
        "signature for another path",
        "R2",
        lambda c: _post(c, "R2", 1, _pending(c, "R2", 1), signed_path=c.path("R1")),
        401,
        "bad-request-signature",
    ),
    ("replayed nonce", "R2", _replayed_nonce, 401, "replayed-nonce"),
    # --- roles and membership
    (
        "auditor posting a message",
        "R2",
        lambda c: _raw(c, c.auditor, "POST", c.path("R2"), _pending(c, "R2", 1)),
        403,
        "wrong-role",
    ),
    ("auditor asking for work", "R2", lambda c: _raw(c, c.auditor, "GET", "/v1/work"), 403, "wrong-role"),
    ("bank reading the audit log", "R2", lambda c: _raw(c, c.member("R2", 1), "GET", "/v1/audit/rounds"), 403, "wrong-role"),
    (
        "bank outside the cohort posting",
        "R2",
        lambda c: _raw(c, c.outsider, "POST", c.path("R2"), _pending(c, "R2", 1)),
        403,
        "not-in-cohort",
    ),
    (
        "bank outside the cohort reading parameters",
        "R2",
        lambda c: _raw(c, c.outsider, "GET", c.path("R2", "")),
        403,
        "not-in-cohort",
    ),
    (
        "bank outside the cohort fetching messages",
        "R2",
        lambda c: _raw(c, c.outsider, "GET", c.path("R2", "/messages/me")),
        403,
        "not-in-cohort",
    ),
    ("sender id of another member", "R2", lambda c: _post(c, "R2", 1, _pending(c, "R2", 2)), 403, "sender-mismatch"),
    # --- routing and media
    (
        "unknown round id",
        "R2",
        lambda c: _raw(c, c.member("R2", 1), "POST", f"/v1/rounds/{'ab' * 16}/messages", _pending(c, "R2", 1)),
        404,
        "round-not-found",
    ),
    (
        "malformed round id",
        "R2",
        lambda c: _raw(c, c.member("R2", 1), "POST", "/v1/rounds/not-a-round/messages", _pending(c, "R2", 1)),
        422,
        "validation-error",
    ),
    ("unknown route", "R2", lambda c: c.api.http.get("/v1/nothing-here"), 404, "not-found"),
    (
        "JSON content type for a message",
        "R2",
        lambda c: _post(c, "R2", 1, _pending(c, "R2", 1), content_type="application/json"),
        415,
        "unsupported-media-type",
    ),
    (
        "form content type for a message",
        "R2",
        lambda c: _post(c, "R2", 1, _pending(c, "R2", 1), content_type="application/x-www-form-urlencoded"),
        415,
        "unsupported-media-type",
    ),
    ("body above the round's limit", "R2", _oversized, 413, "payload-too-large"),
    # --- encodings
    ("random bytes", "R2", lambda c: _post(c, "R2", 1, bytes(range(200))), 400, "malformed"),
    ("empty body", "R2", lambda c: _post(c, "R2", 1, b"\x00"), 400, "malformed"),
    ("truncated masked input", "R2", lambda c: _post(c, "R2", 1, _pending(c, "R2", 1)[:-3]), 400, "malformed"),
    (
        "trailing bytes after a masked input",
        "R2",
        lambda c: _post(c, "R2", 1, _pending(c, "R2", 1) + b"\x00\x00\x00\x00"),
        400,
        "malformed",
    ),
    (
        "unsupported protocol version",
        "R2",
        lambda c: _post(c, "R2", 1, _pending(c, "R2", 1)[:3] + b"\x09" + _pending(c, "R2", 1)[4:]),
        400,
        "malformed",
    ),
    (
        "a server message type",
        "R2",
        lambda c: _post(c, "R2", 1, encode(KeyList(config_digest=b"\x00" * 32, entries=()))),
        400,
        "malformed",
    ),
    # --- protocol refusals (the core's RejectReason)
    (
        "masked input one element short",
        "R2",
        lambda c: _post(c, "R2", 1, _with_vector(_masked(c, 1), _masked(c, 1).masked_vector[:-1].copy())),
        422,
        "wrong-length",
    ),
    (
        "masked input in another ring",
        "R2",
        lambda c: _post(c, "R2", 1, _with_vector(_masked(c, 1), _masked(c, 1).masked_vector.astype(np.uint16), bits=16)),
        422,
        "wrong-length",
    ),
    (
        "masked input for another session",
        "R2",
        lambda c: _post(c, "R2", 1, encode(dataclasses.replace(_masked(c, 1), session_id=b"\x07" * 32))),
        422,
        "wrong-session",
    ),
    (
        "different second masked input",
        "R2",
        lambda c: _post(c, "R2", 0, _with_vector(_masked(c, 0), _masked(c, 0).masked_vector ^ np.uint32(1))),
        409,
        "duplicate-submission",
    ),
    (
        "unmasking shares during R2",
        "R2",
        lambda c: _post(
            c,
            "R2",
            1,
            encode(
                UnmaskingShares(
                    session_id=_masked(c, 1).session_id,
                    sender=1,
                    masking_key_shares=(),
                    self_mask_shares=(RevealedShare(owner=0, share=b"\x00" * 33),),
                )
            ),
        ),
        409,
        "wrong-stage",
    ),
    (
        "share keys without one neighbour",
        "R1",
        lambda c: _post(
            c, "R1", 1, _share_keys(c, 1, lambda m: dataclasses.replace(m, encrypted_shares=m.encrypted_shares[:-1]))
        ),
        422,
        "wrong-recipients",
    ),
    (
        "share ciphertext of the wrong size",
        "R1",
        lambda c: _post(
            c,
            "R1",
            1,
            _share_keys(
                c,
                1,
                lambda m: dataclasses.replace(
                    m, encrypted_shares=tuple(dataclasses.replace(e, ciphertext=e.ciphertext[:-1]) for e in m.encrypted_shares)
                ),
            ),
        ),
        422,
        "wrong-length",
    ),
    (
        "masked input during R1",
        "R1",
        lambda c: _post(
            c,
            "R1",
            1,
            encode(MaskedInput(session_id=b"\x00" * 32, sender=1, bits=32, masked_vector=np.zeros(DIM, dtype=np.uint32))),
        ),
        409,
        "wrong-stage",
    ),
    (
        "advertised keys with a bad signature",
        "R0",
        lambda c: _post(c, "R0", 1, _advertise(c, 1, signature=b"\x01" * 64, resign=False)),
        422,
        "invalid-signature",
    ),
    (
        "advertised small-order key",
        "R0",
        lambda c: _post(c, "R0", 1, _advertise(c, 1, masking_public_key=b"\x00" * 32)),
        422,
        "invalid-public-key",
    ),
    (
        "advertised keys already used by another member",
        "R0",
        lambda c: _post(c, "R0", 1, _advertise(c, 1, encryption_public_key=decode(_pending(c, "R0", 0)).encryption_public_key)),
        422,
        "duplicate-public-key",
    ),
    (
        "advertised keys for another round",
        "R0",
        lambda c: _post(c, "R0", 1, _advertise(c, 1, config_digest=b"\x05" * 32)),
        422,
        "wrong-session",
    ),
    (
        "result before the round completed",
        "R2",
        lambda c: _raw(c, c.member("R2", 1), "GET", c.path("R2", "/result")),
        409,
        "result-not-ready",
    ),
    # --- admin
    (
        "unauthenticated admin body above the JSON limit",
        "R2",
        lambda c: _answer_before_the_body(c, "/v1/admin/rounds", declared_length=(5 << 20) + 2),
        401,
        "admin-unauthorized",
    ),
    (
        "unauthenticated malformed admin JSON",
        "R2",
        lambda c: c.api.http.post("/v1/admin/rounds", content=b"{not json", headers={"Content-Type": "application/json"}),
        401,
        "admin-unauthorized",
    ),
    (
        "admin body above the JSON limit",
        "R2",
        lambda c: c.api.http.post(
            "/v1/admin/rounds", content=b"{" + b" " * (5 << 20) + b"}", headers={"Content-Type": "application/json", **_admin(c)}
        ),
        413,
        "payload-too-large",
    ),
    (
        "chunked admin body above the JSON limit",
        "R2",
        lambda c: c.api.http.post(
            "/v1/admin/rounds",
            content=iter([b"{", b" " * (5 << 20), b"}"]),
            headers={"Content-Type": "application/json", **_admin(c)},
        ),
        413,
        "payload-too-large",
    ),
    (
        "malformed admin JSON with the token",
        "R2",
        lambda c: c.api.http.post(
            "/v1/admin/rounds", content=b"{not json", headers={"Content-Type": "application/json", **_admin(c)}
        ),
        422,
        "validation-error",
    ),
    ("admin call without a token", "R2", lambda c: c.api.http.get("/v1/admin/participants"), 401, "admin-unauthorized"),
    (
        "admin call with a wrong token",
        "R2",
        lambda c: c.api.admin("POST", f"/v1/admin/rounds/{c.rounds['R2'].round_id}/abort", {"detail": "x"}, token="x" * 40),
        401,
        "admin-unauthorized",
    ),
    ("round with a threshold below the rule", "R2", lambda c: _admin_round(c, threshold=2), 422, "unsafe-round"),
    (
        "round with an unenrolled member",
        "R2",
        lambda c: c.api.admin("POST", "/v1/admin/rounds", {"cohort": ["nobody-1", "nobody-2"], "threshold": 2, "dim": 8}),
        422,
        "unsafe-round",
    ),
    (
        "round with an auditor in the cohort",
        "R2",
        lambda c: c.api.admin(
            "POST",
            "/v1/admin/rounds",
            {
                "cohort": [c.outsider.participant_id, c.auditor.participant_id],
                "threshold": 2,
                "dim": 8,
                "mode": "honest-but-curious",
            },
        ),
        422,
        "unsafe-round",
    ),
    ("round request with an unknown field", "R2", lambda c: _admin_round(c, colour="blue"), 422, "validation-error"),
    (
        "enrolling an id twice",
        "R2",
        lambda c: c.api.admin(
            "POST", "/v1/admin/participants", {"id": c.outsider.participant_id, "public_key": "A" * 43 + "=", "role": "bank"}
        ),
        409,
        "participant-exists",
    ),
    (
        "enrolling a key that is not base64",
        "R2",
        lambda c: c.api.admin("POST", "/v1/admin/participants", {"id": "fresh-id", "public_key": "*" * 44, "role": "bank"}),
        422,
        "validation-error",
    ),
]


def _state(cat: Catalogue, stage: str) -> dict[str, Any]:
    status = cat.api.status(cat.rounds[stage].round_id)
    return {key: status[key] for key in ("stage", "expected", "responded", "history", "outcome")}


def _answer_before_the_body(catalogue: Catalogue, path: str, *, declared_length: int) -> httpx.Response:
    """POST a request whose head announces ``declared_length`` bytes but whose body is only the first 64 KiB.

    A server that refuses from the headers answers without reading the rest. That it
    answers before the body is read is seen over a real socket in
    ``test_unauthenticated_load.py``; here the app's answer and the unchanged round are.
    """
    headers = {"Content-Type": "application/json", "Content-Length": str(declared_length)}
    return catalogue.api.http.post(path, content=b"{" + b" " * (64 << 10), headers=headers)


@pytest.mark.parametrize(("name", "target", "request_", "status", "problem"), CASES, ids=[case[0] for case in CASES])
def test_bad_request_gets_its_problem_type_and_leaves_the_round_unchanged(
    catalogue: Catalogue, name: str, target: str, request_: Callable[[Catalogue], httpx.Response], status: int, problem: str
) -> None:
    before = _state(catalogue, target)
    response = request_(catalogue)
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["type"] == PREFIX + problem
    assert body["status"] == status
    assert body["title"] and body["detail"]
    assert _state(catalogue, target) == before


def test_catalogue_covers_every_protocol_rejection_reachable_over_http() -> None:
    reachable = {case[4] for case in CASES}
    # not-reduced cannot be sent: the decoder refuses unreduced vectors as malformed;
    # unknown-sender and not-in-round are pre-empted by sender-mismatch and excluded.
    expected = {"wrong-stage", "wrong-session", "duplicate-submission", "invalid-signature", "wrong-length",
                "wrong-recipients", "invalid-public-key", "duplicate-public-key", "malformed"}  # fmt: skip
    assert expected <= reachable
    assert len(CASES) >= 30


def test_identical_resubmission_is_acknowledged_again_without_a_second_entry(catalogue: Catalogue) -> None:
    before = _state(catalogue, "R2")
    response = _post(catalogue, "R2", 0, _pending(catalogue, "R2", 0))
    assert response.status_code == 200
    assert response.json()["status"] == "already-accepted"
    assert _state(catalogue, "R2") == before
