"""The Desk emulator: its Invoke API (HASH, routing, store, faults) and its pulls against the app."""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import threading
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import orjson
import pytest
from flask import Flask

from tests.desk_emulator import (
    AFTER_APPLY_DROP,
    BEFORE_APPLY_DROP,
    CLOSE_UNAPPLIED,
    EXTENSION_SECRET,
    HANG,
    HTTP_429,
    HTTP_500,
    HTTP_503,
    INNER_500,
    DeskEmulator,
    running_desk,
)
from tests.desk_simulator import message
from tests.support import signed_headers


@dataclass
class Reply:
    status: int
    body: Any
    headers: dict[str, str]

    @property
    def inner(self) -> dict[str, Any]:
        """The target's answer inside {"response": "<json string>"}."""
        return json.loads(self.body["response"])


def spec_hash(secret: str, fields: dict[str, str]) -> str:
    """The HASH as SPEC A6 words it, written out here independently of the emulator."""
    parts = [
        f"{name}={fields[name]}"
        for name in ("requestURL", "requestType", "queryParams", "postBody", "headers", "connectionLinkName")
        if fields.get(name)
    ]
    return hmac.new(secret.encode(), "&".join(parts).encode(), hashlib.sha256).hexdigest()


def ticket(ext_id: str, subject: str = "hello") -> dict[str, Any]:
    return {"extId": ext_id, "subject": subject, "createdTime": "2024-01-01T00:00:00.000Z"}


def thread(ext_id: str, parent: str = "c1", content: str = "hi") -> dict[str, Any]:
    return {"extId": ext_id, "extParentId": parent, "content": content, "contentType": "text/plain"}


def sync(tickets: list[dict[str, Any]] = (), threads: list[dict[str, Any]] = (), **extra: Any) -> dict[str, Any]:
    return {**extra, "data": {"tickets": list(tickets), "threads": list(threads)}}


def invoke(
    desk: DeskEmulator,
    post_body: Any,
    *,
    secret: str = EXTENSION_SECRET,
    request_url: str | None = None,
    security_context: str = "ctx-1",
    hash_value: str | None = "",
    org_id: str = "42",
) -> Reply:
    """One Invoke API call as a backend makes it; hash_value "" signs correctly, None sends no HASH."""
    fields = {
        "securityContext": security_context,
        "requestURL": request_url or desk.import_url,
        "requestType": "POST",
        "postBody": post_body if isinstance(post_body, str) else json.dumps(post_body),
        "headers": json.dumps({"Content-Type": "application/json"}),
    }
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    if hash_value is not None:
        headers["HASH"] = hash_value or spec_hash(secret, fields)
    conn = http.client.HTTPConnection("127.0.0.1", desk.port, timeout=10)
    try:
        conn.request("POST", f"/api/v1/invoke?{urlencode({'orgId': org_id})}", body=urlencode(fields), headers=headers)
        answer = conn.getresponse()
        raw = answer.read()
        return Reply(answer.status, json.loads(raw) if raw else None, dict(answer.headers))
    finally:
        conn.close()


# The Invoke API


def test_right_hash_is_accepted_and_form_fields_are_recorded(desk_emulator: DeskEmulator) -> None:
    reply = invoke(desk_emulator, sync([ticket("c1")]), security_context="ctx-7")

    assert reply.status == 200
    assert reply.inner["statusCode"] == 200
    (request,) = desk_emulator.requests
    assert request.hash_valid and request.outcome == "applied"
    assert request.query == {"orgId": "42"}
    assert request.form["securityContext"] == "ctx-7"
    assert request.form["requestURL"] == desk_emulator.import_url
    assert "{{installationId}}" in request.form["requestURL"]
    assert request.form["requestType"] == "POST"
    assert json.loads(request.form["headers"]) == {"Content-Type": "application/json"}
    assert request.post_body == sync([ticket("c1")])
    assert request.headers["hash"] == spec_hash(EXTENSION_SECRET, request.form)


@pytest.mark.parametrize(
    ("hash_kwargs", "label"),
    [
        ({"hash_value": None}, "missing"),
        ({"secret": "another-secret"}, "wrong key"),
        ({"hash_value": "ab" * 32}, "junk"),
    ],
)
def test_bad_or_missing_hash_is_refused_with_http_401_and_nothing_applied(
    desk_emulator: DeskEmulator, hash_kwargs: dict[str, Any], label: str
) -> None:
    reply = invoke(desk_emulator, sync([ticket("c1")]), **hash_kwargs)

    assert reply.status == 401, label
    assert reply.body["errorCode"] == "INVALID_HASH"
    assert desk_emulator.tickets == {}
    assert desk_emulator.requests[0].outcome == "bad_hash"


