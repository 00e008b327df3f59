"""SPEC B12: platform callbacks, verified by their HASH (HMAC-SHA256 of the raw body, A8), recorded
per Desk org as installations; an uninstall disables the org's channels and a later install enables
exactly those again; `GET /api/installations` and `installation list` show them."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select, text
from werkzeug.test import TestResponse

from app.store.models import Channel, Installation
from app.usecases.channels import set_enabled
from tests.conftest import ADMIN_TOKEN
from tests.support import desk_pull_body, services
from tests.test_openapi import DocumentedClient, fetch_document

EXTENSION_SECRET = "extension-secret-from-the-plugin-manifest"
ORG = "60012345"
OTHER_ORG = "60099999"
CONTEXT = "eyJ0eXAiOi.SECURITY-CONTEXT-OF-THE-CALLBACK.c2ln"
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def desk_hash(body: bytes, secret: str = EXTENSION_SECRET) -> str:
    """The HASH Desk sends (our reading of A7/A8), computed here independently of the app."""
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def callback(client: FlaskClient, event: str, body: Any = None, *, org: str = ORG, context: str | None = CONTEXT,
             hash_header: str | None = "valid") -> TestResponse:
    """POST a callback; `body` as bytes is sent as is, else Desk's shape for the event and org."""
    if body is None:
        body = {"event": event, "orgId": org, **({"securityContext": context} if context else {})}
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if hash_header == "valid":
        headers["HASH"] = desk_hash(raw)
    elif hash_header is not None:
        headers["HASH"] = hash_header
    return client.post(f"/desk/callbacks/{event}", data=raw, headers=headers)


def pull(client: FlaskClient, channel: dict[str, Any], org: str = ORG) -> TestResponse:
    return client.post(f"/desk/pull?orgId={org}", json=desk_pull_body(channel))


def installations_in_db(app: Flask) -> list[Installation]:
    with services(app).db.session() as session:
        return list(session.scalars(select(Installation)))


def channel_row(app: Flask, channel_id: str) -> Channel:
    with services(app).db.session() as session:
        return session.scalars(select(Channel).where(Channel.id == channel_id)).one()


@pytest.fixture
def app(make_app: Callable[..., Flask]) -> Flask:
    """The application with the extension's secret set: callbacks are on."""
    return make_app(DESK_EXTENSION_SECRET=EXTENSION_SECRET)


# ---------------------------------------------------------------- the HASH


def test_install_with_a_valid_hash_is_recorded_as_an_installed_org(app: Flask, client: FlaskClient) -> None:
    answer = callback(client, "onInstall")

    assert answer.status_code == 200, answer.json
    assert answer.json == {"ok": True}
    (installation,) = installations_in_db(app)
    assert (installation.org_id, installation.status, installation.last_event) == (ORG, "installed", "onInstall")
    assert installation.installed_at is not None and installation.uninstalled_at is None


@pytest.mark.parametrize("presented", [None, "", "0" * 64, "not-hex", desk_hash(b"{}"),
                                       desk_hash(b"x", secret="another secret")])
