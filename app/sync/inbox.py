"""Inbound messages into the inbox, and the inbox out to Desk as pull batches."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.exc import IntegrityError

from app.desk import mapping
from app.desk.auth import authenticate_desk
from app.desk.state import DamagedState, decode_state, encode_state
from app.errors import ApiError
from app.keyring import Keyring
from app.rendering import html_to_text, subject_line
from app.store import queries
from app.store.database import Database
from app.sync.clock import utcnow

log = logging.getLogger(__name__)
SUBJECT_SOURCE_CHARS = 4096


@dataclass(frozen=True)
class IngestResult:
    accepted: list[str]
    duplicates: list[str]


INGEST_ATTEMPTS = 3


def inbound_secret(db: Database, keyring: Keyring, channel_id: str) -> str:
    """The secret that signs a channel's inbound webhooks; 404 for an unknown channel."""
    with db.read() as conn:
        channel = queries.channel_row(conn, channel_id)
    if channel is None:
        raise ApiError(404, "unknown_channel", "There is no such channel.")
    return keyring.decrypt(channel.inbound_secret)


def ingest_messages(db: Database, channel_id: str, messages: list[dict[str, Any]]) -> IngestResult:
    """Store new messages in the inbox, numbered under the channel lock; report duplicates.

    seq numbers are reserved by the statement that locks the channel, and the lock
    is held until commit, so commits happen in seq order and a reader never sees
    N+1 before N. The lock is taken as late as possible: duplicates are looked up
    before it, and a duplicate that a concurrent request commits in between makes
    the insert fail and the whole request start again (it then is a duplicate).
    """
    now = utcnow()
    first_by_id: dict[str, dict[str, Any]] = {}
    for message in messages:
        first_by_id.setdefault(message["id"], message)
    # Rendering HTML for a subject is slow: do it before any lock, for the message
    # that would open each conversation.
    subjects: dict[str, str] = {}
    for message in first_by_id.values():
        if message["conversation_id"] not in subjects:
            subjects[message["conversation_id"]] = _derived_subject(message)
    for attempt in range(1, INGEST_ATTEMPTS + 1):
        try:
            fresh = _ingest_once(db, channel_id, first_by_id, subjects, now)
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
) -> list[dict[str, Any]]:
    """One transaction of ingest_messages; the messages it stored."""
    with db.write() as conn:
        known = queries.existing_message_ids(conn, channel_id, list(first_by_id))
        fresh = [m for m in first_by_id.values() if m["id"] not in known]
        if not fresh:
            if queries.channel_row(conn, channel_id) is None:
                raise ApiError(404, "unknown_channel", "There is no such channel.")
            return []
        last_seq = queries.reserve_seqs(conn, channel_id, len(fresh))
        if last_seq is None:
            raise ApiError(404, "unknown_channel", "There is no such channel.")
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


# A pull that changes nothing writes nothing: last_pull_at is kept to this resolution
# (Desk pulls every 4 minutes), so that frequent empty pulls stay pure reads.
LAST_PULL_RESOLUTION = timedelta(seconds=60)


def pull(db: Database, keyring: Keyring, body: Mapping[str, Any], org_id: str | None, limit: int) -> dict[str, Any]:
    """Answer a Desk pull: messages after the cursor, with the tickets they open."""
    with db.read() as conn:
        channel = authenticate_desk(conn, body, org_id)
        raw_state = body.get("channelState")
        acked: int | None = None
        try:
            cursor = decode_state(keyring, channel.id, raw_state)
            if cursor > channel.last_seq:
                raise DamagedState(f"channelState cursor {cursor} is ahead of the inbox ({channel.last_seq})")
            damaged = False
            acked = cursor if raw_state else None
        except DamagedState as exc:
            # Desk would send the same state every 4 minutes forever: heal it instead.
            log.warning(
                "channel %s: damaged channelState (%s); resuming from acked_seq %s", channel.id, exc, channel.acked_seq
            )
            cursor, damaged = channel.acked_seq, True
        # At the head of the inbox there is nothing to read (a message committed since
        # the channel row was read comes with the next pull).
        messages = queries.messages_after(conn, channel.id, cursor, limit) if cursor < channel.last_seq else []
        conversations = (
            queries.conversations_first_between(conn, channel.id, cursor, messages[-1].seq) if messages else []
        )
    response: dict[str, Any] = {"data": {"tickets": [], "threads": []}}
    if messages:
        by_seq = {message.seq: message for message in messages}
        response["data"]["tickets"] = [mapping.ticket(c, by_seq[c.first_seq]) for c in conversations]
        # Echoes of our own delivered replies are skipped, but the cursor moves past them.
        response["data"]["threads"] = [mapping.thread(m) for m in messages if not m.is_echo]
        response["channelState"] = encode_state(keyring, channel.id, messages[-1].seq)
    elif damaged:
        response["channelState"] = encode_state(keyring, channel.id, cursor)
    now = utcnow()
    acked_grows = acked is not None and acked > channel.acked_seq
    if acked_grows or channel.last_pull_at is None or now - channel.last_pull_at >= LAST_PULL_RESOLUTION:
        with db.write() as conn:
            queries.record_pull(conn, channel.id, acked, now)
    return response
