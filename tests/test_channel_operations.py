"""SPEC B10 channel operations through the CLI and the admin API: show with health, update,
rotate (no message lost, the old desk token locked out at once), delete with confirmation."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select, update

from app.store.models import Channel, Conversation, InboxMessage, Reply
from app.usecases.clock import utcnow
from tests.conftest import ADMIN_TOKEN
from tests.receiver import Answer, Receiver
from tests.support import desk_pull_body, desk_push_body, services, signed_headers

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
HEALTH = {"desk_org_id", "backlog", "oldest_waiting_at", "acked_at", "replies_failed_24h", "status"}


def cli(app: Flask, *args: str) -> Any:
    result = app.test_cli_runner().invoke(args=["channel", *args])
    return result


def cli_json(app: Flask, *args: str) -> Any:
    result = cli(app, *args)
    assert result.exit_code == 0, (result.output, result.stderr)
    return json.loads(result.output)


def send(client: FlaskClient, channel: dict[str, Any], message_id: str, secret: str | None = None) -> Any:
    body = json.dumps({"id": message_id, "conversation_id": "c1", "text": f"text {message_id}"})
    headers = signed_headers(secret or channel["inbound"]["secret"], body, msg_id=f"evt_{message_id}")
    return client.post(channel["inbound"]["path"], data=body, headers=headers)


def pulled_ids(client: FlaskClient, channel: dict[str, Any], state: str | None = None) -> tuple[list[str], str]:
    answer = client.post("/desk/pull?orgId=42", json=desk_pull_body(channel, state))
    assert answer.status_code == 200, answer.json
    return [t["extId"] for t in answer.json["data"]["threads"]], answer.json.get("channelState", state)


# --- show and health -----------------------------------------------------------------------------


def test_show_gives_the_same_channel_with_health_on_the_cli_and_the_api(app, client, channel) -> None:
    over_api = client.get(f"/api/channels/{channel['id']}", headers=AUTH)
    over_cli = cli_json(app, "show", channel["id"])

    assert over_api.status_code == 200
    assert over_api.json == over_cli
    assert set(over_cli) >= HEALTH
    assert (over_cli["status"], over_cli["backlog"], over_cli["oldest_waiting_at"]) == ("ok", 0, None)
    assert over_cli["replies_failed_24h"] == 0
    text = json.dumps(over_cli)
    for secret in (channel["desk"]["channelToken"], channel["inbound"]["secret"], channel["outbound"]["secret"]):
        assert secret not in text


def age_inbox(app: Flask, channel_id: str, minutes: int) -> None:
    with services(app).db.session(write=True) as session:
        session.execute(update(InboxMessage).where(InboxMessage.channel_id == channel_id)
                        .values(received_at=utcnow() - timedelta(minutes=minutes)))
        session.commit()


def test_a_channel_with_messages_waiting_longer_than_stall_minutes_is_stalled_and_a_pull_makes_it_ok(
    make_app, new_channel
) -> None:
    app = make_app(STALL_MINUTES="15")
    client = app.test_client()
    channel = new_channel()
    for n in range(3):
        assert send(client, channel, f"m{n}").status_code == 200
    show = client.get(f"/api/channels/{channel['id']}", headers=AUTH).json
    assert (show["status"], show["backlog"]) == ("ok", 3)  # waiting, but not for long

    age_inbox(app, channel["id"], 20)
    stalled = client.get(f"/api/channels/{channel['id']}", headers=AUTH).json
    assert (stalled["status"], stalled["backlog"]) == ("stalled", 3)
    assert stalled["oldest_waiting_at"] is not None

    _, state = pulled_ids(client, channel)
    pulled_ids(client, channel, state)  # Desk sends the state back: the messages are acknowledged
    recovered = cli_json(app, "show", channel["id"])
    assert (recovered["status"], recovered["backlog"], recovered["oldest_waiting_at"]) == ("ok", 0, None)
    assert recovered["acked_at"] is not None


def test_a_disabled_channel_shows_disabled(app, client, channel) -> None:
    cli_json(app, "disable", channel["id"])
    assert client.get(f"/api/channels/{channel['id']}", headers=AUTH).json["status"] == "disabled"


def test_failed_replies_of_the_last_24_hours_are_counted(app, client, hooked, receiver: Receiver) -> None:
    receiver.script(Answer(400, {"message": "no"}))
    assert client.post("/desk/push?orgId=1", json=desk_push_body(hooked)).status_code == 422
    assert cli_json(app, "show", hooked["id"])["replies_failed_24h"] == 1


@pytest.mark.parametrize("path", ["/api/channels/ch_nope", "/api/channels/ch_nope/rotate"])
def test_operations_on_an_unknown_channel_are_404(client, path) -> None:
    answer = client.get(path, headers=AUTH) if path.endswith("nope") else client.post(
        path, json={"secret": "inbound"}, headers=AUTH)
    assert answer.status_code == 404
    assert answer.json["error"] == "unknown_channel"


# --- update --------------------------------------------------------------------------------------


def test_update_changes_name_org_and_outbound_url_over_the_api(client, channel, receiver: Receiver) -> None:
    answer = client.patch(f"/api/channels/{channel['id']}", headers=AUTH,
                          json={"name": "renamed", "org_id": "42", "outbound_url": receiver.url})
    assert answer.status_code == 200, answer.json
    assert (answer.json["name"], answer.json["org_id"], answer.json["outbound"]["url"]) == (
        "renamed", "42", receiver.url)
    assert set(answer.json) >= HEALTH
    # The new URL is where replies go now.
    receiver.secret = channel["outbound"]["secret"]
    receiver.script(Answer(200, {"id": "x"}))
    assert client.post("/desk/push?orgId=42", json=desk_push_body(channel)).status_code == 200
    assert receiver.received[0].signature_valid


def test_update_over_the_cli_gives_the_api_shape(app, client, channel) -> None:
    changed = cli_json(app, "update", channel["id"], "--name", "SMS 2", "--org-id", "")
    assert (changed["name"], changed["org_id"]) == ("SMS 2", None)
    assert changed == client.get(f"/api/channels/{channel['id']}", headers=AUTH).json


@pytest.mark.parametrize(
    ("body", "field"),
    [({"outbound_url": "ftp://x"}, "outbound_url"), ({"colour": "red"}, "colour"), ({"name": 5}, "name"),
     ({"org_id": ""}, "org_id")],
)
def test_update_refuses_invalid_changes_and_changes_nothing(client, channel, body, field) -> None:
    before = client.get(f"/api/channels/{channel['id']}", headers=AUTH).json
    answer = client.patch(f"/api/channels/{channel['id']}", headers=AUTH, json=body)
    assert answer.status_code == 422
    assert field in answer.json["fields"]
    assert client.get(f"/api/channels/{channel['id']}", headers=AUTH).json == before


def test_update_refuses_a_private_outbound_url_by_the_address_policy(make_app, new_channel) -> None:
    app = make_app(ALLOW_PRIVATE_OUTBOUND="false")
    channel = new_channel(outbound_url="https://93.184.216.34/hook")
    answer = app.test_client().patch(f"/api/channels/{channel['id']}", headers=AUTH,
                                     json={"outbound_url": "http://127.0.0.1:9/x"})
    assert answer.status_code == 422 and "outbound_url" in answer.json["fields"]


# --- rotate --------------------------------------------------------------------------------------


def test_rotated_inbound_secret_overlaps_so_that_no_message_is_lost(app, client, channel) -> None:
    old = channel["inbound"]["secret"]
    assert send(client, channel, "before", old).status_code == 200

    rotated = client.post(f"/api/channels/{channel['id']}/rotate", headers=AUTH, json={"secret": "inbound"})

    assert rotated.status_code == 200, rotated.json
    assert rotated.json["secret"] == "inbound" and rotated.json["value"].startswith("whsec_")
    assert rotated.json["previous_valid_until"] is not None
    new = rotated.json["value"]
    # The external service switches some time later: both secrets verify meanwhile.
    assert send(client, channel, "during-old", old).status_code == 200
    assert send(client, channel, "during-new", new).status_code == 200
    assert send(client, channel, "wrong", "whsec_" + "B" * 43 + "=").status_code == 401
    ids, _ = pulled_ids(client, channel)
    assert ids == ["before", "during-old", "during-new"]


def test_with_no_overlap_the_old_inbound_secret_stops_at_once(make_app, new_channel) -> None:
    app = make_app(SECRET_OVERLAP_SECONDS="0")
    client = app.test_client()
    channel = new_channel()
    new = cli_json(app, "rotate", channel["id"], "--secret", "inbound")
    assert new["previous_valid_until"] is None
    assert send(client, channel, "m1").status_code == 401
    assert send(client, channel, "m2", new["value"]).status_code == 200


def test_the_overlap_ends(app, client, channel) -> None:
    rotated = cli_json(app, "rotate", channel["id"], "--secret", "inbound")
    with services(app).db.session(write=True) as session:
        row = session.get(Channel, channel["id"])
        row.settings = {**row.settings, "inbound_previous_until": (utcnow() - timedelta(seconds=1)).isoformat()}
        session.commit()
    assert send(client, channel, "late", channel["inbound"]["secret"]).status_code == 401
    assert send(client, channel, "on-time", rotated["value"]).status_code == 200


def test_a_rotated_desk_token_locks_the_old_one_out_at_once(app, client, channel) -> None:
    rotated = cli_json(app, "rotate", channel["id"], "--secret", "desk-token")

    assert rotated["previous_valid_until"] is None
    assert client.post("/desk/pull?orgId=1", json=desk_pull_body(channel)).status_code == 401
    renewed = {**channel, "desk": {"channelId": channel["id"], "channelToken": rotated["value"]}}
    assert client.post("/desk/pull?orgId=1", json=desk_pull_body(renewed)).status_code == 200


def test_a_rotated_outbound_secret_signs_the_next_delivery(app, client, hooked, receiver: Receiver) -> None:
    rotated = client.post(f"/api/channels/{hooked['id']}/rotate", headers=AUTH, json={"secret": "outbound"}).json
    receiver.secret = rotated["value"]
    receiver.script(Answer(200, {"id": "x"}))

    assert client.post("/desk/push?orgId=1", json=desk_push_body(hooked)).status_code == 200
    assert receiver.received[0].signature_valid


@pytest.mark.parametrize("body", [{"secret": "everything"}, {}, {"secret": "inbound", "also": 1}])
def test_rotating_something_that_is_not_a_secret_is_422(client, channel, body) -> None:
    answer = client.post(f"/api/channels/{channel['id']}/rotate", headers=AUTH, json=body)
    assert answer.status_code == 422
    assert answer.json["fields"]


# --- delete --------------------------------------------------------------------------------------


def counts(app: Flask, channel_id: str) -> tuple[int, ...]:
    with services(app).db.session() as session:
        return tuple(
            session.scalar(select(func.count()).select_from(model).where(model.channel_id == channel_id))
            for model in (InboxMessage, Conversation, Reply)
        )


def test_delete_needs_confirmation_and_then_removes_everything_stored_for_the_channel(
    app, client, hooked, receiver: Receiver
) -> None:
    receiver.script(Answer(200, {"id": "x"}))
    assert send(client, hooked, "m1").status_code == 200
    assert client.post("/desk/push?orgId=1", json=desk_push_body(hooked)).status_code == 200
    assert counts(app, hooked["id"]) == (1, 1, 1)

    refused = client.delete(f"/api/channels/{hooked['id']}", headers=AUTH)
    wrong = client.delete(f"/api/channels/{hooked['id']}?confirm=ch_other", headers=AUTH)
    assert (refused.status_code, refused.json["error"]) == (400, "confirmation_required")
    assert wrong.status_code == 400
    assert counts(app, hooked["id"]) == (1, 1, 1)

    deleted = client.delete(f"/api/channels/{hooked['id']}?confirm={hooked['id']}", headers=AUTH)

    assert deleted.status_code == 204 and deleted.data == b""
    assert counts(app, hooked["id"]) == (0, 0, 0)
    assert client.get(f"/api/channels/{hooked['id']}", headers=AUTH).status_code == 404


def test_cli_delete_without_yes_changes_nothing(app, channel) -> None:
    refused = cli(app, "delete", channel["id"])
    assert refused.exit_code == 1 and "confirmation_required" in refused.stderr
    assert cli_json(app, "show", channel["id"])["id"] == channel["id"]
    assert cli_json(app, "delete", channel["id"], "--yes") == {"deleted": channel["id"]}
    assert cli(app, "show", channel["id"]).exit_code == 1


def test_an_inbound_secret_rotated_while_messages_keep_arriving_loses_none_of_them(app, channel) -> None:
    import threading

    rotation: dict[str, Any] = {}
    rotated = threading.Event()
    statuses: list[int] = []

    def external_service() -> None:
        # Sends throughout: during the rotation, after it with the old secret (it has not
        # switched yet), then with the new one.
        client = app.test_client()
        for n in range(120):
            if n == 60:
                assert rotated.wait(30)
            secret = rotation["value"] if n >= 90 else channel["inbound"]["secret"]
            statuses.append(send(client, channel, f"m{n:03d}", secret).status_code)

    sender = threading.Thread(target=external_service)
    sender.start()
    answer = app.test_client().post(f"/api/channels/{channel['id']}/rotate", headers=AUTH, json={"secret": "inbound"})
    rotation.update(answer.json)
    rotated.set()
    sender.join(60)

    assert answer.status_code == 200
    assert statuses == [200] * 120
    ids: list[str] = []
    state = None
    while True:
        batch, state = pulled_ids(app.test_client(), channel, state)
        if not batch:
            break
        ids += batch
    assert sorted(ids) == [f"m{n:03d}" for n in range(120)]


# --- desk_domain (SPEC B14: the Zoho Desk data centre) ----------------------------------------------


def test_a_channel_is_in_desk_zoho_com_unless_told_otherwise(app, client, channel) -> None:
    assert cli_json(app, "show", channel["id"])["desk_domain"] == "desk.zoho.com"
    created = app.test_cli_runner().invoke(args=["channel", "create", "--connector", "webhook", "--outbound-url",
                                                 "http://127.0.0.1:9/x", "--desk-domain", "Desk.Zoho.EU"])
    assert created.exit_code == 0, created.stderr
    assert cli_json(app, "show", json.loads(created.output)["id"])["desk_domain"] == "desk.zoho.eu"


@pytest.mark.parametrize("value", ["desk.zoho.in", "https://desk.zoho.com.au", "https://127.0.0.1:8443/"])
def test_desk_domain_is_a_host_name_or_an_https_base_url(client, channel, value) -> None:
    answer = client.patch(f"/api/channels/{channel['id']}", headers=AUTH, json={"desk_domain": value})
    assert answer.status_code == 200, answer.json
    assert answer.json["desk_domain"] == value.lower().rstrip("/")


@pytest.mark.parametrize("value", ["", "desk zoho", "ftp://desk.zoho.com", "https://desk.zoho.com/api", "localhost",
                                   "https://u:p@desk.zoho.com", 5])
def test_a_desk_domain_that_is_neither_is_refused(client, channel, value) -> None:
    answer = client.patch(f"/api/channels/{channel['id']}", headers=AUTH, json={"desk_domain": value})
    assert answer.status_code == 422 and "desk_domain" in answer.json["fields"]


def test_a_plain_http_desk_base_url_needs_allow_private_outbound(make_app, new_channel) -> None:
    strict = make_app(ALLOW_PRIVATE_OUTBOUND="false")
    channel = new_channel(outbound_url="https://93.184.216.34/hook")
    refused = strict.test_client().patch(f"/api/channels/{channel['id']}", headers=AUTH,
                                         json={"desk_domain": "http://127.0.0.1:8123"})
    assert refused.status_code == 422
    assert "ALLOW_PRIVATE_OUTBOUND" in refused.json["fields"]["desk_domain"][0]
    relaxed = make_app(ALLOW_PRIVATE_OUTBOUND="true")
    allowed = relaxed.test_client().patch(f"/api/channels/{channel['id']}", headers=AUTH,
                                          json={"desk_domain": "http://127.0.0.1:8123"})
    assert (allowed.status_code, allowed.json["desk_domain"]) == (200, "http://127.0.0.1:8123")
