"""Group commit: units of work from many request threads share one transaction and one fsync.

A durable commit costs a write-ahead-log flush (SQLite ``synchronous=FULL``) or a WAL
fsync (PostgreSQL), whatever the amount of data. Concurrent uploads that each committed
on their own would queue behind each other's flushes; :class:`GroupCommit` lets the first
thread that finds no batch in progress become the *leader*: it takes every unit queued so
far (its own first), runs them in one transaction, each inside its own savepoint, commits
once, and wakes the others with their results. While it commits, new units queue up for
the next leader. A unit that fails (for example a constraint) rolls back its savepoint
only; the others still commit. No unit is acknowledged before the commit that contains it
(the caller answers its request after :meth:`GroupCommit.run` returns).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from sqlalchemy.orm import Session

from service.db import Database

T = TypeVar("T")

MAX_BATCH_UNITS = 64
MAX_BATCH_BYTES = 64 << 20
"""A batch stops growing at 64 MiB of payload, so one transaction never holds more."""


@dataclass(eq=False)
class _Unit(Generic[T]):
    work: Callable[[Session], T]
    size: int
    finished: bool = False
    value: Any = None
    error: BaseException | None = None
    batch_size: int = 0


@dataclass
class GroupCommit:
    """Runs units of work in shared transactions; see the module docstring."""

    database: Database
    max_units: int = MAX_BATCH_UNITS
    max_bytes: int = MAX_BATCH_BYTES
    on_batch: Callable[[int], None] | None = None
    _queue: list[_Unit[Any]] = field(default_factory=list)
    _leading: bool = False
    _condition: threading.Condition = field(default_factory=threading.Condition)

    def run(self, work: Callable[[Session], T], *, size: int = 0) -> T:
        """Run ``work(session)`` in a committed transaction (shared with concurrent units); return its value."""
        unit: _Unit[T] = _Unit(work, size)
        with self._condition:
            self._queue.append(unit)
            while self._leading and not unit.finished:
                self._condition.wait()
            if not unit.finished:
                self._leading = True
                batch = self._take(unit)
        if not unit.finished:
            try:
                self._commit(batch)
            finally:
                with self._condition:
                    for item in batch:
                        item.finished = True
                    self._leading = False
                    self._condition.notify_all()
        if unit.error is not None:
            raise unit.error
        return unit.value

    def _take(self, first: _Unit[Any]) -> list[_Unit[Any]]:
        self._queue.remove(first)
        batch = [first]
        size = first.size
        while self._queue and len(batch) < self.max_units and size + self._queue[0].size <= self.max_bytes:
            item = self._queue.pop(0)
            batch.append(item)
            size += item.size
        return batch

    def _commit(self, batch: list[_Unit[Any]]) -> None:
        try:
            with self.database.write() as session:
                for unit in batch:
                    try:
                        with session.begin_nested():
                            unit.value = unit.work(session)
                    except Exception as exc:  # this unit only: its savepoint is rolled back
                        unit.error = exc
        except BaseException as exc:
            for unit in batch:
                if unit.error is None:
                    unit.error = exc
            raise
        finally:
            for unit in batch:
                unit.batch_size = len(batch)
            if self.on_batch is not None:
                self.on_batch(len(batch))
