"""The `webhook` connector: replies POSTed as signed Standard Webhooks (SPEC B6)."""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from datetime import UTC, datetime
from http.client import HTTPException
from http.cookiejar import DefaultCookiePolicy
from typing import Any

import orjson
import requests
from requests.adapters import HTTPAdapter
from standardwebhooks.webhooks import Webhook
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import HTTPError as Urllib3Error
from urllib3.exceptions import LocationValueError

from app.connectors.addresses import AddressRefused, check_address, check_outbound_url, check_resolved
from app.connectors.base import (
    Delivered,
    DeliveryError,
    OutboundReply,
    PermanentDeliveryError,
    TransientDeliveryError,
)

log = logging.getLogger(__name__)

MAX_ANSWER_BYTES = 64 * 1024
TRANSIENT_STATUSES = frozenset({408, 429}) | frozenset(range(500, 600))
USER_AGENT = "deskbridge/1 (+reply delivery)"


def _guard(sock: socket.socket) -> socket.socket:
    try:
        check_address(sock.getpeername()[0])
    except AddressRefused:
        sock.close()
        raise
    return sock


class _Exchange:
    """The connection a delivery worker is using, so that the waiting thread can cut it off."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._connection: HTTPConnection | None = None
        self._over = False

    def attach(self, connection: HTTPConnection) -> None:
        """Called by the worker's connection when it connects or sends a request."""
        with self._lock:
            self._connection = connection
            if self._over:
                _shut_down(connection)

    def cut_off(self) -> None:
        """Shut the socket down: a worker blocked reading it wakes up and ends."""
        with self._lock:
            self._over = True
            if self._connection is not None:
                _shut_down(self._connection)

    def release(self) -> None:
        """The worker is done; its connection may go back to the pool untouched."""
        with self._lock:
            self._over = True
            self._connection = None


def _shut_down(connection: HTTPConnection) -> None:
    sock = getattr(connection, "sock", None)
    if sock is not None:
        with contextlib.suppress(OSError):  # already closed
            sock.shutdown(socket.SHUT_RDWR)


# The exchange of the delivery running on this thread, if any.
_current = threading.local()


def _attach(connection: HTTPConnection) -> None:
    exchange: _Exchange | None = getattr(_current, "exchange", None)
    if exchange is not None:
        exchange.attach(connection)


class _Tracked:
    # A receiver that trickles bytes keeps every socket read inside its timeout;
    # registering the connection lets the waiting thread shut it down at the deadline.
    def connect(self) -> None:
        _attach(self)  # type: ignore[arg-type]
        super().connect()  # type: ignore[misc]

    def request(self, *args: Any, **kwargs: Any) -> None:
        _attach(self)  # type: ignore[arg-type]
        super().request(*args, **kwargs)  # type: ignore[misc]


class _Guarded:
    # Refuse private addresses before connecting, then check the address actually
    # connected to, so that a host name that resolves differently the second time
    # (DNS rebinding) cannot slip past.
    _dns_host: str
    port: int

    def _new_conn(self) -> socket.socket:
        check_resolved(self._dns_host, self.port)
        return _guard(super()._new_conn())  # type: ignore[misc]


class _TrackedHTTPConnection(_Tracked, HTTPConnection):
    pass


class _TrackedHTTPSConnection(_Tracked, HTTPSConnection):
    pass


class _GuardedHTTPConnection(_Guarded, _TrackedHTTPConnection):
    pass


class _GuardedHTTPSConnection(_Guarded, _TrackedHTTPSConnection):
    pass


class _TrackedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _TrackedHTTPConnection


class _TrackedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _TrackedHTTPSConnection


class _GuardedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _GuardedHTTPConnection


class _GuardedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _GuardedHTTPSConnection


class _DeliveryAdapter(HTTPAdapter):
    """A transport adapter whose connections can be cut off, optionally to public addresses only."""

    def __init__(self, *, public_only: bool) -> None:
        self._pool_classes: dict[str, type[HTTPConnectionPool]] = (
            {"http": _GuardedHTTPPool, "https": _GuardedHTTPSPool}
            if public_only
            else {"http": _TrackedHTTPPool, "https": _TrackedHTTPSPool}
        )
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = self._pool_classes


