"""Channel setting desk_domain: the Zoho Desk data centre the channel's Desk org lives in.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30 18:05:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("channels") as batch:
        batch.add_column(sa.Column("desk_domain", sa.String(length=255), nullable=False,
                                   server_default="desk.zoho.com"))


def downgrade() -> None:
    with op.batch_alter_table("channels") as batch:
        batch.drop_column("desk_domain")
