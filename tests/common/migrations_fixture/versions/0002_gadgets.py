"""Add widgets.colour and gadgets (a foreign key to widgets)."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("widgets") as batch:
        batch.add_column(sa.Column("colour", sa.String(16), nullable=True))
    op.create_table(
        "gadgets",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("widget_id", sa.Integer, sa.ForeignKey("widgets.id"), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("gadgets")
    with op.batch_alter_table("widgets") as batch:
        batch.drop_column("colour")
