"""A real HTTP server on 127.0.0.1 standing in for the external service (SPEC B6).

It checks every request's Standard Webhooks signature twice, independently of the
`standardwebhooks` package the app signs with: once with `svix` and once by hand,
straight from the specification. It records each request and answers from a script.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from svix.webhooks import Webhook as SvixWebhook
from svix.webhooks import WebhookVerificationError

# Script steps besides HTTP statuses and Answers.
HANG = "hang"  # read the request, never answer until the receiver closes
TRICKLE_BODY = "trickle-body"  # 200 and a Content-Length, then one body byte every TRICKLE_EVERY s
TRICKLE_HEADERS = "trickle-headers"  # a status line, then one header byte every TRICKLE_EVERY s
CLOSE = "close"  # read the request, close the connection without a word
GARBAGE = "garbage"  # answer bytes that are not HTTP
TRICKLE_EVERY = 0.2
TOLERANCE_SECONDS = 5 * 60
SIGNED_HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")


@dataclass(frozen=True)
class Answer:
    """One scripted answer: a status, a JSON body (or raw bytes), optionally held back."""

    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    hold: threading.Event | None = None  # answer only once this is set (or the receiver closes)
    before: Callable[[Received], None] | None = None  # run before answering (e.g. send an echo)


Step = int | str | Answer


@dataclass(frozen=True)
class Received:
    """What the receiver got: headers (lower-case names), raw and parsed body, signature check."""

    headers: dict[str, str]
    raw: bytes
    body: Any
    signature_valid: bool
    svix_valid: bool
    spec_valid: bool
    path: str

    @property
    def webhook_id(self) -> str | None:
        """The Standard Webhooks message id, the idempotency key of the delivery."""
        return self.headers.get("webhook-id")


def spec_signature_valid(secret: str, headers: dict[str, str], raw: bytes, now: float | None = None) -> bool:
    """Verify a Standard Webhooks signature by hand, as standardwebhooks.com specifies it."""
    msg_id = headers.get("webhook-id", "")
    timestamp = headers.get("webhook-timestamp", "")
    signatures = headers.get("webhook-signature", "")
    if not (msg_id and timestamp.isdigit() and signatures):
        return False
    if abs((time.time() if now is None else now) - int(timestamp)) > TOLERANCE_SECONDS:
        return False
    key = base64.b64decode(secret.removeprefix("whsec_"))
    expected = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + raw, hashlib.sha256).digest()
    for signature in signatures.split(" "):
        version, _, encoded = signature.partition(",")
        if version != "v1":
            continue
        try:
            given = base64.b64decode(encoded, validate=True)
        except ValueError:
            continue
        if hmac.compare_digest(expected, given):
            return True
    return False


def svix_signature_valid(secret: str, headers: dict[str, str], raw: bytes) -> bool:
    """Verify a signature with the svix package."""
    try:
        SvixWebhook(secret).verify(raw, {name: headers.get(name, "") for name in SIGNED_HEADERS})
    except (WebhookVerificationError, ValueError):
        return False
    return True


class Receiver:
    """The external service: records requests, verifies signatures, answers from a script."""

    def __init__(self, secret: str | None = None) -> None:
        self.secret = secret  # the channel's outbound secret, once the channel exists
        self._script: list[Step] = []
        self._received: list[Received] = []
        self._changed = threading.Condition()
        self._gates: list[threading.Event] = []
        self.closing = threading.Event()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.receiver = self
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hooks/desk"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="test-receiver", daemon=True
        )

    def start(self) -> Receiver:
        self._thread.start()
        return self

    def close(self) -> None:
        """Release every held or hanging answer, stop serving and wait for the handlers."""
        self.closing.set()
        for gate in self._gates:
            gate.set()
        self._server.shutdown()
        self._server.server_close()  # joins the handler threads
        self._thread.join()

    def script(self, *steps: Step) -> None:
        """Queue answers for the next requests; once used up, the receiver answers 200 with no body."""
        with self._changed:
            self._script.extend(steps)

    def gate(self) -> threading.Event:
        """An Event for Answer(hold=...); the receiver sets it when it closes."""
        event = threading.Event()
        self._gates.append(event)
        return event

    @property
    def received(self) -> list[Received]:
        """Every request so far, in arrival order."""
        with self._changed:
            return list(self._received)

    def wait_for(self, count: int, timeout: float = 5.0) -> list[Received]:
        """Block until at least `count` requests have arrived; fail the test after `timeout`."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self._received) >= count, timeout):
                raise AssertionError(f"expected {count} requests, got {len(self._received)}")
            return list(self._received)

    def _record(self, received: Received) -> Step:
        with self._changed:
            self._received.append(received)
            self._changed.notify_all()
            return self._script.pop(0) if self._script else Answer(200)

    def _verify(self, headers: dict[str, str], raw: bytes) -> tuple[bool, bool]:
        if self.secret is None:
            return False, False
        return svix_signature_valid(self.secret, headers, raw), spec_signature_valid(self.secret, headers, raw)


