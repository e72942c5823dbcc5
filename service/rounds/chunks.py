"""Masked inputs in chunks: declared uploads, stored chunks, the running sum and the result by chunk.

A masked input whose vector is larger than one chunk (:class:`secagg.chunks.ChunkLayout`)
is uploaded in three steps (``docs/API.md``, section 5):

1. **declare** the upload: the message's 46-byte header and the SHA-256 of every chunk
   (the manifest, signed like every request). The header is checked against the round
   (stage, sender, session id, bits, dim) and the manifest stored once per (round,
   sender): the same manifest again is a no-op, another one is ``duplicate-submission``;
2. **put** each chunk, in any order, as often as needed: the chunk's declared digest
   (``X-Secagg-Body-Sha256``) must be the manifest's for that slot (else
   ``chunk-mismatch``, before any byte is read), the body must hash to it while streaming
   (else ``body-digest-mismatch``, nothing stored), and its elements must be in the ring.
   A chunk is durable when acknowledged; concurrent chunks of every client share one
   transaction and one fsync (:class:`~service.rounds.group_commit.GroupCommit`). A chunk
   already stored is acknowledged ``already-accepted`` without being written again;
3. **commit**: once every chunk is stored, the header goes through the core
   (:class:`~secagg.chunks.MaskedInputHeader`) exactly as a whole message would, and the
   submission commits under the round's lock with the manifest's digest as its
   ``body_sha256`` (:mod:`service.rounds.acceptance`).

Storage. The running sum lives in ``round_chunks``, one row per (round, chunk). A
committed input's stored chunks are *folded* into it chunk by chunk, each fold one
transaction that adds the stored chunks of committed senders to the row and deletes them,
so every input is added exactly once whoever folds, whenever, and however often a fold is
retried. While R2 collects, a chunk is folded once :data:`FOLD_BATCH_SENDERS` committed
inputs wait for it, so its running sum is rewritten once per batch rather than once per
upload (every rewrite is a chunk's worth of writes under the database's write lock, the
resource R2's uploads share); once R2 has closed, whatever is left is folded at once, in
the background while R3 and R4 run (and by the mask expansion for any chunk still
pending). An individual masked input rests on disk only between its upload and its fold,
so the stored chunks are bounded by the batch: at most ``FOLD_BATCH_SENDERS - 1`` vectors
besides the uploads in progress. Chunks of an upload that was never committed are never
folded and are deleted when R2 closes (or the round finishes). Memory: one chunk per fold
and per upload in progress.

The result is stored the same way (``round_chunks.result``, with each chunk's SHA-256),
written by the mask expansion (:mod:`service.rounds.expansion`) and read back chunk by
chunk for download.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.sql.selectable import ScalarSelect

from secagg.chunks import DIGEST_BYTES, MaskedInputHeader, upload_digest
from secagg.errors import MalformedMessage
from secagg.server import ServerStage
from service.db import MaskedInputChunkRow, MaskedInputUploadRow, RoundChunkRow, RoundRow, SubmissionRow
from service.problems import ProblemType, ServiceProblem
from service.rounds.context import RoundContext
from service.rounds.group_commit import GroupCommit
from service.rounds.parameters import StoredParameters

LOGGER = logging.getLogger("secagg.service.chunks")
R2 = ServerStage.MASKED_INPUT_COLLECTION.value
FOLD_BATCH_SENDERS = 8
"""While R2 collects, a chunk is folded once this many committed inputs wait for it."""


@dataclass(frozen=True, slots=True)
class UploadState:
    round_id: str
    sender: int
    upload_sha256: str
    chunk_bytes: int
    chunks: int
    received: tuple[int, ...]
    committed: bool


@dataclass(frozen=True, slots=True)
class ChunkSlot:
    """What a chunk upload must match, known before its body is read."""

    sender: int
    index: int
    size: int
    sha256: str
    committed: bool
    stored: bool


@dataclass(frozen=True, slots=True)
class DeclaredUpload:
    header: MaskedInputHeader
    upload_sha256: str


class ChunkStore:
    """Declared uploads, stored chunks, the running sum and the result, one chunk at a time."""

    def __init__(self, context: RoundContext, group_commit: GroupCommit) -> None:
        self.context = context
        self.group_commit = group_commit

    # ------------------------------------------------------------------ rounds
    @staticmethod
    def create_rows(session: Session, round_id: str, parameters: StoredParameters) -> None:
        """The round's ``round_chunks`` rows, empty (created with the round)."""
        session.execute(
            insert(RoundChunkRow),
            [{"round_id": round_id, "chunk": index, "folded": 0} for index in range(parameters.layout.count)],
        )

    # ----------------------------------------------------------------- uploads
    def declare(self, round_id: str, participant_id: str, header_bytes: bytes, chunk_sha256: Sequence[str]) -> UploadState:
        """Record the manifest of a chunked upload (idempotent); refuse it, changing nothing, if it cannot be one."""
        context = self.context
        parameters = context.parameters(round_id)
        sender = context.member_index(round_id, participant_id)
        layout = parameters.layout
        try:
            header = MaskedInputHeader.decode(header_bytes)
        except MalformedMessage as exc:
            raise ServiceProblem(ProblemType.MALFORMED, str(exc)) from None
        if header.sender != sender:
            raise ServiceProblem(ProblemType.SENDER_MISMATCH, f"the header's sender is {header.sender}, your index is {sender}")
        if header.bits != parameters.bits or header.dim != parameters.dim:
            raise ServiceProblem(
                ProblemType.WRONG_LENGTH, f"masked inputs of this round are {parameters.dim} elements in Z_2^{parameters.bits}"
            )
        if len(chunk_sha256) != layout.count:
            raise ServiceProblem(ProblemType.WRONG_LENGTH, f"this round's masked inputs have {layout.count} chunks")
        digests = b"".join(bytes.fromhex(item) for item in chunk_sha256)
        manifest = upload_digest(
            header_bytes, layout.chunk_bytes, [digests[i : i + DIGEST_BYTES] for i in range(0, len(digests), DIGEST_BYTES)]
        ).hex()
        now = context.clock()
        with context.database.write() as session:
            row = session.execute(
                select(RoundRow.stage, RoundRow.outcome, RoundRow.abort_reason, RoundRow.session_id).where(
                    RoundRow.id == round_id
                )
            ).one()
            existing = session.get(MaskedInputUploadRow, (round_id, sender))
            if existing is not None:
                if existing.upload_sha256 != manifest:
                    raise ServiceProblem(ProblemType.DUPLICATE_SUBMISSION, "you already declared another upload in this round")
            else:
                _require_collecting(row.stage, row.outcome, row.abort_reason)
                if header.session_id != row.session_id:
                    raise ServiceProblem(ProblemType.WRONG_SESSION, "the header is for another session")
                if _committed(session, round_id, sender):
                    raise ServiceProblem(ProblemType.DUPLICATE_SUBMISSION, "you already sent your masked input")
                session.add(
                    MaskedInputUploadRow(
                        round_id=round_id,
                        sender=sender,
                        header=header_bytes,
                        chunk_sha256=digests,
                        upload_sha256=manifest,
                        declared_at=now,
                    )
                )
        return self.upload_state(round_id, participant_id)

    def upload_state(self, round_id: str, participant_id: str) -> UploadState:
        context = self.context
        sender = context.member_index(round_id, participant_id)
        layout = context.parameters(round_id).layout
        with context.database.read() as session:
            upload = session.get(MaskedInputUploadRow, (round_id, sender))
            if upload is None:
                raise ServiceProblem(ProblemType.UPLOAD_NOT_DECLARED, "declare the upload first")
            committed = _committed(session, round_id, sender)
            received = (
                tuple(range(layout.count))
                if committed
                else tuple(
                    session.execute(
                        select(MaskedInputChunkRow.chunk)
                        .where(MaskedInputChunkRow.round_id == round_id, MaskedInputChunkRow.sender == sender)
                        .order_by(MaskedInputChunkRow.chunk)
                    ).scalars()
                )
            )
            return UploadState(round_id, sender, upload.upload_sha256, layout.chunk_bytes, layout.count, received, committed)

    def slot(self, round_id: str, participant_id: str, index: int, declared_sha256: str) -> ChunkSlot:
        """What chunk ``index`` must be; refuses (before its body is read) a chunk that cannot be stored."""
        context = self.context
        sender = context.member_index(round_id, participant_id)
        layout = context.parameters(round_id).layout
        if not 0 <= index < layout.count:
            raise ServiceProblem(ProblemType.WRONG_LENGTH, f"chunk indices of this round are 0..{layout.count - 1}")
        with context.database.read() as session:
            upload = session.get(MaskedInputUploadRow, (round_id, sender))
            if upload is None:
                raise ServiceProblem(ProblemType.UPLOAD_NOT_DECLARED, "declare the upload first")
            expected = upload.chunk_sha256[index * DIGEST_BYTES : (index + 1) * DIGEST_BYTES].hex()
            if declared_sha256 != expected:
                raise ServiceProblem(ProblemType.CHUNK_MISMATCH, f"chunk {index} differs from the one you declared")
            committed = _committed(session, round_id, sender)
            stored = committed or session.get(MaskedInputChunkRow, (round_id, sender, index)) is not None
            if not stored:
                row = session.execute(
                    select(RoundRow.stage, RoundRow.outcome, RoundRow.abort_reason).where(RoundRow.id == round_id)
                ).one()
                _require_collecting(row.stage, row.outcome, row.abort_reason)
        return ChunkSlot(sender, index, layout.size(index), expected, committed, stored)

    def store(self, round_id: str, slot: ChunkSlot, body: bytes) -> bool:
        """Store a verified chunk durably (group commit); True iff it was new."""
        parameters = self.context.parameters(round_id)
        ring = parameters.layout.ring
        if not ring.is_reduced(np.frombuffer(body, dtype=ring.dtype)):
            raise ServiceProblem(ProblemType.NOT_REDUCED, f"chunk {slot.index} has elements outside Z_2^{ring.bits}")
        now = self.context.clock()

        def work(session: Session) -> bool:
            if session.get(MaskedInputChunkRow, (round_id, slot.sender, slot.index)) is not None:
                return False
            session.add(MaskedInputChunkRow(round_id=round_id, sender=slot.sender, chunk=slot.index, body=body, received_at=now))
            session.flush()
            return True

        try:
            return self.group_commit.run(work, size=len(body))
        except IntegrityError:
            return False  # another worker stored the same chunk (same digest) first

    # ------------------------------------------------------------------ commit
    def committable(self, session: Session, round_id: str, sender: int) -> DeclaredUpload:
        """The declared upload, once every chunk is stored (inside the committing transaction)."""
        upload = session.get(MaskedInputUploadRow, (round_id, sender))
        if upload is None:
            raise ServiceProblem(ProblemType.UPLOAD_NOT_DECLARED, "declare the upload first")
        count = self.context.parameters(round_id).layout.count
        stored = set(
            session.execute(
                select(MaskedInputChunkRow.chunk).where(
                    MaskedInputChunkRow.round_id == round_id, MaskedInputChunkRow.sender == sender
                )
            ).scalars()
        )
        missing = [index for index in range(count) if index not in stored]
        if missing:
            raise ServiceProblem(
                ProblemType.UPLOAD_INCOMPLETE, f"{len(missing)} of {count} chunks are missing", extra={"missing": missing[:1000]}
            )
        return DeclaredUpload(MaskedInputHeader.decode(upload.header), upload.upload_sha256)

    def declared(self, round_id: str, sender: int) -> DeclaredUpload | None:
        with self.context.database.read() as session:
            upload = session.get(MaskedInputUploadRow, (round_id, sender))
            return None if upload is None else DeclaredUpload(MaskedInputHeader.decode(upload.header), upload.upload_sha256)

    @staticmethod
    def add_whole_vector(session: Session, round_id: str, parameters: StoredParameters, vector: np.ndarray) -> None:
        """Add a masked input sent as one body to the running sum (a one-chunk round, inside its transaction)."""
        ring = parameters.layout.ring
        for index, start, stop in parameters.layout.ranges():
            row = _lock_chunk(session, round_id, index)
            total = ring.zeros(stop - start) if row.masked_sum is None else np.frombuffer(row.masked_sum, dtype=ring.dtype).copy()
            np.add(total, vector[start:stop], out=total)
            row.masked_sum = ring.reduce(total).tobytes()
            row.folded += 1

    # -------------------------------------------------------------------- fold
    def pending_folds(self, round_id: str, *, minimum: int = 1) -> list[int]:
        """Chunks with at least ``minimum`` stored chunks of committed senders waiting to be folded."""
        with self.context.database.read() as session:
            return sorted(
                session.execute(
                    select(MaskedInputChunkRow.chunk)
                    .where(MaskedInputChunkRow.round_id == round_id, MaskedInputChunkRow.sender.in_(_committed_senders(round_id)))
                    .group_by(MaskedInputChunkRow.chunk)
                    .having(func.count() >= minimum)
                ).scalars()
            )

    def fold(self, round_id: str, index: int) -> int:
        """Fold the stored chunk ``index`` of every committed sender into the running sum; how many were folded.

        Recomputable: lost in a machine crash, the chunks are simply still there to fold."""
        with self.context.database.write_recomputable() as session:
            return self.fold_in(session, round_id, index)

    def fold_in(self, session: Session, round_id: str, index: int) -> int:
        ring = self.context.parameters(round_id).layout.ring
        row = _lock_chunk(session, round_id, index)
        senders = list(
            session.execute(
                select(MaskedInputChunkRow.sender)
                .where(
                    MaskedInputChunkRow.round_id == round_id,
                    MaskedInputChunkRow.chunk == index,
                    MaskedInputChunkRow.sender.in_(_committed_senders(round_id)),
                )
                .order_by(MaskedInputChunkRow.sender)
            ).scalars()
        )
        if not senders:
            return 0
        total: np.ndarray | None = None if row.masked_sum is None else np.frombuffer(row.masked_sum, dtype=ring.dtype).copy()
        for sender in senders:
            body = session.execute(
                select(MaskedInputChunkRow.body).where(
                    MaskedInputChunkRow.round_id == round_id,
                    MaskedInputChunkRow.sender == sender,
                    MaskedInputChunkRow.chunk == index,
                )
            ).scalar_one()
            vector = np.frombuffer(body, dtype=ring.dtype)
            if total is None:
                total = vector.copy()
            else:
                np.add(total, vector, out=total)
            del body, vector
        assert total is not None
        row.masked_sum = ring.reduce(total).tobytes()
        row.folded += len(senders)
        session.execute(
            delete(MaskedInputChunkRow).where(
                MaskedInputChunkRow.round_id == round_id,
                MaskedInputChunkRow.chunk == index,
                MaskedInputChunkRow.sender.in_(senders),
            )
        )
        return len(senders)

    def fold_round(self, round_id: str) -> int:
        """Fold what is due: full batches while R2 collects, everything once it has closed."""
        with self.context.database.read() as session:
            stage = session.execute(select(RoundRow.stage).where(RoundRow.id == round_id)).scalar_one_or_none()
        minimum = FOLD_BATCH_SENDERS if stage == R2 else 1
        return sum(self.fold(round_id, index) for index in self.pending_folds(round_id, minimum=minimum))

    @staticmethod
    def drop_uncommitted(session: Session, round_id: str) -> None:
        """At R2's closing: delete the chunks and declarations of uploads that were never committed."""
        committed = _committed_senders(round_id)
        session.execute(
            delete(MaskedInputChunkRow).where(
                MaskedInputChunkRow.round_id == round_id, MaskedInputChunkRow.sender.not_in(committed)
            )
        )
        session.execute(
            delete(MaskedInputUploadRow).where(
                MaskedInputUploadRow.round_id == round_id, MaskedInputUploadRow.sender.not_in(committed)
            )
        )

    @staticmethod
    def discard(session: Session, round_id: str, *, keep_result: bool) -> None:
        """At the round's end: stored chunks, declarations and running sums go; the result stays if it was released."""
        session.execute(delete(MaskedInputChunkRow).where(MaskedInputChunkRow.round_id == round_id))
        if keep_result:
            session.execute(update(RoundChunkRow).where(RoundChunkRow.round_id == round_id).values(masked_sum=None))
        else:
            session.execute(delete(RoundChunkRow).where(RoundChunkRow.round_id == round_id))

    # ------------------------------------------------------------------ result
    @staticmethod
    def unfinished_results(session: Session, round_id: str) -> list[int]:
        return sorted(
            session.execute(
                select(RoundChunkRow.chunk).where(RoundChunkRow.round_id == round_id, RoundChunkRow.result.is_(None))
            ).scalars()
        )

    @staticmethod
    def result_digest(session: Session, round_id: str, count: int) -> str:
        """SHA-256 of the whole result, read back chunk by chunk (memory: one chunk)."""
        hasher = hashlib.sha256()
        for index in range(count):
            hasher.update(_result_chunk(session, round_id, index)[0])
        return hasher.hexdigest()

    def result_chunk(self, round_id: str, index: int) -> tuple[bytes, str]:
        with self.context.database.read() as session:
            return _result_chunk(session, round_id, index)

    def iter_result(self, round_id: str) -> Iterator[bytes]:
        """The result's bytes, chunk by chunk, each read in its own short transaction."""
        for index in range(self.context.parameters(round_id).layout.count):
            yield self.result_chunk(round_id, index)[0]

    @staticmethod
    def last_upload_activity(session: Session, round_id: str) -> float | None:
        """The last time a chunk was stored or an upload declared in this round (for the silence deadline)."""
        latest_chunk = session.execute(
            select(func.max(MaskedInputChunkRow.received_at)).where(MaskedInputChunkRow.round_id == round_id)
        ).scalar_one()
        latest_declaration = session.execute(
            select(func.max(MaskedInputUploadRow.declared_at)).where(MaskedInputUploadRow.round_id == round_id)
        ).scalar_one()
        moments = [moment for moment in (latest_chunk, latest_declaration) if moment is not None]
        return max(moments) if moments else None


