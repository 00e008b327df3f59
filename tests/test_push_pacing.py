"""SPEC B4 pacing and the attempts history, against a real receiver on 127.0.0.1."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from flask import Flask
from sqlalchemy import select

from app.connectors.base import Delivered, TransientDeliveryError
from app.connectors.fake import FakeConnector, FakeWebhookKind
from app.store.models import Reply, ReplyAttempt
from tests.receiver import Answer, Receiver
from tests.support import desk_push_body, services

PUSH_URL = "/desk/push?orgId=42"


def attempts_of(app: Flask, desk_reply_id: str = "287189379819") -> list[ReplyAttempt]:
    with services(app).db.session() as session:
        reply = session.scalars(select(Reply).where(Reply.desk_reply_id == desk_reply_id)).one()
        return list(session.scalars(select(ReplyAttempt).where(ReplyAttempt.reply_id == reply.id)
                                    .order_by(ReplyAttempt.id)))


def test_a_receiver_answering_500_gets_at_most_four_attempts_within_the_deadline(
    make_app: Callable[..., Flask], hooked: dict[str, Any], receiver: Receiver
) -> None:
    app = make_app(PUSH_DEADLINE_SECONDS="10")
    receiver.script(*[Answer(500, {"message": "broken"})] * 20)

    started = time.monotonic()
    answer = app.test_client().post(PUSH_URL, json=desk_push_body(hooked))
    elapsed = time.monotonic() - started

    assert answer.status_code == 502, answer.json
    assert answer.json["message"].endswith("The reply was not delivered (4 attempts).")
    assert len(receiver.received) == 4
    # The waits are about 0.5 s, 1.5 s and 3.5 s (±20 %): 4.4 s at least, 6.6 s at most.
    assert 4.4 <= elapsed <= 6.6 + 1
    history = attempts_of(app)
    assert [(a.outcome, a.http_status) for a in history] == [("transient", 500)] * 4
    assert all("HTTP 500" in (a.error or "") and "broken" in (a.error or "") for a in history)


def test_retry_after_that_fits_is_waited_out_and_then_the_reply_is_sent(
    make_app: Callable[..., Flask], hooked: dict[str, Any], receiver: Receiver
) -> None:
    app = make_app(PUSH_DEADLINE_SECONDS="5")
    receiver.script(Answer(429, {"message": "slow down"}, headers={"Retry-After": "2"}), Answer(200, {"id": "m-7"}))

    started = time.monotonic()
    answer = app.test_client().post(PUSH_URL, json=desk_push_body(hooked))
    elapsed = time.monotonic() - started

    assert answer.status_code == 200, answer.json
    assert answer.json["extId"] == "m-7"
    assert elapsed >= 2.0
    assert [(a.outcome, a.http_status) for a in attempts_of(app)] == [("transient", 429), ("sent", 200)]


def test_retry_after_beyond_the_deadline_ends_the_push_at_once_as_transient(
    make_app: Callable[..., Flask], hooked: dict[str, Any], receiver: Receiver
) -> None:
    app = make_app(PUSH_DEADLINE_SECONDS="5")
    receiver.script(Answer(503, {"message": "maintenance"}, headers={"Retry-After": "3600"}), Answer(200))

    started = time.monotonic()
    answer = app.test_client().post(PUSH_URL, json=desk_push_body(hooked))

    assert time.monotonic() - started < 1.0
    assert answer.status_code == 502, answer.json
    assert answer.json["message"].endswith("(1 attempt).")
    assert len(receiver.received) == 1


def test_every_attempt_is_recorded_with_its_time_duration_outcome_status_and_reason(
    app: Flask, client: Any, hooked: dict[str, Any], receiver: Receiver
) -> None:
    receiver.script(Answer(502, {"message": "gateway"}), Answer(200, {"id": "ok-1"}))

    assert client.post(PUSH_URL, json=desk_push_body(hooked)).status_code == 200

    first, second = attempts_of(app)
    assert (first.outcome, first.http_status) == ("transient", 502)
    assert first.error and "HTTP 502" in first.error and "gateway" in first.error
    assert (second.outcome, second.http_status, second.error) == ("sent", 200, None)
    assert first.started_at <= second.started_at
    assert first.duration_ms >= 0 and second.duration_ms >= 0


def test_connectors_given_to_create_app_replace_the_built_in_kind(
    make_app: Callable[..., Flask], new_channel: Callable[..., dict[str, Any]]
) -> None:
    fake = FakeConnector(TransientDeliveryError("first try fails"), Delivered("fake-9"))
    channel = new_channel()
    app = make_app(connectors={"webhook": FakeWebhookKind(fake)}, PUSH_DEADLINE_SECONDS="5")

    answer = app.test_client().post(PUSH_URL, json=desk_push_body(channel))

    assert answer.status_code == 200, answer.json
    assert answer.json["extId"] == "fake-9"
    assert [reply.reply_id for reply, _ in fake.deliveries] == ["287189379819", "287189379819"]
