"""SPEC B4 end to end: POST /desk/push, the reply ledger, delivery to a real receiver."""

from __future__ import annotations

import queue
import re
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from app.store.database import Database
from app.store.models import Reply
from app.usecases.clock import utcnow
from tests.receiver import HANG, Answer, Receiver, closed_port
from tests.support import desk_push_body, serving

REPLY_ID = "287189379819"  # resource.id of the documented push body
PARENT_ID = "1276576533"
PUSH_URL = "/desk/push?orgId=42"
DESK_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def database(app: Flask) -> Database:
    return app.extensions["deskbridge"].db


def ledger_row(app: Flask, reply_id: str = REPLY_ID) -> Reply | None:
    """The reply ledger row of a Desk reply id, read fresh from the database."""
    with database(app).session() as session:
        return session.scalars(select(Reply).where(Reply.desk_reply_id == reply_id)).one_or_none()


def sent_row(app: Flask, reply_id: str = REPLY_ID) -> Reply:
    row = ledger_row(app, reply_id)
    assert row is not None, f"no ledger row for reply {reply_id}"
    return row


def timed_push(client: FlaskClient, body: dict[str, Any]) -> tuple[Any, float]:
    """Push and measure how long the answer took."""
    started = time.monotonic()
    answer = client.post(PUSH_URL, json=body)
    return answer, time.monotonic() - started


def write_pending(
    app: Flask, channel_id: str, started_seconds_ago: float, attempts: int, status: str = "pending"
) -> None:
    """Leave a ledger row as a crashed (or still running, or failed) delivery would."""
    now = utcnow()
    with database(app).session(write=True) as session:
        session.add(Reply(
            channel_id=channel_id, desk_reply_id=REPLY_ID, status=status, attempts=attempts,
            conversation_ext_id=PARENT_ID, in_reply_to="3298dniuniu3", content="Stored before the crash",
            content_type="text/plain", author={"name": "John Snow", "type": "AGENT"}, attachments=[],
            created_at=now - timedelta(seconds=started_seconds_ago),
            attempt_started_at=now - timedelta(seconds=started_seconds_ago),
            updated_at=now - timedelta(seconds=started_seconds_ago),
        ))
        session.commit()


# --- delivery and the success answer -------------------------------------------------------------


def test_reply_is_delivered_once_with_the_documented_body_and_a_valid_signature(
    app: Flask, client: FlaskClient, hooked: dict[str, Any], receiver: Receiver
) -> None:
    attachments = [{"name": "invoice.pdf", "href": "https://desk.zoho.com/api/v1/attachments/9", "size": "1024"}]
    body = desk_push_body(
        hooked, content="<p>Hello <b>customer</b> &amp; friends</p>", contentType="text/html",
        hasAttach=True, attachments=attachments,
    )

    answer = client.post(PUSH_URL, json=body)

    assert answer.status_code == 200, answer.json
    [delivery] = receiver.received
    assert delivery.body == {
        "type": "reply.created",
        "data": {
            "channel_id": hooked["id"],
            "reply_id": REPLY_ID,
            "conversation_id": PARENT_ID,
            "in_reply_to": "3298dniuniu3",
            "content": "<p>Hello <b>customer</b> &amp; friends</p>",
            "content_type": "text/html",
            "text": "Hello customer & friends",
            "author": {
                "name": "John Snow",
                "email": "john.snow@example.com",
                "type": "AGENT",
                "photo_url": "https://desk.zoho.com/api/v1/agents/387829/photo?orgId=28732",
            },
            "attachments": attachments,
        },
    }
    assert delivery.svix_valid and delivery.spec_valid
    assert delivery.webhook_id == f"reply_{REPLY_ID}"
    assert delivery.headers["content-type"] == "application/json"
    assert abs(int(delivery.headers["webhook-timestamp"]) - time.time()) < 10
    row = sent_row(app)
    assert (row.status, row.attempts, row.last_error) == ("sent", 1, None)
    assert (row.content_type, row.attachments) == ("text/html", attachments)


def test_plain_text_reply_without_content_sends_its_summary_and_a_null_in_reply_to(
    app: Flask, client: FlaskClient, hooked: dict[str, Any], receiver: Receiver
) -> None:
    body = desk_push_body(hooked, summary="Summary only", contentType="text/plain")
    del body["resource"]["content"], body["resource"]["replyToExtId"]

    answer = client.post(PUSH_URL, json=body)

    assert answer.status_code == 200, answer.json
    data = receiver.received[0].body["data"]
    assert (data["content"], data["text"], data["in_reply_to"]) == ("Summary only", "Summary only", None)
    assert answer.json["content"] == "Summary only"
    row = sent_row(app)
    assert (row.status, row.content, row.in_reply_to) == ("sent", "Summary only", None)


