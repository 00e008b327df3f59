"""The `webhook` connector: messages in as signed Standard Webhooks (SPEC B5), replies out
as signed JSON POSTs (SPEC B6)."""

from __future__ import annotations

import binascii
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import orjson
import requests
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from app.connectors.addresses import AddressRefused, check_outbound_url
from app.connectors.base import (
    ChannelConfig,
    Connector,
    Delivered,
    DeliveryReport,
    InboundAnswer,
    InboundRequest,
    MediaStream,
    NewChannel,
    OutboundReply,
    PermanentDeliveryError,
    RotatedSecret,
    SettingsChange,
    TransientDeliveryError,
)
from app.connectors.http import HttpFailure, bounded_request
from app.connectors.messages import load_messages
from app.domain.errors import NotFound, Unauthenticated
from app.domain.messages import IngestResult
from app.keyring import new_webhook_secret
from app.validation import Text, parse_json_object

TRANSIENT_STATUSES = frozenset({408, 429}) | frozenset(range(500, 600))
SIGNATURE_HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")


class OutboundUrl(Text):
    """An outbound URL that the address policy accepts (checked again at delivery)."""

    def __init__(self, *, allow_private: bool, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.allow_private = allow_private

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        url = super()._deserialize(value, attr, data, **kwargs)
        if not 1 <= len(url) <= 2048:
            raise self.make_error("invalid_url")
        try:
            check_outbound_url(url, allow_private=self.allow_private)
        except AddressRefused as exc:
            hint = "" if self.allow_private else " (ALLOW_PRIVATE_OUTBOUND=true allows a receiver on a private network)"
            raise self.make_error("refused", reason=f"{exc}{hint}") from None
        return url

    default_error_messages = {
        "invalid_url": "Must be a URL of 1 to 2048 characters.",
        "refused": "Refused: {reason}.",
    }


class WebhookKind:
    """Any service that can sign and receive Standard Webhooks."""

    name = "webhook"
    drops_repeats = True  # receivers dedupe on webhook-id (SPEC B6)

    def __init__(self, http: requests.Session, *, allow_private: bool) -> None:
        self._http = http
        self._allow_private = allow_private

    def setting_fields(self) -> Mapping[str, Any]:
        """outbound_url, required, under the address policy."""
        return {"outbound_url": OutboundUrl(allow_private=self._allow_private, required=True)}

    def new_channel(self, channel_id: str, settings: Mapping[str, Any]) -> NewChannel:
        """The outbound URL, and fresh inbound and outbound secrets."""
        inbound, outbound = new_webhook_secret(), new_webhook_secret()
        return NewChannel(
            settings={"outbound_url": settings["outbound_url"]},
            secrets={"inbound_secret": inbound, "outbound_secret": outbound},
            shown={
                "inbound": {"path": f"/inbound/{channel_id}", "secret": inbound},
                "outbound": {"url": settings["outbound_url"], "secret": outbound},
            },
        )

    def read_inbound(self, channel: ChannelConfig, request: InboundRequest) -> list[dict[str, Any]]:
        """Verify the Standard Webhooks signature over the raw body (with the current inbound
        secret, or the previous one during its overlap after a rotation), then parse it."""
        headers = {name: request.headers.get(name, "") for name in SIGNATURE_HEADERS}
        try:
            _verify(channel.secrets["inbound_secret"], request.body, headers)
        except Unauthenticated:
            if not _previous_still_valid(channel):
                raise
            _verify(channel.secrets["inbound_secret_previous"], request.body, headers)
        return load_messages(parse_json_object(request.body))

    def rotate_secret(self, channel: ChannelConfig, which: str, overlap_until: datetime | None) -> RotatedSecret:
        """A new inbound secret (the old one valid until overlap_until) or outbound secret (at once)."""
        new = new_webhook_secret()
        settings = {key: value for key, value in channel.settings.items() if key != "inbound_previous_until"}
        if which == "outbound":
            if _previous_still_valid(channel):
                settings["inbound_previous_until"] = channel.settings["inbound_previous_until"]
            return RotatedSecret(settings, {"outbound_secret": new}, new)
        if overlap_until is None:
            return RotatedSecret(settings, {"inbound_secret": new, "inbound_secret_previous": None}, new)
        settings["inbound_previous_until"] = overlap_until.isoformat()
        secrets = {"inbound_secret": new, "inbound_secret_previous": channel.secrets["inbound_secret"]}
        return RotatedSecret(settings, secrets, new, overlap_until)

    def change_settings(self, channel: ChannelConfig, changes: Mapping[str, Any]) -> SettingsChange:
        """A new outbound URL (already checked against the address policy)."""
        return SettingsChange({**channel.settings, **changes}, {})

    def read_status(self, channel: ChannelConfig, request: InboundRequest) -> list[DeliveryReport]:
        """The webhook connector has no status callbacks."""
        raise NotFound("no_status_callbacks", "This channel's connector sends no status callbacks.")

    def status_answer(self) -> InboundAnswer:
        """Never reached: read_status refuses."""
        return InboundAnswer(204, "application/json", b"")

    def fetch_media(self, channel: ChannelConfig, ref: Mapping[str, Any], max_bytes: int) -> MediaStream:
        """The webhook connector's attachments are the sender's own links: nothing to proxy."""
        raise NotFound("unknown_media", "There is no such media file.")

    def inbound_answer(self, result: IngestResult) -> InboundAnswer:
        """200 {"accepted": [...], "duplicates": [...]}."""
        body = orjson.dumps({"accepted": result.accepted, "duplicates": result.duplicates})
        return InboundAnswer(200, "application/json", body)

    def outbound(self, channel: ChannelConfig) -> Connector:
        """A signed POST to the channel's outbound URL."""
        return WebhookConnector(
            channel.settings["outbound_url"], channel.secrets["outbound_secret"], self._http,
            allow_private=self._allow_private,
        )


def _verify(secret: str, body: bytes, headers: dict[str, str]) -> None:
    try:
        Webhook(secret).verify(body, headers, json_parse=False)
    except WebhookVerificationError as exc:
        raise Unauthenticated("invalid_signature", f"The webhook signature is not valid: {exc}.") from None
    except (ValueError, binascii.Error, UnicodeDecodeError, OverflowError):
        # Malformed signature headers or a body that is not UTF-8 text.
        raise Unauthenticated("invalid_signature", "The webhook signature headers are malformed.") from None


def _previous_still_valid(channel: ChannelConfig) -> bool:
    """Whether a rotated-out inbound secret is within its overlap."""
    until = channel.settings.get("inbound_previous_until")
    return (
        "inbound_secret_previous" in channel.secrets
        and isinstance(until, str)
        and datetime.now(UTC) < datetime.fromisoformat(until)
    )


class WebhookConnector:
    """Delivers a reply as a signed JSON POST to the channel's outbound URL."""

    def __init__(self, url: str, secret: str, http: requests.Session, *, allow_private: bool) -> None:
        self._url = url
        self._signer = Webhook(secret)
        self._http = http
        self._allow_private = allow_private

    def __repr__(self) -> str:
        return f"WebhookConnector(url={self._url!r})"

    def deliver(self, reply: OutboundReply, timeout: float) -> Delivered:
        """POST the reply; give up after `timeout` seconds whatever the receiver does."""
        try:
            check_outbound_url(self._url, allow_private=self._allow_private, resolve=False)
        except AddressRefused as exc:
            raise PermanentDeliveryError(f"Refused by the outbound address policy: {exc}.") from None
        body = orjson.dumps({"type": "reply.created", "data": _payload(reply)})
        headers = self._signed_headers(reply.idempotency_key, body)
        try:
            answer = bounded_request(self._http, "POST", self._url, timeout, data=body, headers=headers)
        except HttpFailure as exc:
            error = TransientDeliveryError if exc.transient else PermanentDeliveryError
            raise error(exc.message, outcome_unknown=exc.sent) from None
        status = answer.status
        if 200 <= status < 300:
            return Delivered(external_id=_message_id(answer.body), http_status=status)
        detail = _receiver_message(answer.body)
        if status in TRANSIENT_STATUSES:
            raise TransientDeliveryError(
                f"The external service failed with HTTP {status}{detail}.",
                http_status=status, retry_after=answer.retry_after(),
            )
        raise PermanentDeliveryError(
            f"The external service rejected the reply with HTTP {status}{detail}.", http_status=status
        )

    def _signed_headers(self, message_id: str, body: bytes) -> dict[str, str]:
        now = datetime.now(UTC)
        return {
            "Content-Type": "application/json",
            "webhook-id": message_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": self._signer.sign(message_id, now, body.decode()),
        }


def _payload(reply: OutboundReply) -> dict[str, Any]:
    author = reply.author or {}
    return {
        "channel_id": reply.channel_id,
        "reply_id": reply.reply_id,
        "conversation_id": reply.conversation_id,
        "in_reply_to": reply.in_reply_to,
        "content": reply.content,
        "content_type": reply.content_type,
        "text": reply.text,
        "author": {
            "name": author.get("name"),
            "email": author.get("email"),
            "type": author.get("type"),
            "photo_url": author.get("photoURL"),
        },
        "attachments": reply.attachments,
    }


def _message_id(answer: bytes) -> str | None:
    try:
        parsed = orjson.loads(answer) if answer.strip() else None
    except orjson.JSONDecodeError:
        return None
    if isinstance(parsed, dict):
        value = parsed.get("id")
        if isinstance(value, (str, int)) and not isinstance(value, bool):
            text = str(value)
            # An id we cannot store or show as is counts as no id.
            if text.strip() and len(text) <= 255 and text.isprintable():
                return text
    return None


def _receiver_message(answer: bytes) -> str:
    """A short excerpt of what the receiver said, for the agent."""
    try:
        parsed = orjson.loads(answer)
    except orjson.JSONDecodeError:
        return ""
    if isinstance(parsed, dict):
        for key in ("message", "error", "detail"):
            if isinstance(parsed.get(key), str):
                text = "".join(ch if ch.isprintable() else " " for ch in parsed[key][:200]).strip()
                if text:
                    return f": {text}"
    return ""
