"""SPEC B16 event subscriptions, the operator's side, through the admin API and the CLI: create (the
secret shown once, the outbound address policy, known event types and channels only), list, show, change,
delete, rotate; failed executions (list with filters and cursor pages, retry, delete, export), the summary
and the executions summary; and the retention of events and deliveries."""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select, update

from app.connectors.http import make_http_session
from app.store.models import EVENT_TYPES, Event, EventAttempt, EventDelivery, Subscription
from app.usecases.clock import utcnow
from app.usecases.event_delivery import deliver_due_events
from app.usecases.events import new_event_id, record_event
from app.usecases.subscriptions import purge_expired_events
from tests.conftest import ADMIN_TOKEN
from tests.receiver import Receiver, spec_signature_valid
from tests.support import services

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
DAY = datetime(2026, 11, 2, tzinfo=UTC)
HOOK_URL = "http://127.0.0.1:9/hooks"
SHOWN = {"id", "url", "events", "channels", "description", "enabled", "disabled_reason", "created_at", "updated_at"}
FAILURE = {"id", "event_id", "type", "channel_id", "status", "attempts", "last_status_code", "last_error",
           "next_attempt_at", "created_at", "updated_at"}


def cli(app: Flask, *args: str) -> Any:
    return app.test_cli_runner().invoke(args=["webhooks", *args])


def cli_json(app: Flask, *args: str) -> Any:
    result = cli(app, *args)
    assert result.exit_code == 0, (result.output, result.stderr)
    return json.loads(result.output)


def create(client: FlaskClient, **fields: Any) -> dict[str, Any]:
    body = {"url": HOOK_URL, "events": ["reply.failed", "reply.sent"], **fields}
    answer = client.post("/api/webhooks", headers=AUTH, json=body)
    assert answer.status_code == 201, answer.json
    return answer.json


def add_deliveries(app: Flask, subscription_id: str, count: int, *, status: str = "failed",
                   kind: str = "reply.failed", channel_id: str | None = None, start: datetime = DAY,
                   step: timedelta = timedelta(minutes=30), attempts: int = 8,
                   locked_until: datetime | None = None) -> list[int]:
    """Events with one delivery each to the subscription, as the delivery engine would have left them."""
    with services(app).db.session(write=True) as session:
        rows = []
        for n in range(count):
            created = start + n * step
            event = Event(id=new_event_id(), type=kind, channel_id=channel_id, data={"n": n}, created_at=created)
            delivered = status == "delivered"
            row = EventDelivery(
                event_id=event.id, subscription_id=subscription_id, event_type=kind, channel_id=channel_id,
                status=status, attempts=0 if status == "pending" else attempts,
                next_attempt_at=created + timedelta(hours=2) if status in ("pending", "retrying") else None,
                locked_by="worker-1" if locked_until else None, locked_until=locked_until,
                last_status_code=None if status == "pending" else 200 if delivered else 500,
                last_error=None if delivered or status == "pending" else "HTTP 500",
                created_at=created, updated_at=created + timedelta(minutes=1),
                delivered_at=created + timedelta(minutes=1) if delivered else None,
            )
            session.add_all([event, row])
            rows.append(row)
        session.commit()
        return [row.id for row in rows]


def add_attempts(app: Flask, delivery_id: int, subscription_id: str,
                 attempts: Sequence[tuple[datetime, int, bool]]) -> None:
    """Attempts (started_at, duration_ms, success) of a delivery."""
    with services(app).db.session(write=True) as session:
        session.add_all(EventAttempt(
            delivery_id=delivery_id, subscription_id=subscription_id, started_at=started, duration_ms=duration,
            status_code=200 if success else 503, success=success, error=None if success else "HTTP 503",
        ) for started, duration, success in attempts)
        session.commit()


def stored(app: Flask, model: Any, *where: Any) -> list[Any]:
    with services(app).db.session() as session:
        return list(session.scalars(select(model).where(*where)))


def count(app: Flask, model: Any) -> int:
    with services(app).db.session() as session:
        return session.scalar(select(func.count()).select_from(model))


# --- create, show, list ----------------------------------------------------------------------------


def test_create_shows_the_secret_once_and_stores_it_encrypted(app, client, channel) -> None:
    created = create(client, channels=[channel["id"]], description="CRM", events=["message.received"])

    assert created["id"].startswith("whk_") and created["secret"].startswith("whsec_")
    assert set(created) == SHOWN | {"secret"}
    assert (created["url"], created["events"], created["channels"]) == (HOOK_URL, ["message.received"],
                                                                         [channel["id"]])
    assert (created["enabled"], created["disabled_reason"], created["description"]) == (True, None, "CRM")
    shown = client.get(f"/api/webhooks/{created['id']}", headers=AUTH)
    listed = client.get("/api/webhooks", headers=AUTH).json
    assert shown.status_code == 200
    assert shown.json == {k: v for k, v in created.items() if k != "secret"} == listed["items"][0]
    for text in (shown.get_data(as_text=True), json.dumps(listed), json.dumps(cli_json(app, "show", created["id"]))):
        assert created["secret"] not in text
    (row,) = stored(app, Subscription)
    assert created["secret"] not in row.secret
    assert services(app).keyring.decrypt(row.secret) == created["secret"]


