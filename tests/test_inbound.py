"""The signed inbound webhook, POST /inbound/<channel_id> (SPEC B5)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import random
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from app.usecases.channels import list_channels, set_enabled
from tests.desk_simulator import DESK_TIME, message
from tests.support import desk_pull_body, desk_push_body, services, signed_headers


def send(
    client: FlaskClient,
    channel: dict[str, Any],
    payload: Any,
    *,
    when: datetime | None = None,
    headers: dict[str, str] | None = None,
) -> TestResponse:
    """POST a payload (an object, or raw text) to the channel's webhook, validly signed."""
    raw = payload if isinstance(payload, str) else json.dumps(payload)
    signed = signed_headers(channel["inbound"]["secret"], raw, msg_id="evt_1", when=when)
    return client.post(channel["inbound"]["path"], data=raw, headers={**signed, **(headers or {})})


def pull_threads(client: FlaskClient, channel: dict[str, Any]) -> list[dict[str, Any]]:
    """Every thread Desk would receive from the beginning (one pull; tests stay under the limit)."""
    answer = client.post("/desk/pull?orgId=42", json=desk_pull_body(channel, state=""))
    assert answer.status_code == 200, answer.json
    return answer.json["data"]["threads"]


def last_seq(app: Flask, channel: dict[str, Any]) -> int:
    """The channel's newest inbox seq, as the operator's list shows it."""
    (summary,) = [c for c in list_channels(services(app).db) if c["id"] == channel["id"]]
    return summary["last_seq"]


def assert_error(answer: TestResponse, status: int, *, fields: bool = False) -> dict[str, Any]:
    """The answer is the JSON error shape of SPEC B8 with this status."""
    assert answer.status_code == status, answer.get_data(as_text=True)
    assert answer.mimetype == "application/json"
    body = answer.json
    assert isinstance(body, dict)
    assert isinstance(body.get("error"), str) and body["error"]
    assert isinstance(body.get("message"), str) and body["message"]
    assert set(body) == ({"error", "message", "fields"} if fields else {"error", "message"})
    return body


# --- accepted messages -------------------------------------------------------------------


def test_single_message_is_accepted_and_stored(app: Flask, client: FlaskClient, channel: dict[str, Any]) -> None:
    answer = send(client, channel, message("m1", "c1", text="Hello"))

    assert answer.status_code == 200
    assert answer.json == {"accepted": ["m1"], "duplicates": []}
    assert [(t["extId"], t["extParentId"], t["content"]) for t in pull_threads(client, channel)] == [
        ("m1", "c1", "Hello")
    ]
    assert last_seq(app, channel) == 1


def test_batch_of_100_messages_is_accepted_in_order(
    app: Flask, client: FlaskClient, channel: dict[str, Any]
) -> None:
    ids = [f"m{n:03d}" for n in range(100)]
    batch = {"messages": [message(ext_id, f"c{n % 7}") for n, ext_id in enumerate(ids)]}

    answer = send(client, channel, batch)

    assert answer.status_code == 200, answer.json
    assert answer.json == {"accepted": ids, "duplicates": []}
    assert [t["extId"] for t in pull_threads(client, channel)] == ids
    assert last_seq(app, channel) == 100


def test_batch_of_101_messages_is_refused_and_nothing_stored(
    app: Flask, client: FlaskClient, channel: dict[str, Any]
) -> None:
    batch = {"messages": [message(f"m{n}") for n in range(101)]}

    body = assert_error(send(client, channel, batch), 422, fields=True)

    assert "messages" in body["fields"]
    assert last_seq(app, channel) == 0


@pytest.mark.parametrize("messages", [[], "m1", None, {"0": {"id": "m1"}}])
def test_batch_that_is_not_a_list_of_messages_is_refused(
    app: Flask, client: FlaskClient, channel: dict[str, Any], messages: Any
) -> None:
    body = assert_error(send(client, channel, {"messages": messages}), 422, fields=True)

    assert "messages" in body["fields"]
    assert last_seq(app, channel) == 0


