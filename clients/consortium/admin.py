"""The admin API of the aggregation server (``docs/API.md`` section 4), with the bearer token.

The coordinator's only way to the server: enrolment, trainings, rounds. Connection errors
and 502/503/504 are retried for ``unavailable_timeout`` seconds (a server that is starting
or restarting); every other refusal raises :class:`~clients.runtime.errors.ServerRefused`
with the problem type the server gave.
"""

from __future__ import annotations

import base64
import time
from pathlib import Path
from typing import Any

import httpx

from clients.runtime.errors import ServerRefused, ServerUnavailable

RETRIED_STATUSES = frozenset({502, 503, 504})


def read_admin_token(path: Path) -> str:
    """The bearer token from the server's admin token file (surrounding whitespace removed)."""
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ServerRefused(0, "admin-token-file", f"cannot read the admin token file {path}: {exc.strerror}") from None
    if not token:
        raise ServerRefused(0, "admin-token-file", f"the admin token file {path} is empty")
    return token


class AdminClient:
    """The admin API with the bearer token."""

    def __init__(
        self, base_url: str, token: str, *, verify: bool | str = True, unavailable_timeout: float = 0.0, timeout: float = 60.0
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._client = httpx.Client(
            base_url=self.base_url, headers={"Authorization": f"Bearer {token}"}, timeout=timeout, verify=verify
        )
        self._unavailable_timeout = unavailable_timeout

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _request(self, method: str, path: str, **arguments: Any) -> httpx.Response:
        deadline = time.monotonic() + self._unavailable_timeout
        delay = 0.1
        while True:
            try:
                response = self._client.request(method, path, **arguments)
                if response.status_code not in RETRIED_STATUSES:
                    return response
                failure = f"HTTP {response.status_code}"
            except httpx.TransportError as exc:
                failure = f"{type(exc).__name__}: {exc}"
            if time.monotonic() >= deadline:
                raise ServerUnavailable(f"{method} {self.base_url}{path}: {failure}")
            time.sleep(delay)
            delay = min(delay * 2, 2.0)

    @staticmethod
    def _check(response: httpx.Response, *expected: int) -> Any:
        if response.status_code not in expected:
            try:
                body = response.json()
            except ValueError:
                body = {}
            if not isinstance(body, dict):
                body = {}
            problem = str(body.get("type", "")).rsplit(":", 1)[-1]
            raise ServerRefused(response.status_code, problem, str(body.get("detail", response.text[:200])))
        return response.json()

    def ready(self) -> bool:
        try:
            return self._client.get("/readyz").status_code == 200
        except httpx.TransportError:
            return False

    def enroll(self, participant_id: str, public_key: bytes, *, role: str = "bank") -> Any:
        body = {"id": participant_id, "public_key": base64.b64encode(public_key).decode("ascii"), "role": role}
        return self._check(self._request("POST", "/v1/admin/participants", json=body), 201)

    def participants(self) -> list[dict[str, Any]]:
        return list(self._check(self._request("GET", "/v1/admin/participants"), 200)["participants"])

    def register_training(self, signed_manifest: dict[str, Any]) -> Any:
        return self._check(self._request("POST", "/v1/admin/trainings", json=signed_manifest), 200, 201)

    def training(self, training_id: str) -> Any:
        return self._check(self._request("GET", f"/v1/admin/trainings/{training_id}"), 200)

    def create_round(self, body: dict[str, Any]) -> Any:
        return self._check(self._request("POST", "/v1/admin/rounds", json=body), 201)

    def round_status(self, round_id: str) -> Any:
        return self._check(self._request("GET", f"/v1/admin/rounds/{round_id}"), 200)

    def abort(self, round_id: str, detail: str) -> Any:
        return self._check(self._request("POST", f"/v1/admin/rounds/{round_id}/abort", json={"detail": detail}), 200, 409)
