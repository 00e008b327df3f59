"""Agent replies pushed by Desk: the reply ledger, and delivery within a deadline (SPEC B4)."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Row
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt

from app import metrics
from app.connectors import Connectors
from app.connectors.base import (
    ChannelConfig,
    Connector,
    Delivered,
    DeliveryError,
    OutboundReply,
    TransientDeliveryError,
)
from app.desk.auth import DeskCaller, context_changes
from app.domain.errors import Conflict, DeliveryFailed, DeliveryRejected, NotFound
from app.domain.replies import AttemptRecord, ReplyIn, ReplyOutcome, SentReply
from app.keyring import Keyring
from app.rendering import html_to_text
from app.store import queries
from app.store.database import Database
from app.usecases import events
from app.usecases.clock import utcnow

log = logging.getLogger(__name__)

MIN_ATTEMPT_SECONDS = 0.05
# SPEC B4 pacing: at most 4 attempts, the first at once, then about 0.5 s, 1.5 s and 3.5 s.
BACKOFF_SECONDS = (0.5, 1.5, 3.5)
JITTER = 0.2
Sleep = Callable[[float], None]


def push_reply(
    db: Database,
    keyring: Keyring,
    connectors: Connectors,
    channel: Row[Any],
    caller: DeskCaller,
    reply: ReplyIn,
    deadline_seconds: float,
    *,
    sleep: Sleep = time.sleep,
) -> SentReply:
    """Deliver an authenticated push once, within the deadline; raises Conflict, DeliveryRejected
    or DeliveryFailed when it was not delivered now."""
    deadline = time.monotonic() + deadline_seconds
    # Everything that can fail before delivery happens before the reply is recorded,
    # so a recorded reply always gets an outcome.
    kind = connectors[channel.connector]
    connector = kind.outbound(ChannelConfig.from_row(channel, keyring.decrypt))
    now = utcnow()
    with db.write() as conn:
        queries.update_channel(conn, channel.id, context_changes(keyring, channel, caller, now))
        entry = queries.insert_reply_if_new(conn, _ledger_row(channel.id, reply, now))
        if entry is None:
            entry = _reclaim(conn, channel.id, reply.desk_reply_id, deadline_seconds, now)
        else:
            events.record_event(conn, "reply.received", channel.id,
                                events.reply_data(entry, status="pending", with_content=True), now)
    if isinstance(entry, SentReply):
        return entry
    return _raise_unless_sent(_deliver_claimed(db, connector, entry, now, deadline, sleep, kind.drops_repeats))


def deliver_reply(
    db: Database,
    keyring: Keyring,
    connectors: Connectors,
    ledger_id: int,
    deadline_seconds: float,
    *,
    sleep: Sleep = time.sleep,
) -> ReplyOutcome:
    """Deliver one ledger entry again (an operator's retry, the sweeper), with the pacing and
    deadline of a push and the same idempotency key; a sent entry is not delivered again."""
    deadline = time.monotonic() + deadline_seconds
    now = utcnow()
    with db.read() as conn:
        found = queries.ledger_entry(conn, ledger_id)
        channel = queries.channel_row(conn, found.channel_id) if found else None
    if found is None or channel is None:
        raise NotFound("unknown_reply", f"There is no reply {ledger_id}.")
    kind = connectors[channel.connector]
    connector = kind.outbound(ChannelConfig.from_row(channel, keyring.decrypt))
    with db.write() as conn:
        entry = _reclaim(conn, channel.id, found.desk_reply_id, deadline_seconds, now)
    if isinstance(entry, SentReply):
        return ReplyOutcome(ledger_id, "sent", 0, sent=entry)
    return _deliver_claimed(db, connector, entry, now, deadline, sleep, kind.drops_repeats)


def _ledger_row(channel_id: str, reply: ReplyIn, now: datetime) -> dict[str, Any]:
    return {
        "channel_id": channel_id,
        "desk_reply_id": reply.desk_reply_id,
        "status": "pending",
        "attempts": 0,
        "conversation_ext_id": reply.conversation_id,
        "in_reply_to": reply.in_reply_to,
        "content": reply.content,
        "content_type": reply.content_type,
        "author": reply.author,
        "attachments": reply.attachments,
        "created_at": now,
        "attempt_started_at": now,
        "updated_at": now,
    }


def _reclaim(
    conn: Connection, channel_id: str, desk_reply_id: str, deadline_seconds: float, now: datetime
) -> Row[Any] | SentReply:
    """Claim an existing entry for a new delivery (committed before it), or say why not."""
    entry = queries.lock_reply(conn, channel_id, desk_reply_id)
    if entry.status == "sent":
        metrics.push_settled("already_sent")
        return _sent(entry, entry.external_id, entry.sent_at or entry.updated_at)
    # A pending entry without an attempt started is queued for a retry (SPEC B10), not in flight.
    started = entry.attempt_started_at
    if entry.status == "pending" and started is not None and now < started + timedelta(seconds=deadline_seconds + 1):
        metrics.push_settled("conflict")
        raise Conflict("reply_in_progress", "This reply is being delivered right now; ask again in a few seconds.")
    # failed (the caller asked again), queued for a retry, or pending left behind by a crash
    queries.reclaim_reply(conn, entry.id, now)
    return entry


def _deliver_claimed(
    db: Database, connector: Connector, entry: Row[Any], claimed_at: datetime, deadline: float, sleep: Sleep,
    drops_repeats: bool,
) -> ReplyOutcome:
    """Deliver a claimed entry with paced retries and record every attempt and the outcome."""
    outcome, attempts = deliver_paced(connector, outbound_reply(entry), deadline, sleep=sleep,
                                      drops_repeats=drops_repeats)
    now = utcnow()
    with db.write() as conn:
        queries.insert_attempts(conn, [{"reply_id": entry.id, **vars(attempt)} for attempt in attempts])
        # Only the delivery that holds the claim writes its outcome.
        if isinstance(outcome, Delivered):
            external_id = outcome.external_id or f"desk-reply-{entry.desk_reply_id}"
            if queries.record_outcome(conn, entry.id, claimed_at, attempts=len(attempts), status="sent", now=now,
                                      external_id=external_id, delivery_status=outcome.delivery_status):
                events.record_event(conn, "reply.sent", entry.channel_id, events.reply_data(
                    entry, status="sent", external_id=external_id, delivery_status=outcome.delivery_status,
                    with_content=True), now)
        elif queries.record_outcome(conn, entry.id, claimed_at, attempts=len(attempts), status="failed", now=now,
                                    last_error=outcome.message):
            events.record_event(conn, "reply.failed", entry.channel_id,
                                events.reply_data(entry, status="failed", reason=outcome.message), now)
    metrics.push_delivered(outcome, claimed_at)
    if isinstance(outcome, Delivered):
        return ReplyOutcome(entry.id, "sent", len(attempts), sent=_sent(entry, external_id, now))
    return ReplyOutcome(entry.id, "failed", len(attempts), reason=outcome.message, transient=outcome.transient)


def _raise_unless_sent(outcome: ReplyOutcome) -> SentReply:
    if outcome.sent is not None:
        return outcome.sent
    if outcome.transient:
        tries = "1 attempt" if outcome.attempts == 1 else f"{outcome.attempts} attempts"
        raise DeliveryFailed("delivery_failed", f"{outcome.reason} The reply was not delivered ({tries}).")
    raise DeliveryRejected("delivery_rejected", f"{outcome.reason} The reply was not delivered.")


def outbound_reply(entry: Row[Any]) -> OutboundReply:
    """A ledger entry as the connector receives it, with its plain-text rendering."""
    text = html_to_text(entry.content) if entry.content_type == "text/html" else entry.content
    return OutboundReply(
        channel_id=entry.channel_id,
        reply_id=entry.desk_reply_id,
        conversation_id=entry.conversation_ext_id,
        in_reply_to=entry.in_reply_to,
        content=entry.content,
        content_type=entry.content_type,
        text=text,
        author=entry.author,
        attachments=list(entry.attachments or []),
    )


def deliver_paced(
    connector: Connector, reply: OutboundReply, deadline: float, *, sleep: Sleep = time.sleep,
    drops_repeats: bool = True,
) -> tuple[Delivered | DeliveryError, list[AttemptRecord]]:
    """Deliver with SPEC B4's pacing: at most 4 attempts, backoff with jitter, Retry-After
    honoured, never past the deadline; the outcome and every attempt made. For a service that
    does not drop repeats (`drops_repeats` False), an attempt whose outcome is unknown (the
    request may have reached it) ends the delivery: sending again could deliver the reply twice."""
    attempts: list[AttemptRecord] = []

    def attempt() -> Delivered:
        started, began = utcnow(), time.monotonic()
        try:
            delivered = connector.deliver(reply, max(deadline - time.monotonic(), MIN_ATTEMPT_SECONDS))
        except DeliveryError as exc:
            kind = "transient" if exc.transient else "permanent"
            attempts.append(AttemptRecord(started, _ms_since(began), kind, exc.http_status, exc.message))
            metrics.delivery_attempt(kind)
            log.warning(
                "delivery attempt %d failed (%s): %s", len(attempts), kind, exc.message,
                extra={"channel_id": reply.channel_id, "reply_id": reply.reply_id},
            )
            raise
        attempts.append(AttemptRecord(started, _ms_since(began), "sent", delivered.http_status, None))
        metrics.delivery_attempt("sent")
        return delivered

    def wait(state: RetryCallState) -> float:
        scheduled = BACKOFF_SECONDS[min(state.attempt_number, len(BACKOFF_SECONDS)) - 1]
        scheduled *= random.uniform(1 - JITTER, 1 + JITTER)
        error = state.outcome.exception() if state.outcome else None
        asked = getattr(error, "retry_after", None) or 0.0
        return max(scheduled, asked)

    def out_of_time(state: RetryCallState) -> bool:
        # The next attempt must start, and have a moment to run, before the deadline.
        return time.monotonic() + state.upcoming_sleep + MIN_ATTEMPT_SECONDS > deadline

    def worth_another(exc: BaseException) -> bool:
        return isinstance(exc, DeliveryError) and exc.transient and (drops_repeats or not exc.outcome_unknown)

    retrying = Retrying(
        retry=retry_if_exception(worth_another),
        wait=wait,
        stop=stop_after_attempt(len(BACKOFF_SECONDS) + 1) | out_of_time,
        sleep=sleep,
        reraise=True,
    )
    try:
        return retrying(attempt), attempts
    except DeliveryError as exc:
        if exc.outcome_unknown and not drops_repeats:
            unknown = TransientDeliveryError(f"{exc.message} {OUTCOME_UNKNOWN.capitalize()}.",
                                             http_status=exc.http_status, outcome_unknown=True)
            return unknown, attempts
        return exc, attempts


# SPEC B4: a reply whose delivery may have happened is not sent again without a person asking.
OUTCOME_UNKNOWN = "outcome unknown: not sent again automatically"


def _ms_since(began: float) -> int:
    return round((time.monotonic() - began) * 1000)


def _sent(entry: Row[Any], external_id: str, sent_at: datetime) -> SentReply:
    return SentReply(
        ledger_id=entry.id,
        external_id=external_id,
        conversation_id=entry.conversation_ext_id,
        content=entry.content,
        content_type=entry.content_type,
        sent_at=sent_at,
    )