def test_duplicate_inside_a_request_is_acknowledged_and_stored_once(
    client: FlaskClient, channel: dict[str, Any]
) -> None:
    batch = {"messages": [message("m1", text="first"), message("m2"), message("m1", text="second copy")]}

    answer = send(client, channel, batch)

    assert answer.status_code == 200
    assert answer.json == {"accepted": ["m1", "m2"], "duplicates": ["m1"]}
    threads = pull_threads(client, channel)
    assert [t["extId"] for t in threads] == ["m1", "m2"]
    assert threads[0]["content"] == "first"


def test_duplicate_across_requests_is_acknowledged_and_stored_once(
    app: Flask, client: FlaskClient, channel: dict[str, Any]
) -> None:
    assert send(client, channel, message("m1", text="original")).json == {"accepted": ["m1"], "duplicates": []}

    again = send(client, channel, message("m1", text="resent"))
    batch = send(client, channel, {"messages": [message("m2"), message("m1", text="resent in a batch")]})

    assert again.status_code == 200
    assert again.json == {"accepted": [], "duplicates": ["m1"]}
    assert batch.json == {"accepted": ["m2"], "duplicates": ["m1"]}
    threads = pull_threads(client, channel)
    assert [(t["extId"], t["content"]) for t in threads] == [("m1", "original"), ("m2", "text of m2")]
    assert last_seq(app, channel) == 2


def test_same_message_id_on_two_channels_is_two_messages(
    client: FlaskClient, channel: dict[str, Any], new_channel: Callable[..., dict[str, Any]]
) -> None:
    other = new_channel(name="other")

    assert send(client, channel, message("m1")).json == {"accepted": ["m1"], "duplicates": []}
    assert send(client, other, message("m1")).json == {"accepted": ["m1"], "duplicates": []}


def test_unknown_fields_are_ignored(client: FlaskClient, channel: dict[str, Any]) -> None:
    payload = message("m1", vendor_extra={"deep": [1, 2]}, author={"id": "u1", "nickname": "x"})

    answer = send(client, channel, payload)

    assert answer.status_code == 200, answer.json
    assert pull_threads(client, channel)[0]["actor"] == {"extId": "u1"}


# --- refused messages --------------------------------------------------------------------


def test_invalid_message_in_batch_refuses_whole_batch_with_errors_by_index(
    app: Flask, client: FlaskClient, channel: dict[str, Any]
) -> None:
    no_conversation = {"id": "m2", "text": "x"}
    bad_direction = message("m4", direction="sideways")
    batch = {"messages": [message("m1"), no_conversation, message("m3"), bad_direction, message("m5")]}

    body = assert_error(send(client, channel, batch), 422, fields=True)

    assert set(body["fields"]) == {"messages"}
    errors = body["fields"]["messages"]
    assert set(errors) == {"1", "3"}
    assert set(errors["1"]) == {"conversation_id"}
    assert set(errors["3"]) == {"direction"}
    assert last_seq(app, channel) == 0
    assert pull_threads(client, channel) == []
    # Nothing was stored, so the good messages sent again are new, not duplicates.
    retry = send(client, channel, {"messages": [message("m1"), message("m3"), message("m5")]})
    assert retry.json == {"accepted": ["m1", "m3", "m5"], "duplicates": []}


def test_message_that_is_not_an_object_in_a_batch_is_refused_by_index(
    app: Flask, client: FlaskClient, channel: dict[str, Any]
) -> None:
    body = assert_error(send(client, channel, {"messages": [message("m1"), "m2", 3]}), 422, fields=True)

    assert set(body["fields"]["messages"]) == {"1", "2"}
    assert last_seq(app, channel) == 0


