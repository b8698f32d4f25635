"""backbones

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30 01:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "backbones",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.Column("model_version_id", sa.String(length=128), nullable=False),
        sa.Column("resolved", sa.LargeBinary(), nullable=False),
        sa.Column("update_time", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("tenant_id", "model_version_id"),
    )
    with op.batch_alter_table("backbones", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_backbones_tenant_id"), ["tenant_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("backbones", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_backbones_tenant_id"))
    op.drop_table("backbones")
