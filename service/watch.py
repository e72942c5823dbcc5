"""Long polling: requests waiting for a round to move, woken when this process moves it.

A participant may ask ``GET /v1/rounds/{id}/messages/me?wait=S`` to be answered as soon
as there is something for it (or after S seconds). Waiting happens on the event loop,
never on a worker thread. The engine calls :meth:`RoundWatch.notify` (from any
thread) after it commits a stage transition; every request waiting on that round
re-checks the database at once.

Transitions committed by *another* worker process are not notified here. For those the
watch reads the round's stage every :data:`FALLBACK_RECHECK_SECONDS`, once per round
however many requests wait on it, and wakes the waiters whose stage it no longer is. A
participant's message changes only when the stage does, so a waiter that saw stage S
has nothing new to fetch while the stage is still S: re-checking each waiter's message
would cost a database read per waiter per interval (a cohort of n banks waiting, n / 2
reads a second) for no answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

from starlette.concurrency import run_in_threadpool

from secagg.http_contract import MAX_LONG_POLL_SECONDS

FALLBACK_RECHECK_SECONDS = 2.0
MAX_WAIT_SECONDS = MAX_LONG_POLL_SECONDS


class RoundWatch:
    """One :class:`asyncio.Event` per watched round, replaced each time it fires.

    ``stage_of(round_id)`` (blocking; run on a worker thread) reads the round's current
    stage for :meth:`wait_for_stage_change`; a read is shared by every waiter of the round
    for ``recheck_seconds``.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        stage_of: Callable[[str], str] | None = None,
        *,
        recheck_seconds: float = FALLBACK_RECHECK_SECONDS,
    ) -> None:
        self._loop = loop
        self._events: dict[str, asyncio.Event] = {}
        self._stage_of = stage_of
        self._recheck_seconds = recheck_seconds
        self._stages: dict[str, tuple[float, str | None]] = {}
        self._reading: dict[str, asyncio.Future[tuple[float, str | None]]] = {}

    def event(self, round_id: str) -> asyncio.Event:
        """The event the *next* change of ``round_id`` sets (take it before checking the state)."""
        event = self._events.get(round_id)
        if event is None:
            event = self._events[round_id] = asyncio.Event()
        return event

    def notify(self, round_id: str) -> None:
        """Thread-safe: wake every request waiting on ``round_id``."""
        with contextlib.suppress(RuntimeError):  # the loop is closed during shutdown
            self._loop.call_soon_threadsafe(self._fire, round_id)

    def _fire(self, round_id: str) -> None:
        self._stages.pop(round_id, None)
        event = self._events.pop(round_id, None)
        if event is not None:
            event.set()

    @staticmethod
    async def wait(event: asyncio.Event, timeout: float) -> None:
        """Wait until ``event`` fires or ``timeout`` seconds pass (whichever is first)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout=max(0.0, timeout))

    async def wait_for_stage_change(self, round_id: str, event: asyncio.Event, *, seen: str, timeout: float) -> None:
        """Wait until ``event`` fires, the round's stage is no longer ``seen``, or ``timeout`` passes.

        ``event`` is :meth:`event` taken before the caller read ``seen``; only a stage read
        after this call began is compared with it. Without a ``stage_of`` the stage is not
        read and this returns after one slice of ``recheck_seconds`` (the caller re-checks).
        """
        since = time.monotonic()
        give_up = since + timeout
        while True:
            remaining = give_up - time.monotonic()
            if remaining <= 0:
                return
            await self.wait(event, min(remaining, self._recheck_seconds))
            if event.is_set() or self._stage_of is None:
                return
            if await self._stage_read_after(round_id, since) != seen:
                return

    async def _stage_read_after(self, round_id: str, since: float) -> str | None:
        """The round's stage as read after ``since``, at most one read per ``recheck_seconds``
        for all its waiters; None if it could not be read."""
        while True:
            cached = self._stages.get(round_id)
            if cached is not None and cached[0] >= since and time.monotonic() - cached[0] < self._recheck_seconds:
                return cached[1]
            reading = self._reading.get(round_id)
            if reading is None:
                reading = self._reading[round_id] = asyncio.ensure_future(self._read_stage(round_id))
            read_at, stage = await asyncio.shield(reading)
            if read_at >= since:
                return stage

    async def _read_stage(self, round_id: str) -> tuple[float, str | None]:
        assert self._stage_of is not None
        read_at = time.monotonic()
        try:
            stage: str | None = await run_in_threadpool(self._stage_of, round_id)
        except Exception:  # the waiter re-checks and reports what is wrong with the round
            stage = None
        finally:
            del self._reading[round_id]
        if round_id in self._events:
            self._stages[round_id] = (read_at, stage)
        return read_at, stage
