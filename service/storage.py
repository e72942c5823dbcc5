"""Secrets at rest: the server's data directory and the files in it are private to its user.

The database holds relayed share ciphertexts, revealed shares and the masked running sum;
the ledger key signs the round records; the admin token file grants the admin API. Outside
development mode the server therefore

* refuses to start when a secret file it reads (the admin token file, the ledger key) or a
  data file it would open (SQLite database, WAL, shared memory, nonce store, ledger and its
  head) is accessible by group or others, and when the data directory is;
* creates the data directory 0700 and the SQLite files 0600 before SQLite opens them
  (SQLite gives its WAL and shared-memory files the mode of the database file);
* runs with umask 077 (:func:`restrict_umask`, set by ``secagg server`` for the whole
  process and its workers), so every other file it creates is 0600 as well.

Development mode (``--dev``) creates the same modes but refuses nothing.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from sqlalchemy.engine import make_url

from service.settings import ServiceSettings, UnsafeSettings

PRIVATE_FILE_MODE = 0o600
PRIVATE_DIRECTORY_MODE = 0o700
PROCESS_UMASK = 0o077
SQLITE_COMPANION_SUFFIXES = ("", "-wal", "-shm")


def restrict_umask() -> int:
    """Set the process umask to 077 (files 0600, directories 0700); return the previous one."""
    return os.umask(PROCESS_UMASK)


def shared_mode(path: Path) -> int | None:
    """The permission bits of ``path`` if group or others have any access; None otherwise."""
    mode = stat.S_IMODE(path.stat().st_mode)
    return mode if mode & 0o077 else None


def require_private(path: Path, what: str) -> None:
    """Refuse ``path`` (if it exists) when group or others have any access to it."""
    if not path.exists():
        return
    mode = shared_mode(path)
    if mode is not None:
        fix = "chmod 700" if path.is_dir() else "chmod 600"
        raise UnsafeSettings(f"{what} {path} has mode {mode:04o}; group and others must have no access ({fix})")


def sqlite_files(settings: ServiceSettings) -> list[Path]:
    """The SQLite database files of ``settings`` (main and nonce store), without companions."""
    from service.db import nonce_database_url

    url = settings.resolved_database_url
    if not url.startswith("sqlite"):
        return []
    files: list[Path] = []
    for candidate in (url, nonce_database_url(url)):
        database = make_url(candidate).database
        if database and database != ":memory:":
            files.append(Path(database))
    return files


def data_files(settings: ServiceSettings) -> list[Path]:
    """Every data file the server opens: SQLite files with their WAL and shared memory, the ledger and its head."""
    files = [Path(f"{database}{suffix}") for database in sqlite_files(settings) for suffix in SQLITE_COMPANION_SUFFIXES]
    ledger = settings.resolved_ledger_path
    return [*files, ledger, ledger.with_name(ledger.name + ".head")]


def check_private_storage(settings: ServiceSettings) -> None:
    """Outside development mode, refuse shared secret files, data files and data directory."""
    if settings.dev:
        return
    if settings.admin_token_file is not None:
        require_private(settings.admin_token_file, "the admin token file")
    require_private(settings.resolved_ledger_key_file, "the ledger key")
    require_private(settings.data_dir, "the data directory")
    for directory in {path.parent for path in data_files(settings)}:
        if directory != settings.data_dir:
            require_private(directory, "the data directory")
    for path in data_files(settings):
        require_private(path, "the data file")


def prepare_private_storage(settings: ServiceSettings) -> None:
    """Create the data directory (0700) and the SQLite files (0600), then check everything."""
    check_private_storage(settings)
    for directory in {settings.data_dir, *(path.parent for path in data_files(settings))}:
        _make_private_directory(directory)
    for database in sqlite_files(settings):
        _create_private_file(database)
    check_private_storage(settings)


def _make_private_directory(directory: Path) -> None:
    if directory.exists():
        return
    directory.parent.mkdir(parents=True, exist_ok=True)
    try:
        directory.mkdir(mode=PRIVATE_DIRECTORY_MODE)
    except FileExistsError:
        return  # another worker created it first
    os.chmod(directory, PRIVATE_DIRECTORY_MODE)  # mkdir's mode is narrowed by the umask, never widened


def _create_private_file(path: Path) -> None:
    """An empty file (SQLite treats it as an empty database) created 0600, if there is none yet."""
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), PRIVATE_FILE_MODE)
    except FileExistsError:
        return
    os.close(descriptor)
