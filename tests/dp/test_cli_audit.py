"""``secagg audit verify`` and ``secagg audit report`` through typer's CliRunner."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dp.audit.cli import audit_app
from tests.dp.test_report import PARTIES, Scenario, build_scenario, party_key

runner = CliRunner()


def plain(output: str) -> str:
    """CLI output with rich's error-box borders removed and whitespace collapsed."""
    return " ".join(output.replace("│", " ").replace("╭", " ").replace("╰", " ").replace("─", " ").split())


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Scenario:
    return build_scenario(tmp_path_factory.mktemp("cli-audit"))


@pytest.fixture(scope="module")
def key_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("keys")
    files = {}
    for party in (*PARTIES, "server"):
        files[party] = directory / f"{party}.pub"
        files[party].write_text(party_key(party).public_bytes.hex() + "\n")
    return files


def tampered_copy(scenario: Scenario, directory: Path) -> Path:
    """bank-b's ledger with entry 2's round renamed (no re-hash), beside its original head."""
    copy = directory / "bank-b.jsonl"
    lines = scenario.ledgers[1].read_bytes().splitlines(keepends=True)
    lines[2] = lines[2].replace(b'"round":"round-1"', b'"round":"round-9"')
    copy.write_bytes(b"".join(lines))
    (directory / "bank-b.jsonl.head").write_bytes(Path(f"{scenario.ledgers[1]}.head").read_bytes())
    return copy


def test_verify_intact_ledgers_exits_zero(scenario: Scenario) -> None:
    result = runner.invoke(audit_app, ["verify", *map(str, scenario.ledgers), "--server-ledger", str(scenario.server)])
    assert result.exit_code == 0, result.output
    assert result.output.count("OK ") == 4
    assert "key NOT pinned" in result.output


def test_verify_names_the_tampered_entry_and_exits_one(scenario: Scenario, tmp_path: Path) -> None:
    result = runner.invoke(audit_app, ["verify", str(tampered_copy(scenario, tmp_path))])
    assert result.exit_code == 1
    assert "FAIL" in result.output and "entry 2: hash-mismatch" in result.output


def test_verify_json_reports_findings_with_kind_and_index(scenario: Scenario, tmp_path: Path) -> None:
    result = runner.invoke(audit_app, ["verify", "--json", str(scenario.ledgers[0]), str(tampered_copy(scenario, tmp_path))])
    assert result.exit_code == 1
    payload = json.loads(result.output.strip().splitlines()[-1])
    assert payload["ok"] is False
    assert [ledger["ok"] for ledger in payload["ledgers"]] == [True, False]
    assert {"kind": "hash-mismatch", "index": 2} in [
        {"kind": finding["kind"], "index": finding["index"]} for finding in payload["ledgers"][1]["findings"]
    ]


def test_verify_with_the_right_pinned_key_passes_and_a_wrong_one_fails(scenario: Scenario, key_files: dict[str, Path]) -> None:
    pinned = runner.invoke(audit_app, ["verify", str(scenario.ledgers[0]), "--public-key", str(key_files["bank-a"])])
    assert pinned.exit_code == 0 and "key pinned" in pinned.output
    wrong = runner.invoke(audit_app, ["verify", str(scenario.ledgers[0]), "--public-key", str(key_files["bank-b"])])
    assert wrong.exit_code == 1 and "wrong-key" in wrong.output and "bad-signature" in wrong.output


def test_verify_pins_keys_per_party(scenario: Scenario, key_files: dict[str, Path]) -> None:
    arguments = ["verify", "--json", *map(str, scenario.ledgers)]
    for party in PARTIES:
        arguments += ["--public-key", f"{party}={key_files[party]}"]
    arguments += ["--server-ledger", str(scenario.server), "--server-public-key", str(key_files["server"])]
    result = runner.invoke(audit_app, arguments)
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    assert all(ledger["key_pinned"] for ledger in payload["ledgers"]) and payload["server_ledger"]["key_pinned"]


def test_swapped_party_keys_fail(scenario: Scenario, key_files: dict[str, Path]) -> None:
    result = runner.invoke(
        audit_app,
        [
            "verify",
            str(scenario.ledgers[0]),
            str(scenario.ledgers[1]),
            "--public-key",
            f"bank-a={key_files['bank-b']}",
            "--public-key",
            f"bank-b={key_files['bank-a']}",
        ],
    )
    assert result.exit_code == 1 and result.output.count("wrong-key") == 2


def test_bare_key_with_several_ledgers_is_a_usage_error(scenario: Scenario, key_files: dict[str, Path]) -> None:
    result = runner.invoke(audit_app, ["verify", *map(str, scenario.ledgers[:2]), "--public-key", str(key_files["bank-a"])])
    assert result.exit_code == 2
    assert "with several ledgers, write PARTY=FILE" in plain(result.output)


def test_unreadable_key_and_missing_ledger_are_usage_errors(scenario: Scenario, tmp_path: Path) -> None:
    bad_key = tmp_path / "bad.pub"
    bad_key.write_text("not a key")
    assert runner.invoke(audit_app, ["verify", str(scenario.ledgers[0]), "--public-key", str(bad_key)]).exit_code == 2
    assert runner.invoke(audit_app, ["verify", str(tmp_path / "absent.jsonl")]).exit_code == 2


