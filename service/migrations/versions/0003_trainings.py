"""Consortium trainings: the signed manifest per training, and the training and step of a round.

A database made by ``create_all`` after trainings existed but before migrations did is
stamped at the baseline like any other; it already holds both tables, so they are
created only where they are missing.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    existing = set(sa.inspect(op.get_bind()).get_table_names())
    if "trainings" not in existing:
        op.create_table(
            "trainings",
            sa.Column("id", sa.String(63), primary_key=True),
            sa.Column("manifest_hash", sa.String(64), nullable=False, unique=True),
            sa.Column("document", sa.Text, nullable=False),
            sa.Column("created_at", sa.Float, nullable=False),
        )
    if "training_rounds" not in existing:
        op.create_table(
            "training_rounds",
            sa.Column("round_id", sa.String(32), sa.ForeignKey("rounds.id", ondelete="CASCADE"), primary_key=True),
            sa.Column("training_id", sa.String(63), sa.ForeignKey("trainings.id"), nullable=False),
            sa.Column("step", sa.Integer, nullable=False),
        )
        op.create_index("ix_training_rounds_training_id", "training_rounds", ["training_id"])


def downgrade() -> None:
    op.drop_index("ix_training_rounds_training_id", table_name="training_rounds")
    op.drop_table("training_rounds")
    op.drop_table("trainings")
