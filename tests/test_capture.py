"""SPEC B12 capture mode: with DESK_CAPTURE_DIR set, every request to a Desk endpoint is also
written there as one JSON file (method, path, query, headers, body, status) with channelToken,
securityContext, HASH and Authorization masked; off by default; a folder that cannot be written
stops the start, and a file that cannot be written never fails a request."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from flask import Flask

from app.config import ConfigError
from tests.live_server import HttpAnswer, LiveServer, parse_answer, running_server
from tests.receiver import Answer, Receiver
from tests.support import desk_pull_body, desk_push_body

EXTENSION_SECRET = "extension-secret-for-capture"
CONTEXT = "CAPTURED-SECURITY-CONTEXT-e30.c2VjcmV0"
CALLBACK_CONTEXT = "CALLBACK-SECURITY-CONTEXT-abc.def"
ORG = "60012345"


def captured(folder: Path) -> list[dict[str, Any]]:
    """The capture files, oldest first (their names sort by time)."""
    return [json.loads(path.read_text()) for path in sorted(folder.glob("*.json"))]


def everything_in(folder: Path) -> bytes:
    return b"".join(path.read_bytes() for path in folder.rglob("*") if path.is_file())


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return tmp_path / "captures" / "desk"  # created at start-up, parents too


@pytest.fixture
def app(make_app: Callable[..., Flask], folder: Path) -> Flask:
    return make_app(DESK_CAPTURE_DIR=str(folder), DESK_EXTENSION_SECRET=EXTENSION_SECRET)


def test_pull_push_callback_and_redirect_are_captured_with_their_secrets_masked(
    app: Flask, folder: Path, hooked: dict[str, Any], receiver: Receiver
) -> None:
    client = app.test_client()
    token = hooked["desk"]["channelToken"]
    receiver.script(Answer(200, {"id": "x-1"}))
    push_body = desk_push_body(hooked)
    push_body["configParams"] = [{"name": "channelId", "value": hooked["id"]},
                                 {"name": "channelToken", "value": token}]
    callback_raw = json.dumps({"event": "onInstall", "orgId": ORG, "securityContext": CALLBACK_CONTEXT}).encode()
    hash_value = hmac.new(EXTENSION_SECRET.encode(), callback_raw, hashlib.sha256).hexdigest()

    pulled = client.post(f"/desk/pull?orgId={ORG}&securityContext={quote(CONTEXT)}", json=desk_pull_body(hooked),
                         headers={"Authorization": "Bearer something-private"})
    pushed = client.post(f"/desk/push?orgId={ORG}&securityContext={quote(CONTEXT)}", json=push_body)
    called = client.post("/desk/callbacks/onInstall", data=callback_raw,
                         headers={"HASH": hash_value, "Content-Type": "application/json"})
    opened = client.get(f"/desk/redirect?entity=ticket&id=nope&orgId={ORG}")
    client.get("/healthz")  # not a Desk endpoint: not captured

    assert [a.status_code for a in (pulled, pushed, called, opened)] == [200, 200, 200, 404]
    files = captured(folder)
    assert [(f["method"], f["path"], f["status"]) for f in files] == [
        ("POST", "/desk/pull", 200), ("POST", "/desk/push", 200), ("POST", "/desk/callbacks/onInstall", 200),
        ("GET", "/desk/redirect", 404)]
    pull_file, push_file, callback_file, redirect_file = files
    assert pull_file["query"] == {"orgId": [ORG], "securityContext": ["***"]}
    assert pull_file["headers"]["Authorization"] == "***"
    assert json.loads(pull_file["body"])["channelToken"] == "***"
    assert json.loads(pull_file["body"])["channelId"] == hooked["id"]
    assert json.loads(push_file["body"])["configParams"][1] == {"name": "channelToken", "value": "***"}
    assert json.loads(push_file["body"])["resource"] == push_body["resource"]
    assert callback_file["headers"]["Hash"] == "***"
    assert callback_file["hash_check"].startswith("matches")
    assert json.loads(callback_file["body"]) == {"event": "onInstall", "orgId": ORG, "securityContext": "***"}
    assert redirect_file["query"] == {"entity": ["ticket"], "id": ["nope"], "orgId": [ORG]}
    assert all({"time", "request_id", "method", "path", "query", "headers", "body", "status"} <= set(f) for f in files)
    stored = everything_in(folder)
    for secret in (token, CONTEXT, quote(CONTEXT), CALLBACK_CONTEXT, hash_value, "something-private"):
        assert secret.encode() not in stored


def test_a_secret_written_with_json_escapes_is_masked_too(app: Flask, folder: Path, channel: dict[str, Any]) -> None:
    token = channel["desk"]["channelToken"]
    escaped = "".join(f"\\u{ord(ch):04x}" for ch in token)
    raw = json.dumps({"channelId": channel["id"], "channelToken": "PLACEHOLDER"}).replace("PLACEHOLDER", escaped)

    answer = app.test_client().post(f"/desk/pull?orgId={ORG}", data=raw, content_type="application/json")

    assert answer.status_code == 200  # Desk's JSON decoder reads the token, and so do we
    (capture,) = captured(folder)
    assert json.loads(capture["body"])["channelToken"] == "***"
    assert token.encode() not in everything_in(folder) and escaped.encode() not in everything_in(folder)


def test_a_refused_callback_is_captured_with_its_status_and_whether_its_hash_matched(
    app: Flask, folder: Path
) -> None:
    raw = b'{"event": "onInstall", "orgId": "1"}'

    answer = app.test_client().post("/desk/callbacks/onInstall", data=raw, headers={"HASH": "0" * 64})

    assert answer.status_code == 401
    (capture,) = captured(folder)
    assert (capture["status"], capture["headers"]["Hash"]) == (401, "***")
    assert capture["hash_check"].startswith("does not match")


def test_a_body_that_is_not_utf8_is_kept_as_base64(app: Flask, folder: Path) -> None:
    raw = b"\xff\xfe not text"

    answer = app.test_client().post("/desk/pull?orgId=1", data=raw, content_type="application/json")

    assert answer.status_code == 400
    (capture,) = captured(folder)
    assert (capture["body_encoding"], base64.b64decode(capture["body"])) == ("base64", raw)


def test_a_body_the_service_refused_unread_is_still_captured(make_app: Callable[..., Flask], folder: Path) -> None:
    client = make_app(DESK_CAPTURE_DIR=str(folder)).test_client()  # no extension secret: callbacks are 404
    raw = b'{"event": "onInstall", "orgId": "1", "securityContext": "hidden-context"}'

    answer = client.post("/desk/callbacks/onInstall", data=raw, headers={"HASH": "abc123"})

    assert answer.status_code == 404
    (capture,) = captured(folder)
    assert json.loads(capture["body"]) == {"event": "onInstall", "orgId": "1", "securityContext": "***"}
    assert capture["hash_check"].startswith("not checked")
    assert b"hidden-context" not in everything_in(folder) and b"abc123" not in everything_in(folder)


def test_capture_is_off_by_default(make_app: Callable[..., Flask], tmp_path: Path, channel: dict[str, Any]) -> None:
    app = make_app()

    answer = app.test_client().post(f"/desk/pull?orgId={ORG}", json=desk_pull_body(channel))

    assert answer.status_code == 200
    assert "deskbridge.capture" not in app.extensions
    assert list(tmp_path.rglob("*.json")) == []


def test_a_capture_folder_that_cannot_be_written_stops_create_app(
    make_app: Callable[..., Flask], tmp_path: Path
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")

    with pytest.raises(ConfigError, match="DESK_CAPTURE_DIR") as refused:
        make_app(DESK_CAPTURE_DIR=str(blocker / "captures"))

    assert "\n" not in str(refused.value)


def test_a_capture_file_that_cannot_be_written_never_fails_the_request_and_is_logged_once(
    app: Flask, folder: Path, channel: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    shutil.rmtree(folder)  # gone after the start (a full disk, an unmounted volume)
    client = app.test_client()

    with caplog.at_level(logging.WARNING):
        answers = [client.post(f"/desk/pull?orgId={ORG}", json=desk_pull_body(channel)) for _ in range(3)]

    assert [a.status_code for a in answers] == [200, 200, 200]
    warnings = [r for r in caplog.records if "DESK_CAPTURE_DIR" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING


def test_requests_through_gunicorn_are_captured_whole_chunked_or_not(
    database_url: str, tmp_path: Path, channel: dict[str, Any]
) -> None:
    folder = tmp_path / "live-captures"
    with running_server(database_url, tmp_path / "live-instance", DESK_CAPTURE_DIR=str(folder),
                        DESK_EXTENSION_SECRET=EXTENSION_SECRET) as server:
        called, pulled, hash_value = send_through(server, channel)

    assert (called.status, pulled.status) == (200, 200), (called.body, pulled.body)
    callback_file, pull_file = captured(folder)
    assert json.loads(callback_file["body"])["securityContext"] == "***"
    assert json.loads(pull_file["body"]) == {**desk_pull_body(channel), "channelToken": "***"}
    assert (callback_file["status"], pull_file["query"]["securityContext"]) == (200, ["***"])
    stored = everything_in(folder)
    for secret in (CALLBACK_CONTEXT, CONTEXT, channel["desk"]["channelToken"], hash_value):
        assert secret.encode() not in stored


def send_through(server: LiveServer, channel: dict[str, Any]) -> tuple[HttpAnswer, HttpAnswer, str]:
    """A callback with a Content-Length and a pull with a chunked body, over a socket; and the HASH sent."""
    callback_raw = json.dumps({"event": "onInstall", "orgId": ORG, "securityContext": CALLBACK_CONTEXT}).encode()
    hash_value = hmac.new(EXTENSION_SECRET.encode(), callback_raw, hashlib.sha256).hexdigest()
    pull_raw = json.dumps(desk_pull_body(channel)).encode()
    half = len(pull_raw) // 2
    parts = (pull_raw[:half], pull_raw[half:])
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in parts) + b"0\r\n\r\n"

    called = parse_answer(server.raw(
        b"POST /desk/callbacks/onInstall HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"HASH: %s\r\nContent-Length: %d\r\n\r\n%s" % (hash_value.encode(), len(callback_raw), callback_raw)))
    pulled = parse_answer(server.raw(
        b"POST /desk/pull?orgId=%s&securityContext=%s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n%s" % (ORG.encode(), CONTEXT.encode(), chunked)))
    return called, pulled, hash_value
