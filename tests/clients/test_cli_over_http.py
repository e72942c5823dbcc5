"""``secagg client`` and ``secagg simulate --transport http`` end to end against the real server."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from clients.consortium.admin import AdminClient
from clients.harness.http_simulation import run_http_simulation
from clients.harness.local_server import LocalServer
from clients.harness.simulation import DropoutRound, SimulationParameters
from clients.runtime.bank import run_bank_round
from clients.runtime.retry import PollSchedule
from secagg.hazmat.keys import SigningKey
from secagg.hazmat.randomness import DeterministicRandom
from secagg_cli import app

DIM = 32


@pytest.fixture(scope="module")
def server():
    with LocalServer() as handle:
        yield handle


def test_cli_keygen_then_run_completes_the_round_and_prints_a_summary(server, tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["client", "keygen", "--out", str(tmp_path / "bank.key")])
    assert result.exit_code == 0, result.output
    cli_public_key = bytes.fromhex(result.stdout.strip())
    others = [SigningKey.generate(DeterministicRandom.from_int(30 + i)) for i in range(3)]
    names = ["cli-bank", "cli-other-0", "cli-other-1", "cli-other-2"]
    with AdminClient(server.base_url, server.admin_token) as admin:
        admin.enroll(names[0], cli_public_key)
        for name, key in zip(names[1:], others, strict=True):
            admin.enroll(name, key.public_bytes)
        round_id = admin.create_round(
            {"cohort": names, "threshold": 3, "mode": "active", "graph": "full", "degree": None, "dim": DIM, "bits": 32}
        )["round_id"]
    inputs = [np.arange(DIM, dtype=np.uint32) * np.uint32(k + 1) for k in range(4)]
    np.save(tmp_path / "update.npy", inputs[0])
    policy = tmp_path / "policy.toml"
    policy.write_text('min_cohort_size = 4\nrequired_mode = "active"\nallowed_bits = [32]\n')

    def other(member: int) -> None:
        run_bank_round(
            server=server.base_url, participant_id=names[member], identity=others[member - 1], round_id=round_id,
            update=inputs[member], state_dir=tmp_path / names[member],
            poll=PollSchedule(initial_interval=0.05, max_interval=0.5, timeout=120),
        )  # fmt: skip

    threads = [threading.Thread(target=other, args=(member,)) for member in (1, 2, 3)]
    for thread in threads:
        thread.start()
    arguments = [
        "client", "run", "--server", server.base_url, "--key", str(tmp_path / "bank.key"), "--round", round_id,
        "--input", str(tmp_path / "update.npy"), "--participant-id", names[0], "--policy", str(policy),
        "--state-dir", str(tmp_path / "state"), "--json",
    ]  # fmt: skip
    result = runner.invoke(app, arguments)
    for thread in threads:
        thread.join(timeout=120)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["outcome"] == "completed" and summary["survivors"] == [0, 1, 2, 3]
    assert summary["participant_index"] == 0 and not summary["resumed"]
    again = runner.invoke(app, arguments)
    assert again.exit_code == 6, again.output


def test_cli_run_refused_by_policy_exits_3_and_sends_nothing(server, tmp_path: Path) -> None:
    keys = [SigningKey.generate(DeterministicRandom.from_int(40 + i)) for i in range(3)]
    names = [f"policy-cli-{i}" for i in range(3)]
    with AdminClient(server.base_url, server.admin_token) as admin:
        for name, key in zip(names, keys, strict=True):
            admin.enroll(name, key.public_bytes)
        round_id = admin.create_round(
            {
                "cohort": names,
                "threshold": 2,
                "mode": "honest-but-curious",
                "graph": "full",
                "degree": None,
                "dim": DIM,
                "bits": 32,
            }
        )["round_id"]
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

    key_path = tmp_path / "bank.key"
    pem = Ed25519PrivateKey.from_private_bytes(keys[0].private_bytes).private_bytes(
        Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()
    )
    key_path.write_bytes(pem)
    key_path.chmod(0o600)
    np.save(tmp_path / "update.npy", np.zeros(DIM, dtype=np.uint32))
    result = CliRunner().invoke(
        app,
        [
            "client",
            "run",
            "--server",
            server.base_url,
            "--key",
            str(key_path),
            "--round",
            round_id,
            "--input",
            str(tmp_path / "update.npy"),
            "--participant-id",
            names[0],
            "--state-dir",
            str(tmp_path / "state"),
        ],
    )
    assert result.exit_code == 3, result.output
    assert "mode-not-allowed" in result.output
    with AdminClient(server.base_url, server.admin_token) as admin:
        assert admin.round_status(round_id)["responded"] == []


def test_http_simulation_with_dropouts_at_r1_verifies_the_survivors_sum() -> None:
    report = run_http_simulation(
        SimulationParameters(
            clients=6, dim=3000, dropout=0.2, dropout_round=DropoutRound.R1, seed=3, silence_seconds=2.0, chunk_bytes=4096
        )
    )
    assert report.verified and report.transport == "http"
    assert report.dropped == 1 and report.survivors == 5
    assert report.outcome == "completed"
    assert report.chunk_bytes == 4096 and report.unmask_tasks == 3  # 12,000 bytes in chunks of 4 KiB
    assert report.engine == "local" and report.server_peak_rss_bytes is not None and report.server_peak_rss_bytes > 0
    assert report.r4_completing_request_seconds is not None and report.r4_completing_request_seconds > 0


def test_simulate_rejects_an_unknown_transport_before_starting_anything() -> None:
    result = CliRunner().invoke(app, ["simulate", "--transport", "carrier-pigeon", "--clients", "3", "--dim", "4"])
    assert result.exit_code == 2
    assert "carrier-pigeon" in result.output
