"""SPEC B17 logs: JSON lines with the request's ids, one access line per request, the reasons of
refusals and failures, and never a secret, token, securityContext or message content."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from app.logging import RequestContext, configure_logging, json_formatter
from tests.receiver import Answer, Receiver
from tests.support import desk_pull_body, desk_push_body, signed_headers

CONTEXT = "SECURITY-CONTEXT-VALUE-123"


@pytest.fixture
def json_lines() -> Iterator[io.StringIO]:
    """What the app logs during the test, formatted as in production (LOG_FORMAT=json)."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(json_formatter())
    handler.addFilter(RequestContext())
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield stream
    finally:
        root.removeHandler(handler)


def records(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def test_each_request_gets_one_json_access_line_with_its_ids_status_and_duration(
    client: FlaskClient, channel: dict[str, Any], json_lines: io.StringIO
) -> None:
    answer = client.post(f"/desk/pull?orgId=42&securityContext={CONTEXT}", json=desk_pull_body(channel),
                         headers={"X-Request-Id": "req-abc"})
    assert answer.status_code == 200

    access = [r for r in records(json_lines) if r["logger"] == "deskbridge.access"]
    assert len(access) == 1
    line = access[0]
    assert {"time", "level", "logger", "message"} <= set(line)
    assert (line["method"], line["path"], line["status"]) == ("POST", "/desk/pull", 200)
    assert (line["request_id"], line["channel_id"]) == ("req-abc", channel["id"])
    assert isinstance(line["duration_ms"], (int, float)) and line["duration_ms"] >= 0
    text = json_lines.getvalue()
    assert CONTEXT not in text and channel["desk"]["channelToken"] not in text


def test_refused_signature_is_logged_with_its_reason_but_no_content(
    client: FlaskClient, channel: dict[str, Any], json_lines: io.StringIO
) -> None:
    body = json.dumps({"id": "m1", "conversation_id": "c1", "text": "my card number is 4111"})
    headers = signed_headers("whsec_" + "A" * 43 + "=", body)
    assert client.post(channel["inbound"]["path"], data=body, headers=headers).status_code == 401

    warnings = [r for r in records(json_lines) if r["level"] == "WARNING"]
    assert any("invalid_signature" in r["message"] and r.get("channel_id") == channel["id"] for r in warnings)
    assert "4111" not in json_lines.getvalue()


def test_damaged_state_is_logged_with_its_reason(
    client: FlaskClient, channel: dict[str, Any], json_lines: io.StringIO
) -> None:
    assert client.post("/desk/pull?orgId=1", json=desk_pull_body(channel, state="not json")).status_code == 200

    (warning,) = [r for r in records(json_lines) if r["level"] == "WARNING"]
    assert "damaged channelState" in warning["message"] and "not JSON" in warning["message"]
    assert warning["channel_id"] == channel["id"]


def test_failed_delivery_attempts_are_logged_with_reason_and_reply_id_but_no_content(
    app: Flask, client: FlaskClient, hooked: dict[str, Any], receiver: Receiver, json_lines: io.StringIO
) -> None:
    receiver.script(Answer(503, {"message": "overloaded"}), Answer(200, {"id": "ok"}))
    body = desk_push_body(hooked, content="Your PIN is 9876")

    assert client.post("/desk/push?orgId=1", json=body).status_code == 200

    (failed,) = [r for r in records(json_lines) if r["level"] == "WARNING"]
    assert "HTTP 503" in failed["message"] and "overloaded" in failed["message"]
    assert failed["reply_id"] == "287189379819" and failed["channel_id"] == hooked["id"]
    assert "9876" not in json_lines.getvalue()


def test_text_format_names_the_request_id(json_lines: io.StringIO) -> None:
    stream = io.StringIO()
    configure_logging("text")
    root = logging.getLogger()
    ours = [h for h in root.handlers if getattr(h, "deskbridge", False)]
    assert len(ours) == 1  # configuring again replaces, never duplicates
    ours[0].setStream(stream)
    logging.getLogger("deskbridge.test").warning("hello")
    assert stream.getvalue().rstrip().endswith("WARNING deskbridge.test [-]: hello")
    configure_logging("json")
