"""Initial schema: model profiles, screenings, API keys.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from store.models import UTCDateTime

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSONType = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def _job_columns() -> list[sa.Column]:
    return [
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("stage", sa.String(64), nullable=True),
        sa.Column("progress", sa.Float(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("worker", sa.String(255), nullable=True),
        sa.Column("lease_token", sa.String(36), nullable=True),
        sa.Column("heartbeat_at", UTCDateTime(), nullable=True),
        sa.Column("problem", JSONType, nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.Column("started_at", UTCDateTime(), nullable=True),
        sa.Column("finished_at", UTCDateTime(), nullable=True),
    ]


def upgrade() -> None:
    op.create_table(
        "model_profiles",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("model_ref", sa.String(512), nullable=False),
        sa.Column("modality", sa.String(16), nullable=False),
        sa.Column("dataset_ref", sa.String(256), nullable=False),
        sa.Column("settings", JSONType, nullable=False),
        sa.Column("identity", JSONType, nullable=True),
        sa.Column("meta", JSONType, nullable=True),
        sa.Column("arrays", JSONType, nullable=True),
        sa.Column("size_bytes", sa.Integer(), nullable=True),
        sa.Column("data", sa.LargeBinary(), nullable=True),
        *_job_columns(),
        sa.UniqueConstraint("key", name="uq_model_profiles_key"),
    )
    op.create_index("ix_model_profiles_state", "model_profiles", ["state"])
    op.create_index("ix_model_profiles_model_ref", "model_profiles", ["model_ref"])

    op.create_table(
        "screenings",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("owner", sa.String(64), nullable=False),
        sa.Column("idempotency_key", sa.String(255), nullable=True),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("request", JSONType, nullable=False),
        sa.Column("vision_ref", sa.String(512), nullable=False),
        sa.Column("language_ref", sa.String(512), nullable=False),
        sa.Column("dataset_ref", sa.String(256), nullable=False),
        sa.Column("vision_profile_id", sa.String(36), sa.ForeignKey("model_profiles.id"), nullable=True),
        sa.Column("language_profile_id", sa.String(36), sa.ForeignKey("model_profiles.id"), nullable=True),
        sa.Column("result", JSONType, nullable=True),
        sa.Column("reused_from", sa.String(36), nullable=True),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        *_job_columns(),
        sa.UniqueConstraint("owner", "idempotency_key", name="uq_screenings_owner_idempotency_key"),
    )
    for column in ("state", "fingerprint", "vision_ref", "language_ref", "dataset_ref"):
        op.create_index(f"ix_screenings_{column}", "screenings", [column])
    op.create_index("ix_screenings_vision_profile_id", "screenings", ["vision_profile_id"])
    op.create_index("ix_screenings_language_profile_id", "screenings", ["language_profile_id"])

    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("prefix", sa.String(16), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False),
        sa.Column("rate_limit_per_minute", sa.Integer(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("last_used_at", UTCDateTime(), nullable=True),
        sa.Column("revoked_at", UTCDateTime(), nullable=True),
        sa.UniqueConstraint("key_hash", name="uq_api_keys_key_hash"),
    )


def downgrade() -> None:
    op.drop_table("api_keys")
    op.drop_table("screenings")
    op.drop_table("model_profiles")