def make_http_session(*, allow_private: bool) -> requests.Session:
    """An HTTP client for outbound delivery: no proxies from the environment, no cookies."""
    http = requests.Session()
    http.trust_env = False
    http.cookies.set_policy(DefaultCookiePolicy(allowed_domains=[]))
    http.headers["User-Agent"] = USER_AGENT
    adapter = _DeliveryAdapter(public_only=not allow_private)
    http.mount("http://", adapter)
    http.mount("https://", adapter)
    return http


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
        outcome: dict[str, Any] = {}
        exchange = _Exchange()

        def attempt() -> None:
            _current.exchange = exchange
            try:
                outcome["result"] = self._post(body, headers, time.monotonic() + timeout)
            except BaseException as exc:  # handed to the waiting thread
                outcome["error"] = exc
            finally:
                exchange.release()
                _current.exchange = None

        # The HTTP exchange runs in a helper thread so that the wait is bounded even
        # when the receiver trickles bytes, which socket timeouts alone do not bound.
        worker = threading.Thread(target=attempt, name="deskbridge-delivery", daemon=True)
        worker.start()
        worker.join(timeout)
        if worker.is_alive():
            exchange.cut_off()
            raise TransientDeliveryError(f"The external service did not answer within {timeout:.1f} s.")
        if "error" in outcome:
            raise _translate(outcome["error"])
        return outcome["result"]

    def _signed_headers(self, message_id: str, body: bytes) -> dict[str, str]:
        now = datetime.now(UTC)
        return {
            "Content-Type": "application/json",
            "webhook-id": message_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": self._signer.sign(message_id, now, body.decode()),
        }

    def _post(self, body: bytes, headers: dict[str, str], deadline: float) -> Delivered:
        remaining = max(deadline - time.monotonic(), 0.001)
        with self._http.post(
            self._url, data=body, headers=headers, timeout=(remaining, remaining),
            allow_redirects=False, stream=True,
        ) as response:
            answer = _read_capped(response, deadline)
            status = response.status_code
        if 200 <= status < 300:
            return Delivered(external_id=_message_id(answer))
        detail = _receiver_message(answer)
        if status in TRANSIENT_STATUSES:
            raise TransientDeliveryError(f"The external service failed with HTTP {status}{detail}.")
        raise PermanentDeliveryError(f"The external service rejected the reply with HTTP {status}{detail}.")


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


def _read_capped(response: requests.Response, deadline: float) -> bytes:
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_content(chunk_size=8192):
        chunks.append(chunk)
        size += len(chunk)
        if size >= MAX_ANSWER_BYTES or time.monotonic() > deadline:
            break
    return b"".join(chunks)[:MAX_ANSWER_BYTES]


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


def _translate(exc: BaseException) -> DeliveryError:
    """Turn a foreign exception into ours; nothing above connectors sees requests."""
    if isinstance(exc, DeliveryError):
        return exc
    if isinstance(exc, AddressRefused):
        return PermanentDeliveryError(f"Refused by the outbound address policy: {exc}.")
    if isinstance(exc, requests.Timeout):
        return TransientDeliveryError("The external service did not answer in time.")
    if isinstance(exc, requests.ConnectionError):
        return TransientDeliveryError("The external service could not be reached.")
    if isinstance(exc, (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema, LocationValueError)):
        # urllib3 raises LocationValueError itself for some hosts requests accepts (a..b).
        return PermanentDeliveryError("The outbound URL is not valid.")
    if isinstance(exc, (requests.RequestException, OSError, HTTPException, Urllib3Error)):
        return TransientDeliveryError(f"Delivery failed: {type(exc).__name__}.")
    # Anything else is a bug of ours or of a library: log it, and still give the
    # ledger an outcome rather than leaving the reply pending.
    log.error("unexpected delivery error", exc_info=exc)
    return PermanentDeliveryError(f"Delivery failed unexpectedly ({type(exc).__name__}).")
