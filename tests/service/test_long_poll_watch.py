"""Long polls of a whole cohort: one read of the round's stage per interval, not one per waiting bank.

A bank's message changes only when the round's stage does. Every waiting long poll used to
re-check its own message every :data:`~service.watch.FALLBACK_RECHECK_SECONDS` (a database
read each): at N = 1,000 banks waiting, 500 reads a second and most of the server's CPU.
The watch now reads the stage once per interval for all the round's waiters, and a waiter
re-checks its message only when the stage it saw has moved (another worker's transition)
or this process announced a change.
"""

from __future__ import annotations

import asyncio
import threading
import time

from service.watch import FALLBACK_RECHECK_SECONDS, RoundWatch
from tests.service.harness import Api, InProcessServer, make_parties

INTERVAL = 0.05
ROUND = "round-a"


class Stages:
    """A round's stage as another worker moves it, with the reads the watch made of it."""

    def __init__(self, stage: str) -> None:
        self.stage = stage
        self.reads = 0
        self.lock = threading.Lock()

    def __call__(self, round_id: str) -> str:
        with self.lock:
            self.reads += 1
            if round_id != ROUND:
                raise LookupError(round_id)
            return self.stage


async def _wait_all(watch: RoundWatch, seen: str, count: int, timeout: float) -> list[float]:
    started = time.monotonic()

    async def one() -> float:
        event = watch.event(ROUND)
        await watch.wait_for_stage_change(ROUND, event, seen=seen, timeout=timeout)
        return time.monotonic() - started

    return list(await asyncio.gather(*(one() for _ in range(count))))


def test_fifty_waiters_on_an_unchanged_stage_share_one_read_per_interval() -> None:
    stages = Stages("R1-share-keys")

    async def scenario() -> list[float]:
        watch = RoundWatch(asyncio.get_running_loop(), stages, recheck_seconds=INTERVAL)
        return await _wait_all(watch, "R1-share-keys", 50, timeout=0.5)

    waited = asyncio.run(scenario())
    assert min(waited) >= 0.45  # nobody woke early: the stage never moved
    assert stages.reads <= 0.5 / INTERVAL + 2, stages.reads  # not 50 waiters x 10 intervals


def test_a_stage_moved_by_another_worker_wakes_every_waiter_within_an_interval() -> None:
    stages = Stages("R1-share-keys")

    async def scenario() -> list[float]:
        loop = asyncio.get_running_loop()
        watch = RoundWatch(loop, stages, recheck_seconds=INTERVAL)
        loop.call_later(0.2, setattr, stages, "stage", "R2-masked-input-collection")
        return await _wait_all(watch, "R1-share-keys", 20, timeout=5.0)

    waited = asyncio.run(scenario())
    assert max(waited) < 0.2 + 5 * INTERVAL + 0.5, waited
    assert min(waited) >= 0.2


def test_a_read_made_before_a_waiter_began_never_wakes_it() -> None:
    """The stage read for earlier waiters (R1) is older than what a new waiter saw (R2): it
    must not send the new waiter back to re-check again and again until the read expires."""
    stages = Stages("R1-share-keys")

    async def scenario() -> tuple[list[float], int]:
        watch = RoundWatch(asyncio.get_running_loop(), stages, recheck_seconds=1.0)
        first = asyncio.ensure_future(_wait_all(watch, "R1-share-keys", 1, timeout=1.5))
        await asyncio.sleep(1.1)  # the first waiter's read of R1 is now cached
        stages.stage = "R2-masked-input-collection"
        waited = await _wait_all(watch, "R2-masked-input-collection", 3, timeout=1.5)
        await first
        return waited, stages.reads

    waited, reads = asyncio.run(scenario())
    assert min(waited) >= 1.45, waited  # they waited out their time: the stage they saw did not move
    assert reads <= 3, reads


def test_a_round_whose_stage_cannot_be_read_sends_its_waiters_back_to_check() -> None:
    stages = Stages("R1-share-keys")

    async def scenario() -> list[float]:
        watch = RoundWatch(asyncio.get_running_loop(), stages, recheck_seconds=INTERVAL)
        started = time.monotonic()
        event = watch.event("deleted-round")
        await watch.wait_for_stage_change("deleted-round", event, seen="R1-share-keys", timeout=5.0)
        return [time.monotonic() - started]

    assert asyncio.run(scenario())[0] < 1.0


def test_a_change_announced_by_this_process_wakes_waiters_without_a_read() -> None:
    stages = Stages("R1-share-keys")

    async def scenario() -> list[float]:
        loop = asyncio.get_running_loop()
        watch = RoundWatch(loop, stages, recheck_seconds=10.0)
        loop.call_later(0.1, watch.notify, ROUND)
        return await _wait_all(watch, "R1-share-keys", 10, timeout=5.0)

    waited = asyncio.run(scenario())
    assert max(waited) < 1.0
    assert stages.reads == 0


def test_held_long_polls_do_not_re_check_their_messages_while_the_stage_stands(
    shared_server: InProcessServer, shared_api: Api, monkeypatch
) -> None:
    """Eight banks long-poll R0 for three re-check intervals: each message is looked up when
    the request arrives and once more before it is answered, not once per interval per bank."""
    parties = make_parties(8, prefix="herd", seed=840)
    for party in parties:
        shared_api.enroll(party)
    round_id = shared_api.create_round(parties, threshold=5, mode="honest-but-curious", dim=8)
    engine = shared_server.app.state.engine
    lookups: list[str] = []
    lookup = engine.message_for

    def counted(round_: str, participant: str, **options):
        if round_ == round_id:
            lookups.append(participant)
        return lookup(round_, participant, **options)

    monkeypatch.setattr(engine, "message_for", counted)
    wait = 3 * FALLBACK_RECHECK_SECONDS + 0.5
    answers: list[int] = []

    def poll(party) -> None:
        api = Api(shared_server)
        try:
            answers.append(api.signed(party, "GET", f"/v1/rounds/{round_id}/messages/me?wait={wait:g}").status_code)
        finally:
            api.close()

    try:
        threads = [threading.Thread(target=poll, args=(party,)) for party in parties]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert answers == [204] * len(parties)
        assert sorted(lookups) == sorted(2 * [party.participant_id for party in parties])
    finally:
        shared_api.admin("POST", f"/v1/admin/rounds/{round_id}/abort", {"detail": "test over"})
