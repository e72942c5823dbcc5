"""Atomic files: the one writer of every file that must survive a crash whole.

Used for identity keys, client round state, accountant state, ledger heads, plans and
models. A file is written to a temporary file in the same directory, created with its
final mode from the start (``os.open`` with that mode, never ``chmod`` afterwards, so a
private file is never readable by others even briefly), flushed with ``fsync``, and
moved into place with one atomic operation; the directory is then synced so the rename
itself survives a power loss (POSIX ``rename(2)``). A crash at any point leaves either
the old file or the new one, never a half-written file.

This lives in ``dp`` because ``dp`` is the lowest layer allowed to touch a disk: the
protocol core (``secagg``) is pure, and both the bank's client and the server build on
``dp``.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

PRIVATE_MODE = 0o600
PUBLIC_MODE = 0o644


class PrivateFileExists(FileExistsError):
    """The target exists and overwriting was not allowed."""


class NotPrivate(PermissionError):
    """A secret file is readable or writable by group or others."""


def write_atomic(path: str | os.PathLike[str], data: bytes, *, mode: int = PRIVATE_MODE, overwrite: bool = True) -> None:
    """Write ``data`` to ``path`` atomically, created with ``mode`` (0600 unless told otherwise).

    With ``overwrite=False`` the file is linked into place with ``os.link``, which
    fails if ``path`` exists, so two concurrent writers cannot both succeed and an
    existing key is never replaced (:class:`PrivateFileExists`). With
    ``overwrite=True`` it is ``os.replace``-d.
    """
    target = Path(path)
    directory = target.parent if str(target.parent) else Path(".")
    temporary = directory / f".{target.name}.{os.getpid()}.{os.urandom(6).hex()}.tmp"
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), mode)
    try:
        os.fchmod(descriptor, mode)  # the umask may have narrowed a public file's mode
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if overwrite:
            os.replace(temporary, target)
        else:
            try:
                os.link(temporary, target)
            except FileExistsError:
                raise PrivateFileExists(f"{target} already exists") from None
            os.unlink(temporary)
    finally:
        if temporary.exists():
            temporary.unlink()
    sync_directory(directory)


def write_private_file(path: Path, data: bytes, *, overwrite: bool) -> None:
    """:func:`write_atomic` with mode 0600."""
    write_atomic(path, data, mode=PRIVATE_MODE, overwrite=overwrite)


def read_private_file(path: Path) -> bytes:
    """Read a secret file, refusing one that group or others can access (as OpenSSH does)."""
    descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    with os.fdopen(descriptor, "rb") as handle:
        mode = os.fstat(handle.fileno()).st_mode
        if os.name == "posix" and stat.S_IMODE(mode) & 0o077:
            raise NotPrivate(
                f"{path} has mode {stat.S_IMODE(mode):04o}; it must not be accessible by group or others (chmod 600)"
            )
        return handle.read()


def remove_file(path: Path) -> None:
    """Delete ``path`` if it exists and sync its directory."""
    try:
        path.unlink()
    except FileNotFoundError:
        return
    sync_directory(path.parent)


def sync_directory(directory: Path) -> None:
    """Make a rename or an unlink in ``directory`` durable (a no-op where directories cannot be opened)."""
    if os.name != "posix":
        return
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