def test_a_new_subscription_receives_the_events_it_names(app, client, new_channel) -> None:
    mine, other = new_channel(), new_channel()
    hook = create(client, events=["channel.updated"], channels=[mine["id"]])

    with services(app).db.write() as conn:
        record_event(conn, "channel.updated", mine["id"], {})
        record_event(conn, "channel.updated", other["id"], {})
        record_event(conn, "channel.disabled", mine["id"], {})

    (delivery,) = stored(app, EventDelivery)
    assert (delivery.subscription_id, delivery.channel_id, delivery.status) == (hook["id"], mine["id"], "pending")


def test_create_disabled_records_the_operator_as_the_reason(client) -> None:
    created = create(client, enabled=False)
    assert (created["enabled"], created["disabled_reason"]) == (False, "operator")


def test_unknown_event_types_are_refused_listing_the_valid_ones(app, client) -> None:
    answer = client.post("/api/webhooks", headers=AUTH, json={"url": HOOK_URL, "events": ["reply.sent", "reply.lost"]})

    assert answer.status_code == 422
    (message,) = answer.json["fields"]["events"]["1"]
    assert "'reply.lost'" in message
    assert all(kind in message for kind in EVENT_TYPES)
    assert count(app, Subscription) == 0


@pytest.mark.parametrize(
    ("body", "field"),
    [({"events": ["*"]}, "events"), ({"events": []}, "events"), ({"events": "reply.sent"}, "events"),
     ({"events": None}, "events"), ({"url": None}, "url"), ({"url": ""}, "url"), ({"url": "ftp://x.example/"}, "url"),
     ({"url": "http://user:pw@x.example/"}, "url"), ({"channels": ["ch_nope"]}, "channels"),
     ({"channels": "all"}, "channels"), ({"enabled": "yes"}, "enabled"), ({"description": "x" * 501}, "description"),
     ({"colour": "red"}, "colour"), ({"secret": "whsec_mine"}, "secret")],
)
def test_create_refuses_bad_fields_naming_them(app, client, body, field) -> None:
    answer = client.post("/api/webhooks", headers=AUTH, json={"url": HOOK_URL, "events": ["reply.sent"], **body})
    assert answer.status_code == 422, answer.json
    assert field in answer.json["fields"]
    assert count(app, Subscription) == 0


def test_create_needs_url_and_events(client) -> None:
    answer = client.post("/api/webhooks", headers=AUTH, json={})
    assert answer.status_code == 422
    assert set(answer.json["fields"]) == {"url", "events"}


def test_unknown_channel_ids_are_named(client, channel) -> None:
    answer = client.post("/api/webhooks", headers=AUTH,
                         json={"url": HOOK_URL, "events": ["reply.sent"], "channels": [channel["id"], "ch_gone"]})
    assert answer.status_code == 422
    assert answer.json["fields"]["channels"] == ["No such channel: ch_gone."]


@pytest.mark.parametrize("url", ["http://127.0.0.1:8080/hook", "http://10.1.2.3/hook", "https://[::1]/hook",
                                 "http://localhost/hook", "http://169.254.169.254/latest"])
def test_private_urls_are_refused_unless_allowed(make_app, url) -> None:
    strict = make_app(ALLOW_PRIVATE_OUTBOUND="false").test_client()

    answer = strict.post("/api/webhooks", headers=AUTH, json={"url": url, "events": ["reply.sent"]})

    assert answer.status_code == 422
    assert list(answer.json["fields"]) == ["url"]
    assert "not public" in answer.json["fields"]["url"][0]
    public = create(strict, url="https://93.184.215.14/hook")
    changed = strict.patch(f"/api/webhooks/{public['id']}", headers=AUTH, json={"url": url})
    assert changed.status_code == 422 and list(changed.json["fields"]) == ["url"]
    lenient = make_app(ALLOW_PRIVATE_OUTBOUND="true").test_client()
    assert create(lenient, url=url)["url"] == url


def test_list_pages_newest_first_with_a_cursor_on_the_api_and_the_cli(app, client) -> None:
    ids = [create(client, description=f"n{n}")["id"] for n in range(5)]

    first = client.get("/api/webhooks?limit=2", headers=AUTH).json
    second = client.get(f"/api/webhooks?limit=2&cursor={first['next_cursor']}", headers=AUTH).json
    third = cli_json(app, "list", "--limit", "2", "--cursor", second["next_cursor"])

    assert [item["id"] for item in first["items"] + second["items"] + third["items"]] == ids[::-1]
    assert third["next_cursor"] is None
    assert cli_json(app, "list", "--limit", "2") == first


