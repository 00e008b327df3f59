"""SPEC B3: every authenticated pull and push records the channel's orgId and securityContext
(encrypted), writing only when they changed, so that an unchanged pull stays a pure read."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from app.store.models import Channel
from tests.receiver import Answer, Receiver
from tests.support import desk_pull_body, desk_push_body, services, statements

CONTEXT = "eyJhbGciOi.JzZWN1cml0eUNvbnRleHQ.c2lnbmVk"  # shaped like Desk's (opaque to us)


def stored(app: Flask, channel_id: str) -> Channel:
    with services(app).db.session() as session:
        return session.scalars(select(Channel).where(Channel.id == channel_id)).one()


def writes(app: Flask) -> Any:
    """The INSERT/UPDATE/DELETE statements the app runs inside the block."""
    return statements(app, ("INSERT", "UPDATE", "DELETE"))


def pull(client: FlaskClient, channel: dict[str, Any], org: str, context: str | None) -> None:
    query = f"orgId={org}" + (f"&securityContext={quote(context)}" if context else "")
    answer = client.post(f"/desk/pull?{query}", json=desk_pull_body(channel))
    assert answer.status_code == 200, answer.json


def test_pull_records_org_id_and_an_encrypted_security_context(app: Flask, client: FlaskClient, channel) -> None:
    pull(client, channel, "60001", CONTEXT)

    row = stored(app, channel["id"])
    assert row.desk_org_id == "60001"
    assert row.desk_context and CONTEXT not in row.desk_context
    assert services(app).keyring.decrypt(row.desk_context) == CONTEXT
    assert row.desk_context_at is not None


def test_an_unchanged_context_writes_nothing_and_a_new_one_is_recorded(
    app: Flask, client: FlaskClient, channel
) -> None:
    pull(client, channel, "60001", CONTEXT)
    pull(client, channel, "60001", CONTEXT)  # within the minute of last_pull_at: nothing to record

    with writes(app) as unchanged:
        pull(client, channel, "60001", CONTEXT)
    with writes(app) as changed:
        pull(client, channel, "60001", CONTEXT + "-renewed")

    assert unchanged == []
    assert len(changed) == 1
    assert services(app).keyring.decrypt(stored(app, channel["id"]).desk_context) == CONTEXT + "-renewed"


def test_a_pull_without_security_context_keeps_the_recorded_one(app: Flask, client: FlaskClient, channel) -> None:
    pull(client, channel, "60001", CONTEXT)
    pull(client, channel, "60002", None)

    row = stored(app, channel["id"])
    assert row.desk_org_id == "60002"
    assert services(app).keyring.decrypt(row.desk_context) == CONTEXT


def test_push_records_org_id_and_security_context(
    app: Flask, client: FlaskClient, hooked: dict[str, Any], receiver: Receiver
) -> None:
    receiver.script(Answer(200, {"id": "x-1"}))

    answer = client.post(f"/desk/push?orgId=777&securityContext={quote(CONTEXT)}", json=desk_push_body(hooked))

    assert answer.status_code == 200, answer.json
    row = stored(app, hooked["id"])
    assert row.desk_org_id == "777"
    assert services(app).keyring.decrypt(row.desk_context) == CONTEXT


def test_refused_requests_record_nothing(app: Flask, client: FlaskClient, channel) -> None:
    wrong = desk_pull_body(channel) | {"channelToken": "not-the-token"}
    assert client.post(f"/desk/pull?orgId=1&securityContext={CONTEXT}", json=wrong).status_code == 401

    row = stored(app, channel["id"])
    assert (row.desk_org_id, row.desk_context) == (None, None)