def test_cross_check_failure_through_the_cli(scenario: Scenario, tmp_path: Path) -> None:
    truncated = tmp_path / "bank-a.jsonl"
    from dp.audit.privacy_ledger import PrivacyLedger

    PrivacyLedger.open(truncated, party_id="bank-a", signing_key=party_key("bank-a")).close()
    result = runner.invoke(audit_app, ["verify", str(truncated), "--server-ledger", str(scenario.server)])
    assert result.exit_code == 1
    assert "cross-check bank-a, round round-0: spend-missing-for-round" in result.output


@pytest.mark.parametrize("report_format", ["html", "json", "csv"])
def test_report_writes_each_format_and_prints_the_verdict(scenario: Scenario, tmp_path: Path, report_format: str) -> None:
    out = tmp_path / f"report.{report_format}"
    result = runner.invoke(
        audit_app,
        [
            "report",
            *map(str, scenario.ledgers),
            "--server-ledger",
            str(scenario.server),
            "--out",
            str(out),
            "--format",
            report_format,
        ],
    )
    assert result.exit_code == 0, result.output
    verdict = result.output.splitlines()[0]
    assert verdict.startswith("3 ledgers verify")
    text = out.read_text()
    if report_format == "html":
        assert text.startswith("<!DOCTYPE html>") and "data:image/png;base64," in text
    elif report_format == "json":
        assert json.loads(text)["verdict"] == verdict
    else:
        assert next(csv.DictReader(io.StringIO(text)))["detail"] == verdict


def test_report_of_a_failing_ledger_is_written_and_exits_one(scenario: Scenario, tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    result = runner.invoke(audit_app, ["report", str(tampered_copy(scenario, tmp_path)), "--out", str(out), "--format", "json"])
    assert result.exit_code == 1
    assert json.loads(out.read_text())["verdict"].startswith("VERIFICATION FAILED")


def test_report_refuses_an_unknown_format_and_writes_nothing(scenario: Scenario, tmp_path: Path) -> None:
    out = tmp_path / "report.xml"
    result = runner.invoke(audit_app, ["report", str(scenario.ledgers[0]), "--out", str(out), "--format", "xml"])
    assert result.exit_code == 2
    assert not out.exists()


def test_verification_and_report_import_neither_torch_nor_opacus(scenario: Scenario, tmp_path: Path) -> None:
    import subprocess
    import sys

    program = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from dp.audit.cli import audit_app\n"
        f"result = CliRunner().invoke(audit_app, ['report', {str(scenario.ledgers[0])!r}, '--out', {str(tmp_path / 'r.html')!r}])\n"
        "assert result.exit_code == 0, result.output\n"
        "print(sorted(name for name in ('torch', 'opacus', 'scipy') if name in sys.modules))\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parents[2]
    )
    assert completed.stdout.strip() == "[]"


def test_anchor_kept_from_an_earlier_audit_catches_a_roll_back(scenario: Scenario, tmp_path: Path) -> None:
    ledger = tmp_path / "bank-a.jsonl"
    lines = scenario.ledgers[0].read_bytes().splitlines(keepends=True)
    ledger.write_bytes(b"".join(lines))
    (tmp_path / "bank-a.jsonl.head").write_bytes(Path(f"{scenario.ledgers[0]}.head").read_bytes())
    anchor = tmp_path / "audit-2026-q1-bank-a.head"
    anchor.write_bytes((tmp_path / "bank-a.jsonl.head").read_bytes())
    assert runner.invoke(audit_app, ["verify", str(ledger), "--anchor", str(anchor)]).exit_code == 0

    from dp.audit.chain import ChainWriter
    from dp.audit.privacy_ledger import PRIVACY_LEDGER_FORMAT

    ledger.unlink()
    (tmp_path / "bank-a.jsonl.head").unlink()
    with ChainWriter.open(ledger, PRIVACY_LEDGER_FORMAT, owner="bank-a", signing_key=party_key("bank-a")) as writer:
        for line in lines[:3]:
            entry = json.loads(line)
            writer.append({name: entry[name] for name in PRIVACY_LEDGER_FORMAT.body_fields})
    result = runner.invoke(audit_app, ["verify", str(ledger), "--anchor", str(anchor)])
    assert result.exit_code == 1
    assert "anchor-not-extended" in result.output


def test_anchor_matching_no_ledger_is_a_usage_error(scenario: Scenario) -> None:
    server_head = Path(f"{scenario.server}.head")
    result = runner.invoke(audit_app, ["verify", str(scenario.ledgers[0]), "--anchor", str(server_head)])
    assert result.exit_code == 2
    assert "matches no ledger given" in plain(result.output)


def test_two_ledgers_of_one_party_are_a_usage_error(scenario: Scenario, tmp_path: Path) -> None:
    copy = tmp_path / "bank-a-copy.jsonl"
    copy.write_bytes(scenario.ledgers[0].read_bytes())
    result = runner.invoke(audit_app, ["verify", str(scenario.ledgers[0]), str(copy)])
    assert result.exit_code == 2
    assert "one ledger per party" in plain(result.output)


def test_verify_needs_neither_matplotlib_nor_jinja2(scenario: Scenario) -> None:
    """``secagg audit verify`` runs on the base install; only ``report`` needs the audit extra."""
    import subprocess
    import sys

    program = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from dp.audit.cli import audit_app\n"
        f"result = CliRunner().invoke(audit_app, ['verify', *{list(map(str, scenario.ledgers))!r}, '--server-ledger', {str(scenario.server)!r}])\n"
        "assert result.exit_code == 0, result.output\n"
        "print(sorted(name for name in ('matplotlib', 'jinja2') if name in sys.modules))\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parents[2]
    )
    assert completed.stdout.strip() == "[]"
