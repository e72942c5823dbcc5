"""What every part of the round engine shares: the database, the clock, the caches, the locks.

One :class:`RoundContext` per server process. The database is the truth; everything
else here is a cache or a process-local lock:

* the parameters of each round (they never change once created);
* the round's :class:`~secagg.server.ServerSession` as of a ``revision`` of the round's
  row (:class:`~service.rounds.replay.SessionCache`);
* one lock per round, so that this process's threads never race each other for a
  round's row lock (other processes are serialised by the database, :mod:`service.db`);
* the uploads this process is working on, per round: a stage is never closed on its
  deadline while one of them, which arrived in time, is still being read or processed.
"""

from __future__ import annotations

import contextlib
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from sqlalchemy import select

from service.db import Database, RoundRow
from service.metrics import ServiceMetrics
from service.problems import ProblemType, ServiceProblem
from service.rounds.parameters import StoredParameters
from service.rounds.replay import SessionCache


@dataclass
class RoundContext:
    database: Database
    metrics: ServiceMetrics
    clock: Callable[[], float]
    on_round_changed: Callable[[str], None] | None = None
    sessions: SessionCache = field(default_factory=SessionCache)
    _parameters: dict[str, StoredParameters] = field(default_factory=dict)
    _locks: dict[str, threading.Lock] = field(default_factory=dict)
    _locks_guard: threading.Lock = field(default_factory=threading.Lock)
    _uploads: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self.sessions.on_replay = lambda kind: self.metrics.session_replays.labels(kind).inc()

    def parameters(self, round_id: str) -> StoredParameters:
        """The round's fixed parameters (cached in process: they never change once created)."""
        cached = self._parameters.get(round_id)
        if cached is not None:
            return cached
        with self.database.read() as session:
            text = session.execute(select(RoundRow.parameters).where(RoundRow.id == round_id)).scalar_one_or_none()
        if text is None:
            raise ServiceProblem(ProblemType.ROUND_NOT_FOUND, "no such round")
        parameters = StoredParameters.from_json(text)
        self._parameters[round_id] = parameters
        return parameters

    def member_index(self, round_id: str, participant_id: str) -> int:
        index = self.parameters(round_id).index_of(participant_id)
        if index is None:
            raise ServiceProblem(ProblemType.NOT_IN_COHORT, "you are not in this round's cohort")
        return index

    def round_lock(self, round_id: str) -> threading.Lock:
        with self._locks_guard:
            lock = self._locks.get(round_id)
            if lock is None:
                lock = self._locks[round_id] = threading.Lock()
            return lock

    @contextlib.contextmanager
    def upload_in_flight(self, round_id: str) -> Iterator[None]:
        """Marks an upload for ``round_id`` as being worked on by this process for the block's duration."""
        with self._locks_guard:
            self._uploads[round_id] += 1
        try:
            yield
        finally:
            with self._locks_guard:
                self._uploads[round_id] -= 1
                if self._uploads[round_id] <= 0:
                    del self._uploads[round_id]

    def uploads_in_flight(self, round_id: str) -> int:
        with self._locks_guard:
            return self._uploads.get(round_id, 0)

    def notify(self, round_id: str) -> None:
        """Tell this process's long-polling requests that the round moved (after the commit)."""
        if self.on_round_changed is not None:
            self.on_round_changed(round_id)
