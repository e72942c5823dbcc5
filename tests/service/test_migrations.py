"""Alembic migrations: an upgrade from the schema before migrations, on data; models and migrations agree.

``schemas/before_migrations_sqlite.sql`` is the DDL that ``create_all`` produced before the
schema had migrations (taken from the server of that time, frozen here), so the upgrade
test starts from exactly what a deployed server has on disk.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path

import numpy as np
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, select, text

from service.db import Base, Database, RoundChunkRow
from service.metrics import ServiceMetrics
from service.migrations import BASELINE, alembic_config, current_revision, head_revision, upgrade_to_head
from service.rounds import RoundEngine
from tests.service.conftest import database_url_for

SCHEMA_BEFORE_MIGRATIONS = Path(__file__).with_name("schemas") / "before_migrations_sqlite.sql"
SCHEMA_WITH_TRAININGS_BEFORE_MIGRATIONS = Path(__file__).with_name("schemas") / "before_migrations_with_trainings_sqlite.sql"
"""What ``create_all`` produced once trainings existed, still before migrations (same provenance)."""
DIM = 1_500_000  # 6 MB at 32 bits: two chunks of the default 4 MiB
CHUNK_ELEMENTS = (4 << 20) // 4


def parameters(round_id: str) -> str:
    """A round's parameters as the server stored them before chunks existed (no chunk_bytes)."""
    cohort = [{"id": f"bank-{index}", "public_key": bytes([index + 1]) * 32} for index in range(3)]
    return json.dumps(
        {
            "round_id": round_id, "cohort": [dict(member, public_key=member["public_key"].hex()) for member in cohort],
            "threshold": 2, "mode": "honest-but-curious", "graph": "full", "degree": None, "dim": DIM, "bits": 32,
            "deadlines": {"R0": 300, "R1": 300, "R2": 600, "R3": 300, "R4": 300}, "dp_policy": {"privacy": []},
        },
        sort_keys=True,
    )  # fmt: skip


def insert_rounds_of_the_old_server(execute) -> tuple[np.ndarray, np.ndarray]:
    """A completed round with its result blob, a running round (in R4) with its running-sum blob."""
    result = np.arange(DIM, dtype="<u4") * np.uint32(2654435761)
    running_sum = np.arange(DIM, dtype="<u4") ^ np.uint32(0xA5A5A5A5)
    for index in range(3):
        execute(
            "INSERT INTO participants (id, public_key, role, enrolled_at, revoked_at) VALUES (:id, :key, 'bank', 1.0, NULL)",
            {"id": f"bank-{index}", "key": bytes([index + 1]) * 32},
        )
    for round_id, stage, outcome, blob_column, blob in (
        ("aa" * 16, "completed", "completed", "result", result.tobytes()),
        ("bb" * 16, "R4-unmasking", None, "masked_sum", running_sum.tobytes()),
    ):
        execute(
            "INSERT INTO rounds (id, created_at, parameters, stage, closed_stages, revision, stage_started_at, stage_deadline,"
            f" expected, history, outcome, survivors, {blob_column}, result_sha256, ledger_recorded) VALUES (:id, 1.0,"
            " :parameters, :stage, 4, 9, 1.0, NULL, '[]', '[]', :outcome, '[0, 1, 2]', :blob, :digest, :recorded)",
            {"id": round_id, "parameters": parameters(round_id), "stage": stage, "outcome": outcome, "blob": blob,
             "digest": hashlib.sha256(blob).hexdigest() if outcome else None, "recorded": True},
        )  # fmt: skip
        for sender in range(3):
            execute(
                'INSERT INTO round_members (round_id, "index", participant_id, public_key) VALUES (:round, :index, :id, :key)',
                {"round": round_id, "index": sender, "id": f"bank-{sender}", "key": bytes([sender + 1]) * 32},
            )
            execute(
                "INSERT INTO submissions (round_id, stage, sender, body, body_sha256, size, received_at)"
                " VALUES (:round, 'R2-masked-input-collection', :sender, NULL, :digest, 6000046, 1.0)",
                {"round": round_id, "sender": sender, "digest": "0" * 64},
            )
    return result, running_sum