URL = "https://files.example.com/a.png"
OTHER_SECRET = "whsec_Zm9vYmFyYmF6cXV4Zm9vYmFyYmF6cXV4Zm9vYmFyYmE="  # valid, but not the channel's
INVALID_MESSAGES: list[tuple[str, dict[str, Any], str]] = [
    ("id missing", {"conversation_id": "c1", "text": "x"}, "id"),
    ("id empty", {"id": "", "conversation_id": "c1", "text": "x"}, "id"),
    ("id blank", {"id": "   ", "conversation_id": "c1", "text": "x"}, "id"),
    ("id too long", {"id": "m" * 256, "conversation_id": "c1", "text": "x"}, "id"),
    ("id a number", {"id": 17, "conversation_id": "c1", "text": "x"}, "id"),
    ("id null", {"id": None, "conversation_id": "c1", "text": "x"}, "id"),
    ("conversation_id missing", {"id": "m1", "text": "x"}, "conversation_id"),
    ("conversation_id null", {"id": "m1", "conversation_id": None, "text": "x"}, "conversation_id"),
    ("conversation_id a list", {"id": "m1", "conversation_id": ["c1"], "text": "x"}, "conversation_id"),
    ("conversation_id too long", {"id": "m1", "conversation_id": "c" * 256, "text": "x"}, "conversation_id"),
    ("no body at all", {"id": "m1", "conversation_id": "c1"}, "text"),
    ("only empty bodies", {"id": "m1", "conversation_id": "c1", "text": "", "html": "", "attachments": []}, "text"),
    ("only null bodies", {"id": "m1", "conversation_id": "c1", "text": None, "html": None}, "text"),
    ("text a number", {"id": "m1", "conversation_id": "c1", "text": 5}, "text"),
    ("html a list", {"id": "m1", "conversation_id": "c1", "html": ["<p>x</p>"]}, "html"),
    ("text with NUL", {"id": "m1", "conversation_id": "c1", "text": "a\x00b"}, "text"),
    ("html with NUL", {"id": "m1", "conversation_id": "c1", "html": "<p>a\x00</p>"}, "html"),
    ("subject with NUL", {"id": "m1", "conversation_id": "c1", "text": "x", "subject": "\x00"}, "subject"),
    ("id with NUL", {"id": "m\x001", "conversation_id": "c1", "text": "x"}, "id"),
    ("subject a number", {"id": "m1", "conversation_id": "c1", "text": "x", "subject": 1}, "subject"),
    ("direction unknown", {"id": "m1", "conversation_id": "c1", "text": "x", "direction": "sideways"}, "direction"),
    ("direction upper case", {"id": "m1", "conversation_id": "c1", "text": "x", "direction": "IN"}, "direction"),
    ("direction null", {"id": "m1", "conversation_id": "c1", "text": "x", "direction": None}, "direction"),
    ("created_at not a time", {"id": "m1", "conversation_id": "c1", "text": "x", "created_at": "yesterday"},
     "created_at"),
    ("created_at no such day", {"id": "m1", "conversation_id": "c1", "text": "x",
                                "created_at": "2024-02-30T10:00:00Z"}, "created_at"),
    ("created_at a number", {"id": "m1", "conversation_id": "c1", "text": "x", "created_at": 1700000000},
     "created_at"),
    ("created_at before year 1 in UTC", {"id": "m1", "conversation_id": "c1", "text": "x",
                                         "created_at": "0001-01-01T00:30:00+01:00"}, "created_at"),
    ("created_at after year 9999 in UTC", {"id": "m1", "conversation_id": "c1", "text": "x",
                                           "created_at": "9999-12-31T23:30:00-01:00"}, "created_at"),
    ("can_reply a string", {"id": "m1", "conversation_id": "c1", "text": "x", "can_reply": "yes"}, "can_reply"),
    ("can_reply a number", {"id": "m1", "conversation_id": "c1", "text": "x", "can_reply": 1}, "can_reply"),
    ("can_reply null", {"id": "m1", "conversation_id": "c1", "text": "x", "can_reply": None}, "can_reply"),
    ("author a string", {"id": "m1", "conversation_id": "c1", "text": "x", "author": "ann"}, "author"),
    ("author email a number", {"id": "m1", "conversation_id": "c1", "text": "x", "author": {"email": 5}},
     "author"),
    ("author name with NUL", {"id": "m1", "conversation_id": "c1", "text": "x", "author": {"name": "a\x00"}},
     "author"),
    ("author avatar not a URL", {"id": "m1", "conversation_id": "c1", "text": "x",
                                 "author": {"avatar_url": "not a url"}}, "author"),
    ("attachments an object", {"id": "m1", "conversation_id": "c1", "attachments": {"url": URL}}, "attachments"),
    ("attachment url missing", {"id": "m1", "conversation_id": "c1", "attachments": [{"name": "a.png"}]},
     "attachments"),
    ("attachment url not a URL", {"id": "m1", "conversation_id": "c1", "attachments": [{"url": "a.png"}]},
     "attachments"),
    ("attachment url not http", {"id": "m1", "conversation_id": "c1",
                                 "attachments": [{"url": "javascript:alert(1)"}]}, "attachments"),
    ("attachment url with NUL", {"id": "m1", "conversation_id": "c1",
                                 "attachments": [{"url": URL + "\x00"}]}, "attachments"),
    ("attachment size negative", {"id": "m1", "conversation_id": "c1",
                                  "attachments": [{"url": URL, "size": -1}]}, "attachments"),
    ("attachment size a string", {"id": "m1", "conversation_id": "c1",
                                  "attachments": [{"url": URL, "size": "10"}]}, "attachments"),
    ("attachment not an object", {"id": "m1", "conversation_id": "c1", "attachments": [URL]}, "attachments"),
    ("too many attachments", {"id": "m1", "conversation_id": "c1",
                              "attachments": [{"url": URL}] * 101}, "attachments"),
    ("permalink not http", {"id": "m1", "conversation_id": "c1", "text": "x", "permalink": "ftp://example.com/1"},
     "permalink"),
]


