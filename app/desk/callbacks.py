"""Desk's platform callbacks (SPEC A7, A8, B12): the HASH that signs them, the events, the body.

Which string Desk hashes for a callback is not documented (A7); our choice (A8) is the raw
request body, HMAC-SHA256 keyed with the extension's secret, in lowercase hex. It is checked
over the bytes as received, in constant time, before anything parses them (as svix does).
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field
from typing import Any

from marshmallow import EXCLUDE, Schema, fields, validate

from app.desk.auth import MAX_CONTEXT_LENGTH, ORG_ID
from app.domain.errors import Unauthenticated
from app.validation import Text, load

HASH_HEADER = "HASH"

# The callbackListener events: Zoho's documented ones (A7) and those its toolkit checks (A1,
# onDeskAuthorise and onConfigParamChange). All but the uninstall and the revoke say that the
# extension is installed.
INSTALLING_EVENTS = frozenset({
    "onInstall", "onUpdate", "onConfigParamAdd", "onConfigParamDelete", "onConfigParamChange", "onZohoAuthorise",
    "onDeskAuthorise", "onTPAAuthorise",
})
UNINSTALL = "onUninstall"
TPA_REVOKE = "onTPARevoke"
KNOWN_EVENTS = INSTALLING_EVENTS | {UNINSTALL, TPA_REVOKE}


def body_hash(secret: str, body: bytes) -> str:
    """The HASH of a callback body: lowercase hex HMAC-SHA256 keyed with the extension secret."""
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify_hash(secret: str, body: bytes, presented: str | None) -> None:
    """Raise Unauthenticated unless `presented` is the body's HASH; the reason never quotes it."""
    if not presented or not presented.strip():
        raise Unauthenticated("missing_hash", "The HASH header is required.")
    expected = body_hash(secret, body).encode()
    if not hmac.compare_digest(presented.strip().lower().encode("utf-8", "replace"), expected):
        raise Unauthenticated("invalid_hash", "The HASH header does not match the request body.")


class _OrgId(fields.Field):
    """Desk's orgId: 1 to 64 visible ASCII characters, given as a string or a whole number."""

    default_error_messages = {"invalid": "Must be 1 to 64 visible characters (a string or a whole number)."}

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise self.make_error("invalid")
        text = str(value)
        if not ORG_ID.fullmatch(text):
            raise self.make_error("invalid")
        return text


class CallbackSchema(Schema):
    """A callback's body; its other fields are Desk's business."""

    class Meta:
        unknown = EXCLUDE

    event = fields.Raw(load_default=None, allow_none=True)  # only compared with the path's
    orgId = _OrgId(required=True)
    securityContext = Text(load_default=None, allow_none=True, validate=validate.Length(max=MAX_CONTEXT_LENGTH))


_SCHEMA = CallbackSchema()


@dataclass(frozen=True)
class Callback:
    """One platform callback: the event (the path's), the org, and its securityContext if any."""

    event: str
    org_id: str
    security_context: str | None = field(default=None, repr=False)
    body_event: Any = None  # the body's `event`, when it names another one

    @property
    def known(self) -> bool:
        return self.event in KNOWN_EVENTS


def load_callback(event: str, body: dict[str, Any]) -> Callback:
    """A verified callback body as a Callback, or Invalid naming the fields at fault."""
    loaded = load(_SCHEMA, body, "The callback is not valid.")
    context = loaded["securityContext"] or None
    body_event = loaded["event"]
    return Callback(
        event=event,
        org_id=loaded["orgId"],
        security_context=context,
        body_event=body_event if body_event is not None and body_event != event else None,
    )

