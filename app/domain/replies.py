"""Agent replies: what Desk pushed, and how its delivery ended."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class ReplyIn:
    """An agent's reply as Desk pushed it (SPEC A4), validated."""

    desk_reply_id: str
    conversation_id: str
    in_reply_to: str | None
    content: str
    content_type: str
    author: dict[str, Any] | None = None
    attachments: list[Any] = field(default_factory=list)


@dataclass(frozen=True)
class SentReply:
    """A reply the external service accepted."""

    ledger_id: int
    external_id: str
    conversation_id: str
    content: str
    content_type: str
    sent_at: datetime


@dataclass(frozen=True)
class AttemptRecord:
    """One delivery attempt, for the ledger's attempts history (SPEC B4)."""

    started_at: datetime
    duration_ms: int
    outcome: str  # sent, transient, permanent
    http_status: int | None
    error: str | None


@dataclass(frozen=True)
class ReplyOutcome:
    """How one delivery of a ledger entry ended: `sent` holds the success, else `reason`."""

    ledger_id: int
    status: str  # sent or failed
    attempts: int
    sent: SentReply | None = None
    reason: str | None = None
    transient: bool = False
