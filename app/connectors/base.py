"""The connector interface: deliver one agent reply to an external service."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class OutboundReply:
    """An agent's reply as a connector receives it."""

    channel_id: str
    reply_id: str
    conversation_id: str
    in_reply_to: str | None
    content: str
    content_type: str
    text: str
    author: dict[str, Any] | None = None
    attachments: list[Any] = field(default_factory=list)

    @property
    def idempotency_key(self) -> str:
        """The same for every attempt at this reply, so the receiver can drop repeats."""
        return f"reply_{self.reply_id}"


@dataclass(frozen=True)
class Delivered:
    """A delivery the external service accepted; external_id is its message id, if it gave one."""

    external_id: str | None


class DeliveryError(Exception):
    """A delivery failed; `transient` says whether trying again may help."""

    transient = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class TransientDeliveryError(DeliveryError):
    """Timeout, connection error, HTTP 408, 429 or 5xx: worth another attempt."""

    transient = True


class PermanentDeliveryError(DeliveryError):
    """The external service rejected the reply, or policy forbids the destination."""


class Connector(Protocol):
    """What deskbridge needs from an external messaging service."""

    def deliver(self, reply: OutboundReply, timeout: float) -> Delivered:
        """Deliver a reply within `timeout` seconds, or raise a DeliveryError."""
        ...
