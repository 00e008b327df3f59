"""External messages to Desk's sync format: tickets, threads, actors (SPEC B3)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from html import escape
from typing import Any

from app.domain.replies import SentReply

# display_name (a connector's handle, Telegram's @username) overrides the name as displayName.
_ACTOR_FIELDS = (("id", "extId"), ("name", "name"), ("name", "displayName"), ("display_name", "displayName"),
                 ("email", "email"), ("phone", "phone"), ("avatar_url", "photoURL"))


def desk_time(moment: datetime) -> str:
    """UTC as Desk writes it: YYYY-MM-DDTHH:MM:SS.sssZ."""
    # isoformat, unlike strftime's %Y, always writes four digits of year.
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="milliseconds") + "Z"


def optional_desk_time(moment: datetime | None) -> str | None:
    """desk_time, or None for a time not known."""
    return desk_time(moment) if moment else None


def actor(author: dict[str, Any] | None, conversation_id: str) -> dict[str, str]:
    """A Desk actor from a message author, with only the fields that are known.

    Every ticket and thread has one: without an author (or an author id) the conversation
    id stands in, since it is the customer's handle in most services (a phone, a chat id).
    """
    mapped = {desk: author[ours] for ours, desk in _ACTOR_FIELDS if author.get(ours)} if author else {}
    if "extId" not in mapped:
        mapped["extId"] = conversation_id
        mapped.setdefault("name", conversation_id)
        mapped.setdefault("displayName", conversation_id)
    return mapped


def with_attachment_links(content: str, content_type: str, attachments: list[dict[str, Any]] | None) -> str:
    """The content with its attachments appended as links (name and URL)."""
    if not attachments:
        return content
    if content_type == "text/html":
        links = "<br>".join(
            f'<a href="{escape(a["url"], quote=True)}">{escape(a.get("name") or a["url"])}</a>'
            for a in attachments
        )
        return f"{content}<p>{links}</p>" if content else f"<p>{links}</p>"
    lines = "\n".join(f"{a.get('name') or 'Attachment'}: {a['url']}" for a in attachments)
    return f"{content}\n\n{lines}" if content else lines


def thread(message: Any) -> dict[str, Any]:
    """A Desk thread from an inbox row."""
    item: dict[str, Any] = {
        "extId": message.ext_id,
        "extParentId": message.conversation_ext_id,
        "content": with_attachment_links(message.content, message.content_type, message.attachments),
        "contentType": message.content_type,
        "createdTime": desk_time(message.created_at),
        "direction": message.direction,
        "canReply": message.can_reply,
        "actor": actor(message.author, message.conversation_ext_id),
    }
    return item


def ticket(conversation: Any, first_message: Any) -> dict[str, Any]:
    """A Desk ticket from a conversation row and its first message."""
    item: dict[str, Any] = {
        "extId": conversation.ext_id,
        "subject": conversation.subject,
        "createdTime": desk_time(first_message.created_at),
        "actor": actor(first_message.author, conversation.ext_id),
    }
    return item


def empty_sync() -> dict[str, Any]:
    """A sync object with nothing new, leaving Desk's channelState as it is."""
    return {"data": {"tickets": [], "threads": []}}


def sync_object(conversations: Sequence[Any], messages: Sequence[Any], channel_state: str) -> dict[str, Any]:
    """Desk's sync object for a batch of inbox rows: every thread but our own echoes, the
    tickets whose first message is in the batch, and the state carrying the batch's end."""
    by_seq = {message.seq: message for message in messages}
    return {
        "channelState": channel_state,
        "data": {
            "tickets": [ticket(c, by_seq[c.first_seq]) for c in conversations],
            # Echoes of our own delivered replies are skipped, but the cursor moves past them.
            "threads": [thread(m) for m in messages if not m.is_echo],
        },
    }


def push_answer(sent: SentReply) -> dict[str, Any]:
    """Desk's answer to a push that was delivered: a thread-like object (SPEC A4, B4)."""
    return {
        "extId": sent.external_id,
        "extParentId": sent.conversation_id,
        "createdTime": desk_time(sent.sent_at),
        "direction": "out",
        "content": sent.content,
        "contentType": sent.content_type,
        "canReply": True,
    }
