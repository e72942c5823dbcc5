"""The bank client against hostile servers over real loopback sockets.

A colluding bank's signed small-order key is a named protocol refusal (exit 4, tombstone,
and a rerun is refused as finished, never a usage error); a server that trickles its
answer is cut off at the request's total deadline; an answer far above the round's
largest server message is refused before it is buffered.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from clients.runtime.errors import ExitCode, ServerRefused, ServerUnavailable
from clients.runtime.http_transport import RESPONSE_TOO_LARGE, HttpTransport
from clients.runtime.retry import RetryPolicy
from clients.runtime.transport import Delivered
from secagg.hazmat.keys import SigningKey
from secagg.hazmat.randomness import DeterministicRandom
from secagg.http_contract import max_server_message_bytes
from secagg.rounds import Round
from secagg_cli import app
from tests.clients.hostile_http import ColludingRoundServer, ScriptedServer, answer, description, response_head, trickle

IDENTITY = SigningKey.generate(DeterministicRandom.from_int(61))
ROUND = "cd" * 16


def test_a_colluding_banks_signed_small_order_key_is_a_protocol_abort_with_a_tombstone_and_no_usage_error(
    tmp_path: Path,
) -> None:
    runner = CliRunner()
    keygen = runner.invoke(app, ["client", "keygen", "--out", str(tmp_path / "bank.key")])
    assert keygen.exit_code == 0, keygen.output
    key_path = tmp_path / "bank.key"
    from clients.runtime.keyfile import load_identity_key

    colluding = ColludingRoundServer(load_identity_key(key_path, passphrase=None).public_bytes)
    np.save(tmp_path / "update.npy", np.arange(colluding.config.dim, dtype=np.uint32))
    policy = tmp_path / "policy.toml"
    policy.write_text('min_cohort_size = 4\nrequired_mode = "active"\n')
    state_dir = tmp_path / "state"
    arguments = [
        "client", "run", "--server", colluding.http.base_url, "--key", str(key_path), "--round", colluding.round_id,
        "--input", str(tmp_path / "update.npy"), "--participant-id", "bank-under-test", "--policy", str(policy),
        "--state-dir", str(state_dir), "--timeout", "20",
    ]  # fmt: skip
    with colluding.http:
        first = runner.invoke(app, arguments)
        assert first.exit_code == ExitCode.PROTOCOL_ABORTED, first.output
        assert "invalid-public-key" in first.output
        [state_file] = list(state_dir.iterdir())
        document = json.loads(state_file.read_text())
        assert document["status"] == "finished"
        assert document["outcome"] == "refused: invalid-public-key"
        assert "secret_seed" not in document and "received" not in document
        rerun = runner.invoke(app, arguments)
    assert rerun.exit_code == ExitCode.RESUME_REFUSED, rerun.output
    assert "already finished" in rerun.output


def _transport(base_url: str, *, deadline: float = 60.0) -> HttpTransport:
    return HttpTransport(
        base_url,
        key_id="bank-a",
        identity=IDENTITY,
        retry=RetryPolicy(max_attempts=1),
        long_poll_seconds=0,
        request_deadline_seconds=deadline,
    )


TRICKLED_BODY = b"\x00" * 60


def _trickled_head(server: ScriptedServer, head: bytes, body: bytes, connection) -> None:
    trickle(server, connection, response_head(200, {"Content-Length": str(len(TRICKLED_BODY))}) + TRICKLED_BODY, interval=0.1)


def _trickled_body(server: ScriptedServer, head: bytes, body: bytes, connection) -> None:
    server.send(connection, response_head(200, {"Content-Length": str(len(TRICKLED_BODY))}))
    trickle(server, connection, TRICKLED_BODY, interval=0.15)


@pytest.mark.parametrize("script", [_trickled_head, _trickled_body], ids=["trickled-head", "trickled-body"])
def test_an_answer_trickled_below_every_read_timeout_is_cut_off_at_the_requests_total_deadline(script) -> None:
    holder: list[ScriptedServer] = []
    server = ScriptedServer(lambda head, body, connection: script(holder[0], head, body, connection))
    holder.append(server)
    with server, _transport(server.base_url, deadline=1.5) as transport:
        started = time.monotonic()
        with pytest.raises(ServerUnavailable, match="ReadTimeout"):
            transport.fetch(ROUND, Round.SHARE_KEYS)
        gave_up_after = time.monotonic() - started
        assert not server.finished_sending.is_set(), "the client read the trickled answer to its end"
    assert gave_up_after < 8  # the trickle alone lasts well over that


SIXTY_FOUR_MIB = 64 * 1024 * 1024


def test_a_64_mib_message_is_refused_before_it_is_buffered() -> None:
    from secagg.config import RoundConfig

    config = RoundConfig(
        round_id=bytes.fromhex(ROUND),
        identity_keys=tuple(SigningKey.generate(DeterministicRandom.from_int(70 + i)).public_bytes for i in range(3)),
        threshold=3,
        dim=8,
        bits=32,
        mode="active",
        graph="full",
    )
    members = ["bank-a", "bank-b", "bank-c"]

    def script(head: bytes, body: bytes, connection) -> None:
        if b"/messages/me" not in head:
            answer(
                server, connection, 200, json.dumps(description(config, members, "R1-share-keys")).encode(), "application/json"
            )
            return
        # No Content-Length (chunk-free, close-delimited): the client cannot refuse from the headers.
        server.send(connection, b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n")
        block = b"\x00" * 65536
        for _ in range(SIXTY_FOUR_MIB // len(block)):
            server.send(connection, block)
        connection.close()

    server = ScriptedServer(script)
    with server, _transport(server.base_url) as transport:
        transport.describe_round(ROUND)
        with pytest.raises(ServerRefused) as refused:
            transport.fetch(ROUND, Round.SHARE_KEYS)
        assert refused.value.problem_type == RESPONSE_TOO_LARGE
        assert str(max_server_message_bytes(3)) in refused.value.detail
        server.finished_sending.wait(10)
    assert server.sent_bytes < SIXTY_FOUR_MIB // 4, "the client kept reading far past its cap"


def test_an_answer_within_the_cap_and_the_deadline_is_delivered() -> None:
    payload = b"\x01" * 100

    def script(head: bytes, body: bytes, connection) -> None:
        answer(server, connection, 200, payload, "application/octet-stream")

    server = ScriptedServer(script)
    with server, _transport(server.base_url) as transport:
        assert transport.fetch(ROUND, Round.SHARE_KEYS) == Delivered(payload)
