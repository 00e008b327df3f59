"""Helpers shared by tests: Desk request bodies, signed inbound requests."""

from __future__ import annotations

import copy
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flask import Flask
from sqlalchemy import event
from standardwebhooks.webhooks import Webhook
from werkzeug.serving import make_server

from app.services import Services

# Copies of the samples in Zoho's documentation (also in shared/fixtures), kept here so that
# the suite needs nothing outside the repository.
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def services(app: Flask) -> Services:
    """The services an app was assembled with."""
    return app.extensions["deskbridge"]


def fixture(name: str) -> Any:
    """A JSON sample from Zoho's documentation (tests/fixtures)."""
    return json.loads((FIXTURES / name).read_text())


def desk_pull_body(channel: dict[str, Any], state: str | None = None) -> dict[str, Any]:
    """Desk's documented pull body with our two config params added."""
    body = fixture("pull-request-body.json")
    body["channelId"] = channel["desk"]["channelId"]
    body["channelToken"] = channel["desk"]["channelToken"]
    if state is None:
        body.pop("channelState", None)
    else:
        body["channelState"] = state
    return body


def desk_push_body(channel: dict[str, Any], **resource: Any) -> dict[str, Any]:
    """Desk's documented push body with our two config params added."""
    body = copy.deepcopy(fixture("push-request-body.json"))
    body["configParams"]["channelId"] = channel["desk"]["channelId"]
    body["configParams"]["channelToken"] = channel["desk"]["channelToken"]
    body["resource"].update(resource)
    return body


def signed_headers(
    secret: str, body: bytes | str, msg_id: str = "msg_test", when: datetime | None = None
) -> dict[str, str]:
    """Standard Webhooks headers for a body, signed with an inbound secret."""
    when = when or datetime.now(UTC)
    data = body.decode() if isinstance(body, bytes) else body
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(when.timestamp())),
        "webhook-signature": Webhook(secret).sign(msg_id, when, data),
        "Content-Type": "application/json",
    }


@contextmanager
def statements(app: Flask, verbs: tuple[str, ...] = ()) -> Iterator[list[str]]:
    """The SQL statements the app's engine runs inside the block (only those starting with one
    of `verbs`, e.g. ("INSERT", "UPDATE", "DELETE"), when given)."""
    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if not verbs or statement.lstrip().split(" ", 1)[0].upper() in verbs:
            seen.append(statement)

    engine = services(app).db.engine
    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


@contextmanager
def serving(app: Flask) -> Iterator[str]:
    """Serve the app over real HTTP on 127.0.0.1, one thread per request; its base URL."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="test-app-server", daemon=True
    )
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