def test_list_filters_by_state_channel_and_time(app, client, new_channel) -> None:
    one, two = new_channel(), new_channel()
    everything = create(client)
    only_one = create(client, channels=[one["id"]])
    only_two = create(client, channels=[two["id"]], enabled=False)

    def listed(query: str) -> list[str]:
        answer = client.get(f"/api/webhooks?{query}", headers=AUTH)
        assert answer.status_code == 200, answer.json
        return [item["id"] for item in answer.json["items"]]

    assert listed("status=disabled") == [only_two["id"]]
    assert listed("status=enabled") == [only_one["id"], everything["id"]]
    assert listed(f"channel={one['id']}") == [only_one["id"], everything["id"]]
    assert listed("channel=ch_%25") == [everything["id"]]  # a LIKE wildcard matches nothing
    assert listed("since=2000-01-01T00:00:00Z&until=2001-01-01") == []
    assert len(listed("since=2000-01-01T00:00:00Z")) == 3


@pytest.mark.parametrize(
    ("query", "field"),
    [("limit=251", "limit"), ("limit=0", "limit"), ("status=on", "status"), ("since=monday", "since"),
     ("cursor=nope", "cursor"), ("colour=red", "colour")],
)
def test_list_refuses_bad_filters_naming_the_field(client, query, field) -> None:
    answer = client.get(f"/api/webhooks?{query}", headers=AUTH)
    assert answer.status_code == 422 and field in answer.json["fields"]


@pytest.mark.parametrize("path", ["", "/failures", "/summary", "/executions/summary", "/failures/export"])
def test_an_unknown_webhook_is_404(client, path) -> None:
    answer = client.get(f"/api/webhooks/whk_nope{path}", headers=AUTH)
    assert (answer.status_code, answer.json["error"]) == (404, "unknown_webhook")


def test_the_api_needs_the_token(client) -> None:
    assert client.get("/api/webhooks").status_code == 401
    assert client.post("/api/webhooks", json={"url": HOOK_URL, "events": ["reply.sent"]}).status_code == 401


# --- change, delete, rotate ------------------------------------------------------------------------


def test_patch_changes_the_fields_given_and_show_gives_the_result(app, client, new_channel) -> None:
    one, two = new_channel(), new_channel()
    hook = create(client, channels=[one["id"]], description="old")

    answer = client.patch(f"/api/webhooks/{hook['id']}", headers=AUTH, json={
        "url": "http://127.0.0.1:9/new", "events": ["channel.deleted", "channel.deleted"],
        "channels": [two["id"], one["id"]], "description": None})

    assert answer.status_code == 200, answer.json
    assert answer.json == client.get(f"/api/webhooks/{hook['id']}", headers=AUTH).json
    assert (answer.json["url"], answer.json["events"], answer.json["channels"], answer.json["description"]) == (
        "http://127.0.0.1:9/new", ["channel.deleted"], [two["id"], one["id"]], None)
    assert answer.json["updated_at"] >= hook["updated_at"]
    assert client.patch(f"/api/webhooks/{hook['id']}", headers=AUTH, json={}).json == answer.json
    same = client.patch(f"/api/webhooks/{hook['id']}", headers=AUTH, json={"enabled": True, "description": None})
    assert same.json == answer.json  # nothing changed: updated_at stays


def test_disabling_records_the_operator_and_enabling_clears_the_reason(app, client) -> None:
    hook = create(client)
    at = f"/api/webhooks/{hook['id']}"

    disabled = client.patch(at, headers=AUTH, json={"enabled": False}).json
    enabled = client.patch(at, headers=AUTH, json={"enabled": True}).json
    with services(app).db.session(write=True) as session:  # as the delivery engine does on a 410
        session.execute(update(Subscription).values(enabled=False, disabled_reason="gone"))
        session.commit()
    disabled_again = client.patch(at, headers=AUTH, json={"enabled": False}).json

    assert (disabled["enabled"], disabled["disabled_reason"]) == (False, "operator")
    assert (enabled["enabled"], enabled["disabled_reason"]) == (True, None)
    assert disabled_again["disabled_reason"] == "gone"  # still says why deliveries stopped
    assert cli_json(app, "update", hook["id"], "--enable")["disabled_reason"] is None


def test_patch_keeps_channel_ids_whose_channel_was_deleted_but_refuses_new_unknown_ones(app, client,
                                                                                        new_channel) -> None:
    one, two = new_channel(), new_channel()
    hook = create(client, channels=[one["id"], two["id"]])
    client.delete(f"/api/channels/{two['id']}?confirm={two['id']}", headers=AUTH)
    at = f"/api/webhooks/{hook['id']}"

    kept = client.patch(at, headers=AUTH, json={"channels": [two["id"]]})
    refused = client.patch(at, headers=AUTH, json={"channels": [two["id"], "ch_never"]})

    assert kept.status_code == 200 and kept.json["channels"] == [two["id"]]
    assert refused.status_code == 422 and refused.json["fields"]["channels"] == ["No such channel: ch_never."]


@pytest.mark.parametrize(("body", "field"), [({"id": "whk_x"}, "id"), ({"events": ["nope"]}, "events"),
                                             ({"enabled": 1}, "enabled"), ({"url": "mailto:x@example.com"}, "url")])
def test_patch_refuses_bad_and_unknown_fields(client, body, field) -> None:
    hook = create(client)
    answer = client.patch(f"/api/webhooks/{hook['id']}", headers=AUTH, json=body)
    assert answer.status_code == 422 and field in answer.json["fields"]


