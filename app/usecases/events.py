"""Events for subscribers (SPEC B16), recorded as an outbox: in the transaction of the change they
report, so that none is sent for a change that rolled back and none is lost for one that committed.

An event is stored only when an enabled subscription wants it (its type, and its channel or every
channel), together with one delivery per such subscription; the background workers deliver them
(app/usecases/event_delivery.py). The body a subscriber receives is
`{"id", "type", "created_at", "channel_id", "data"}`, built from the stored event.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Row, insert, select, text

from app.desk.mapping import desk_time, optional_desk_time
from app.store import queries
from app.store.models import EVENT_TYPES, Event, EventDelivery, InboxMessage, Subscription
from app.usecases.clock import utcnow

_events = Event.__table__
_deliveries = EventDelivery.__table__
_subscriptions = Subscription.__table__
_ENABLED = select(_subscriptions.c.id, _subscriptions.c.events, _subscriptions.c.channels).where(
    _subscriptions.c.enabled.is_(True))
# Wakes idle workers at commit on PostgreSQL (the job queue's channel: the same workers deliver).
_NOTIFY = text("SELECT pg_notify('deskbridge_jobs', '')")

# One event to record: (type, channel_id or None, data).
NewEvent = tuple[str, str | None, Mapping[str, Any]]


def new_event_id() -> str:
    """evt_ and 13 hex digits of microseconds since the epoch, then 12 random ones: ids sort by time."""
    return f"evt_{time.time_ns() // 1000:013x}{secrets.token_hex(6)}"


def record_events(conn: Connection, events: Iterable[NewEvent], now: datetime | None = None) -> int:
    """Record events in the caller's transaction, each with a delivery for every enabled subscription
    that wants it; events nobody wants are not stored. How many were stored."""
    wanted = list(events)
    if not wanted:
        return 0
    subscribers = conn.execute(_ENABLED).all()
    if not subscribers:
        return 0
    now = now or utcnow()
    event_rows: list[dict[str, Any]] = []
    delivery_rows: list[dict[str, Any]] = []
    for kind, channel_id, data in wanted:
        if kind not in EVENT_TYPES:
            raise ValueError(f"unknown event type {kind!r}")
        takers = [s.id for s in subscribers if _wants(s, kind, channel_id)]
        if not takers:
            continue
        event_id = new_event_id()
        event_rows.append({"id": event_id, "type": kind, "channel_id": channel_id, "data": dict(data),
                           "created_at": now})
        delivery_rows.extend({
            "event_id": event_id, "subscription_id": subscription_id, "event_type": kind, "channel_id": channel_id,
            "status": "pending", "attempts": 0, "next_attempt_at": now, "created_at": now, "updated_at": now,
        } for subscription_id in takers)
    if not event_rows:
        return 0
    conn.execute(insert(_events), event_rows)
    conn.execute(insert(_deliveries), delivery_rows)
    if conn.dialect.name == "postgresql":
        conn.execute(_NOTIFY)
    return len(event_rows)


def record_event(conn: Connection, kind: str, channel_id: str | None, data: Mapping[str, Any],
                 now: datetime | None = None) -> int:
    """Record one event (see record_events)."""
    return record_events(conn, [(kind, channel_id, data)], now)


def _wants(subscriber: Row[Any], kind: str, channel_id: str | None) -> bool:
    channels = subscriber.channels or []
    return kind in (subscriber.events or []) and (not channels or channel_id in channels)


def event_body(event: Any) -> dict[str, Any]:
    """What a subscriber receives for a stored event."""
    return {
        "id": event.id,
        "type": event.type,
        "created_at": desk_time(event.created_at),
        "channel_id": event.channel_id,
        "data": event.data,
    }


# --- the data of each kind of event (SPEC B16) ------------------------------------------------------


def message_data(message: Mapping[str, Any], *, with_content: bool) -> dict[str, Any]:
    """message.*: the message and conversation ids, and for message.received the message itself."""
    data: dict[str, Any] = {"message_id": message["ext_id"], "conversation_id": message["conversation_ext_id"]}
    if with_content:
        data["message"] = {
            "content": message["content"],
            "content_type": message["content_type"],
            "direction": message["direction"],
            "author": message.get("author"),
            "attachments": message.get("attachments") or [],
            "created_at": desk_time(message["created_at"]),
        }
    return data


def reply_data(entry: Any, *, status: str, external_id: str | None = None, reason: str | None = None,
               delivery_status: str | None = None, with_content: bool = False) -> dict[str, Any]:
    """reply.*: the ledger id, Desk's id, the status, the external id, the provider's delivery status
    and a failure's reason; the content for reply.received and reply.sent."""
    data: dict[str, Any] = {
        "id": entry.id,
        "desk_reply_id": entry.desk_reply_id,
        "status": status,
        "external_id": external_id,
        "delivery_status": delivery_status,
        "reason": reason,
    }
    if with_content:
        data["content"] = entry.content
        data["content_type"] = entry.content_type
    return data


def channel_data(channel: Any, **more: Any) -> dict[str, Any]:
    """channel.*: the channel as listed (no secrets), and `more` (an install's org_id)."""
    return {
        "channel": {
            "id": channel.id,
            "name": channel.name,
            "org_id": channel.org_id,
            "connector": channel.connector,
            "state": "enabled" if channel.enabled else "disabled",
            "desk_domain": channel.desk_domain,
            "last_seq": channel.last_seq,
            "acked_seq": channel.acked_seq,
            "imported_seq": channel.imported_seq,
            "last_pull_at": optional_desk_time(channel.last_pull_at),
            "created_at": desk_time(channel.created_at),
        },
        **more,
    }


def sync_cursors_if_wanted(conn: Connection, channel_id: str) -> Row[Any] | None:
    """The channel's acked_seq and imported_seq, its row locked until commit, when a subscription
    wants message.synced for it (else None, and no lock): read before a pull or an import moves them."""
    if not _anyone_wants(conn, "message.synced", channel_id):
        return None
    return queries.lock_sync_cursors(conn, channel_id)


def record_synced(conn: Connection, channel_id: str, before: Any, acked_seq: int, imported_seq: int,
                  now: datetime) -> int:
    """message.synced for each message that Desk's cursor or an import has just moved past, once:
    `before` holds the channel's cursors as sync_cursors_if_wanted read them, the others are the new ones."""
    old = max(before.acked_seq, before.imported_seq)
    new = max(before.acked_seq, before.imported_seq, acked_seq, imported_seq)
    if new <= old:
        return 0
    moved_past = _messages_between(conn, channel_id, old, new)
    return record_events(conn, [
        ("message.synced", channel_id, {"message_id": m.ext_id, "conversation_id": m.conversation_ext_id})
        for m in moved_past
    ], now)


def _anyone_wants(conn: Connection, kind: str, channel_id: str | None) -> bool:
    return any(_wants(s, kind, channel_id) for s in conn.execute(_ENABLED))


def _messages_between(conn: Connection, channel_id: str, after_seq: int, up_to_seq: int) -> Sequence[Row[Any]]:
    return conn.execute(
        select(InboxMessage.ext_id, InboxMessage.conversation_ext_id)
        .where(InboxMessage.channel_id == channel_id, InboxMessage.seq > after_seq, InboxMessage.seq <= up_to_seq)
        .order_by(InboxMessage.seq)
    ).all()
