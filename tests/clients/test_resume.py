"""Crash and resume: byte-identical messages, never two different masked inputs for one round."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from clients.runtime.errors import ClientRefusedRound, ResumeRefused, ServerRefused, StateFileError
from clients.runtime.inputs import RealVectorInput, RingVectorInput
from clients.runtime.runner import Outcome
from clients.runtime.state import StateStore
from secagg.config import ProtocolMode
from secagg.rounds import Round
from tests.clients.conftest import run_against
from tests.clients.fake_server import FakeRoundServer


class SimulatedCrash(Exception):
    """The client process dies here."""


class CrashingTransport:
    """Forwards to the fake server and crashes at the ``crash_at``-th call, before or after forwarding it."""

    def __init__(self, server: FakeRoundServer, crash_at: int, after: bool) -> None:
        self.server = server
        self.crash_at = crash_at
        self.after = after
        self.count = 0
        self.endpoint = server.endpoint

    def _call(self, method, *args):
        index = self.count
        self.count += 1
        if index == self.crash_at and not self.after:
            raise SimulatedCrash(f"before call {index}")
        result = method(*args)
        if index == self.crash_at:
            raise SimulatedCrash(f"after call {index}")
        return result

    def __getattr__(self, name):
        return getattr(self.server, name)

    def describe_round(self, round_id):
        return self._call(self.server.describe_round, round_id)

    def submit(self, round_id, protocol_round, payload):
        return self._call(self.server.submit, round_id, protocol_round, payload)

    def fetch(self, round_id, protocol_round):
        return self._call(self.server.fetch, round_id, protocol_round)

    def fetch_result(self, round_id):
        return self._call(self.server.fetch_result, round_id)


def _transport_calls_of_a_full_run(mode: ProtocolMode) -> int:
    server = FakeRoundServer(mode=mode)
    probe = CrashingTransport(server, crash_at=-1, after=False)
    import tempfile

    from clients.runtime.inputs import RingVectorInput
    from clients.runtime.policy import ClientPolicy
    from clients.runtime.runner import run_round

    with tempfile.TemporaryDirectory() as directory:
        run_round(
            transport=probe,
            round_id=server.round_id,
            identity=server.identity,
            client_input=RingVectorInput(server.inputs[server.member]),
            policy=ClientPolicy(required_mode=mode),
            state_dir=Path(directory),
            sleep=lambda s: None,
        )
    return probe.count


def _assert_one_message_per_round(server: FakeRoundServer) -> None:
    for protocol_round, payloads in server.submissions.items():
        assert len(set(payloads)) == 1, f"two different {protocol_round.key} messages were sent"


CALLS_ACTIVE = _transport_calls_of_a_full_run(ProtocolMode.ACTIVE)
CALLS_HBC = _transport_calls_of_a_full_run(ProtocolMode.HONEST_BUT_CURIOUS)


@pytest.mark.parametrize("after", [False, True], ids=["before-call", "after-call"])
@pytest.mark.parametrize(
    ("mode", "crash_at"),
    [(ProtocolMode.ACTIVE, k) for k in range(1, CALLS_ACTIVE - 1)]
    + [(ProtocolMode.HONEST_BUT_CURIOUS, k) for k in range(1, CALLS_HBC - 1)],
)
def test_crash_at_any_transport_call_then_resume_sends_identical_messages_and_exact_sum(
    mode: ProtocolMode, crash_at: int, after: bool, state_dir: Path
) -> None:
    from clients.runtime.policy import ClientPolicy

    server = FakeRoundServer(mode=mode)
    policy = ClientPolicy(required_mode=mode)
    with pytest.raises(SimulatedCrash):
        run_against(CrashingTransport(server, crash_at, after), state_dir, policy=policy)
    outcome = run_against(server, state_dir, policy=policy)
    assert outcome.outcome is Outcome.COMPLETED
    assert outcome.resumed
    assert np.array_equal(outcome.result.vector, server.expected_sum())
    assert server.member in server.server.survivors
    _assert_one_message_per_round(server)
    resubmitted = sum(len(payloads) - 1 for payloads in server.submissions.values())
    assert resubmitted <= 1


@pytest.mark.parametrize("crash_at_save", range(0, 6))
def test_crash_while_writing_state_then_resume_never_sends_two_different_messages(
    crash_at_save: int, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = FakeRoundServer()
    original_save = StateStore.save
    saves = {"count": 0}

    def crashing_save(self, state):
        if saves["count"] == crash_at_save:
            raise SimulatedCrash("while saving")
        saves["count"] += 1
        original_save(self, state)

    monkeypatch.setattr(StateStore, "save", crashing_save)
    with pytest.raises(SimulatedCrash):
        run_against(server, state_dir)
    monkeypatch.setattr(StateStore, "save", original_save)
    if crash_at_save == 0:
        assert server.calls == ["describe"], "nothing may be sent before the state is durable"
    outcome = run_against(server, state_dir)
    assert np.array_equal(outcome.result.vector, server.expected_sum())
    _assert_one_message_per_round(server)


def test_resume_with_changed_input_is_refused_and_sends_nothing(state_dir: Path) -> None:
    server = FakeRoundServer()
    with pytest.raises(SimulatedCrash):
        run_against(CrashingTransport(server, crash_at=5, after=True), state_dir)
    sent_before = {k: list(v) for k, v in server.submissions.items()}
    changed = server.inputs[server.member].copy()
    changed[0] ^= 1
    with pytest.raises(ResumeRefused, match="input changed"):
        run_against(server, state_dir, client_input=RingVectorInput(changed))
    assert dict(server.submissions) == sent_before
    assert Round.MASKED_INPUT_COLLECTION in server.submissions
    outcome = run_against(server, state_dir)
    assert np.array_equal(outcome.result.vector, server.expected_sum())
    _assert_one_message_per_round(server)


def test_finished_round_leaves_a_tombstone_without_secrets_and_is_never_run_again(state_dir: Path) -> None:
    server = FakeRoundServer()
    outcome = run_against(server, state_dir)
    assert stat.S_IMODE(os.stat(outcome.state_file).st_mode) == 0o600
    document = json.loads(outcome.state_file.read_text())
    assert document["status"] == "finished" and document["outcome"] == "completed"
    assert not any(key.startswith("secret") or key == "received" for key in document)
    assert len(document["sent_sha256"]) == 5
    with pytest.raises(ResumeRefused, match="already finished"):
        run_against(server, state_dir)


def test_in_progress_state_file_is_private_and_holds_the_seed(state_dir: Path) -> None:
    server = FakeRoundServer()
    with pytest.raises(SimulatedCrash):
        run_against(CrashingTransport(server, crash_at=3, after=False), state_dir)
    [path] = list(state_dir.iterdir())
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(state_dir).st_mode) == 0o700
    document = json.loads(path.read_text())
    assert document["status"] == "in-progress" and "secret_seed" in document
    path.chmod(0o644)
    with pytest.raises(StateFileError, match="must not be accessible"):
        run_against(server, state_dir)


def test_tampered_state_whose_replay_diverges_is_refused(state_dir: Path) -> None:
    server = FakeRoundServer()
    with pytest.raises(SimulatedCrash):
        run_against(CrashingTransport(server, crash_at=5, after=True), state_dir)
    [path] = list(state_dir.iterdir())
    document = json.loads(path.read_text())
    document["sent_sha256"][1] = "00" * 32
    path.write_text(json.dumps(document))
    path.chmod(0o600)
    with pytest.raises(ResumeRefused, match="differs"):
        run_against(server, state_dir)


def test_real_input_is_re_encoded_identically_after_a_crash(state_dir: Path) -> None:
    server = FakeRoundServer()
    values = np.linspace(-0.9, 0.9, server.dim)
    real = RealVectorInput(values, clip=1.0)
    encoded = real.encoding_for(server.config)
    server.inputs[server.member] = np.zeros(server.dim, dtype=server.config.ring.dtype)
    with pytest.raises(SimulatedCrash):
        run_against(CrashingTransport(server, crash_at=5, after=True), state_dir, client_input=real)
    outcome = run_against(server, state_dir, client_input=real)
    _assert_one_message_per_round(server)
    others = server.expected_sum()
    contribution = server.config.ring.to_signed(outcome.result.vector - others) / encoded.scale
    assert np.allclose(contribution, values, atol=1.0 / encoded.scale)


def test_core_refusal_of_a_tampered_server_message_is_reported_by_name(state_dir: Path) -> None:
    server = FakeRoundServer()
    original_fetch = server.fetch

    def tampering_fetch(round_id, protocol_round):
        delivery = original_fetch(round_id, protocol_round)
        if protocol_round is Round.ADVERTISE_KEYS and hasattr(delivery, "payload"):
            payload = bytearray(delivery.payload)
            payload[-1] ^= 1  # the last entry's signature
            return type(delivery)(bytes(payload))
        return delivery

    server.fetch = tampering_fetch
    with pytest.raises(ClientRefusedRound) as refused:
        run_against(server, state_dir)
    assert refused.value.reason == "invalid-signature"
    assert Round.SHARE_KEYS not in server.submissions
    with pytest.raises(ResumeRefused, match="refused: invalid-signature"):
        run_against(server, state_dir)


def test_server_refusing_a_different_resubmission_is_reported_not_retried(state_dir: Path) -> None:
    server = FakeRoundServer()
    server.accepted[Round.ADVERTISE_KEYS] = b"some other message"
    with pytest.raises(ServerRefused) as refused:
        run_against(server, state_dir)
    assert refused.value.problem_type == "duplicate-submission"
    assert server.calls.count("submit R0") == 1
