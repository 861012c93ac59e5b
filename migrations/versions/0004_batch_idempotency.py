"""Batches take an Idempotency-Key, as screenings do: the key and the fingerprint of the request body.

Revision ID: 0004
Revises: 0003
Create Date: 2025-01-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("batches") as batch:  # batch mode: SQLite cannot add constraints in place
        batch.add_column(sa.Column("idempotency_key", sa.String(255), nullable=True))
        batch.add_column(sa.Column("fingerprint", sa.String(64), nullable=True))
        batch.create_unique_constraint("uq_batches_owner_idempotency_key", ["owner", "idempotency_key"])


def downgrade() -> None:
    with op.batch_alter_table("batches") as batch:
        batch.drop_constraint("uq_batches_owner_idempotency_key", type_="unique")
        batch.drop_column("fingerprint")
        batch.drop_column("idempotency_key")
