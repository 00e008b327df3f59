"""Inbox messages as the use cases handle them."""

from __future__ import annotations

from dataclasses import dataclass

# An inbound message is a dict of the fields of SPEC B5 (id, conversation_id, text, html,
# created_at, subject, direction, author, attachments, can_reply, permalink), produced by
# a connector's inbound half and validated before the use case sees it.


@dataclass(frozen=True)
class IngestResult:
    """Which message ids were stored now, and which were already known."""

    accepted: list[str]
    duplicates: list[str]
