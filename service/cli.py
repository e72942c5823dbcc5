"""``secagg server``: run the aggregation server under uvicorn.

FastAPI and uvicorn are imported inside the command, so the ``secagg`` CLI stays light
for the commands that do not need them. Options override the ``SECAGG_*`` environment;
the resulting settings are validated here (unsafe configurations are refused before
anything listens) and handed to the worker processes through the environment, where
:func:`service.app.create_app_from_environment` reads them again.
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from typing import Annotated

import typer

MULTIPROCESS_DIRECTORY_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"


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
    operator_port: Annotated[
        int | None,
        typer.Option(
            "--operator-port",
            min=1,
            max=65535,
            help="Serve /docs, /openapi.json and /metrics on this port only (without it they need the admin token).",
        ),
    ] = None,
    operator_host: Annotated[
        str | None, typer.Option("--operator-host", help="Address of the operator listener (default 127.0.0.1).")
    ] = None,
    max_connections: Annotated[
        int | None,
        typer.Option("--max-connections", min=1, help="Concurrent connections per worker; 503 beyond (default 1000)."),
    ] = None,
    body_timeout: Annotated[
        float | None,
        typer.Option("--body-timeout", min=0.1, help="Seconds a request may take to deliver its body; 408 beyond (default 60)."),
    ] = None,
    max_open_rounds: Annotated[
        int | None, typer.Option("--max-open-rounds", min=1, help="Rounds running at once (default 100).")
    ] = None,
    dev: Annotated[bool, typer.Option("--dev", help="Development mode: allow unsafe settings (never in production).")] = False,
    unmask_engine: Annotated[
        str | None,
        typer.Option("--unmask-engine", help="Where the mask expansion's chunk tasks run: thread, process (default) or ray."),
    ] = None,
    unmask_workers: Annotated[
        int | None,
        typer.Option("--unmask-workers", min=1, help="Concurrent chunk tasks (default: the cores, or the Ray cluster's CPUs)."),
    ] = None,
    ray_address: Annotated[
        str | None,
        typer.Option(
            "--ray-address", help="Run chunk tasks on this Ray cluster (ray://head:10001, auto; 'local' starts one here)."
        ),
    ] = None,
) -> None:
    """Run the secure-aggregation server."""
    from pydantic import ValidationError

    from service.settings import load_settings
    from service.storage import check_private_storage, restrict_umask

    overrides: dict[str, object] = {"host": host, "port": port, "dev": dev}
    optional: tuple[tuple[str, str | Path | int | float | None], ...] = (
        ("database_url", database_url),
        ("admin_token_file", admin_token_file),
        ("tls_cert", tls_cert),
        ("tls_key", tls_key),
        ("data_dir", data_dir),
        ("operator_port", operator_port),
        ("operator_host", operator_host),
        ("max_connections", max_connections),
        ("body_timeout_seconds", body_timeout),
        ("max_open_rounds", max_open_rounds),
        ("unmask_engine", unmask_engine),
        ("unmask_workers", unmask_workers),
        ("ray_address", ray_address),
    )
    for name, value in optional:
        if value is not None:
            overrides[name] = value
    if not dev:
        restrict_umask()  # inherited by the workers: every file the server creates is 0600
    try:
        settings = load_settings(**overrides)
        settings.read_admin_token()
        check_private_storage(settings)
    except (ValidationError, ValueError) as exc:
        typer.echo(f"error: {_first_error(exc)}", err=True)
        raise typer.Exit(code=2) from None
    if settings.database_url is None and workers > 1:
        typer.echo("note: several workers on SQLite serialise on the database's write lock", err=True)

    for name, setting in overrides.items():
        os.environ[f"SECAGG_{name.upper()}"] = str(setting).lower() if isinstance(setting, bool) else str(setting)
    if workers > 1:
        os.environ[MULTIPROCESS_DIRECTORY_VARIABLE] = str(_fresh_metrics_directory(settings.data_dir))

    import uvicorn
    from uvicorn.supervisors import Multiprocess

    from service.logs import uvicorn_log_config

    config = uvicorn.Config(
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
        limit_concurrency=settings.max_connections,
    )
    sockets = [_listen(settings.host, settings.port)]
    if settings.operator_port is not None:
        sockets.append(_listen(settings.operator_host, settings.operator_port))
    scheme = "https" if settings.tls_cert else "http"
    listening: dict[str, str] = {"url": _url(scheme, sockets[0])}
    if len(sockets) > 1:
        listening["operator_url"] = _url("http", sockets[1])
    # The bound port, not the requested one: with --port 0 this line is how a script finds the server.
    logging.getLogger("secagg.service").info("server_listening", extra=listening)
    if workers > 1:
        Multiprocess(config, sockets=sockets).run()
    else:
        config.load_app()
        server = uvicorn.Server(config)
        server.run(sockets=sockets)
        if not server.started:
            raise typer.Exit(code=3)


def _url(scheme: str, listener: socket.socket) -> str:
    host, port = listener.getsockname()[:2]
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


def _listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (IPv4 or IPv6), inheritable by the workers."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
    except OSError as exc:
        listener.close()
        typer.echo(f"error: cannot listen on {host}:{port}: {exc.strerror}", err=True)
        raise typer.Exit(code=2) from None
    listener.listen(2048)
    listener.set_inheritable(True)
    return listener


def _fresh_metrics_directory(data_dir: Path) -> Path:
    """An empty directory for prometheus_client's multiprocess files (``service.metrics``), mode 0700."""
    import shutil

    directory = data_dir / "prometheus-multiproc"
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True, mode=0o700)
    return directory


