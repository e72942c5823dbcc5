"""Atomic, private files: the key file and the round state file.

A private file is created with mode 0600 from the start (``os.open`` with that mode,
never ``chmod`` afterwards, so it is never readable by others even briefly), written
to a temporary file in the same directory, flushed with ``fsync``, and moved into
place with one atomic operation; the directory is then synced so the rename itself
survives a power loss. A crash at any point leaves either the old file or the new
one, never a half-written file.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

PRIVATE_MODE = 0o600


class PrivateFileExists(FileExistsError):
    """The target exists and overwriting was not allowed."""


class NotPrivate(PermissionError):
    """A secret file is readable or writable by group or others."""


def write_private_file(path: Path, data: bytes, *, overwrite: bool) -> None:
    """Write ``data`` to ``path`` atomically with mode 0600.

    With ``overwrite=False`` the file is linked into place with ``os.link``, which
    fails if ``path`` exists, so two concurrent writers cannot both succeed and an
    existing key is never replaced. With ``overwrite=True`` it is ``os.replace``-d.
    """
    directory = path.parent if str(path.parent) else Path(".")
    temporary = directory / f".{path.name}.{os.getpid()}.{os.urandom(6).hex()}.tmp"
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), PRIVATE_MODE)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if overwrite:
            os.replace(temporary, path)
        else:
            try:
                os.link(temporary, path)
            except FileExistsError:
                raise PrivateFileExists(f"{path} already exists") from None
            os.unlink(temporary)
    finally:
        if temporary.exists():
            temporary.unlink()
    _sync_directory(directory)


def read_private_file(path: Path) -> bytes:
    """Read a secret file, refusing one that group or others can access (like OpenSSH)."""
    descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    with os.fdopen(descriptor, "rb") as handle:
        mode = os.fstat(handle.fileno()).st_mode
        if os.name == "posix" and stat.S_IMODE(mode) & 0o077:
            raise NotPrivate(f"{path} has mode {stat.S_IMODE(mode):04o}; it must not be accessible by group or others (chmod 600)")
        return handle.read()


def remove_file(path: Path) -> None:
    """Delete ``path`` if it exists and sync its directory."""
    try:
        path.unlink()
    except FileNotFoundError:
        return
    _sync_directory(path.parent)


def _sync_directory(directory: Path) -> None:
    if os.name != "posix":
        return
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
