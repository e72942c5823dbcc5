"""How a round ends for the client: excluded, aborted by the server, timed out; inputs refused cleanly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from clients.runtime.errors import ExcludedFromRound, InputFileError, ResumeRefused, RoundAbortedByServer, ServerUnavailable
from clients.runtime.inputs import RealVectorInput, RingVectorInput, input_from_npy
from clients.runtime.retry import PollSchedule, RetryPolicy
from clients.runtime.transport import Pending
from secagg.errors import AbortReason
from secagg.hazmat.randomness import DeterministicRandom
from secagg.rounds import Round
from tests.clients.conftest import run_against
from tests.clients.fake_server import FakeRoundServer


def _tombstone(state_dir: Path) -> dict:
    [path] = list(state_dir.iterdir())
    return json.loads(path.read_text())


def test_server_abort_while_waiting_is_reported_and_the_round_is_closed_locally(state_dir: Path) -> None:
    server = FakeRoundServer()
    original_submit = server.submit

    def submit_then_abort(round_id, protocol_round, payload):
        outcome = original_submit(round_id, protocol_round, payload)
        if protocol_round is Round.SHARE_KEYS:
            server.server.abort(AbortReason.ABORTED_BY_SERVER, "operator")
        return outcome

    server.submit = submit_then_abort
    with pytest.raises(RoundAbortedByServer, match="aborted-by-server"):
        run_against(server, state_dir)
    assert _tombstone(state_dir)["outcome"] == "aborted-by-server: aborted-by-server"
    assert Round.MASKED_INPUT_COLLECTION not in server.submissions


def test_client_left_out_of_a_stage_is_reported_as_excluded(state_dir: Path) -> None:
    server = FakeRoundServer(n=6, threshold=5)
    original_submit = server.submit

    def late_submit(round_id, protocol_round, payload):
        if protocol_round is Round.SHARE_KEYS:
            server.server.advance()  # the stage closes at its deadline without this client
            server.waiting_message = None
            return original_submit(round_id, protocol_round, payload)
        return original_submit(round_id, protocol_round, payload)

    server.submit = late_submit
    with pytest.raises(ExcludedFromRound):
        run_against(server, state_dir)
    assert _tombstone(state_dir)["outcome"] == "excluded"


def test_waiting_past_the_poll_timeout_keeps_the_state_for_a_later_resume(state_dir: Path) -> None:
    server = FakeRoundServer()
    server.fetch = lambda round_id, protocol_round: Pending(retry_after=1.0)
    now = {"t": 0.0}

    def sleep(seconds: float) -> None:
        now["t"] += seconds

    from clients.runtime.inputs import RingVectorInput
    from clients.runtime.policy import ClientPolicy
    from clients.runtime.runner import run_round

    with pytest.raises(ServerUnavailable, match="state file is kept"):
        run_round(
            transport=server,
            round_id=server.round_id,
            identity=server.identity,
            client_input=RingVectorInput(server.inputs[server.member]),
            policy=ClientPolicy(),
            state_dir=state_dir,
            poll=PollSchedule(initial_interval=0.5, max_interval=4.0, timeout=30.0),
            sleep=sleep,
            clock=lambda: now["t"],
        )
    assert 30.0 <= now["t"] <= 34.0
    assert _tombstone(state_dir)["status"] == "in-progress"
    del server.fetch
    outcome = run_against(server, state_dir)
    assert np.array_equal(outcome.result.vector, server.expected_sum())


def test_a_long_polled_pending_answer_is_asked_again_without_sleeping(state_dir: Path) -> None:
    server = FakeRoundServer()
    original_fetch = server.fetch
    held = {"count": 0}

    def fetch_held_twice(round_id, protocol_round):
        if held["count"] < 2:
            held["count"] += 1
            return Pending(0.0, long_polled=True)  # the server held the request for its whole wait
        return original_fetch(round_id, protocol_round)

    server.fetch = fetch_held_twice
    sleeps: list[float] = []

    from clients.runtime.inputs import RingVectorInput
    from clients.runtime.policy import ClientPolicy
    from clients.runtime.runner import run_round

    outcome = run_round(
        transport=server,
        round_id=server.round_id,
        identity=server.identity,
        client_input=RingVectorInput(server.inputs[server.member]),
        policy=ClientPolicy(),
        state_dir=state_dir,
        poll=PollSchedule(initial_interval=0.5, max_interval=4.0, timeout=30.0),
        sleep=sleeps.append,
    )
    assert held["count"] == 2
    assert sleeps == []
    assert np.array_equal(outcome.result.vector, server.expected_sum())


def test_poll_intervals_grow_from_the_server_hint_to_the_maximum() -> None:
    schedule = PollSchedule(initial_interval=0.25, multiplier=2.0, max_interval=3.0)
    assert [schedule.interval(k, None) for k in range(5)] == [0.25, 0.5, 1.0, 2.0, 3.0]
    assert [schedule.interval(k, 1.0) for k in range(4)] == [1.0, 1.0, 1.0, 2.0]
    assert schedule.interval(0, 60.0) == 3.0


def test_backoff_stays_within_half_and_full_ceiling_and_honours_long_retry_after() -> None:
    policy = RetryPolicy(initial_delay=0.1, multiplier=2.0, max_delay=1.0, max_retry_after=30.0)
    source = DeterministicRandom.from_int(3)
    for retry in range(8):
        ceiling = min(1.0, 0.1 * 2**retry)
        assert ceiling / 2 <= policy.backoff(retry, source) <= ceiling
    assert policy.wait(0, 12.0, source) == 12.0
    assert policy.wait(0, 120.0, source) == 30.0


def test_pickled_npy_is_refused_without_unpickling(tmp_path: Path) -> None:
    path = tmp_path / "evil.npy"
    np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InputFileError, match="pickled or malformed"):
        input_from_npy(path)


@pytest.mark.parametrize(
    ("array", "kwargs", "message"),
    [
        (np.zeros((2, 3), dtype=np.uint32), {}, "1-D"),
        (np.zeros(4, dtype=np.int32), {}, "signed integers"),
        (np.zeros(4, dtype=np.float64), {}, "give --clip"),
        (np.zeros(4, dtype=np.uint32), {"clip": 1.0}, "float inputs only"),
        (np.array([0.5, 2.0]), {"clip": 1.0}, "> clip"),
        (np.array([0.5, np.nan]), {"clip": 1.0}, "NaN"),
    ],
)
def test_unusable_input_files_are_refused_with_a_specific_error(tmp_path: Path, array, kwargs, message) -> None:
    path = tmp_path / "update.npy"
    np.save(path, array)
    with pytest.raises(InputFileError, match=message):
        input_from_npy(path, **kwargs)


def test_input_of_the_wrong_length_or_ring_is_refused_before_the_state_file_exists(state_dir: Path) -> None:
    server = FakeRoundServer(dim=16)
    with pytest.raises(InputFileError, match="dim is 16"):
        run_against(server, state_dir, client_input=RingVectorInput(np.zeros(15, dtype=np.uint32)))
    with pytest.raises(InputFileError, match="needs uint32"):
        run_against(server, state_dir, client_input=RingVectorInput(np.zeros(16, dtype=np.uint64)))
    assert server.calls == ["describe", "describe"]
    assert not state_dir.exists()


def test_real_input_too_large_for_the_ring_and_cohort_is_refused() -> None:
    server = FakeRoundServer(bits=8)
    real = RealVectorInput(np.zeros(server.dim), clip=1.0, scale=100.0)
    with pytest.raises(InputFileError, match="wraps"):
        real.encode(server.config, DeterministicRandom.from_int(1))


def test_resume_refused_for_another_server_endpoint(state_dir: Path) -> None:
    server = FakeRoundServer()
    from tests.clients.test_resume import CrashingTransport, SimulatedCrash

    with pytest.raises(SimulatedCrash):
        run_against(CrashingTransport(server, crash_at=3, after=True), state_dir)
    server.endpoint = "memory://another"
    with pytest.raises(ResumeRefused, match="was started against"):
        run_against(server, state_dir)
