"""The service as deployed: gunicorn with gunicorn.conf.py serving wsgi:app, for tests that
need the real HTTP server (framing, limits, the server's own error answers).

`running_server(database_url, instance_path, **env)` starts one and stops it on exit (use it
in a module-scoped fixture with `backend_url` to share one server per backend); the
`start_live_server` fixture starts servers on the test's own database and stops them after
the test. Either gives a LiveServer: `.url`, `.port`, `.raw(bytes)` for requests a client
library would refuse to send, and the server's log lines.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import orjson
import pytest

from app.config import VARIABLES
from tests.conftest import ADMIN_TOKEN, ROOT

# make_app's key (tests/conftest.py): channels the `channel` fixture creates are readable here.
SECRET_KEY = "test-secret-key"
BOOT_SECONDS = 60
# Variables the service or gunicorn read: the server gets only those set below.
SERVICE_VARIABLES = (*VARIABLES, "BIND", "WEB_CONCURRENCY", "THREADS", "GUNICORN_CMD_ARGS", "PROMETHEUS_MULTIPROC_DIR")
LISTENING = re.compile(r"Listening at: http://127\.0\.0\.1:(\d+)")


@dataclass(frozen=True)
class HttpAnswer:
    """One HTTP response as it came over the socket."""

    status: int
    reason: str
    headers: dict[str, str]  # lower-case names
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


def parse_answer(raw: bytes) -> HttpAnswer:
    """Split raw response bytes into status, headers and body; fail the test if they are not HTTP."""
    head, separator, body = raw.partition(b"\r\n\r\n")
    if not separator:
        pytest.fail(f"not an HTTP response: {raw[:300]!r}")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    version, status, reason = [*status_line.split(" ", 2), ""][:3]
    if not version.startswith("HTTP/1.") or not status.isdigit():
        pytest.fail(f"not an HTTP status line: {status_line!r}")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return HttpAnswer(int(status), reason, headers, body)


class LiveServer:
    """A gunicorn process group; its output is collected line by line as it comes."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self.port = 0
        self.url = ""
        self._lines: list[str] = []
        self._ended = False
        self._changed = threading.Condition()
        assert process.stdout is not None
        # Read all along: a full pipe would block the server's logging.
        self._reader = threading.Thread(target=self._collect, args=(process.stdout,), daemon=True)
        self._reader.start()

    def _collect(self, stream: IO[str]) -> None:
        for line in stream:
            with self._changed:
                self._lines.append(line)
                self._changed.notify_all()
        with self._changed:
            self._ended = True
            self._changed.notify_all()

    def wait_until_booted(self) -> None:
        """Return once the worker is booting: the socket is listening by then, so a request
        waits for the worker rather than failing."""
        self.wait_for_log("Booting worker", timeout=BOOT_SECONDS)
        self.port = next(int(match.group(1)) for line in self.log_lines() if (match := LISTENING.search(line)))
        self.url = f"http://127.0.0.1:{self.port}"

    def log_lines(self) -> list[str]:
        with self._changed:
            return list(self._lines)

    def log_mark(self) -> int:
        """A position in the log; wait_for_log(since=mark) looks only at lines after it."""
        with self._changed:
            return len(self._lines)

    def wait_for_log(self, needle: str, since: int = 0, timeout: float = 10) -> str:
        """The first line after `since` containing needle, once the server has written it."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while (line := next((seen for seen in self._lines[since:] if needle in seen), None)) is None:
                remaining = deadline - time.monotonic()
                if self._ended or remaining <= 0:
                    pytest.fail(f"{needle!r} not logged; the server's output was:\n{''.join(self._lines)}")
                self._changed.wait(remaining)
            return line

    def raw(self, data: bytes, timeout: float = 10, until_close: bool = False) -> bytes:
        """Send bytes as they are, then read the answer: until the server closes, or until
        the whole response (its Content-Length) is in unless until_close. Fails the test on
        a timeout."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as sock:
            # The server may answer (413, 400) and close before it has read everything.
            with suppress(BrokenPipeError, ConnectionResetError):
                sock.sendall(data)
            received = bytearray()
            try:
                while until_close or not _complete(received):
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    received += chunk
            except TimeoutError:
                pytest.fail(f"no complete answer within {timeout} s; got {bytes(received[:300])!r}")
            except ConnectionResetError:
                if not received:
                    raise
            return bytes(received)

    def stop(self) -> None:
        if self.process.poll() is None:
            with suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        with suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)  # a worker the master left behind, if any
        self._reader.join(timeout=10)
        if self.process.stdout is not None:
            self.process.stdout.close()


def _complete(received: bytearray) -> bool:
    """Whether received holds a whole response with a Content-Length."""
    end = received.find(b"\r\n\r\n")
    if end < 0:
        return False
    match = re.search(rb"(?im)^content-length:\s*(\d+)\s*$", bytes(received[:end]))
    return match is not None and len(received) >= end + 4 + int(match.group(1))


def start_server(database_url: str, instance_path: Path, **env: str) -> LiveServer:
    """Start gunicorn as deployed on database_url; env adds or overrides settings
    (e.g. MAX_BODY_BYTES). Returns once the worker is booting: the socket is listening
    by then, so a request waits for the worker rather than failing."""
    environment = {key: value for key, value in os.environ.items() if key not in SERVICE_VARIABLES}
    environment.update(
        DATABASE_URL=database_url,
        INSTANCE_PATH=str(instance_path),
        SECRET_KEY=SECRET_KEY,
        ADMIN_TOKEN=ADMIN_TOKEN,
        ALLOW_PRIVATE_OUTBOUND="true",
        PUSH_DEADLINE_SECONDS="2",
        BIND="127.0.0.1:0",  # the kernel picks a free port; the log says which
        WEB_CONCURRENCY="1",
        THREADS="2",
    )
    environment.update(env)
    process = subprocess.Popen(
        [str(ROOT / ".venv" / "bin" / "gunicorn"), "--config", "gunicorn.conf.py", "wsgi:app"],
        cwd=ROOT,
        env=environment,
        text=True,
        encoding="utf-8",
        errors="replace",
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    server = LiveServer(process)
    try:
        server.wait_until_booted()
    except BaseException:
        server.stop()
        raise
    return server


@contextmanager
def running_server(database_url: str, instance_path: Path, **env: str) -> Iterator[LiveServer]:
    """A started server, stopped (its whole process group) on exit."""
    server = start_server(database_url, instance_path, **env)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def start_live_server(database_url: str, tmp_path: Path) -> Iterator[Callable[..., LiveServer]]:
    """Start servers on this test's database (keyword arguments: extra environment);
    all are stopped after the test."""
    servers: list[LiveServer] = []

    def start(**env: str) -> LiveServer:
        server = start_server(database_url, tmp_path / f"instance-{len(servers)}", **env)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()
