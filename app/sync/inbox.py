"""Inbound messages into the inbox, and the inbox out to Desk as pull batches."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection

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


def ingest_messages(db: Database, channel_id: str, messages: list[dict[str, Any]]) -> IngestResult:
    """Store new messages in the inbox under the channel lock; report duplicates.

    seq numbers are assigned while the channel is locked and the lock is held
    until commit, so commits happen in seq order and a reader never sees N+1
    before N.
    """
    now = utcnow()
    first_by_id: dict[str, dict[str, Any]] = {}
    for message in messages:
        first_by_id.setdefault(message["id"], message)
    # Rendering HTML for a subject is slow: do it before taking the lock, for the
    # message that would open each conversation.
    subjects: dict[str, str] = {}
    for message in first_by_id.values():
        if message["conversation_id"] not in subjects:
            subjects[message["conversation_id"]] = _derived_subject(message)
    with db.write() as conn:
        last_seq = queries.lock_channel(conn, channel_id)
        if last_seq is None:
            raise ApiError(404, "unknown_channel", "There is no such channel.")
        known = queries.existing_message_ids(conn, channel_id, list(first_by_id))
        fresh = [m for m in first_by_id.values() if m["id"] not in known]
        if fresh:
            _store_fresh(conn, channel_id, last_seq, fresh, subjects, now)
    accepted = [m["id"] for m in fresh]
    accepted_set = set(accepted)
    duplicates: list[str] = []
    for message in messages:
        if message["id"] in accepted_set:
            accepted_set.discard(message["id"])  # the first occurrence only
        else:
            duplicates.append(message["id"])
    return IngestResult(accepted=accepted, duplicates=duplicates)


def _store_fresh(
    conn: Connection,
    channel_id: str,
    last_seq: int,
    fresh: list[dict[str, Any]],
    subjects: dict[str, str],
    now: datetime,
) -> None:
    known_conversations = queries.existing_conversation_ids(conn, channel_id, {m["conversation_id"] for m in fresh})
    rows: list[dict[str, Any]] = []
    opened: dict[str, dict[str, Any]] = {}
    seq = last_seq
    for message in fresh:
        seq += 1
        rows.append(_inbox_row(channel_id, seq, message, now))
        conversation_id = message["conversation_id"]
        if conversation_id in known_conversations:
            continue
        if conversation_id not in opened:
            opened[conversation_id] = {
                "channel_id": channel_id,
                "ext_id": conversation_id,
                "first_seq": seq,
                "subject": message.get("subject"),
                "created_at": now,
            }
        elif not opened[conversation_id]["subject"] and message.get("subject"):
            opened[conversation_id]["subject"] = message["subject"]
    conversations = list(opened.values())
    for row in conversations:
        # The derived subject comes from the conversation's first message in this
        # request: the one that opens it, unless that one was a duplicate (only an
        # echo can be a duplicate in a new conversation; then the subject is still
        # the conversation's first words, which is what Desk shows).
        row["subject"] = (row["subject"] or "").strip()[:255] or subjects[row["ext_id"]]
    queries.insert_conversations(conn, conversations)
    queries.insert_messages(conn, rows)
    queries.advance_last_seq(conn, channel_id, seq)


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
        messages = queries.messages_after(conn, channel.id, cursor, limit)
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
