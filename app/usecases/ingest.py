"""Messages from the external service into the inbox (SPEC B5)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.exc import IntegrityError

from app import metrics
from app.connectors import Connectors
from app.connectors.base import ChannelConfig, InboundAnswer, InboundRequest
from app.domain.errors import NotFound
from app.domain.messages import IngestResult
from app.keyring import Keyring
from app.rendering import html_to_text, sanitize_html, subject_line
from app.store import queries
from app.store.database import Database
from app.usecases import events, imports
from app.usecases.clock import utcnow

SUBJECT_SOURCE_CHARS = 4096
INGEST_ATTEMPTS = 3


def receive_inbound(
    db: Database, keyring: Keyring, connectors: Connectors, channel_id: str, request: InboundRequest, *,
    extension_secret: str | None = None,
) -> InboundAnswer:
    """A webhook from the channel's external service: verified and read by its connector, then stored
    (and queued for the real-time import when the channel has one, SPEC B14)."""
    with db.read() as conn:
        row = queries.channel_row(conn, channel_id)
    if row is None:
        raise NotFound("unknown_channel", "There is no such channel.")
    kind = metrics.counting_inbound(connectors[row.connector])
    messages = kind.read_inbound(ChannelConfig.from_row(row, keyring.decrypt), request)
    result = ingest_messages(db, channel_id, messages, queue_import=imports.import_possible(row, extension_secret))
    return kind.inbound_answer(result)


def ingest_messages(
    db: Database, channel_id: str, messages: list[dict[str, Any]], *, queue_import: bool = False
) -> IngestResult:
    """Store new messages in the inbox, numbered under the channel lock; report duplicates.
    `queue_import`: queue the channel's real-time import in the same transaction when any is new.

    seq numbers are reserved by the statement that locks the channel, and the lock
    is held until commit, so commits happen in seq order and a reader never sees
    N+1 before N. The lock is taken as late as possible: duplicates are looked up
    before it, and a duplicate that a concurrent request commits in between makes
    the insert fail and the whole request start again (it then is a duplicate).
    """
    now = utcnow()
    first_by_id: dict[str, dict[str, Any]] = {}
    for message in messages:
        if message["id"] not in first_by_id:
            # What is stored is what Desk gets: HTML is made safe once, here, before any lock.
            first_by_id[message["id"]] = (
                {**message, "html": sanitize_html(message["html"])} if message.get("html") else message
            )
    # Rendering HTML for a subject is slow: do it before any lock, for the message
    # that would open each conversation.
    subjects: dict[str, str] = {}
    for message in first_by_id.values():
        if message["conversation_id"] not in subjects:
            subjects[message["conversation_id"]] = _derived_subject(message)
    for attempt in range(1, INGEST_ATTEMPTS + 1):
        try:
            fresh = _ingest_once(db, channel_id, first_by_id, subjects, now, queue_import)
            break
        except IntegrityError:
            if attempt == INGEST_ATTEMPTS:
                raise
    accepted = [m["id"] for m in fresh]
    accepted_set = set(accepted)
    duplicates: list[str] = []
    for message in messages:
        if message["id"] in accepted_set:
            accepted_set.discard(message["id"])  # the first occurrence only
        else:
            duplicates.append(message["id"])
    return IngestResult(accepted=accepted, duplicates=duplicates)


def _ingest_once(
    db: Database,
    channel_id: str,
    first_by_id: dict[str, dict[str, Any]],
    subjects: dict[str, str],
    now: datetime,
    queue_import: bool,
) -> list[dict[str, Any]]:
    """One transaction of ingest_messages; the messages it stored."""
    with db.write() as conn:
        known = queries.existing_message_ids(conn, channel_id, list(first_by_id))
        fresh = [m for m in first_by_id.values() if m["id"] not in known]
        if not fresh:
            if queries.channel_row(conn, channel_id) is None:
                raise NotFound("unknown_channel", "There is no such channel.")
            return []
        last_seq = queries.reserve_seqs(conn, channel_id, len(fresh))
        if last_seq is None:
            raise NotFound("unknown_channel", "There is no such channel.")
        rows: list[dict[str, Any]] = []
        conversations: dict[str, dict[str, Any]] = {}
        for seq, message in enumerate(fresh, start=last_seq - len(fresh) + 1):
            rows.append(_inbox_row(channel_id, seq, message, now))
            opened = conversations.setdefault(
                message["conversation_id"],
                {
                    "channel_id": channel_id,
                    "ext_id": message["conversation_id"],
                    "first_seq": seq,
                    "subject": None,
                    "created_at": now,
                },
            )
            if not opened["subject"] and (message.get("subject") or "").strip():
                opened["subject"] = message["subject"].strip()[:255]
        for row in conversations.values():
            row["subject"] = row["subject"] or subjects[row["ext_id"]]
        # A conversation that exists keeps its row: its first message has a lower seq,
        # since rows are only inserted while the channel is locked.
        queries.insert_new_conversations(conn, list(conversations.values()))
        queries.insert_messages(conn, rows)
        events.record_events(
            conn, [("message.received", channel_id, events.message_data(row, with_content=True)) for row in rows], now)
        if queue_import:
            imports.queue_import(conn, channel_id)
    return fresh


def _inbox_row(channel_id: str, seq: int, message: dict[str, Any], now: datetime) -> dict[str, Any]:
    html = message.get("html")
    return {
        "channel_id": channel_id,
        "seq": seq,
        "ext_id": message["id"],
        "conversation_ext_id": message["conversation_id"],
        "content": html or message.get("text") or "",
        "content_type": "text/html" if html else "text/plain",
        "direction": message.get("direction", "in"),
        "can_reply": message.get("can_reply", True),
        "author": message.get("author") or None,
        "attachments": message.get("attachments") or None,
        "permalink": message.get("permalink"),
        "created_at": message.get("created_at") or now,
        "received_at": now,
    }


def _derived_subject(message: dict[str, Any]) -> str:
    """The first line of the first message, else its first attachment's name."""
    text = message.get("text") or ""
    if message.get("html"):
        # The first line is near the start: render only the head of long HTML, cut
        # after a tag so that no half tag shows up as text.
        head = message["html"][:SUBJECT_SOURCE_CHARS]
        if len(head) < len(message["html"]) and ">" in head:
            head = head[: head.rindex(">") + 1]
        text = html_to_text(head)
    line = subject_line(text)
    if line:
        return line
    for attachment in message.get("attachments") or []:
        return subject_line(f"Attachment: {attachment.get('name') or attachment['url']}")
    return "(no subject)"
