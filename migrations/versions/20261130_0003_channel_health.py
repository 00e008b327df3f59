"""Channel health: when Desk's cursor last moved (a successful pull).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30 16:40:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("channels") as batch:
        batch.add_column(sa.Column("acked_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("replies") as batch:
        batch.create_index("ix_replies_status_updated_at", ["status", "updated_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("replies") as batch:
        batch.drop_index("ix_replies_status_updated_at")
    with op.batch_alter_table("channels") as batch:
        batch.drop_column("acked_at")
