"""Server settings: environment variables with the prefix ``SECAGG_`` (pydantic-settings).

Nothing is built at import time: :func:`load_settings` reads the environment when the
app factory runs. Outside development mode the validators refuse every configuration
that would make the server unsafe to expose:

* no admin token, or a short or well-known one (``changeme``, ``admin``, ...);
* participant request signatures disabled;
* a non-loopback listener without TLS (unless TLS is terminated by a proxy in front,
  declared with ``SECAGG_TLS_TERMINATED_BY_PROXY=true``);
* a clock-skew window wider than ten minutes (it bounds how long a captured request
  stays replayable against a server that lost its nonce store).

Development mode (``--dev``) relaxes these and, when no admin token is configured,
writes a fresh random token to ``<data_dir>/admin-token`` (mode 0600).
"""

from __future__ import annotations

import ipaddress
import os
import secrets
from pathlib import Path
from typing import Self

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MIN_ADMIN_TOKEN_CHARACTERS = 32
"""A bearer token of at least 32 characters from ``secrets.token_urlsafe`` carries >= 190 bits."""

MAX_CLOCK_SKEW_SECONDS = 600
WELL_KNOWN_TOKENS = frozenset({"changeme", "change-me", "admin", "secret", "password", "token", "dev", "test"})


class UnsafeSettings(ValueError):
    """A configuration the server refuses to run with outside development mode."""


class ServiceSettings(BaseSettings):
    """Everything the server is configured with. Secrets are :class:`SecretStr`."""

    model_config = SettingsConfigDict(env_prefix="SECAGG_", extra="forbid", frozen=True)

    dev: bool = False
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    data_dir: Path = Path("secagg-data")
    database_url: str | None = None
    admin_token: SecretStr | None = None
    admin_token_file: Path | None = None
    require_signatures: bool = True
    max_clock_skew_seconds: int = Field(default=120, ge=1)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_terminated_by_proxy: bool = False
    server_id: str = Field(default="secagg-server", pattern=r"^[a-z0-9][a-z0-9._-]{0,62}$")
    ledger_path: Path | None = None
    ledger_key_file: Path | None = None
    deadline_poll_seconds: float = Field(default=0.5, gt=0, le=60)
    retry_after_seconds: int = Field(default=1, ge=1, le=60)
    log_level: str = "INFO"
    operator_host: str = "127.0.0.1"
    operator_port: int | None = Field(default=None, ge=1, le=65535)
    """The operator listener (``/docs``, ``/openapi.json``, ``/metrics``, health); without it
    those endpoints need the admin bearer token on the participant listener."""
    max_connections: int = Field(default=1000, ge=1, le=1_000_000)
    """Concurrent connections (and requests) per server process; uvicorn answers 503 beyond."""
    body_timeout_seconds: float = Field(default=60.0, gt=0, le=3600)
    """Total time a request may take to deliver its body, from its first byte on (408 beyond)."""
    max_long_polls_per_participant: int = Field(default=4, ge=1, le=1000)
    """Long polls (``messages/me?wait=S``) one participant may hold at once per process (429 beyond)."""
    max_open_rounds: int = Field(default=100, ge=1, le=100_000)
    """Rounds that may be running at once; creating one more is refused (``open-round-limit``)."""
    unmask_engine: str = Field(default="process", pattern=r"^(thread|process|ray)$")
    """Where the mask expansion's chunk tasks run (``service.rounds.engines``); ``ray`` with ``ray_address``."""
    unmask_workers: int | None = Field(default=None, ge=1, le=4096)
    """Concurrent chunk tasks (default: this machine's cores; for Ray, the cluster's CPUs)."""
    ray_address: str | None = None
    """The Ray cluster for chunk tasks (``ray://head:10001``, ``auto``, or ``local`` for a cluster of this machine)."""

    @model_validator(mode="after")
    def _refuse_unsafe(self) -> Self:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise UnsafeSettings("--tls-cert and --tls-key go together")
        if self.admin_token is not None and self.admin_token_file is not None:
            raise UnsafeSettings("give the admin token either inline or as a file, not both")
        if self.operator_port is not None and self.operator_port == self.port:
            raise UnsafeSettings("the operator listener needs a port of its own")
        if self.dev:
            return self
        problems: list[str] = []
        if self.admin_token is None and self.admin_token_file is None:
            problems.append("no admin token (--admin-token-file)")
        if self.admin_token is not None:
            problems.extend(_token_problems(self.admin_token.get_secret_value()))
        if not self.require_signatures:
            problems.append("participant request signatures are disabled")
        if self.max_clock_skew_seconds > MAX_CLOCK_SKEW_SECONDS:
            problems.append(f"clock-skew window above {MAX_CLOCK_SKEW_SECONDS} s")
        if not _is_loopback(self.host) and self.tls_cert is None and not self.tls_terminated_by_proxy:
            problems.append(f"listening on {self.host} without TLS")
        if self.operator_port is not None and not _is_loopback(self.operator_host) and self.tls_cert is None:
            problems.append(f"operator listener on {self.operator_host} without TLS")
        if problems:
            raise UnsafeSettings("unsafe configuration (use --dev for local experiments): " + "; ".join(problems))
        return self

    # --------------------------------------------------------------- derived
    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'secagg.db').resolve()}"

    @property
    def resolved_ledger_path(self) -> Path:
        return self.ledger_path or self.data_dir / "server-ledger.jsonl"

    @property
    def resolved_ledger_key_file(self) -> Path:
        return self.ledger_key_file or self.data_dir / "server-ledger.key"

    def read_admin_token(self) -> SecretStr:
        """The admin bearer token (from the file if one is configured), checked again."""
        if self.admin_token is not None:
            return self.admin_token
        if self.admin_token_file is not None:
            try:
                token = self.admin_token_file.read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise UnsafeSettings(f"cannot read the admin token file: {exc.strerror}") from None
            problems = _token_problems(token)
            if problems and not self.dev:
                raise UnsafeSettings("; ".join(problems))
            if not token:
                raise UnsafeSettings("the admin token file is empty")
            return SecretStr(token)
        if not self.dev:
            raise UnsafeSettings("no admin token")
        path = self.data_dir / "admin-token"
        if not path.exists():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
                handle.write(secrets.token_urlsafe(32) + "\n")
        return SecretStr(path.read_text(encoding="utf-8").strip())


def _token_problems(token: str) -> list[str]:
    if token.lower() in WELL_KNOWN_TOKENS:
        return ["the admin token is a well-known default"]
    if len(token) < MIN_ADMIN_TOKEN_CHARACTERS:
        return [f"the admin token is shorter than {MIN_ADMIN_TOKEN_CHARACTERS} characters"]
    return []


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def load_settings(**overrides: object) -> ServiceSettings:
    """Settings from the environment (``SECAGG_*``), with explicit overrides on top."""
    return ServiceSettings(**overrides)  # type: ignore[arg-type]
