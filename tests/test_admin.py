"""SPEC B7: channels created, listed, disabled and enabled through the CLI and the admin API."""

from __future__ import annotations

import json
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import select

from app.keyring import hash_token
from app.store.models import Channel
from tests.conftest import ADMIN_TOKEN, services

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
PUBLIC_URL = "https://93.184.216.34/hooks/deskbridge"


def cli(app: Flask, *args: str) -> Any:
    return app.test_cli_runner().invoke(args=["channel", *args])


def assert_creation_output(created: dict[str, Any], outbound_url: str, name: str | None, org_id: str | None) -> None:
    assert set(created) == {"id", "name", "org_id", "desk", "inbound", "outbound"}
    assert created["id"].startswith("ch_") and len(created["id"]) > 10
    assert created["name"] == name and created["org_id"] == org_id
    assert created["desk"]["channelId"] == created["id"]
    assert len(created["desk"]["channelToken"]) >= 40
    assert created["inbound"]["path"] == f"/inbound/{created['id']}"
    assert created["inbound"]["secret"].startswith("whsec_")
    assert created["outbound"]["url"] == outbound_url
    assert created["outbound"]["secret"].startswith("whsec_")
    assert created["inbound"]["secret"] != created["outbound"]["secret"]


def test_cli_create_prints_credentials_once_and_stores_only_hash_and_ciphertext(app):
    result = cli(
        app, "create", "--connector", "webhook", "--outbound-url", PUBLIC_URL, "--name", "SMS", "--org-id", "42"
    )
    assert result.exit_code == 0, result.output
    created = json.loads(result.output)
    assert_creation_output(created, PUBLIC_URL, "SMS", "42")
    with services(app).db.session() as session:
        row = session.execute(select(Channel)).scalar_one()
    assert row.desk_token_hash == hash_token(created["desk"]["channelToken"])
    assert created["inbound"]["secret"] not in str(row.secrets)
    assert services(app).keyring.decrypt(row.secrets["inbound_secret"]) == created["inbound"]["secret"]
    assert services(app).keyring.decrypt(row.secrets["outbound_secret"]) == created["outbound"]["secret"]


def test_cli_create_without_name_or_org(app):
    result = cli(app, "create", "--connector", "webhook", "--outbound-url", PUBLIC_URL)
    assert result.exit_code == 0, result.output
    assert_creation_output(json.loads(result.output), PUBLIC_URL, None, None)


@pytest.mark.parametrize("url", ["ftp://example.com/x", "http://127.0.0.1/x", "http://10.1.2.3/", "not a url"])
def test_cli_create_refuses_bad_outbound_url(make_app, url):
    app = make_app(ALLOW_PRIVATE_OUTBOUND="false")
    result = app.test_cli_runner().invoke(args=["channel", "create", "--connector", "webhook", "--outbound-url", url])
    assert result.exit_code == 1
    error = json.loads(result.stderr)
    assert error["error"] == "validation_error" and "outbound_url" in error["fields"]
    assert json.loads(cli(app, "list").output) == {"channels": []}


def test_cli_create_rejects_unknown_connector(app):
    result = cli(app, "create", "--connector", "telepathy", "--outbound-url", PUBLIC_URL)
    assert result.exit_code == 2
    assert "telepathy" in result.output


def test_cli_list_shows_state_and_sync_figures_without_secrets(app, channel):
    result = cli(app, "list")
    assert result.exit_code == 0, result.output
    (listed,) = json.loads(result.output)["channels"]
    assert listed["id"] == channel["id"]
    assert listed["state"] == "enabled"
    assert (listed["last_seq"], listed["acked_seq"], listed["last_pull_at"]) == (0, 0, None)
    for secret in (channel["desk"]["channelToken"], channel["inbound"]["secret"], channel["outbound"]["secret"]):
        assert secret not in result.output
    assert "secret" not in result.output and "token" not in result.output.lower()


def test_cli_disable_and_enable(app, channel):
    assert json.loads(cli(app, "disable", channel["id"]).output)["state"] == "disabled"
    assert json.loads(cli(app, "list").output)["channels"][0]["state"] == "disabled"
    assert json.loads(cli(app, "enable", channel["id"]).output)["state"] == "enabled"
    assert json.loads(cli(app, "list").output)["channels"][0]["state"] == "enabled"


@pytest.mark.parametrize("command", ["disable", "enable"])
def test_cli_disable_or_enable_of_unknown_channel_fails(app, command):
    result = cli(app, command, "ch_nope")
    assert result.exit_code == 1
    assert "unknown_channel" in result.output


# ---------------------------------------------------------------- admin API


