"""Real-time import (SPEC B14): the channel's import cursor, the import state per channel, and
jobs that are unique only while queued.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30 19:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_QUEUED = sa.text("status = 'queued'")


def upgrade() -> None:
    with op.batch_alter_table("channels") as batch:
        batch.add_column(sa.Column("imported_seq", sa.BigInteger(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("last_import_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("queue_key", sa.String(length=255), nullable=True))
    op.create_index("ux_jobs_queue_key_queued", "jobs", ["queue_key"], unique=True,
                    postgresql_where=_QUEUED, sqlite_where=_QUEUED)
    op.create_table(
        "channel_imports",
        sa.Column("channel_id", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=8), nullable=False),
        sa.Column("error", sa.String(length=500), nullable=True),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("retry_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("refused_digest", sa.String(length=64), nullable=True),
        sa.Column("locked_by", sa.String(length=128), nullable=True),
        sa.Column("locked_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["channel_id"], ["channels.id"], name=op.f("fk_channel_imports_channel_id_channels"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("channel_id", name=op.f("pk_channel_imports")),
    )


def downgrade() -> None:
    op.drop_table("channel_imports")
    op.drop_index("ux_jobs_queue_key_queued", table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("queue_key")
    with op.batch_alter_table("channels") as batch:
        batch.drop_column("last_import_at")
        batch.drop_column("imported_seq")
