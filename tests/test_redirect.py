"""SPEC B13: `GET /desk/redirect` ("open in source") sends an agent's browser to a message's
permalink, or a ticket's (its first message that has one), looked up among the channels of the
Desk org when given; small HTML pages say when there is nothing to open or the link is incomplete."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import update
from werkzeug.test import TestResponse

from app.store.models import InboxMessage
from tests.desk_simulator import message
from tests.support import desk_pull_body, services, signed_headers

ORG = "60012345"
OTHER_ORG = "60099999"


def ingest(client: FlaskClient, channel: dict[str, Any], *messages: dict[str, Any]) -> None:
    """Send messages through the channel's signed inbound webhook, as the external service does."""
    raw = json.dumps({"messages": list(messages)})
    signed = signed_headers(channel["inbound"]["secret"], raw)
    answer = client.post(channel["inbound"]["path"], data=raw, headers=signed)
    assert answer.status_code == 200, answer.json


def open_in_source(client: FlaskClient, **query: str) -> TestResponse:
    return client.get(f"/desk/redirect?{urlencode(query)}")


def assert_page(answer: TestResponse, status: int, says: str) -> None:
    """A small HTML page (the one exception to JSON answers), never cached."""
    assert answer.status_code == status
    assert answer.mimetype == "text/html"
    page = answer.get_data(as_text=True)
    assert page.startswith("<!doctype html>") and says in page
    assert answer.headers["Cache-Control"] == "no-store"
    assert "<script" not in page


@pytest.fixture
def org_channel(new_channel: Callable[..., dict[str, Any]]) -> dict[str, Any]:
    return new_channel(org_id=ORG, name="in the org")


def test_a_thread_redirects_to_its_message_permalink(client: FlaskClient, org_channel: dict[str, Any]) -> None:
    ingest(client, org_channel, message("m1", "c1", permalink="https://chat.example.com/c1/m1"),
           message("m2", "c1", permalink="https://chat.example.com/c1/m2"))

    answer = open_in_source(client, entity="thread", id="m2", parentId="c1", orgId=ORG)

    assert answer.status_code == 302
    assert answer.headers["Location"] == "https://chat.example.com/c1/m2"
    assert answer.headers["Referrer-Policy"] == "no-referrer"


def test_a_ticket_redirects_to_its_first_message_permalink(client: FlaskClient, org_channel: dict[str, Any]) -> None:
    ingest(client, org_channel, message("m1", "c1", permalink="https://chat.example.com/c1/m1"),
           message("m2", "c1", permalink="https://chat.example.com/c1/m2"))

    answer = open_in_source(client, entity="ticket", id="c1", orgId=ORG)

    assert answer.status_code == 302
    assert answer.headers["Location"] == "https://chat.example.com/c1/m1"


def test_a_ticket_whose_first_message_has_no_permalink_uses_the_first_that_has_one(
    client: FlaskClient, org_channel: dict[str, Any]
) -> None:
    ingest(client, org_channel, message("m1", "c1"), message("other", "c2", permalink="http://chat.example.com/c2"),
           message("m2", "c1", permalink="http://chat.example.com/c1/m2"),
           message("m3", "c1", permalink="http://chat.example.com/c1/m3"))

    answer = open_in_source(client, entity="ticket", id="c1", orgId=ORG)

    assert answer.status_code == 302
    assert answer.headers["Location"] == "http://chat.example.com/c1/m2"


