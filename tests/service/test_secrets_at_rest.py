"""Secrets at rest: outside ``--dev`` the server refuses shared secret files and keeps its data private.

The admin token file and the ledger key must not be accessible by group or others, nor the
data directory or its files; the database, its WAL and shared memory, the nonce store and
the ledger with its head are created 0600 in a 0700 data directory, whatever the umask of
whoever started the server.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from clients.runtime.errors import ServerUnavailable
from tests.service.harness import Api, RoundDriver, ServerProcess, make_parties


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _share_token_file(server: ServerProcess) -> None:
    (server.root / "admin-token").chmod(0o640)


def _share_ledger_key(server: ServerProcess) -> None:
    key = server.data_dir / "server-ledger.key"
    key.write_text("11" * 32 + "\n")
    key.chmod(0o644)


def _share_data_directory(server: ServerProcess) -> None:
    server.data_dir.chmod(0o755)


def _share_database(server: ServerProcess) -> None:
    database = server.data_dir / "secagg.db"
    database.touch()
    database.chmod(0o644)


@pytest.mark.parametrize(
    "share",
    [_share_token_file, _share_ledger_key, _share_data_directory, _share_database],
    ids=["admin-token-file-0640", "ledger-key-0644", "data-directory-0755", "database-0644"],
)
def test_outside_dev_the_server_refuses_to_start_with_a_secret_or_data_file_others_can_read(
    tmp_path: Path, share: Callable[[ServerProcess], None]
) -> None:
    server = ServerProcess(directory=tmp_path, dev=False)
    server.start()  # creates the token file, the data directory and its files as they should be
    server.stop()
    share(server)
    try:
        with pytest.raises(ServerUnavailable, match="group and others must have no access"):
            server.start()
    finally:
        server.kill()


def test_outside_dev_the_database_wal_nonce_and_ledger_files_are_0600_in_a_0700_directory(tmp_path: Path) -> None:
    previous = os.umask(0o022)  # what an operator's shell usually has
    try:
        server = ServerProcess(directory=tmp_path, dev=False, poll_seconds=0.1).start()
    finally:
        os.umask(previous)
    try:
        api = Api(server)
        parties = make_parties(3, prefix="at-rest", seed=870)
        for party in parties:
            api.enroll(party)
        round_id = api.create_round(parties, threshold=2, mode="honest-but-curious", dim=8)
        driver = RoundDriver(api, parties, round_id, seed=870)
        driver.send(range(3))
        driver.expect_stage("R1-share-keys")
        api.admin("POST", f"/v1/admin/rounds/{round_id}/abort", {"detail": "ledger entry"})
        api.close()
        data = server.data_dir
        assert _mode(data) == 0o700
        expected = {
            "secagg.db", "secagg.db-wal", "secagg.db-shm", "secagg.nonces.db", "secagg.nonces.db-wal", "secagg.nonces.db-shm",
            "server-ledger.jsonl", "server-ledger.jsonl.head", "server-ledger.key",
        }  # fmt: skip
        present = {path.name for path in data.iterdir()}
        assert expected <= present, expected - present
        modes = {name: oct(_mode(data / name)) for name in expected}
        assert set(modes.values()) == {oct(0o600)}, modes
    finally:
        server.kill()
