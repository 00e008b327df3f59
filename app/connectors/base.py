"""What a connector is: one kind of external service, both directions.

A kind reads its service's inbound webhooks (verify, turn into inbox messages, answer)
and delivers agent replies to it. Kinds know nothing of Flask or of the database: they
get a `ChannelConfig` and plain requests, and answer plain values or raise domain errors.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from app.domain.messages import IngestResult

if TYPE_CHECKING:
    import requests

    from app.connectors.media import MediaLinks


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

    def text_with_attachment_names(self) -> str:
        """The plain text, with the names of the agent's attachments appended (SPEC B15: their links
        need Desk's OAuth token, so connectors send names, not files)."""
        names = [name for name in (attachment_name(item) for item in self.attachments) if name]
        if not names:
            return self.text
        listed = "Attachments: " + ", ".join(names)
        return f"{self.text}\n\n{listed}" if self.text else listed


def attachment_name(attachment: Any) -> str | None:
    """The file name of one of Desk's attachment objects (shape unknown, SPEC B15), if it has one."""
    if isinstance(attachment, str):
        return attachment.rsplit("/", 1)[-1] or None
    if isinstance(attachment, Mapping):
        for key in ("name", "fileName", "filename", "file_name"):
            value = attachment.get(key)
            if isinstance(value, str) and value.strip():
                return value.strip()
    return None


@dataclass(frozen=True)
class Delivered:
    """A delivery the external service accepted; external_id is its message id, if it gave one;
    delivery_status its first delivery report (Twilio: queued, accepted), if it gives them."""

    external_id: str | None
    http_status: int | None = None
    delivery_status: str | None = None