def test_patch_of_an_unknown_webhook_is_404(client) -> None:
    answer = client.patch("/api/webhooks/whk_nope", headers=AUTH, json={"enabled": False})
    assert answer.status_code == 404


def test_delete_takes_the_deliveries_and_attempts_and_leaves_the_events(app, client) -> None:
    hook, other = create(client), create(client)
    (mine,) = add_deliveries(app, hook["id"], 1)
    add_attempts(app, mine, hook["id"], [(DAY, 10, False)])
    (kept,) = add_deliveries(app, other["id"], 1)

    answer = client.delete(f"/api/webhooks/{hook['id']}", headers=AUTH)

    assert answer.status_code == 204 and answer.data == b""
    assert client.get(f"/api/webhooks/{hook['id']}", headers=AUTH).status_code == 404
    assert [d.id for d in stored(app, EventDelivery)] == [kept]
    assert (count(app, EventAttempt), count(app, Event)) == (0, 2)
    assert client.delete(f"/api/webhooks/{hook['id']}", headers=AUTH).status_code == 404


def test_cli_delete_needs_yes(app, client) -> None:
    hook = create(client)
    refused = cli(app, "delete", hook["id"])
    assert refused.exit_code == 1 and "confirmation_required" in refused.stderr
    assert cli_json(app, "delete", hook["id"], "--yes") == {"deleted": hook["id"]}
    assert count(app, Subscription) == 0


def test_rotate_secret_shows_the_new_one_once_and_it_replaces_the_old_at_once(app, client) -> None:
    hook = create(client)

    answer = client.post(f"/api/webhooks/{hook['id']}/rotate-secret", headers=AUTH)
    over_cli = cli_json(app, "rotate-secret", hook["id"])

    assert answer.status_code == 200 and set(answer.json) == {"secret"}
    assert answer.json["secret"].startswith("whsec_") and answer.json["secret"] != hook["secret"]
    assert over_cli["secret"] not in (answer.json["secret"], hook["secret"])
    (row,) = stored(app, Subscription)
    assert services(app).keyring.decrypt(row.secret) == over_cli["secret"]
    assert over_cli["secret"] not in client.get(f"/api/webhooks/{hook['id']}", headers=AUTH).get_data(as_text=True)
    assert client.post("/api/webhooks/whk_nope/rotate-secret", headers=AUTH).status_code == 404


# --- failed executions -----------------------------------------------------------------------------


def test_failures_lists_retrying_and_failed_deliveries_newest_first_with_a_cursor(app, client, channel) -> None:
    hook = create(client)
    failed = add_deliveries(app, hook["id"], 3, channel_id=channel["id"])
    retrying = add_deliveries(app, hook["id"], 2, status="retrying", attempts=2, start=DAY + timedelta(days=1))
    add_deliveries(app, hook["id"], 2, status="delivered")
    add_deliveries(app, hook["id"], 1, status="pending")
    add_deliveries(app, create(client)["id"], 2)  # another webhook's
    at = f"/api/webhooks/{hook['id']}/failures"

    first = client.get(f"{at}?limit=3", headers=AUTH).json
    second = client.get(f"{at}?limit=3&cursor={first['next_cursor']}", headers=AUTH).json

    assert [i["id"] for i in first["items"] + second["items"]] == (failed + retrying)[::-1]
    assert second["next_cursor"] is None
    assert cli_json(app, "failures", hook["id"], "--limit", "3") == first
    newest, oldest = first["items"][0], second["items"][-1]
    assert set(newest) == FAILURE
    assert (newest["status"], newest["attempts"], newest["last_status_code"], newest["last_error"]) == (
        "retrying", 2, 500, "HTTP 500")
    assert newest["next_attempt_at"] == "2026-11-03T02:30:00.000Z"
    assert (oldest["status"], oldest["next_attempt_at"], oldest["channel_id"]) == ("failed", None, channel["id"])
    with services(app).db.session() as session:
        assert oldest["event_id"] == session.get(EventDelivery, failed[0]).event_id
    assert oldest["type"] == "reply.failed" and oldest["created_at"] == "2026-11-02T00:00:00.000Z"


def test_failures_filter_by_type_status_channel_and_time(app, client, channel) -> None:
    hook = create(client)
    failed = add_deliveries(app, hook["id"], 2, channel_id=channel["id"])
    retrying = add_deliveries(app, hook["id"], 1, status="retrying", kind="message.received",
                              start=DAY + timedelta(days=1))

    def listed(query: str) -> list[int]:
        answer = client.get(f"/api/webhooks/{hook['id']}/failures?{query}", headers=AUTH)
        assert answer.status_code == 200, answer.json
        return [item["id"] for item in answer.json["items"]]

    assert listed("status=retrying") == retrying
    assert listed("status=failed") == failed[::-1]
    assert listed("type=message.received") == retrying
    assert listed(f"channel={channel['id']}") == failed[::-1]
    assert listed("since=2026-11-02T00:30:00Z&until=2026-11-03") == failed[1:]
    over_api = client.get(f"/api/webhooks/{hook['id']}/failures?type=reply.failed&status=failed", headers=AUTH)
    assert cli_json(app, "failures", hook["id"], "--type", "reply.failed", "--status", "failed") == over_api.json