def test_success_answer_is_a_thread_with_the_receivers_message_id(
    app: Flask, client: FlaskClient, hooked: dict[str, Any], receiver: Receiver
) -> None:
    receiver.script(Answer(201, {"id": "msg-981", "status": "queued"}))

    answer = client.post(PUSH_URL, json=desk_push_body(hooked))

    assert answer.status_code == 200, answer.json
    assert set(answer.json) == {"extId", "extParentId", "createdTime", "direction", "content", "contentType",
                                "canReply"}
    assert answer.json["extId"] == "msg-981"
    assert answer.json["extParentId"] == PARENT_ID
    assert DESK_TIME.match(answer.json["createdTime"])
    assert answer.json["direction"] == "out"
    assert answer.json["content"] == "Hi customer, thanks for writing to us"
    assert answer.json["contentType"] == "text/plain"
    assert answer.json["canReply"] is True
    row = sent_row(app)
    assert (row.status, row.attempts, row.last_error, row.external_id) == ("sent", 1, None, "msg-981")
    assert row.channel_id == hooked["id"]


def test_receiver_answer_without_an_id_gives_desk_reply_ext_id(
    app: Flask, client: FlaskClient, hooked: dict[str, Any], receiver: Receiver
) -> None:
    receiver.script(Answer(200, {"ok": True}))

    answer = client.post(PUSH_URL, json=desk_push_body(hooked))

    assert answer.status_code == 200, answer.json
    assert answer.json["extId"] == f"desk-reply-{REPLY_ID}"
    row = sent_row(app)
    assert (row.status, row.attempts, row.external_id) == ("sent", 1, f"desk-reply-{REPLY_ID}")


def test_pushing_a_sent_reply_again_answers_the_same_without_delivering_again(
    app: Flask, client: FlaskClient, hooked: dict[str, Any], receiver: Receiver
) -> None:
    receiver.script(Answer(200, {"id": "msg-1"}), Answer(200, {"id": "msg-2"}))
    first = client.post(PUSH_URL, json=desk_push_body(hooked))
    # Desk's id as a number and as text are the same reply.
    again = client.post(PUSH_URL, json=desk_push_body(hooked, id=REPLY_ID))

    assert first.status_code == again.status_code == 200
    assert again.json == first.json
    assert again.json["extId"] == "msg-1"
    assert len(receiver.received) == 1
    row = sent_row(app)
    assert (row.status, row.attempts, row.external_id) == ("sent", 1, "msg-1")


@pytest.mark.parametrize("reply_to", ["", "  ", None])
def test_reply_answering_no_particular_thread_is_delivered_with_a_null_in_reply_to(
    client: FlaskClient, hooked: dict[str, Any], receiver: Receiver, reply_to: str | None
) -> None:
    answer = client.post(PUSH_URL, json=desk_push_body(hooked, replyToExtId=reply_to))

    assert answer.status_code == 200, answer.json
    assert receiver.received[0].body["data"]["in_reply_to"] is None


@pytest.mark.parametrize("config_shape", ["object", "name-value array"])
def test_config_params_are_read_as_an_object_or_as_a_name_value_array(
    app: Flask, client: FlaskClient, hooked: dict[str, Any], receiver: Receiver, config_shape: str
) -> None:
    body = desk_push_body(hooked)
    if config_shape == "name-value array":
        body["configParams"] = [{"name": name, "value": value} for name, value in body["configParams"].items()]

    answer = client.post(PUSH_URL, json=body)

    assert answer.status_code == 200, answer.json
    assert len(receiver.received) == 1
    assert sent_row(app).status == "sent"


# --- transient and permanent failures ------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 503, 429, 408])
def test_transient_failure_then_success_is_retried_with_the_same_webhook_id(
    app: Flask, client: FlaskClient, hooked: dict[str, Any], receiver: Receiver, status: int
) -> None:
    receiver.script(Answer(status, {"message": "try later"}), Answer(200, {"id": "after-retry"}))

    answer, elapsed = timed_push(client, desk_push_body(hooked))

    assert answer.status_code == 200, answer.json
    assert answer.json["extId"] == "after-retry"
    assert elapsed < 2 + 1
    first, second = receiver.received
    assert first.webhook_id == second.webhook_id == f"reply_{REPLY_ID}"
    assert first.signature_valid and second.signature_valid
    assert first.body == second.body
    row = sent_row(app)
    assert (row.status, row.attempts, row.last_error, row.external_id) == ("sent", 2, None, "after-retry")