def test_invalid_message_is_refused_naming_the_field(
    app: Flask, client: FlaskClient, channel: dict[str, Any], subtests: pytest.Subtests
) -> None:
    for name, payload, field in INVALID_MESSAGES:
        with subtests.test(name):
            single = assert_error(send(client, channel, payload), 422, fields=True)
            batch = assert_error(send(client, channel, {"messages": [message("ok1"), payload]}), 422, fields=True)

            assert field in single["fields"], single
            assert set(batch["fields"]["messages"]) == {"1"}
            assert field in batch["fields"]["messages"]["1"]
    assert last_seq(app, channel) == 0


def test_invalid_attachment_error_names_its_index(client: FlaskClient, channel: dict[str, Any]) -> None:
    payload = message("m1", attachments=[{"url": URL}, {"url": "not a url"}])

    body = assert_error(send(client, channel, payload), 422, fields=True)

    assert set(body["fields"]["attachments"]) == {"1"}
    assert "url" in body["fields"]["attachments"]["1"]


NOT_JSON = {
    "broken": "{not json",
    "empty": "",
    "cut short": '{"id": "m1",',
    "lone surrogate": r'{"id": "m1", "conversation_id": "c1", "text": "\ud83d"}',
}


@pytest.mark.parametrize("raw", list(NOT_JSON.values()), ids=list(NOT_JSON))
def test_body_that_is_not_json_is_refused(
    app: Flask, client: FlaskClient, channel: dict[str, Any], raw: str
) -> None:
    assert_error(send(client, channel, raw), 400)
    assert last_seq(app, channel) == 0


@pytest.mark.parametrize("payload", [[message("m1")], "m1", 7, None], ids=["array", "string", "number", "null"])
def test_body_that_is_not_an_object_is_refused(
    app: Flask, client: FlaskClient, channel: dict[str, Any], payload: Any
) -> None:
    assert_error(send(client, channel, json.dumps(payload)), 400)
    assert last_seq(app, channel) == 0


# --- content -----------------------------------------------------------------------------


def test_message_of_attachments_only_is_valid(client: FlaskClient, channel: dict[str, Any]) -> None:
    payload = {"id": "m1", "conversation_id": "c1", "attachments": [{"url": URL, "name": "a.png"}]}

    answer = send(client, channel, payload)

    assert answer.status_code == 200, answer.json
    (thread,) = pull_threads(client, channel)
    assert thread["contentType"] == "text/plain"
    assert thread["content"] == f"a.png: {URL}"


def test_html_wins_over_text(client: FlaskClient, channel: dict[str, Any]) -> None:
    send(client, channel, message("m1", text="plain version", html="<p>rich <b>version</b></p>"))

    (thread,) = pull_threads(client, channel)

    assert thread["content"] == "<p>rich <b>version</b></p>"
    assert thread["contentType"] == "text/html"


