"""The named queries that the use cases run."""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Row, bindparam, func, insert, select, union, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from app.store.models import Channel, Conversation, InboxMessage, Reply, ReplyAttempt

# The request paths run Core statements on a plain Connection, built once with bound
# parameters: building a statement, loading ORM objects or keeping an ORM session
# costs more than running the query on an indexed key. Admin code uses the ORM.
_channels = Channel.__table__
_CHANNEL_BY_ID = select(_channels).where(_channels.c.id == bindparam("channel_id"))


def get_channel(session: Session, channel_id: str) -> Channel | None:
    """The channel with this id as an ORM object (for changes), or None."""
    if not CHANNEL_ID.fullmatch(channel_id):
        return None  # cannot exist, and some strings (NUL) would not even reach the query
    return session.get(Channel, channel_id)


CHANNEL_ID = re.compile(r"ch_[A-Za-z0-9_-]{1,61}")


def channel_row(conn: Connection, channel_id: str) -> Row[Any] | None:
    """The channel with this id as a read-only row, or None: the request paths' lookup."""
    if not CHANNEL_ID.fullmatch(channel_id):
        return None  # cannot exist, and some strings (NUL) would not even reach the query
    return conn.execute(_CHANNEL_BY_ID, {"channel_id": channel_id}).first()


_inbox = InboxMessage.__table__
_conversations = Conversation.__table__
_replies = Reply.__table__
_EXISTING_MESSAGE_IDS = union(
    select(_inbox.c.ext_id).where(
        _inbox.c.channel_id == bindparam("channel_id"), _inbox.c.ext_id.in_(bindparam("inbox_ids", expanding=True))
    ),
    select(_replies.c.external_id).where(
        _replies.c.channel_id == bindparam("channel_id"),
        _replies.c.status == "sent",
        _replies.c.external_id.in_(bindparam("reply_ids", expanding=True)),
    ),
)
# Locks the channel row until commit (the per-channel lock of SPEC B3; on SQLite the
# write transaction already holds the database lock) and reserves seq numbers. An
# UPDATE of non-key columns takes PostgreSQL's FOR NO KEY UPDATE lock, which does
# not block the foreign key checks of ledger rows inserted for the same channel.
_RESERVE_SEQS = (
    update(_channels)
    .where(_channels.c.id == bindparam("channel_id"))
    .values(last_seq=_channels.c.last_seq + bindparam("count"))
    .returning(_channels.c.last_seq)
)
_INSERT_NEW_CONVERSATIONS = {
    name: make(_conversations).on_conflict_do_nothing(index_elements=["channel_id", "ext_id"])
    for name, make in (("sqlite", sqlite_insert), ("postgresql", pg_insert))
}
_INSERT_MESSAGES = insert(_inbox)


def existing_message_ids(conn: Connection, channel_id: str, ext_ids: Sequence[str]) -> set[str]:
    """The ids among ext_ids already in the inbox or delivered by us as replies."""
    if not ext_ids:
        return set()
    params = {"channel_id": channel_id, "inbox_ids": list(ext_ids), "reply_ids": list(ext_ids)}
    return set(conn.execute(_EXISTING_MESSAGE_IDS, params).scalars())


def reserve_seqs(conn: Connection, channel_id: str, count: int) -> int | None:
    """Lock the channel until commit and reserve `count` seq numbers; the last one, or None."""
    return conn.execute(_RESERVE_SEQS, {"channel_id": channel_id, "count": count}).scalar_one_or_none()


def insert_new_conversations(conn: Connection, rows: list[dict[str, Any]]) -> None:
    """Insert the conversations that do not exist yet, in one executemany."""
    if rows:
        conn.execute(_INSERT_NEW_CONVERSATIONS[conn.dialect.name], rows)


def insert_messages(conn: Connection, rows: list[dict[str, Any]]) -> None:
    """Insert inbox messages in one executemany."""
    if rows:
        conn.execute(_INSERT_MESSAGES, rows)


