"""Vectors in chunks: uploads, stored chunks, the running sum and the result per chunk; mask expansion; first fetches.

The running sum and the result move from one blob per round (``rounds.masked_sum``,
``rounds.result``) to one row per (round, chunk) in ``round_chunks``, cut with the
round's ``chunk_bytes`` (the default for rounds created before it existed). A running
sum's row counts the R2 submissions it holds; a completed round's result rows get their
SHA-256. Then the two columns go.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

from __future__ import annotations

import hashlib
import json

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

DEFAULT_CHUNK_BYTES = 4 << 20
R2 = "R2-masked-input-collection"


def _element_bytes(bits: int) -> int:
    return next(width // 8 for width in (8, 16, 32, 64) if bits <= width)


def _chunks(blob: bytes, parameters: dict) -> list[bytes]:
    size = parameters.get("chunk_bytes", DEFAULT_CHUNK_BYTES)
    width = _element_bytes(parameters["bits"])
    elements = size // width
    step = elements * width
    return [blob[start : start + step] for start in range(0, len(blob), step)] or [b""]


def upgrade() -> None:
    op.create_table(
        "masked_input_uploads",
        sa.Column("round_id", sa.String(32), sa.ForeignKey("rounds.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("sender", sa.Integer, primary_key=True),
        sa.Column("header", sa.LargeBinary(46), nullable=False),
        sa.Column("chunk_sha256", sa.LargeBinary, nullable=False),
        sa.Column("upload_sha256", sa.String(64), nullable=False),
        sa.Column("declared_at", sa.Float, nullable=False),
    )
    op.create_table(
        "masked_input_chunks",
        sa.Column("round_id", sa.String(32), sa.ForeignKey("rounds.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("sender", sa.Integer, primary_key=True),
        sa.Column("chunk", sa.Integer, primary_key=True),
        sa.Column("body", sa.LargeBinary, nullable=False),
        sa.Column("received_at", sa.Float, nullable=False),
    )
    round_chunks = op.create_table(
        "round_chunks",
        sa.Column("round_id", sa.String(32), sa.ForeignKey("rounds.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("chunk", sa.Integer, primary_key=True),
        sa.Column("masked_sum", sa.LargeBinary, nullable=True),
        sa.Column("folded", sa.Integer, nullable=False),
        sa.Column("result", sa.LargeBinary, nullable=True),
        sa.Column("result_sha256", sa.String(64), nullable=True),
    )
    op.create_table(
        "mask_expansions",
        sa.Column("round_id", sa.String(32), sa.ForeignKey("rounds.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("started_at", sa.Float, nullable=False),
        sa.Column("lease_owner", sa.String(80), nullable=True),
        sa.Column("lease_until", sa.Float, nullable=True),
        sa.Column("chunks", sa.Integer, nullable=False),
        sa.Column("tasks_run", sa.Integer, nullable=False),
        sa.Column("finished_at", sa.Float, nullable=True),
    )
    op.add_column("outbound", sa.Column("fetched_at", sa.Float, nullable=True))

    bind = op.get_bind()
    rounds = bind.execute(sa.text("SELECT id, parameters, outcome, masked_sum, result FROM rounds")).all()
    for round_id, text, outcome, masked_sum, result in rounds:
        parameters = json.loads(text)
        width = _element_bytes(parameters["bits"])
        count = len(_chunks(bytes(parameters["dim"] * width), parameters))
        folded = bind.execute(
            sa.text("SELECT COUNT(*) FROM submissions WHERE round_id = :round_id AND stage = :stage"),
            {"round_id": round_id, "stage": R2},
        ).scalar_one()
        rows: list[dict] = []
        if outcome == "completed" and result is not None:
            for index, piece in enumerate(_chunks(bytes(result), parameters)):
                rows.append(
                    {"round_id": round_id, "chunk": index, "masked_sum": None, "folded": folded, "result": piece,
                     "result_sha256": hashlib.sha256(piece).hexdigest()}
                )  # fmt: skip
        elif outcome is None:
            pieces: list[bytes | None] = (
                list(_chunks(bytes(masked_sum), parameters)) if masked_sum is not None else [None] * count
            )
            for index, running in enumerate(pieces):
                rows.append(
                    {"round_id": round_id, "chunk": index, "masked_sum": running, "folded": folded if running is not None else 0,
                     "result": None, "result_sha256": None}
                )  # fmt: skip
        if rows:
            op.bulk_insert(round_chunks, rows)
    op.drop_column("rounds", "masked_sum")
    op.drop_column("rounds", "result")


def downgrade() -> None:
    op.add_column("rounds", sa.Column("masked_sum", sa.LargeBinary, nullable=True))
    op.add_column("rounds", sa.Column("result", sa.LargeBinary, nullable=True))
    bind = op.get_bind()
    for (round_id,) in bind.execute(sa.text("SELECT DISTINCT round_id FROM round_chunks")).all():
        pieces = bind.execute(
            sa.text("SELECT masked_sum, result FROM round_chunks WHERE round_id = :round_id ORDER BY chunk"),
            {"round_id": round_id},
        ).all()
        sums = [piece.masked_sum for piece in pieces]
        results = [piece.result for piece in pieces]
        values = {
            "masked_sum": b"".join(sums) if all(item is not None for item in sums) else None,
            "result": b"".join(results) if all(item is not None for item in results) else None,
        }
        bind.execute(
            sa.text("UPDATE rounds SET masked_sum = :masked_sum, result = :result WHERE id = :round_id"),
            {**values, "round_id": round_id},
        )
    op.drop_column("outbound", "fetched_at")
    for table in ("mask_expansions", "round_chunks", "masked_input_chunks", "masked_input_uploads"):
        op.drop_table(table)
