"""Key files: created 0600 and atomically, never overwritten by accident, passphrase round-trip."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from clients.runtime.errors import KeyFileError
from clients.runtime.keyfile import generate_key_file, load_identity_key, read_passphrase
from secagg_cli import app


def test_generated_key_file_has_mode_0600_and_public_key_matches(tmp_path: Path) -> None:
    generated = generate_key_file(tmp_path / "bank.key")
    assert stat.S_IMODE(os.stat(generated.key_path).st_mode) == 0o600
    key = load_identity_key(generated.key_path)
    assert bytes.fromhex(generated.public_key_hex) == key.public_bytes
    assert generated.public_key_path.read_text() == generated.public_key_hex + "\n"
    assert b"BEGIN PRIVATE KEY" in generated.key_path.read_bytes()


def test_two_generated_keys_differ(tmp_path: Path) -> None:
    first = generate_key_file(tmp_path / "a.key")
    second = generate_key_file(tmp_path / "b.key")
    assert first.public_key_hex != second.public_key_hex


def test_passphrase_round_trip_and_wrong_or_missing_passphrase_refused(tmp_path: Path) -> None:
    generated = generate_key_file(tmp_path / "bank.key", passphrase=b"correct horse battery")
    assert b"BEGIN ENCRYPTED PRIVATE KEY" in generated.key_path.read_bytes()
    key = load_identity_key(generated.key_path, passphrase=b"correct horse battery")
    assert key.public_bytes.hex() == generated.public_key_hex
    with pytest.raises(KeyFileError, match="passphrase is wrong"):
        load_identity_key(generated.key_path, passphrase=b"wrong horse battery")
    with pytest.raises(KeyFileError, match="is encrypted"):
        load_identity_key(generated.key_path)


def test_existing_key_is_not_overwritten_without_force(tmp_path: Path) -> None:
    path = tmp_path / "bank.key"
    generate_key_file(path)
    before = path.read_bytes()
    with pytest.raises(KeyFileError, match="refusing to overwrite"):
        generate_key_file(path)
    assert path.read_bytes() == before
    replaced = generate_key_file(path, overwrite=True)
    assert path.read_bytes() != before
    assert stat.S_IMODE(os.stat(replaced.key_path).st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bank.key", "bank.key.pub"]


def test_group_readable_key_file_is_refused(tmp_path: Path) -> None:
    path = generate_key_file(tmp_path / "bank.key").key_path
    path.chmod(0o640)
    with pytest.raises(KeyFileError, match="must not be accessible"):
        load_identity_key(path)


def test_short_passphrase_and_two_passphrase_sources_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    short = tmp_path / "short"
    short.write_text("abc\n")
    with pytest.raises(KeyFileError, match="at least"):
        read_passphrase(passphrase_file=short)
    monkeypatch.setenv("BANK_PASS", "long enough passphrase")
    with pytest.raises(KeyFileError, match="at most one"):
        read_passphrase(passphrase_file=short, passphrase_env="BANK_PASS")
    assert read_passphrase(passphrase_env="BANK_PASS") == b"long enough passphrase"


def test_cli_keygen_with_passphrase_env_prints_public_key_and_refuses_second_run(tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "bank.key"
    env = {"BANK_PASS": "a long passphrase"}
    result = runner.invoke(app, ["client", "keygen", "--out", str(out), "--passphrase-env", "BANK_PASS"], env=env)
    assert result.exit_code == 0, result.output
    key = load_identity_key(out, passphrase=b"a long passphrase")
    assert key.public_bytes.hex() in result.stdout
    again = runner.invoke(app, ["client", "keygen", "--out", str(out), "--passphrase-env", "BANK_PASS"], env=env)
    assert again.exit_code == 9


def test_the_public_key_file_keygen_writes_is_the_one_every_command_reads(tmp_path: Path) -> None:
    """One public-key file format: what keygen writes, the audit reads, and the server exports its ledger key in."""
    from clients.runtime.keyfile import load_public_key_file
    from dp.audit.chain import load_public_key
    from service.ledger import load_or_create_signing_key, public_key_path

    generated = generate_key_file(tmp_path / "bank.key")
    key = load_identity_key(generated.key_path)
    assert load_public_key(generated.public_key_path) == key.public_bytes  # secagg audit --public-key
    assert load_public_key_file(generated.public_key_path) == key.public_bytes  # manifest and enrolment
    server_key = load_or_create_signing_key(tmp_path / "server-ledger.key")
    exported = public_key_path(tmp_path / "server-ledger.key")
    assert exported.read_bytes() == server_key.public_bytes.hex().encode() + b"\n"
    assert len(generated.public_key_path.read_bytes()) == len(exported.read_bytes()) == 65
    assert load_public_key_file(exported) == server_key.public_bytes
