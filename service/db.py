"""The database: the single source of truth for participants, rounds and submissions.

SQLAlchemy 2, on SQLite (one file, WAL journal, foreign keys on, ``synchronous=FULL``)
or PostgreSQL (``postgresql+psycopg://``); request nonces alone are committed with
reduced durability (:meth:`Database.record_nonce`), and on SQLite they live in a file of
their own next to the main one (``secagg.nonces.db`` beside ``secagg.db``): SQLite has one
write lock per file, and every signed request records a nonce, so sharing the main file
would make every request, even a read, queue behind the uploads' durable commits.
The invariants the tables enforce, whatever
the number of server processes:

* ``submissions``: at most one accepted message per (round, stage, sender) — a unique
  constraint, so a duplicate is impossible even under a race between two workers;
* ``nonces``: a (key id, nonce) pair is inserted at most once (primary key), which is
  how replayed requests are refused;
* ``outbound``: one server message per (round, stage it opens, recipient);
* ``masked_input_uploads`` / ``masked_input_chunks``: at most one declared upload per
  (round, sender) and one stored chunk per (round, sender, chunk) (primary keys), so a
  chunk is stored once whatever the retries and the workers;
* ``round_chunks``: the running sum and the result, one row per (round, chunk).
* ``trainings``: one signed consortium manifest per training id (its hash unique), and
  ``training_rounds``: the training and step of each round that belongs to one.

Serialisation of a round: every write that depends on a round's state (accepting a
message, closing a stage, aborting) runs in a transaction that first locks the round's
row: ``SELECT ... FOR UPDATE`` on PostgreSQL; on SQLite every write transaction starts
with ``BEGIN IMMEDIATE``, which takes the database's single write lock. Reads run
without the lock and see the last committed state.

What is stored about a round is what replaying its session needs (the accepted R0,
R1, R3 and R4 messages in acceptance order, and the order of stage closures), the
messages the server sent, a running sum of the accepted masked inputs in chunks and, at
the end, the result in chunks. An individual masked input rests on disk only while its
chunks wait to be folded into the running sum (:mod:`service.rounds.chunks`).

The schema is created and upgraded by Alembic migrations (:mod:`service.migrations`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Boolean,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    delete,
    event,
    insert,
    select,
    text,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker


class Base(DeclarativeBase):
    pass


class ParticipantRow(Base):
    __tablename__ = "participants"

    id: Mapped[str] = mapped_column(String(63), primary_key=True)
    public_key: Mapped[bytes] = mapped_column(LargeBinary(32), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    enrolled_at: Mapped[float] = mapped_column(Float)
    revoked_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class RoundRow(Base):
    __tablename__ = "rounds"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    created_at: Mapped[float] = mapped_column(Float, index=True)
    parameters: Mapped[str] = mapped_column(Text)
    """Canonical JSON: cohort (ids and keys), threshold, mode, graph, degree, dim, bits, deadlines, dp_policy."""
    stage: Mapped[str] = mapped_column(String(40), index=True)
    closed_stages: Mapped[int] = mapped_column(Integer, default=0)
    """How many times ``ServerSession.advance`` has closed a stage: the replay script's length."""
    revision: Mapped[int] = mapped_column(Integer, default=0)
    """Bumped by every committed change; an in-process cached session is valid iff it matches."""
    stage_started_at: Mapped[float] = mapped_column(Float)
    stage_deadline: Mapped[float | None] = mapped_column(Float, nullable=True, index=True)
    expected: Mapped[str] = mapped_column(Text, default="[]")
    history: Mapped[str] = mapped_column(Text, default="[]")
    session_id: Mapped[bytes | None] = mapped_column(LargeBinary(32), nullable=True)
    outcome: Mapped[str | None] = mapped_column(String(16), nullable=True)
    abort_reason: Mapped[str | None] = mapped_column(String(40), nullable=True)
    abort_detail: Mapped[str | None] = mapped_column(Text, nullable=True)
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    survivors: Mapped[str | None] = mapped_column(Text, nullable=True)
    result_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    """SHA-256 of the whole result; the result itself is in ``round_chunks``."""
    ledger_recorded: Mapped[bool] = mapped_column(Boolean, default=False, index=True)


class RoundMemberRow(Base):
    __tablename__ = "round_members"
    __table_args__ = (UniqueConstraint("round_id", "participant_id", name="uq_round_member_participant"),)

    round_id: Mapped[str] = mapped_column(ForeignKey("rounds.id", ondelete="CASCADE"), primary_key=True)
    index: Mapped[int] = mapped_column(Integer, primary_key=True)
    participant_id: Mapped[str] = mapped_column(ForeignKey("participants.id"), index=True)
    public_key: Mapped[bytes] = mapped_column(LargeBinary(32))


