"""Reply ledger operations (SPEC B10), modelled on the failed-execution operations of Zoho
SalesIQ's webhooks API: list, show with the attempts history, retry, delete, export, summary."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates_schema
from sqlalchemy import Select, delete, select, update

from app.desk.mapping import desk_time, optional_desk_time
from app.domain.errors import Invalid, NotFound
from app.jobs.queue import enqueue
from app.store.database import Database
from app.store.models import Reply, ReplyAttempt
from app.usecases.clock import utcnow
from app.usecases.paging import Page, PageQuery, decode_cursor, encode_cursor, not_a_cursor
from app.validation import IsoTimeInUtc, Text, load

MAX_RETRY_IDS = 99
MAX_DELETE_IDS = 300
MAX_RETRY_BY_FILTER = 10_000
STATUSES = ("pending", "sent", "failed")
EXPORT_COLUMNS = ("id", "channel_id", "desk_reply_id", "status", "attempts", "last_error", "external_id",
                  "delivery_status", "delivery_error", "created_at", "updated_at", "sent_at")


class LedgerFilter(Schema):
    """The filters of list, export, summary and retry-by-filter."""

    class Meta:
        unknown = RAISE

    channel = Text(validate=validate.Length(min=1, max=64))
    status = Text(validate=validate.OneOf(STATUSES))
    since = IsoTimeInUtc(format="iso")
    until = IsoTimeInUtc(format="iso")


class ListQuery(LedgerFilter, PageQuery):
    """The filters, and a page."""


class SummaryQuery(LedgerFilter):
    interval = Text(load_default="day", validate=validate.OneOf(("hour", "day")))


class RetryRequest(LedgerFilter):
    ids = fields.List(fields.Integer(strict=True), validate=validate.Length(min=1, max=MAX_RETRY_IDS))

    @validates_schema
    def _ids_or_failed_filter(self, data: dict[str, Any], **_: Any) -> None:
        if "ids" in data:
            if set(data) - {"ids"}:
                raise ValidationError("Give either ids or a filter, not both.", "ids")
        elif data.get("status") != "failed":
            raise ValidationError('Retry by filter takes "status": "failed" (with channel, since, until).', "status")


class DeleteRequest(Schema):
    class Meta:
        unknown = RAISE

    ids = fields.List(fields.Integer(strict=True), required=True,
                      validate=validate.Length(min=1, max=MAX_DELETE_IDS))


def entry(reply: Reply) -> dict[str, Any]:
    """A ledger entry as operators see it (no content: it is the customer's conversation)."""
    return {
        "id": reply.id,
        "channel_id": reply.channel_id,
        "desk_reply_id": reply.desk_reply_id,
        "status": reply.status,
        "attempts": reply.attempts,
        "last_error": reply.last_error,
        "external_id": reply.external_id,
        "delivery_status": reply.delivery_status,  # a provider's later delivery report (SPEC B15)
        "delivery_error": reply.delivery_error,
        "created_at": desk_time(reply.created_at),
        "updated_at": desk_time(reply.updated_at),
        "sent_at": optional_desk_time(reply.sent_at),
    }


def list_replies(db: Database, query: Any) -> Page:
    """Entries newest first, filtered, a page at a time."""
    params = load(ListQuery(), query, "The query is not valid.")
    statement = _filtered(select(Reply), params).order_by(Reply.id.desc()).limit(params["limit"] + 1)
    if "cursor" in params:
        position = decode_cursor("r", params["cursor"])
        if not position.isdigit():
            raise not_a_cursor()
        statement = statement.where(Reply.id < int(position))
    with db.session() as session:
        rows = list(session.scalars(statement))
    more = len(rows) > params["limit"]
    rows = rows[: params["limit"]]
    return Page([entry(row) for row in rows], encode_cursor("r", str(rows[-1].id)) if more else None)


def show_reply(db: Database, ledger_id: Any) -> dict[str, Any]:
    """One entry with its attempts history, oldest attempt first."""
    with db.session() as session:
        reply = session.get(Reply, _ledger_id(ledger_id))
        if reply is None:
            raise NotFound("unknown_reply", f"There is no reply {ledger_id}.")
        attempts = session.scalars(
            select(ReplyAttempt).where(ReplyAttempt.reply_id == reply.id).order_by(ReplyAttempt.id)
        )
        history = [
            {"started_at": desk_time(a.started_at), "duration_ms": a.duration_ms, "outcome": a.outcome,
             "http_status": a.http_status, "error": a.error}
            for a in attempts
        ]
        return {**entry(reply), "attempts_history": history}


def retry_replies(db: Database, body: Any, *, deadline_seconds: float) -> dict[str, Any]:
    """Queue entries for one more delivery in the background, with the same idempotency key.

    A sent entry is skipped ("already sent"), and so is one being delivered right now or an
    unknown id. A queued entry is `pending`, without an attempt in flight, until a worker runs it.
    """
    request = load(RetryRequest(), body, "The retry request is not valid.")
    now = utcnow()
    in_flight_since = now - timedelta(seconds=deadline_seconds + 1)
    queued: list[int] = []
    skipped: list[dict[str, Any]] = []
    with db.write() as conn:
        if "ids" in request:
            wanted = list(dict.fromkeys(request["ids"]))
            found = {row.id: row for row in conn.execute(
                select(Reply.id, Reply.status, Reply.attempt_started_at).where(Reply.id.in_(wanted)).with_for_update()
            )}
        else:
            statement = _filtered(select(Reply.id, Reply.status, Reply.attempt_started_at), request)
            found = {row.id: row for row in conn.execute(
                statement.order_by(Reply.id).limit(MAX_RETRY_BY_FILTER).with_for_update())}
            wanted = list(found)
        for ledger_id in wanted:
            row = found.get(ledger_id)
            if row is None:
                skipped.append({"id": ledger_id, "reason": "not found"})
            elif row.status == "sent":
                skipped.append({"id": ledger_id, "reason": "already sent"})
            elif row.status == "pending" and row.attempt_started_at and row.attempt_started_at > in_flight_since:
                skipped.append({"id": ledger_id, "reason": "being delivered right now"})
            else:
                conn.execute(update(Reply).where(Reply.id == ledger_id)
                             .values(status="pending", attempt_started_at=None, updated_at=now))
                enqueue(conn, "reply.retry", {"ledger_id": ledger_id}, unique_key=f"reply:{ledger_id}")
                queued.append(ledger_id)
    return {"queued": queued, "skipped": skipped}


def delete_replies(db: Database, body: Any) -> dict[str, int]:
    """Delete entries (their attempts history goes with them)."""
    request = load(DeleteRequest(), body, "The delete request is not valid.")
    with db.write() as conn:
        ids = list(dict.fromkeys(request["ids"]))
        conn.execute(delete(ReplyAttempt).where(ReplyAttempt.reply_id.in_(ids)))
        deleted = conn.execute(delete(Reply).where(Reply.id.in_(ids))).rowcount
    return {"deleted": deleted}


def export_replies(db: Database, query: Any, fmt: str) -> Iterator[bytes]:
    """Entries as CSV or JSON lines, oldest first, streamed: read and written in batches."""
    if fmt not in ("csv", "jsonl"):
        raise Invalid("validation_error", "The export is not valid.", fields={"format": ["Must be csv or jsonl."]})
    params = load(LedgerFilter(), query, "The query is not valid.")
    statement = _filtered(select(Reply), params).order_by(Reply.id).execution_options(yield_per=1000)

    def rows() -> Iterator[bytes]:
        with db.session() as session:
            if fmt == "csv":
                yield _csv_line(EXPORT_COLUMNS)
            for reply in session.scalars(statement):
                item = entry(reply)
                yield _csv_line([item[name] for name in EXPORT_COLUMNS]) if fmt == "csv" else (
                    orjson.dumps(item) + b"\n")
                session.expunge(reply)

    return rows()


def summarise(db: Database, query: Any) -> dict[str, Any]:
    """Counts, success rate and delivery times (created to sent) per hour or day, per channel
    unless filtered to one."""
    params = load(SummaryQuery(), query, "The query is not valid.")
    per_channel = "channel" not in params
    buckets: dict[tuple[datetime, str | None], dict[str, Any]] = {}
    statement = _filtered(select(Reply.channel_id, Reply.status, Reply.created_at, Reply.sent_at), params)
    with db.session() as session:
        for row in session.execute(statement.execution_options(yield_per=2000)):
            start = _bucket(row.created_at, params["interval"])
            key = (start, row.channel_id if per_channel else None)
            bucket = buckets.setdefault(key, {"counts": dict.fromkeys(STATUSES, 0), "durations": []})
            bucket["counts"][row.status] = bucket["counts"].get(row.status, 0) + 1
            if row.status == "sent" and row.sent_at is not None:
                bucket["durations"].append((row.sent_at - row.created_at).total_seconds() * 1000)
    intervals = []
    for (start, channel_id), bucket in sorted(buckets.items(), key=lambda item: (item[0][0], item[0][1] or "")):
        counts = bucket["counts"]
        done = counts["sent"] + counts["failed"]
        durations = sorted(bucket["durations"])
        item: dict[str, Any] = {"start": desk_time(start)}
        if per_channel:
            item["channel_id"] = channel_id
        item.update(counts=counts, success_rate=round(counts["sent"] / done, 4) if done else None,
                    p50_ms=_percentile(durations, 0.5), p95_ms=_percentile(durations, 0.95))
        intervals.append(item)
    return {"intervals": intervals}


def _filtered(statement: Select[Any], params: dict[str, Any]) -> Select[Any]:
    if "channel" in params:
        statement = statement.where(Reply.channel_id == params["channel"])
    if "status" in params:
        statement = statement.where(Reply.status == params["status"])
    if "since" in params:
        statement = statement.where(Reply.created_at >= params["since"])
    if "until" in params:
        statement = statement.where(Reply.created_at < params["until"])
    return statement


def _ledger_id(value: Any) -> int:
    try:
        ledger_id = int(value)
    except (TypeError, ValueError):
        raise NotFound("unknown_reply", f"There is no reply {value}.") from None
    if not 0 < ledger_id < 2**63:
        raise NotFound("unknown_reply", f"There is no reply {value}.")
    return ledger_id


def _bucket(moment: datetime, interval: str) -> datetime:
    moment = moment.astimezone(UTC)
    return moment.replace(minute=0, second=0, microsecond=0) if interval == "hour" else moment.replace(
        hour=0, minute=0, second=0, microsecond=0)


def _percentile(ordered: list[float], fraction: float) -> float | None:
    """Nearest-rank percentile of sorted values, in whole milliseconds."""
    if not ordered:
        return None
    rank = max(1, -(-len(ordered) * fraction // 1))
    return round(ordered[int(rank) - 1])


def _csv_line(values: Any) -> bytes:
    out = io.StringIO()
    csv.writer(out).writerow(["" if value is None else value for value in values])
    return out.getvalue().encode()

