"""Job handlers, one per kind: reply retries and the sweeper of abandoned replies (SPEC B10),
channel health checks, and retention. Each takes the application's services and the job's payload.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any

from sqlalchemy import String, Table, and_, cast, delete, exists, func, literal, select
from sqlalchemy.dialects import postgresql, sqlite

from app.desk.invoke import InvokeClient
from app.desk.mapping import optional_desk_time
from app.domain.errors import Conflict, NotFound
from app.domain.health import channel_status, synced_at, synced_seq
from app.jobs.queue import enqueue
from app.services import Services
from app.store import queries
from app.store.models import ACTIVE_JOB_STATUSES, Channel, ChannelHealth, InboxMessage, Job, Reply
from app.usecases import events, imports
from app.usecases.clock import utcnow
from app.usecases.push import OUTCOME_UNKNOWN, deliver_reply
from app.usecases.subscriptions import purge_expired_events

log = logging.getLogger(__name__)

Handler = Callable[[Services, Mapping[str, Any]], None]

SWEEP_BATCH = 500
PURGE_BATCH = 1000
PURGE_BUDGET_SECONDS = 20.0  # a run stops here; the next run goes on where it stopped
DONE_JOBS_KEPT = timedelta(days=1)


class RetryLater(Exception):
    """The job cannot do its work now; it runs again after `seconds` (this counts as an attempt)."""

    def __init__(self, seconds: float, reason: str) -> None:
        super().__init__(reason)
        self.seconds = seconds
        self.reason = reason


def retry_reply(svc: Services, payload: Mapping[str, Any]) -> None:
    """Deliver one ledger entry again (`{"ledger_id"}`); its outcome, sent or failed, is final."""
    ledger_id = int(payload["ledger_id"])
    extra = {"job": "reply.retry", "ledger_id": ledger_id}
    deadline = svc.settings.push_deadline_seconds
    try:
        outcome = deliver_reply(svc.db, svc.keyring, svc.connectors, ledger_id, deadline)
    except NotFound:
        log.info("reply %d no longer exists: nothing to deliver", ledger_id, extra=extra)
        return
    except Conflict:
        # Another delivery holds it; it ends within the deadline plus one second.
        raise RetryLater(deadline + 1, "the reply is being delivered right now") from None
    log.info("reply %d delivered again: %s after %d attempts", ledger_id, outcome.status, outcome.attempts,
             extra=extra)


def _no_active_retry() -> Any:
    """No reply.retry job for this ledger entry is queued or running."""
    key = literal("reply:") + cast(Reply.id, String)
    return ~exists().where(Job.unique_key == key, Job.status.in_(ACTIVE_JOB_STATUSES))


def sweep_replies(svc: Services, payload: Mapping[str, Any]) -> None:
    """Queue a reply.retry for each entry left `pending` past the push deadline plus one second (a
    crash mid-delivery, or a queued retry whose job is gone), so that each ends sent or failed."""
    now = utcnow()
    cutoff = now - timedelta(seconds=svc.settings.push_deadline_seconds + 1)
    # A pending entry without an attempt started was queued for a retry (SPEC B10) at updated_at.
    with svc.db.read() as conn:
        abandoned = conn.execute(
            select(Reply.id, Reply.desk_reply_id, Reply.channel_id, Reply.attempt_started_at, Channel.connector)
            .join(Channel, Channel.id == Reply.channel_id)
            .where(Reply.status == "pending", func.coalesce(Reply.attempt_started_at, Reply.updated_at) < cutoff,
                   _no_active_retry())
            .order_by(Reply.id)
            .limit(SWEEP_BATCH)
        ).all()
    if not abandoned:
        return
    queued = given_up = 0
    with svc.db.write() as conn:
        for entry in abandoned:
            kind = svc.connectors.get(entry.connector)
            if entry.attempt_started_at is not None and kind is not None and not kind.drops_repeats:
                # Only if nobody has claimed the entry since it was read.
                if queries.record_outcome(conn, entry.id, entry.attempt_started_at, attempts=0, status="failed",
                                          now=now, last_error=OUTCOME_UNKNOWN):
                    given_up += 1
                    events.record_event(conn, "reply.failed", entry.channel_id, events.reply_data(
                        entry, status="failed", reason=OUTCOME_UNKNOWN), now)
            else:
                queued += enqueue(conn, "reply.retry", {"ledger_id": entry.id}, unique_key=f"reply:{entry.id}")
    log.info("abandoned replies: %d queued for delivery, %d failed with an unknown outcome", queued, given_up,
             extra={"job": "replies.sweep"})


def _upsert_health(dialect: str) -> Any:
    module = postgresql if dialect == "postgresql" else sqlite
    statement = module.insert(ChannelHealth.__table__)
    return statement.on_conflict_do_update(
        index_elements=[ChannelHealth.channel_id],
        set_={"status": statement.excluded.status, "changed_at": statement.excluded.changed_at},
    )


_UPSERT_HEALTH = {name: _upsert_health(name) for name in ("postgresql", "sqlite")}


def check_channel_health(svc: Services, payload: Mapping[str, Any]) -> None:
    """Compute every channel's status; log a WARNING when one becomes stalled and an INFO when it
    stops being stalled. The last status is stored per channel, to see changes across runs."""
    now = utcnow()
    stall = timedelta(minutes=svc.settings.stall_minutes)
    oldest_waiting = (
        select(InboxMessage.received_at)
        .where(InboxMessage.channel_id == Channel.id, InboxMessage.seq > queries.SYNCED_SEQ)
        .order_by(InboxMessage.seq)
        .limit(1)
        .correlate(Channel)
        .scalar_subquery()
    )
    with svc.db.read() as conn:
        channels = conn.execute(
            select(Channel.id, Channel.name, Channel.org_id, Channel.connector, Channel.desk_domain, Channel.enabled,
                   Channel.last_seq, Channel.acked_seq, Channel.imported_seq, Channel.acked_at,
                   Channel.last_import_at, Channel.last_pull_at, Channel.created_at,
                   oldest_waiting.label("oldest_waiting_at"), ChannelHealth.status.label("last_status"))
            .outerjoin(ChannelHealth, ChannelHealth.channel_id == Channel.id)
        ).all()
    changes = []
    health_events: list[events.NewEvent] = []
    for channel in channels:
        backlog = channel.last_seq - synced_seq(channel.acked_seq, channel.imported_seq)
        last_synced = synced_at(channel.acked_at, channel.last_import_at)
        status = channel_status(enabled=channel.enabled, backlog=backlog,
                                oldest_waiting_at=channel.oldest_waiting_at, synced_at=last_synced,
                                now=now, stall=stall)
        if status == channel.last_status:
            continue
        changes.append({"channel_id": channel.id, "status": status, "changed_at": now})
        extra = {"job": "channels.health", "channel_id": channel.id, "status": status, "backlog": backlog}
        if status == "stalled":
            health_events.append(("channel.stalled", channel.id, events.channel_data(
                channel, backlog=backlog, oldest_waiting_at=optional_desk_time(channel.oldest_waiting_at))))
            log.warning("channel %s is stalled: %d messages waiting, the oldest since %s; Desk last got "
                        "messages (pull cursor or import) %s", channel.id, backlog,
                        channel.oldest_waiting_at.isoformat(), last_synced.isoformat() if last_synced else "never",
                        extra=extra)
        elif channel.last_status == "stalled":
            health_events.append(("channel.recovered", channel.id, events.channel_data(channel, backlog=backlog)))
            log.info("channel %s is no longer stalled: %s", channel.id, status, extra=extra)
    if changes:
        with svc.db.write() as conn:
            conn.execute(_UPSERT_HEALTH[conn.dialect.name], changes)
            events.record_events(conn, health_events, now)


def purge_expired(svc: Services, payload: Mapping[str, Any]) -> None:
    """Delete, in bounded batches, ledger entries past LEDGER_RETENTION_DAYS that are not pending
    (their attempts go with them), done jobs after a day, failed jobs past the ledger's retention,
    and finished event deliveries and events past EVENT_RETENTION_DAYS."""
    now = utcnow()
    kept_until = now - timedelta(days=svc.settings.ledger_retention_days)
    budget_ends = time.monotonic() + PURGE_BUDGET_SECONDS
    replies = Reply.__table__
    jobs = Job.__table__
    # updated_at too (never before created_at): it lets the (status, updated_at) index find them, and an
    # entry someone retried lately stays as long after that.
    deleted = {
        "replies": _purge(svc, replies, and_(replies.c.status.in_(("sent", "failed")),
                                             replies.c.updated_at < kept_until, replies.c.created_at < kept_until),
                          budget_ends),
        "done jobs": _purge(svc, jobs, and_(jobs.c.status == "done", jobs.c.finished_at < now - DONE_JOBS_KEPT),
                            budget_ends),
        "failed jobs": _purge(svc, jobs, and_(jobs.c.status == "failed", jobs.c.finished_at < kept_until),
                              budget_ends),
    }
    # Event deliveries and events past EVENT_RETENTION_DAYS (SPEC B16), once finished.
    for what, count in purge_expired_events(svc.db, now, svc.settings.event_retention_days, budget_ends).items():
        deleted[what] = count
    if any(deleted.values()):
        log.info("retention: deleted %s", ", ".join(f"{count} {what}" for what, count in deleted.items()),
                 extra={"job": "retention"})


def _purge(svc: Services, table: Table, expired: Any, budget_ends: float) -> int:
    """Delete the rows matching `expired`, one short transaction per batch, until none is left or
    the time budget is spent."""
    statement = delete(table).where(table.c.id.in_(select(table.c.id).where(expired).limit(PURGE_BATCH)))
    total = 0
    while time.monotonic() < budget_ends:
        with svc.db.write() as conn:
            count = conn.execute(statement).rowcount
        total += count
        if count < PURGE_BATCH:
            break
    return total


def import_into_desk(svc: Services, payload: Mapping[str, Any]) -> None:
    """Send a channel's new messages to Desk through the Invoke API (`{"channel_id"}`, SPEC B14)."""
    secret = svc.settings.desk_extension_secret
    client = InvokeClient(svc.connectors.http, secret or "")
    run = imports.import_channel(svc.db, svc.keyring, client, str(payload["channel_id"]), extension_secret=secret,
                                 limit=svc.settings.pull_batch_limit)
    log.debug("import run: %s, %d messages in %d calls", run.outcome, run.messages, run.calls,
              extra={"job": imports.JOB_KIND, "channel_id": payload["channel_id"]})


HANDLERS: dict[str, Handler] = {
    imports.JOB_KIND: import_into_desk,
    "reply.retry": retry_reply,
    "replies.sweep": sweep_replies,
    "channels.health": check_channel_health,
    "retention": purge_expired,
}