class TrainingRow(Base):
    """A consortium's training: the signed manifest every member signed (``secagg.consortium``)."""

    __tablename__ = "trainings"

    id: Mapped[str] = mapped_column(String(63), primary_key=True)
    manifest_hash: Mapped[str] = mapped_column(String(64), unique=True)
    document: Mapped[str] = mapped_column(Text)
    """The signed manifest as canonical JSON (``SignedManifest.to_dict``): manifest and signatures."""
    created_at: Mapped[float] = mapped_column(Float)


class TrainingRoundRow(Base):
    """Which training a round belongs to, and its step (0 statistics, 1.. training rounds)."""

    __tablename__ = "training_rounds"

    round_id: Mapped[str] = mapped_column(ForeignKey("rounds.id", ondelete="CASCADE"), primary_key=True)
    training_id: Mapped[str] = mapped_column(ForeignKey("trainings.id"), index=True)
    step: Mapped[int] = mapped_column(Integer)


class SubmissionRow(Base):
    __tablename__ = "submissions"
    __table_args__ = (UniqueConstraint("round_id", "stage", "sender", name="uq_submission_once_per_stage"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    round_id: Mapped[str] = mapped_column(ForeignKey("rounds.id", ondelete="CASCADE"), index=True)
    stage: Mapped[str] = mapped_column(String(40))
    sender: Mapped[int] = mapped_column(Integer)
    body: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True, deferred=True)
    """The encoded message; NULL for masked inputs, which only enter the running sum."""
    body_sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(Integer)
    received_at: Mapped[float] = mapped_column(Float)


class OutboundRow(Base):
    __tablename__ = "outbound"

    round_id: Mapped[str] = mapped_column(ForeignKey("rounds.id", ondelete="CASCADE"), primary_key=True)
    stage: Mapped[str] = mapped_column(String(40), primary_key=True)
    """The stage this message opens (the recipient answers it in that stage)."""
    recipient: Mapped[int] = mapped_column(Integer, primary_key=True)
    message_type: Mapped[str] = mapped_column(String(40))
    body: Mapped[bytes] = mapped_column(LargeBinary, deferred=True)
    fetched_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    """When the recipient first fetched it: progress of the stage, for its silence deadline."""


class MaskedInputUploadRow(Base):
    """A declared chunked upload of one masked input: its header and the SHA-256 of each chunk."""

    __tablename__ = "masked_input_uploads"

    round_id: Mapped[str] = mapped_column(ForeignKey("rounds.id", ondelete="CASCADE"), primary_key=True)
    sender: Mapped[int] = mapped_column(Integer, primary_key=True)
    header: Mapped[bytes] = mapped_column(LargeBinary(46))
    chunk_sha256: Mapped[bytes] = mapped_column(LargeBinary)
    """The declared digests, 32 bytes per chunk, in chunk order."""
    upload_sha256: Mapped[str] = mapped_column(String(64))
    declared_at: Mapped[float] = mapped_column(Float)


class MaskedInputChunkRow(Base):
    """One stored chunk of a declared upload, until it is folded into the running sum."""

    __tablename__ = "masked_input_chunks"

    round_id: Mapped[str] = mapped_column(ForeignKey("rounds.id", ondelete="CASCADE"), primary_key=True)
    sender: Mapped[int] = mapped_column(Integer, primary_key=True)
    chunk: Mapped[int] = mapped_column(Integer, primary_key=True)
    body: Mapped[bytes] = mapped_column(LargeBinary, deferred=True)
    received_at: Mapped[float] = mapped_column(Float)


class RoundChunkRow(Base):
    """One chunk of a round's running sum of masked inputs and, once unmasked, of its result."""

    __tablename__ = "round_chunks"

    round_id: Mapped[str] = mapped_column(ForeignKey("rounds.id", ondelete="CASCADE"), primary_key=True)
    chunk: Mapped[int] = mapped_column(Integer, primary_key=True)
    masked_sum: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True, deferred=True)
    folded: Mapped[int] = mapped_column(Integer, default=0)
    """How many masked inputs the running sum of this chunk contains."""
    result: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True, deferred=True)
    result_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)