class _Server(ThreadingHTTPServer):
    daemon_threads = False  # so that server_close() joins every handler thread
    block_on_close = True
    receiver: Receiver


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """Keep the test output quiet."""

    def do_POST(self) -> None:
        receiver = self.server.receiver
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        headers = {name.lower(): value for name, value in self.headers.items()}
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        svix_ok, spec_ok = receiver._verify(headers, raw)
        received = Received(headers, raw, body, svix_ok and spec_ok, svix_ok, spec_ok, self.path)
        step = receiver._record(received)
        with contextlib.suppress(OSError):  # the client gave up on us: expected with hangs and trickles
            self._answer(receiver, received, step)

    def _answer(self, receiver: Receiver, received: Received, step: Step) -> None:
        if isinstance(step, int):
            step = Answer(step)
        if step == HANG:
            receiver.closing.wait()
            self.close_connection = True
            return
        if step == CLOSE:
            self.close_connection = True
            return
        if step == GARBAGE:
            self.wfile.write(b"this is not HTTP at all\r\n\r\n")
            self.close_connection = True
            return
        if step in (TRICKLE_BODY, TRICKLE_HEADERS):
            self._trickle(receiver, step)
            return
        assert isinstance(step, Answer), f"unknown script step {step!r}"
        if step.hold is not None:
            step.hold.wait()
        if step.before is not None:
            step.before(received)
        payload = (
            step.body
            if isinstance(step.body, bytes)
            else (b"" if step.body is None else json.dumps(step.body).encode())
        )
        self.send_response(step.status)
        self.send_header("Content-Type", "application/json")
        if "Content-Length" not in step.headers:  # a scripted one may lie, to cut the body short
            self.send_header("Content-Length", str(len(payload)))
        for name, value in step.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    def _trickle(self, receiver: Receiver, step: str) -> None:
        """Send a byte every TRICKLE_EVERY seconds until the client hangs up or the receiver closes."""
        if step == TRICKLE_BODY:
            self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000000\r\n\r\n")
        else:
            self.wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
        self.wfile.flush()
        self.close_connection = True
        while not receiver.closing.wait(TRICKLE_EVERY):
            self.wfile.write(b" ")
            self.wfile.flush()


@contextmanager
def running_receiver(secret: str | None = None) -> Iterator[Receiver]:
    """A started receiver, closed (and every held answer released) on exit."""
    receiver = Receiver(secret).start()
    try:
        yield receiver
    finally:
        receiver.close()


def closed_port() -> int:
    """A local port that nothing listens on (connections to it are refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A running receiver standing in for the external service."""
    with running_receiver() as running:
        yield running


@pytest.fixture
def hooked(receiver: Receiver, new_channel: Callable[..., dict[str, Any]]) -> dict[str, Any]:
    """A channel whose outbound URL is the receiver, which knows its outbound secret."""
    created = new_channel(outbound_url=receiver.url, name="push target")
    receiver.secret = created["outbound"]["secret"]
    return created