@pytest.mark.parametrize(
    ("query", "field"),
    [("status=delivered", "status"), ("status=pending", "status"), ("type=reply.lost", "type"),
     ("limit=251", "limit"), ("cursor=xyz", "cursor"), ("until=tomorrow", "until"), ("page=2", "page")],
)
def test_failures_refuse_bad_filters_naming_the_field(client, query, field) -> None:
    hook = create(client)
    answer = client.get(f"/api/webhooks/{hook['id']}/failures?{query}", headers=AUTH)
    assert answer.status_code == 422 and field in answer.json["fields"]


def test_a_cursor_of_another_list_is_refused(client) -> None:
    hook = create(client)
    create(client)
    other = client.get("/api/webhooks?limit=1", headers=AUTH).json["next_cursor"]
    answer = client.get(f"/api/webhooks/{hook['id']}/failures?cursor={other}", headers=AUTH)
    assert answer.status_code == 422 and "cursor" in answer.json["fields"]


def test_retry_makes_failed_deliveries_due_again_with_the_same_event_and_attempts(app, client) -> None:
    hook = create(client)
    failed = add_deliveries(app, hook["id"], 2)
    retrying = add_deliveries(app, hook["id"], 1, status="retrying", attempts=3)
    before = {d.id: d for d in stored(app, EventDelivery)}
    asked_at = utcnow()

    answer = client.post(f"/api/webhooks/{hook['id']}/failures/retry", headers=AUTH,
                         json={"ids": [failed[0], retrying[0], failed[0]]})

    assert answer.status_code == 202, answer.json
    assert answer.json == {"queued": [failed[0], retrying[0]], "skipped": []}
    after = {d.id: d for d in stored(app, EventDelivery)}
    for delivery_id in (failed[0], retrying[0]):
        row = after[delivery_id]
        assert row.status == "retrying"
        assert asked_at - timedelta(seconds=1) <= row.next_attempt_at <= utcnow()
        assert (row.event_id, row.attempts, row.last_error) == (
            before[delivery_id].event_id, before[delivery_id].attempts, "HTTP 500")
        assert (row.locked_by, row.locked_until) == (None, None)
    assert (after[failed[1]].status, after[failed[1]].next_attempt_at) == ("failed", None)
    # Still listed among the failures until an attempt succeeds, now due.
    listed = client.get(f"/api/webhooks/{hook['id']}/failures?status=retrying", headers=AUTH).json["items"]
    assert {item["id"] for item in listed} == {failed[0], retrying[0]}


def deliver(app: Flask, schedule: tuple[float, ...]) -> int:
    """One claim, send and record of the delivery engine, as a worker runs it."""
    svc = services(app)
    http = make_http_session(allow_private=True)
    try:
        return deliver_due_events(svc.db, svc.keyring, http, worker_id="test-worker", schedule=schedule, limit=10,
                                  allow_private=True)
    finally:
        http.close()


def test_a_retried_failure_is_sent_again_with_the_same_webhook_id_signed_with_the_rotated_secret(
    app, client, channel, receiver: Receiver
) -> None:
    hook = create(client, url=receiver.url, events=["channel.updated"])
    receiver.secret = hook["secret"]
    with services(app).db.write() as conn:
        record_event(conn, "channel.updated", channel["id"], {})
    receiver.script(503, 503)
    assert deliver(app, (0.0, 0.0)) == 1 and deliver(app, (0.0, 0.0)) == 1  # the schedule is spent
    (failed,) = client.get(f"/api/webhooks/{hook['id']}/failures", headers=AUTH).json["items"]
    assert (failed["status"], failed["attempts"], failed["last_status_code"]) == ("failed", 2, 503)

    rotated = client.post(f"/api/webhooks/{hook['id']}/rotate-secret", headers=AUTH).json["secret"]
    receiver.secret = rotated
    answer = client.post(f"/api/webhooks/{hook['id']}/failures/retry", headers=AUTH, json={"ids": [failed["id"]]})
    assert answer.json == {"queued": [failed["id"]], "skipped": []}
    assert deliver(app, (0.0, 0.0)) == 1

    first, second, third = receiver.received
    assert first.webhook_id == second.webhook_id == third.webhook_id == failed["event_id"]
    assert first.signature_valid and third.signature_valid  # each with the secret of its time:
    assert not spec_signature_valid(hook["secret"], third.headers, third.raw)  # the new one, at once
    assert not spec_signature_valid(rotated, first.headers, first.raw)
    assert client.get(f"/api/webhooks/{hook['id']}/failures", headers=AUTH).json["items"] == []
    assert client.get(f"/api/webhooks/{hook['id']}/summary", headers=AUTH).json["counts"] == {
        "delivered": 1, "retrying": 0, "failed": 0}
    (day,) = client.get(f"/api/webhooks/{hook['id']}/executions/summary", headers=AUTH).json["intervals"]
    assert (day["attempts"], day["successes"], day["failures"]) == (3, 1, 2)


