"""The engine over a real database, in process: crash windows, replay, deadlines, ledger outbox.

A "crash" here is dropping a :class:`RoundEngine` (with its cached sessions) and
building a fresh one over the same database, which is what a restarted or a second
worker process sees. The HTTP-level SIGKILL tests are in ``test_restart.py``; these
pin the individual windows deterministically, on SQLite and (when configured)
PostgreSQL.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from secagg.client import ClientSession
from secagg.hazmat.keys import SigningKey
from secagg.hazmat.randomness import DeterministicRandom
from secagg.http_contract import max_client_message_bytes
from secagg.messages import decode, encode
from service.db import Database, OutboundRow, RoundChunkRow, RoundRow, SubmissionRow
from service.ledger import RoundLedger
from service.metrics import ServiceMetrics
from service.problems import ProblemType, ServiceProblem
from service.rounds import RoundEngine
from service.rounds.engines import EngineKind, make_engine
from service.schemas import ParticipantRole, RoundCreate
from tests.service.conftest import database_url_for
from tests.service.harness import client_input, make_parties

N = 5
DIM = 64


class FakeClock:
    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


_OPEN_DATABASES: list[Database] = []


@pytest.fixture
def database_url(backend: str, tmp_path: Path):
    yield database_url_for(backend) or f"sqlite:///{tmp_path / 'engine.db'}"
    while _OPEN_DATABASES:
        _OPEN_DATABASES.pop().dispose()


def _coordinator(url: str, clock: FakeClock, ledger: RoundLedger | None = None) -> RoundEngine:
    database = Database(url)
    database.create_schema()
    _OPEN_DATABASES.append(database)
    return RoundEngine(
        database,
        metrics=ServiceMetrics.create(),
        ledger=ledger,
        max_dim=1 << 20,
        clock=clock,
        chunk_engine=lambda: make_engine(EngineKind.THREAD, workers=2),
    )


class Round:
    """Clients of one round, driven straight through a engine (no HTTP)."""

    def __init__(
        self, engine: RoundEngine, *, seed: int, mode: str = "active", threshold: int = 4, dim: int = DIM, **extra
    ) -> None:
        self.dim = dim
        self.parties = make_parties(N, prefix=f"co{seed}", seed=seed)
        for party in self.parties:
            engine.enroll(party.participant_id, party.key.public_bytes, ParticipantRole.BANK)
        request = RoundCreate(
            cohort=[party.participant_id for party in self.parties], threshold=threshold, mode=mode, dim=dim, **extra
        )
        self.round_id = engine.create_round(request)
        with engine.database.read() as session:
            parameters = json.loads(session.get(RoundRow, self.round_id).parameters)
        from service.rounds import StoredParameters

        self.config = StoredParameters.from_json(json.dumps(parameters)).config()
        self.sessions = {
            index: ClientSession(
                self.config,
                index,
                party.key,
                client_input(index, dim, 32, seed),
                source=DeterministicRandom.from_int(seed + index),
            )
            for index, party in enumerate(self.parties)
        }
        self.pending = {index: encode(session.start()) for index, session in self.sessions.items()}
        self.seed = seed

    def send(self, engine: RoundEngine, indices) -> None:
        for index in indices:
            engine.accept(self.round_id, self.parties[index].participant_id, self.pending[index])

    def fetch(self, engine: RoundEngine, indices) -> None:
        for index in indices:
            _, outbound = engine.message_for(self.round_id, self.parties[index].participant_id)
            assert outbound is not None
            self.pending[index] = encode(self.sessions[index].receive_bytes(outbound.body))

    def stage(self, engine: RoundEngine) -> str:
        return engine.current_stage(self.round_id)

    def status(self, engine: RoundEngine) -> dict:
        with engine.database.read() as session:
            row = session.get(RoundRow, self.round_id)
            return {"stage": row.stage, "history": json.loads(row.history)}

    def expected_sum(self, survivors) -> np.ndarray:
        total = np.zeros(self.dim, dtype=np.uint32)
        for index in survivors:
            total += client_input(index, self.dim, 32, self.seed)
        return total

    def expand(self, engine: RoundEngine) -> bool:
        """Run the mask-expansion stage here and now (the server runs it in a background thread)."""
        return engine.expansion.expand(self.round_id)

    def result(self, engine: RoundEngine) -> np.ndarray:
        engine.result_for(self.round_id, self.parties[0].participant_id)
        return np.frombuffer(b"".join(engine.result_bytes(self.round_id)), dtype="<u4")


def test_the_last_acceptance_of_a_stage_commits_together_with_the_stage_closing(database_url: str) -> None:
    clock = FakeClock()
    first = _coordinator(database_url, clock)
    round_ = Round(first, seed=600)
    round_.send(first, range(N))
    fresh = _coordinator(database_url, clock)  # what a process started right after the 202 sees
    assert round_.stage(fresh) == "R1-share-keys"
    with fresh.database.read() as session:
        assert json.loads(session.get(RoundRow, round_.round_id).history)[0]["responded"] == list(range(N))


def test_stage_whose_deadline_passed_while_the_server_was_down_closes_on_recovery(database_url: str) -> None:
    clock = FakeClock()
    first = _coordinator(database_url, clock)
    round_ = Round(first, seed=605, deadlines={"R0": 60})
    round_.send(first, range(N - 1))
    clock.now += 61  # the server is down past the deadline
    second = _coordinator(database_url, clock)
    second.recover()
    assert round_.stage(second) == "R1-share-keys"
    alive = range(N - 1)
    for _ in ("R1", "R2", "R3", "R4"):
        round_.fetch(second, alive)
        round_.send(second, alive)
    assert round_.stage(second) == "mask-expansion"  # shares complete; the expansion runs off the request path
    assert round_.expand(second)
    assert round_.stage(second) == "completed"
    np.testing.assert_array_equal(round_.result(second), round_.expected_sum(alive))


def test_two_processes_alternating_on_one_round_agree_through_replay(database_url: str) -> None:
    clock = FakeClock()
    workers = [_coordinator(database_url, clock), _coordinator(database_url, clock)]
    round_ = Round(workers[0], seed=610)
    turn = 0
    for stage in ("R0", "R1", "R2", "R3", "R4"):
        if stage != "R0":
            round_.fetch(workers[turn % 2], range(N))
        for index in range(N):  # each message lands on the other worker than the previous one
            round_.send(workers[turn % 2], [index])
            turn += 1
    assert round_.stage(workers[0]) == "mask-expansion"  # shares complete; the expansion runs off the request path
    assert round_.expand(workers[0])
    assert round_.stage(workers[0]) == "completed"
    np.testing.assert_array_equal(round_.result(workers[1]), round_.expected_sum(range(N)))


def test_masked_inputs_are_only_in_the_running_sum_and_message_bodies_are_dropped_at_the_end(database_url: str) -> None:
    clock = FakeClock()
    engine = _coordinator(database_url, clock)
    round_ = Round(engine, seed=620, mode="honest-but-curious", threshold=3)
    round_.send(engine, range(N))
    round_.fetch(engine, range(N))
    round_.send(engine, range(N))
    round_.fetch(engine, range(N))
    round_.send(engine, range(3))
    with engine.database.read() as session:
        bodies = (
            session.execute(
                select(SubmissionRow.body).where(
                    SubmissionRow.round_id == round_.round_id, SubmissionRow.stage == "R2-masked-input-collection"
                )
            )
            .scalars()
            .all()
        )
        running = session.execute(select(RoundChunkRow.masked_sum).where(RoundChunkRow.round_id == round_.round_id)).scalar_one()
    assert bodies == [None, None, None]
    masked = [decode(round_.pending[index]).masked_vector for index in range(3)]
    np.testing.assert_array_equal(np.frombuffer(running, dtype="<u4"), masked[0] + masked[1] + masked[2])
    round_.send(engine, range(3, N))
    round_.fetch(engine, range(N))
    round_.send(engine, range(N))
    assert round_.stage(engine) == "mask-expansion"  # shares complete; the expansion runs off the request path
    assert round_.expand(engine)
    assert round_.stage(engine) == "completed"
    with engine.database.read() as session:
        assert (
            session.execute(select(RoundChunkRow.masked_sum).where(RoundChunkRow.round_id == round_.round_id)).scalar_one()
            is None
        )
        remaining_bodies = session.execute(
            select(SubmissionRow.body).where(SubmissionRow.round_id == round_.round_id, SubmissionRow.body.is_not(None))
        ).all()
        relayed = session.execute(select(OutboundRow.recipient).where(OutboundRow.round_id == round_.round_id)).all()
        recorded = session.execute(select(SubmissionRow.sender).where(SubmissionRow.round_id == round_.round_id)).all()
    assert remaining_bodies == [] and relayed == []
    assert len(recorded) == 4 * N  # who answered each stage stays on record


def test_deadline_with_threshold_met_closes_the_stage_without_the_silent_members(database_url: str) -> None:
    clock = FakeClock()
    engine = _coordinator(database_url, clock)
    round_ = Round(engine, seed=630, mode="honest-but-curious", threshold=3, deadlines={"R1": 30})
    round_.send(engine, range(N))
    round_.fetch(engine, range(N))
    round_.send(engine, [0, 1, 2])
    engine.tick()
    assert round_.stage(engine) == "R1-share-keys"  # not yet due
    clock.now += 31
    engine.tick()
    assert round_.stage(engine) == "R2-masked-input-collection"
    with pytest.raises(ServiceProblem) as refused:
        engine.message_for(round_.round_id, round_.parties[4].participant_id)
    assert refused.value.problem is ProblemType.EXCLUDED


def test_deadline_below_threshold_aborts_with_too_few_participants(database_url: str) -> None:
    clock = FakeClock()
    engine = _coordinator(database_url, clock)
    round_ = Round(engine, seed=640, mode="honest-but-curious", threshold=3, deadlines={"R0": 10})
    round_.send(engine, [0, 1])
    clock.now += 11
    engine.tick()
    with engine.database.read() as session:
        row = session.get(RoundRow, round_.round_id)
        assert (row.outcome, row.abort_reason) == ("aborted", "too-few-participants")
        assert json.loads(row.history)[0]["responded"] == [0, 1]


def test_round_finished_while_the_ledger_was_unavailable_is_recorded_once_later(database_url: str, tmp_path: Path) -> None:
    from dp.audit.round_records import verify_server_ledger

    clock = FakeClock()
    key = SigningKey.generate(DeterministicRandom.from_int(650))
    ledger_path = tmp_path / "server-ledger.jsonl"

    class BrokenLedger(RoundLedger):
        def record(self, body):
            raise OSError("disk full")

    first = _coordinator(database_url, clock, BrokenLedger(ledger_path, key, "test-server"))
    round_ = Round(first, seed=650, mode="honest-but-curious", threshold=3)
    round_.send(first, range(2))
    first.abort(round_.round_id, "operator stopped the round")
    with first.database.read() as session:
        assert session.get(RoundRow, round_.round_id).ledger_recorded is False
    ledger = RoundLedger(ledger_path, key, "test-server")
    second = _coordinator(database_url, clock, ledger)
    second.tick()
    second.tick()
    assert second.record_in_ledger(round_.round_id) is True
    verification = verify_server_ledger(ledger_path, public_key=key.public_bytes)
    assert verification.ok, verification.findings
    records = [entry.record for entry in verification.entries if entry.record.round_id == round_.round_id]
    assert len(records) == 1
    assert records[0].outcome.value == "aborted" and records[0].abort_reason == "aborted-by-server"


@pytest.mark.parametrize("participants", [2, 10, 300])
def test_message_size_limit_admits_the_largest_real_messages(participants: int) -> None:
    limit = max_client_message_bytes(participants, 1000, 32)
    from secagg.messages import EncryptedShares, RevealedShare, ShareKeys, UnmaskingShares
    from secagg.protocol import SHARE_CIPHERTEXT_BYTES

    share_keys = ShareKeys(
        session_id=b"\x00" * 32,
        sender=0,
        self_mask_commitment=b"\x00" * 32,
        encrypted_shares=tuple(
            EncryptedShares(0, recipient, b"\x00" * SHARE_CIPHERTEXT_BYTES) for recipient in range(1, participants)
        ),
    )
    unmasking = UnmaskingShares(
        session_id=b"\x00" * 32,
        sender=0,
        masking_key_shares=tuple(RevealedShare(owner, b"\x00" * 33) for owner in range(participants // 2)),
        self_mask_shares=tuple(RevealedShare(owner, b"\x00" * 33) for owner in range(participants // 2, participants)),
    )
    from secagg.messages import masked_input_size

    # The limit is the largest real encoding: a ShareKeys to every other member (plus one
    # spare ciphertext slot), an UnmaskingShares naming every member, or the masked input.
    spare_ciphertext = 4 + 4 + SHARE_CIPHERTEXT_BYTES
    assert limit == max(len(encode(share_keys)) + spare_ciphertext, len(encode(unmasking)), masked_input_size(1000, 32))


def test_racing_different_submissions_of_one_member_leave_exactly_one_accepted(database_url: str) -> None:
    import threading

    clock = FakeClock()
    workers = [_coordinator(database_url, clock), _coordinator(database_url, clock)]
    round_ = Round(workers[0], seed=660)
    party = round_.parties[0]
    bodies = [
        encode(
            ClientSession(
                round_.config, 0, party.key, client_input(0, DIM, 32, 660), source=DeterministicRandom.from_int(10_000 + attempt)
            ).start()
        )
        for attempt in range(6)
    ]
    assert len(set(bodies)) == len(bodies)
    outcomes: list[str] = []
    barrier = threading.Barrier(len(bodies))

    def submit(attempt: int) -> None:
        barrier.wait()
        try:
            workers[attempt % 2].accept(round_.round_id, party.participant_id, bodies[attempt])
            outcomes.append("accepted")
        except ServiceProblem as refusal:
            outcomes.append(refusal.problem.suffix)

    threads = [threading.Thread(target=submit, args=(attempt,)) for attempt in range(len(bodies))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(outcomes) == ["accepted"] + ["duplicate-submission"] * (len(bodies) - 1)
    with workers[1].database.read() as session:
        stored = session.execute(
            select(SubmissionRow.body_sha256).where(SubmissionRow.round_id == round_.round_id, SubmissionRow.sender == 0)
        ).all()
    assert len(stored) == 1


def test_operator_closing_a_stage_below_threshold_aborts_and_a_finished_round_cannot_be_closed(database_url: str) -> None:
    clock = FakeClock()
    engine = _coordinator(database_url, clock)
    round_ = Round(engine, seed=670, mode="honest-but-curious", threshold=3)
    round_.send(engine, [0, 1])
    engine.close_stage_now(round_.round_id)
    with engine.database.read() as session:
        row = session.get(RoundRow, round_.round_id)
        assert (row.outcome, row.abort_reason) == ("aborted", "too-few-participants")
    with pytest.raises(ServiceProblem) as refused:
        engine.close_stage_now(round_.round_id)
    assert refused.value.problem is ProblemType.ROUND_FINISHED
