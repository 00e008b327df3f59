"""Delivery reports of providers (SPEC B15): a reply's delivery_status and delivery error.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30 19:10:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("replies") as batch:
        batch.add_column(sa.Column("delivery_status", sa.String(length=32), nullable=True))
        batch.add_column(sa.Column("delivery_error", sa.String(length=500), nullable=True))
        batch.add_column(sa.Column("delivery_updated_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("replies") as batch:
        batch.drop_column("delivery_updated_at")
        batch.drop_column("delivery_error")
        batch.drop_column("delivery_status")