def test_unreachable_receiver_is_retried_until_the_deadline_then_gets_502(
    make_app: Callable[..., Flask], new_channel: Callable[..., dict[str, Any]]
) -> None:
    channel = new_channel(outbound_url=f"http://127.0.0.1:{closed_port()}/hooks")
    app = make_app(PUSH_DEADLINE_SECONDS="1")

    answer, elapsed = timed_push(app.test_client(), desk_push_body(channel))

    assert answer.status_code == 502, answer.json
    assert answer.json["error"] == "delivery_failed"
    assert "could not be reached" in answer.json["message"]
    assert elapsed <= 1 + 1
    row = sent_row(app)
    assert row.status == "failed"
    assert row.attempts >= 2  # connection refused is transient: it was tried again
    assert row.last_error and "could not be reached" in row.last_error
    assert row.external_id is None


def test_transient_failures_until_the_deadline_give_502_and_failed(
    make_app: Callable[..., Flask], hooked: dict[str, Any], receiver: Receiver
) -> None:
    app = make_app(PUSH_DEADLINE_SECONDS="1")
    receiver.script(*[Answer(503, {"message": "overloaded"})] * 50)

    answer, elapsed = timed_push(app.test_client(), desk_push_body(hooked))

    assert answer.status_code == 502, answer.json
    assert "HTTP 503" in answer.json["message"]
    assert elapsed <= 1 + 1
    row = sent_row(app)
    assert row.status == "failed"
    assert row.attempts >= 2
    assert len(receiver.wait_for(row.attempts)) == row.attempts
    assert row.last_error and "503" in row.last_error


def test_rejection_by_the_receiver_gives_422_failed_and_its_reason(
    app: Flask, client: FlaskClient, hooked: dict[str, Any], receiver: Receiver
) -> None:
    receiver.script(Answer(400, {"message": "conversation 1276576533 is closed"}))

    answer = client.post(PUSH_URL, json=desk_push_body(hooked))

    assert answer.status_code == 422, answer.json
    assert answer.json["error"] == "delivery_rejected"
    assert "HTTP 400" in answer.json["message"]
    assert "conversation 1276576533 is closed" in answer.json["message"]
    assert len(receiver.received) == 1  # permanent: not tried again
    row = sent_row(app)
    assert (row.status, row.attempts, row.external_id) == ("failed", 1, None)
    assert row.last_error and "conversation 1276576533 is closed" in row.last_error


def test_receiver_that_never_answers_gets_502_within_deadline_plus_one_second(
    make_app: Callable[..., Flask], hooked: dict[str, Any], receiver: Receiver
) -> None:
    app = make_app(PUSH_DEADLINE_SECONDS="1")
    receiver.script(HANG, HANG, HANG)

    answer, elapsed = timed_push(app.test_client(), desk_push_body(hooked))

    assert answer.status_code == 502, answer.json
    assert answer.json["error"] == "delivery_failed"
    assert answer.json["message"]
    assert elapsed <= 1 + 1
    row = sent_row(app)
    assert row.status == "failed"
    assert row.attempts >= 1
    assert len(receiver.wait_for(row.attempts)) == row.attempts
    assert row.last_error and "did not answer" in row.last_error


def test_failed_reply_pushed_again_is_delivered_again_with_the_same_webhook_id(
    app: Flask, client: FlaskClient, hooked: dict[str, Any], receiver: Receiver
) -> None:
    receiver.script(Answer(400, {"message": "not now"}), Answer(200, {"id": "second-time"}))

    rejected = client.post(PUSH_URL, json=desk_push_body(hooked))
    assert rejected.status_code == 422
    assert sent_row(app).status == "failed"
    accepted = client.post(PUSH_URL, json=desk_push_body(hooked))

    assert accepted.status_code == 200, accepted.json
    assert accepted.json["extId"] == "second-time"
    first, second = receiver.received
    assert first.webhook_id == second.webhook_id == f"reply_{REPLY_ID}"
    row = sent_row(app)
    assert (row.status, row.attempts, row.last_error, row.external_id) == ("sent", 2, None, "second-time")


def test_outbound_url_refused_by_the_address_policy_at_delivery_gives_422_failed(
    make_app: Callable[..., Flask], hooked: dict[str, Any], receiver: Receiver
) -> None:
    # The channel was created while private outbound URLs were allowed; now they are not.
    strict = make_app(ALLOW_PRIVATE_OUTBOUND="false")

    answer = strict.test_client().post(PUSH_URL, json=desk_push_body(hooked))

    assert answer.status_code == 422, answer.json
    assert "refused by the outbound address policy" in answer.json["message"].lower()
    assert receiver.received == []
    row = sent_row(strict)
    assert (row.status, row.attempts, row.external_id) == ("failed", 1, None)
    assert row.last_error and "policy" in row.last_error


# --- the ledger across pushes: concurrency and crashes --------------------------------------------


