"""``secagg server``: run the aggregation server under uvicorn.

FastAPI and uvicorn are imported inside the command, so the ``secagg`` CLI stays light
for the commands that do not need them. Options override the ``SECAGG_*`` environment;
the resulting settings are validated here (unsafe configurations are refused before
anything listens) and handed to the worker processes through the environment, where
:func:`service.app.create_app_from_environment` reads them again.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer


def server_command(
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="TCP port.")] = 8000,
    database_url: Annotated[
        str | None,
        typer.Option("--database-url", help="SQLAlchemy URL (default: SQLite file in --data-dir; postgresql+psycopg://...)."),
    ] = None,
    admin_token_file: Annotated[
        Path | None, typer.Option("--admin-token-file", help="File holding the admin bearer token (>= 32 characters).")
    ] = None,
    tls_cert: Annotated[Path | None, typer.Option("--tls-cert", help="TLS certificate chain (PEM).")] = None,
    tls_key: Annotated[Path | None, typer.Option("--tls-key", help="TLS private key (PEM).")] = None,
    workers: Annotated[int, typer.Option("--workers", min=1, max=64, help="Worker processes (share the database).")] = 1,
    data_dir: Annotated[
        Path | None, typer.Option("--data-dir", help="Directory for the SQLite file, the ledger and its key.")
    ] = None,
    dev: Annotated[bool, typer.Option("--dev", help="Development mode: allow unsafe settings (never in production).")] = False,
) -> None:
    """Run the secure-aggregation server."""
    from pydantic import ValidationError

    from service.settings import load_settings

    overrides: dict[str, object] = {"host": host, "port": port, "dev": dev}
    optional: tuple[tuple[str, str | Path | None], ...] = (
        ("database_url", database_url),
        ("admin_token_file", admin_token_file),
        ("tls_cert", tls_cert),
        ("tls_key", tls_key),
        ("data_dir", data_dir),
    )
    for name, value in optional:
        if value is not None:
            overrides[name] = value
    try:
        settings = load_settings(**overrides)
        settings.read_admin_token()
    except (ValidationError, ValueError) as exc:
        typer.echo(f"error: {_first_error(exc)}", err=True)
        raise typer.Exit(code=2) from None
    if settings.database_url is None and workers > 1:
        typer.echo("note: several workers on SQLite serialise on the database's write lock", err=True)

    for name, setting in overrides.items():
        os.environ[f"SECAGG_{name.upper()}"] = str(setting).lower() if isinstance(setting, bool) else str(setting)

    import uvicorn

    from service.logs import uvicorn_log_config

    uvicorn.run(
        "service.app:create_app_from_environment",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=workers,
        ssl_certfile=str(settings.tls_cert) if settings.tls_cert else None,
        ssl_keyfile=str(settings.tls_key) if settings.tls_key else None,
        log_config=uvicorn_log_config(settings.log_level),
        proxy_headers=settings.tls_terminated_by_proxy,
        server_header=False,
        date_header=True,
        timeout_graceful_shutdown=10,
    )


def _first_error(exc: Exception) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        messages = [str(error.get("msg", "")) for error in errors()]
        if messages:
            return "; ".join(messages)
    return str(exc)