class MaskExpansionRow(Base):
    """A round in (or past) the mask-expansion stage: who is expanding it, until when."""

    __tablename__ = "mask_expansions"

    round_id: Mapped[str] = mapped_column(ForeignKey("rounds.id", ondelete="CASCADE"), primary_key=True)
    started_at: Mapped[float] = mapped_column(Float)
    lease_owner: Mapped[str | None] = mapped_column(String(80), nullable=True)
    lease_until: Mapped[float | None] = mapped_column(Float, nullable=True)
    chunks: Mapped[int] = mapped_column(Integer)
    tasks_run: Mapped[int] = mapped_column(Integer, default=0)
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class NonceBase(DeclarativeBase):
    """The nonce table's own metadata: on SQLite it is created in the nonce file only."""


class NonceRow(NonceBase):
    __tablename__ = "nonces"

    key_id: Mapped[str] = mapped_column(String(63), primary_key=True)
    nonce: Mapped[str] = mapped_column(String(32), primary_key=True)
    expires_at: Mapped[float] = mapped_column(Float, index=True)


class Database:
    """Engine and session factory; owns the SQLite pragmas and the write-lock discipline."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        self.engine = _create_engine(url, immediate=False)
        self._write_engine = _create_engine(url, immediate=True) if self.is_sqlite else self.engine
        self._nonce_engine = (
            _create_engine(nonce_database_url(url), immediate=True, synchronous="NORMAL", page_bytes=NONCE_PAGE_BYTES)
            if self.is_sqlite
            else self.engine
        )
        self._recomputable_engine = _create_engine(url, immediate=True, synchronous="NORMAL") if self.is_sqlite else self.engine
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._write_sessions = sessionmaker(self._write_engine, expire_on_commit=False)
        self._recomputable_sessions = sessionmaker(self._recomputable_engine, expire_on_commit=False)

    def create_schema(self) -> None:
        """Create or upgrade the schema to the newest migration (idempotent; safe with several
        processes starting at once: SQLite's write lock or a PostgreSQL advisory lock)."""
        from service.migrations import upgrade_to_head

        if self.is_sqlite:
            self.data_directory_ready()
            with self._write_engine.begin() as connection:  # BEGIN IMMEDIATE: the database's write lock
                upgrade_to_head(connection)
            NonceBase.metadata.create_all(self._nonce_engine)
            return
        with self.engine.begin() as connection:
            connection.exec_driver_sql("SELECT pg_advisory_xact_lock(7264217)")
            upgrade_to_head(connection)
            NonceBase.metadata.create_all(connection)

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A read-only unit of work (no lock; sees committed data). Rows stay readable after it."""
        with self._sessions() as session:
            yield session

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A write transaction: committed on success, rolled back on any exception."""
        with self._write_sessions() as session:
            try:
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise

    @contextmanager
    def write_recomputable(self) -> Iterator[Session]:
        """A write transaction whose loss in a machine crash costs only recomputation (folds, chunk results).

        Committed without waiting for the disk (SQLite ``synchronous=NORMAL`` in WAL mode,
        PostgreSQL ``synchronous_commit=off``): atomic and consistent like every commit, and
        it survives a crash of the server process; a crash of the machine or of the database
        server can drop the last such commits, which only means they are done again (every
        use is idempotent). The next durable commit (:meth:`write`) makes every earlier one
        durable too, since both go through the same write-ahead log in order, so a round
        that completes durably has durable results.
        """
        with self._recomputable_sessions() as session:
            try:
                if not self.is_sqlite:
                    session.execute(text("SET LOCAL synchronous_commit TO OFF"))
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise

    def lock_round(self, session: Session, round_id: str) -> RoundRow | None:
        """The round's row, locked for the rest of the transaction (None if absent)."""
        query = select(RoundRow).where(RoundRow.id == round_id)
        if not self.is_sqlite:
            query = query.with_for_update()
        row = session.execute(query.execution_options(populate_existing=True)).scalar_one_or_none()
        return row

    def record_nonce(self, key_id: str, nonce: str, expires_at: float) -> bool:
        """Insert a request nonce; False if this (key id, nonce) was seen before.

        Committed with reduced durability (SQLite ``synchronous=NORMAL`` in WAL mode,
        PostgreSQL ``synchronous_commit=off``): the commit survives a crash of the server
        process, only a crash of the machine or of the database server can drop the last
        nonces, and even then a replay is possible only within the clock-skew window and
        cannot create a second submission (the submissions' unique key refuses it).
        """
        engine = self._nonce_engine
        try:
            with engine.begin() as connection:
                if not self.is_sqlite:
                    connection.exec_driver_sql("SET LOCAL synchronous_commit TO OFF")
                connection.execute(insert(NonceRow).values(key_id=key_id, nonce=nonce, expires_at=expires_at))
        except IntegrityError:
            return False
        return True

    def ping(self) -> bool:
        try:
            with self.engine.connect() as connection:
                connection.exec_driver_sql("SELECT 1")
            return True
        except Exception:  # readiness probe: any failure means "not ready"
            return False

    def checkpoint(self) -> None:
        """SQLite: copy each file's WAL (the main file's, the nonce file's) into its file once it
        exceeds :data:`WAL_CHECKPOINT_BYTES`, without waiting for readers or writers (a PASSIVE
        checkpoint); a no-op on PostgreSQL."""
        if not self.is_sqlite:
            return
        for engine in (self.engine, self._nonce_engine):
            database = engine.url.database
            if not database or database == ":memory:":
                continue
            try:
                if Path(database + "-wal").stat().st_size < WAL_CHECKPOINT_BYTES:
                    continue
            except OSError:
                continue
            connection = engine.raw_connection()  # outside any transaction: a checkpoint cannot run inside one
            try:
                connection.cursor().execute("PRAGMA wal_checkpoint(PASSIVE)")
            finally:
                connection.close()

    def purge_nonces(self, now: float | None = None) -> None:
        moment = time.time() if now is None else now
        with self._nonce_engine.begin() as connection:
            connection.execute(delete(NonceRow).where(NonceRow.expires_at < moment))

    def data_directory_ready(self) -> None:
        """Create the SQLite file's directory if needed."""
        database = self.engine.url.database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)

    def dispose(self) -> None:
        self.engine.dispose()
        for engine in {self._write_engine, self._nonce_engine, self._recomputable_engine} - {self.engine}:
            engine.dispose()