def test_created_at_defaults_to_the_time_received(client: FlaskClient, channel: dict[str, Any]) -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    send(client, channel, message("m1"))
    after = datetime.now(UTC) + timedelta(milliseconds=1)

    (thread,) = pull_threads(client, channel)

    assert DESK_TIME.match(thread["createdTime"])
    created = datetime.fromisoformat(thread["createdTime"].replace("Z", "+00:00"))
    assert before <= created <= after


@pytest.mark.parametrize(
    ("given", "desk"),
    [
        ("2024-03-05T07:08:09.123456+02:00", "2024-03-05T05:08:09.123Z"),
        ("2024-03-05T23:30:00-05:00", "2024-03-06T04:30:00.000Z"),
        ("2024-03-05T07:08:09Z", "2024-03-05T07:08:09.000Z"),
        ("2024-03-05T07:08:09", "2024-03-05T07:08:09.000Z"),  # no zone: taken as UTC
        ("0999-01-01T00:00:00Z", "0999-01-01T00:00:00.000Z"),
    ],
)
def test_created_at_is_kept_in_utc(client: FlaskClient, channel: dict[str, Any], given: str, desk: str) -> None:
    send(client, channel, message("m1", created_at=given))

    (thread,) = pull_threads(client, channel)

    assert thread["createdTime"] == desk


def test_disabled_channel_still_queues_inbound_messages(
    app: Flask, client: FlaskClient, channel: dict[str, Any]
) -> None:
    set_enabled(services(app).db, channel["id"], False)

    answer = send(client, channel, message("m1"))

    assert answer.status_code == 200
    assert answer.json == {"accepted": ["m1"], "duplicates": []}
    assert_error(client.post("/desk/pull?orgId=42", json=desk_pull_body(channel, state="")), 403)
    set_enabled(services(app).db, channel["id"], True)
    assert [t["extId"] for t in pull_threads(client, channel)] == ["m1"]


# --- signature ---------------------------------------------------------------------------


def test_signature_computed_as_the_standard_describes_is_accepted(
    client: FlaskClient, channel: dict[str, Any]
) -> None:
    # By hand, not with the library the app uses: base64 HMAC-SHA256 of "{id}.{timestamp}.{body}"
    # keyed with the base64 part of the whsec_ secret.
    raw = json.dumps(message("m1")).encode()
    msg_id, timestamp = "evt_by_hand", str(int(datetime.now(UTC).timestamp()))
    key = base64.b64decode(channel["inbound"]["secret"].removeprefix("whsec_"))
    digest = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + raw, hashlib.sha256).digest()
    headers = {
        "webhook-id": msg_id, "webhook-timestamp": timestamp,
        "webhook-signature": "v1," + base64.b64encode(digest).decode(), "Content-Type": "application/json",
    }

    answer = client.post(channel["inbound"]["path"], data=raw, headers=headers)

    assert answer.status_code == 200, answer.json
    assert answer.json == {"accepted": ["m1"], "duplicates": []}


def test_signature_with_several_values_is_accepted_when_one_matches(
    client: FlaskClient, channel: dict[str, Any]
) -> None:
    raw = json.dumps(message("m1"))
    headers = signed_headers(channel["inbound"]["secret"], raw)
    wrong = signed_headers(OTHER_SECRET, raw)["webhook-signature"]
    headers["webhook-signature"] = f"{wrong} v2,abc {headers['webhook-signature']}"

    answer = client.post(channel["inbound"]["path"], data=raw, headers=headers)

    assert answer.status_code == 200, answer.json


@pytest.mark.parametrize("offset", [timedelta(minutes=-4), timedelta(minutes=4)], ids=["4 min old", "4 min ahead"])
def test_timestamp_within_five_minutes_is_accepted(
    client: FlaskClient, channel: dict[str, Any], offset: timedelta
) -> None:
    answer = send(client, channel, message("m1"), when=datetime.now(UTC) + offset)

    assert answer.status_code == 200, answer.json


