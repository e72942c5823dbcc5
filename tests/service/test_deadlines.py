"""Deadlines measure the clients' silence, never the server's backlog.

Each test pins one rule with a controlled clock, straight through the engine over a real
database: every kind of progress (an accepted message, a member's first fetch of its
request, a declared upload, a stored chunk) restarts the stage's window; an upload that is
still being worked on keeps its stage open past the window; only a whole window of
silence closes the stage. Each would fail against deadlines counted from the stage's
opening.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from secagg.chunks import split_masked_input
from tests.service.conftest import database_url_for
from tests.service.test_mask_expansion import send_in_chunks
from tests.service.test_round_engine import _OPEN_DATABASES, FakeClock, N, Round, _coordinator

WINDOW = 30


@pytest.fixture
def database_url(backend: str, tmp_path: Path):
    yield database_url_for(backend) or f"sqlite:///{tmp_path / 'deadlines.db'}"
    while _OPEN_DATABASES:
        _OPEN_DATABASES.pop().dispose()


def at_r2(engine, seed: int, **extra) -> Round:
    round_ = Round(engine, seed=seed, mode="honest-but-curious", threshold=3, deadlines={"R2": WINDOW}, **extra)
    round_.send(engine, range(N))
    round_.fetch(engine, range(N))
    round_.send(engine, range(N))
    assert round_.stage(engine) == "R2-masked-input-collection"
    return round_


def test_every_accepted_message_restarts_the_window(database_url: str) -> None:
    clock = FakeClock()
    engine = _coordinator(database_url, clock)
    round_ = at_r2(engine, seed=900)
    round_.fetch(engine, range(N))
    for index in range(3):  # one message every 25 s: never 30 s of silence
        clock.now += 25
        engine.tick()
        round_.send(engine, [index])
    clock.now += 25
    engine.tick()
    assert round_.stage(engine) == "R2-masked-input-collection", "75 s after opening, 25 s after the last message"
    clock.now += 6
    engine.tick()
    assert round_.stage(engine) == "R4-unmasking", "closed after a whole window of silence, without members 3 and 4"


def test_a_members_first_fetch_of_its_request_restarts_the_window(database_url: str) -> None:
    clock = FakeClock()
    engine = _coordinator(database_url, clock)
    round_ = at_r2(engine, seed=901)
    round_.fetch(engine, [0, 1, 2])
    round_.send(engine, [0, 1, 2])
    clock.now += 25
    round_.fetch(engine, [3])  # a slow (or slowly served) member gets its request now
    clock.now += 25
    engine.tick()
    assert round_.stage(engine) == "R2-masked-input-collection", "50 s after opening, 25 s after member 3's first fetch"
    round_.send(engine, [3])
    clock.now += 31
    engine.tick()
    assert round_.stage(engine) == "R4-unmasking"
    assert round_.status(engine)["history"][-1]["responded"] == [0, 1, 2, 3]


def test_an_upload_still_being_processed_keeps_its_stage_open(database_url: str) -> None:
    clock = FakeClock()
    engine = _coordinator(database_url, clock)
    round_ = at_r2(engine, seed=902)
    round_.fetch(engine, range(N))
    round_.send(engine, [0, 1, 2])
    clock.now += 31
    with engine.context.upload_in_flight(round_.round_id):  # member 3's upload arrived in time and is in the server's hands
        engine.tick()
        assert round_.stage(engine) == "R2-masked-input-collection"
        round_.send(engine, [3])  # judged in time although the window has passed
    clock.now += 31
    engine.tick()
    assert round_.stage(engine) == "R4-unmasking"
    assert round_.status(engine)["history"][-1]["responded"] == [0, 1, 2, 3]


def test_declared_uploads_and_stored_chunks_restart_the_window(database_url: str) -> None:
    clock = FakeClock()
    engine = _coordinator(database_url, clock)
    round_ = at_r2(engine, seed=903, dim=1000, chunk_bytes=1024)
    round_.fetch(engine, range(N))
    send_in_chunks(engine, round_, [0, 1, 2])
    member = 3
    participant = round_.parties[member].participant_id
    header, pieces = split_masked_input(round_.pending[member], 1024)
    digests = [hashlib.sha256(piece).hexdigest() for piece in pieces]
    clock.now += 25
    engine.declare_upload(round_.round_id, participant, header.encode(), digests)
    for index, piece in enumerate(pieces):  # a chunk every 25 s: a slow link, never silent for a window
        clock.now += 25
        engine.tick()
        assert round_.stage(engine) == "R2-masked-input-collection"
        slot = engine.chunk_slot(round_.round_id, participant, index, digests[index])
        engine.store_chunk(round_.round_id, slot, bytes(piece))
    engine.commit_upload(round_.round_id, participant)
    clock.now += 31
    engine.tick()
    assert round_.stage(engine) == "R4-unmasking"
    assert round_.status(engine)["history"][-1]["responded"] == [0, 1, 2, member]