def test_a_missing_or_wrong_hash_is_401_and_records_nothing(
    app: Flask, client: FlaskClient, channel: dict[str, Any], presented: str | None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert pull(client, channel).status_code == 200  # the channel belongs to ORG (recorded orgId)

    with caplog.at_level(logging.WARNING):
        answer = callback(client, "onUninstall", hash_header=presented)

    assert answer.status_code == 401
    assert answer.mimetype == "application/json"
    assert answer.json["error"] in ("missing_hash", "invalid_hash")
    assert installations_in_db(app) == []
    row = channel_row(app, channel["id"])
    assert row.enabled and row.desk_context is None
    refusals = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(refusals) == 1
    assert "HASH" in refusals[0].getMessage()
    if presented:
        assert presented not in caplog.text


def test_the_hash_covers_the_raw_bytes_so_a_reformatted_body_is_refused(app: Flask, client: FlaskClient) -> None:
    signed = json.dumps({"event": "onInstall", "orgId": ORG}).encode()
    reformatted = json.dumps({"event": "onInstall", "orgId": ORG}, indent=2).encode()

    answer = client.post("/desk/callbacks/onInstall", data=reformatted, headers={"HASH": desk_hash(signed)})

    assert answer.status_code == 401
    assert installations_in_db(app) == []


def test_callbacks_are_404_json_when_the_extension_secret_is_unset(make_app: Callable[..., Flask]) -> None:
    client = make_app().test_client()

    answer = callback(client, "onInstall")

    assert answer.status_code == 404
    assert answer.mimetype == "application/json"
    assert answer.json["error"] == "not_found"


@pytest.mark.parametrize("event", ["onUpdate", "onConfigParamAdd", "onConfigParamDelete", "onConfigParamChange",
                                   "onZohoAuthorise", "onDeskAuthorise", "onTPAAuthorise"])
def test_every_event_but_uninstall_and_revoke_records_an_installed_org(
    app: Flask, client: FlaskClient, event: str
) -> None:
    assert callback(client, "onUninstall").status_code == 200

    assert callback(client, event).status_code == 200

    (installation,) = installations_in_db(app)
    assert (installation.status, installation.last_event) == ("installed", event)


# ---------------------------------------------------------------- the body


@pytest.mark.parametrize("raw", [b"not json", b"[1, 2]", b'"onInstall"', b""])
def test_a_signed_body_that_is_not_a_json_object_is_400(app: Flask, client: FlaskClient, raw: bytes) -> None:
    answer = callback(client, "onInstall", raw)

    assert answer.status_code == 400
    assert answer.json["error"] == "invalid_json"
    assert installations_in_db(app) == []


@pytest.mark.parametrize("org_id", [None, "", "a b", "x" * 65, True, 1.5, {"id": 1}])
def test_a_missing_or_malformed_org_id_is_422_naming_it(app: Flask, client: FlaskClient, org_id: Any) -> None:
    body: dict[str, Any] = {"event": "onInstall", "securityContext": CONTEXT}
    if org_id is not None:
        body["orgId"] = org_id

    answer = callback(client, "onInstall", body)

    assert answer.status_code == 422
    assert set(answer.json["fields"]) == {"orgId"}
    assert installations_in_db(app) == []


def test_a_numeric_org_id_and_extra_fields_are_accepted(app: Flask, client: FlaskClient) -> None:
    body = {"event": "onInstall", "orgId": 60012345, "securityContext": CONTEXT, "appId": "x", "extra": [1]}

    assert callback(client, "onInstall", body).status_code == 200

    assert [i.org_id for i in installations_in_db(app)] == ["60012345"]


def test_an_unknown_event_is_accepted_logged_and_records_nothing(
    app: Flask, client: FlaskClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        answer = callback(client, "onSomethingNew")

    assert answer.status_code == 200
    assert installations_in_db(app) == []
    assert any("onSomethingNew" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)


def test_the_path_names_the_event_and_another_one_in_the_body_is_logged(
    app: Flask, client: FlaskClient, caplog: pytest.LogCaptureFixture
) -> None:
    callback(client, "onInstall")

    with caplog.at_level(logging.WARNING):
        answer = callback(client, "onUninstall", {"event": "onInstall", "orgId": ORG})

    assert answer.status_code == 200
    (installation,) = installations_in_db(app)
    assert (installation.status, installation.last_event) == ("uninstalled", "onUninstall")
    assert any("'onInstall'" in r.getMessage() and "'onUninstall'" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------- securityContext


def test_the_security_context_is_stored_encrypted_and_becomes_the_org_channels_newest(
    app: Flask, client: FlaskClient, new_channel: Callable[..., dict[str, Any]]
) -> None:
    configured = new_channel(org_id=ORG)
    recorded = new_channel()  # no org configured: its Desk org is the orgId its pulls carry
    other = new_channel(org_id=OTHER_ORG)
    assert pull(client, recorded).status_code == 200
    assert client.post(f"/desk/pull?orgId={OTHER_ORG}&securityContext=theirs",
                       json=desk_pull_body(other)).status_code == 200

    assert callback(client, "onInstall").status_code == 200

    keyring = services(app).keyring
    (installation,) = installations_in_db(app)
    assert installation.security_context and CONTEXT not in installation.security_context
    assert keyring.decrypt(installation.security_context) == CONTEXT
    for created in (configured, recorded):
        row = channel_row(app, created["id"])
        assert keyring.decrypt(row.desk_context) == CONTEXT
        assert row.desk_context_digest == keyring.digest(CONTEXT) and row.desk_context_at is not None
    assert keyring.decrypt(channel_row(app, other["id"]).desk_context) == "theirs"
    with services(app).db.read() as conn:
        dumped = " ".join(str(value) for table in ("installations", "channels")
                          for row in conn.execute(text(f"SELECT * FROM {table}")) for value in row)
    assert CONTEXT not in dumped


def test_a_later_pull_with_its_own_context_is_the_channels_newest_again(
    app: Flask, client: FlaskClient, new_channel: Callable[..., dict[str, Any]]
) -> None:
    created = new_channel(org_id=ORG)
    callback(client, "onInstall")

    answer = client.post(f"/desk/pull?orgId={ORG}&securityContext={quote('from-a-pull')}",
                         json=desk_pull_body(created))

    assert answer.status_code == 200
    assert services(app).keyring.decrypt(channel_row(app, created["id"]).desk_context) == "from-a-pull"


# ---------------------------------------------------------------- uninstall and install


def test_uninstall_disables_the_org_channels_and_a_later_install_enables_only_those(
    app: Flask, client: FlaskClient, new_channel: Callable[..., dict[str, Any]]
) -> None:
    configured = new_channel(org_id=ORG, name="configured")
    recorded = new_channel(name="recorded")
    disabled_by_hand = new_channel(org_id=ORG, name="disabled by an operator")
    elsewhere = new_channel(org_id=OTHER_ORG, name="another org")
    assert pull(client, recorded).status_code == 200
    set_enabled(services(app).db, disabled_by_hand["id"], False)
    callback(client, "onInstall")

    assert callback(client, "onUninstall", context=None).status_code == 200

    (installation,) = installations_in_db(app)
    assert installation.status == "uninstalled" and installation.uninstalled_at is not None
    for created in (configured, recorded, disabled_by_hand):
        answer = pull(client, created)
        assert (answer.status_code, answer.json["error"]) == (403, "channel_disabled")
    assert pull(client, elsewhere, OTHER_ORG).status_code == 200

    assert callback(client, "onInstall").status_code == 200

    assert pull(client, configured).status_code == 200
    assert pull(client, recorded).status_code == 200
    assert pull(client, disabled_by_hand).status_code == 403
    (installation,) = installations_in_db(app)
    assert installation.status == "installed" and installation.installed_at > installation.uninstalled_at


def test_a_channel_an_operator_disables_while_the_org_is_uninstalled_stays_disabled_after_the_install(
    app: Flask, client: FlaskClient, new_channel: Callable[..., dict[str, Any]]
) -> None:
    kept_off = new_channel(org_id=ORG)
    comes_back = new_channel(org_id=ORG)
    callback(client, "onUninstall")

    # The operator turns it on to test, then off again: from then on it is the operator's decision.
    set_enabled(services(app).db, kept_off["id"], True)
    set_enabled(services(app).db, kept_off["id"], False)
    callback(client, "onInstall")

    assert pull(client, kept_off).status_code == 403
    assert pull(client, comes_back).status_code == 200


def test_a_tpa_revoke_does_not_install_an_uninstalled_org_again(app: Flask, client: FlaskClient, channel) -> None:
    callback(client, "onUninstall")

    assert callback(client, "onTPARevoke").status_code == 200

    (installation,) = installations_in_db(app)
    assert (installation.status, installation.last_event) == ("uninstalled", "onTPARevoke")


def test_an_org_first_heard_of_by_a_tpa_revoke_is_installed_without_an_install_time(
    app: Flask, client: FlaskClient
) -> None:
    callback(client, "onTPARevoke")

    (installation,) = installations_in_db(app)
    assert (installation.status, installation.installed_at) == ("installed", None)


# ---------------------------------------------------------------- listing


def listed(client: FlaskClient, query: str = "") -> dict[str, Any]:
    answer = client.get(f"/api/installations{query}", headers=AUTH)
    assert answer.status_code == 200, answer.json
    return answer.json


def test_installations_are_listed_alike_by_the_api_and_the_cli_with_their_channels(
    app: Flask, client: FlaskClient, new_channel: Callable[..., dict[str, Any]]
) -> None:
    first = new_channel(org_id=ORG)
    second = new_channel()
    assert pull(client, second).status_code == 200
    callback(client, "onInstall")
    callback(client, "onUninstall", org=OTHER_ORG)

    api = listed(client)
    cli = app.test_cli_runner().invoke(args=["installation", "list"])

    assert cli.exit_code == 0, cli.output
    assert json.loads(cli.output) == api
    assert api["next_cursor"] is None
    assert [(i["org_id"], i["status"], i["channels"]) for i in api["items"]] == [
        (OTHER_ORG, "uninstalled", []), (ORG, "installed", [first["id"], second["id"]])]
    assert set(api["items"][1]) == {"org_id", "status", "installed_at", "uninstalled_at", "last_event",
                                    "last_event_at", "channels"}
    assert CONTEXT not in json.dumps(api)


def test_installations_page_newest_first_with_a_cursor(app: Flask, client: FlaskClient) -> None:
    orgs = [f"7000{n}" for n in range(5)]
    for org in orgs:
        callback(client, "onInstall", org=org)

    seen, cursor = [], ""
    for _ in range(5):
        page = listed(client, f"?limit=2{cursor}")
        seen += [item["org_id"] for item in page["items"]]
        if page["next_cursor"] is None:
            break
        cursor = f"&cursor={page['next_cursor']}"
    cli = app.test_cli_runner().invoke(args=["installation", "list", "--limit", "2"])

    assert seen == orgs[::-1]
    assert [item["org_id"] for item in json.loads(cli.output)["items"]] == orgs[:2:-1]


@pytest.mark.parametrize("query", ["?limit=0", "?limit=251", "?limit=x", "?cursor=bm9wZQ", "?colour=red"])
def test_a_bad_list_query_is_422(app: Flask, client: FlaskClient, query: str) -> None:
    answer = client.get(f"/api/installations{query}", headers=AUTH)

    assert answer.status_code == 422
    assert answer.json["error"] == "validation_error"


def test_the_cli_reports_a_bad_cursor_as_one_json_line_and_exit_1(app: Flask) -> None:
    result = app.test_cli_runner().invoke(args=["installation", "list", "--cursor", "nope"])

    assert result.exit_code == 1
    assert json.loads(result.output.strip().splitlines()[-1])["fields"] == {"cursor": ["Not a cursor this API gave."]}


def test_the_installations_list_needs_the_admin_token(client: FlaskClient) -> None:
    assert client.get("/api/installations").status_code == 401


def test_installations_answers_conform_to_the_documented_schema(app: Flask, client: FlaskClient, channel) -> None:
    api = DocumentedClient(client, fetch_document(client))
    callback(client, "onInstall")
    callback(client, "onTPARevoke", org=OTHER_ORG)

    page = api.call("GET", "/api/installations", 200, path="/api/installations?limit=1")
    api.call("GET", "/api/installations", 200, path=f"/api/installations?cursor={page.json['next_cursor']}")
    api.call("GET", "/api/installations", 422, path="/api/installations?limit=0")
    api.call("GET", "/api/installations", 401, headers={})


# ---------------------------------------------------------------- logs


def test_logs_hold_no_security_context_hash_or_token(
    app: Flask, client: FlaskClient, channel: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    body = json.dumps({"event": "onInstall", "orgId": ORG, "securityContext": CONTEXT}).encode()
    good_hash = desk_hash(body)

    pull(client, channel)
    callback(client, "onInstall", body)
    callback(client, "onUninstall", hash_header="f" * 64)
    callback(client, "onNothing")
    callback(client, "onUninstall", {"event": "other", "orgId": ORG, "securityContext": CONTEXT})
    callback(client, "onInstall")

    logged = "\n".join(f"{r.getMessage()} {r.args!r} {r.__dict__!r}" for r in caplog.records)
    assert "callback" in logged  # the callbacks were logged, without what follows
    for secret in (CONTEXT, good_hash, "f" * 64, EXTENSION_SECRET, channel["desk"]["channelToken"]):
        assert secret not in logged
