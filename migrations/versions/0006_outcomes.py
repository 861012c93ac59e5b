"""Outcomes reported by training jobs: what a training run of a screened pair achieved; the ``report`` scope.

Keys that may submit screenings (scope ``screen``) get ``report`` too, so a pipeline's existing key can report
the runs it launched; a key made for reporting alone can be created with ``--scope report,read``.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from store.models import UTCDateTime

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "outcomes",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("screening_id", sa.String(36), sa.ForeignKey("screenings.id", ondelete="CASCADE"), nullable=False),
        sa.Column("owner", sa.String(64), nullable=False),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("idempotency_key", sa.String(255), nullable=True),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("metric", sa.String(64), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.Column("success_threshold", sa.Float(), nullable=False),
        sa.Column("success_direction", sa.String(8), nullable=False),
        sa.Column("dataset", sa.String(256), nullable=False),
        sa.Column("examples", sa.BigInteger(), nullable=True),
        sa.Column("steps", sa.BigInteger(), nullable=True),
        sa.Column("method", sa.String(64), nullable=True),
        sa.Column("run_url", sa.String(2048), nullable=True),
        sa.Column("notes", sa.String(2000), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.UniqueConstraint("owner", "idempotency_key", name="uq_outcomes_owner_idempotency_key"),
    )
    op.create_index("ix_outcomes_screening_id", "outcomes", ["screening_id"])
    op.create_index("ix_outcomes_tenant", "outcomes", ["tenant"])
    op.execute("UPDATE api_keys SET scopes = scopes || ',report' WHERE ',' || scopes || ',' LIKE '%,screen,%'")


def downgrade() -> None:
    # keys lose the scope; one that held `report` alone keeps the text (the old code knows no such scope)
    op.execute("UPDATE api_keys SET scopes = replace(scopes, ',report', '') WHERE scopes LIKE '%,report%'")
    op.execute("UPDATE api_keys SET scopes = replace(scopes, 'report,', '') WHERE scopes LIKE 'report,%'")
    op.drop_index("ix_outcomes_tenant", table_name="outcomes")
    op.drop_index("ix_outcomes_screening_id", table_name="outcomes")
    op.drop_table("outcomes")
