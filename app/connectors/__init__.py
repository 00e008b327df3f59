"""External services that replies are delivered to, one module per kind."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import requests

from app.connectors.base import Connector
from app.connectors.webhook import WebhookConnector, make_http_session

CONNECTOR_TYPES = ("webhook",)


@dataclass(frozen=True)
class ChannelEndpoint:
    """What a connector needs to know about its channel, secrets decrypted."""

    connector: str
    outbound_url: str
    outbound_secret: str = field(repr=False)


class ConnectorFactory:
    """Builds the connector of a channel; owns the process's outbound HTTP client."""

    def __init__(self, *, allow_private: bool) -> None:
        self.allow_private = allow_private
        self._http: requests.Session = make_http_session(allow_private=allow_private)
        self._builders: dict[str, Callable[[ChannelEndpoint], Connector]] = {"webhook": self._webhook}

    def __call__(self, endpoint: ChannelEndpoint) -> Connector:
        """The connector for a channel."""
        return self._builders[endpoint.connector](endpoint)

    def _webhook(self, endpoint: ChannelEndpoint) -> Connector:
        return WebhookConnector(
            endpoint.outbound_url, endpoint.outbound_secret, self._http, allow_private=self.allow_private
        )
