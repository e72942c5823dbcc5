"""Alembic's environment: migrations run on the connection the server hands over (in its lock)."""

from __future__ import annotations

from typing import Any

from alembic import context
from sqlalchemy import create_engine
from sqlalchemy.engine import Connection

from service.db import Base, NonceBase

config = context.config
UNMIGRATED_TABLES = frozenset(NonceBase.metadata.tables)
"""The nonce cache: created if missing, never migrated (see :mod:`service.migrations`)."""


def include_name(name: str | None, kind: str, parent_names: Any) -> bool:
    return not (kind == "table" and name in UNMIGRATED_TABLES)


def run_migrations(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        compare_type=True,
        render_as_batch=True,
        include_name=include_name,
    )
    with context.begin_transaction():
        context.run_migrations()


_connection = config.attributes.get("connection")
if _connection is not None:
    run_migrations(_connection)
else:
    _engine = create_engine(config.get_main_option("sqlalchemy.url") or "")
    with _engine.begin() as _new_connection:
        run_migrations(_new_connection)
    _engine.dispose()
