"""Long polling: requests waiting for a round to move, woken when this process moves it.

A participant may ask ``GET /v1/rounds/{id}/messages/me?wait=S`` to be answered as soon
as there is something for it (or after S seconds). Waiting happens on the event loop,
never on a worker thread. The engine calls :meth:`RoundWatch.notify` (from any
thread) after it commits a stage transition; every request waiting on that round
re-checks the database at once. Transitions committed by *another* worker process are
not notified here, so waiters also re-check every :data:`FALLBACK_RECHECK_SECONDS`.
"""

from __future__ import annotations

import asyncio
import contextlib

from secagg.http_contract import MAX_LONG_POLL_SECONDS

FALLBACK_RECHECK_SECONDS = 2.0
MAX_WAIT_SECONDS = MAX_LONG_POLL_SECONDS


class RoundWatch:
    """One :class:`asyncio.Event` per watched round, replaced each time it fires."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._events: dict[str, asyncio.Event] = {}

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
        event = self._events.pop(round_id, None)
        if event is not None:
            event.set()

    @staticmethod
    async def wait(event: asyncio.Event, timeout: float) -> None:
        """Wait until ``event`` fires or ``timeout`` seconds pass (whichever is first)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout=max(0.0, timeout))