def test_api_create_answers_201_with_the_cli_shape(client):
    answer = client.post(
        "/api/channels",
        json={"connector": "webhook", "outbound_url": PUBLIC_URL, "name": "chat", "org_id": "7"},
        headers=AUTH,
    )
    assert answer.status_code == 201, answer.json
    assert_creation_output(answer.json, PUBLIC_URL, "chat", "7")


def test_api_list_has_no_secrets(client, channel):
    answer = client.get("/api/channels", headers=AUTH)
    assert answer.status_code == 200
    assert [c["id"] for c in answer.json["channels"]] == [channel["id"]]
    text = answer.get_data(as_text=True)
    for secret in (channel["desk"]["channelToken"], channel["inbound"]["secret"], channel["outbound"]["secret"]):
        assert secret not in text


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": ADMIN_TOKEN},
        {"Authorization": f"Basic {ADMIN_TOKEN}"},
        {"Authorization": "Bearer "},
    ],
)
@pytest.mark.parametrize("method", ["get", "post"])
def test_api_without_the_right_bearer_token_is_401(client, headers, method):
    answer = getattr(client, method)(
        "/api/channels", json={"connector": "webhook", "outbound_url": PUBLIC_URL}, headers=headers
    )
    assert answer.status_code == 401
    assert answer.json["error"] == "unauthorized"
    assert client.get("/api/channels", headers=AUTH).json == {"channels": []}


@pytest.mark.parametrize("method", ["get", "post"])
def test_api_is_404_when_admin_token_is_unset(make_app, method):
    client = make_app(ADMIN_TOKEN="").test_client()
    answer = getattr(client, method)("/api/channels", json={}, headers=AUTH)
    assert answer.status_code == 404
    assert answer.json["error"] == "not_found"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"outbound_url": PUBLIC_URL}, "connector"),
        ({"connector": "webhook"}, "outbound_url"),
        ({"connector": "sms", "outbound_url": PUBLIC_URL}, "connector"),
        ({"connector": "webhook", "outbound_url": PUBLIC_URL, "colour": "red"}, "colour"),
        ({"connector": "webhook", "outbound_url": "gopher://x"}, "outbound_url"),
        ({"connector": "webhook", "outbound_url": PUBLIC_URL, "name": 5}, "name"),
        ({"connector": "webhook", "outbound_url": PUBLIC_URL, "org_id": ""}, "org_id"),
        ({"connector": "webhook", "outbound_url": PUBLIC_URL, "name": "a\x00b"}, "name"),
    ],
)
def test_api_create_rejects_invalid_input_with_field_errors(client, body, field):
    answer = client.post("/api/channels", json=body, headers=AUTH)
    assert answer.status_code == 422
    assert answer.json["error"] == "validation_error"
    assert field in answer.json["fields"]
    assert client.get("/api/channels", headers=AUTH).json == {"channels": []}


def test_api_create_with_a_body_that_is_not_an_object_is_400(client):
    answer = client.post("/api/channels", data="[]", content_type="application/json", headers=AUTH)
    assert answer.status_code == 400
    assert answer.json["error"] == "invalid_json"


def test_api_disable_and_enable_answer_the_channel_as_listed(client, channel):
    disabled = client.post(f"/api/channels/{channel['id']}/disable", headers=AUTH)
    assert disabled.status_code == 200, disabled.json
    assert (disabled.json["id"], disabled.json["state"]) == (channel["id"], "disabled")
    assert client.get("/api/channels", headers=AUTH).json["channels"][0]["state"] == "disabled"
    enabled = client.post(f"/api/channels/{channel['id']}/enable", headers=AUTH)
    assert (enabled.status_code, enabled.json["state"]) == (200, "enabled")


@pytest.mark.parametrize("action", ["disable", "enable"])
def test_api_disable_or_enable_of_an_unknown_channel_is_404(client, action):
    answer = client.post(f"/api/channels/ch_nope/{action}", headers=AUTH)
    assert answer.status_code == 404
    assert answer.json["error"] == "unknown_channel"


def test_api_disable_needs_the_bearer_token(client, channel):
    assert client.post(f"/api/channels/{channel['id']}/disable").status_code == 401


def test_a_private_outbound_url_is_refused_with_the_setting_that_allows_it_named(make_app):
    app = make_app(ALLOW_PRIVATE_OUTBOUND="false")
    answer = app.test_client().post(
        "/api/channels", json={"connector": "webhook", "outbound_url": "http://10.1.2.3/hook"}, headers=AUTH
    )
    assert answer.status_code == 422
    (reason,) = answer.json["fields"]["outbound_url"]
    assert "not public" in reason and "ALLOW_PRIVATE_OUTBOUND" in reason
