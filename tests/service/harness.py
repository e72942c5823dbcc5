"""Test harness for the service: a real server subprocess and signed-request helpers.

The server is :class:`clients.harness.local_server.LocalServer` (``python -m service``
under uvicorn on a free loopback port), so a test can SIGKILL it at any moment and start
it again on the same database. Clients
are the core's :class:`~secagg.client.ClientSession` objects driven over HTTP with a
small signed-request helper (the bank client library is tested separately).
"""

from __future__ import annotations

import base64
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np

from clients.harness.local_server import LocalServer
from secagg.client import ClientSession
from secagg.config import GraphKind, ProtocolMode, RoundConfig
from secagg.errors import ProtocolAbort
from secagg.hazmat.keys import SigningKey
from secagg.hazmat.randomness import DeterministicRandom
from secagg.http_contract import sign_request
from secagg.messages import encode

ServerProcess = LocalServer
"""The service tests run the same server harness as the demo and the simulations."""


@dataclass(frozen=True)
class Party:
    participant_id: str
    key: SigningKey
    role: str = "bank"


class Api:
    """HTTP helpers: admin calls with the bearer token, participant calls signed."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.http = httpx.Client(base_url=server.base_url, timeout=60.0)

    def close(self) -> None:
        self.http.close()

    def admin(self, method: str, path: str, json: Any = None, *, token: str | None = None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.server.admin_token if token is None else token}"}
        return self.http.request(method, path, json=json, headers=headers)

    def signed(
        self,
        party: Party,
        method: str,
        path: str,
        body: bytes = b"",
        *,
        content_type: str | None = "application/octet-stream",
        headers: dict[str, str] | None = None,
        now: int | None = None,
        nonce: str | None = None,
    ) -> httpx.Response:
        signing = sign_request(
            party.key,
            method,
            path,
            body,
            key_id=party.participant_id,
            now=int(time.time()) if now is None else now,
            nonce=secrets.token_hex(16) if nonce is None else nonce,
        )
        all_headers = dict(signing)
        if body and content_type:
            all_headers["Content-Type"] = content_type
        all_headers.update(headers or {})
        return self.http.request(method, path, content=body if body else None, headers=all_headers)

    def enroll(self, party: Party) -> None:
        response = self.admin(
            "POST",
            "/v1/admin/participants",
            {"id": party.participant_id, "public_key": base64.b64encode(party.key.public_bytes).decode(), "role": party.role},
        )
        assert response.status_code == 201, response.text

    def create_round(self, cohort: Iterable[Party], **parameters: Any) -> str:
        body = {"cohort": [party.participant_id for party in cohort], **parameters}
        response = self.admin("POST", "/v1/admin/rounds", body)
        assert response.status_code == 201, response.text
        return response.json()["round_id"]

    def status(self, round_id: str) -> dict[str, Any]:
        response = self.admin("GET", f"/v1/admin/rounds/{round_id}")
        assert response.status_code == 200, response.text
        return response.json()


def make_parties(count: int, *, prefix: str = "bank", seed: int = 0, role: str = "bank") -> list[Party]:
    return [
        Party(f"{prefix}-{index:02d}", SigningKey.generate(DeterministicRandom.from_int(seed * 1000 + index)), role)
        for index in range(count)
    ]


def config_from_parameters(parameters: dict[str, Any]) -> RoundConfig:
    """The client's view of the round, rebuilt from ``GET /v1/rounds/{id}`` as API.md says."""
    config = RoundConfig(
        round_id=bytes.fromhex(parameters["round_id"]),
        identity_keys=tuple(base64.b64decode(member["public_key"]) for member in parameters["cohort"]),
        threshold=parameters["threshold"],
        dim=parameters["dim"],
        bits=parameters["bits"],
        mode=ProtocolMode(parameters["mode"]),
        graph=GraphKind(parameters["graph"]),
        degree=parameters["degree"],
    )
    assert config.digest().hex() == parameters["config_digest"]
    return config


def client_input(index: int, dim: int, bits: int, seed: int = 7) -> np.ndarray:
    """A deterministic pseudo-random input vector of participant ``index``, reduced to Z_2^bits."""
    from secagg.encoding import Ring

    ring = Ring(bits)
    vector = np.empty(dim, dtype=ring.dtype)
    DeterministicRandom.from_int(seed * 100_000 + index).fill(vector)
    return ring.reduce(vector)


STAGE_ROUNDS = {
    "R0-advertise-keys": 0,
    "R1-share-keys": 1,
    "R2-masked-input-collection": 2,
    "R3-consistency-check": 3,
    "R4-unmasking": 4,
}


class RoundDriver:
    """Drives one ClientSession per cohort member through a round over HTTP, stage by stage."""

    def __init__(self, api: Api, parties: list[Party], round_id: str, *, seed: int = 7) -> None:
        self.api = api
        self.parties = parties
        self.round_id = round_id
        self.seed = seed
        parameters = api.signed(parties[0], "GET", f"/v1/rounds/{round_id}").json()
        self.config = config_from_parameters(parameters)
        self.sessions: dict[int, ClientSession] = {}
        self.pending: dict[int, bytes] = {}
        self.client_aborts: dict[int, str] = {}
        for index, party in enumerate(parties):
            vector = client_input(index, self.config.dim, self.config.bits, seed)
            session = ClientSession(
                self.config, index, party.key, vector, source=DeterministicRandom.from_int(seed * 977 + index)
            )
            self.sessions[index] = session
            self.pending[index] = encode(session.start())

    def post(self, index: int, body: bytes | None = None) -> httpx.Response:
        payload = self.pending[index] if body is None else body
        return self.api.signed(self.parties[index], "POST", f"/v1/rounds/{self.round_id}/messages", payload)

    def send(self, indices: Iterable[int]) -> None:
        """POST each listed member's pending message; every one must be accepted."""
        for index in indices:
            response = self.post(index)
            assert response.status_code in (200, 202), (index, response.status_code, response.text)

    def fetch(self, indices: Iterable[int]) -> dict[int, httpx.Response]:
        """GET messages/me for each listed member; feed 200s to the session and keep the reply pending."""
        responses: dict[int, httpx.Response] = {}
        for index in indices:
            response = self.api.signed(self.parties[index], "GET", f"/v1/rounds/{self.round_id}/messages/me")
            responses[index] = response
            if response.status_code == 200:
                try:
                    self.pending[index] = encode(self.sessions[index].receive_bytes(response.content))
                except ProtocolAbort as refusal:
                    self.client_aborts[index] = refusal.reason.value
        return responses

    def wait_for_stage(self, stage: str, *, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            status = self.api.status(self.round_id)
            if status["stage"] == stage:
                return status
            if time.monotonic() > deadline:
                raise AssertionError(f"round stuck in {status['stage']} (waiting for {stage}): {status}")
            time.sleep(0.05)

    def expected_sum(self, survivors: Iterable[int]) -> np.ndarray:
        ring = self.config.ring
        total = ring.zeros(self.config.dim)
        for index in survivors:
            np.add(total, client_input(index, self.config.dim, self.config.bits, self.seed), out=total)
        return ring.reduce(total)

    def result(self, index: int = 0) -> tuple[np.ndarray, list[int]]:
        response = self.api.signed(self.parties[index], "GET", f"/v1/rounds/{self.round_id}/result")
        assert response.status_code == 200, response.text
        survivors = [int(value) for value in response.headers["X-Secagg-Survivors"].split(",") if value]
        return np.frombuffer(response.content, dtype=self.config.ring.dtype), survivors
