"""The guarded HTTP client every connector uses: bounded exchanges, the address policy
on the address actually connected to, and foreign exceptions translated into ours.

Nothing above `connectors/` sees `requests` or `urllib3`: a call answers an `HttpAnswer`
or raises `HttpFailure`.
"""

from __future__ import annotations

import contextlib
import email.utils
import logging
import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from http.client import HTTPException
from http.cookiejar import DefaultCookiePolicy
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import HTTPError as Urllib3Error
from urllib3.exceptions import LocationValueError

from app.connectors.addresses import AddressRefused, check_address, check_resolved

log = logging.getLogger(__name__)

MAX_ANSWER_BYTES = 64 * 1024
USER_AGENT = "deskbridge/1 (+reply delivery)"
EXCHANGE_THREAD = "deskbridge-delivery"


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



@dataclass(frozen=True)
class HttpAnswer:
    """What the other side answered: status, headers, and at most MAX_ANSWER_BYTES of body."""

    status: int
    headers: Mapping[str, str]
    body: bytes

    def retry_after(self, now: datetime | None = None) -> float | None:
        """Seconds the Retry-After header asks for (seconds or an HTTP date), if any."""
        return retry_after_seconds(self.headers.get("Retry-After"), now)


class HttpFailure(Exception):
    """No answer: `transient` says whether trying again may help; `sent` whether the request
    may have reached the other side (a timeout after sending), so that its outcome is unknown."""

    def __init__(self, message: str, *, transient: bool, sent: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.transient = transient
        self.sent = sent


def retry_after_seconds(value: str | None, now: datetime | None = None) -> float | None:
    """A Retry-After value in seconds: delta-seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max((when - (now or datetime.now(UTC))).total_seconds(), 0.0)


def bounded_request(
    http: requests.Session, method: str, url: str, timeout: float, *, peer: str = "The external service",
    **kwargs: Any
) -> HttpAnswer:
    """One HTTP exchange that ends within `timeout` seconds whatever the other side does; failures
    name the other side as `peer`."""
    outcome: dict[str, Any] = {}
    exchange = _Exchange()
    deadline = time.monotonic() + timeout

    def attempt() -> None:
        _current.exchange = exchange
        try:
            remaining = max(deadline - time.monotonic(), 0.001)
            with http.request(
                method, url, timeout=(remaining, remaining), allow_redirects=False, stream=True, **kwargs
            ) as response:
                outcome["answer"] = HttpAnswer(
                    response.status_code, dict(response.headers), _read_capped(response, deadline)
                )
        except BaseException as exc:  # handed to the waiting thread
            outcome["error"] = exc
        finally:
            exchange.release()
            _current.exchange = None

    # The exchange runs in a helper thread so that the wait is bounded even when the
    # other side trickles bytes, which socket timeouts alone do not bound.
    worker = threading.Thread(target=attempt, name=EXCHANGE_THREAD, daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        exchange.cut_off()
        raise HttpFailure(f"{peer} did not answer within {timeout:.1f} s.", transient=True, sent=True)
    if "error" in outcome:
        raise _translate(outcome["error"], peer)
    return outcome["answer"]


def _read_capped(response: requests.Response, deadline: float) -> bytes:
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_content(chunk_size=8192):
        chunks.append(chunk)
        size += len(chunk)
        if size >= MAX_ANSWER_BYTES or time.monotonic() > deadline:
            break
    return b"".join(chunks)[:MAX_ANSWER_BYTES]


def _translate(exc: BaseException, peer: str) -> HttpFailure:
    """Turn a foreign exception into ours."""
    if isinstance(exc, HttpFailure):
        return exc
    if isinstance(exc, AddressRefused):
        return HttpFailure(f"Refused by the outbound address policy: {exc}.", transient=False)
    if isinstance(exc, requests.ConnectTimeout):
        return HttpFailure(f"{peer} could not be reached in time.", transient=True)
    if isinstance(exc, requests.Timeout):
        return HttpFailure(f"{peer} did not answer in time.", transient=True, sent=True)
    if isinstance(exc, requests.ConnectionError):
        return HttpFailure(f"{peer} could not be reached, or closed the connection without an answer.",
                           transient=True)
    if isinstance(exc, (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema, LocationValueError)):
        # urllib3 raises LocationValueError itself for some hosts requests accepts (a..b).
        return HttpFailure("The outbound URL is not valid.", transient=False)
    if isinstance(exc, (requests.RequestException, OSError, HTTPException, Urllib3Error)):
        return HttpFailure(f"Delivery failed: {type(exc).__name__}.", transient=True, sent=True)
    # Anything else is a bug of ours or of a library: log it, and still give the
    # caller an outcome rather than an exception it does not expect.
    # The class only: an exception's text may hold the URL, and a Telegram URL holds the bot token.
    log.error("unexpected HTTP client error: %s", type(exc).__name__)
    return HttpFailure(f"Delivery failed unexpectedly ({type(exc).__name__}).", transient=False, sent=True)
