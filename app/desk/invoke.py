"""Zoho Desk's Invoke API (SPEC A5, A6): how deskbridge calls Desk itself, for the real-time
import of SPEC B14. No Flask, no database: a request in, a classified answer out."""

from __future__ import annotations

import hashlib
import hmac
import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import orjson
import requests

from app.connectors.http import HttpFailure, bounded_request

log = logging.getLogger(__name__)

# The fields the HASH covers, in this order; absent or empty ones are skipped (SPEC A6).
HASHED_FIELDS = ("requestURL", "requestType", "queryParams", "postBody", "headers", "connectionLinkName")
IMPORT_PATH = "/api/v1/channels/{{installationId}}/import"
INVOKE_TIMEOUT_SECONDS = 10.0
TRANSIENT = frozenset({408, 429}) | frozenset(range(500, 600))
REFUSED = frozenset({401, 403})
EXCERPT = 200


@dataclass(frozen=True)
class InvokeAnswer:
    """What the target (Desk's import endpoint) answered through the Invoke API."""

    status: int
    message: Any


class InvokeFailure(Exception):
    """An Invoke API call that did not succeed.

    `refused`: Desk refused the securityContext (401/403): calling again cannot help until a new
    one is recorded. `transient`: a timeout, 429 or 5xx, or an answer we cannot read: worth
    another try later. Otherwise the call itself was wrong (another 4xx).
    """

    def __init__(self, message: str, *, status: int | None = None, transient: bool = False,
                 refused: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.transient = transient
        self.refused = refused


def invoke_hash(secret: str, fields: dict[str, str]) -> str:
    """Lowercase hex HMAC-SHA256, keyed with the extension's secret, over
    `requestURL=..&requestType=..&queryParams=..&postBody=..&headers=..&connectionLinkName=..`."""
    message = "&".join(f"{name}={fields[name]}" for name in HASHED_FIELDS if fields.get(name))
    return hmac.new(secret.encode(), message.encode(), hashlib.sha256).hexdigest()


def desk_base_url(desk_domain: str) -> str:
    """`desk.zoho.eu` → `https://desk.zoho.eu`; a base URL (`https://host[:port]`) is kept as given."""
    if "://" not in desk_domain:
        return f"https://{desk_domain}"
    parts = urlsplit(desk_domain)
    return f"{parts.scheme}://{parts.netloc}"


class InvokeClient:
    """Calls the Invoke API with the extension's secret, through the guarded HTTP client."""

    def __init__(self, http: requests.Session, secret: str, *, timeout: float = INVOKE_TIMEOUT_SECONDS) -> None:
        self._http = http
        self._secret = secret
        self._timeout = timeout

    def __repr__(self) -> str:
        return "InvokeClient(<secret>)"

    def import_sync(self, desk_domain: str, org_id: str, security_context: str, sync: dict[str, Any]) -> InvokeAnswer:
        """Send a sync object to the channel's import endpoint; raises InvokeFailure."""
        base = desk_base_url(desk_domain)
        fields = {
            "requestURL": base + IMPORT_PATH,
            "requestType": "POST",
            "postBody": orjson.dumps(sync).decode(),
            "headers": '{"Content-Type":"application/json"}',
        }
        signed = {"HASH": invoke_hash(self._secret, fields)}
        form = {"securityContext": security_context, **fields}
        try:
            answer = bounded_request(self._http, "POST", f"{base}/api/v1/invoke", self._timeout, peer="Desk",
                                     params={"orgId": org_id}, data=form, headers=signed)
        except HttpFailure as exc:
            raise InvokeFailure(exc.message, transient=exc.transient) from None
        if answer.status in REFUSED:
            raise InvokeFailure(f"Desk refused the call with HTTP {answer.status}.", status=answer.status, refused=True)
        if not 200 <= answer.status < 300:
            raise InvokeFailure(f"Desk answered HTTP {answer.status}.", status=answer.status,
                                transient=answer.status in TRANSIENT)
        inner = _inner_answer(answer.body)
        if inner.status in REFUSED:
            raise InvokeFailure(f"Desk refused the securityContext ({inner.status}).", status=inner.status,
                                refused=True)
        if inner.status >= 400:
            raise InvokeFailure(f"Desk's import answered {inner.status}.", status=inner.status,
                                transient=inner.status in TRANSIENT)
        return inner


def _inner_answer(body: bytes) -> InvokeAnswer:
    """The target's answer inside `{"response": "<json>"}`; an unreadable one is a transient failure."""
    try:
        outer = orjson.loads(body)
        inner = orjson.loads(outer["response"]) if isinstance(outer.get("response"), str) else outer["response"]
        status = inner["statusCode"]
        if isinstance(status, str) and status.isdigit():
            status = int(status)
        if not isinstance(status, int) or isinstance(status, bool):
            raise TypeError("statusCode is not a number")
        return InvokeAnswer(status, inner.get("statusMessage"))
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
        excerpt = body[:EXCERPT].decode(errors="replace")
        log.warning("unreadable Invoke API answer (%d bytes): %r", len(body), excerpt)
        raise InvokeFailure("Desk's answer could not be read.", transient=True) from None
