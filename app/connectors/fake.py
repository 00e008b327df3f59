"""A scripted connector for tests that need no network."""

from __future__ import annotations

from app.connectors.base import Delivered, DeliveryError, OutboundReply


class FakeConnector:
    """Answers each delivery with the next scripted outcome and records what it got."""

    def __init__(self, *outcomes: Delivered | DeliveryError) -> None:
        self.outcomes = list(outcomes)
        self.deliveries: list[tuple[OutboundReply, float]] = []

    def deliver(self, reply: OutboundReply, timeout: float) -> Delivered:
        """Record the reply and play the next outcome (default: accepted, no id)."""
        self.deliveries.append((reply, timeout))
        outcome = self.outcomes.pop(0) if self.outcomes else Delivered(external_id=None)
        if isinstance(outcome, DeliveryError):
            raise outcome
        return outcome