def nonce_database_url(url: str) -> str:
    """The SQLite URL of the nonce file beside the main file (the same URL for an in-memory database)."""
    parsed = make_url(url)
    database = parsed.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return url
    path = Path(database)
    return parsed.set(database=str(path.with_name(f"{path.stem}.nonces{path.suffix or '.db'}"))).render_as_string(
        hide_password=False
    )


POOL_SIZE = 32
"""Connections kept open per engine. Overflow connections are closed when returned, so a
pool smaller than the usual concurrency reconnects (and re-runs the SQLite pragmas) on
most requests under load; 32 of the threadpool's 40 threads covers the usual case."""
POOL_OVERFLOW = 8
"""Extra connections beyond :data:`POOL_SIZE`: at most 40 per engine, one per threadpool thread."""
SQLITE_PAGE_BYTES = 65536
"""SQLite's largest page size, used for new database files (https://sqlite.org/pragma.html#pragma_page_size)."""
NONCE_PAGE_BYTES = 4096
"""SQLite's default page size, for the nonce file: a nonce's commit writes its table and index
leaf pages to the WAL, 12 KB at this size where the main file's pages would make it 192 KB."""
WAL_CHECKPOINT_BYTES = 64 << 20
"""WAL size above which the background checkpoint copies it into the main file."""
WAL_AUTOCHECKPOINT_BYTES = 1 << 30
"""WAL size at which SQLite itself checkpoints, inside a commit (a backstop only)."""


def _create_engine(url: str, *, immediate: bool, synchronous: str = "FULL", page_bytes: int = SQLITE_PAGE_BYTES) -> Engine:
    if not url.startswith("sqlite"):
        # Up to one connection per threadpool thread (anyio runs 40), so no request waits for one.
        return create_engine(url, pool_pre_ping=True, pool_size=POOL_SIZE, max_overflow=POOL_OVERFLOW)
    engine = create_engine(
        url, pool_size=POOL_SIZE, max_overflow=POOL_OVERFLOW, connect_args={"check_same_thread": False, "timeout": 60}
    )

    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
        # Take over transaction control from pysqlite so BEGIN IMMEDIATE is ours to emit.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        # The page size of a new file (a no-op on an existing one): large for the main file, where
        # a 4 MB running sum is 62 overflow pages instead of ~1000, which more than halves the
        # time of its commit; SQLite's default for the nonce file, whose commits touch few bytes.
        cursor.execute(f"PRAGMA page_size={page_bytes}")
        cursor.execute("PRAGMA journal_mode=WAL")
        # Checkpoints run in the background (Database.checkpoint, from the server's tick), so no
        # request's commit pays for copying the WAL into the main file; the automatic one is
        # only a backstop for a database used without that tick.
        file_page_bytes = cursor.execute("PRAGMA page_size").fetchone()[0]
        cursor.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_BYTES // file_page_bytes}")
        cursor.execute("PRAGMA journal_size_limit=134217728")
        cursor.execute(f"PRAGMA synchronous={synchronous}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=60000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _sqlite_begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine
