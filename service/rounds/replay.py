"""Rebuilding a round's :class:`~secagg.server.ServerSession` from the database, and its cache.

The process keeps, per running round, the session as of the round row's ``revision``,
together with how far into the database it has read: the id of the last submission it
was fed and how many stage closures it has performed. A request that finds another
revision in the database (another worker moved the round on) *catches up*: the cached
session is fed only the submissions committed since, in acceptance order, with
``advance()`` wherever the database records a closure, exactly as the worker that
committed them did. Only a process that has no session for the round (it restarted, or
has never served the round) replays it from the start. The core session is
deterministic, so either way the session is the one the database describes
(``secagg.server.session``); a catch-up that ends anywhere else is discarded for a full
replay, which is checked the same way.

A masked input's *contents* are never replayed: the service keeps only a running sum of
them, in chunks (:mod:`service.rounds.chunks`), so replay feeds each recorded R2 sender
its message's header (:class:`~secagg.chunks.MaskedInputHeader`: accepted for the same
reasons the real one was: stage, membership, session id, length, ring). The sessions are
built with ``expand_masks=False``: closing R4 stops in the mask-expansion stage with the
verified plan (:mod:`service.rounds.expansion`).

Replays and catch-ups are counted (``secagg_session_replays_total{kind}``: ``cold`` for a
process with no session, ``stale`` for a cached session that could not catch up,
``catch-up`` for an incremental one).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, undefer

from secagg.chunks import MaskedInputHeader
from secagg.messages import decode
from secagg.server import ServerSession, ServerStage
from service.db import RoundRow, SubmissionRow
from service.rounds.parameters import StoredParameters

LOGGER = logging.getLogger("secagg.service.replay")


@dataclass(slots=True)
class CachedSession:
    """A round's session as of ``revision``, fed every submission up to id ``last_submission``."""

    revision: int
    session: ServerSession
    last_submission: int = 0

    @property
    def closed_stages(self) -> int:
        return len(self.session.history)


@dataclass
class SessionCache:
    """The sessions of this process's running rounds, kept in step with the database."""

    on_replay: Callable[[str], None] | None = None
    _entries: dict[str, CachedSession] = field(default_factory=dict)
    _positions: dict[str, int] = field(default_factory=dict)

    def session(self, session: Session, row: RoundRow, parameters: StoredParameters) -> ServerSession:
        """The round's session at the row's revision: the cached one, caught up, or a full replay."""
        cached = self._entries.get(row.id)
        if cached is None or cached.revision != row.revision:
            cached = self._in_step(session, row, parameters, cached)
        self._positions[row.id] = cached.last_submission
        return cached.session

    def _in_step(
        self, session: Session, row: RoundRow, parameters: StoredParameters, cached: CachedSession | None
    ) -> CachedSession:
        if cached is not None:
            self._entries.pop(row.id, None)  # mutated below; kept again only once in step
            if catch_up(session, row, parameters, cached):
                self._count("catch-up")
                self._entries[row.id] = cached
                return cached
            self._count("stale")
        else:
            self._count("cold")
        rebuilt = CachedSession(revision=row.revision, session=new_session(parameters))
        if not catch_up(session, row, parameters, rebuilt):
            raise RuntimeError(f"replay of round {row.id} does not reach stage {row.stage} after {row.closed_stages} closures")
        LOGGER.info("session_replayed", extra={"round_id": row.id, "stage": row.stage, "closed_stages": row.closed_stages})
        self._entries[row.id] = rebuilt
        return rebuilt

    def remember(
        self, round_id: str, revision: int, server_session: ServerSession, *, last_submission: int | None = None
    ) -> None:
        """Keep ``server_session`` as the round's session at ``revision``, after the commit that produced it
        (``last_submission``: the id of the submission it was just fed, if any)."""
        position = max(self._positions.get(round_id, 0), last_submission or 0)
        self._positions[round_id] = position
        self._entries[round_id] = CachedSession(revision, server_session, position)

    def forget(self, round_id: str) -> None:
        self._entries.pop(round_id, None)

    def drop(self, round_id: str) -> None:
        """The round finished: nothing of it is kept."""
        self._entries.pop(round_id, None)
        self._positions.pop(round_id, None)

    def _count(self, kind: str) -> None:
        if self.on_replay is not None:
            self.on_replay(kind)


def new_session(parameters: StoredParameters) -> ServerSession:
    return ServerSession(parameters.config(), sum_masked_inputs=False, expand_masks=False)


def catch_up(session: Session, row: RoundRow, parameters: StoredParameters, cached: CachedSession) -> bool:
    """Feed ``cached`` the submissions after ``cached.last_submission`` and the closures after
    ``cached.closed_stages``, as the database records them; True iff it then matches the row.

    Submissions are stored in acceptance order and every stage's submissions precede its
    closure, so the stage a submission belongs to tells where the closures fall: the
    session closes its current stage before it is fed a submission of a later one, and
    closes what remains at the end.
    """
    config = parameters.config()
    server_session = cached.session
    closed = cached.closed_stages
    if closed > row.closed_stages:
        return False
    rows = session.execute(
        select(SubmissionRow)
        .options(undefer(SubmissionRow.body))
        .where(SubmissionRow.round_id == row.id, SubmissionRow.id > cached.last_submission)
        .order_by(SubmissionRow.id)
    ).scalars()
    try:
        for submission in rows:
            while server_session.stage.value != submission.stage:
                if closed >= row.closed_stages:
                    return False
                server_session.advance()
                closed += 1
            message: Any
            if submission.stage == ServerStage.MASKED_INPUT_COLLECTION.value:
                assert server_session.session_id is not None
                message = MaskedInputHeader(
                    session_id=server_session.session_id, sender=submission.sender, bits=config.bits, dim=config.dim
                )
            else:
                assert submission.body is not None
                message = decode(submission.body)
            server_session.receive(message)
            cached.last_submission = submission.id
        while closed < row.closed_stages:
            server_session.advance()
            closed += 1
    except Exception:  # a session that cannot follow the database is discarded, never used
        LOGGER.exception("catch_up_failed", extra={"round_id": row.id})
        return False
    cached.revision = row.revision
    return server_session.stage.value == row.stage


def replay(session: Session, row: RoundRow, parameters: StoredParameters) -> ServerSession:
    """Rebuild the round's session from the database alone."""
    rebuilt = CachedSession(revision=row.revision, session=new_session(parameters))
    if not catch_up(session, row, parameters, rebuilt):
        raise RuntimeError(f"replay of round {row.id} does not reach stage {row.stage}")
    return rebuilt.session
