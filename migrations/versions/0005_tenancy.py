"""Tenancy: keys belong to a tenant and carry scopes and an expiry; screenings and batches record their tenant.

Existing keys become tenants of their own (tenant = key id) with the scopes ``screen,read``; existing
screenings and batches belong to the tenant of the key that made them (their ``owner``), anonymous ones to
the anonymous tenant ``""``.

Revision ID: 0005
Revises: 0004
Create Date: 2025-01-05
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from store.models import UTCDateTime

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("tenant", sa.String(64), nullable=False, server_default=""))
        batch.add_column(sa.Column("scopes", sa.String(64), nullable=False, server_default="screen,read"))
        batch.add_column(sa.Column("expires_at", UTCDateTime(), nullable=True))
    op.execute("UPDATE api_keys SET tenant = id WHERE tenant = ''")
    op.create_index("ix_api_keys_tenant", "api_keys", ["tenant"])
    for table in ("screenings", "batches"):
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("tenant", sa.String(64), nullable=False, server_default=""))
        op.execute(f"UPDATE {table} SET tenant = owner WHERE owner <> '' AND owner <> 'local'")
        op.create_index(f"ix_{table}_tenant", table, ["tenant"])


def downgrade() -> None:
    for table in ("batches", "screenings"):
        op.drop_index(f"ix_{table}_tenant", table_name=table)
        with op.batch_alter_table(table) as batch:
            batch.drop_column("tenant")
    op.drop_index("ix_api_keys_tenant", table_name="api_keys")
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("expires_at")
        batch.drop_column("scopes")
        batch.drop_column("tenant")
