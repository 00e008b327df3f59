"""Events are recorded in the transaction of the change they report (SPEC B16): one per change, with
their documented data, only for subscriptions that want them, and none for a change that rolled back.
(Their delivery is tested in tests/test_event_delivery.py.)"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select, update

from app.connectors.base import DeliveryReport, InboundAnswer, InboundRequest
from app.connectors.fake import FakeConnector, FakeWebhookKind
from app.jobs import handlers
from app.jobs.worker import Worker
from app.keyring import new_webhook_secret
from app.store.models import EVENT_TYPES, Event, EventDelivery, InboxMessage, Reply, Subscription
from app.usecases import channels, events
from app.usecases.clock import utcnow
from tests.conftest import ADMIN_TOKEN
from tests.desk_emulator import EXTENSION_SECRET as DESK_SECRET
from tests.desk_emulator import DeskEmulator
from tests.support import desk_pull_body, desk_push_body, services, signed_headers
from tests.test_callbacks import EXTENSION_SECRET, callback

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def subscribe(app: Flask, *, types: tuple[str, ...] = EVENT_TYPES, channel_ids: tuple[str, ...] = (),
              enabled: bool = True, sub_id: str = "whk_test") -> str:
    """A subscription row, as the admin API would store it."""
    svc = services(app)
    now = utcnow()
    with svc.db.write() as conn:
        conn.execute(Subscription.__table__.insert(), {
            "id": sub_id, "url": "http://127.0.0.1:9/events", "events": list(types), "channels": list(channel_ids),
            "description": None, "enabled": enabled, "secret": svc.keyring.encrypt(new_webhook_secret()),
            "disabled_reason": None, "created_at": now, "updated_at": now})
    return sub_id


def recorded(app: Flask, kind: str | None = None) -> list[Any]:
    """Stored events (of one type), oldest first."""
    with services(app).db.read() as conn:
        query = select(Event).order_by(Event.id)
        if kind:
            query = query.where(Event.type == kind)
        return conn.execute(query).all()


def send(client: FlaskClient, channel: Mapping[str, Any], *ids: str, conversation: str = "c1") -> None:
    body = json.dumps({"messages": [{"id": i, "conversation_id": conversation, "text": f"text of {i}"} for i in ids]})
    answer = client.post(channel["inbound"]["path"], data=body, headers=signed_headers(channel["inbound"]["secret"],
                                                                                       body))
    assert answer.status_code == 200, answer.json


def pull(client: FlaskClient, channel: Mapping[str, Any], state: str | None = None) -> str | None:
    answer = client.post("/desk/pull?orgId=42", json=desk_pull_body(channel, state))
    assert answer.status_code == 200, answer.json
    return answer.json.get("channelState", state)


# --------------------------------------------------------------------------- messages


def test_an_accepted_message_is_one_message_received_event_with_the_message(
    app: Flask, client: FlaskClient, channel: dict[str, Any]
) -> None:
    subscribe(app)
    send(client, channel, "m1", "m2")
    send(client, channel, "m1")  # a duplicate: no new event

    received = recorded(app, "message.received")
    assert [e.data["message_id"] for e in received] == ["m1", "m2"]
    first = received[0]
    assert first.channel_id == channel["id"] and first.id.startswith("evt_")
    assert first.data["conversation_id"] == "c1"
    assert first.data["message"]["content"] == "text of m1" and first.data["message"]["direction"] == "in"
    with services(app).db.read() as conn:
        deliveries = conn.execute(select(EventDelivery).order_by(EventDelivery.id)).all()
    assert [(d.event_id, d.subscription_id, d.status) for d in deliveries] == [
        (e.id, "whk_test", "pending") for e in received]


def test_without_a_subscription_that_wants_it_nothing_is_stored(
    app: Flask, client: FlaskClient, channel: dict[str, Any], new_channel: Callable[..., dict[str, Any]]
) -> None:
    other = new_channel()
    subscribe(app, types=("reply.sent",), sub_id="whk_replies")
    subscribe(app, channel_ids=(other["id"],), sub_id="whk_other_channel")
    subscribe(app, enabled=False, sub_id="whk_disabled")

    send(client, channel, "m1")

    assert recorded(app) == []


def test_a_change_that_rolls_back_records_no_event(app: Flask, channel: dict[str, Any]) -> None:
    subscribe(app)
    with pytest.raises(RuntimeError), services(app).db.write() as conn:
        events.record_event(conn, "channel.updated", channel["id"], {"channel": None})
        raise RuntimeError("the change fails after the event was written")

    assert recorded(app) == []
    with services(app).db.read() as conn:
        assert conn.execute(select(EventDelivery)).all() == []


def test_a_message_is_synced_once_when_desks_cursor_first_moves_past_it(
    app: Flask, client: FlaskClient, channel: dict[str, Any]
) -> None:
    subscribe(app, types=("message.synced",))
    send(client, channel, "m1", "m2")
    state = pull(client, channel)
    assert recorded(app) == []  # given, not yet acknowledged
    send(client, channel, "m3")
    state = pull(client, channel, state)  # acknowledges m1 and m2, gives m3
    pull(client, channel, state)  # acknowledges m3
    pull(client, channel, state)  # the same state again: nothing new

    assert [e.data["message_id"] for e in recorded(app, "message.synced")] == ["m1", "m2", "m3"]


def test_a_message_imported_is_synced_once_and_not_again_when_the_pull_moves_past_it(
    make_app: Callable[..., Flask], desk_emulator: DeskEmulator
) -> None:
    app = make_app(DESK_EXTENSION_SECRET=DESK_SECRET)
    svc = services(app)
    created = channels.create_channel(svc.db, svc.keyring, svc.connectors, {
        "connector": "webhook", "outbound_url": "http://127.0.0.1:9/unused", "desk_domain": desk_emulator.base_url})
    assert desk_emulator.pull(app, created).accepted
    subscribe(app, types=("message.synced",))
    send(app.test_client(), created, "m1")

    assert Worker(svc, recurring=()).work_one()  # the import
    assert [e.data["message_id"] for e in recorded(app)] == ["m1"]
    desk_emulator.pull(app, created)
    desk_emulator.pull(app, created)  # Desk's cursor is now past m1 too

    assert [e.data["message_id"] for e in recorded(app)] == ["m1"]


# --------------------------------------------------------------------------- replies


def test_a_delivered_reply_is_received_then_sent(app: Flask, client: FlaskClient, receiver: Any,
                                                 hooked: dict[str, Any]) -> None:
    subscribe(app)
    answer = client.post("/desk/push?orgId=42", json=desk_push_body(hooked))
    assert answer.status_code == 200, answer.json
    client.post("/desk/push?orgId=42", json=desk_push_body(hooked))  # a repeat: no new event

    kinds = [(e.type, e.data["status"]) for e in recorded(app) if e.type.startswith("reply.")]
    assert kinds == [("reply.received", "pending"), ("reply.sent", "sent")]
    received, sent = [e for e in recorded(app) if e.type.startswith("reply.")]
    assert received.data["content"] and sent.data["content"] == received.data["content"]
    assert sent.data["external_id"] and sent.data["desk_reply_id"] == received.data["desk_reply_id"]
    assert sent.data["id"] == received.data["id"]


def test_a_rejected_reply_is_failed_with_the_reason(app: Flask, client: FlaskClient, receiver: Any,
                                                    hooked: dict[str, Any]) -> None:
    subscribe(app, types=("reply.failed",))
    receiver.script(400)
    assert client.post("/desk/push?orgId=42", json=desk_push_body(hooked)).status_code == 422

    (failed,) = recorded(app)
    assert failed.data["status"] == "failed" and "400" in failed.data["reason"]
    assert "content" not in failed.data


class ReportingKind(FakeWebhookKind):
    """The webhook kind with status callbacks, reporting what the test says."""

    def __init__(self) -> None:
        super().__init__(FakeConnector())
        self.reports: list[DeliveryReport] = []

    def read_status(self, channel: Any, request: InboundRequest) -> list[DeliveryReport]:
        return self.reports

    def status_answer(self) -> InboundAnswer:
        return InboundAnswer(204, "application/json", b"")


def test_a_providers_later_delivery_report_is_a_reply_status_event(make_app: Callable[..., Flask]) -> None:
    kind = ReportingKind()
    app = make_app(connectors={"webhook": kind})
    client = app.test_client()
    svc = services(app)
    created = channels.create_channel(svc.db, svc.keyring, svc.connectors,
                                      {"connector": "webhook", "outbound_url": "http://127.0.0.1:9/unused"})
    assert client.post("/desk/push?orgId=42", json=desk_push_body(created)).status_code == 200
    with svc.db.read() as conn:
        entry = conn.execute(select(Reply)).one()
    subscribe(app, types=("reply.status",))
    kind.reports = [DeliveryReport(entry.external_id, "undelivered", "63016", "outside the window")]

    assert client.post(f"/inbound/{created['id']}/status", data=b"x").status_code == 204

    (status,) = recorded(app)
    assert status.data["delivery_status"] == "undelivered" and status.data["status"] == "sent"
    assert status.data["reason"] == "63016: outside the window" and status.data["id"] == entry.id


# --------------------------------------------------------------------------- channels


def test_each_channel_operation_records_its_event(app: Flask, client: FlaskClient) -> None:
    subscribe(app)
    created = client.post("/api/channels", json={"connector": "webhook", "outbound_url": "http://127.0.0.1:9/x"},
                          headers=AUTH).json
    channel_id = created["id"]
    assert client.patch(f"/api/channels/{channel_id}", json={"name": "renamed"}, headers=AUTH).status_code == 200
    assert client.post(f"/api/channels/{channel_id}/disable", headers=AUTH).status_code == 200
    assert client.post(f"/api/channels/{channel_id}/disable", headers=AUTH).status_code == 200  # no change
    assert client.post(f"/api/channels/{channel_id}/enable", headers=AUTH).status_code == 200
    assert client.delete(f"/api/channels/{channel_id}?confirm={channel_id}", headers=AUTH).status_code == 204

    stored = recorded(app)
    assert [e.type for e in stored] == ["channel.created", "channel.updated", "channel.disabled", "channel.enabled",
                                        "channel.deleted"]
    assert all(e.channel_id == channel_id for e in stored)
    assert stored[1].data["channel"]["name"] == "renamed" and stored[2].data["channel"]["state"] == "disabled"
    assert "secret" not in json.dumps([e.data for e in stored])
    with services(app).db.read() as conn:  # the deleted channel's event outlives it, and is still to deliver
        assert len(conn.execute(select(EventDelivery)).all()) == 5


def test_an_install_and_an_uninstall_record_one_event_per_channel_of_the_org(
    make_app: Callable[..., Flask], new_channel: Callable[..., dict[str, Any]]
) -> None:
    app = make_app(DESK_EXTENSION_SECRET=EXTENSION_SECRET)
    client = app.test_client()
    first, second = new_channel(org_id="777"), new_channel(org_id="777")
    subscribe(app, types=("channel.installed", "channel.uninstalled"))

    assert callback(client, "onInstall", org="777").status_code == 200
    assert callback(client, "onUpdate", org="777").status_code == 200  # still installed: no event
    assert callback(client, "onUninstall", org="777").status_code == 200
    assert callback(client, "onUninstall", org="777").status_code == 200  # a repeat: no event
    assert callback(client, "onInstall", org="888").status_code == 200  # an org without channels

    got = [(e.type, e.channel_id, e.data["org_id"]) for e in recorded(app)]
    assert got == [("channel.installed", first["id"], "777"), ("channel.installed", second["id"], "777"),
                   ("channel.uninstalled", first["id"], "777"), ("channel.uninstalled", second["id"], "777"),
                   ("channel.installed", None, "888")]


def test_the_health_check_records_stalled_then_recovered(
    make_app: Callable[..., Flask], new_channel: Callable[..., dict[str, Any]]
) -> None:
    app = make_app(STALL_MINUTES="15")
    client = app.test_client()
    svc = services(app)
    channel = new_channel()
    subscribe(app, types=("channel.stalled", "channel.recovered"))
    send(client, channel, "m1")
    with svc.db.write() as conn:
        conn.execute(update(InboxMessage).values(received_at=utcnow() - timedelta(minutes=20)))

    handlers.check_channel_health(svc, {})
    handlers.check_channel_health(svc, {})  # still stalled: one event
    pull(client, channel, pull(client, channel))
    handlers.check_channel_health(svc, {})

    stored = recorded(app)
    assert [e.type for e in stored] == ["channel.stalled", "channel.recovered"]
    assert stored[0].data["backlog"] == 1 and stored[0].data["oldest_waiting_at"]
    assert stored[1].data["backlog"] == 0
