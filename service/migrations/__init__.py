"""The database schema's migrations (Alembic), applied by the server at start-up.

Every change to the tables of :mod:`service.db` is a revision in ``versions/``, one file
per change, each naming the one it follows (``down_revision``), so the chain is linear:
``0001`` is the schema as it was before migrations existed (what ``create_all`` made),
and every later one transforms the data it touches as well as the tables. The server
upgrades its database to the newest revision before it serves anything
(:func:`upgrade_to_head`, from :meth:`service.db.Database.create_schema`), under the
database's write lock (SQLite) or an advisory lock (PostgreSQL), so that several workers
starting at once upgrade it once. A database made before migrations existed has no
``alembic_version`` table: it is recognised by its tables and stamped ``0001`` first.

To change the schema (see ``docs/DESIGN.md``, "Database migrations"): edit the models in
:mod:`service.db`, then ``secagg db revision -m "what changes"`` writes the next file
with the operations Alembic detects; review it, add any data migration, and add a test
that upgrades a database holding data of the previous revision. A branch that adds its
own revision rebases it onto the newest one by setting its ``down_revision``.

The request nonces (on SQLite a file of their own) are a cache of the last minutes, not
records: their one table is created if missing and never migrated.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect
from sqlalchemy.engine import Connection

BASELINE = "0001"
"""The schema as ``create_all`` made it before migrations existed."""
LOCATION = str(Path(__file__).resolve().parent)


def alembic_config(connection: Connection | None = None, url: str | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", LOCATION)
    if url is not None:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def upgrade_to_head(connection: Connection) -> None:
    """Bring the database on ``connection`` (inside the caller's transaction and lock) to the newest revision."""
    config = alembic_config(connection)
    if current_revision(connection) is None and "rounds" in inspect(connection).get_table_names():
        command.stamp(config, BASELINE)
    command.upgrade(config, "head")
