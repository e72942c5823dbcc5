"""Rebuilding a round's :class:`~secagg.server.ServerSession` from the database, and its cache.

The process keeps, per running round, the session as of the round row's ``revision``;
any request that finds another revision in the database (another worker moved the round
on, or this process restarted) rebuilds the session by *replay*: a fresh session is fed
the accepted messages of each stage in acceptance order, with ``advance()`` between
stages, exactly as often as the database says stages were closed. The core session is
deterministic, so the replayed session is the one that was lost (``secagg.server.session``).

A masked input's *contents* are never replayed: the service keeps only a running sum of
them (:mod:`service.rounds.acceptance`), so replay feeds each recorded R2 sender a zero
vector (accepted for the same reasons the real one was: stage, membership, session id,
length, ring). The running sum is handed to the session with
:meth:`~secagg.server.ServerSession.provide_masked_sum` just before R4 closes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session, undefer

from secagg.messages import MaskedInput, decode
from secagg.server import ServerSession, ServerStage
from service.db import RoundRow, SubmissionRow
from service.rounds.parameters import StoredParameters

LOGGER = logging.getLogger("secagg.service.replay")


@dataclass(slots=True)
class CachedSession:
    """A round's session as of ``revision``; with the running sum of masked inputs as of the
    same revision when this process last wrote it (read-only; None: read it from the row)."""

    revision: int
    session: ServerSession
    masked_sum: np.ndarray | None = None


@dataclass
class SessionCache:
    """The sessions of this process's running rounds, each valid for one row revision only."""

    _entries: dict[str, CachedSession] = field(default_factory=dict)
    on_replay: Callable[[], object] | None = None
    """Called once per replay (the ``secagg_session_replays`` metric)."""

    def session(self, session: Session, row: RoundRow, parameters: StoredParameters) -> ServerSession:
        """The round's session at the row's revision: the cached one, or a replay."""
        cached = self._entries.get(row.id)
        if cached is not None and cached.revision == row.revision:
            return cached.session
        if self.on_replay is not None:
            self.on_replay()
        return replay(session, row, parameters)

    def masked_sum(self, round_id: str, revision: int) -> np.ndarray | None:
        """The running sum this process last committed for the round, if still at ``revision``."""
        cached = self._entries.get(round_id)
        return cached.masked_sum if cached is not None and cached.revision == revision else None

    def remember(self, round_id: str, revision: int, server_session: ServerSession, masked_sum: np.ndarray | None = None) -> None:
        self._entries[round_id] = CachedSession(revision, server_session, masked_sum)

    def forget(self, round_id: str) -> None:
        self._entries.pop(round_id, None)


def replay(session: Session, row: RoundRow, parameters: StoredParameters) -> ServerSession:
    """Rebuild the round's session from the database (see the module docstring)."""
    config = parameters.config()
    server_session = ServerSession(config, sum_masked_inputs=False)
    by_stage: dict[str, list[SubmissionRow]] = {}
    for submission in session.execute(
        select(SubmissionRow)
        .options(undefer(SubmissionRow.body))
        .where(SubmissionRow.round_id == row.id)
        .order_by(SubmissionRow.id)
    ).scalars():
        by_stage.setdefault(submission.stage, []).append(submission)
    placeholder = config.ring.zeros(config.dim)
    placeholder.setflags(write=False)
    for step in range(row.closed_stages + 1):
        stage = server_session.stage
        for submission in by_stage.get(stage.value, ()):
            if stage is ServerStage.MASKED_INPUT_COLLECTION:
                assert server_session.session_id is not None
                message: Any = MaskedInput(
                    session_id=server_session.session_id, sender=submission.sender, bits=config.bits, masked_vector=placeholder
                )
            else:
                assert submission.body is not None
                message = decode(submission.body)
            server_session.receive(message)
        if step < row.closed_stages:
            server_session.advance()
    if server_session.stage.value != row.stage:
        raise RuntimeError(f"replay of round {row.id} reached {server_session.stage.value}, the database says {row.stage}")
    LOGGER.info("session_replayed", extra={"round_id": row.id, "stage": row.stage, "closed_stages": row.closed_stages})
    return server_session