def test_hash_refusal_can_be_an_inner_401() -> None:
    with running_desk("s3cret", hash_refusal="inner") as desk:
        reply = invoke(desk, sync([ticket("c1")]), secret="not-it")

    assert reply.status == 200
    assert reply.inner["statusCode"] == 401
    assert desk.tickets == {}


def test_installation_id_is_substituted_and_another_installation_is_an_inner_404() -> None:
    with running_desk("s3cret", installation_id="inst-9") as desk:
        substituted = invoke(desk, sync([ticket("c1")]), secret="s3cret")
        literal = invoke(
            desk, sync([ticket("c2")]), secret="s3cret", request_url=f"{desk.base_url}/api/v1/channels/inst-9/import"
        )
        other = invoke(
            desk, sync([ticket("c3")]), secret="s3cret", request_url=f"{desk.base_url}/api/v1/channels/inst-1/import"
        )

    assert substituted.inner["statusCode"] == 200
    assert literal.inner["statusCode"] == 200
    assert other.status == 200 and other.inner["statusCode"] == 404
    assert set(desk.tickets) == {"c1", "c2"}


def test_wrong_target_path_is_an_inner_404(desk_emulator: DeskEmulator) -> None:
    reply = invoke(desk_emulator, sync([ticket("c1")]), request_url=f"{desk_emulator.base_url}/api/v1/tickets")

    assert reply.status == 200
    assert reply.inner["statusCode"] == 404
    assert desk_emulator.tickets == {}


# The store


def test_import_creates_then_updates_by_ext_id(desk_emulator: DeskEmulator) -> None:
    invoke(desk_emulator, sync([ticket("c1")], [thread("m1")]))
    reply = invoke(desk_emulator, sync([ticket("c1", "edited")], [thread("m1", content="again"), thread("m2")]))

    assert reply.inner["statusMessage"]["data"]["threads"] == [
        {"extId": "m1", "created": False},
        {"extId": "m2", "created": True},
    ]
    assert desk_emulator.creations["ticket"] == {"c1": 1}
    assert desk_emulator.creations["thread"] == {"m1": 1, "m2": 1}
    assert desk_emulator.updates["ticket"] == {"c1": 1}
    assert desk_emulator.updates["thread"] == {"m1": 1}
    assert desk_emulator.tickets["c1"]["subject"] == "edited"
    assert desk_emulator.threads["m1"]["content"] == "again"
    assert desk_emulator.created_twice() == {}
    assert desk_emulator.errors == []


def test_thread_before_its_ticket_is_recorded_as_an_error_and_not_stored(desk_emulator: DeskEmulator) -> None:
    invoke(desk_emulator, sync([], [thread("m1", parent="c9")]))

    assert "m1" not in desk_emulator.threads
    assert desk_emulator.errors == ["import: thread m1 arrived before its ticket c9"]


def test_ticket_in_the_same_sync_object_comes_before_its_thread(desk_emulator: DeskEmulator) -> None:
    invoke(desk_emulator, sync([ticket("c9")], [thread("m1", parent="c9")]))

    assert "m1" in desk_emulator.threads
    assert desk_emulator.errors == []


def test_channel_state_is_overwritten_only_when_present(desk_emulator: DeskEmulator) -> None:
    invoke(desk_emulator, sync([ticket("c1")], channelState="s1"))
    invoke(desk_emulator, sync([ticket("c2")]))
    assert desk_emulator.channel_state == "s1"

    invoke(desk_emulator, sync([], channelState="s2"))
    assert desk_emulator.channel_state == "s2"


def test_post_body_that_is_not_a_sync_object_is_an_inner_400(desk_emulator: DeskEmulator) -> None:
    reply = invoke(desk_emulator, "not json")

    assert reply.inner["statusCode"] == 400
    assert len(desk_emulator.errors) == 1


