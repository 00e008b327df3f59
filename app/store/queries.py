"""The named queries that the use cases run."""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Connection, Row, and_, bindparam, case, func, insert, or_, select, union, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from app.store.models import Channel, ChannelImport, Conversation, InboxMessage, Installation, Reply, ReplyAttempt

# The request paths run Core statements on a plain Connection, built once with bound
# parameters: building a statement, loading ORM objects or keeping an ORM session
# costs more than running the query on an indexed key. Admin code uses the ORM.
_channels = Channel.__table__
_CHANNEL_BY_ID = select(_channels).where(_channels.c.id == bindparam("channel_id"))


# Every message up to it reached Desk (SPEC B14): max(acked_seq, imported_seq), in SQL.
SYNCED_SEQ = case((_channels.c.acked_seq >= _channels.c.imported_seq, _channels.c.acked_seq),
                  else_=_channels.c.imported_seq)


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


def lock_sync_cursors(conn: Connection, channel_id: str) -> Row[Any] | None:
    """A channel's acked_seq and imported_seq, its row locked until commit (for message.synced)."""
    return conn.execute(
        select(_channels.c.acked_seq, _channels.c.imported_seq).where(_channels.c.id == channel_id).with_for_update()
    ).first()


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
        delivery_status=bindparam("new_delivery_status"),
        delivery_updated_at=bindparam("new_delivery_updated_at"),
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
    delivery_status: str | None = None,
) -> bool:
    """Write a delivery's outcome, unless another request has claimed the reply since."""
    params = {
        "new_delivery_status": delivery_status,
        "new_delivery_updated_at": now if delivery_status else None,
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


# ---------------------------------------------------------------- installations (SPEC B12, B13)

_installations = Installation.__table__


def in_desk_org(org_id: str) -> ColumnElement[bool]:
    """Whether a channel belongs to a Desk org: its configured org_id, else its recorded desk_org_id (SPEC B3)."""
    return or_(_channels.c.org_id == org_id, and_(_channels.c.org_id.is_(None), _channels.c.desk_org_id == org_id))


def lock_installation(conn: Connection, org_id: str) -> Row[Any] | None:
    """An org's installation row, locked until commit, or None."""
    return conn.execute(select(_installations).where(_installations.c.org_id == org_id).with_for_update()).first()


def insert_installation(conn: Connection, row: dict[str, Any]) -> bool:
    """Insert an installation unless its org has one already (a concurrent callback); whether it did."""
    stmt = {"sqlite": sqlite_insert, "postgresql": pg_insert}[conn.dialect.name](_installations)
    inserted = conn.execute(stmt.on_conflict_do_nothing(index_elements=["org_id"]).returning(_installations.c.org_id),
                            row)
    return inserted.first() is not None


def update_installation(conn: Connection, org_id: str, values: dict[str, Any]) -> None:
    """Write some columns of an installation."""
    conn.execute(update(_installations).where(_installations.c.org_id == org_id).values(**values))


def disable_for_uninstall(conn: Connection, org_id: str) -> list[str]:
    """Disable the enabled channels of a Desk org, marked as disabled by its uninstall; their ids."""
    stmt = (
        update(_channels)
        .where(in_desk_org(org_id), _channels.c.enabled.is_(True))
        .values(enabled=False, disabled_by="uninstall")
        .returning(_channels.c.id)
    )
    return sorted(conn.execute(stmt).scalars())


def enable_after_install(conn: Connection, org_id: str) -> list[str]:
    """Enable the channels of a Desk org that its uninstall disabled (not those disabled by hand); their ids."""
    stmt = (
        update(_channels)
        .where(in_desk_org(org_id), _channels.c.enabled.is_(False), _channels.c.disabled_by == "uninstall")
        .values(enabled=True, disabled_by=None)
        .returning(_channels.c.id)
    )
    return sorted(conn.execute(stmt).scalars())


def record_org_context(conn: Connection, org_id: str, ciphertext: str, digest: str, now: datetime) -> None:
    """Make a securityContext the newest of every channel of a Desk org (those that do not hold it already)."""
    conn.execute(
        update(_channels)
        .where(in_desk_org(org_id), or_(_channels.c.desk_context_digest.is_(None),
                                        _channels.c.desk_context_digest != digest))
        .values(desk_context=ciphertext, desk_context_digest=digest, desk_context_at=now)
    )


def installations_page(conn: Connection, limit: int, after: tuple[datetime, str] | None) -> Sequence[Row[Any]]:
    """Installations newest first (by when first recorded), after a (created_at, org_id) position."""
    stmt = select(_installations).order_by(_installations.c.created_at.desc(), _installations.c.org_id.desc())
    if after is not None:
        created_at, org_id = after
        stmt = stmt.where(or_(_installations.c.created_at < created_at,
                              and_(_installations.c.created_at == created_at, _installations.c.org_id < org_id)))
    return conn.execute(stmt.limit(limit)).all()


def channels_of_desk_orgs(conn: Connection, org_ids: Sequence[str]) -> dict[str, list[str]]:
    """The channel ids of each Desk org, oldest channel first."""
    if not org_ids:
        return {}
    org = func.coalesce(_channels.c.org_id, _channels.c.desk_org_id)
    stmt = select(_channels.c.id, org.label("org")).where(org.in_(list(org_ids))).order_by(
        _channels.c.created_at, _channels.c.id)
    found: dict[str, list[str]] = {}
    for row in conn.execute(stmt):
        found.setdefault(row.org, []).append(row.id)
    return found


def org_channels(conn: Connection, org_id: str) -> Sequence[Row[Any]]:
    """A Desk org's channels as rows, oldest first."""
    return conn.execute(select(_channels).where(in_desk_org(org_id)).order_by(_channels.c.created_at,
                                                                              _channels.c.id)).all()


def channel_ids(conn: Connection, org_id: str | None) -> list[str]:
    """The ids of a Desk org's channels, or of every channel when org_id is None, oldest first."""
    stmt = select(_channels.c.id).order_by(_channels.c.created_at, _channels.c.id)
    if org_id is not None:
        stmt = stmt.where(in_desk_org(org_id))
    return list(conn.execute(stmt).scalars())


def message_permalinks(
    conn: Connection, channel_ids: Sequence[str], ext_id: str, conversation_ext_id: str | None
) -> dict[str, str | None]:
    """The permalink (or None) of the inbox message ext_id in each of these channels that has it."""
    stmt = select(_inbox.c.channel_id, _inbox.c.permalink).where(
        _inbox.c.channel_id.in_(list(channel_ids)), _inbox.c.ext_id == ext_id)
    if conversation_ext_id is not None:
        stmt = stmt.where(_inbox.c.conversation_ext_id == conversation_ext_id)
    return {row.channel_id: row.permalink for row in conn.execute(stmt)}


def conversation_channels(conn: Connection, channel_ids: Sequence[str], ext_id: str) -> set[str]:
    """Which of these channels have a conversation ext_id."""
    stmt = select(_conversations.c.channel_id).where(
        _conversations.c.channel_id.in_(list(channel_ids)), _conversations.c.ext_id == ext_id)
    return set(conn.execute(stmt).scalars())


def first_permalinks(conn: Connection, channel_id: str, conversation_ext_id: str, limit: int) -> list[str]:
    """The permalinks of a conversation's first messages that have one, lowest seq first (the partial index)."""
    stmt = (
        select(_inbox.c.permalink)
        .where(_inbox.c.channel_id == channel_id, _inbox.c.conversation_ext_id == conversation_ext_id,
               _inbox.c.permalink.is_not(None))
        .order_by(_inbox.c.seq)
        .limit(limit)
    )
    return list(conn.execute(stmt).scalars())


# ---------------------------------------------------------------- real-time import (SPEC B14)

_imports = ChannelImport.__table__


def take_import_lease(conn: Connection, channel_id: str, holder: str, now: datetime, until: datetime
                      ) -> Row[Any] | None:
    """Take a channel's import lease unless another holder's is still running; the import state, or None."""
    make = {"sqlite": sqlite_insert, "postgresql": pg_insert}[conn.dialect.name]
    statement = make(_imports).values(channel_id=channel_id, status="ok", failures=0, locked_by=holder,
                                      locked_until=until, updated_at=now)
    statement = statement.on_conflict_do_update(
        index_elements=["channel_id"],
        set_={"locked_by": holder, "locked_until": until},
        where=or_(_imports.c.locked_until.is_(None), _imports.c.locked_until < now),
    ).returning(*_imports.c)
    return conn.execute(statement).first()


def update_import(conn: Connection, channel_id: str, holder: str, values: dict[str, Any]) -> bool:
    """Write a channel's import state if `holder` still holds the lease; whether it did."""
    changed = conn.execute(
        update(_imports).where(_imports.c.channel_id == channel_id, _imports.c.locked_by == holder).values(**values)
    )
    return changed.rowcount == 1


def record_import(conn: Connection, channel_id: str, imported_seq: int, now: datetime) -> None:
    """Move a channel's import cursor forward (never back) after Desk took a batch."""
    conn.execute(update(_channels).where(_channels.c.id == channel_id).values(
        imported_seq=_greatest(conn, _channels.c.imported_seq, imported_seq), last_import_at=now))


def import_state(conn: Connection, channel_id: str) -> Row[Any] | None:
    """A channel's import state row, or None when no import ever ran."""
    return conn.execute(select(_imports).where(_imports.c.channel_id == channel_id)).first()


# ---------------------------------------------------------------- delivery reports (SPEC B15)


def lock_sent_reply(conn: Connection, channel_id: str, external_id: str) -> Row[Any] | None:
    """The sent ledger entry a provider's delivery report is about, locked until commit, or None."""
    return conn.execute(
        select(_replies.c.id, _replies.c.desk_reply_id, _replies.c.delivery_status)
        .where(_replies.c.channel_id == channel_id, _replies.c.external_id == external_id,
               _replies.c.status == "sent")
        .with_for_update()
    ).first()


def record_delivery_report(conn: Connection, ledger_id: int, status: str, error: str | None, now: datetime) -> None:
    """Write a provider's delivery report on a ledger entry."""
    conn.execute(update(_replies).where(_replies.c.id == ledger_id).values(
        delivery_status=status, delivery_error=error, delivery_updated_at=now))
