"""The bank's Ed25519 identity key on disk (RFC 8032; PKCS #8, RFC 5958, in PEM).

``generate_key_file`` draws the key from the operating system's CSPRNG (through
``cryptography``), serialises it as PKCS #8 PEM, encrypted with the best
encryption ``cryptography`` offers when a passphrase is given, and writes it with
mode 0600 atomically (:mod:`dp.atomic_files`); an existing file is never
overwritten unless asked. The public key goes to ``<key>.pub`` as 64 lowercase hex
digits of the raw 32 bytes and a newline: the one public-key file format every command
reads (manifest building, enrolment by the coordinator, ``secagg audit``), and the form
the server exports its ledger key in (``docs/LEDGER.md`` section 8).
:func:`load_public_key_file` reads it (and PEM, or the 32 raw bytes).

``load_identity_key`` refuses a key file that group or others can read, a wrong or
missing passphrase, and any key that is not Ed25519, each with a specific error.
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    BestAvailableEncryption,
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_pem_private_key,
)

from clients.runtime.errors import KeyFileError
from dp.atomic_files import PUBLIC_MODE, NotPrivate, PrivateFileExists, read_private_file, write_atomic, write_private_file
from secagg.hazmat.keys import SigningKey

PUBLIC_KEY_SUFFIX = ".pub"
MIN_PASSPHRASE_BYTES = 8


@dataclass(frozen=True, slots=True)
class GeneratedKey:
    """Where the new key went and its public key (64 lowercase hex digits)."""

    key_path: Path
    public_key_path: Path
    public_key_hex: str


def public_key_base64(public_bytes: bytes) -> str:
    """The form the admin API enrols a key in (``docs/API.md`` section 4)."""
    return base64.b64encode(public_bytes).decode("ascii")


def public_key_file_bytes(public_bytes: bytes) -> bytes:
    """The public-key file format: 64 lowercase hex digits and a newline."""
    return (public_bytes.hex() + "\n").encode("ascii")


def load_public_key_file(path: Path) -> bytes:
    """A raw Ed25519 public key from a public-key file (hex, PEM or raw; ``docs/LEDGER.md`` section 8)."""
    from dp.audit.chain import LedgerError, load_public_key

    try:
        return load_public_key(Path(path))
    except OSError as exc:
        raise KeyFileError(f"cannot read public key file {path}: {exc.strerror}") from None
    except LedgerError as exc:
        raise KeyFileError(str(exc)) from None


def read_passphrase(*, passphrase_file: Path | None = None, passphrase_env: str | None = None) -> bytes | None:
    """The passphrase from a file (one trailing newline removed) or an environment variable, or None."""
    if passphrase_file is not None and passphrase_env is not None:
        raise KeyFileError("give at most one of --passphrase-file and --passphrase-env")
    if passphrase_file is not None:
        try:
            raw = passphrase_file.read_bytes()
        except OSError as exc:
            raise KeyFileError(f"cannot read passphrase file {passphrase_file}: {exc.strerror}") from None
        passphrase = raw[:-1] if raw.endswith(b"\n") else raw
        passphrase = passphrase[:-1] if passphrase.endswith(b"\r") else passphrase
    elif passphrase_env is not None:
        value = os.environ.get(passphrase_env)
        if value is None:
            raise KeyFileError(f"environment variable {passphrase_env} is not set")
        passphrase = value.encode("utf-8")
    else:
        return None
    if len(passphrase) < MIN_PASSPHRASE_BYTES:
        raise KeyFileError(f"the passphrase must be at least {MIN_PASSPHRASE_BYTES} bytes")
    return passphrase


def generate_key_file(path: Path, *, passphrase: bytes | None = None, overwrite: bool = False) -> GeneratedKey:
    """Create a new Ed25519 identity key at ``path`` (mode 0600) and its ``.pub`` file."""
    public_path = path.with_name(path.name + PUBLIC_KEY_SUFFIX)
    if not overwrite:
        for existing in (path, public_path):
            if existing.exists():
                raise KeyFileError(f"{existing} already exists; refusing to overwrite it (use --force to replace it)")
    private = Ed25519PrivateKey.generate()
    encryption = BestAvailableEncryption(passphrase) if passphrase else NoEncryption()
    pem = private.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, encryption)
    public_bytes = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    try:
        write_private_file(path, pem, overwrite=overwrite)
    except PrivateFileExists:
        raise KeyFileError(f"{path} already exists; refusing to overwrite it (use --force to replace it)") from None
    except OSError as exc:
        raise KeyFileError(f"cannot write {path}: {exc.strerror}") from None
    write_atomic(public_path, public_key_file_bytes(public_bytes), mode=PUBLIC_MODE)
    return GeneratedKey(key_path=path, public_key_path=public_path, public_key_hex=public_bytes.hex())


def load_identity_key(path: Path, *, passphrase: bytes | None = None) -> SigningKey:
    """The :class:`~secagg.hazmat.keys.SigningKey` stored at ``path``."""
    try:
        pem = read_private_file(path)
    except NotPrivate as exc:
        raise KeyFileError(str(exc)) from None
    except OSError as exc:
        raise KeyFileError(f"cannot read key file {path}: {exc.strerror}") from None
    try:
        private = load_pem_private_key(pem, password=passphrase)
    except TypeError:
        if passphrase is None:
            raise KeyFileError(f"{path} is encrypted: give its passphrase (--passphrase-file or --passphrase-env)") from None
        raise KeyFileError(f"{path} is not encrypted but a passphrase was given") from None
    except ValueError:
        raise KeyFileError(f"cannot load {path}: not a PEM private key, or the passphrase is wrong") from None
    if not isinstance(private, Ed25519PrivateKey):
        raise KeyFileError(f"{path} holds a {type(private).__name__}, not an Ed25519 identity key")
    return SigningKey.from_private_bytes(private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption()))
