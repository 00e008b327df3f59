"""deliver_reply(ledger_id): one ledger entry delivered again (an operator's retry, the sweeper),
with a push's pacing and deadline and the same idempotency key; no HTTP around it."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask
from sqlalchemy import select

from app.domain.errors import NotFound
from app.store.models import Reply, ReplyAttempt
from app.usecases.push import deliver_reply
from tests.receiver import Answer, Receiver
from tests.support import desk_push_body, services


def ledger(app: Flask) -> Reply:
    with services(app).db.session() as session:
        return session.scalars(select(Reply)).one()


def attempt_outcomes(app: Flask) -> list[str]:
    with services(app).db.session() as session:
        return list(session.scalars(select(ReplyAttempt.outcome).order_by(ReplyAttempt.id)))


def redeliver(app: Flask, ledger_id: int) -> Any:
    svc = services(app)
    return deliver_reply(svc.db, svc.keyring, svc.connectors, ledger_id, svc.settings.push_deadline_seconds)


def test_a_failed_reply_is_delivered_again_with_the_same_webhook_id_and_becomes_sent(
    app: Flask, client: Any, hooked: dict[str, Any], receiver: Receiver
) -> None:
    receiver.script(Answer(400, {"message": "closed"}), Answer(200, {"id": "ext-2"}))
    assert client.post("/desk/push?orgId=1", json=desk_push_body(hooked)).status_code == 422
    failed = ledger(app)
    assert failed.status == "failed"

    outcome = redeliver(app, failed.id)

    assert (outcome.status, outcome.attempts) == ("sent", 1)
    assert outcome.sent is not None and outcome.sent.external_id == "ext-2"
    first, second = receiver.received
    assert first.webhook_id == second.webhook_id == "reply_287189379819"
    row = ledger(app)
    assert (row.status, row.external_id, row.attempts) == ("sent", "ext-2", 2)
    assert attempt_outcomes(app) == ["permanent", "sent"]
    # Desk pushing it again now gets the stored success, without a third delivery.
    again = client.post("/desk/push?orgId=1", json=desk_push_body(hooked))
    assert (again.status_code, again.json["extId"]) == (200, "ext-2")
    assert len(receiver.received) == 2


def test_a_sent_reply_is_not_delivered_again(app: Flask, client: Any, hooked: dict[str, Any], receiver: Receiver):
    receiver.script(Answer(200, {"id": "ext-1"}))
    assert client.post("/desk/push?orgId=1", json=desk_push_body(hooked)).status_code == 200

    outcome = redeliver(app, ledger(app).id)

    assert (outcome.status, outcome.attempts, outcome.sent.external_id) == ("sent", 0, "ext-1")
    assert len(receiver.received) == 1


def test_a_failing_redelivery_ends_failed_with_its_reason(
    app: Flask, client: Any, hooked: dict[str, Any], receiver: Receiver
) -> None:
    receiver.script(Answer(403, {"message": "no"}), Answer(410, {"message": "gone for good"}))
    client.post("/desk/push?orgId=1", json=desk_push_body(hooked))

    outcome = redeliver(app, ledger(app).id)

    assert (outcome.status, outcome.transient) == ("failed", False)
    assert outcome.reason and "HTTP 410" in outcome.reason and "gone for good" in outcome.reason
    assert ledger(app).status == "failed"


def test_an_unknown_ledger_id_is_not_found(app: Flask) -> None:
    with pytest.raises(NotFound):
        redeliver(app, 987654)