def test_retry_skips_delivered_unknown_and_in_flight_deliveries(app, client) -> None:
    hook, other = create(client), create(client)
    delivered = add_deliveries(app, hook["id"], 1, status="delivered")
    in_flight = add_deliveries(app, hook["id"], 1, status="retrying", locked_until=utcnow() + timedelta(seconds=30))
    lease_expired = add_deliveries(app, hook["id"], 1, status="retrying", locked_until=utcnow() - timedelta(minutes=1))
    others = add_deliveries(app, other["id"], 1)

    over_cli = cli_json(app, "retry", hook["id"], str(delivered[0]), "987654", str(in_flight[0]),
                        str(others[0]), str(lease_expired[0]))

    assert over_cli == {"queued": lease_expired, "skipped": [
        {"id": delivered[0], "reason": "already delivered"}, {"id": 987654, "reason": "not found"},
        {"id": in_flight[0], "reason": "being delivered right now"}, {"id": others[0], "reason": "not found"}]}
    (untouched,) = stored(app, EventDelivery, EventDelivery.id == others[0])
    assert (untouched.status, untouched.next_attempt_at) == ("failed", None)


def test_retry_while_the_webhook_is_disabled_is_skipped_until_it_is_enabled(app, client) -> None:
    hook = create(client)
    failed = add_deliveries(app, hook["id"], 1)
    at = f"/api/webhooks/{hook['id']}"
    client.patch(at, headers=AUTH, json={"enabled": False})

    skipped = client.post(f"{at}/failures/retry", headers=AUTH, json={"ids": failed})
    client.patch(at, headers=AUTH, json={"enabled": True})
    queued = client.post(f"{at}/failures/retry", headers=AUTH, json={"ids": failed})

    assert skipped.json == {"queued": [], "skipped": [{"id": failed[0], "reason": "subscription disabled"}]}
    assert queued.json == {"queued": failed, "skipped": []}


@pytest.mark.parametrize(
    ("body", "field"),
    [({"ids": list(range(1, 101))}, "ids"), ({"ids": []}, "ids"), ({"ids": ["1"]}, "ids"), ({}, "ids"),
     ({"ids": [2**63]}, "ids"), ({"ids": [1], "all": True}, "all")],
)
def test_retry_refuses_more_than_99_ids_and_odd_bodies(app, client, body, field) -> None:
    hook = create(client)
    add_deliveries(app, hook["id"], 1)
    answer = client.post(f"/api/webhooks/{hook['id']}/failures/retry", headers=AUTH, json=body)
    assert answer.status_code == 422, answer.json
    assert field in answer.json["fields"]
    assert stored(app, EventDelivery)[0].next_attempt_at is None


def test_99_ids_are_accepted(app, client) -> None:
    hook = create(client)
    ids = add_deliveries(app, hook["id"], 99, step=timedelta(seconds=1))
    answer = client.post(f"/api/webhooks/{hook['id']}/failures/retry", headers=AUTH, json={"ids": ids})
    assert answer.status_code == 202 and answer.json["queued"] == ids


def test_delete_failures_removes_failed_deliveries_and_their_attempts_only(app, client) -> None:
    hook, other = create(client), create(client)
    failed = add_deliveries(app, hook["id"], 2)
    delivered = add_deliveries(app, hook["id"], 1, status="delivered")
    in_flight = add_deliveries(app, hook["id"], 1, status="retrying", locked_until=utcnow() + timedelta(seconds=30))
    others = add_deliveries(app, other["id"], 1)
    for delivery_id in failed:
        add_attempts(app, delivery_id, hook["id"], [(DAY, 10, False), (DAY, 12, False)])

    answer = client.post(f"/api/webhooks/{hook['id']}/failures/delete", headers=AUTH,
                         json={"ids": [*failed, *delivered, *in_flight, *others, 424242]})

    assert answer.status_code == 200 and answer.json == {"deleted": 2}
    assert {d.id for d in stored(app, EventDelivery)} == {*delivered, *in_flight, *others}
    assert count(app, EventAttempt) == 0
    assert count(app, Event) == 5  # the events stay (retention removes them)


def test_delete_failures_takes_at_most_300_ids(app, client) -> None:
    hook = create(client)
    ids = add_deliveries(app, hook["id"], 300, step=timedelta(seconds=1))
    at = f"/api/webhooks/{hook['id']}/failures/delete"

    too_many = client.post(at, headers=AUTH, json={"ids": [*ids, 999999]})
    assert too_many.status_code == 422 and "ids" in too_many.json["fields"]
    assert count(app, EventDelivery) == 300
    assert client.post(at, headers=AUTH, json={"ids": ids}).json == {"deleted": 300}


def test_cli_delete_failures_needs_yes(app, client) -> None:
    hook = create(client)
    ids = add_deliveries(app, hook["id"], 1)
    refused = cli(app, "delete-failures", hook["id"], str(ids[0]))
    assert refused.exit_code == 1 and "confirmation_required" in refused.stderr
    assert cli_json(app, "delete-failures", hook["id"], str(ids[0]), "--yes") == {"deleted": 1}