_MESSAGE_COLUMNS = (
    InboxMessage.seq,
    InboxMessage.ext_id,
    InboxMessage.conversation_ext_id,
    InboxMessage.content,
    InboxMessage.content_type,
    InboxMessage.direction,
    InboxMessage.can_reply,
    InboxMessage.author,
    InboxMessage.attachments,
    InboxMessage.created_at,
)


_IS_ECHO = (
    select(Reply.id)
    .where(
        Reply.channel_id == InboxMessage.channel_id,
        Reply.external_id == InboxMessage.ext_id,
        Reply.status == "sent",
    )
    .exists()
    .label("is_echo")
)
_MESSAGES_AFTER = (
    select(*_MESSAGE_COLUMNS, _IS_ECHO)
    .where(InboxMessage.channel_id == bindparam("channel_id"), InboxMessage.seq > bindparam("after_seq"))
    .order_by(InboxMessage.seq)
    .limit(bindparam("limit"))
)
_CONVERSATIONS_FIRST_BETWEEN = (
    select(Conversation.ext_id, Conversation.subject, Conversation.first_seq)
    .where(
        Conversation.channel_id == bindparam("channel_id"),
        Conversation.first_seq > bindparam("after_seq"),
        Conversation.first_seq <= bindparam("last_seq"),
    )
    .order_by(Conversation.first_seq)
)


def messages_after(conn: Connection, channel_id: str, after_seq: int, limit: int) -> Sequence[Row[Any]]:
    """Inbox messages with seq > after_seq, in seq order, at most limit (a range scan).

    Each row says whether it is the echo of a reply we delivered (`is_echo`): an echo
    can arrive before its delivery is recorded as sent, and so pass the ingest check.
    """
    params = {"channel_id": channel_id, "after_seq": after_seq, "limit": limit}
    return conn.execute(_MESSAGES_AFTER, params).all()


def conversations_first_between(conn: Connection, channel_id: str, after_seq: int, last_seq: int) -> Sequence[Row[Any]]:
    """Conversations whose first message has after_seq < seq <= last_seq."""
    params = {"channel_id": channel_id, "after_seq": after_seq, "last_seq": last_seq}
    return conn.execute(_CONVERSATIONS_FIRST_BETWEEN, params).all()


def record_pull(
    conn: Connection, channel_id: str, acked_seq: int | None, now: datetime, more: dict[str, Any] | None = None
) -> None:
    """Record a pull's time, the cursor Desk sent back if given, and `more` channel columns."""
    values: dict[str, Any] = {"last_pull_at": now, **(more or {})}
    if acked_seq is not None:
        # acked_seq never moves backwards, whatever older state Desk sends.
        values["acked_seq"] = _greatest(conn, _channels.c.acked_seq, acked_seq)
    conn.execute(update(_channels).where(_channels.c.id == channel_id).values(**values))


def _greatest(conn: Connection, column: Any, value: int) -> Any:
    # SQLite spells GREATEST as the two-argument scalar max().
    name = "max" if conn.dialect.name == "sqlite" else "greatest"
    return getattr(func, name)(column, value)


def update_channel(conn: Connection, channel_id: str, values: dict[str, Any]) -> None:
    """Write some columns of a channel row."""
    if values:
        conn.execute(update(_channels).where(_channels.c.id == channel_id).values(**values))


_LEDGER_COLUMNS = (
    _replies.c.id,
    _replies.c.channel_id,
    _replies.c.desk_reply_id,
    _replies.c.status,
    _replies.c.conversation_ext_id,
    _replies.c.in_reply_to,
    _replies.c.content,
    _replies.c.content_type,
    _replies.c.author,
    _replies.c.attachments,
    _replies.c.external_id,
    _replies.c.attempt_started_at,
    _replies.c.sent_at,
    _replies.c.updated_at,
)
_INSERT_REPLY_IF_NEW = {
    name: make(_replies)
    .on_conflict_do_nothing(index_elements=["channel_id", "desk_reply_id"])
    .returning(*_LEDGER_COLUMNS)
    for name, make in (("sqlite", sqlite_insert), ("postgresql", pg_insert))
}
_LOCK_REPLY = (
    select(*_LEDGER_COLUMNS)
    .where(_replies.c.channel_id == bindparam("channel_id"), _replies.c.desk_reply_id == bindparam("reply_id"))
    .with_for_update()
)
_RECLAIM_REPLY = (
    update(_replies)
    .where(_replies.c.id == bindparam("ledger_id"))
    .values(status="pending", attempt_started_at=bindparam("now"), updated_at=bindparam("now"))
)