def _require_collecting(stage: str, outcome: str | None, abort_reason: str | None) -> None:
    if outcome == "aborted":
        raise ServiceProblem(ProblemType.ROUND_ABORTED, "the round aborted", extra={"abort_reason": abort_reason})
    if stage != R2:
        raise ServiceProblem(ProblemType.WRONG_STAGE, f"masked inputs are collected in {R2}, the round is in {stage}")


def _submission_key(session: Session, round_id: str, sender: int) -> int:
    found = session.execute(
        select(SubmissionRow.id).where(
            SubmissionRow.round_id == round_id, SubmissionRow.stage == R2, SubmissionRow.sender == sender
        )
    ).scalar_one_or_none()
    return -1 if found is None else int(found)


def _committed(session: Session, round_id: str, sender: int) -> bool:
    return _submission_key(session, round_id, sender) >= 0


def _committed_senders(round_id: str) -> ScalarSelect[int]:
    return select(SubmissionRow.sender).where(SubmissionRow.round_id == round_id, SubmissionRow.stage == R2).scalar_subquery()


def _lock_chunk(session: Session, round_id: str, index: int) -> RoundChunkRow:
    query = select(RoundChunkRow).where(RoundChunkRow.round_id == round_id, RoundChunkRow.chunk == index)
    if session.get_bind().dialect.name != "sqlite":
        query = query.with_for_update()
    row = session.execute(query.execution_options(populate_existing=True)).scalar_one_or_none()
    if row is None:
        raise ServiceProblem(ProblemType.ROUND_NOT_FOUND, f"no chunk {index} in this round")
    return row


def _result_chunk(session: Session, round_id: str, index: int) -> tuple[bytes, str]:
    found = session.execute(
        select(RoundChunkRow.result, RoundChunkRow.result_sha256).where(
            RoundChunkRow.round_id == round_id, RoundChunkRow.chunk == index
        )
    ).one_or_none()
    if found is None or found.result is None:
        raise ServiceProblem(ProblemType.RESULT_NOT_READY, f"chunk {index} of the result is not ready")
    return found.result, found.result_sha256


__all__ = ["ChunkSlot", "ChunkStore", "DeclaredUpload", "UploadState"]
