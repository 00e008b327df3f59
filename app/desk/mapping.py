"""External messages to Desk's sync format: tickets, threads, actors (SPEC B3)."""

from __future__ import annotations

from datetime import UTC, datetime
from html import escape
from typing import Any

_ACTOR_FIELDS = (("id", "extId"), ("name", "name"), ("name", "displayName"), ("email", "email"),
                 ("phone", "phone"), ("avatar_url", "photoURL"))


def desk_time(moment: datetime) -> str:
    """UTC as Desk writes it: YYYY-MM-DDTHH:MM:SS.sssZ."""
    # isoformat, unlike strftime's %Y, always writes four digits of year.
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="milliseconds") + "Z"


def actor(author: dict[str, Any] | None) -> dict[str, str] | None:
    """A Desk actor from a message author, with only the fields that are known."""
    if not author:
        return None
    mapped = {desk: author[ours] for ours, desk in _ACTOR_FIELDS if author.get(ours)}
    return mapped or None


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
    }
    who = actor(message.author)
    if who:
        item["actor"] = who
    return item


def ticket(conversation: Any, first_message: Any) -> dict[str, Any]:
    """A Desk ticket from a conversation row and its first message."""
    item: dict[str, Any] = {
        "extId": conversation.ext_id,
        "subject": conversation.subject,
        "createdTime": desk_time(first_message.created_at),
    }
    who = actor(first_message.author)
    if who:
        item["actor"] = who
    return item
