"""Real-time delivery to Desk (SPEC B14): new inbox messages sent at once through the Invoke API,
beside the pull, never instead of it.

An ingest that commits messages queues a `channel.import` job for the channel in the same
transaction (at most one queued per channel). The job takes the channel's import lease (one
import per channel at a time, across hosts), sends what Desk has not got, exactly as a pull
would give it, and repeats until caught up. Correctness never rests on the lease: every batch
starts where Desk is known to have everything (`max(acked_seq, imported_seq)`) and carries the
channelState of its own end, so whichever answer Desk applies last, its cursor never passes a
message it was not given (C1.7); a batch sent twice updates, never creates, by `extId`.
"""

from __future__ import annotations

import logging
import random
import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import Connection, Row

from app import metrics
from app.desk.invoke import InvokeClient, InvokeFailure
from app.jobs.queue import enqueue
from app.keyring import Keyring
from app.store import queries
from app.store.database import Database
from app.usecases import events
from app.usecases.clock import utcnow
from app.usecases.pull import sync_batch

log = logging.getLogger(__name__)

JOB_KIND = "channel.import"
LEASE_SECONDS = 30.0  # renewed after every batch; a batch's Invoke call is cut off after 10 s
FIRST_RETRY_SECONDS = 2.0  # SPEC B14: the first retry within 10 s
MAX_RETRY_SECONDS = 300.0  # Desk's own pull comes every 4 minutes anyway
BUSY_RETRY_SECONDS = 0.5  # another holder's run is in progress: look again soon
JITTER = 0.2
MAX_ERROR_LENGTH = 500


@dataclass(frozen=True)
class ImportRun:
    """What one run of a channel's import did: `outcome` is caught_up, busy, waiting, retrying,
    refused, lost_lease, or why it did not start (deleted, disabled, off)."""

    outcome: str
    messages: int = 0  # messages Desk was given (echoes and the already given excluded)
    calls: int = 0  # Invoke API calls made
    again_in: float | None = None  # a job for the channel is queued to run after this many seconds


def queue_import(conn: Connection, channel_id: str, *, delay: float = 0.0) -> bool:
    """Queue the channel's import in the caller's transaction, unless one is queued already."""
    run_at = utcnow() + timedelta(seconds=delay) if delay else None
    return enqueue(conn, JOB_KIND, {"channel_id": channel_id}, queue_key=f"import:{channel_id}", run_at=run_at)


def import_possible(channel: Any, extension_secret: str | None) -> bool:
    """Whether a channel can be imported into at all: the extension secret set, the channel
    enabled, and a securityContext and an org recorded (SPEC B14)."""
    return bool(extension_secret and channel.enabled and channel.desk_context
                and (channel.desk_org_id or channel.org_id))


def import_status(channel: Any, state: Any, extension_secret: str | None) -> str:
    """The `import_status` of a channel's health: off, refused (until a new securityContext is
    recorded), retrying, or ok."""
    if not import_possible(channel, extension_secret):
        return "off"
    if state is None:
        return "ok"
    if state.refused_digest is not None and state.refused_digest == channel.desk_context_digest:
        return "refused"
    return "retrying" if state.status == "retrying" else "ok"


