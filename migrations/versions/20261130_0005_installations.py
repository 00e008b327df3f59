"""Desk installations (platform callbacks), the channels an uninstall disabled, and the index
that finds a conversation's first permalink (open in source).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30 18:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_WITH_PERMALINK = sa.text("permalink IS NOT NULL")


def upgrade() -> None:
    op.create_table(
        "installations",
        sa.Column("org_id", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=11), nullable=False),
        sa.Column("installed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("uninstalled_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_event", sa.String(length=64), nullable=False),
        sa.Column("last_event_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("security_context", sa.Text(), nullable=True),
        sa.Column("security_context_digest", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("org_id", name=op.f("pk_installations")),
    )
    op.create_index("ix_installations_created_at", "installations", ["created_at", "org_id"], unique=False)
    with op.batch_alter_table("channels") as batch:
        batch.add_column(sa.Column("disabled_by", sa.String(length=16), nullable=True))
    op.create_index(
        "ix_inbox_messages_permalinks", "inbox_messages", ["channel_id", "conversation_ext_id", "seq"], unique=False,
        postgresql_where=_WITH_PERMALINK, sqlite_where=_WITH_PERMALINK,
    )


def downgrade() -> None:
    op.drop_index("ix_inbox_messages_permalinks", table_name="inbox_messages")
    with op.batch_alter_table("channels") as batch:
        batch.drop_column("disabled_by")
    op.drop_index("ix_installations_created_at", table_name="installations")
    op.drop_table("installations")