def test_wait_for_threads_returns_when_they_arrive(desk_emulator: DeskEmulator) -> None:
    sender = threading.Thread(target=invoke, args=(desk_emulator, sync([ticket("c1")], [thread("m1"), thread("m2")])))
    sender.start()
    arrivals = desk_emulator.wait_for_threads(["m1", "m2"], timeout=5)
    sender.join(timeout=5)

    assert set(arrivals) == {"m1", "m2"}
    assert arrivals["m1"] >= desk_emulator.requests[0].received_at


def test_wait_for_threads_times_out_when_they_never_arrive(desk_emulator: DeskEmulator) -> None:
    with pytest.raises(TimeoutError, match="m404"):
        desk_emulator.wait_for_threads(["m404"], timeout=0.05)


# Faults


def test_after_apply_drop_applies_the_import_but_answers_nothing(desk_emulator: DeskEmulator) -> None:
    desk_emulator.fail(AFTER_APPLY_DROP)

    with pytest.raises(http.client.RemoteDisconnected):
        invoke(desk_emulator, sync([ticket("c1")], [thread("m1")], channelState="s1"))
    resent = invoke(desk_emulator, sync([ticket("c1")], [thread("m1")], channelState="s1"))

    assert resent.inner["statusCode"] == 200
    assert desk_emulator.creations["thread"] == {"m1": 1}
    assert desk_emulator.updates["thread"] == {"m1": 1}
    assert desk_emulator.channel_state == "s1"
    assert [request.outcome for request in desk_emulator.requests] == ["dropped_after_apply", "applied"]


def test_before_apply_drop_answers_success_but_applies_nothing(desk_emulator: DeskEmulator) -> None:
    desk_emulator.fail(BEFORE_APPLY_DROP)

    reply = invoke(desk_emulator, sync([ticket("c1")], [thread("m1")], channelState="s1"))

    assert reply.status == 200 and reply.inner["statusCode"] == 200
    assert desk_emulator.threads == {} and desk_emulator.channel_state is None


def test_close_unapplied_loses_the_request(desk_emulator: DeskEmulator) -> None:
    desk_emulator.fail(CLOSE_UNAPPLIED)

    with pytest.raises(http.client.RemoteDisconnected):
        invoke(desk_emulator, sync([ticket("c1")]))
    assert desk_emulator.tickets == {}


@pytest.mark.parametrize(("fault", "status"), [(HTTP_500, 500), (HTTP_503, 503), (HTTP_429, 429)])
def test_http_fault_answers_its_status_for_one_request_and_applies_nothing(
    desk_emulator: DeskEmulator, fault: str, status: int
) -> None:
    desk_emulator.fail(fault)

    failed = invoke(desk_emulator, sync([ticket("c1")]))
    healed = invoke(desk_emulator, sync([ticket("c2")]))

    assert failed.status == status
    assert failed.headers.get("Retry-After") == ("1" if status == 429 else None)
    assert healed.status == 200 and healed.inner["statusCode"] == 200
    assert set(desk_emulator.tickets) == {"c2"}


def test_persistent_fault_lasts_until_heal(desk_emulator: DeskEmulator) -> None:
    desk_emulator.fail(HTTP_503, times=None)

    assert [invoke(desk_emulator, sync([ticket("c1")])).status for _ in range(3)] == [503, 503, 503]
    desk_emulator.heal()
    assert invoke(desk_emulator, sync([ticket("c1")])).status == 200
    assert set(desk_emulator.tickets) == {"c1"}


def test_counted_fault_covers_that_many_requests(desk_emulator: DeskEmulator) -> None:
    desk_emulator.fail(INNER_500, times=2)

    inner = [invoke(desk_emulator, sync([ticket("c1")])).inner["statusCode"] for _ in range(3)]

    assert inner == [500, 500, 200]


def test_hanging_request_is_served_once_released(desk_emulator: DeskEmulator) -> None:
    desk_emulator.fail(HANG)
    replies: list[Reply] = []
    sender = threading.Thread(target=lambda: replies.append(invoke(desk_emulator, sync([ticket("c1")]))))
    sender.start()

    desk_emulator.wait_for_hanging(1)
    assert desk_emulator.tickets == {}
    desk_emulator.release()
    sender.join(timeout=5)

    assert replies and replies[0].inner["statusCode"] == 200
    assert set(desk_emulator.tickets) == {"c1"}


