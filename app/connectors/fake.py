"""Fakes for tests that need no network: a scripted outbound half, and a kind built on it."""

from __future__ import annotations

import requests

from app.connectors.base import ChannelConfig, Connector, Delivered, DeliveryError, OutboundReply
from app.connectors.webhook import WebhookKind


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


class FakeWebhookKind(WebhookKind):
    """The webhook kind with its outbound half replaced by one FakeConnector for every channel.

    Given to `create_app(connectors={"webhook": FakeWebhookKind(fake)})`.
    """

    def __init__(self, fake: FakeConnector, *, drops_repeats: bool = True) -> None:
        super().__init__(requests.Session(), allow_private=True)
        self.fake = fake
        self.drops_repeats = drops_repeats

    def outbound(self, channel: ChannelConfig) -> Connector:
        """The fake, whatever the channel."""
        return self.fake
