"""SPEC B4 echo suppression: a reply we delivered that comes back inbound is not a new thread."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from flask import Flask
from flask.testing import FlaskClient

from tests.receiver import Answer, Received, Receiver
from tests.support import desk_pull_body, desk_push_body, signed_headers

REPLY_ID = "287189379819"  # resource.id of the documented push body
PARENT_ID = "1276576533"
PUSH_URL = "/desk/push?orgId=42"
PULL_URL = "/desk/pull?orgId=42"




def message(msg_id: str, text: str = "Hi customer, thanks for writing to us", **extra: Any) -> dict[str, Any]:
    return {"id": msg_id, "conversation_id": PARENT_ID, "text": text, **extra}


def send_inbound(client: FlaskClient, channel: dict[str, Any], payload: dict[str, Any], msg_id: str) -> Any:
    raw = json.dumps(payload)
    return client.post(
        channel["inbound"]["path"], data=raw, headers=signed_headers(channel["inbound"]["secret"], raw, msg_id)
    )


def pulled_thread_ids(client: FlaskClient, channel: dict[str, Any]) -> list[str]:
    answer = client.post(PULL_URL, json=desk_pull_body(channel, state=""))
    assert answer.status_code == 200, answer.json
    return [thread["extId"] for thread in answer.json["data"]["threads"]]


def test_echo_of_a_sent_reply_is_a_duplicate_and_never_reaches_desk(
    client: FlaskClient, hooked: dict[str, Any], receiver: Receiver
) -> None:
    receiver.script(Answer(200, {"id": "ext-echo-1"}))
    pushed = client.post(PUSH_URL, json=desk_push_body(hooked))
    assert pushed.status_code == 200, pushed.json
    assert pushed.json["extId"] == "ext-echo-1"

    alone = send_inbound(client, hooked, message("ext-echo-1", direction="out"), "evt_1")
    batch = send_inbound(
        client, hooked, {"messages": [message("customer-2", "Thanks!"), message("ext-echo-1", direction="out")]},
        "evt_2",
    )

    assert alone.status_code == 200, alone.json
    assert alone.json == {"accepted": [], "duplicates": ["ext-echo-1"]}
    assert batch.status_code == 200, batch.json
    assert batch.json == {"accepted": ["customer-2"], "duplicates": ["ext-echo-1"]}
    assert pulled_thread_ids(client, hooked) == ["customer-2"]


def test_echo_of_a_reply_sent_without_a_receiver_id_is_recognised_by_its_desk_reply_id(
    client: FlaskClient, hooked: dict[str, Any], receiver: Receiver
) -> None:
    receiver.script(Answer(204))
    pushed = client.post(PUSH_URL, json=desk_push_body(hooked))
    assert pushed.status_code == 200, pushed.json
    echo_id = f"desk-reply-{REPLY_ID}"
    assert pushed.json["extId"] == echo_id

    answer = send_inbound(client, hooked, message(echo_id, direction="out"), "evt_1")

    assert answer.status_code == 200, answer.json
    assert answer.json == {"accepted": [], "duplicates": [echo_id]}
    assert pulled_thread_ids(client, hooked) == []


def test_same_id_on_another_channel_is_not_an_echo(
    client: FlaskClient, hooked: dict[str, Any], receiver: Receiver, new_channel: Callable[..., dict[str, Any]]
) -> None:
    other = new_channel(name="other")
    receiver.script(Answer(200, {"id": "shared-id"}))
    assert client.post(PUSH_URL, json=desk_push_body(hooked)).status_code == 200

    answer = send_inbound(client, other, message("shared-id"), "evt_1")

    assert answer.status_code == 200, answer.json
    assert answer.json == {"accepted": ["shared-id"], "duplicates": []}
    assert pulled_thread_ids(client, other) == ["shared-id"]
    assert pulled_thread_ids(client, hooked) == []


def test_message_with_the_id_of_a_failed_reply_attempt_is_accepted(
    client: FlaskClient, hooked: dict[str, Any], receiver: Receiver
) -> None:
    # Only replies the external service accepted can come back as echoes.
    receiver.script(Answer(400, {"message": "closed"}))
    assert client.post(PUSH_URL, json=desk_push_body(hooked)).status_code == 422

    answer = send_inbound(client, hooked, message(f"desk-reply-{REPLY_ID}"), "evt_1")

    assert answer.json == {"accepted": [f"desk-reply-{REPLY_ID}"], "duplicates": []}


def test_echo_sent_before_the_receiver_answers_never_reaches_desk(
    app: Flask, client: FlaskClient, hooked: dict[str, Any], receiver: Receiver
) -> None:
    echoes: list[Any] = []

    def echo_first(_: Received) -> None:
        # Some services emit their "message created" webhook before answering the API call.
        echoes.append(send_inbound(app.test_client(), hooked, message("ext-early", direction="out"), "evt_1"))

    receiver.script(Answer(200, {"id": "ext-early"}, before=echo_first))
    pushed = client.post(PUSH_URL, json=desk_push_body(hooked))
    assert pushed.status_code == 200, pushed.json
    assert echoes and echoes[0].status_code == 200

    assert "ext-early" not in pulled_thread_ids(client, hooked)
