"""Batches: a grid of (vision, language) pairs, each cell one screening.

Revision ID: 0003
Revises: 0002
Create Date: 2025-01-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from store.models import UTCDateTime

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSONType = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "batches",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("owner", sa.String(64), nullable=False),
        sa.Column("name", sa.String(200), nullable=True),
        sa.Column("dataset_ref", sa.String(256), nullable=False),
        sa.Column("request", JSONType, nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
    )
    op.create_table(
        "batch_pairs",
        sa.Column("batch_id", sa.String(36), sa.ForeignKey("batches.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("vision_index", sa.Integer(), primary_key=True),
        sa.Column("language_index", sa.Integer(), primary_key=True),
        sa.Column(
            "screening_id", sa.String(36), sa.ForeignKey("screenings.id", ondelete="CASCADE"), nullable=False
        ),
    )
    op.create_index("ix_batch_pairs_screening_id", "batch_pairs", ["screening_id"])


def downgrade() -> None:
    op.drop_table("batch_pairs")
    op.drop_table("batches")