class DeliveryError(Exception):
    """A delivery failed; `transient` says whether trying again may help.

    `http_status` is the service's answer when there was one; `retry_after` the seconds
    it asked us to wait (Retry-After, or its own "retry after N s"); `outcome_unknown` that the
    request may have reached the service (a timeout or a dropped connection after sending).
    """

    transient = False

    def __init__(self, message: str, *, http_status: int | None = None, retry_after: float | None = None,
                 outcome_unknown: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.http_status = http_status
        self.retry_after = retry_after
        self.outcome_unknown = outcome_unknown


class TransientDeliveryError(DeliveryError):
    """Timeout, connection error, HTTP 408, 429 or 5xx: worth another attempt."""

    transient = True


class PermanentDeliveryError(DeliveryError):
    """The external service rejected the reply, or policy forbids the destination."""


class Connector(Protocol):
    """The outbound half: deliver one agent reply to the external service."""

    def deliver(self, reply: OutboundReply, timeout: float) -> Delivered:
        """Deliver a reply within `timeout` seconds, or raise a DeliveryError."""
        ...


class ChannelSecrets:
    """A channel's secrets, decrypted only when read (most requests need one or none)."""

    def __init__(self, ciphertexts: Mapping[str, str], decrypt: Callable[[str], str]) -> None:
        self._ciphertexts = ciphertexts
        self._decrypt = decrypt

    def __repr__(self) -> str:
        return f"ChannelSecrets({sorted(self._ciphertexts)})"

    def __contains__(self, name: object) -> bool:
        return name in self._ciphertexts

    def __getitem__(self, name: str) -> str:
        return self._decrypt(self._ciphertexts[name])


@dataclass(frozen=True)
class ChannelConfig:
    """A channel as its connector sees it."""

    id: str
    connector: str
    settings: Mapping[str, Any]
    secrets: ChannelSecrets = field(repr=False)

    @classmethod
    def from_row(cls, row: Any, decrypt: Callable[[str], str]) -> ChannelConfig:
        """A stored channel (row or object with id, connector, settings, secrets)."""
        return cls(row.id, row.connector, row.settings, ChannelSecrets(row.secrets, decrypt))


@dataclass(frozen=True)
class InboundRequest:
    """A webhook request from the external service, as the web layer read it."""

    path: str
    headers: Mapping[str, str]  # keys in lower case
    body: bytes
    content_type: str = ""
    query_string: str = ""  # as received, without the "?"


@dataclass(frozen=True)
class DeliveryReport:
    """A provider's later report on a reply it accepted (SPEC B15: Twilio's status callbacks)."""

    external_id: str
    status: str  # queued, sending, sent, delivered, undelivered, failed, read, ...
    error_code: str | None = None
    error_message: str | None = None


@dataclass
class MediaStream:
    """A provider's file as the media proxy streams it (SPEC B15)."""

    content_type: str
    length: int | None  # from the provider's Content-Length, when it gave one
    chunks: Iterator[bytes]
    close: Callable[[], None]


@dataclass(frozen=True)
class SettingsChange:
    """A kind's answer to `channel update`: the settings and secrets to store now."""

    settings: dict[str, Any]
    secrets: dict[str, str | None]  # in clear; None removes a secret; absent ones are kept


@dataclass(frozen=True)
class KindContext:
    """What the assembly gives every connector kind."""

    http: requests.Session
    allow_private: bool
    public_base_url: str | None
    media: MediaLinks
    telegram_api_base: str = "https://api.telegram.org"
    twilio_api_base: str = "https://api.twilio.com"
    secret_overlap_seconds: int = 86400  # how long a replaced inbound credential keeps verifying


@dataclass(frozen=True)
class InboundAnswer:
    """What the external service gets back."""

    status: int
    content_type: str
    body: bytes


@dataclass(frozen=True)
class NewChannel:
    """A kind's part of a new channel: settings and secrets to store, and what to show once."""

    settings: dict[str, Any]
    secrets: dict[str, str]  # in clear: the use case encrypts them
    shown: dict[str, Any]  # the kind's part of the creation output (secrets shown this once)


@dataclass(frozen=True)
class RotatedSecret:
    """A kind's rotation of one of its secrets: what to store, and what to show once."""

    settings: dict[str, Any]
    secrets: dict[str, str | None]  # in clear; None removes a secret
    value: str
    previous_valid_until: datetime | None = None


class ConnectorKind(Protocol):
    """One kind of external service: its settings, its inbound half and its outbound half."""

    name: str
    # Whether the service drops a repeated delivery carrying the same idempotency key.
    drops_repeats: bool

    def setting_fields(self) -> Mapping[str, Any]:
        """marshmallow fields of the kind's settings, as taken at channel creation."""
        ...

    def new_channel(self, channel_id: str, settings: Mapping[str, Any]) -> NewChannel:
        """Settings and fresh secrets for a new channel (settings already validated)."""
        ...

    def read_inbound(self, channel: ChannelConfig, request: InboundRequest) -> list[dict[str, Any]]:
        """Verify an inbound request and turn it into inbox messages; raises domain errors."""
        ...

    def inbound_answer(self, result: IngestResult) -> InboundAnswer:
        """The answer the service expects once its messages are stored."""
        ...

    def outbound(self, channel: ChannelConfig) -> Connector:
        """The outbound half for a channel."""
        ...

    def rotate_secret(self, channel: ChannelConfig, which: str, overlap_until: datetime | None) -> RotatedSecret:
        """A new `inbound` or `outbound` secret; the old inbound one may stay valid until overlap_until.
        Raises Invalid when the kind has no such secret."""
        ...

    def change_settings(self, channel: ChannelConfig, changes: Mapping[str, Any]) -> SettingsChange:
        """Apply validated setting changes (`channel update`), calling the provider when they need it
        (a new bot token registers the webhook); raises Invalid when it refuses them."""
        ...

    def read_status(self, channel: ChannelConfig, request: InboundRequest) -> list[DeliveryReport]:
        """Verify and read a delivery status callback; NotFound for kinds without them."""
        ...

    def status_answer(self) -> InboundAnswer:
        """The answer the service expects to a status callback."""
        ...

    def fetch_media(self, channel: ChannelConfig, ref: Mapping[str, Any], max_bytes: int) -> MediaStream:
        """Open a provider file named by a media token's reference, with the channel's credentials;
        raises ProviderFailed, TooLarge (a Content-Length over max_bytes) or NotFound."""
        ...
