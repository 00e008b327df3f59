"""External services, one module per kind; each kind owns both directions (SPEC B15)."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator, Mapping

import requests

from app.config import TELEGRAM_API_BASE, TWILIO_API_BASE
from app.connectors.base import ConnectorKind, KindContext
from app.connectors.http import make_http_session
from app.connectors.media import MediaLinks
from app.connectors.telegram import TelegramKind
from app.connectors.twilio import TwilioKind
from app.connectors.webhook import WebhookKind

CONNECTOR_TYPES = ("webhook", "telegram", "twilio")
# A kind given to Connectors: an instance, or a factory that takes the KindContext (a kind's class).
KindOrFactory = ConnectorKind | Callable[[KindContext], ConnectorKind]


class Connectors(Mapping[str, ConnectorKind]):
    """The registry of connector kinds by name; owns the process's outbound HTTP client."""

    def __init__(
        self,
        *,
        allow_private: bool,
        overrides: Mapping[str, KindOrFactory] | None = None,
        public_base_url: str | None = None,
        media: MediaLinks | None = None,
        telegram_api_base: str = TELEGRAM_API_BASE,
        twilio_api_base: str = TWILIO_API_BASE,
        secret_overlap_seconds: int = 86400,
    ) -> None:
        self.allow_private = allow_private
        self.http: requests.Session = make_http_session(allow_private=allow_private)
        self.media = media or MediaLinks(secrets.token_bytes(32), public_base_url)
        self.context = KindContext(self.http, allow_private, public_base_url, self.media,
                                   telegram_api_base=telegram_api_base, twilio_api_base=twilio_api_base,
                                   secret_overlap_seconds=secret_overlap_seconds)
        self._kinds: dict[str, ConnectorKind] = {
            "webhook": WebhookKind(self.http, allow_private=allow_private),
            "telegram": TelegramKind(self.context),
            "twilio": TwilioKind(self.context),
        }
        for name, kind in (overrides or {}).items():
            self._kinds[name] = kind(self.context) if isinstance(kind, type) or _is_factory(kind) else kind

    def __getitem__(self, name: str) -> ConnectorKind:
        return self._kinds[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._kinds)

    def __len__(self) -> int:
        return len(self._kinds)


def _is_factory(kind: object) -> bool:
    """A plain function that builds a kind (an instance of a kind has a `name`)."""
    return callable(kind) and not hasattr(kind, "name")
