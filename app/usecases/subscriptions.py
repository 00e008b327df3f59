"""Event subscriptions, the operator's side (SPEC B16): create, list, show, change, delete and rotate a
subscription's secret; its failed executions (list, retry, delete, export), its summary and its executions
summary; and the retention of events and deliveries. Modelled on Zoho SalesIQ's webhooks API.

Sending is the delivery engine's (app/usecases/event_delivery.py): a retry here only makes deliveries due
again, with their attempts and their event (so the same webhook-id) kept.
"""

from __future__ import annotations

import csv
import io
import json
import secrets
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from marshmallow import RAISE, Schema, fields, validate
from sqlalchemy import (
    Connection,
    Row,
    Select,
    String,
    and_,
    case,
    cast,
    delete,
    exists,
    func,
    literal_column,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.orm import Session

from app.connectors.webhook import OutboundUrl
from app.desk.mapping import desk_time, optional_desk_time
from app.domain.errors import Invalid, NotFound
from app.jobs.queue import NOTIFY_CHANNEL
from app.keyring import Keyring, new_webhook_secret
from app.store.database import Database
from app.store.models import EVENT_TYPES, Channel, Event, EventAttempt, EventDelivery, Subscription
from app.usecases.clock import utcnow
from app.usecases.paging import Page, PageQuery, decode_cursor, encode_cursor, not_a_cursor
from app.validation import IsoTimeInUtc, Text, load

MAX_RETRY_IDS = 99
MAX_DELETE_IDS = 300
MAX_CHANNELS = 1000
MAX_ID = 2**63 - 1
SUBSCRIPTION_STATES = ("enabled", "disabled")
FAILURE_STATUSES = ("retrying", "failed")  # a delivery whose last attempt failed
COUNTED_STATUSES = ("delivered", "retrying", "failed")
INTERVALS = ("hour", "day")
EXPORT_FORMATS = ("csv", "jsonl")
EXPORT_COLUMNS = ("id", "event_id", "type", "channel_id", "status", "attempts", "last_status_code", "last_error",
                  "next_attempt_at", "created_at", "updated_at")
PURGE_BATCH = 1000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Wakes idle workers at commit on PostgreSQL, as an enqueue does: a retried delivery is due now.
_WAKE_WORKERS = text(f"SELECT pg_notify('{NOTIFY_CHANNEL}', '')")


def new_subscription_id() -> str:
    """whk_ and random url-safe text."""
    return "whk_" + secrets.token_urlsafe(16)


# ---------------------------------------------------------------- input schemas


def _event_types(**kwargs: Any) -> fields.List:
    return fields.List(
        Text(validate=validate.OneOf(EVENT_TYPES, error="Unknown event type {input!r}; the valid types are: "
                                                        "{choices}.")),
        validate=validate.Length(min=1, max=100, error="Name 1 to 100 event types."),
        metadata={"description": "The event types to send, named one by one (no wildcard)."}, **kwargs)


def _channel_ids(**kwargs: Any) -> fields.List:
    return fields.List(Text(validate=validate.Length(min=1, max=64)), validate=validate.Length(max=MAX_CHANNELS),
                       metadata={"description": "Ids of existing channels; empty: every channel."}, **kwargs)


class Flag(fields.Boolean):
    """A JSON true or false, nothing else (not 1, not "yes")."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> bool:
        if not isinstance(value, bool):
            raise self.make_error("invalid", input=value)
        return value


class NewSubscription(Schema):
    """`POST /api/webhooks`: where to send which events, for which channels."""

    class Meta:
        unknown = RAISE  # our own API: unknown fields are refused

    url = OutboundUrl(allow_private=False, required=True, metadata={
        "description": "http(s), under the outbound address policy (no private addresses unless "
                       "ALLOW_PRIVATE_OUTBOUND)."})
    events = _event_types(required=True)
    channels = _channel_ids(load_default=list)
    description = Text(load_default=None, allow_none=True, validate=validate.Length(max=500))
    enabled = Flag(load_default=True)


class SubscriptionChanges(Schema):
    """`PATCH /api/webhooks/<id>`: any of the fields of a new subscription."""

    class Meta:
        unknown = RAISE

    url = OutboundUrl(allow_private=False)
    events = _event_types()
    channels = _channel_ids()
    description = Text(allow_none=True, validate=validate.Length(max=500))
    enabled = Flag(metadata={
        "description": "true clears disabled_reason; false disables with disabled_reason \"operator\"."})


class SubscriptionFilter(Schema):
    class Meta:
        unknown = RAISE

    status = Text(validate=validate.OneOf(SUBSCRIPTION_STATES))
    channel = Text(validate=validate.Length(min=1, max=64), metadata={
        "description": "Subscriptions that receive this channel's events (those for every channel too)."})
    since = IsoTimeInUtc(format="iso")
    until = IsoTimeInUtc(format="iso")


class SubscriptionsQuery(SubscriptionFilter, PageQuery):
    """`GET /api/webhooks`: the filters, and a page."""


class FailuresFilter(Schema):
    """The filters of the failures list and export (on the delivery's creation time)."""

    class Meta:
        unknown = RAISE

    type = Text(validate=validate.OneOf(EVENT_TYPES))
    status = Text(validate=validate.OneOf(FAILURE_STATUSES))
    channel = Text(validate=validate.Length(min=1, max=64))
    since = IsoTimeInUtc(format="iso")
    until = IsoTimeInUtc(format="iso")


class FailuresQuery(FailuresFilter, PageQuery):
    """`GET /api/webhooks/<id>/failures`: the filters, and a page."""


class DeliveryIds(Schema):
    class Meta:
        unknown = RAISE

    ids = fields.List(fields.Integer(strict=True, validate=validate.Range(min=1, max=MAX_ID)), required=True,
                      validate=validate.Length(min=1, max=MAX_RETRY_IDS))


class RetryFailures(DeliveryIds):
    """`POST /api/webhooks/<id>/failures/retry`: delivery ids, at most 99."""


class DeleteFailures(DeliveryIds):
    """`POST /api/webhooks/<id>/failures/delete`: delivery ids, at most 300."""

    ids = fields.List(fields.Integer(strict=True, validate=validate.Range(min=1, max=MAX_ID)), required=True,
                      validate=validate.Length(min=1, max=MAX_DELETE_IDS))


class SummaryQuery(Schema):
    """`GET /api/webhooks/<id>/summary`: deliveries created in [since, until)."""

    class Meta:
        unknown = RAISE

    since = IsoTimeInUtc(format="iso")
    until = IsoTimeInUtc(format="iso")


class ExecutionsQuery(SummaryQuery):
    """`GET /api/webhooks/<id>/executions/summary`: attempts started in [since, until), per hour or day."""

    interval = Text(load_default="day", validate=validate.OneOf(INTERVALS))


def _with_url_policy(schema_class: type[Schema], allow_private: bool) -> Schema:
    """A schema whose url field follows this deployment's address policy."""
    schema = schema_class()
    url = schema.fields["url"]
    assert isinstance(url, OutboundUrl)
    url.allow_private = allow_private  # an instance's fields are its own copies
    return schema


# ---------------------------------------------------------------- subscriptions


def subscription(row: Subscription) -> dict[str, Any]:
    """A subscription as operators see it (never its secret)."""
    return {
        "id": row.id,
        "url": row.url,
        "events": list(row.events),
        "channels": list(row.channels),
        "description": row.description,
        "enabled": row.enabled,
        "disabled_reason": row.disabled_reason,
        "created_at": desk_time(row.created_at),
        "updated_at": desk_time(row.updated_at),
    }


def create_subscription(db: Database, keyring: Keyring, body: Any, *, allow_private: bool) -> dict[str, Any]:
    """Create a subscription; the answer holds its signing secret, shown this once."""
    request = load(_with_url_policy(NewSubscription, allow_private), body,
                   "The subscription is not valid.")
    secret = new_webhook_secret()
    now = utcnow()
    row = Subscription(
        id=new_subscription_id(),
        url=request["url"],
        events=list(dict.fromkeys(request["events"])),
        channels=list(dict.fromkeys(request.get("channels") or [])),
        description=request["description"],
        enabled=request["enabled"],
        secret=keyring.encrypt(secret),
        disabled_reason=None if request["enabled"] else "operator",
        created_at=now,
        updated_at=now,
    )
    with db.session(write=True) as session:
        _check_channels(session.connection(), row.channels, known=())
        session.add(row)
        session.commit()
        return {**subscription(row), "secret": secret}


def list_subscriptions(db: Database, query: Any) -> Page:
    """Subscriptions newest first, filtered, a page at a time."""
    params = load(SubscriptionsQuery(), query, "The query is not valid.")
    statement = select(Subscription)
    if "status" in params:
        statement = statement.where(Subscription.enabled.is_(params["status"] == "enabled"))
    if "channel" in params:
        # The channel ids are stored as a JSON list (json.dumps, as SQLAlchemy writes it): match the id as
        # a quoted JSON string in its text.
        listed = cast(Subscription.channels, String).contains(json.dumps(params["channel"]), autoescape=True)
        statement = statement.where(or_(cast(Subscription.channels, String) == "[]", listed))
    if "since" in params:
        statement = statement.where(Subscription.created_at >= params["since"])
    if "until" in params:
        statement = statement.where(Subscription.created_at < params["until"])
    if "cursor" in params:
        created_at, subscription_id = _decode_subscription_cursor(params["cursor"])
        statement = statement.where(or_(
            Subscription.created_at < created_at,
            and_(Subscription.created_at == created_at, Subscription.id < subscription_id)))
    statement = statement.order_by(Subscription.created_at.desc(), Subscription.id.desc()).limit(params["limit"] + 1)
    with db.session() as session:
        rows = list(session.scalars(statement))
    more = len(rows) > params["limit"]
    rows = rows[: params["limit"]]
    cursor = _encode_subscription_cursor(rows[-1]) if more else None
    return Page([subscription(row) for row in rows], cursor)


def show_subscription(db: Database, subscription_id: str) -> dict[str, Any]:
    """One subscription (never its secret)."""
    with db.session() as session:
        return subscription(_get(session, subscription_id))


def update_subscription(db: Database, subscription_id: str, body: Any, *, allow_private: bool) -> dict[str, Any]:
    """Change a subscription's URL, events, channels, description or state; the subscription as shown.

    Enabling clears disabled_reason; disabling an enabled one records "operator" (an already disabled
    one keeps its reason: "gone" or "failing" still says why deliveries stopped).
    """
    if not isinstance(body, dict):
        raise Invalid("validation_error", "The changes must be a JSON object.")
    changes = load(_with_url_policy(SubscriptionChanges, allow_private), body,
                   "The changes are not valid.")
    with db.session(write=True) as session:
        row = _get(session, subscription_id, lock=True)
        wanted = dict(changes)
        if "channels" in wanted:
            wanted["channels"] = list(dict.fromkeys(wanted["channels"]))
            # Ids it already has stay accepted when their channel has been deleted since.
            _check_channels(session.connection(), wanted["channels"], known=row.channels)
        if "events" in wanted:
            wanted["events"] = list(dict.fromkeys(wanted["events"]))
        if "enabled" in wanted and wanted["enabled"] != row.enabled:
            wanted["disabled_reason"] = None if wanted["enabled"] else "operator"
        changed = {name: value for name, value in wanted.items() if getattr(row, name) != value}
        if changed:
            # Only a real change moves updated_at: the delivery engine's "failing for 5 days" counts from it.
            for name, value in changed.items():
                setattr(row, name, value)
            row.updated_at = utcnow()
            session.commit()
        return subscription(row)


def delete_subscription(db: Database, subscription_id: str) -> None:
    """Delete a subscription with its deliveries and their attempts; the events stay (others may want them)."""
    with db.write() as conn:
        _require(conn, subscription_id, lock=True)
        conn.execute(delete(EventAttempt).where(EventAttempt.subscription_id == subscription_id))
        conn.execute(delete(EventDelivery).where(EventDelivery.subscription_id == subscription_id))
        conn.execute(delete(Subscription).where(Subscription.id == subscription_id))


def rotate_subscription_secret(db: Database, keyring: Keyring, subscription_id: str) -> dict[str, str]:
    """A new signing secret, shown this once; the next attempt of any delivery is signed with it."""
    secret = new_webhook_secret()
    with db.write() as conn:
        _require(conn, subscription_id, lock=True)
        conn.execute(update(Subscription).where(Subscription.id == subscription_id)
                     .values(secret=keyring.encrypt(secret), updated_at=utcnow()))
    return {"secret": secret}


# ---------------------------------------------------------------- failed executions


def failure(row: Any) -> dict[str, Any]:
    """A delivery whose last attempt failed, as operators see it."""
    return {
        "id": row.id,
        "event_id": row.event_id,
        "type": row.event_type,
        "channel_id": row.channel_id,
        "status": row.status,
        "attempts": row.attempts,
        "last_status_code": row.last_status_code,
        "last_error": row.last_error,
        "next_attempt_at": optional_desk_time(row.next_attempt_at) if row.status == "retrying" else None,
        "created_at": desk_time(row.created_at),
        "updated_at": desk_time(row.updated_at),
    }


def list_failures(db: Database, subscription_id: str, query: Any) -> Page:
    """The subscription's deliveries whose last attempt failed, newest first, filtered, a page at a time."""
    params = load(FailuresQuery(), query, "The query is not valid.")
    statement = _failures(subscription_id, params).order_by(EventDelivery.id.desc()).limit(params["limit"] + 1)
    if "cursor" in params:
        position = decode_cursor("f", params["cursor"])
        if not position.isdigit():
            raise not_a_cursor()
        statement = statement.where(EventDelivery.id < int(position))
    with db.read() as conn:
        _require(conn, subscription_id)
        rows = list(conn.execute(statement))
    more = len(rows) > params["limit"]
    rows = rows[: params["limit"]]
    return Page([failure(row) for row in rows], encode_cursor("f", str(rows[-1].id)) if more else None)


def retry_failures(db: Database, subscription_id: str, body: Any) -> dict[str, Any]:
    """Make failed deliveries due again: the delivery engine attempts each once more, at once, with the same
    event (so the same webhook-id) and its attempts kept.

    Skipped: a delivered one ("already delivered"), an id that is not one of this subscription's
    deliveries ("not found"), one being attempted right now, and every one while the subscription is
    disabled ("subscription disabled": it would not be sent; enable the subscription first).
    """
    request = load(RetryFailures(), body, "The retry request is not valid.")
    now = utcnow()
    wanted = list(dict.fromkeys(request["ids"]))
    queued: list[int] = []
    skipped: list[dict[str, Any]] = []
    with db.write() as conn:
        enabled = _require(conn, subscription_id, lock=True).enabled
        found = {row.id: row for row in conn.execute(
            select(EventDelivery.id, EventDelivery.status, EventDelivery.attempts, EventDelivery.locked_until)
            .where(EventDelivery.subscription_id == subscription_id, EventDelivery.id.in_(wanted))
            .with_for_update())}
        for delivery_id in wanted:
            row = found.get(delivery_id)
            if row is None:
                skipped.append({"id": delivery_id, "reason": "not found"})
            elif row.status == "delivered":
                skipped.append({"id": delivery_id, "reason": "already delivered"})
            elif row.locked_until is not None and row.locked_until > now:
                skipped.append({"id": delivery_id, "reason": "being delivered right now"})
            elif not enabled:
                skipped.append({"id": delivery_id, "reason": "subscription disabled"})
            else:
                queued.append(delivery_id)
        if queued:
            # "retrying" once attempted (it stays among the failures until an attempt succeeds).
            conn.execute(
                update(EventDelivery).where(EventDelivery.id.in_(queued))
                .values(status=case((EventDelivery.attempts > 0, "retrying"), else_="pending"), next_attempt_at=now,
                        locked_by=None, locked_until=None, updated_at=now))
            if conn.dialect.name == "postgresql":
                conn.execute(_WAKE_WORKERS)
    return {"queued": queued, "skipped": skipped}


def delete_failures(db: Database, subscription_id: str, body: Any) -> dict[str, int]:
    """Delete failed deliveries of the subscription (their attempts go with them). Ids of other deliveries
    (delivered, pending, another subscription's, one being attempted right now) are left alone."""
    request = load(DeleteFailures(), body, "The delete request is not valid.")
    now = utcnow()
    with db.write() as conn:
        _require(conn, subscription_id, lock=True)
        ids = [row.id for row in conn.execute(
            select(EventDelivery.id).where(
                EventDelivery.subscription_id == subscription_id,
                EventDelivery.id.in_(list(dict.fromkeys(request["ids"]))),
                EventDelivery.status.in_(FAILURE_STATUSES),
                or_(EventDelivery.locked_until.is_(None), EventDelivery.locked_until <= now))
            .with_for_update())]
        if not ids:
            return {"deleted": 0}
        conn.execute(delete(EventAttempt).where(EventAttempt.delivery_id.in_(ids)))
        deleted = conn.execute(delete(EventDelivery).where(EventDelivery.id.in_(ids))).rowcount
    return {"deleted": deleted}


def export_failures(db: Database, subscription_id: str, query: Any, fmt: str) -> Iterator[bytes]:
    """The subscription's failed deliveries as CSV or JSON lines, oldest first, streamed in batches.
    The format, the filters and the subscription are checked before the first byte."""
    if fmt not in EXPORT_FORMATS:
        raise Invalid("validation_error", "The export is not valid.", fields={"format": ["Must be csv or jsonl."]})
    params = load(FailuresFilter(), query, "The query is not valid.")
    with db.read() as conn:
        _require(conn, subscription_id)
    statement = _failures(subscription_id, params).order_by(EventDelivery.id).execution_options(yield_per=1000)

    def lines() -> Iterator[bytes]:
        # A session, not db.read(): PostgreSQL's server-side cursor (yield_per) needs a transaction.
        with db.session() as session:
            if fmt == "csv":
                yield _csv_line(EXPORT_COLUMNS)
            for row in session.execute(statement):
                item = failure(row)
                yield _csv_line([item[name] for name in EXPORT_COLUMNS]) if fmt == "csv" else (
                    orjson.dumps(item) + b"\n")

    return lines()


# ---------------------------------------------------------------- summaries


def summarise(db: Database, subscription_id: str, query: Any) -> dict[str, Any]:
    """How many of the subscription's deliveries are delivered, retrying and failed, in all and per event type."""
    params = load(SummaryQuery(), query, "The query is not valid.")
    statement = (
        select(EventDelivery.event_type, EventDelivery.status, func.count().label("n"))
        .where(EventDelivery.subscription_id == subscription_id, EventDelivery.status.in_(COUNTED_STATUSES))
        .group_by(EventDelivery.event_type, EventDelivery.status)
    )
    if "since" in params:
        statement = statement.where(EventDelivery.created_at >= params["since"])
    if "until" in params:
        statement = statement.where(EventDelivery.created_at < params["until"])
    counts = dict.fromkeys(COUNTED_STATUSES, 0)
    by_type: dict[str, dict[str, int]] = {}
    with db.read() as conn:
        _require(conn, subscription_id)
        for row in conn.execute(statement):
            counts[row.status] += row.n
            by_type.setdefault(row.event_type, dict.fromkeys(COUNTED_STATUSES, 0))[row.status] += row.n
    return {"counts": counts, "by_type": dict(sorted(by_type.items()))}


def summarise_executions(db: Database, subscription_id: str, query: Any) -> dict[str, Any]:
    """Attempts, successes, failures and attempt durations (p50, p95 over every attempt) per hour or day.

    The database groups the attempts by interval and by duration (in whole milliseconds, bounded by the
    delivery timeout), so what comes back is a histogram per interval, never one row per attempt; the exact
    nearest-rank percentiles are read from it here. The same SQL on both databases but for the interval's
    start: date_trunc on PostgreSQL, a prefix of the stored text on SQLite.
    """
    params = load(ExecutionsQuery(), query, "The query is not valid.")
    with db.read() as conn:
        _require(conn, subscription_id)
        start = _interval_start(conn, params["interval"]).label("start")
        statement = (
            select(start, EventAttempt.duration_ms, EventAttempt.success, func.count().label("n"))
            .where(EventAttempt.subscription_id == subscription_id)
            .group_by(start, EventAttempt.duration_ms, EventAttempt.success)
        )
        if "since" in params:
            statement = statement.where(EventAttempt.started_at >= params["since"])
        if "until" in params:
            statement = statement.where(EventAttempt.started_at < params["until"])
        rows = list(conn.execute(statement))
    histograms: dict[datetime, Counter[int]] = defaultdict(Counter)
    successes: Counter[datetime] = Counter()
    failures: Counter[datetime] = Counter()
    for row in rows:
        moment = _as_utc(row.start)
        histograms[moment][row.duration_ms] += row.n
        (successes if row.success else failures)[moment] += row.n
    intervals = []
    for moment in sorted(histograms):
        histogram = histograms[moment]
        intervals.append({
            "start": desk_time(moment),
            "attempts": successes[moment] + failures[moment],
            "successes": successes[moment],
            "failures": failures[moment],
            "p50_ms": _percentile(histogram, 0.5),
            "p95_ms": _percentile(histogram, 0.95),
        })
    return {"intervals": intervals}


def _interval_start(conn: Connection, interval: str) -> Any:
    """The start of an attempt's hour or day, in UTC. `interval` is one of INTERVALS (a literal: PostgreSQL
    matches GROUP BY expressions by their text, bound parameters included)."""
    if conn.dialect.name == "postgresql":
        utc = func.timezone(literal_column("'UTC'"), EventAttempt.started_at)
        return func.date_trunc(literal_column(f"'{interval}'"), utc)
    # SQLite stores the UTC time as text, "YYYY-MM-DD HH:MM:SS.ffffff".
    return func.substr(EventAttempt.started_at, 1, 13 if interval == "hour" else 10)


def _as_utc(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    text_value = str(value)
    shape = "%Y-%m-%d %H" if len(text_value) > 10 else "%Y-%m-%d"
    return datetime.strptime(text_value, shape).replace(tzinfo=UTC)


def _percentile(histogram: Counter[int], fraction: float) -> int | None:
    """Nearest-rank percentile of the values a histogram counts."""
    total = sum(histogram.values())
    if not total:
        return None
    rank = max(1, -(-total * fraction // 1))
    seen = 0
    for value in sorted(histogram):
        seen += histogram[value]
        if seen >= rank:
            return value
    return None  # not reached: the counts add up to total


# ---------------------------------------------------------------- retention


def purge_expired_events(db: Database, now: datetime, retention_days: int, budget_ends: float) -> dict[str, int]:
    """Delete, in short transactions of PURGE_BATCH rows, until done or time.monotonic() passes `budget_ends`:
    deliveries created and last changed more than `retention_days` ago that are finished (delivered or
    failed), or that belong to a disabled subscription (they would never be sent), with their attempts;
    then events older than that with no delivery left. A delivery still pending or retrying for an enabled
    subscription keeps itself and its event. How many of each were deleted."""
    kept_until = now - timedelta(days=retention_days)
    disabled = select(Subscription.id).where(Subscription.enabled.is_(False))
    expired_deliveries = (
        select(EventDelivery.id)
        .where(EventDelivery.created_at < kept_until, EventDelivery.updated_at < kept_until,
               or_(EventDelivery.status.in_(("delivered", "failed")),
                   and_(EventDelivery.subscription_id.in_(disabled),
                        or_(EventDelivery.locked_until.is_(None), EventDelivery.locked_until <= now))))
        .order_by(EventDelivery.id)
        .limit(PURGE_BATCH)
    )
    expired_events = (
        select(Event.id)
        .where(Event.created_at < kept_until, ~exists().where(EventDelivery.event_id == Event.id))
        .order_by(Event.created_at)
        .limit(PURGE_BATCH)
    )
    deleted = {"event deliveries": 0, "events": 0}
    while time.monotonic() < budget_ends:
        with db.write() as conn:
            ids = list(conn.scalars(expired_deliveries))
            if ids:
                conn.execute(delete(EventAttempt).where(EventAttempt.delivery_id.in_(ids)))
                deleted["event deliveries"] += conn.execute(delete(EventDelivery).where(EventDelivery.id.in_(ids))
                                                            ).rowcount
        if len(ids) < PURGE_BATCH:
            break
    while time.monotonic() < budget_ends:
        with db.write() as conn:
            ids = list(conn.scalars(expired_events))
            if ids:
                deleted["events"] += conn.execute(delete(Event).where(
                    Event.id.in_(ids), ~exists().where(EventDelivery.event_id == Event.id))).rowcount
        if len(ids) < PURGE_BATCH:
            break
    return deleted


# ---------------------------------------------------------------- helpers


def _get(session: Session, subscription_id: str, *, lock: bool = False) -> Subscription:
    """The subscription, locked until commit when asked; NotFound otherwise."""
    statement = select(Subscription).where(Subscription.id == subscription_id)
    found = session.scalars(statement.with_for_update() if lock else statement).first()
    if found is None:
        raise _unknown(subscription_id)
    return found


def _require(conn: Connection, subscription_id: str, *, lock: bool = False) -> Row[Any]:
    """The subscription's id and state, locked until commit when asked; NotFound otherwise."""
    statement = select(Subscription.id, Subscription.enabled).where(Subscription.id == subscription_id)
    found = conn.execute(statement.with_for_update() if lock else statement).first()
    if found is None:
        raise _unknown(subscription_id)
    return found


def _unknown(subscription_id: str) -> NotFound:
    return NotFound("unknown_webhook", f"There is no webhook {subscription_id}.")


def _check_channels(conn: Connection, channel_ids: list[str], *, known: Iterable[str]) -> None:
    """Every channel id names an existing channel, or one the subscription already had."""
    had = set(known)
    new = [channel_id for channel_id in channel_ids if channel_id not in had]
    if not new:
        return
    existing = set(conn.scalars(select(Channel.id).where(Channel.id.in_(new))))
    unknown = [channel_id for channel_id in new if channel_id not in existing]
    if unknown:
        raise Invalid("validation_error", "The subscription is not valid.",
                      fields={"channels": [f"No such channel: {', '.join(unknown)}."]})


def _failures(subscription_id: str, params: dict[str, Any]) -> Select[Any]:
    statement = select(
        EventDelivery.id, EventDelivery.event_id, EventDelivery.event_type, EventDelivery.channel_id,
        EventDelivery.status, EventDelivery.attempts, EventDelivery.last_status_code, EventDelivery.last_error,
        EventDelivery.next_attempt_at, EventDelivery.created_at, EventDelivery.updated_at,
    ).where(EventDelivery.subscription_id == subscription_id)
    if "status" in params:
        statement = statement.where(EventDelivery.status == params["status"])
    else:
        statement = statement.where(EventDelivery.status.in_(FAILURE_STATUSES))
    if "type" in params:
        statement = statement.where(EventDelivery.event_type == params["type"])
    if "channel" in params:
        statement = statement.where(EventDelivery.channel_id == params["channel"])
    if "since" in params:
        statement = statement.where(EventDelivery.created_at >= params["since"])
    if "until" in params:
        statement = statement.where(EventDelivery.created_at < params["until"])
    return statement


def _encode_subscription_cursor(row: Subscription) -> str:
    micros = (row.created_at - _EPOCH) // timedelta(microseconds=1)
    return encode_cursor("w", f"{micros}:{row.id}")


def _decode_subscription_cursor(cursor: str) -> tuple[datetime, str]:
    micros, sep, subscription_id = decode_cursor("w", cursor).partition(":")
    if sep and micros.isdigit() and subscription_id:
        try:
            return _EPOCH + timedelta(microseconds=int(micros)), subscription_id
        except OverflowError:
            pass
    raise not_a_cursor()


def _csv_line(values: Any) -> bytes:
    out = io.StringIO()
    csv.writer(out).writerow(["" if value is None else value for value in values])
    return out.getvalue().encode()
