"""Request nonces on SQLite live in a file of their own: replay refused across processes, no queue behind uploads."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from service.db import Database, nonce_database_url


def test_the_nonce_file_sits_beside_the_main_file() -> None:
    assert nonce_database_url("sqlite:////srv/secagg/secagg.db") == "sqlite:////srv/secagg/secagg.nonces.db"


def test_a_nonce_recorded_by_one_process_is_refused_by_another_on_the_same_database(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'secagg.db'}"
    first, second = Database(url), Database(url)
    try:
        first.create_schema()
        second.create_schema()
        assert first.record_nonce("bank-a", "0" * 32, expires_at=2e9)
        assert not second.record_nonce("bank-a", "0" * 32, expires_at=2e9)
        assert second.record_nonce("bank-b", "0" * 32, expires_at=2e9)
    finally:
        first.dispose()
        second.dispose()


def test_recording_a_nonce_does_not_wait_for_a_write_transaction_on_the_main_file(tmp_path: Path) -> None:
    database = Database(f"sqlite:///{tmp_path / 'secagg.db'}")
    database.create_schema()
    holder = sqlite3.connect(tmp_path / "secagg.db", isolation_level=None)
    outcome: list[bool] = []
    try:
        holder.execute("BEGIN IMMEDIATE")  # what an upload's transaction holds until its commit
        recorder = threading.Thread(target=lambda: outcome.append(database.record_nonce("bank-a", "1" * 32, expires_at=2e9)))
        recorder.start()
        recorder.join(timeout=10)
        assert outcome == [True], "the nonce insert queued behind the main file's write lock"
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        recorder.join()
        database.dispose()


def test_expired_nonces_are_purged_from_the_nonce_file_and_unexpired_ones_kept(tmp_path: Path) -> None:
    database = Database(f"sqlite:///{tmp_path / 'secagg.db'}")
    try:
        database.create_schema()
        database.record_nonce("bank-a", "2" * 32, expires_at=100.0)
        database.record_nonce("bank-a", "3" * 32, expires_at=300.0)
        database.purge_nonces(now=200.0)
        assert database.record_nonce("bank-a", "2" * 32, expires_at=400.0)
        assert not database.record_nonce("bank-a", "3" * 32, expires_at=400.0)
    finally:
        database.dispose()


def _wal_bytes(path: Path) -> int:
    wal = path.with_name(path.name + "-wal")
    return wal.stat().st_size if wal.exists() else 0


def test_a_nonce_commit_writes_kilobytes_to_the_wal_not_the_main_files_large_pages(tmp_path: Path) -> None:
    """Every signed request records a nonce; at the main file's 64 KB pages each commit wrote
    three of them (table, primary key, expiry index) to the nonce file's WAL."""
    database = Database(f"sqlite:///{tmp_path / 'secagg.db'}")
    try:
        database.create_schema()
        nonces = tmp_path / "secagg.nonces.db"
        database.record_nonce("bank-a", "f" * 32, expires_at=2e9)
        before = _wal_bytes(nonces)
        for index in range(200):
            assert database.record_nonce("bank-a", f"{index:032x}", expires_at=2e9)
        per_commit = (_wal_bytes(nonces) - before) / 200
        assert per_commit <= 16 * 1024, per_commit
        assert sqlite3.connect(nonces).execute("PRAGMA page_size").fetchone()[0] == 4096
    finally:
        database.dispose()


def test_the_background_checkpoint_copies_the_nonce_files_wal_too(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr("service.db.WAL_CHECKPOINT_BYTES", 1)
    database = Database(f"sqlite:///{tmp_path / 'secagg.db'}")
    try:
        database.create_schema()
        nonces = tmp_path / "secagg.nonces.db"
        for index in range(500):
            database.record_nonce("bank-a", f"{index:032x}", expires_at=2e9)
        size_before = nonces.stat().st_size
        database.checkpoint()
        assert nonces.stat().st_size > size_before  # the rows now live in the file, not only in its WAL
    finally:
        database.dispose()