def test_server_shuts_down_while_a_request_hangs() -> None:
    outcomes: list[BaseException | Reply] = []
    with running_desk(EXTENSION_SECRET) as desk:
        desk.fail(HANG)

        def send() -> None:
            try:
                outcomes.append(invoke(desk, sync([ticket("c1")])))
            except (OSError, http.client.HTTPException) as exc:
                outcomes.append(exc)

        sender = threading.Thread(target=send)
        sender.start()
        desk.wait_for_hanging(1)
    sender.join(timeout=5)

    assert not sender.is_alive()
    assert len(outcomes) == 1 and isinstance(outcomes[0], http.client.RemoteDisconnected)
    assert desk.tickets == {}
    assert desk.requests[0].outcome == "dropped_on_close"


def test_refused_security_context_is_an_inner_401_until_accepted(desk_emulator: DeskEmulator) -> None:
    desk_emulator.refuse_context()

    refused = invoke(desk_emulator, sync([ticket("c1")]))
    desk_emulator.accept_context()
    accepted = invoke(desk_emulator, sync([ticket("c1")]))

    assert refused.status == 200
    assert refused.inner == {"statusCode": 401, "statusMessage": {
        "errorCode": "INVALID_OAUTH", "message": "The securityContext is invalid or has expired."}}
    assert accepted.inner["statusCode"] == 200
    assert [request.outcome for request in desk_emulator.requests] == ["refused_context", "applied"]


def test_one_security_context_can_be_refused(desk_emulator: DeskEmulator) -> None:
    desk_emulator.refuse_context("old-ctx")

    old = invoke(desk_emulator, sync([ticket("c1")]), security_context="old-ctx")
    new = invoke(desk_emulator, sync([ticket("c2")]), security_context="new-ctx")

    assert old.inner["statusCode"] == 401
    assert new.inner["statusCode"] == 200
    assert set(desk_emulator.tickets) == {"c2"}


# Pulls from the app


def inbox_two_messages(app: Flask, channel: dict[str, Any]) -> None:
    """Put m1 and m2 (conversation c1) in the channel's inbox through the signed inbound webhook."""
    raw = orjson.dumps({"messages": [message("m1"), message("m2")]})
    answer = app.test_client().post(
        channel["inbound"]["path"], data=raw, headers=signed_headers(channel["inbound"]["secret"], raw)
    )
    assert answer.status_code == 200, answer.get_json()


def test_pull_from_the_app_stores_threads_and_the_channel_state(
    app: Flask, channel: dict[str, Any], desk_emulator: DeskEmulator
) -> None:
    inbox_two_messages(app, channel)

    result = desk_emulator.pull(app, channel)

    assert result.accepted and result.sent_state is None
    assert set(desk_emulator.tickets) == {"c1"}
    assert set(desk_emulator.threads) == {"m1", "m2"}
    assert desk_emulator.channel_state == result.body["channelState"]
    assert desk_emulator.errors == []
    again = desk_emulator.pull(app, channel)
    assert again.sent_state == result.body["channelState"]
    assert again.thread_ids == []


def test_pull_whose_state_was_lost_redelivers_as_updates_not_creations(
    app: Flask, channel: dict[str, Any], desk_emulator: DeskEmulator
) -> None:
    inbox_two_messages(app, channel)

    first = desk_emulator.pull(app.test_client(), channel, state_lost=True)
    assert desk_emulator.channel_state is None
    second = desk_emulator.pull(app, channel)

    assert first.thread_ids == second.thread_ids == ["m1", "m2"]
    assert desk_emulator.creations["thread"] == {"m1": 1, "m2": 1}
    assert desk_emulator.updates["thread"] == {"m1": 1, "m2": 1}
    assert desk_emulator.created_twice() == {}
    assert desk_emulator.channel_state == second.body["channelState"]


def test_pull_whose_answer_was_lost_applies_nothing(
    app: Flask, channel: dict[str, Any], desk_emulator: DeskEmulator
) -> None:
    inbox_two_messages(app, channel)

    lost = desk_emulator.pull(app, channel, answer_lost=True)

    assert lost.status == 200 and not lost.accepted
    assert desk_emulator.threads == {} and desk_emulator.channel_state is None


def test_refused_pull_keeps_the_stored_state(desk_emulator: DeskEmulator, app: Flask, channel: dict[str, Any]) -> None:
    desk_emulator.apply(sync([], channelState="kept"))

    refused = desk_emulator.pull(app, {"channelId": channel["desk"]["channelId"], "channelToken": "wrong"})

    assert refused.status == 401 and not refused.accepted
    assert desk_emulator.channel_state == "kept"