@pytest.mark.parametrize("offset", [timedelta(minutes=-6), timedelta(minutes=6), timedelta(days=-400)],
                         ids=["6 min old", "6 min ahead", "a year old"])
def test_timestamp_more_than_five_minutes_off_is_refused(
    app: Flask, client: FlaskClient, channel: dict[str, Any], offset: timedelta
) -> None:
    assert_error(send(client, channel, message("m1"), when=datetime.now(UTC) + offset), 401)
    assert last_seq(app, channel) == 0


def _tamper(channel: dict[str, Any], raw: str, how: str) -> tuple[str, dict[str, str]]:
    """A request whose signature headers are wrong in one way."""
    headers = signed_headers(channel["inbound"]["secret"], raw, msg_id="evt_1")
    valid = headers["webhook-signature"]
    if how.startswith("without "):
        del headers[how.removeprefix("without ")]
    elif how == "no headers":
        headers = {"Content-Type": "application/json"}
    elif how == "empty signature":
        headers["webhook-signature"] = ""
    elif how == "other secret":
        headers = signed_headers(OTHER_SECRET, raw, msg_id="evt_1")
    elif how == "body changed":
        raw = raw.replace("hello", "HELLO")
    elif how == "id changed":
        headers["webhook-id"] = "evt_2"
    elif how == "timestamp changed":
        headers["webhook-timestamp"] = str(int(headers["webhook-timestamp"]) - 1)
    elif how == "timestamp not a number":
        headers["webhook-timestamp"] = "soon"
    elif how == "timestamp huge":
        headers["webhook-timestamp"] = "1e300"
    elif how == "signature without version":
        headers["webhook-signature"] = valid.removeprefix("v1,")
    elif how == "signature of another version":
        headers["webhook-signature"] = "v2," + valid.removeprefix("v1,")
    elif how == "signature not base64":
        headers["webhook-signature"] = "v1,***not base64***"
    elif how == "signature with extra comma":
        headers["webhook-signature"] = valid + ",x"
    elif how == "signature truncated":
        headers["webhook-signature"] = valid[:-8]
    elif how == "signature not ascii":
        headers["webhook-signature"] = "v1,\u00e9t\u00e9"
    else:  # pragma: no cover
        raise AssertionError(how)
    return raw, headers


SIGNATURE_FAULTS = [
    "no headers", "without webhook-id", "without webhook-timestamp", "without webhook-signature",
    "empty signature", "other secret", "body changed", "id changed", "timestamp changed", "timestamp not a number",
    "timestamp huge", "signature without version", "signature of another version", "signature not base64",
    "signature with extra comma", "signature truncated", "signature not ascii",
]


def test_bad_or_missing_signature_is_refused(
    app: Flask, client: FlaskClient, channel: dict[str, Any], subtests: pytest.Subtests
) -> None:
    for how in SIGNATURE_FAULTS:
        with subtests.test(how):
            raw, headers = _tamper(channel, json.dumps(message("m1", text="hello")), how)

            answer = client.post(channel["inbound"]["path"], data=raw.encode(), headers=headers)

            assert_error(answer, 401)
    assert last_seq(app, channel) == 0


def test_signature_is_checked_before_the_body_is_parsed(client: FlaskClient, channel: dict[str, Any]) -> None:
    # An unsigned invalid body must not learn anything about validation.
    answer = client.post(channel["inbound"]["path"], data="{not json", headers={"Content-Type": "application/json"})

    assert_error(answer, 401)


# --- channel and size --------------------------------------------------------------------


@pytest.mark.parametrize("channel_id", ["ch_doesnotexist", "x" * 300])
def test_unknown_channel_is_404(client: FlaskClient, channel: dict[str, Any], channel_id: str) -> None:
    raw = json.dumps(message("m1"))
    headers = signed_headers(channel["inbound"]["secret"], raw)

    assert_error(client.post(f"/inbound/{channel_id}", data=raw, headers=headers), 404)


