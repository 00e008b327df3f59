"""SPEC B17: `GET /api/openapi.json` describes the admin API as it is: a valid OpenAPI document,
one operation per admin route of the app (no more, no fewer), no token needed, 404 while
ADMIN_TOKEN is unset; and real answers conform to the schemas it documents."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate as validate_openapi

from app.connectors.fake import FakeConnector, FakeWebhookKind
from app.store.models import Event, EventAttempt, EventDelivery, Reply, ReplyAttempt
from app.usecases.events import new_event_id
from app.web import openapi
from tests.conftest import ADMIN_TOKEN
from tests.support import services

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
DOCUMENT = "/api/openapi.json"
IGNORED_METHODS = {"HEAD", "OPTIONS"}
DAY = datetime(2026, 11, 2, tzinfo=UTC)


def fetch_document(client: FlaskClient) -> dict[str, Any]:
    answer = client.get(DOCUMENT)
    assert answer.status_code == 200, answer.get_data(as_text=True)
    assert answer.mimetype == "application/json"
    return answer.json


def routes_of(app: Flask) -> set[tuple[str, str]]:
    """(OpenAPI path template, method) of every admin route in the app's url_map."""
    return {
        (re.sub(r"<(?:[^<>:]+:)?([^<>:]+)>", r"{\1}", rule.rule), method)
        for rule in app.url_map.iter_rules()
        if rule.rule.startswith("/api/")
        for method in (rule.methods or set()) - IGNORED_METHODS
    }


