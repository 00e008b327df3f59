"""Providers' later reports (SPEC B15): delivery status callbacks on replies they accepted, and
the media proxy that serves their files to Desk without handing out a credential."""

from __future__ import annotations

import logging

from app.connectors import Connectors
from app.connectors.base import ChannelConfig, InboundAnswer, InboundRequest, MediaStream
from app.domain.errors import NotFound
from app.keyring import Keyring
from app.store import queries
from app.store.database import Database
from app.usecases import events
from app.usecases.clock import utcnow

log = logging.getLogger(__name__)

# Twilio's message statuses in the order a message goes through them: a report that arrives late
# (callbacks are not ordered) never takes an entry back. undelivered, failed and canceled are final.
STATUS_ORDER = {
    "accepted": 0, "scheduled": 0, "queued": 1, "sending": 2, "sent": 3, "receiving": 3, "received": 3,
    "delivered": 4, "read": 5, "partially_delivered": 5, "undelivered": 6, "failed": 6, "canceled": 6,
}
MAX_ERROR_LENGTH = 500


def receive_status(
    db: Database, keyring: Keyring, connectors: Connectors, channel_id: str, request: InboundRequest
) -> InboundAnswer:
    """A provider's status callback: verified and read by the channel's connector, then written
    on the ledger entries it reports on (their status stays `sent`: never sent again)."""
    with db.read() as conn:
        row = queries.channel_row(conn, channel_id)
    if row is None:
        raise NotFound("unknown_channel", "There is no such channel.")
    kind = connectors[row.connector]
    reports = kind.read_status(ChannelConfig.from_row(row, keyring.decrypt), request)
    now = utcnow()
    with db.write() as conn:
        for report in reports:
            entry = queries.lock_sent_reply(conn, channel_id, report.external_id)
            extra = {"channel_id": channel_id, "delivery_status": report.status}
            if entry is None:
                log.info("delivery report on a message that is no reply of ours: ignored", extra=extra)
                continue
            if STATUS_ORDER.get(report.status, 3) < STATUS_ORDER.get(entry.delivery_status or "", -1):
                continue  # a late report of an earlier stage
            error = None
            if report.error_code or report.error_message:
                error = f"{report.error_code or 'error'}: {report.error_message or ''}".rstrip(": ")[:MAX_ERROR_LENGTH]
            queries.record_delivery_report(conn, entry.id, report.status, error, now)
            events.record_event(conn, "reply.status", channel_id, events.reply_data(
                entry, status="sent", external_id=report.external_id, delivery_status=report.status, reason=error),
                now)
            if report.status in ("undelivered", "failed"):
                log.warning("reply %d was not delivered by the provider (%s): %s", entry.id, report.status,
                            error or "no reason given", extra={**extra, "reply_id": entry.id})
    return kind.status_answer()


def open_media(
    db: Database, keyring: Keyring, connectors: Connectors, token: str, max_bytes: int
) -> MediaStream:
    """The provider file a media token names, opened with its channel's credentials (SPEC B15)."""
    channel_id, ref = connectors.media.read(token)
    with db.read() as conn:
        row = queries.channel_row(conn, channel_id)
    if row is None:
        raise NotFound("unknown_media", "There is no such media file.")
    return connectors[row.connector].fetch_media(ChannelConfig.from_row(row, keyring.decrypt), ref, max_bytes)