def check_reshaped(database: Database, result: np.ndarray, running_sum: np.ndarray) -> None:
    with database.read() as session:
        rows = {
            (row.round_id, row.chunk): row
            for row in session.execute(
                select(RoundChunkRow).execution_options(populate_existing=True).order_by(RoundChunkRow.chunk)
            ).scalars()
        }
        completed = [rows[("aa" * 16, index)] for index in range(2)]
        assert b"".join(row.result for row in completed) == result.tobytes()
        assert [row.result_sha256 for row in completed] == [hashlib.sha256(row.result).hexdigest() for row in completed]
        running = [rows[("bb" * 16, index)] for index in range(2)]
        assert b"".join(row.masked_sum for row in running) == running_sum.tobytes()
        assert [len(row.masked_sum) for row in running] == [4 << 20, DIM * 4 - (4 << 20)]
        assert all(row.folded == 3 and row.result is None for row in running)
        columns = {column["name"] for column in inspect(session.get_bind()).get_columns("rounds")}
        assert "masked_sum" not in columns and "result" not in columns
        assert "fetched_at" in {column["name"] for column in inspect(session.get_bind()).get_columns("outbound")}
    engine = RoundEngine(database, metrics=ServiceMetrics.create(), ledger=None, max_dim=1 << 30)
    _, digest, survivors = engine.result_for("aa" * 16, "bank-0")
    assert survivors == [0, 1, 2] and digest == hashlib.sha256(result.tobytes()).hexdigest()
    assert b"".join(engine.result_bytes("aa" * 16)) == result.tobytes()


def test_a_database_from_before_migrations_is_stamped_and_upgraded_with_its_data(tmp_path: Path) -> None:
    path = tmp_path / "secagg.db"
    with sqlite3.connect(path) as connection:
        connection.executescript(SCHEMA_BEFORE_MIGRATIONS.read_text())
        result, running_sum = insert_rounds_of_the_old_server(lambda sql, values: connection.execute(sql, values))
    database = Database(f"sqlite:///{path}")
    database.create_schema()  # what the server does at start-up
    with database.engine.connect() as connection:
        assert current_revision(connection) == head_revision()
    check_reshaped(database, result, running_sum)
    database.create_schema()  # a second start changes nothing
    check_reshaped(database, result, running_sum)
    database.dispose()


def test_a_database_with_trainings_from_before_migrations_keeps_its_trainings(tmp_path: Path) -> None:
    path = tmp_path / "secagg.db"
    manifest_hash = "ab" * 32
    with sqlite3.connect(path) as connection:
        connection.executescript(SCHEMA_WITH_TRAININGS_BEFORE_MIGRATIONS.read_text())
        result, running_sum = insert_rounds_of_the_old_server(lambda sql, values: connection.execute(sql, values))
        connection.execute(
            "INSERT INTO trainings (id, manifest_hash, document, created_at) VALUES ('credit', ?, '{}', 1.0)", (manifest_hash,)
        )
        connection.execute("INSERT INTO training_rounds (round_id, training_id, step) VALUES (?, 'credit', 1)", ("aa" * 16,))
    database = Database(f"sqlite:///{path}")
    database.create_schema()
    with database.engine.connect() as connection:
        assert current_revision(connection) == head_revision()
        assert connection.execute(text("SELECT manifest_hash FROM trainings WHERE id = 'credit'")).scalar_one() == manifest_hash
        assert connection.execute(text("SELECT training_id, step FROM training_rounds")).all() == [("credit", 1)]
    check_reshaped(database, result, running_sum)
    database.dispose()


def test_an_upgrade_from_the_baseline_revision_with_data(backend: str, tmp_path: Path) -> None:
    url = database_url_for(backend) or f"sqlite:///{tmp_path / 'baseline.db'}"
    database = Database(url)
    with database.engine.begin() as connection:
        command.upgrade(alembic_config(connection), BASELINE)
        result, running_sum = insert_rounds_of_the_old_server(lambda sql, values: connection.execute(text(sql), values))
    database.create_schema()
    check_reshaped(database, result, running_sum)
    database.dispose()


def test_the_migrated_schema_is_exactly_the_models(backend: str, tmp_path: Path) -> None:
    url = database_url_for(backend) or f"sqlite:///{tmp_path / 'fresh.db'}"
    database = Database(url)
    database.create_schema()
    with database.engine.connect() as connection:
        context = MigrationContext.configure(
            connection,
            opts={"compare_type": True, "include_name": lambda name, kind, _: not (kind == "table" and name == "nonces")},
        )
        assert compare_metadata(context, Base.metadata) == []
    database.dispose()


def test_a_downgrade_to_the_baseline_and_back_keeps_the_data(tmp_path: Path) -> None:
    path = tmp_path / "roundtrip.db"
    with sqlite3.connect(path) as connection:
        connection.executescript(SCHEMA_BEFORE_MIGRATIONS.read_text())
        result, running_sum = insert_rounds_of_the_old_server(lambda sql, values: connection.execute(sql, values))
    database = Database(f"sqlite:///{path}")
    database.create_schema()
    with database._write_engine.begin() as connection:
        command.downgrade(alembic_config(connection), BASELINE)
    with sqlite3.connect(path) as connection:
        stored = connection.execute("SELECT result FROM rounds WHERE id = ?", ("aa" * 16,)).fetchone()[0]
    assert stored == result.tobytes()
    with database._write_engine.begin() as connection:
        upgrade_to_head(connection)
    check_reshaped(database, result, running_sum)
    database.dispose()
