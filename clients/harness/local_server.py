"""A development server on loopback, run as a real subprocess (simulation, benchmark, tests).

:class:`LocalServer` starts ``python -m service --dev`` on a free 127.0.0.1 port with a
fresh data directory (SQLite file, ledger) and an admin token file (mode 0600) in a
temporary directory, waits until ``/readyz`` answers, and stops the process it
started (SIGTERM, then SIGKILL after a grace period) on exit. :class:`AdminClient` is
the thin bearer-token client of the admin API (``docs/API.md`` section 4).
"""

from __future__ import annotations

import base64
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from clients.runtime.errors import ServerRefused, ServerUnavailable
from dp.atomic_files import write_private_file

READY_TIMEOUT_SECONDS = 60.0


def free_loopback_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago (the server binds it next)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass(frozen=True, slots=True)
class ServerHandle:
    base_url: str
    admin_token: str
    data_dir: Path
    log_path: Path


class LocalServer:
    """``with LocalServer() as server: ...`` — a real server subprocess for one run."""

    def __init__(self, *, directory: Path | None = None, extra_env: dict[str, str] | None = None) -> None:
        self._directory = directory
        self._extra_env = dict(extra_env or {})
        self._temporary: tempfile.TemporaryDirectory[str] | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self.handle: ServerHandle | None = None

    def __enter__(self) -> ServerHandle:
        if self._directory is None:
            self._temporary = tempfile.TemporaryDirectory(prefix="secagg-server-")
            root = Path(self._temporary.name)
        else:
            root = self._directory
            root.mkdir(parents=True, exist_ok=True)
        token = secrets.token_urlsafe(32)
        token_path = root / "admin-token"
        write_private_file(token_path, token.encode("ascii"), overwrite=True)
        data_dir = root / "data"
        log_path = root / "server.log"
        self.handle = ServerHandle("", token, data_dir, log_path)
        self.start()
        return self.handle

    def start(self) -> None:
        """Start (or restart, after :meth:`kill`) the server on a fresh port, same data directory."""
        assert self.handle is not None
        root = self.handle.data_dir.parent
        port = free_loopback_port()
        command = [
            sys.executable, "-m", "service",
            "--host", "127.0.0.1", "--port", str(port),
            "--data-dir", str(self.handle.data_dir),
            "--admin-token-file", str(root / "admin-token"),
            "--dev",
        ]  # fmt: skip
        log = open(self.handle.log_path, "ab")
        environment = {**os.environ, **self._extra_env}
        self._process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=environment, start_new_session=True)
        log.close()
        base_url = f"http://127.0.0.1:{port}"
        self.handle = ServerHandle(base_url, self.handle.admin_token, self.handle.data_dir, self.handle.log_path)
        self._wait_ready(base_url)

    def _wait_ready(self, base_url: str) -> None:
        assert self._process is not None and self.handle is not None
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        with httpx.Client(timeout=2.0) as probe:
            while time.monotonic() < deadline:
                if self._process.poll() is not None:
                    raise ServerUnavailable(f"the server exited with code {self._process.returncode}:\n{self.log_tail()}")
                try:
                    if probe.get(base_url + "/readyz").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.1)
        self.stop()
        raise ServerUnavailable(f"the server was not ready within {READY_TIMEOUT_SECONDS:g} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        if self.handle is None or not self.handle.log_path.exists():
            return ""
        return "\n".join(self.handle.log_path.read_text(errors="replace").splitlines()[-lines:])

    def cpu_seconds(self) -> float | None:
        """User plus system CPU time of the server process so far (Linux ``/proc``; None elsewhere)."""
        if self._process is None:
            return None
        try:
            fields = Path(f"/proc/{self._process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        ticks = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / ticks

    def kill(self) -> None:
        """SIGKILL the server process (crash tests); :meth:`start` brings it back on the same data."""
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGKILL)
            self._process.wait(timeout=10)

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout=10)

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
        if self._temporary is not None:
            self._temporary.cleanup()


class AdminClient:
    """The admin API with the bearer token (no retries: the simulation's server is local)."""

    def __init__(self, base_url: str, token: str) -> None:
        self._client = httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {token}"}, timeout=60.0)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> "AdminClient":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _check(self, response: httpx.Response, expected: int) -> Any:
        if response.status_code != expected:
            try:
                body = response.json()
            except ValueError:
                body = {}
            raise ServerRefused(response.status_code, str(body.get("type", "")), str(body.get("detail", response.text[:200])))
        return response.json()

    def enroll(self, participant_id: str, public_key: bytes, *, role: str = "bank") -> Any:
        body = {"id": participant_id, "public_key": base64.b64encode(public_key).decode("ascii"), "role": role}
        return self._check(self._client.post("/v1/admin/participants", json=body), 201)

    def create_round(self, body: dict[str, Any]) -> Any:
        return self._check(self._client.post("/v1/admin/rounds", json=body), 201)

    def round_status(self, round_id: str) -> Any:
        return self._check(self._client.get(f"/v1/admin/rounds/{round_id}"), 200)