def _first_error(exc: Exception) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        messages = [str(error.get("msg", "")) for error in errors()]
        if messages:
            return "; ".join(messages)
    return str(exc)


db_app = typer.Typer(help="The server's database schema (Alembic migrations).", no_args_is_help=True)
DatabaseUrlOption = Annotated[
    str | None, typer.Option("--database-url", help="SQLAlchemy URL (default: the SQLite file in --data-dir).")
]
DataDirOption = Annotated[Path, typer.Option("--data-dir", help="Directory of the default SQLite file.")]


def _database_url(database_url: str | None, data_dir: Path) -> str:
    return database_url or f"sqlite:///{(data_dir / 'secagg.db').resolve()}"


@db_app.command("upgrade")
def db_upgrade(database_url: DatabaseUrlOption = None, data_dir: DataDirOption = Path("secagg-data")) -> None:
    """Upgrade the database to the newest schema (the server also does this at start-up)."""
    from service.db import Database
    from service.migrations import current_revision

    database = Database(_database_url(database_url, data_dir))
    database.create_schema()
    with database.engine.connect() as connection:
        typer.echo(f"database at revision {current_revision(connection)}")
    database.dispose()


@db_app.command("current")
def db_current(database_url: DatabaseUrlOption = None, data_dir: DataDirOption = Path("secagg-data")) -> None:
    """Show the database's schema revision and the newest one this server knows."""
    from sqlalchemy import create_engine

    from service.migrations import current_revision, head_revision

    engine = create_engine(_database_url(database_url, data_dir))
    with engine.connect() as connection:
        typer.echo(f"database: {current_revision(connection) or 'none (before migrations, or empty)'}; newest: {head_revision()}")
    engine.dispose()


@db_app.command("revision")
def db_revision(message: Annotated[str, typer.Option("--message", "-m", help="What the revision changes.")]) -> None:
    """Write the next migration from the difference between the models and the newest revision (for developers)."""
    import tempfile

    from alembic import command
    from sqlalchemy import create_engine

    from service.migrations import alembic_config, upgrade_to_head

    with tempfile.TemporaryDirectory(prefix="secagg-revision-") as scratch:
        url = f"sqlite:///{Path(scratch) / 'head.db'}"
        engine = create_engine(url)
        with engine.begin() as connection:
            upgrade_to_head(connection)
        engine.dispose()
        command.revision(alembic_config(url=url), message=message, autogenerate=True)