def described(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {(path, method.upper()) for path, item in document["paths"].items() for method in item}


def resolved(document: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    """A response object, following a $ref to the components."""
    while "$ref" in node and not node["$ref"].startswith("#/components/schemas/"):
        *_, kind, name = node["$ref"].split("/")
        node = document["components"][kind][name]
    return node


def assert_conforms(document: dict[str, Any], schema: dict[str, Any], instance: Any) -> None:
    """instance validates against a schema of the document (JSON Schema 2020-12, as OpenAPI 3.1)."""
    validator = Draft202012Validator({**schema, "components": document["components"]},
                                     format_checker=Draft202012Validator.FORMAT_CHECKER)
    errors = [f"{list(error.absolute_path)}: {error.message}" for error in validator.iter_errors(instance)]
    assert not errors, errors


class DocumentedClient:
    """Sends admin requests and checks each against the document: the request body against the
    documented body, the status among the documented answers, the answer against its schema."""

    def __init__(self, client: FlaskClient, document: dict[str, Any]) -> None:
        self.client = client
        self.document = document
        self.checked: set[tuple[str, str, int]] = set()

    def call(self, method: str, template: str, status: int, *, path: str | None = None, headers: Any = AUTH,
             **kwargs: Any) -> Any:
        operation = self.document["paths"][template][method.lower()]
        if "json" in kwargs:
            body_schema = operation["requestBody"]["content"]["application/json"]["schema"]
            if status < 400:
                assert_conforms(self.document, body_schema, kwargs["json"])
        answer = getattr(self.client, method.lower())(path or template, headers=headers, **kwargs)
        assert answer.status_code == status, answer.get_data(as_text=True)
        assert str(status) in operation["responses"], f"{method} {template} answers {status}, undocumented"
        documented = resolved(self.document, operation["responses"][str(status)])
        if "content" not in documented:
            assert answer.data == b""
        else:
            assert answer.mimetype in documented["content"], (answer.mimetype, documented["content"])
            schema = documented["content"][answer.mimetype]["schema"]
            if answer.mimetype == "application/json":
                assert_conforms(self.document, schema, answer.json)
            elif answer.mimetype == "application/x-ndjson":
                for line in answer.get_data(as_text=True).splitlines():
                    assert_conforms(self.document, schema, json.loads(line))
            else:
                assert_conforms(self.document, schema, answer.get_data(as_text=True))
        self.checked.add((method.upper(), template, status))
        return answer


def add_ledger_entries(app: Flask, channel_id: str) -> dict[str, int]:
    """A failed entry with two attempts and a sent one, as pushes would have left them."""
    ids = {}
    with services(app).db.session(write=True) as session:
        for n, status in enumerate(("failed", "sent")):
            created = DAY + timedelta(minutes=n)
            reply = Reply(
                channel_id=channel_id, desk_reply_id=f"d-{status}", status=status, attempts=2,
                last_error="HTTP 500" if status == "failed" else None,
                external_id="ext-1" if status == "sent" else None, conversation_ext_id="c1", in_reply_to=None,
                content="words", content_type="text/plain", author=None, attachments=[], created_at=created,
                attempt_started_at=created, updated_at=created,
                sent_at=created + timedelta(seconds=2) if status == "sent" else None,
            )
            session.add(reply)
            session.flush()
            session.add_all([
                ReplyAttempt(reply_id=reply.id, started_at=created, duration_ms=40, outcome="transient",
                             http_status=503, error="HTTP 503"),
                ReplyAttempt(reply_id=reply.id, started_at=created + timedelta(seconds=1), duration_ms=12,
                             outcome="permanent" if status == "failed" else "sent",
                             http_status=500 if status == "failed" else 200, error=None),
            ])
            ids[status] = reply.id
        session.commit()
    return ids


# ---------------------------------------------------------------- the document


def test_the_document_is_a_valid_openapi_31_document_with_the_bearer_scheme(client) -> None:
    document = fetch_document(client)

    validate_openapi(document)
    assert document["openapi"] == "3.1.0"
    (scheme_name,) = document["components"]["securitySchemes"]
    assert document["components"]["securitySchemes"][scheme_name] | {"description": ""} == {
        "type": "http", "scheme": "bearer", "description": ""}
    assert document["security"] == [{scheme_name: []}]
    assert document["paths"]["/api/openapi.json"]["get"]["security"] == []


def test_every_admin_route_is_described_and_nothing_else(app, client) -> None:
    document = fetch_document(client)

    routes = routes_of(app)
    assert described(document) == routes
    assert ("/api/channels/{channel_id}", "PATCH") in routes  # the template conversion is exercised


def test_every_entry_of_the_operations_table_names_a_route_of_the_app(app) -> None:
    endpoints = {(rule.endpoint, method) for rule in app.url_map.iter_rules() for method in rule.methods or ()}

    stale = set(openapi.operations(services(app).connectors)) - endpoints
    assert not stale, f"described but not routed: {sorted(stale)}"


def test_operations_document_their_parameters_bodies_and_error_answers(client) -> None:
    paths = fetch_document(client)["paths"]

    list_replies = paths["/api/replies"]["get"]
    assert {p["name"] for p in list_replies["parameters"]} == {"channel", "status", "since", "until", "cursor",
                                                                 "limit"}
    limit = next(p for p in list_replies["parameters"] if p["name"] == "limit")
    assert limit["schema"] | {"type": "integer"} == {"type": "integer", "default": 50, "minimum": 1, "maximum": 250}
    assert {p["name"] for p in paths["/api/replies/export"]["get"]["parameters"]} >= {"format", "channel"}
    assert set(paths["/api/replies/export"]["get"]["responses"]["200"]["content"]) == {
        "text/csv", "application/x-ndjson"}
    assert [p["name"] for p in paths["/api/channels/{channel_id}"]["get"]["parameters"]] == ["channel_id"]
    assert set(paths["/api/replies/retry"]["post"]["responses"]) == {"202", "400", "401", "404", "413", "422", "503"}
    assert set(paths["/api/channels/{channel_id}"]["delete"]["responses"]) >= {"204", "400"}
    assert "content" not in paths["/api/channels/{channel_id}"]["delete"]["responses"]["204"]
    for path, item in paths.items():
        for method, operation in item.items():
            assert operation["responses"]["404"], (method, path)
            if path != "/api/openapi.json":
                assert "401" in operation["responses"], (method, path)
            if method in ("post", "patch") and "requestBody" in operation:
                assert "422" in operation["responses"], (method, path)


def test_channel_bodies_follow_the_apps_connector_kinds(make_app) -> None:
    app = make_app(connectors={"echo": FakeWebhookKind(FakeConnector())})
    document = fetch_document(app.test_client())

    create = document["paths"]["/api/channels"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    kinds = sorted(services(app).connectors)
    assert "echo" in kinds and "webhook" in kinds
    assert [ref["$ref"].rsplit("/", 1)[1] for ref in create["oneOf"]] == [f"New{k.title()}Channel" for k in kinds]
    webhook = document["components"]["schemas"]["NewWebhookChannel"]
    assert set(webhook["required"]) == {"connector", "outbound_url"}
    assert webhook["additionalProperties"] is False
    changes = document["components"]["schemas"]["WebhookChannelChanges"]
    assert set(changes["properties"]) == {"name", "org_id", "desk_domain", "outbound_url"} and "required" not in changes


# ---------------------------------------------------------------- serving it


def test_the_document_needs_no_token_and_a_wrong_one_does_not_matter(client) -> None:
    bare = client.get(DOCUMENT)
    with_a_wrong_token = client.get(DOCUMENT, headers={"Authorization": "Bearer wrong"})

    assert (bare.status_code, with_a_wrong_token.status_code) == (200, 200)
    assert bare.data == with_a_wrong_token.data
    assert client.get("/api/channels").status_code == 401  # the rest of the API still needs it


def test_the_document_is_404_json_when_admin_token_is_unset(make_app) -> None:
    answer = make_app(ADMIN_TOKEN="").test_client().get(DOCUMENT, headers=AUTH)

    assert answer.status_code == 404
    assert answer.mimetype == "application/json"
    assert answer.json["error"] == "not_found"


def test_the_document_is_built_once_per_app(make_app, monkeypatch) -> None:
    builds: list[Flask] = []
    build = openapi.build_spec
    monkeypatch.setattr(openapi, "build_spec", lambda app: builds.append(app) or build(app))
    first_app, second_app = make_app(), make_app()

    answers = [first_app.test_client().get(DOCUMENT).data for _ in range(3)]
    second = second_app.test_client().get(DOCUMENT).data

    assert answers[0] == answers[1] == answers[2] == second
    assert builds == [first_app, second_app]


# ---------------------------------------------------------------- real answers match it


def test_channel_answers_conform_to_the_documented_schemas(client, channel) -> None:
    api = DocumentedClient(client, fetch_document(client))
    one = "/api/channels/{channel_id}"
    at = f"/api/channels/{channel['id']}"

    created = api.call("POST", "/api/channels", 201, json={"connector": "webhook",
                                                          "outbound_url": "http://127.0.0.1:9/x", "name": "n"})
    api.call("GET", "/api/channels", 200)
    shown = api.call("GET", one, 200, path=at)
    api.call("PATCH", one, 200, path=at, json={"name": None, "org_id": "42"})
    api.call("POST", one + "/disable", 200, path=at + "/disable")
    api.call("GET", one, 200, path=at)  # disabled: another status
    api.call("POST", one + "/enable", 200, path=at + "/enable")
    for secret in ("inbound", "outbound", "desk-token"):
        api.call("POST", one + "/rotate", 200, path=at + "/rotate", json={"secret": secret})
    api.call("DELETE", one, 400, path=f"/api/channels/{created.json['id']}")
    api.call("DELETE", one, 204, path=f"/api/channels/{created.json['id']}?confirm={created.json['id']}")
    api.call("GET", one, 404, path="/api/channels/ch_nope")
    api.call("GET", one, 401, path=at, headers={})
    api.call("PATCH", one, 422, path=at, json={"colour": "red"})
    api.call("POST", "/api/channels", 400, data="[]", content_type="application/json")

    assert set(shown.json) >= {"backlog", "oldest_waiting_at", "replies_failed_24h", "status"}


def test_ledger_answers_conform_to_the_documented_schemas(app, client, channel) -> None:
    api = DocumentedClient(client, fetch_document(client))
    ids = add_ledger_entries(app, channel["id"])

    page = api.call("GET", "/api/replies", 200, path="/api/replies?limit=1")
    api.call("GET", "/api/replies", 200, path=f"/api/replies?cursor={page.json['next_cursor']}&status=sent")
    shown = api.call("GET", "/api/replies/{ledger_id}", 200, path=f"/api/replies/{ids['failed']}")
    api.call("GET", "/api/replies/{ledger_id}", 404, path="/api/replies/999999")
    api.call("GET", "/api/replies/summary", 200)
    api.call("GET", "/api/replies/summary", 200, path=f"/api/replies/summary?channel={channel['id']}&interval=hour")
    api.call("GET", "/api/replies/export", 200, path="/api/replies/export?format=jsonl")
    api.call("GET", "/api/replies/export", 200, path="/api/replies/export?format=csv")
    api.call("GET", "/api/replies", 422, path="/api/replies?limit=251")
    retried = api.call("POST", "/api/replies/retry", 202, json={"ids": [ids["failed"], ids["sent"], 999999]})
    api.call("POST", "/api/replies/retry", 202, json={"channel": channel["id"], "status": "failed"})
    api.call("POST", "/api/replies/retry", 422, json={"ids": ["x"]})
    api.call("POST", "/api/replies/delete", 200, json={"ids": [ids["sent"]]})
    api.call("GET", "/api/openapi.json", 200, headers={})

    assert len(shown.json["attempts_history"]) == 2
    assert retried.json["queued"] == [ids["failed"]]
    assert [s["id"] for s in retried.json["skipped"]] == [ids["sent"], 999999]


def add_event_deliveries(app: Flask, subscription_id: str) -> dict[str, int]:
    """A failed delivery, a retrying one and a delivered one, each with an attempt."""
    ids = {}
    with services(app).db.session(write=True) as session:
        for n, status in enumerate(("failed", "retrying", "delivered")):
            created = DAY + timedelta(minutes=n)
            event = Event(id=new_event_id(), type="reply.sent", channel_id=None, data={}, created_at=created)
            delivery = EventDelivery(
                event_id=event.id, subscription_id=subscription_id, event_type=event.type, channel_id=None,
                status=status, attempts=2,
                next_attempt_at=created + timedelta(hours=1) if status == "retrying" else None,
                last_status_code=200 if status == "delivered" else 503,
                last_error=None if status == "delivered" else "HTTP 503", created_at=created, updated_at=created,
                delivered_at=created if status == "delivered" else None)
            session.add_all([event, delivery])
            session.flush()
            session.add(EventAttempt(delivery_id=delivery.id, subscription_id=subscription_id, started_at=created,
                                     duration_ms=25, status_code=delivery.last_status_code,
                                     success=status == "delivered", error=delivery.last_error))
            ids[status] = delivery.id
        session.commit()
    return ids


def test_webhook_answers_conform_to_the_documented_schemas(app, client, channel) -> None:
    api = DocumentedClient(client, fetch_document(client))
    one = "/api/webhooks/{subscription_id}"

    created = api.call("POST", "/api/webhooks", 201, json={
        "url": "http://127.0.0.1:9/hooks", "events": ["reply.sent", "channel.deleted"], "channels": [channel["id"]],
        "description": "CRM", "enabled": True})
    at = f"/api/webhooks/{created.json['id']}"
    ids = add_event_deliveries(app, created.json["id"])
    api.call("POST", "/api/webhooks", 201, json={"url": "http://127.0.0.1:9/all", "events": ["reply.failed"]})
    page = api.call("GET", "/api/webhooks", 200, path="/api/webhooks?limit=1")
    api.call("GET", "/api/webhooks", 200, path=f"/api/webhooks?cursor={page.json['next_cursor']}&status=enabled")
    api.call("GET", "/api/webhooks", 422, path="/api/webhooks?limit=251")
    api.call("GET", one, 200, path=at)
    api.call("GET", one, 404, path="/api/webhooks/whk_nope")
    api.call("GET", one, 401, path=at, headers={})
    api.call("PATCH", one, 200, path=at, json={"enabled": False, "channels": [], "description": None})
    api.call("PATCH", one, 200, path=at, json={"enabled": True, "events": ["message.received"]})
    api.call("PATCH", one, 422, path=at, json={"events": ["reply.lost"]})
    api.call("POST", "/api/webhooks", 422, json={"url": "ftp://x.example/", "events": ["*"]})
    api.call("POST", "/api/webhooks", 400, data="[]", content_type="application/json")
    api.call("POST", one + "/rotate-secret", 200, path=at + "/rotate-secret")
    failures = api.call("GET", one + "/failures", 200, path=at + "/failures?limit=1")
    api.call("GET", one + "/failures", 200, path=f"{at}/failures?cursor={failures.json['next_cursor']}")
    api.call("GET", one + "/failures", 422, path=at + "/failures?status=delivered")
    api.call("GET", one + "/failures/export", 200, path=at + "/failures/export?format=jsonl")
    api.call("GET", one + "/failures/export", 200, path=at + "/failures/export?format=csv&type=reply.sent")
    api.call("GET", one + "/failures/export", 422, path=at + "/failures/export?format=xml")
    api.call("GET", one + "/summary", 200, path=at + "/summary")
    api.call("GET", one + "/executions/summary", 200, path=at + "/executions/summary")
    api.call("GET", one + "/executions/summary", 200, path=at + "/executions/summary?interval=hour&since=2026-11-01")
    api.call("GET", one + "/executions/summary", 422, path=at + "/executions/summary?interval=week")
    retried = api.call("POST", one + "/failures/retry", 202, path=at + "/failures/retry",
                       json={"ids": [ids["failed"], ids["delivered"], 999999]})
    api.call("POST", one + "/failures/retry", 422, path=at + "/failures/retry", json={"ids": list(range(1, 101))})
    api.call("POST", one + "/failures/retry", 404, path="/api/webhooks/whk_nope/failures/retry", json={"ids": [1]})
    api.call("POST", one + "/failures/delete", 200, path=at + "/failures/delete", json={"ids": [ids["retrying"]]})
    api.call("POST", one + "/failures/delete", 422, path=at + "/failures/delete", json={"ids": []})
    api.call("DELETE", one, 204, path=at)
    api.call("DELETE", one, 404, path=at)

    assert retried.json["queued"] == [ids["failed"]]
    assert [s["id"] for s in retried.json["skipped"]] == [ids["delivered"], 999999]


def test_a_key_the_document_does_not_describe_fails_the_check(client, channel) -> None:
    document = fetch_document(client)
    shown = client.get(f"/api/channels/{channel['id']}", headers=AUTH).json
    schema = document["paths"]["/api/channels/{channel_id}"]["get"]["responses"]["200"]["content"][
        "application/json"]["schema"]

    with pytest.raises(AssertionError, match="surprise"):
        assert_conforms(document, schema, {**shown, "surprise": 1})
    with pytest.raises(AssertionError, match="backlog"):
        assert_conforms(document, schema, {k: v for k, v in shown.items() if k != "backlog"})