@pytest.mark.parametrize("ledger_before", ["no entry", "pending left by a crash", "failed"])
def test_two_concurrent_pushes_of_one_reply_deliver_it_once(
    make_app: Callable[..., Flask], hooked: dict[str, Any], receiver: Receiver, ledger_before: str
) -> None:
    app = make_app(PUSH_DEADLINE_SECONDS="5")
    if ledger_before == "pending left by a crash":
        write_pending(app, hooked["id"], started_seconds_ago=5 + 1 + 0.5, attempts=1)
    elif ledger_before == "failed":
        write_pending(app, hooked["id"], started_seconds_ago=30, attempts=1, status="failed")
    attempts_before = 0 if ledger_before == "no entry" else 1
    held = receiver.gate()
    receiver.script(Answer(200, {"id": "only-once"}, hold=held), Answer(200, {"id": "twice!"}))
    body = desk_push_body(hooked)
    barrier = threading.Barrier(2)
    answers: queue.Queue[tuple[int, dict[str, Any]]] = queue.Queue()

    def push(base: str) -> None:
        with requests.Session() as http:
            barrier.wait(timeout=5)
            response = http.post(f"{base}{PUSH_URL}", json=body, timeout=15)
            answers.put((response.status_code, response.json()))

    with serving(app) as base:
        pushers = [threading.Thread(target=push, args=(base,)) for _ in range(2)]
        for pusher in pushers:
            pusher.start()
        # While the delivery is held at the receiver, only the other push can be answered.
        first_status, first_body = answers.get(timeout=5)
        assert first_status == 409, first_body
        assert first_body["error"] == "reply_in_progress"
        receiver.wait_for(1)
        held.set()
        second_status, second_body = answers.get(timeout=10)
        for pusher in pushers:
            pusher.join(timeout=10)

    assert second_status == 200, second_body
    assert second_body["extId"] == "only-once"
    [delivery] = receiver.received
    assert delivery.webhook_id == f"reply_{REPLY_ID}"
    row = sent_row(app)
    assert (row.status, row.attempts, row.external_id) == ("sent", attempts_before + 1, "only-once")


def test_reply_left_pending_by_a_crash_is_delivered_on_the_next_push_with_the_same_webhook_id(
    app: Flask, client: FlaskClient, hooked: dict[str, Any], receiver: Receiver
) -> None:
    deadline = 2  # the test settings' PUSH_DEADLINE_SECONDS
    write_pending(app, hooked["id"], started_seconds_ago=deadline + 1 + 0.5, attempts=1)
    receiver.script(Answer(200, {"id": "recovered"}))

    answer = client.post(PUSH_URL, json=desk_push_body(hooked))

    assert answer.status_code == 200, answer.json
    assert answer.json["extId"] == "recovered"
    [delivery] = receiver.received
    assert delivery.webhook_id == f"reply_{REPLY_ID}"
    assert delivery.signature_valid
    assert delivery.body["data"]["content"] == "Stored before the crash"
    row = sent_row(app)
    assert (row.status, row.attempts, row.last_error, row.external_id) == ("sent", 2, None, "recovered")


def test_reply_pending_for_less_than_deadline_plus_one_second_gets_409_without_delivery(
    app: Flask, client: FlaskClient, hooked: dict[str, Any], receiver: Receiver
) -> None:
    write_pending(app, hooked["id"], started_seconds_ago=0.5, attempts=0)

    answer = client.post(PUSH_URL, json=desk_push_body(hooked))

    assert answer.status_code == 409, answer.json
    assert answer.json["error"] == "reply_in_progress"
    assert answer.json["message"]
    assert receiver.received == []
    row = sent_row(app)
    assert (row.status, row.attempts, row.external_id) == ("pending", 0, None)


# --- validation ----------------------------------------------------------------------------------


def _without(*path: str) -> Callable[[dict[str, Any]], None]:
    def remove(body: dict[str, Any]) -> None:
        target = body
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]

    return remove


def _without_content_and_summary(body: dict[str, Any]) -> None:
    del body["resource"]["content"], body["resource"]["summary"]


@pytest.mark.parametrize(
    ("damage", "field"),
    [
        (_without("resource"), "resource"),
        (_without("resource", "id"), "id"),
        (_without("resource", "extParentId"), "extParentId"),
        (_without_content_and_summary, "content"),
    ],
    ids=["missing resource", "missing id", "missing extParentId", "missing content and summary"],
)
def test_invalid_reply_gets_422_naming_the_field_and_is_not_recorded(
    app: Flask, client: FlaskClient, hooked: dict[str, Any], receiver: Receiver,
    damage: Callable[[dict[str, Any]], None], field: str,
) -> None:
    body = desk_push_body(hooked)
    damage(body)

    answer = client.post(PUSH_URL, json=body)

    assert answer.status_code == 422, answer.json
    assert answer.json["error"] == "validation_error"
    assert answer.json["message"]
    assert field in answer.json["fields"]
    assert receiver.received == []
    with database(app).session() as session:
        assert session.scalars(select(Reply)).all() == []