def test_body_over_the_limit_is_413_and_not_stored(
    make_app: Callable[..., Flask], channel: dict[str, Any]
) -> None:
    small = make_app(MAX_BODY_BYTES="2048")
    client = small.test_client()
    fits = json.dumps(message("m1", text="x" * 1900))
    too_big = json.dumps(message("m2", text="x" * 2100))
    assert len(fits) <= 2048 < len(too_big)

    assert send(client, channel, fits).status_code == 200
    assert_error(send(client, channel, too_big), 413)
    assert [t["extId"] for t in pull_threads(client, channel)] == ["m1"]


# --- echoes of our own replies (SPEC B4, B5) -----------------------------------------------


class _Receiver(BaseHTTPRequestHandler):
    """The external service's reply endpoint: accepts every reply as message sms-77."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        body = b'{"id": "sms-77"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def receiver_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/replies"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_message_we_delivered_coming_back_is_a_duplicate(
    client: FlaskClient, new_channel: Callable[..., dict[str, Any]], receiver_url: str
) -> None:
    channel = new_channel(receiver_url)
    send(client, channel, message("m1", "c1"))
    pushed = client.post(
        "/desk/push?orgId=42", json=desk_push_body(channel, id="9001", extParentId="c1", content="Agent says hi")
    )
    assert pushed.status_code == 200, pushed.json
    assert pushed.json["extId"] == "sms-77"

    echo = send(client, channel, message("sms-77", "c1", text="Agent says hi", direction="out"))

    assert echo.json == {"accepted": [], "duplicates": ["sms-77"]}
    assert [t["extId"] for t in pull_threads(client, channel)] == ["m1"]


# --- anything else -----------------------------------------------------------------------


def _odd_value(rng: random.Random, depth: int = 0) -> Any:
    """A JSON value of a random shape, biased towards the edges validation must catch."""
    choices: list[Callable[[], Any]] = [
        lambda: None,
        lambda: rng.choice([True, False]),
        lambda: rng.randint(-(2**63), 2**63 - 1),
        lambda: rng.random() * 1e300,
        lambda: "".join(rng.choice("ab \x00\n<>&é😀\u200b") for _ in range(rng.randrange(20))),
        lambda: "x" * rng.choice([254, 255, 256, 2048, 2049, 70_000]),
        lambda: rng.choice(["2024-01-01T00:00:00Z", "0001-01-01T00:00:00-05:00", "9999-12-31T23:59:59+00:00",
                            "2024-13-01", "T", "2024-01-01T00:00:00+25:00", "99999-01-01"]),
        lambda: rng.choice(["http://a", "https://x.example.com/" + "a" * 3000, "http://[::1]/", "http://a b",
                            "https://例え.jp/"]),
        lambda: [{"url": rng.choice(["http://a/x", None, 5, ""]), "size": rng.choice([1, -1, 1.5, None])}],
        lambda: rng.choice(["in", "out", "IN", ""]),
    ]
    if depth < 3:
        choices.append(lambda: [_odd_value(rng, depth + 1) for _ in range(rng.randrange(4))])
        choices.append(lambda: {
            rng.choice(["url", "name", "size", "id", "email", "phone", "avatar_url", "x"]): _odd_value(rng, depth + 1)
            for _ in range(rng.randrange(5))
        })
    return rng.choice(choices)()


def test_malformed_messages_of_any_shape_get_a_4xx_never_a_500(
    app: Flask, client: FlaskClient, channel: dict[str, Any]
) -> None:
    rng = random.Random(2024)
    fields_ = ["id", "conversation_id", "text", "html", "created_at", "subject", "direction", "author",
               "attachments", "can_reply", "permalink"]
    statuses: Counter[int] = Counter()
    accepted: list[str] = []
    for n in range(250):
        payload: dict[str, Any] = message(f"m{n}")
        for name in rng.sample(fields_, rng.randrange(1, 5)):
            payload[name] = _odd_value(rng)
        answer = send(client, channel, payload if n % 3 else {"messages": [message(f"ok{n}"), payload]})
        statuses[answer.status_code] += 1
        if answer.status_code == 200:
            accepted.extend(answer.json["accepted"])
        else:
            assert_error(answer, 422, fields=True)
    assert statuses[422] > 100 and statuses[200] > 10, statuses
    # What was stored is whole: it can all be pulled, in order.
    assert [t["extId"] for t in pull_threads(client, channel)] == accepted