def test_the_lookup_keeps_to_the_channels_of_the_org_given(
    client: FlaskClient, new_channel: Callable[..., dict[str, Any]], org_channel: dict[str, Any]
) -> None:
    recorded = new_channel(name="org recorded from its pulls")
    other = new_channel(org_id=OTHER_ORG)
    assert client.post(f"/desk/pull?orgId={ORG}", json=desk_pull_body(recorded)).status_code == 200
    ingest(client, other, message("m1", "c1", permalink="https://other.example.com/m1"))
    ingest(client, recorded, message("r1", "rc", permalink="https://recorded.example.com/r1"))

    in_another_org = open_in_source(client, entity="thread", id="m1", orgId=ORG)
    in_its_org = open_in_source(client, entity="thread", id="m1", orgId=OTHER_ORG)
    without_org = open_in_source(client, entity="ticket", id="c1")
    by_recorded_org = open_in_source(client, entity="ticket", id="rc", orgId=ORG)

    assert_page(in_another_org, 404, "no such message")
    assert (in_its_org.status_code, in_its_org.headers["Location"]) == (302, "https://other.example.com/m1")
    assert (without_org.status_code, without_org.headers["Location"]) == (302, "https://other.example.com/m1")
    assert by_recorded_org.headers["Location"] == "https://recorded.example.com/r1"


def test_a_thread_outside_the_parent_conversation_given_is_not_found(
    client: FlaskClient, org_channel: dict[str, Any]
) -> None:
    ingest(client, org_channel, message("m1", "c1", permalink="https://chat.example.com/m1"))

    assert_page(open_in_source(client, entity="thread", id="m1", parentId="c2", orgId=ORG), 404, "no such message")
    assert open_in_source(client, entity="thread", id="m1", parentId="c1", orgId=ORG).status_code == 302


@pytest.mark.parametrize(("query", "says"), [
    ({"entity": "thread", "id": "nope"}, "There is no such message"),
    ({"entity": "ticket", "id": "nope"}, "There is no such conversation"),
    ({"entity": "thread", "id": "m1"}, "has no link"),
    ({"entity": "ticket", "id": "c1"}, "has no link"),
    ({"entity": "thread", "id": "x" * 300}, "There is no such message"),
    ({"entity": "thread", "id": "m1\x00"}, "There is no such message"),
    ({"entity": "thread", "id": "m1", "orgId": "not an org"}, "There is no such message"),
])
def test_no_such_item_or_no_permalink_is_a_404_page(
    client: FlaskClient, org_channel: dict[str, Any], query: dict[str, str], says: str
) -> None:
    ingest(client, org_channel, message("m1", "c1"))

    assert_page(open_in_source(client, **query), 404, says)


@pytest.mark.parametrize("query", [{}, {"entity": "thread"}, {"id": "m1"}, {"entity": "contact", "id": "m1"},
                                   {"entity": "thread", "id": ""}])
def test_a_missing_entity_or_id_is_a_400_page(client: FlaskClient, query: dict[str, str]) -> None:
    assert_page(open_in_source(client, **query), 400, "needs an entity")


def test_only_http_permalinks_are_ever_redirected_to(
    app: Flask, client: FlaskClient, org_channel: dict[str, Any]
) -> None:
    ingest(client, org_channel, message("m1", "c1", permalink="https://chat.example.com/m1"),
           message("m2", "c1", permalink="https://chat.example.com/m2"))
    with services(app).db.write() as conn:  # a row written by something else than our ingest
        conn.execute(update(InboxMessage).where(InboxMessage.ext_id == "m1")
                     .values(permalink="javascript:alert(document.domain)"))

    thread = open_in_source(client, entity="thread", id="m1", orgId=ORG)
    ticket = open_in_source(client, entity="ticket", id="c1", orgId=ORG)

    assert_page(thread, 404, "has no link")
    assert (ticket.status_code, ticket.headers["Location"]) == (302, "https://chat.example.com/m2")


def test_a_permalink_with_non_ascii_characters_is_sent_percent_encoded(
    client: FlaskClient, org_channel: dict[str, Any]
) -> None:
    ingest(client, org_channel, message("m1", "c1", permalink="https://chat.example.com/café?q=ü"))

    answer = open_in_source(client, entity="thread", id="m1")

    assert answer.headers["Location"] == "https://chat.example.com/caf%C3%A9?q=%C3%BC"
