"""Connector settings and secrets in one shape for any kind; Desk's org and securityContext
per channel; the attempts history of the reply ledger.

Existing webhook channels keep working: their outbound URL moves into `settings` and
their two secret ciphertexts into `secrets`, unchanged (no SECRET_KEY needed).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30 16:10:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("channels") as batch:
        batch.add_column(sa.Column("settings", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("secrets", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("desk_org_id", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("desk_context", sa.Text(), nullable=True))
        batch.add_column(sa.Column("desk_context_digest", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("desk_context_at", sa.DateTime(timezone=True), nullable=True))
    channels = sa.table(
        "channels",
        sa.column("id", sa.String),
        sa.column("outbound_url", sa.String),
        sa.column("inbound_secret", sa.Text),
        sa.column("outbound_secret", sa.Text),
        sa.column("settings", sa.JSON),
        sa.column("secrets", sa.JSON),
    )
    conn = op.get_bind()
    for row in conn.execute(sa.select(channels)).all():
        conn.execute(
            channels.update()
            .where(channels.c.id == row.id)
            .values(
                settings={"outbound_url": row.outbound_url},
                secrets={"inbound_secret": row.inbound_secret, "outbound_secret": row.outbound_secret},
            )
        )
    with op.batch_alter_table("channels") as batch:
        batch.alter_column("settings", existing_type=sa.JSON(), nullable=False)
        batch.alter_column("secrets", existing_type=sa.JSON(), nullable=False)
        batch.drop_column("outbound_url")
        batch.drop_column("inbound_secret")
        batch.drop_column("outbound_secret")

    op.create_table(
        "reply_attempts",
        sa.Column("id", _BigId, autoincrement=True, nullable=False),
        sa.Column("reply_id", _BigId, nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("duration_ms", sa.Integer(), nullable=False),
        sa.Column("outcome", sa.String(length=9), nullable=False),
        sa.Column("http_status", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["reply_id"], ["replies.id"], name=op.f("fk_reply_attempts_reply_id_replies"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reply_attempts")),
    )
    op.create_index("ix_reply_attempts_reply_id", "reply_attempts", ["reply_id", "id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_reply_attempts_reply_id", table_name="reply_attempts")
    op.drop_table("reply_attempts")
    with op.batch_alter_table("channels") as batch:
        batch.add_column(sa.Column("outbound_url", sa.String(length=2048), nullable=True))
        batch.add_column(sa.Column("inbound_secret", sa.Text(), nullable=True))
        batch.add_column(sa.Column("outbound_secret", sa.Text(), nullable=True))
    channels = sa.table(
        "channels",
        sa.column("id", sa.String),
        sa.column("connector", sa.String),
        sa.column("outbound_url", sa.String),
        sa.column("inbound_secret", sa.Text),
        sa.column("outbound_secret", sa.Text),
        sa.column("settings", sa.JSON),
        sa.column("secrets", sa.JSON),
    )
    conn = op.get_bind()
    for row in conn.execute(sa.select(channels)).all():
        if row.connector != "webhook":
            raise RuntimeError(f"channel {row.id} uses the {row.connector} connector, which revision 0001 cannot hold")
        conn.execute(
            channels.update()
            .where(channels.c.id == row.id)
            .values(
                outbound_url=row.settings["outbound_url"],
                inbound_secret=row.secrets["inbound_secret"],
                outbound_secret=row.secrets["outbound_secret"],
            )
        )
    with op.batch_alter_table("channels") as batch:
        batch.alter_column("outbound_url", existing_type=sa.String(length=2048), nullable=False)
        batch.alter_column("inbound_secret", existing_type=sa.Text(), nullable=False)
        batch.alter_column("outbound_secret", existing_type=sa.Text(), nullable=False)
        for name in ("desk_context_at", "desk_context_digest", "desk_context", "desk_org_id", "secrets", "settings"):
            batch.drop_column(name)
