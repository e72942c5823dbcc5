"""Baseline: the schema as create_all made it before migrations existed.

Revision ID: 0001
Revises:
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "participants",
        sa.Column("id", sa.String(63), primary_key=True),
        sa.Column("public_key", sa.LargeBinary(32), nullable=False, unique=True),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("enrolled_at", sa.Float, nullable=False),
        sa.Column("revoked_at", sa.Float, nullable=True),
    )
    op.create_table(
        "rounds",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("parameters", sa.Text, nullable=False),
        sa.Column("stage", sa.String(40), nullable=False),
        sa.Column("closed_stages", sa.Integer, nullable=False),
        sa.Column("revision", sa.Integer, nullable=False),
        sa.Column("stage_started_at", sa.Float, nullable=False),
        sa.Column("stage_deadline", sa.Float, nullable=True),
        sa.Column("expected", sa.Text, nullable=False),
        sa.Column("history", sa.Text, nullable=False),
        sa.Column("session_id", sa.LargeBinary(32), nullable=True),
        sa.Column("outcome", sa.String(16), nullable=True),
        sa.Column("abort_reason", sa.String(40), nullable=True),
        sa.Column("abort_detail", sa.Text, nullable=True),
        sa.Column("finished_at", sa.Float, nullable=True),
        sa.Column("survivors", sa.Text, nullable=True),
        sa.Column("masked_sum", sa.LargeBinary, nullable=True),
        sa.Column("result", sa.LargeBinary, nullable=True),
        sa.Column("result_sha256", sa.String(64), nullable=True),
        sa.Column("ledger_recorded", sa.Boolean, nullable=False),
    )
    for column in ("stage_deadline", "stage", "created_at", "ledger_recorded"):
        op.create_index(f"ix_rounds_{column}", "rounds", [column])
    op.create_table(
        "round_members",
        sa.Column("round_id", sa.String(32), sa.ForeignKey("rounds.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("index", sa.Integer, primary_key=True),
        sa.Column("participant_id", sa.String(63), sa.ForeignKey("participants.id"), nullable=False),
        sa.Column("public_key", sa.LargeBinary(32), nullable=False),
        sa.UniqueConstraint("round_id", "participant_id", name="uq_round_member_participant"),
    )
    op.create_index("ix_round_members_participant_id", "round_members", ["participant_id"])
    op.create_table(
        "submissions",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("round_id", sa.String(32), sa.ForeignKey("rounds.id", ondelete="CASCADE"), nullable=False),
        sa.Column("stage", sa.String(40), nullable=False),
        sa.Column("sender", sa.Integer, nullable=False),
        sa.Column("body", sa.LargeBinary, nullable=True),
        sa.Column("body_sha256", sa.String(64), nullable=False),
        sa.Column("size", sa.Integer, nullable=False),
        sa.Column("received_at", sa.Float, nullable=False),
        sa.UniqueConstraint("round_id", "stage", "sender", name="uq_submission_once_per_stage"),
    )
    op.create_index("ix_submissions_round_id", "submissions", ["round_id"])
    op.create_table(
        "outbound",
        sa.Column("round_id", sa.String(32), sa.ForeignKey("rounds.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("stage", sa.String(40), primary_key=True),
        sa.Column("recipient", sa.Integer, primary_key=True),
        sa.Column("message_type", sa.String(40), nullable=False),
        sa.Column("body", sa.LargeBinary, nullable=False),
    )


def downgrade() -> None:
    for table in ("outbound", "submissions", "round_members", "rounds", "participants"):
        op.drop_table(table)