def test_export_streams_failures_as_csv_and_json_lines_oldest_first(app, client, channel) -> None:
    hook = create(client)
    failed = add_deliveries(app, hook["id"], 3, channel_id=channel["id"])
    retrying = add_deliveries(app, hook["id"], 1, status="retrying", start=DAY + timedelta(days=1))
    add_deliveries(app, hook["id"], 1, status="delivered")
    at = f"/api/webhooks/{hook['id']}/failures/export"

    answer = client.get(f"{at}?format=csv", headers=AUTH)
    assert answer.status_code == 200 and answer.mimetype == "text/csv"
    assert "attachment" in answer.headers["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(answer.get_data(as_text=True))))
    assert [int(row["id"]) for row in rows] == failed + retrying
    assert (rows[0]["status"], rows[0]["last_status_code"], rows[0]["next_attempt_at"]) == ("failed", "500", "")
    assert rows[-1]["next_attempt_at"] == "2026-11-03T02:00:00.000Z"

    jsonl = client.get(f"{at}?format=jsonl&status=failed", headers=AUTH)
    assert jsonl.mimetype == "application/x-ndjson"
    lines = [json.loads(line) for line in jsonl.get_data(as_text=True).splitlines()]
    assert [line["id"] for line in lines] == failed
    assert lines == client.get(f"/api/webhooks/{hook['id']}/failures?status=failed", headers=AUTH).json["items"][::-1]
    over_cli = cli(app, "export", hook["id"], "--format", "jsonl", "--status", "failed")
    assert [json.loads(line) for line in over_cli.output.splitlines()] == lines
    assert cli(app, "export", hook["id"]).stdout_bytes == answer.data


@pytest.mark.parametrize("query", ["format=xml", "format=csv&since=x", "status=delivered", "colour=red"])
def test_export_refuses_bad_queries_before_streaming(client, query) -> None:
    hook = create(client)
    answer = client.get(f"/api/webhooks/{hook['id']}/failures/export?{query}", headers=AUTH)
    assert answer.status_code == 422 and answer.is_json


# --- summaries -------------------------------------------------------------------------------------


def test_summary_counts_deliveries_in_all_and_per_event_type(app, client) -> None:
    hook = create(client)
    add_deliveries(app, hook["id"], 3, status="delivered", kind="reply.sent")
    add_deliveries(app, hook["id"], 1, status="failed", kind="reply.sent")
    add_deliveries(app, hook["id"], 2, status="retrying", kind="message.received", start=DAY + timedelta(days=1))
    add_deliveries(app, hook["id"], 1, status="pending", kind="channel.created")
    add_deliveries(app, create(client)["id"], 4, status="failed")

    summary = client.get(f"/api/webhooks/{hook['id']}/summary", headers=AUTH)

    assert summary.status_code == 200
    assert summary.json == cli_json(app, "summary", hook["id"])
    assert summary.json == {
        "counts": {"delivered": 3, "retrying": 2, "failed": 1},
        "by_type": {"message.received": {"delivered": 0, "retrying": 2, "failed": 0},
                    "reply.sent": {"delivered": 3, "retrying": 0, "failed": 1}},
    }
    since = client.get(f"/api/webhooks/{hook['id']}/summary?since=2026-11-03T00:00:00Z", headers=AUTH).json
    assert since["counts"] == {"delivered": 0, "retrying": 2, "failed": 0}
    empty = client.get(f"/api/webhooks/{create(client)['id']}/summary", headers=AUTH).json
    assert empty == {"counts": {"delivered": 0, "retrying": 0, "failed": 0}, "by_type": {}}


def test_executions_summary_counts_attempts_and_their_durations_per_day_and_hour(app, client) -> None:
    hook, other = create(client), create(client)
    (first,) = add_deliveries(app, hook["id"], 1)
    (second,) = add_deliveries(app, hook["id"], 1, status="delivered")
    # Day one: 20 attempts in two hours, durations 10, 20, ..., 200 ms; every fourth fails.
    add_attempts(app, first, hook["id"], [
        (DAY + timedelta(hours=n // 10, minutes=n % 10), 10 * (n + 1), n % 4 != 3) for n in range(20)])
    # Day two, just before midnight UTC: one slow failure.
    add_attempts(app, second, hook["id"], [(DAY + timedelta(days=1, hours=23, minutes=59), 15000, False)])
    add_attempts(app, second, other["id"], [(DAY, 1, True)])  # another webhook's

    daily = client.get(f"/api/webhooks/{hook['id']}/executions/summary", headers=AUTH)

    assert daily.status_code == 200, daily.json
    assert daily.json == cli_json(app, "executions", hook["id"])
    assert daily.json == {"intervals": [
        {"start": "2026-11-02T00:00:00.000Z", "attempts": 20, "successes": 15, "failures": 5,
         "p50_ms": 100, "p95_ms": 190},
        {"start": "2026-11-03T00:00:00.000Z", "attempts": 1, "successes": 0, "failures": 1,
         "p50_ms": 15000, "p95_ms": 15000},
    ]}
    hourly = client.get(f"/api/webhooks/{hook['id']}/executions/summary?interval=hour&until=2026-11-03",
                        headers=AUTH).json
    assert hourly == cli_json(app, "executions", hook["id"], "--interval", "hour", "--until", "2026-11-03")
    assert [(i["start"], i["attempts"], i["p50_ms"], i["p95_ms"]) for i in hourly["intervals"]] == [
        ("2026-11-02T00:00:00.000Z", 10, 50, 100), ("2026-11-02T01:00:00.000Z", 10, 150, 200)]


@pytest.mark.parametrize("query", ["interval=week", "since=x", "colour=red"])
def test_executions_summary_refuses_bad_queries(client, query) -> None:
    hook = create(client)
    answer = client.get(f"/api/webhooks/{hook['id']}/executions/summary?{query}", headers=AUTH)
    assert answer.status_code == 422


# --- retention -------------------------------------------------------------------------------------


def test_retention_deletes_finished_deliveries_and_events_past_the_retention_only(app, client) -> None:
    hook, off = create(client), create(client)
    now = DAY + timedelta(days=61)
    old_delivered = add_deliveries(app, hook["id"], 3, status="delivered")
    old_failed = add_deliveries(app, hook["id"], 2, status="failed")
    old_retrying = add_deliveries(app, hook["id"], 1, status="retrying")
    recent = add_deliveries(app, hook["id"], 2, status="failed", start=now - timedelta(days=59))
    retried_lately = add_deliveries(app, hook["id"], 1, status="failed")
    off_pending = add_deliveries(app, off["id"], 1, status="pending")
    for delivery_id in old_delivered + recent:
        add_attempts(app, delivery_id, hook["id"], [(DAY, 10, True)])
    with services(app).db.session(write=True) as session:
        session.execute(update(EventDelivery).where(EventDelivery.id == retried_lately[0])
                        .values(updated_at=now - timedelta(days=1)))
        session.execute(update(Subscription).where(Subscription.id == off["id"])
                        .values(enabled=False, disabled_reason="gone"))
        orphan = Event(id=new_event_id(), type="reply.sent", channel_id=None, data={}, created_at=DAY)
        fresh_orphan = Event(id=new_event_id(), type="reply.sent", channel_id=None, data={}, created_at=now)
        session.add_all([orphan, fresh_orphan])  # their subscription was deleted
        session.commit()

    deleted = purge_expired_events(services(app).db, now, 60, time.monotonic() + 30)

    assert deleted == {"event deliveries": 6, "events": 7}
    left = {d.id for d in stored(app, EventDelivery)}
    assert left == {*old_retrying, *recent, *retried_lately}
    assert not left & {*old_delivered, *old_failed, *off_pending}  # a disabled webhook's pending one too
    assert {e.id for e in stored(app, Event)} == {
        fresh_orphan.id, *(d.event_id for d in stored(app, EventDelivery))}
    assert count(app, EventAttempt) == 2  # the recent deliveries' attempts
    assert purge_expired_events(services(app).db, now, 60, time.monotonic() + 30) == {
        "event deliveries": 0, "events": 0}


def test_retention_works_in_batches_and_stops_at_its_time_budget(app, client, monkeypatch) -> None:
    from app.usecases import subscriptions

    monkeypatch.setattr(subscriptions, "PURGE_BATCH", 2)
    hook = create(client)
    add_deliveries(app, hook["id"], 5, status="delivered", step=timedelta(seconds=1))
    now = DAY + timedelta(days=100)

    assert purge_expired_events(services(app).db, now, 60, time.monotonic() - 1) == {
        "event deliveries": 0, "events": 0}
    assert purge_expired_events(services(app).db, now, 60, time.monotonic() + 30) == {
        "event deliveries": 5, "events": 5}


# --- the CLI ---------------------------------------------------------------------------------------


def test_cli_create_update_and_show_give_what_the_api_gives(app, client, channel) -> None:
    created = cli_json(app, "create", "--url", HOOK_URL, "--event", "message.received", "--event", "reply.sent",
                       "--channel", channel["id"], "--description", "monitoring", "--disabled")

    assert created["secret"].startswith("whsec_")
    assert (created["events"], created["channels"], created["enabled"], created["disabled_reason"]) == (
        ["message.received", "reply.sent"], [channel["id"]], False, "operator")
    over_api = client.get(f"/api/webhooks/{created['id']}", headers=AUTH).json
    assert over_api == cli_json(app, "show", created["id"]) == {k: v for k, v in created.items() if k != "secret"}
    updated = cli_json(app, "update", created["id"], "--all-channels", "--event", "channel.deleted", "--enable",
                       "--description", "")
    assert (updated["channels"], updated["events"], updated["enabled"], updated["description"]) == (
        [], ["channel.deleted"], True, None)
    assert updated == client.get(f"/api/webhooks/{created['id']}", headers=AUTH).json
    assert cli_json(app, "list") == client.get("/api/webhooks", headers=AUTH).json


def test_cli_errors_are_the_apis_json_on_stderr(app) -> None:
    refused = cli(app, "create", "--url", "ftp://x.example/", "--event", "reply.sent")
    missing = cli(app, "show", "whk_nope")

    assert refused.exit_code == 1 and json.loads(refused.stderr)["fields"].keys() == {"url"}
    assert missing.exit_code == 1 and json.loads(missing.stderr)["error"] == "unknown_webhook"
    assert cli(app, "create", "--url", HOOK_URL, "--event", "reply.lost").exit_code == 2  # click's choice