def import_channel(db: Database, keyring: Keyring, client: InvokeClient, channel_id: str, *,
                   extension_secret: str | None, limit: int) -> ImportRun:
    """Send Desk every message of the channel it has not got, in batches, until caught up or a
    failure; a failure queues the next try after a backoff, or stops for a refused securityContext."""
    extra = {"job": JOB_KIND, "channel_id": channel_id}
    holder = secrets.token_hex(8)
    now = utcnow()
    with db.write() as conn:
        channel = queries.channel_row(conn, channel_id)
        if channel is None:
            return ImportRun("deleted")
        if not channel.enabled:
            return ImportRun("disabled")
        if not import_possible(channel, extension_secret):
            return ImportRun("off")
        state = queries.take_import_lease(conn, channel_id, holder, now, now + timedelta(seconds=LEASE_SECONDS))
        if state is None:
            # Another run is in progress; it may have read the inbox before this job's message.
            queue_import(conn, channel_id, delay=BUSY_RETRY_SECONDS)
            return ImportRun("busy", again_in=BUSY_RETRY_SECONDS)
        if state.refused_digest is not None and state.refused_digest == channel.desk_context_digest:
            queries.update_import(conn, channel_id, holder, {"locked_by": None, "locked_until": None})
            return ImportRun("refused")
        if state.retry_at is not None and state.retry_at > now:
            wait = (state.retry_at - now).total_seconds()
            queries.update_import(conn, channel_id, holder, {"locked_by": None, "locked_until": None})
            queue_import(conn, channel_id, delay=wait)
            return ImportRun("waiting", again_in=wait)
    messages = calls = 0
    while True:
        after = max(channel.acked_seq, channel.imported_seq)
        with db.read() as conn:
            batch = sync_batch(conn, keyring, channel_id, after, limit)
        if batch.last_seq is None:
            with db.write() as conn:
                queries.update_import(conn, channel_id, holder, _settled(utcnow()))
            return ImportRun("caught_up", messages, calls)
        if batch.gives_desk_anything:
            calls += 1
            try:
                client.import_sync(channel.desk_domain, channel.desk_org_id or channel.org_id,
                                   keyring.decrypt(channel.desk_context), batch.sync)
            except InvokeFailure as failure:
                return _failed(db, channel, state, holder, failure, messages, calls, extra)
            metrics.import_finished("imported")
            messages += len(batch.sync["data"]["threads"])
        # else: echoes of our own replies only; Desk is given nothing and the cursor moves past them.
        with db.write() as conn:
            now = utcnow()
            before = events.sync_cursors_if_wanted(conn, channel_id)
            queries.record_import(conn, channel_id, batch.last_seq, now)
            if before is not None:
                events.record_synced(conn, channel_id, before, before.acked_seq, batch.last_seq, now)
            held = queries.update_import(conn, channel_id, holder, {
                **_settled(now), "locked_by": holder, "locked_until": now + timedelta(seconds=LEASE_SECONDS)})
            if not held:
                log.warning("import of channel %s lost its lease after a batch; the new holder goes on",
                            channel_id, extra=extra)
                return ImportRun("lost_lease", messages, calls)
            channel = queries.channel_row(conn, channel_id)
        log.info("imported %d messages into Desk, up to seq %d", len(batch.sync["data"]["threads"]),
                 batch.last_seq, extra=extra)
        if channel is None or not import_possible(channel, extension_secret):
            with db.write() as conn:
                queries.update_import(conn, channel_id, holder, {"locked_by": None, "locked_until": None})
            return ImportRun("caught_up" if channel is None else "off", messages, calls)


def _settled(now: Any) -> dict[str, Any]:
    """The import state after a success, or with nothing left to send: the lease given back."""
    return {"status": "ok", "error": None, "failures": 0, "retry_at": None, "locked_by": None,
            "locked_until": None, "updated_at": now}


def _failed(db: Database, channel: Row[Any], state: Row[Any], holder: str, failure: InvokeFailure,
            messages: int, calls: int, extra: dict[str, Any]) -> ImportRun:
    """Record a failed Invoke call: a refusal stops imports until a new securityContext; anything
    else is retried after a backoff (the pull keeps delivering meanwhile)."""
    now = utcnow()
    reason = failure.message[:MAX_ERROR_LENGTH]
    with db.write() as conn:
        if failure.refused:
            metrics.import_finished("refused")
            queries.update_import(conn, channel.id, holder, {
                "status": "refused", "error": reason, "refused_digest": channel.desk_context_digest,
                "retry_at": None, "locked_by": None, "locked_until": None, "updated_at": now})
            log.warning("import into Desk refused: %s No more imports for this channel until Desk sends a new "
                        "securityContext; its pull goes on.", reason, extra=extra)
            return ImportRun("refused", messages, calls)
        failures = (state.failures or 0) + 1
        delay = min(FIRST_RETRY_SECONDS * 2 ** (failures - 1), MAX_RETRY_SECONDS) * random.uniform(1 - JITTER, 1)
        metrics.import_finished("transient" if failure.transient else "failed")
        queries.update_import(conn, channel.id, holder, {
            "status": "retrying", "error": reason, "failures": failures,
            "retry_at": now + timedelta(seconds=delay), "locked_by": None, "locked_until": None, "updated_at": now})
        queue_import(conn, channel.id, delay=delay)
    log.warning("import into Desk failed (%s, %s): %s Trying again in %.1f s (failure %d in a row).",
                "transient" if failure.transient else "not accepted", f"HTTP {failure.status}" if failure.status
                else "no answer", reason, delay, failures, extra=extra)
    return ImportRun("retrying", messages, calls, again_in=delay)
