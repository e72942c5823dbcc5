"""A real aggregation server on loopback, as a subprocess: the one harness for every local run.

Used by the demo, ``secagg simulate --transport http``, the benchmarks and the tests.
:class:`LocalServer` starts ``python -m service`` on a free 127.0.0.1 port with a data
directory (SQLite file unless a database URL is given, the server ledger and its key)
and an admin token file (mode 0600), with an operator listener on a second free
loopback port (``/docs``, ``/openapi.json``, ``/metrics``: :attr:`LocalServer.operator_url`),
waits until ``/readyz`` answers, and stops the
process group it started (SIGTERM, then SIGKILL after a grace period) on exit. A test can
SIGKILL it at any moment (:meth:`LocalServer.kill`) and start it again on the same data
and port (:meth:`LocalServer.start`). The admin API's client is
:class:`clients.consortium.admin.AdminClient`, the coordinator's own.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

import httpx

from clients.runtime.errors import ServerUnavailable
from dp.atomic_files import write_private_file

READY_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 20.0


def free_loopback_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago (the server binds it next)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class LocalServer:
    """``with LocalServer() as server: ...`` — a real server subprocess, restartable on the same data.

    ``dev`` passes ``--dev`` (development mode: unsafe settings allowed); without it the
    server runs with its production checks, which loopback without TLS passes.
    ``poll_seconds`` sets how often the server's background task looks for due stages.
    The ``SECAGG_*`` variables of the calling environment are not passed on, so a run
    depends only on its arguments; ``extra_env`` adds variables.
    """

    def __init__(
        self,
        *,
        directory: Path | None = None,
        database_url: str | None = None,
        workers: int = 1,
        poll_seconds: float | None = None,
        dev: bool = True,
        extra_arguments: tuple[str, ...] = (),
        scheme: str = "http",
        verify: ssl.SSLContext | bool = True,
        extra_env: dict[str, str] | None = None,
        cwd: Path | None = None,
        operator_listener: bool = True,
    ) -> None:
        self._directory = directory
        self.database_url = database_url
        self.workers = workers
        self.poll_seconds = poll_seconds
        self.dev = dev
        self.extra_arguments = extra_arguments
        self.scheme = scheme
        self.verify = verify
        self._extra_env = dict(extra_env or {})
        self._cwd = cwd
        self._temporary: tempfile.TemporaryDirectory[str] | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self.port = free_loopback_port()
        self.operator_port: int | None = free_loopback_port() if operator_listener else None
        self.admin_token = secrets.token_urlsafe(32)
        self.root: Path | None = None
        self.log_path: Path | None = None

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    @property
    def operator_url(self) -> str:
        """The operator listener: ``/docs``, ``/openapi.json``, ``/metrics`` (and health)."""
        assert self.operator_port is not None, "this server has no operator listener"
        return f"{self.scheme}://127.0.0.1:{self.operator_port}"

    @property
    def data_dir(self) -> Path:
        assert self.root is not None, "the server was never started"
        return self.root / "data"

    def __enter__(self) -> LocalServer:
        return self.start()

    def start(self) -> LocalServer:
        """Start (or restart, after :meth:`kill`) the server on the same port and data."""
        if self.root is None:
            if self._directory is None:
                self._temporary = tempfile.TemporaryDirectory(prefix="secagg-server-")
                self.root = Path(self._temporary.name)
            else:
                self.root = self._directory
                self.root.mkdir(parents=True, exist_ok=True)
            write_private_file(self.root / "admin-token", self.admin_token.encode("ascii"), overwrite=True)
        if not self.data_dir.exists():
            self.data_dir.mkdir(mode=0o700)
            self.data_dir.chmod(0o700)  # private whatever the umask: the server refuses a shared one
        command = [
            sys.executable, "-m", "service",
            "--host", "127.0.0.1", "--port", str(self.port),
            "--data-dir", str(self.data_dir),
            "--admin-token-file", str(self.root / "admin-token"),
            "--workers", str(self.workers),
        ]  # fmt: skip
        if self.operator_port is not None:
            command += ["--operator-port", str(self.operator_port)]
        if self.database_url:
            command += ["--database-url", self.database_url]
        if self.dev:
            command.append("--dev")
        command += list(self.extra_arguments)
        environment = {key: value for key, value in os.environ.items() if not key.startswith("SECAGG_")}
        environment["PYTHONUNBUFFERED"] = "1"
        if self.poll_seconds is not None:
            environment["SECAGG_DEADLINE_POLL_SECONDS"] = str(self.poll_seconds)
        environment.update(self._extra_env)
        self.log_path = self.root / f"server-{time.time_ns() // 1_000_000}.log"
        log = open(self.log_path, "wb")  # noqa: SIM115 - owned by the subprocess until it exits
        self.process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=environment, start_new_session=True, cwd=self._cwd
        )
        log.close()
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        with httpx.Client(timeout=2.0, verify=self.verify) as probe:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise ServerUnavailable(f"the server exited with code {self.process.returncode}:\n{self.log_tail()}")
                try:
                    if probe.get(self.base_url + "/readyz").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.05)
        self.kill()
        raise ServerUnavailable(f"the server was not ready within {READY_TIMEOUT_SECONDS:g} s:\n{self.log_tail()}")

    def log_tail(self, characters: int = 4000) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")[-characters:]

    def cpu_seconds(self) -> float | None:
        """User plus system CPU time of the server's main process so far (Linux ``/proc``; None elsewhere)."""
        if self.process is None:
            return None
        try:
            fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        ticks = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / ticks

    def peak_rss_bytes(self) -> int | None:
        """Peak resident memory of the server's main process so far (Linux ``VmHWM``; None elsewhere)."""
        if self.process is None:
            return None
        try:
            for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            return None
        return None

    def kill(self) -> None:
        """SIGKILL the whole process group (workers included): no shutdown hook runs."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=STOP_TIMEOUT_SECONDS)
        self.process = None

    def restart_after_kill(self) -> None:
        self.kill()
        self.start()

    def stop(self) -> None:
        """SIGTERM the process group, then SIGKILL after a grace period."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=STOP_TIMEOUT_SECONDS)
        self.process = None

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None) -> None:
        self.stop()
        if self._temporary is not None:
            self._temporary.cleanup()


def metric_samples(server: LocalServer, name: str) -> dict[str, float]:
    """The samples of one Prometheus metric by label set, from the operator listener (or with the admin token)."""
    if server.operator_port is not None:
        response = httpx.get(server.operator_url + "/metrics", timeout=30.0, verify=server.verify)
    else:
        response = httpx.get(
            server.base_url + "/metrics",
            headers={"Authorization": f"Bearer {server.admin_token}"},
            timeout=30.0,
            verify=server.verify,
        )
    if response.status_code != 200:
        return {}
    samples: dict[str, float] = {}
    for line in response.text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            labels, _, value = line.rpartition(" ")
            samples[labels[len(name) :]] = float(value)
    return samples
