"""External services, one module per kind; each kind owns both directions (SPEC B15)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import requests

from app.connectors.base import ConnectorKind
from app.connectors.http import make_http_session
from app.connectors.webhook import WebhookKind

CONNECTOR_TYPES = ("webhook",)


class Connectors(Mapping[str, ConnectorKind]):
    """The registry of connector kinds by name; owns the process's outbound HTTP client."""

    def __init__(self, *, allow_private: bool, overrides: Mapping[str, ConnectorKind] | None = None) -> None:
        self.allow_private = allow_private
        self.http: requests.Session = make_http_session(allow_private=allow_private)
        self._kinds: dict[str, ConnectorKind] = {"webhook": WebhookKind(self.http, allow_private=allow_private)}
        self._kinds.update(overrides or {})

    def __getitem__(self, name: str) -> ConnectorKind:
        return self._kinds[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._kinds)

    def __len__(self) -> int:
        return len(self._kinds)
