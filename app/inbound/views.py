"""POST /inbound/<channel_id>: signed messages from the external service."""

from __future__ import annotations

import binascii

from flask import Blueprint, Response, request
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from app.errors import ApiError, json_response, parse_json_object
from app.inbound.schemas import load_messages
from app.services import services
from app.sync import inbox

inbound = Blueprint("inbound", __name__)


@inbound.post("/inbound/<channel_id>")
def receive(channel_id: str) -> Response:
    svc = services()
    secret = inbox.inbound_secret(svc.db, svc.keyring, channel_id)
    raw = request.get_data(cache=False)
    _verify(secret, raw)
    messages = load_messages(parse_json_object(raw))
    result = inbox.ingest_messages(svc.db, channel_id, messages)
    return json_response({"accepted": result.accepted, "duplicates": result.duplicates})


def _verify(secret: str, raw: bytes) -> None:
    """Check the Standard Webhooks signature over the raw body, before parsing it."""
    headers = {name: request.headers.get(name, "") for name in ("webhook-id", "webhook-timestamp", "webhook-signature")}
    try:
        Webhook(secret).verify(raw, headers, json_parse=False)
    except WebhookVerificationError as exc:
        raise ApiError(401, "invalid_signature", f"The webhook signature is not valid: {exc}.") from None
    except (ValueError, binascii.Error, UnicodeDecodeError, OverflowError):
        # Malformed signature headers or a body that is not UTF-8 text.
        raise ApiError(401, "invalid_signature", "The webhook signature headers are malformed.") from None
