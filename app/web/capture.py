"""Capture mode (SPEC B12): with DESK_CAPTURE_DIR set, every request to a Desk endpoint is also
written there as one JSON file, secrets masked, so that an operator can see what a real Desk
portal sends (the callbacks' HASH, the shapes of pulls and pushes) without a debugger.

The HASH of a callback is masked like the other secrets; `hash_check` says instead whether it
is our reading of Desk's HASH (SPEC A8: HMAC-SHA256 of the raw body), which Zoho does not document.

The body is recorded as the view reads it (a tee on the WSGI input), so capturing changes
nothing about how a request is read or answered; a body the view left unread is read after
the answer when its length is known and allowed. Writing a file never fails a request: a
failure is logged once per application, and the request is answered as usual.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import secrets
import tempfile
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from flask import Flask, Response, g, request
from werkzeug.wsgi import get_content_length

from app.config import ConfigError, Settings
from app.desk import callbacks
from app.domain.errors import Unauthenticated

log = logging.getLogger(__name__)

EXTENSION = "deskbridge.capture"
DESK_PREFIX = "/desk/"
MASK = "***"
# Compared in lower case.
SECRET_FIELDS = frozenset({"channeltoken", "securitycontext"})
SECRET_HEADERS = frozenset({"hash", "authorization", "proxy-authorization", "cookie"})


def prepare_directory(directory: Path) -> None:
    """Create the capture folder and prove that files can be written in it; ConfigError otherwise.

    Start-up checks (gunicorn's on_starting, app.serve) can call this before any worker boots.
    """
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".probe-", delete=True):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(f"DESK_CAPTURE_DIR {str(directory)!r} cannot be written: {reason}") from None


class _Tee:
    """A WSGI input stream that keeps a copy of what is read from it (up to `keep` bytes)."""

    def __init__(self, stream: IO[bytes], keep: int) -> None:
        self._stream = stream
        self._keep = keep
        self.copy = bytearray()
        self.ended = False

    def _kept(self, data: bytes) -> bytes:
        if not data:
            self.ended = True
        room = self._keep - len(self.copy)
        if room > 0:
            self.copy += data[:room]
        return data

    def read(self, size: int = -1) -> bytes:
        return self._kept(self._stream.read(size))

    def readline(self, size: int = -1) -> bytes:
        return self._kept(self._stream.readline(size))

    def readlines(self, hint: int = -1) -> list[bytes]:
        return [self._kept(line) for line in self._stream.readlines(hint)]

    def __iter__(self) -> Any:
        return iter(self.readline, b"")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class Capture:
    """The capture folder of one application, and whether a failure to write has been logged."""

    def __init__(self, directory: Path, max_body_bytes: int, extension_secret: str | None = None) -> None:
        self.directory = directory
        self.max_body_bytes = max_body_bytes
        self.extension_secret = extension_secret
        self._lock = threading.Lock()
        self._warned = False

    def start(self) -> None:
        """Before the view: tee the request's body."""
        if not request.path.startswith(DESK_PREFIX):
            return
        environ = request.environ
        environ["wsgi.input"] = tee = _Tee(environ["wsgi.input"], self.max_body_bytes)
        g.capture = (tee, datetime.now(UTC))

    def finish(self, response: Response) -> Response:
        """After the view: write the request and the answer's status; never fail the request."""
        started = g.pop("capture", None)
        if started is None:
            return response
        tee, at = started
        try:
            self._write(at, record(at, self._body(tee), response.status_code, self.extension_secret))
        except Exception as exc:  # a capture file is a diagnostic: it never costs an answer
            self._warn(exc)
        return response

    def _body(self, tee: _Tee) -> bytes:
        """What the view read of the body, and the rest when the view left it unread."""
        length = get_content_length(request.environ)
        if length is not None and length <= self.max_body_bytes:
            # Broken framing: the view's answer already says so; the file keeps what was read.
            with contextlib.suppress(Exception):
                while not tee.ended and len(tee.copy) < length:
                    tee.read(length - len(tee.copy))
        return bytes(tee.copy)

    def _write(self, at: datetime, content: dict[str, Any]) -> None:
        # Sortable by time, unique across threads and workers; written whole, then renamed.
        name = f"{at:%Y%m%dT%H%M%S.%fZ}-{secrets.token_hex(4)}.json"
        partial = self.directory / f".{name}.partial"
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(content, handle, ensure_ascii=False, indent=2)
            os.replace(partial, self.directory / name)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise

    def _warn(self, exc: Exception) -> None:
        with self._lock:
            if self._warned:
                return
            self._warned = True
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        log.warning("capture mode: a request could not be written to DESK_CAPTURE_DIR (%s); "
                    "later failures are not logged", reason)


def record(at: datetime, body: bytes, status: int, extension_secret: str | None = None) -> dict[str, Any]:
    """The current request as a capture file holds it, its secrets masked."""
    content: dict[str, Any] = {
        "time": at.isoformat(timespec="microseconds").replace("+00:00", "Z"),
        "request_id": g.get("request_id"),
        "method": request.method,
        "path": request.path,
        "query": {name: [MASK if name.lower() in SECRET_FIELDS else value for value in values]
                  for name, values in request.args.lists()},
        "headers": {name: MASK if name.lower() in SECRET_HEADERS else value for name, value in request.headers.items()},
        "status": status,
    }
    content.update(_masked_body(body))
    presented = request.headers.get(callbacks.HASH_HEADER)
    if presented is not None:
        content["hash_check"] = _hash_check(extension_secret, body, presented)
    return content


def _hash_check(extension_secret: str | None, body: bytes, presented: str) -> str:
    """Whether a HASH is our reading of Desk's (SPEC A8), which the masked value cannot show."""
    if not extension_secret:
        return "not checked: DESK_EXTENSION_SECRET is unset"
    try:
        callbacks.verify_hash(extension_secret, body, presented)
    except Unauthenticated:
        return "does not match: HASH is not HMAC-SHA256 of the raw body keyed with DESK_EXTENSION_SECRET"
    return "matches: HMAC-SHA256 of the raw body keyed with DESK_EXTENSION_SECRET"


def _masked_body(body: bytes) -> dict[str, Any]:
    """The body as text (JSON bodies re-written with their secrets masked), or base64 if it is not UTF-8."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return {"body": base64.b64encode(body).decode(), "body_encoding": "base64"}
    try:
        parsed = json.loads(text)
    except ValueError:
        return {"body": text, "body_encoding": "text"}
    except RecursionError:
        return {"body": None, "body_encoding": "omitted: JSON nested too deeply to mask"}
    # Re-written from the parsed value, not patched in the text: a secret written with JSON
    # escapes, or twice under the same key, must not survive in the file.
    try:
        return {"body": json.dumps(_masked(parsed), ensure_ascii=False), "body_encoding": "json"}
    except RecursionError:
        return {"body": None, "body_encoding": "omitted: JSON nested too deeply to mask"}


def _masked(value: Any) -> Any:
    """A JSON value with every channelToken and securityContext masked, at any depth, including
    config params given as [{"name": "channelToken", "value": ...}]."""
    if isinstance(value, list):
        return [_masked(item) for item in value]
    if not isinstance(value, dict):
        return value
    masked: dict[str, Any] = {}
    named_secret = isinstance(value.get("name"), str) and value["name"].lower() in SECRET_FIELDS
    for key, item in value.items():
        if key.lower() in SECRET_FIELDS or (named_secret and key == "value"):
            masked[key] = MASK
        else:
            masked[key] = _masked(item)
    return masked


def init_capture(app: Flask, settings: Settings) -> None:
    """Turn capture mode on for `app` when DESK_CAPTURE_DIR is set (ConfigError if it cannot be written)."""
    if settings.desk_capture_dir is None:
        return
    prepare_directory(settings.desk_capture_dir)
    capture = app.extensions[EXTENSION] = Capture(
        settings.desk_capture_dir, settings.max_body_bytes, settings.desk_extension_secret)
    app.before_request(capture.start)
    app.after_request(capture.finish)
