"""The Invoke API client (SPEC A5, A6): a sync object sent to the Desk emulator, the HASH as Desk
checks it (computed here independently), and each kind of answer classified."""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Any

import pytest

from app.connectors.http import make_http_session
from app.desk.invoke import InvokeClient, InvokeFailure, _inner_answer, desk_base_url
from tests.desk_emulator import EXTENSION_SECRET, HANG, HTTP_429, HTTP_503, INNER_500, DeskEmulator

SYNC = {
    "channelState": '{"v":1,"seq":2,"mac":"m"}',
    "data": {
        "tickets": [{"extId": "c1", "subject": "Order", "createdTime": "2026-11-30T10:00:00.000Z",
                     "actor": {"extId": "c1", "name": "c1", "displayName": "c1"}}],
        "threads": [{"extId": "m1", "extParentId": "c1", "content": "Hi", "contentType": "text/plain",
                     "createdTime": "2026-11-30T10:00:00.000Z", "direction": "in", "canReply": True,
                     "actor": {"extId": "c1", "name": "c1", "displayName": "c1"}}],
    },
}


def client(secret: str = EXTENSION_SECRET, timeout: float = 5.0) -> InvokeClient:
    return InvokeClient(make_http_session(allow_private=True), secret, timeout=timeout)


def send(desk: DeskEmulator, **options: Any) -> Any:
    return client(**options).import_sync(desk.base_url, "60001", "ctx-1", SYNC)


def test_an_import_reaches_desk_with_the_hash_desk_expects(desk_emulator: DeskEmulator) -> None:
    answer = send(desk_emulator)

    assert answer.status == 200
    assert set(desk_emulator.threads) == {"m1"} and set(desk_emulator.tickets) == {"c1"}
    assert desk_emulator.channel_state == SYNC["channelState"]
    (request,) = desk_emulator.requests
    form = request.form
    assert request.query["orgId"] == "60001" and form["securityContext"] == "ctx-1"
    assert form["requestURL"] == f"{desk_emulator.base_url}/api/v1/channels/{{{{installationId}}}}/import"
    assert form["requestType"] == "POST"
    # The HASH, by hand from SPEC A6: the fields in order, empty ones skipped, no securityContext.
    message = "&".join(f"{name}={form[name]}" for name in ("requestURL", "requestType", "postBody", "headers"))
    expected = hmac.new(EXTENSION_SECRET.encode(), message.encode(), hashlib.sha256).hexdigest()
    assert request.headers["hash"] == expected


def test_a_refused_security_context_is_a_refusal(desk_emulator: DeskEmulator) -> None:
    desk_emulator.refuse_context("ctx-1")
    with pytest.raises(InvokeFailure) as failure:
        send(desk_emulator)
    assert failure.value.refused and not failure.value.transient and failure.value.status == 401
    assert desk_emulator.threads == {}


def test_a_wrong_extension_secret_is_refused_by_desk(desk_emulator: DeskEmulator) -> None:
    with pytest.raises(InvokeFailure) as failure:
        send(desk_emulator, secret="another-secret")
    assert failure.value.refused and failure.value.status == 401


@pytest.mark.parametrize(("fault", "status"), [(HTTP_503, 503), (HTTP_429, 429), (INNER_500, 500)])
def test_5xx_and_429_outer_or_inner_are_transient(desk_emulator: DeskEmulator, fault: str, status: int) -> None:
    desk_emulator.fail(fault)
    with pytest.raises(InvokeFailure) as failure:
        send(desk_emulator)
    assert failure.value.transient and not failure.value.refused and failure.value.status == status
    assert send(desk_emulator).status == 200  # the fault was for one request


def test_a_desk_that_hangs_is_cut_off_at_the_deadline(desk_emulator: DeskEmulator) -> None:
    desk_emulator.fail(HANG)
    started = time.monotonic()
    with pytest.raises(InvokeFailure) as failure:
        send(desk_emulator, timeout=0.5)
    assert failure.value.transient
    assert time.monotonic() - started < 0.5 + 0.5
    desk_emulator.release()


def test_a_body_desk_rejects_is_a_permanent_failure(desk_emulator: DeskEmulator) -> None:
    with pytest.raises(InvokeFailure) as failure:
        client().import_sync(desk_emulator.base_url, "60001", "ctx-1", {"data": "not a sync object"})
    assert failure.value.status == 400
    assert not failure.value.transient and not failure.value.refused


def test_a_sync_object_without_threads_is_applied(desk_emulator: DeskEmulator) -> None:
    assert client().import_sync(desk_emulator.base_url, "60001", "ctx-1", {"data": {}}).status == 200


@pytest.mark.parametrize("body", [b"<html>busy</html>", b"{}", b'{"response": "not json"}', b'{"response": {}}',
                                  b'{"response": "{\\"statusCode\\": true}"}'])
def test_an_answer_of_another_shape_is_a_transient_failure(body: bytes) -> None:
    with pytest.raises(InvokeFailure) as failure:
        _inner_answer(body)
    assert failure.value.transient


def test_the_inner_answer_is_read_from_a_string_or_an_object() -> None:
    assert _inner_answer(b'{"response": "{\\"statusCode\\": 200, \\"statusMessage\\": {\\"a\\": 1}}"}').message == {
        "a": 1}
    assert _inner_answer(b'{"response": {"statusCode": "201", "statusMessage": "ok"}}').status == 201


@pytest.mark.parametrize(
    ("domain", "base"),
    [("desk.zoho.com", "https://desk.zoho.com"), ("desk.zoho.eu", "https://desk.zoho.eu"),
     ("https://desk.zoho.in", "https://desk.zoho.in"), ("http://127.0.0.1:8123/x", "http://127.0.0.1:8123")],
)
def test_desk_domains_become_base_urls(domain: str, base: str) -> None:
    assert desk_base_url(domain) == base
