"""The mask-expansion stage: unmasking off the request path, chunk by chunk, resumable.

The upload that completes R4 commits "shares complete" (the round's stage becomes
``mask-expansion``, every secret reconstructed and verified by the core,
:attr:`~secagg.server.ServerSession.unmasking_plan`) and returns at once. The expansion
then runs here, in a background thread of whichever server process holds the round's
*lease* (a row of ``mask_expansions``, renewed with every chunk):

1. the round's session is taken from this process's cache, or replayed from the database
   (deterministically: the R4 shares are still stored), and its plan turned into signed
   PRG seeds (:func:`secagg.server.chunk_tasks.unmasking_masks`);
2. one :class:`~secagg.server.chunk_tasks.MaskChunkTask` per chunk whose result is not yet
   stored goes to the engine (:mod:`service.rounds.engines`);
3. each finished task commits in its own short transaction: any input chunks still
   waiting are folded, the chunk's result is the running sum plus the mask total, and the
   running sum of the chunk is dropped. These commits do not wait for the disk
   (:meth:`~service.db.Database.write_recomputable`): one lost in a machine crash is
   recomputed, and the durable commit that completes the round makes them all durable. A chunk whose result already exists is left as is,
   so a task that runs twice (two processes, a retry, a restart) changes nothing;
4. when every chunk has its result, the round completes under its row lock with the
   SHA-256 of the whole result: hashed in chunk order as the chunks commit (the few that
   finish ahead of their turn wait in memory, at most one per task in flight), or read
   back chunk by chunk when this run did not commit every chunk itself (a resumed one).

A process killed at any point leaves whole chunks committed and the others untouched; the
next holder of the lease (this process restarted, or another worker once the lease has
expired) starts at the first unfinished chunk and produces the bit-identical sum, because
every chunk's result is a pure function of the same stored inputs. No transaction spans
more than one chunk, so other rounds' writes never wait for an expansion. Before using a
chunk's running sum the commit checks that it holds exactly |U3| inputs; anything else
stops the expansion (logged) instead of releasing a wrong sum.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from secagg.server import ServerSession, ServerStage
from secagg.server.chunk_tasks import MaskChunkTask, chunk_tasks, unmask_chunk, unmasking_masks
from service.db import MaskExpansionRow, RoundChunkRow, RoundRow
from service.rounds.chunks import ChunkStore, _lock_chunk
from service.rounds.context import RoundContext
from service.rounds.engines import ChunkEngine
from service.rounds.transitions import StageTransitions

LOGGER = logging.getLogger("secagg.service.expansion")
EXPANSION = ServerStage.MASK_EXPANSION.value
LEASE_SECONDS = 60.0
POLL_SECONDS = 1.0


class OrderedDigest:
    """SHA-256 of a result whose chunks arrive in any order: each is hashed in its turn.

    Chunks that arrive ahead of their turn are held until it comes; the engines keep at
    most two tasks per worker in flight, so that is the most ever held.
    """

    def __init__(self, count: int) -> None:
        self._hasher = hashlib.sha256()
        self._count = count
        self._next = 0
        self._waiting: dict[int, bytes] = {}

    def add(self, index: int, chunk: bytes) -> None:
        self._waiting[index] = chunk
        while self._next in self._waiting:
            self._hasher.update(self._waiting.pop(self._next))
            self._next += 1

    def hexdigest(self) -> str | None:
        """The digest once every chunk has been added; None before."""
        return self._hasher.hexdigest() if self._next == self._count else None


class ExpansionHalted(RuntimeError):
    """The stored state of a chunk is not what the unmasking needs; nothing is released."""


def start_expansion(session: Session, round_id: str, chunks: int, now: float) -> None:
    """Record that the round entered the mask-expansion stage (in the R4-closing transaction)."""
    session.add(MaskExpansionRow(round_id=round_id, started_at=now, chunks=chunks, tasks_run=0))


class MaskExpansion:
    """Runs the mask-expansion stage of every round that needs it, in one background thread."""

    def __init__(
        self,
        context: RoundContext,
        transitions: StageTransitions,
        chunks: ChunkStore,
        engine: Callable[[], ChunkEngine],
        *,
        lease_seconds: float = LEASE_SECONDS,
        on_chunk_committed: Callable[[str, int], None] | None = None,
        on_finished: Callable[[str], object] | None = None,
    ) -> None:
        self.context = context
        self.transitions = transitions
        self.chunks = chunks
        self._engine_factory = engine
        self._engine: ChunkEngine | None = None
        self.lease_seconds = lease_seconds
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.on_chunk_committed = on_chunk_committed
        self._on_finished = on_finished
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._folder: threading.Thread | None = None
        self._fold_wake = threading.Event()
        self._fold_rounds: set[str] = set()
        self._fold_lock = threading.Lock()
        self.tasks_run = 0

    # ------------------------------------------------------------------ control
    @property
    def engine(self) -> ChunkEngine:
        if self._engine is None:
            self._engine = self._engine_factory()
        return self._engine

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="secagg-mask-expansion", daemon=True)
        self._thread.start()
        self._folder = threading.Thread(target=self._fold_loop, name="secagg-fold", daemon=True)
        self._folder.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._fold_wake.set()
        for thread in (self._thread, self._folder):
            if thread is not None:
                thread.join(timeout=30)
        if self._engine is not None:
            self._engine.close()

    def wake(self) -> None:
        """A round entered the mask-expansion stage: look now, not at the next poll."""
        self._wake.set()

    def fold_soon(self, round_id: str) -> None:
        """A masked input was committed: fold its chunks into the running sum in the background."""
        with self._fold_lock:
            self._fold_rounds.add(round_id)
        self._fold_wake.set()

    # --------------------------------------------------------------------- loops
    def _loop(self) -> None:
        try:
            self.engine.warm()
        except Exception:  # an engine that cannot start is retried at the first expansion
            LOGGER.exception("unmask_engine_start_failed")
        while not self._stop.is_set():
            self._wake.wait(POLL_SECONDS)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                for round_id in self.rounds_to_expand():
                    self.expand(round_id)
            except Exception:  # the thread must survive a transient database error
                LOGGER.exception("mask_expansion_failed")

    def _fold_loop(self) -> None:
        while not self._stop.is_set():
            self._fold_wake.wait(POLL_SECONDS)
            self._fold_wake.clear()
            with self._fold_lock:
                rounds, self._fold_rounds = self._fold_rounds, set()
            for round_id in rounds:
                try:
                    self.chunks.fold_round(round_id)
                except Exception:
                    LOGGER.exception("fold_failed", extra={"round_id": round_id})

    def rounds_to_expand(self) -> list[str]:
        with self.context.database.read() as session:
            return list(
                session.execute(
                    select(RoundRow.id)
                    .where(RoundRow.stage == EXPANSION, RoundRow.outcome.is_(None))
                    .order_by(RoundRow.created_at)
                ).scalars()
            )

    # ----------------------------------------------------------------- one round
    def expand(self, round_id: str) -> bool:
        """Expand the round's missing chunks if this process can take its lease; True iff it completed."""
        if not self._acquire(round_id):
            return False
        try:
            server_session = self._session(round_id)
            if server_session is None:
                return False
            parameters = self.context.parameters(round_id)
            layout = parameters.layout
            masks = unmasking_masks(server_session.unmasking_plan)
            survivors = len(server_session.survivors)
            with self.context.database.read() as session:
                missing = self.chunks.unfinished_results(session, round_id)
            LOGGER.info(
                "mask_expansion_started",
                extra={"round_id": round_id, "count": len(missing), "masks": len(masks), "chunks": layout.count},
            )
            digest = OrderedDigest(layout.count)
            for task, total in self.engine.run(chunk_tasks(layout, masks, missing)):
                result = self._commit_chunk(round_id, task, total, survivors)
                if result is None:
                    return False
                digest.add(task.index, result)
                self.tasks_run += 1
                self.context.metrics.unmask_tasks.labels(self.engine.kind.value).inc()
                if self.on_chunk_committed is not None:
                    self.on_chunk_committed(round_id, task.index)
            return self._complete(round_id, digest.hexdigest())
        except ExpansionHalted:
            LOGGER.exception("mask_expansion_halted", extra={"round_id": round_id})
            return False
        finally:
            self._release(round_id)

    def _session(self, round_id: str) -> ServerSession | None:
        with self.context.database.read() as session:
            row = session.get(RoundRow, round_id)
            if row is None or row.outcome is not None or row.stage != EXPANSION:
                return None
            server_session = self.context.sessions.session(session, row, self.context.parameters(round_id))
        return server_session

    def _commit_chunk(self, round_id: str, task: MaskChunkTask, total: np.ndarray, survivors: int) -> bytes | None:
        """Fold what is left, store the chunk's result, drop its running sum; the chunk's result
        (the one stored already, if another run stored it first), None if the round left the stage."""
        context = self.context
        with context.database.write_recomputable() as session:  # the completing commit makes it durable
            if not self._still_expanding(session, round_id):
                return None
            row = _lock_chunk(session, round_id, task.index)
            if row.result is None:
                self.chunks.fold_in(session, round_id, task.index)
                if row.folded != survivors or row.masked_sum is None:
                    raise ExpansionHalted(
                        f"chunk {task.index} of round {round_id} holds {row.folded} masked inputs, U3 has {survivors}"
                    )
                ring = context.parameters(round_id).layout.ring
                masked_sum = np.frombuffer(row.masked_sum, dtype=ring.dtype)
                result = unmask_chunk(masked_sum, total, ring.bits).tobytes()
                row.result = result
                row.result_sha256 = hashlib.sha256(result).hexdigest()
                row.masked_sum = None
            else:
                result = row.result
            expansion = session.get(MaskExpansionRow, round_id)
            if expansion is not None:
                expansion.tasks_run += 1
                expansion.lease_until = context.clock() + self.lease_seconds
        return result

    def _still_expanding(self, session: Session, round_id: str) -> bool:
        query = select(RoundRow.stage, RoundRow.outcome).where(RoundRow.id == round_id)
        if not self.context.database.is_sqlite:
            query = query.with_for_update(read=True)
        found = session.execute(query).one_or_none()
        return found is not None and found.outcome is None and found.stage == EXPANSION

    def _complete(self, round_id: str, result_sha256: str | None = None) -> bool:
        """Complete the round; ``result_sha256`` is the whole result's digest if the caller hashed
        every chunk as it committed, else it is read back here."""
        context = self.context
        count = context.parameters(round_id).layout.count
        with context.round_lock(round_id):
            with context.database.write() as session:
                row = context.database.lock_round(session, round_id)
                if row is None or row.outcome is not None or row.stage != EXPANSION:
                    return False
                if self.chunks.unfinished_results(session, round_id):
                    return False
                now = context.clock()
                row.result_sha256 = result_sha256 or self.chunks.result_digest(session, round_id, count)
                self.transitions.finish(session, row, now, outcome="completed", reason=None, detail=None)
                expansion = session.get(MaskExpansionRow, round_id)
                if expansion is not None:
                    expansion.finished_at = now
                    context.metrics.stage_duration.labels(EXPANSION).observe(max(0.0, now - expansion.started_at))
            context.sessions.drop(round_id)
        LOGGER.info("mask_expansion_finished", extra={"round_id": round_id})
        context.notify(round_id)
        if self._on_finished is not None:
            self._on_finished(round_id)
        return True

    # -------------------------------------------------------------------- lease
    def _acquire(self, round_id: str) -> bool:
        context = self.context
        with context.database.write() as session:
            query = select(MaskExpansionRow).where(MaskExpansionRow.round_id == round_id)
            if not context.database.is_sqlite:
                query = query.with_for_update()
            row = session.execute(query.execution_options(populate_existing=True)).scalar_one_or_none()
            if row is None or row.finished_at is not None:
                return False
            now = context.clock()
            if row.lease_owner not in (None, self.owner) and row.lease_until is not None and row.lease_until > now:
                return False
            row.lease_owner = self.owner
            row.lease_until = now + self.lease_seconds
        return True

    def _release(self, round_id: str) -> None:
        with self.context.database.write() as session:
            row = session.get(MaskExpansionRow, round_id)
            if row is not None and row.lease_owner == self.owner:
                row.lease_owner = None
                row.lease_until = None

    @staticmethod
    def chunks_done(session: Session, round_id: str) -> int:
        return len(
            list(
                session.execute(
                    select(RoundChunkRow.chunk).where(RoundChunkRow.round_id == round_id, RoundChunkRow.result.is_not(None))
                ).scalars()
            )
        )
