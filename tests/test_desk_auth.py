"""SPEC B2: how pull and push requests from Desk are authenticated, row by row, in order."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from app.usecases.channels import set_enabled
from tests.conftest import services
from tests.support import desk_pull_body, desk_push_body

ORG = "28732"


def pull_request(
    client: FlaskClient, params: dict[str, Any] | None, query: str = f"?orgId={ORG}", raw: bytes | None = None
):
    if raw is not None:
        return client.post("/desk/pull" + query, data=raw, content_type="application/json")
    return client.post("/desk/pull" + query, json=params or {})


def push_request(
    client: FlaskClient, params: dict[str, Any] | None, query: str = f"?orgId={ORG}", raw: bytes | None = None
):
    if raw is not None:
        return client.post("/desk/push" + query, data=raw, content_type="application/json")
    body = desk_push_body({"desk": {"channelId": "x", "channelToken": "y"}})
    body["configParams"] = {"channelState": ""} if params is None else params
    return client.post("/desk/push" + query, json=body)


ENDPOINTS: dict[str, Callable[..., Any]] = {"pull": pull_request, "push": push_request}


def creds(channel: dict[str, Any], **changes: Any) -> dict[str, Any]:
    params = {"channelId": channel["desk"]["channelId"], "channelToken": channel["desk"]["channelToken"]}
    params.update(changes)
    return {key: value for key, value in params.items() if value is not None}


def assert_error(answer: Any, status: int, code: str) -> None:
    assert answer.status_code == status, answer.get_data(as_text=True)
    assert answer.is_json
    assert answer.json["error"] == code
    assert isinstance(answer.json["message"], str) and answer.json["message"]


@pytest.fixture(params=sorted(ENDPOINTS))
def send(request: pytest.FixtureRequest, client: FlaskClient) -> Callable[..., Any]:
    endpoint = ENDPOINTS[request.param]
    return lambda params=None, **kw: endpoint(client, params, **kw)


@pytest.mark.parametrize("raw", [b"not json", b"[1, 2]", b'"text"', b"", b"\xff\xfe", b"[" * 5000])
def test_body_that_is_not_a_json_object_is_400(send, raw):
    assert_error(send(raw=raw), 400, "invalid_json")


@pytest.mark.parametrize("missing", ["channelId", "channelToken", "both"])
def test_missing_credentials_are_401(send, channel, missing):
    params = creds(channel)
    for key in ["channelId", "channelToken"] if missing == "both" else [missing]:
        params.pop(key)
    assert_error(send(params), 401, "missing_credentials")


@pytest.mark.parametrize("value", [123, None, "", ["a"], {"a": 1}])
def test_credentials_of_the_wrong_type_count_as_missing(send, channel, value):
    assert_error(send(creds(channel) | {"channelToken": value}), 401, "missing_credentials")


def test_unknown_channel_and_wrong_token_get_the_same_401(send, channel):
    unknown = send(creds(channel, channelId="ch_doesnotexist"))
    wrong = send(creds(channel, channelToken=channel["desk"]["channelToken"] + "x"))
    assert_error(unknown, 401, "invalid_credentials")
    assert_error(wrong, 401, "invalid_credentials")
    assert unknown.json == wrong.json


def test_missing_org_id_is_400_once_credentials_are_good(send, channel):
    assert_error(send(creds(channel), query=""), 400, "missing_org_id")


def test_org_id_is_required_even_for_a_channel_created_without_one(send, channel):
    assert channel["org_id"] is None
    assert_error(send(creds(channel), query="?orgId="), 400, "missing_org_id")


@pytest.mark.parametrize("org_id", ["%00", "a%00b", "x" * 65, "a%20b", "%C3%A9"])
def test_an_org_id_that_is_not_1_to_64_visible_characters_is_400(send, channel, org_id):
    assert_error(send(creds(channel), query=f"?orgId={org_id}"), 400, "invalid_org_id")


def test_org_id_differing_from_the_channels_is_403(send, new_channel):
    bound = new_channel(org_id="111")
    assert_error(send(creds(bound), query="?orgId=222"), 403, "org_mismatch")


def test_disabled_channel_is_403(send, app: Flask, channel):
    set_enabled(services(app).db, channel["id"], False)
    assert_error(send(creds(channel)), 403, "channel_disabled")


def test_checks_run_in_the_specified_order(send, app: Flask, new_channel):
    bound = new_channel(org_id="111")
    set_enabled(services(app).db, bound["id"], False)
    # Missing credentials beat a missing orgId.
    assert_error(send({}, query=""), 401, "missing_credentials")
    # A wrong token beats a missing orgId: nothing is revealed before authentication.
    assert_error(send(creds(bound, channelToken="wrong"), query=""), 401, "invalid_credentials")
    # A missing orgId beats a mismatching channel and a disabled one.
    assert_error(send(creds(bound), query=""), 400, "missing_org_id")
    # An orgId mismatch beats the disabled state.
    assert_error(send(creds(bound), query="?orgId=222"), 403, "org_mismatch")
    assert_error(send(creds(bound), query="?orgId=111"), 403, "channel_disabled")


def test_matching_org_id_and_enabled_channel_pass(client, new_channel):
    bound = new_channel(org_id="111")
    answer = client.post("/desk/pull?orgId=111", json=desk_pull_body(bound))
    assert answer.status_code == 200, answer.json


def test_push_accepts_config_params_as_name_value_pairs(client, channel):
    body = desk_push_body(channel)
    pairs = [{"name": k, "value": v} for k, v in body["configParams"].items()]
    body["configParams"] = [*pairs, "junk", {"value": "no name"}]  # malformed items are ignored
    # Empty content gets a 422, which proves authentication passed (and nothing was delivered).
    body["resource"]["content"] = body["resource"]["summary"] = ""
    answer = client.post(f"/desk/push?orgId={ORG}", json=body)
    assert_error(answer, 422, "validation_error")
    assert "content" in answer.json["fields"]


def test_push_with_config_params_of_another_shape_is_401(client, channel):
    body = desk_push_body(channel)
    body["configParams"] = "channelId=x"
    assert_error(client.post(f"/desk/push?orgId={ORG}", json=body), 401, "missing_credentials")
