"""SPEC C1.5 for Desk's endpoints: input of any shape gets a 4xx JSON error, never a 500,
and nothing is left half-written (in particular no reply stuck as pending)."""

from __future__ import annotations

import json
import random
import time
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from app.store.models import Reply
from tests.conftest import services
from tests.receiver import Answer, running_receiver
from tests.support import desk_pull_body, desk_push_body, signed_headers

PUSH = "/desk/push?orgId=1"
PULL = "/desk/pull?orgId=1"

ODD_VALUES: list[Any] = [
    None,
    True,
    0,
    -1,
    2**70,
    1.5,
    float("1e308"),
    "",
    " ",
    "\x00",
    "é\u2028",
    "a\nb",
    "x" * 5000,
    [],
    [None],
    {},
    {"a": {"b": {"c": []}}},
    "ch_\x00x",
    "\ud7ff",
    "<script>",
    "💬",
]


def nested(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = {"a": value}
    return value


def ledger_rows(app: Flask) -> list[tuple[str, str]]:
    with services(app).db.session() as session:
        return [(r.desk_reply_id, r.status) for r in session.scalars(select(Reply))]


def assert_client_error(answer: Any) -> None:
    assert 400 <= answer.status_code < 500, (answer.status_code, answer.get_data(as_text=True)[:300])
    assert answer.is_json and answer.json["error"] and answer.json["message"]


def test_push_resource_fields_of_any_shape_never_answer_500_nor_leave_a_pending_reply(app, client, new_channel):
    with running_receiver() as receiver:
        receiver.script(*[Answer(200, {"id": f"ext-{n}"}) for n in range(150)])
        fuzz_pushes(app, client, new_channel(outbound_url=receiver.url))


def fuzz_pushes(app: Flask, client: FlaskClient, channel: dict[str, Any]) -> None:
    rng = random.Random(20261122)
    fields = [
        "id",
        "extParentId",
        "replyToExtId",
        "content",
        "summary",
        "contentType",
        "hasAttach",
        "attachments",
        "author",
    ]
    for _ in range(150):
        body = desk_push_body(channel)
        for field in rng.sample(fields, rng.randint(1, 3)):
            body["resource"][field] = rng.choice(ODD_VALUES)
        answer = client.post(PUSH, json=body)
        assert answer.status_code != 500, (body["resource"], answer.get_data(as_text=True)[:300])
        assert (answer.is_json and answer.json.get("error")) or answer.status_code == 200
    assert all(status != "pending" for _, status in ledger_rows(app))


@pytest.mark.parametrize(
    ("resource", "field"),
    [
        ({"id": "é\u2028"}, "id"),  # it becomes a header: only visible ASCII can go there
        ({"id": "a\nb"}, "id"),
        ({"id": "a b"}, "id"),
        ({"attachments": [nested(50)]}, "attachments"),
        ({"attachments": ["not an object"]}, "attachments"),
        ({"attachments": [{}] * 101}, "attachments"),
    ],
)
def test_push_fields_that_cannot_be_delivered_are_refused_before_anything_is_recorded(
    app: Flask, client: FlaskClient, channel: dict[str, Any], resource: dict[str, Any], field: str
) -> None:
    answer = client.post(PUSH, json=desk_push_body(channel, **resource))
    assert_client_error(answer)
    assert answer.status_code == 422 and field in answer.json["fields"]
    assert ledger_rows(app) == []


def test_push_body_nested_to_the_parser_limit_is_refused_not_a_500(app, client, channel):
    deep = '{"a":' * 1000 + '"leaf"' + "}" * 1000  # as deep as the JSON parser accepts
    raw = json.dumps(desk_push_body(channel, attachments=["DEEP"])).replace('"DEEP"', deep)
    answer = client.post(PUSH, data=raw, content_type="application/json")
    assert_client_error(answer)
    assert ledger_rows(app) == []


@pytest.mark.parametrize("channel_id", ["ch_\x00x", "ch_é", "x" * 70, "ch_a b", "../etc"])
def test_channel_ids_of_impossible_shapes_are_401_for_desk_and_404_inbound(client, channel, channel_id):
    pull = desk_pull_body(channel) | {"channelId": channel_id}
    assert client.post(PULL, json=pull).status_code == 401
    push = desk_push_body(channel)
    push["configParams"]["channelId"] = channel_id
    assert client.post(PUSH, json=push).status_code == 401
    body = json.dumps({"id": "m1", "conversation_id": "c1", "text": "hi"})
    answer = client.post(f"/inbound/{channel_id}", data=body, headers=signed_headers("whsec_AAAA", body))
    assert answer.status_code in (404, 405) and answer.is_json


def test_pull_bodies_of_any_shape_never_answer_500(client, channel):
    rng = random.Random(7)
    keys = ["channelId", "channelToken", "channelState"]
    for _ in range(120):
        body = desk_pull_body(channel)
        for key in rng.sample(keys, rng.randint(1, 2)):
            body[key] = rng.choice(ODD_VALUES)
        answer = client.post(PULL, json=body)
        assert answer.status_code != 500, (body, answer.get_data(as_text=True)[:300])
        assert answer.is_json


def test_a_secret_that_cannot_be_decrypted_leaves_no_pending_reply(make_app, new_channel):
    created = new_channel()
    other_key = make_app(SECRET_KEY="another-secret-key")
    answer = other_key.test_client().post(PUSH, json=desk_push_body(created))
    assert answer.status_code == 500 and answer.is_json
    assert "whsec_" not in answer.get_data(as_text=True)
    assert ledger_rows(other_key) == []


def test_huge_html_reply_is_answered_within_the_deadline(make_app, new_channel):
    app = make_app(PUSH_DEADLINE_SECONDS="1")
    with running_receiver() as receiver:
        receiver.script(Answer(200, {"id": "ext-big"}))
        created = new_channel(outbound_url=receiver.url)
        html = "<table>" + "<tr><td>cell</td><td>more text</td></tr>" * 25_000 + "</table>"  # about 1 MB
        started = time.monotonic()
        answer = app.test_client().post(PUSH, json=desk_push_body(created, content=html, contentType="text/html"))
        elapsed = time.monotonic() - started
    assert answer.status_code == 200, answer.json
    assert elapsed < 2.0
    (request,) = receiver.received
    assert request.body["data"]["text"].startswith("cell | more text\ncell | more text")


def test_huge_html_message_without_subject_is_ingested_quickly(make_app, new_channel):
    app = make_app(MAX_BODY_BYTES=str(4 * 1024 * 1024))
    created = new_channel()
    html = "<table>" + "<tr><td>cell</td></tr>" * 100_000 + "</table>"
    body = json.dumps({"id": "big", "conversation_id": "c1", "html": html})
    started = time.monotonic()
    answer = app.test_client().post(
        created["inbound"]["path"], data=body, headers=signed_headers(created["inbound"]["secret"], body)
    )
    assert answer.status_code == 200, answer.json
    assert time.monotonic() - started < 3.0
    pulled = app.test_client().post(PULL, json=desk_pull_body(created)).json
    assert pulled["data"]["tickets"][0]["subject"] == "cell"
