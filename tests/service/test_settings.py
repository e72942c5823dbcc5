"""Settings refuse unsafe configurations outside development mode; the CLI refuses to start with them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from service.settings import ServiceSettings, load_settings

GOOD_TOKEN = "k" * 40


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("SECAGG_"):
            monkeypatch.delenv(name)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({}, "no admin token"),
        ({"admin_token": "changeme"}, "well-known default"),
        ({"admin_token": "short-token"}, "shorter than 32"),
        ({"admin_token": GOOD_TOKEN, "require_signatures": False}, "signatures are disabled"),
        ({"admin_token": GOOD_TOKEN, "max_clock_skew_seconds": 3600}, "clock-skew window"),
        ({"admin_token": GOOD_TOKEN, "host": "0.0.0.0"}, "without TLS"),
        ({"admin_token": GOOD_TOKEN, "tls_cert": "cert.pem"}, "go together"),
    ],
    ids=["no-token", "default-token", "short-token", "auth-disabled", "wide-skew", "plaintext-public", "half-tls"],
)
def test_unsafe_setting_is_refused_outside_dev_mode(overrides: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        load_settings(**overrides)


def test_dev_mode_accepts_missing_token_and_writes_a_random_one(tmp_path: Path) -> None:
    settings = load_settings(dev=True, data_dir=tmp_path)
    token = settings.read_admin_token().get_secret_value()
    assert len(token) >= 32
    assert (tmp_path / "admin-token").stat().st_mode & 0o777 == 0o600
    assert load_settings(dev=True, data_dir=tmp_path).read_admin_token().get_secret_value() == token


def test_settings_come_from_secagg_prefixed_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SECAGG_ADMIN_TOKEN", GOOD_TOKEN)
    monkeypatch.setenv("SECAGG_PORT", "9123")
    settings = ServiceSettings()
    assert settings.port == 9123
    assert GOOD_TOKEN not in repr(settings)


def test_proxy_terminated_tls_allows_a_public_listener() -> None:
    assert load_settings(admin_token=GOOD_TOKEN, host="0.0.0.0", tls_terminated_by_proxy=True).host == "0.0.0.0"


def test_token_file_with_a_weak_token_is_refused(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("admin\n")
    with pytest.raises(ValueError, match="well-known"):
        load_settings(admin_token_file=token_file).read_admin_token()


def test_server_command_without_admin_token_exits_before_listening(tmp_path: Path) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "service", "--port", "0", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin"},
        cwd=Path(__file__).resolve().parents[2],
    )
    assert completed.returncode == 2
    assert "no admin token" in completed.stderr
