"""The mask-expansion stage: off the request path, chunk by chunk, resumable after SIGKILL.

Rounds are driven straight through :class:`RoundEngine` over a real database (as in
``test_round_engine.py``); the chunk size is the smallest allowed, so a round of
5,000 32-bit elements has 20 chunks. A SIGKILL is real: a child process runs the
expansion and kills itself with SIGKILL right after committing chunk k.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import signal
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select, update

from secagg.chunks import split_masked_input
from service.db import Database, MaskedInputChunkRow, MaskExpansionRow, RoundChunkRow, RoundRow
from service.metrics import ServiceMetrics
from service.rounds import RoundEngine
from service.rounds import chunks as chunks_module
from service.rounds.engines import EngineKind, make_engine
from service.rounds.expansion import OrderedDigest
from tests.service.test_round_engine import FakeClock, N, Round

DIM = 5000
CHUNK = 1024
CHUNKS = 20
KILL_AFTER = 7


def engine_over(url: str, clock: FakeClock, *, workers: int = 1) -> RoundEngine:
    database = Database(url)
    database.create_schema()
    return RoundEngine(
        database,
        metrics=ServiceMetrics.create(),
        ledger=None,
        max_dim=1 << 20,
        clock=clock,
        chunk_engine=lambda: make_engine(EngineKind.THREAD, workers=workers),
    )


def send_in_chunks(engine: RoundEngine, round_: Round, indices) -> None:
    """R2 as a bank does it for a vector of several chunks: declare, put every chunk, commit."""
    for index in indices:
        participant = round_.parties[index].participant_id
        header, pieces = split_masked_input(round_.pending[index], CHUNK)
        digests = [hashlib.sha256(piece).hexdigest() for piece in pieces]
        engine.declare_upload(round_.round_id, participant, header.encode(), digests)
        for k, piece in enumerate(pieces):
            slot = engine.chunk_slot(round_.round_id, participant, k, digests[k])
            assert engine.store_chunk(round_.round_id, slot, bytes(piece))
        engine.commit_upload(round_.round_id, participant)


def round_in_mask_expansion(engine: RoundEngine, seed: int, *, dropped: frozenset[int] = frozenset({1})) -> Round:
    round_ = Round(engine, seed=seed, dim=DIM, chunk_bytes=CHUNK, deadlines={"R2": 30})
    everyone = range(N)
    alive = [index for index in everyone if index not in dropped]
    round_.send(engine, everyone)
    round_.fetch(engine, everyone)
    round_.send(engine, everyone)
    round_.fetch(engine, everyone)
    send_in_chunks(engine, round_, alive)
    engine.clock.now += 31  # the dropped client stays silent for the whole R2 window
    engine.tick()
    for _ in ("R3", "R4"):
        round_.fetch(engine, alive)
        round_.send(engine, alive)
    assert engine.current_stage(round_.round_id) == "mask-expansion"
    round_.alive = alive
    return round_


def expected(round_: Round) -> np.ndarray:
    return round_.expected_sum(round_.alive)


def result_of(engine: RoundEngine, round_: Round) -> np.ndarray:
    engine.result_for(round_.round_id, round_.parties[0].participant_id)
    return np.frombuffer(b"".join(engine.result_bytes(round_.round_id)), dtype="<u4")


def chunks_done(engine: RoundEngine, round_id: str) -> int:
    with engine.database.read() as session:
        return len(
            session.execute(
                select(RoundChunkRow.chunk).where(RoundChunkRow.round_id == round_id, RoundChunkRow.result.is_not(None))
            ).all()
        )


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'expansion.db'}"


def _expand_then_die(url: str, round_id: str, now: float, kill_after: int) -> None:
    """Child process: expand the round, SIGKILL itself right after committing chunk number ``kill_after``."""
    engine = engine_over(url, FakeClock(now))
    committed = []

    def die_after(round_id: str, index: int) -> None:
        committed.append(index)
        if len(committed) == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)

    engine.expansion.on_chunk_committed = die_after
    engine.expansion.expand(round_id)


def test_sigkill_during_unmasking_after_chunk_k_resumes_at_the_first_unfinished_chunk_with_the_same_sum(
    sqlite_url: str,
) -> None:
    clock = FakeClock()
    engine = engine_over(sqlite_url, clock)
    round_ = round_in_mask_expansion(engine, seed=700)
    context = multiprocessing.get_context("spawn")
    child = context.Process(target=_expand_then_die, args=(sqlite_url, round_.round_id, clock.now, KILL_AFTER))
    child.start()
    child.join(timeout=120)
    assert child.exitcode == -signal.SIGKILL
    assert chunks_done(engine, round_.round_id) == KILL_AFTER
    assert engine.current_stage(round_.round_id) == "mask-expansion"

    restarted = engine_over(sqlite_url, clock)
    assert not restarted.expansion.expand(round_.round_id), "the dead process's lease has not expired yet"
    clock.now += 61
    assert restarted.expansion.expand(round_.round_id)
    assert restarted.expansion.tasks_run == CHUNKS - KILL_AFTER, "only the unfinished chunks ran again"
    assert restarted.current_stage(round_.round_id) == "completed"
    np.testing.assert_array_equal(result_of(restarted, round_), expected(round_))
    with restarted.database.read() as session:
        expansion = session.get(MaskExpansionRow, round_.round_id)
        assert expansion.tasks_run == CHUNKS and expansion.finished_at is not None
        sums = session.execute(select(RoundChunkRow.masked_sum).where(RoundChunkRow.round_id == round_.round_id)).scalars()
        assert all(value is None for value in sums), "no running sum survives the round"


def test_the_r4_completing_acceptance_returns_in_mask_expansion_and_a_second_expansion_changes_nothing(
    backend: str, tmp_path: Path
) -> None:
    from tests.service.conftest import database_url_for

    url = database_url_for(backend) or f"sqlite:///{tmp_path / 'twice.db'}"
    clock = FakeClock()
    engine = engine_over(url, clock)
    round_ = round_in_mask_expansion(engine, seed=710)
    other = engine_over(url, clock)
    assert engine.expansion.expand(round_.round_id)
    assert not other.expansion.expand(round_.round_id)  # finished: nothing to take
    np.testing.assert_array_equal(result_of(other, round_), expected(round_))
    engine.database.dispose()
    other.database.dispose()


def test_a_chunk_whose_running_sum_does_not_hold_every_survivor_halts_the_expansion(sqlite_url: str) -> None:
    clock = FakeClock()
    engine = engine_over(sqlite_url, clock)
    round_ = round_in_mask_expansion(engine, seed=720)
    engine.expansion.on_chunk_committed = None
    with engine.database.write() as session:
        session.execute(
            update(RoundChunkRow).where(RoundChunkRow.round_id == round_.round_id, RoundChunkRow.chunk == 5).values(folded=2)
        )
    assert not engine.expansion.expand(round_.round_id)
    assert engine.current_stage(round_.round_id) == "mask-expansion"
    with engine.database.read() as session:
        stuck = session.execute(
            select(RoundChunkRow.result).where(RoundChunkRow.round_id == round_.round_id, RoundChunkRow.chunk == 5)
        ).scalar_one()
    assert stuck is None


def test_an_operator_abort_during_the_expansion_releases_nothing(sqlite_url: str) -> None:
    clock = FakeClock()
    engine = engine_over(sqlite_url, clock)
    round_ = round_in_mask_expansion(engine, seed=730)

    def abort_after_three(round_id: str, index: int) -> None:
        if engine.expansion.tasks_run == 3:
            engine.abort(round_id, "operator stops the round")

    engine.expansion.on_chunk_committed = abort_after_three
    assert not engine.expansion.expand(round_.round_id)
    assert engine.current_stage(round_.round_id) == "aborted"
    with engine.database.read() as session:
        left = session.execute(select(RoundChunkRow.chunk).where(RoundChunkRow.round_id == round_.round_id)).all()
    assert left == [], "an aborted round keeps no chunk of a result or a sum"


def stored_input_chunks(engine: RoundEngine, round_id: str) -> int:
    with engine.database.read() as session:
        return len(session.execute(select(MaskedInputChunkRow.chunk).where(MaskedInputChunkRow.round_id == round_id)).all())


def test_while_r2_collects_a_chunk_is_folded_once_a_batch_waits_and_the_rest_once_r2_has_closed(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(chunks_module, "FOLD_BATCH_SENDERS", 3)
    clock = FakeClock()
    engine = engine_over(sqlite_url, clock)
    round_ = Round(engine, seed=740, dim=DIM, chunk_bytes=CHUNK, deadlines={"R2": 30})
    everyone = range(N)
    round_.send(engine, everyone)
    round_.fetch(engine, everyone)
    round_.send(engine, everyone)
    round_.fetch(engine, everyone)
    send_in_chunks(engine, round_, [0, 2])
    assert engine.chunks.fold_round(round_.round_id) == 0, "two waiting inputs are not a batch of three"
    assert stored_input_chunks(engine, round_.round_id) == 2 * CHUNKS
    send_in_chunks(engine, round_, [3])
    assert engine.chunks.fold_round(round_.round_id) == 3 * CHUNKS
    assert stored_input_chunks(engine, round_.round_id) == 0
    send_in_chunks(engine, round_, [4])
    assert engine.chunks.fold_round(round_.round_id) == 0, "one input waits for the next batch while R2 collects"
    clock.now += 31  # party 1 stays silent: R2 closes at its deadline
    engine.tick()
    assert engine.current_stage(round_.round_id) == "R3-consistency-check"
    assert engine.chunks.fold_round(round_.round_id) == CHUNKS, "once R2 has closed, the rest is folded at once"
    assert stored_input_chunks(engine, round_.round_id) == 0
    round_.alive = [0, 2, 3, 4]
    for _ in ("R3", "R4"):
        round_.fetch(engine, round_.alive)
        round_.send(engine, round_.alive)
    assert engine.expansion.expand(round_.round_id)
    np.testing.assert_array_equal(result_of(engine, round_), expected(round_))


def test_an_unfolded_batch_is_folded_by_the_expansion_itself(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(chunks_module, "FOLD_BATCH_SENDERS", N + 1)  # nothing is folded in the background
    clock = FakeClock()
    engine = engine_over(sqlite_url, clock)
    round_ = round_in_mask_expansion(engine, seed=750)
    assert stored_input_chunks(engine, round_.round_id) == (N - 1) * CHUNKS
    assert engine.expansion.expand(round_.round_id)
    assert stored_input_chunks(engine, round_.round_id) == 0
    np.testing.assert_array_equal(result_of(engine, round_), expected(round_))


def test_the_result_digest_hashed_as_chunks_commit_equals_the_digest_of_the_whole_result(sqlite_url: str) -> None:
    clock = FakeClock()
    engine = engine_over(sqlite_url, clock, workers=3)  # chunks may finish out of order
    round_ = round_in_mask_expansion(engine, seed=760)
    assert engine.expansion.expand(round_.round_id)
    with engine.database.read() as session:
        stored = session.get(RoundRow, round_.round_id).result_sha256
    assert stored == hashlib.sha256(result_of(engine, round_).tobytes()).hexdigest()


def test_ordered_digest_hashes_chunks_in_index_order_whatever_order_they_arrive_in() -> None:
    pieces = [bytes([index]) * (index + 1) for index in range(6)]
    digest = OrderedDigest(len(pieces))
    for index in (2, 0, 5, 1, 4):
        digest.add(index, pieces[index])
        assert digest.hexdigest() is None, "not every chunk has arrived"
    digest.add(3, pieces[3])
    assert digest.hexdigest() == hashlib.sha256(b"".join(pieces)).hexdigest()