def insert_reply_if_new(conn: Connection, row: dict[str, Any]) -> Row[Any] | None:
    """Insert a ledger row unless (channel, Desk reply id) exists; the new row, or None."""
    # RETURNING, not rowcount: psycopg reports no rowcount for this statement.
    stmt = _INSERT_REPLY_IF_NEW[conn.dialect.name]
    return conn.execute(stmt, row).first()


def lock_reply(conn: Connection, channel_id: str, desk_reply_id: str) -> Row[Any]:
    """The ledger row of a reply, locked until commit."""
    params = {"channel_id": channel_id, "reply_id": desk_reply_id}
    return conn.execute(_LOCK_REPLY, params).one()


_LEDGER_ENTRY = select(*_LEDGER_COLUMNS).where(_replies.c.id == bindparam("ledger_id"))


def ledger_entry(conn: Connection, ledger_id: int) -> Row[Any] | None:
    """One ledger entry by its id, or None."""
    return conn.execute(_LEDGER_ENTRY, {"ledger_id": ledger_id}).first()


def reclaim_reply(conn: Connection, ledger_id: int, now: datetime) -> None:
    """Mark a ledger row pending again, its delivery starting now."""
    conn.execute(_RECLAIM_REPLY, {"ledger_id": ledger_id, "now": now})


_RECORD_OUTCOME = (
    update(_replies)
    .where(_replies.c.id == bindparam("ledger_id"), _replies.c.attempt_started_at == bindparam("claimed_at"))
    .values(
        attempts=_replies.c.attempts + bindparam("more_attempts"),
        status=bindparam("new_status"),
        external_id=bindparam("new_external_id"),
        sent_at=bindparam("new_sent_at"),
        last_error=bindparam("new_last_error"),
        updated_at=bindparam("now"),
    )
)


def record_outcome(
    conn: Connection,
    ledger_id: int,
    claimed_at: datetime,
    *,
    attempts: int,
    status: str,
    now: datetime,
    external_id: str | None = None,
    last_error: str | None = None,
) -> bool:
    """Write a delivery's outcome, unless another request has claimed the reply since."""
    params = {
        "ledger_id": ledger_id,
        "claimed_at": claimed_at,
        "more_attempts": attempts,
        "new_status": status,
        "new_external_id": external_id,
        "new_sent_at": now if status == "sent" else None,
        "new_last_error": last_error,
        "now": now,
    }
    return conn.execute(_RECORD_OUTCOME, params).rowcount == 1


_INSERT_ATTEMPTS = insert(ReplyAttempt.__table__)


def insert_attempts(conn: Connection, rows: list[dict[str, Any]]) -> None:
    """Append delivery attempts to ledger entries' histories."""
    if rows:
        conn.execute(_INSERT_ATTEMPTS, rows)


def list_channels(session: Session) -> Sequence[Channel]:
    """Every channel, oldest first."""
    return session.scalars(select(Channel).order_by(Channel.created_at, Channel.id)).all()


def oldest_waiting_at(session: Session, channel_id: str, acked_seq: int) -> datetime | None:
    """When the oldest message Desk has not confirmed arrived, or None when none waits."""
    return session.scalar(
        select(InboxMessage.received_at)
        .where(InboxMessage.channel_id == channel_id, InboxMessage.seq > acked_seq)
        .order_by(InboxMessage.seq)
        .limit(1)
    )


def replies_failed_since(session: Session, channel_id: str, since: datetime) -> int:
    """How many of a channel's replies ended failed since a time."""
    return session.scalar(
        select(func.count())
        .select_from(Reply)
        .where(Reply.channel_id == channel_id, Reply.status == "failed", Reply.updated_at >= since)
    ) or 0
