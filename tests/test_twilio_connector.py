"""The `twilio` connector (SPEC B15) end to end, on both databases: Twilio's webhooks in (signed, with
media through the proxy) to Desk's pull, agent replies out through the Messages API of a local fake
over real HTTP, and the signed status callbacks on the reply ledger."""

from __future__ import annotations

import base64
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlencode, urlsplit

import pytest
from flask import Flask
from flask.testing import FlaskClient

from app.connectors.base import OutboundReply, PermanentDeliveryError
from app.connectors.http import make_http_session
from app.connectors.twilio import TwilioConnector, TwilioKind, split_body
from app.usecases.channels import create_channel
from tests.conftest import ADMIN_TOKEN
from tests.desk_emulator import DeskEmulator
from tests.fake_twilio import (
    CREATE,
    HANG,
    HTTP_429,
    HTTP_500,
    HTTP_503,
    MEDIA,
    SIGNATURE_HEADER,
    FakeTwilio,
    fake_twilio,  # noqa: F401  (the fixture)
    inbound_sms_params,
    signature,
    status_callback_params,
)
from tests.support import desk_push_body, services, serving

PUBLIC_BASE = "https://deskbridge.example"
SMS_FROM = "+15550001111"
WA_FROM = "whatsapp:+15550002222"
CUSTOMER = "+15557654321"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
PUSH_URL = "/desk/push?orgId=42"
JPEG = b"\xff\xd8\xff\xe0" + b"jpeg-bytes" * 50
PNG = b"\x89PNG\r\n\x1a\n" + b"png-bytes" * 50


@pytest.fixture
def twilio(fake_twilio: FakeTwilio) -> FakeTwilio:  # noqa: F811
    """The running Twilio fake (tests.fake_twilio's fixture, under a shorter name)."""
    return fake_twilio


@pytest.fixture
def account(twilio: FakeTwilio) -> tuple[str, str]:
    """A Twilio account owning an SMS number and a WhatsApp sender: (AccountSid, AuthToken)."""
    sid, token = twilio.add_account()
    twilio.add_number(sid, SMS_FROM)
    twilio.add_number(sid, WA_FROM)
    return sid, token


@pytest.fixture
def build_app(make_app: Callable[..., Flask], twilio: FakeTwilio) -> Callable[..., Flask]:
    """Apps with the twilio kind against the fake (keyword arguments override settings)."""

    def build(**overrides: str) -> Flask:
        settings = {"PUBLIC_BASE_URL": PUBLIC_BASE, "TWILIO_API_BASE": twilio.base_url, **overrides}
        return make_app(connectors={"twilio": TwilioKind}, **settings)

    return build


@pytest.fixture
def app(build_app: Callable[..., Flask]) -> Flask:
    return build_app()


@pytest.fixture
def sms_channel(app: Flask, account: tuple[str, str]) -> dict[str, Any]:
    return new_channel(app, account, **{"from": SMS_FROM})


def new_channel(app: Flask, account: tuple[str, str], **fields: Any) -> dict[str, Any]:
    """A twilio channel of the account, as `channel create` prints it."""
    svc = services(app)
    data = {"connector": "twilio", "account_sid": account[0], "auth_token": account[1], **fields}
    return create_channel(svc.db, svc.keyring, svc.connectors, data)


def post_twilio(
    client: FlaskClient, path: str, token: str, params: dict[str, str], *, signed_url: str | None = None,
    signed: bool = True,
) -> Any:
    """POST a form as Twilio does, signed (by the fake's independent implementation) over the public URL."""
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    if signed:
        headers[SIGNATURE_HEADER] = signature(token, signed_url or PUBLIC_BASE + path, params)
    return client.post(path, data=urlencode(params), headers=headers)


def inbound(channel: dict[str, Any]) -> str:
    return channel["inbound"]["path"]


def sms(account: tuple[str, str], body: str, **options: Any) -> dict[str, str]:
    """An incoming SMS from CUSTOMER to the channel's number."""
    return inbound_sms_params(account[0], options.pop("from_", CUSTOMER), options.pop("to", SMS_FROM), body,
                              **options)


def push(client: FlaskClient, channel: dict[str, Any], reply_id: str, parent: str = CUSTOMER, **resource: Any) -> Any:
    body = desk_push_body(channel, id=reply_id, extParentId=parent, replyToExtId=None, **resource)
    return client.post(PUSH_URL, json=body)


def ledger_entry(client: FlaskClient, desk_reply_id: str) -> dict[str, Any]:
    """The ledger entry of a Desk reply, with its attempts, through the admin API."""
    items = client.get("/api/replies", headers=ADMIN).get_json()["items"]
    found = next(item for item in items if item["desk_reply_id"] == desk_reply_id)
    return client.get(f"/api/replies/{found['id']}", headers=ADMIN).get_json()


def proxy_path(link: str) -> str:
    """The path of a media proxy link under PUBLIC_BASE_URL."""
    assert link.startswith(f"{PUBLIC_BASE}/media/"), link
    return link.removeprefix(PUBLIC_BASE)


def threads_in_order(desk: DeskEmulator) -> list[dict[str, Any]]:
    return list(desk.threads.values())


# --- inbound: SMS, MMS, WhatsApp into Desk -------------------------------------------------------


def test_sms_and_mms_with_two_images_reach_desk_once_and_the_media_are_served_without_credentials(
    app: Flask, sms_channel: dict[str, Any], account: tuple[str, str], twilio: FakeTwilio,
    desk_emulator: DeskEmulator, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    client = app.test_client()
    text = sms(account, "Hello, my order has not arrived")
    answer = post_twilio(client, inbound(sms_channel), account[1], text)
    assert answer.status_code == 200
    assert answer.mimetype == "text/xml"
    assert answer.data == b'<?xml version="1.0" encoding="UTF-8"?><Response/>'
    jpeg_url = twilio.add_media(account[0], JPEG, "image/jpeg")
    message_sid = jpeg_url.split("/Messages/")[1].split("/")[0]
    png_url = twilio.add_media(account[0], PNG, "image/png", message_sid=message_sid)
    mms = sms(account, "Here are the photos", media=[(jpeg_url, "image/jpeg"), (png_url, "image/png")])
    assert post_twilio(client, inbound(sms_channel), account[1], mms).status_code == 200
    # Twilio posting the same webhook again is a duplicate, not a second thread.
    assert post_twilio(client, inbound(sms_channel), account[1], text).status_code == 200

    pulled = desk_emulator.pull(app, sms_channel)

    assert pulled.status == 200
    assert pulled.thread_ids == [text["MessageSid"], mms["MessageSid"]]
    assert desk_emulator.created_twice() == {}
    assert list(desk_emulator.tickets) == [CUSTOMER]
    assert desk_emulator.tickets[CUSTOMER]["subject"] == "Hello, my order has not arrived"
    first, photos = desk_emulator.threads[text["MessageSid"]], desk_emulator.threads[mms["MessageSid"]]
    assert first["actor"] == {"extId": CUSTOMER, "name": CUSTOMER, "displayName": CUSTOMER, "phone": CUSTOMER}
    assert first["content"] == "Hello, my order has not arrived"
    lines = photos["content"].split("\n")
    assert lines[0] == "Here are the photos"
    assert [line.split(": ", 1)[0] for line in lines[2:]] == ["media-0.jpg", "media-1.png"]
    links = [line.split(": ", 1)[1] for line in lines[2:]]
    # Desk gets proxy links only: no Twilio URL, account or media sid.
    assert twilio.base_url not in photos["content"] and account[0] not in photos["content"]

    for link, content, content_type in zip(links, (JPEG, PNG), ("image/jpeg", "image/png"), strict=True):
        served = client.get(proxy_path(link))
        assert served.status_code == 200
        assert served.data == content
        assert served.mimetype == content_type
        assert account[1] not in str(served.headers)
    assert twilio.media_fetches(jpeg_url) == 1 and twilio.media_fetches(png_url) == 1
    basic = base64.b64encode(f"{account[0]}:{account[1]}".encode()).decode()
    media_calls = [call for call in twilio.requests if call.kind == MEDIA]
    assert [call.headers.get("authorization") for call in media_calls] == [f"Basic {basic}"] * 2
    assert account[1] not in caplog.text and basic not in caplog.text


def test_whatsapp_message_round_trips_from_the_channels_whatsapp_sender(
    app: Flask, account: tuple[str, str], twilio: FakeTwilio, desk_emulator: DeskEmulator
) -> None:
    channel = new_channel(app, account, **{"from": WA_FROM})
    client = app.test_client()
    params = sms(account, "Hola", to=WA_FROM, whatsapp=True, profile_name="Ana García")
    assert post_twilio(client, inbound(channel), account[1], params).status_code == 200

    desk_emulator.pull(app, channel)
    conversation = f"whatsapp:{CUSTOMER}"
    assert desk_emulator.threads[params["MessageSid"]]["actor"] == {
        "extId": conversation, "name": "Ana García", "displayName": "Ana García", "phone": CUSTOMER,
    }
    answer = push(client, channel, "wa-1", parent=conversation, content="¡Hola Ana!")

    assert answer.status_code == 200, answer.get_json()
    [sent] = twilio.messages
    assert (sent.to, sent.from_, sent.body) == (conversation, WA_FROM, "¡Hola Ana!")
    assert answer.get_json()["extId"] == sent.sid


def test_a_message_with_neither_text_nor_media_is_acknowledged_and_not_stored(
    app: Flask, sms_channel: dict[str, Any], account: tuple[str, str], desk_emulator: DeskEmulator
) -> None:
    client = app.test_client()
    answer = post_twilio(client, inbound(sms_channel), account[1], sms(account, ""))
    assert answer.status_code == 200 and answer.mimetype == "text/xml"
    assert desk_emulator.pull(app, sms_channel).thread_ids == []


def test_a_shared_whatsapp_location_becomes_text_with_a_map_link(
    app: Flask, account: tuple[str, str], desk_emulator: DeskEmulator
) -> None:
    channel = new_channel(app, account, **{"from": WA_FROM})
    params = {**sms(account, "", to=WA_FROM, whatsapp=True), "Latitude": "40.4168", "Longitude": "-3.7038",
              "Label": "Puerta del Sol"}
    assert post_twilio(app.test_client(), inbound(channel), account[1], params).status_code == 200
    desk_emulator.pull(app, channel)
    assert desk_emulator.threads[params["MessageSid"]]["content"] == (
        "Location: Puerta del Sol\nhttps://www.google.com/maps/search/?api=1&query=40.4168,-3.7038"
    )


# --- signatures ----------------------------------------------------------------------------------


@pytest.mark.parametrize("case", [
    "missing", "wrong token", "tampered field", "blank field left out", "another channel's URL",
    "the status URL", "another host", "query added",
])
def test_inbound_without_a_valid_signature_is_401_and_nothing_is_stored(
    app: Flask, sms_channel: dict[str, Any], account: tuple[str, str], desk_emulator: DeskEmulator, case: str
) -> None:
    other = new_channel(app, account, **{"from": SMS_FROM})
    client = app.test_client()
    path = inbound(sms_channel)
    params = sms(account, "Let me in")
    token, signed_url, sent = account[1], PUBLIC_BASE + path, dict(params)
    if case == "wrong token":
        token = "0" * 32
    elif case == "tampered field":
        sent["Body"] = "Something else"
    elif case == "blank field left out":
        sent.pop("FromCity")  # blank fields are signed too
    elif case == "another channel's URL":
        signed_url = PUBLIC_BASE + inbound(other)
    elif case == "the status URL":
        signed_url = PUBLIC_BASE + path + "/status"
    elif case == "another host":
        signed_url = "https://attacker.example" + path
    elif case == "query added":
        path += "?extra=1"
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    if case != "missing":
        headers[SIGNATURE_HEADER] = signature(token, signed_url, params)

    answer = client.post(path, data=urlencode(sent), headers=headers)

    assert answer.status_code == 401
    assert answer.get_json()["error"] in ("missing_signature", "invalid_signature")
    assert desk_emulator.pull(app, sms_channel).thread_ids == []


def test_a_configured_query_string_is_part_of_the_signed_url(
    app: Flask, sms_channel: dict[str, Any], account: tuple[str, str], desk_emulator: DeskEmulator
) -> None:
    path = inbound(sms_channel) + "?source=sms"
    params = sms(account, "With a query")
    assert post_twilio(app.test_client(), path, account[1], params).status_code == 200
    assert desk_emulator.pull(app, sms_channel).thread_ids == [params["MessageSid"]]


def test_webhooks_over_real_http_are_verified_against_the_public_url(
    app: Flask, sms_channel: dict[str, Any], account: tuple[str, str], twilio: FakeTwilio,
    desk_emulator: DeskEmulator,
) -> None:
    with serving(app) as base:
        status, headers, _ = twilio.send_inbound(
            base + inbound(sms_channel), sms_channel["inbound"]["webhook_url"], account[0], CUSTOMER, SMS_FROM,
            "Over the wire",
        )
        assert (status, headers["content-type"].split(";")[0]) == (200, "text/xml")
        assert push(app.test_client(), sms_channel, "wire-1").status_code == 200
        [sent] = twilio.messages
        answers = twilio.send_status_callbacks(sent.sid, ["sent", "delivered"], base)
    assert [answer[0] for answer in answers] == [204, 204]
    assert desk_emulator.pull(app, sms_channel).thread_ids == [twilio.inbound[0].sid]
    assert ledger_entry(app.test_client(), "wire-1")["delivery_status"] == "delivered"


# --- replies out, and their status callbacks -----------------------------------------------------


def test_agent_reply_goes_out_with_a_status_callback_and_a_later_undelivered_report_shows_in_the_ledger(
    app: Flask, sms_channel: dict[str, Any], account: tuple[str, str], twilio: FakeTwilio
) -> None:
    client = app.test_client()
    answer = push(client, sms_channel, "r-1", content="Your parcel ships today.")

    assert answer.status_code == 200, answer.get_json()
    [sent] = twilio.messages
    assert (sent.to, sent.from_, sent.body) == (CUSTOMER, SMS_FROM, "Your parcel ships today.")
    status_url = f"{PUBLIC_BASE}/inbound/{sms_channel['id']}/status"
    assert sent.status_callback == status_url
    assert answer.get_json()["extId"] == sent.sid
    entry = ledger_entry(client, "r-1")
    assert (entry["status"], entry["external_id"], entry["delivery_status"]) == ("sent", sent.sid, "queued")

    for status, code in (("sent", None), ("undelivered", 63016)):
        params = status_callback_params(twilio.set_status(sent.sid, status, code), status, code)
        callback = post_twilio(client, urlsplit(status_url).path, account[1], params, signed_url=status_url)
        assert callback.status_code == 204

    entry = ledger_entry(client, "r-1")
    assert entry["status"] == "sent"
    assert entry["delivery_status"] == "undelivered"
    assert entry["delivery_error"].startswith("63016: Failed to send freeform message")
    assert len(twilio.messages) == 1


def test_a_callback_without_its_message_gets_a_short_text_for_known_codes(
    app: Flask, sms_channel: dict[str, Any], account: tuple[str, str], twilio: FakeTwilio
) -> None:
    client = app.test_client()
    assert push(client, sms_channel, "r-2").status_code == 200
    [sent] = twilio.messages
    params = status_callback_params(sent, "undelivered", 63016)
    params.pop("ErrorMessage")  # Twilio's callbacks usually carry only the code
    path = f"/inbound/{sms_channel['id']}/status"
    assert post_twilio(client, path, account[1], params).status_code == 204
    assert ledger_entry(client, "r-2")["delivery_error"] == (
        "63016: outside the WhatsApp 24-hour window: only a template message can be sent"
    )


def test_out_of_order_status_callbacks_keep_the_later_stage(
    app: Flask, sms_channel: dict[str, Any], account: tuple[str, str], twilio: FakeTwilio
) -> None:
    client = app.test_client()
    assert push(client, sms_channel, "r-3").status_code == 200
    [sent] = twilio.messages
    path = f"/inbound/{sms_channel['id']}/status"
    for status in ("delivered", "sent"):
        assert post_twilio(client, path, account[1], status_callback_params(sent, status)).status_code == 204
    assert ledger_entry(client, "r-3")["delivery_status"] == "delivered"


@pytest.mark.parametrize("case", ["missing", "wrong token", "signed for the inbound URL"])
def test_an_unsigned_status_callback_is_401_and_changes_nothing(
    app: Flask, sms_channel: dict[str, Any], account: tuple[str, str], twilio: FakeTwilio, case: str
) -> None:
    client = app.test_client()
    assert push(client, sms_channel, "r-4").status_code == 200
    [sent] = twilio.messages
    path = f"/inbound/{sms_channel['id']}/status"
    params = status_callback_params(sent, "failed", 30007)
    token = "f" * 32 if case == "wrong token" else account[1]
    signed_url = PUBLIC_BASE + inbound(sms_channel) if case == "signed for the inbound URL" else None
    answer = post_twilio(client, path, token, params, signed_url=signed_url, signed=case != "missing")
    assert answer.status_code == 401
    assert ledger_entry(client, "r-4")["delivery_status"] == "queued"


def test_a_recipient_who_unsubscribed_is_422_to_desk_with_twilios_message(
    app: Flask, sms_channel: dict[str, Any], twilio: FakeTwilio
) -> None:
    twilio.opt_out(CUSTOMER)
    client = app.test_client()
    answer = push(client, sms_channel, "r-5")

    assert answer.status_code == 422
    assert "Twilio refused the message (21610): Attempt to send to unsubscribed recipient." in (
        answer.get_json()["message"]
    )
    entry = ledger_entry(client, "r-5")
    assert entry["status"] == "failed" and len(entry["attempts_history"]) == 1
    assert len([call for call in twilio.requests if call.kind == CREATE]) == 1


@pytest.mark.parametrize("fault", [HTTP_429, HTTP_500, HTTP_503, "20429 with HTTP 400"])
def test_busy_or_failing_twilio_is_retried_within_the_push_deadline(
    app: Flask, sms_channel: dict[str, Any], twilio: FakeTwilio, fault: str
) -> None:
    if fault == "20429 with HTTP 400":
        twilio.fail_with(400, 20429, "Too Many Requests", on=CREATE)
    else:
        twilio.fail(fault, on=CREATE)
    client = app.test_client()
    answer = push(client, sms_channel, "r-6")

    assert answer.status_code == 200, answer.get_json()
    entry = ledger_entry(client, "r-6")
    assert [attempt["outcome"] for attempt in entry["attempts_history"]] == ["transient", "sent"]
    assert len(twilio.messages) == 1


def test_twilio_failing_until_the_deadline_is_502_to_desk(
    build_app: Callable[..., Flask], account: tuple[str, str], twilio: FakeTwilio
) -> None:
    app = build_app(PUSH_DEADLINE_SECONDS="1")
    channel = new_channel(app, account, **{"from": SMS_FROM})
    twilio.fail(HTTP_500, times=None, on=CREATE)
    answer = push(app.test_client(), channel, "r-7")
    assert answer.status_code == 502
    assert "Twilio could not take the message now (20500): Internal Server Error." in answer.get_json()["message"]
    assert twilio.messages == []


def test_a_timeout_after_sending_is_not_sent_again_automatically(
    build_app: Callable[..., Flask], account: tuple[str, str], twilio: FakeTwilio
) -> None:
    app = build_app(PUSH_DEADLINE_SECONDS="1")
    channel = new_channel(app, account, **{"from": SMS_FROM})
    twilio.fail(HANG, on=CREATE)
    client = app.test_client()
    answer = push(client, channel, "r-8")
    assert answer.status_code == 502
    assert "not sent again automatically" in answer.get_json()["message"]
    assert len([call for call in twilio.requests if call.kind == CREATE]) == 1
    assert ledger_entry(client, "r-8")["status"] == "failed"


def test_a_reply_over_1600_characters_is_sent_in_parts_and_agents_attachments_are_named(
    app: Flask, sms_channel: dict[str, Any], twilio: FakeTwilio
) -> None:
    paragraph = "word " * 199 + "end."  # 999 characters
    content = f"{paragraph}\n\n{paragraph}"
    answer = push(app.test_client(), sms_channel, "r-9", content=content, summary=content,
                  attachments=[{"name": "invoice.pdf"}])

    assert answer.status_code == 200, answer.get_json()
    first, second = twilio.messages
    assert (first.body, second.body) == (paragraph, f"{paragraph}\n\nAttachments: invoice.pdf")
    assert answer.get_json()["extId"] == first.sid


def test_a_messaging_service_sends_without_from_and_replaces_the_number(
    app: Flask, sms_channel: dict[str, Any], account: tuple[str, str], twilio: FakeTwilio
) -> None:
    service = twilio.add_messaging_service(account[0], [SMS_FROM])
    client = app.test_client()
    changed = client.patch(f"/api/channels/{sms_channel['id']}", headers=ADMIN,
                           json={"messaging_service_sid": service})
    assert changed.status_code == 200, changed.get_json()

    assert push(client, sms_channel, "r-10").status_code == 200
    [sent] = twilio.messages
    assert (sent.messaging_service_sid, sent.param("From")) == (service, None)
    assert ledger_entry(client, "r-10")["delivery_status"] == "accepted"
    both = client.patch(f"/api/channels/{sms_channel['id']}", headers=ADMIN,
                        json={"messaging_service_sid": service, "from": SMS_FROM})
    assert both.status_code == 422
    assert set(both.get_json()["fields"]) == {"from", "messaging_service_sid"}


# --- channel administration ----------------------------------------------------------------------


def test_channel_creation_prints_the_urls_to_configure_and_the_token_once(
    app: Flask, account: tuple[str, str]
) -> None:
    client = app.test_client()
    created = client.post("/api/channels", headers=ADMIN, json={
        "connector": "twilio", "account_sid": account[0], "auth_token": account[1], "from": SMS_FROM,
        "name": "SMS line",
    })
    assert created.status_code == 201, created.get_json()
    body = created.get_json()
    channel_id = body["id"]
    assert body["inbound"] == {
        "path": f"/inbound/{channel_id}",
        "webhook_url": f"{PUBLIC_BASE}/inbound/{channel_id}",
        "status_callback_url": f"{PUBLIC_BASE}/inbound/{channel_id}/status",
    }
    assert body["settings"] == {"account_sid": account[0], "from": SMS_FROM, "auth_token": account[1]}
    assert account[1] not in client.get("/api/channels", headers=ADMIN).get_data(as_text=True)
    assert account[1] not in client.get(f"/api/channels/{channel_id}", headers=ADMIN).get_data(as_text=True)


@pytest.mark.parametrize(("fields", "named"), [
    ({"from": SMS_FROM, "messaging_service_sid": "MG" + "0" * 32}, {"from", "messaging_service_sid"}),
    ({}, {"from", "messaging_service_sid"}),
    ({"from": "5550001111"}, {"from"}),
    ({"from": SMS_FROM, "account_sid": "AC123"}, {"account_sid"}),
    ({"from": SMS_FROM, "auth_token": ""}, {"auth_token"}),
    ({"messaging_service_sid": "MS" + "0" * 32}, {"messaging_service_sid"}),
])
def test_invalid_settings_are_422_naming_the_fields(
    app: Flask, account: tuple[str, str], fields: dict[str, str], named: set[str]
) -> None:
    data = {"connector": "twilio", "account_sid": account[0], "auth_token": account[1], **fields}
    answer = app.test_client().post("/api/channels", headers=ADMIN, json=data)
    assert answer.status_code == 422
    assert set(answer.get_json()["fields"]) == named


def test_whatsapp_prefix_is_accepted_in_any_case_and_stored_in_lower_case(
    app: Flask, account: tuple[str, str]
) -> None:
    channel = new_channel(app, account, **{"from": "WhatsApp:+15550002222"})
    assert channel["settings"]["from"] == WA_FROM


def test_a_twilio_channel_needs_public_base_url(make_app: Callable[..., Flask], account: tuple[str, str]) -> None:
    app = make_app(connectors={"twilio": TwilioKind})
    data = {"connector": "twilio", "account_sid": account[0], "auth_token": account[1], "from": SMS_FROM}
    answer = app.test_client().post("/api/channels", headers=ADMIN, json=data)
    assert answer.status_code == 422
    assert answer.get_json()["error"] == "public_base_url_required"


@pytest.mark.parametrize("which", ["inbound", "outbound"])
def test_rotating_a_twilio_secret_is_422_saying_how_to_change_the_token(
    app: Flask, sms_channel: dict[str, Any], which: str
) -> None:
    answer = app.test_client().post(f"/api/channels/{sms_channel['id']}/rotate", headers=ADMIN,
                                    json={"secret": which})
    assert answer.status_code == 422
    assert "--auth-token" in answer.get_json()["message"]


def test_after_the_token_is_rotated_at_twilio_channel_update_makes_replies_and_webhooks_work(
    app: Flask, sms_channel: dict[str, Any], account: tuple[str, str], twilio: FakeTwilio,
    desk_emulator: DeskEmulator, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    new_token = "a" * 32
    twilio.add_account(account[0], new_token)  # the token rotated at Twilio
    twilio.add_number(account[0], SMS_FROM)
    client = app.test_client()
    refused = push(client, sms_channel, "r-11")
    assert refused.status_code == 422
    assert "credentials" in refused.get_json()["message"]

    updated = client.patch(f"/api/channels/{sms_channel['id']}", headers=ADMIN, json={"auth_token": new_token})
    assert updated.status_code == 200, updated.get_json()
    assert new_token not in updated.get_data(as_text=True)

    assert push(client, sms_channel, "r-11").status_code == 200
    signed_new = sms(account, "Signed with the new token")
    assert post_twilio(client, inbound(sms_channel), new_token, signed_new).status_code == 200
    # Until Twilio promotes the new token it signs with the old one: that keeps verifying for a while.
    signed_old = sms(account, "Signed with the old token")
    assert post_twilio(client, inbound(sms_channel), account[1], signed_old).status_code == 200
    assert post_twilio(client, inbound(sms_channel), "b" * 32, sms(account, "Forged")).status_code == 401
    assert desk_emulator.pull(app, sms_channel).thread_ids == [signed_new["MessageSid"], signed_old["MessageSid"]]
    assert new_token not in caplog.text and account[1] not in caplog.text


# --- the media proxy -----------------------------------------------------------------------------


def test_media_proxy_is_404_for_a_bad_token_and_502_when_twilio_fails(
    app: Flask, sms_channel: dict[str, Any], account: tuple[str, str], twilio: FakeTwilio,
    desk_emulator: DeskEmulator,
) -> None:
    client = app.test_client()
    media_url = twilio.add_media(account[0], JPEG, "image/jpeg")
    params = sms(account, "", media=[(media_url, "image/jpeg")])
    assert post_twilio(client, inbound(sms_channel), account[1], params).status_code == 200
    desk_emulator.pull(app, sms_channel)
    path = proxy_path(desk_emulator.threads[params["MessageSid"]]["content"].split(": ", 1)[1])

    assert client.get(path[:-3] + ("AAA" if not path.endswith("AAA") else "BBB")).status_code == 404
    assert client.get("/media/not-a-token").status_code == 404
    twilio.fail(HTTP_500, on=MEDIA)
    failed = client.get(path)
    assert failed.status_code == 502
    assert failed.get_json()["error"] == "provider_failed"
    assert account[1] not in failed.get_data(as_text=True)
    assert client.get(path).data == JPEG  # once Twilio is back, the stored link works
    deleted = media_url.rsplit("/", 1)[0] + "/ME" + "9" * 32  # a file Twilio no longer has
    gone = sms(account, "", media=[(deleted, "image/jpeg")], message_sid="MM" + "8" * 32)
    assert post_twilio(client, inbound(sms_channel), account[1], gone).status_code == 200
    desk_emulator.pull(app, sms_channel)
    gone_path = proxy_path(desk_emulator.threads[gone["MessageSid"]]["content"].split(": ", 1)[1])
    assert client.get(gone_path).status_code == 404


def test_media_over_media_max_bytes_is_413(
    build_app: Callable[..., Flask], account: tuple[str, str], twilio: FakeTwilio, desk_emulator: DeskEmulator
) -> None:
    app = build_app(MEDIA_MAX_BYTES="1024")
    channel = new_channel(app, account, **{"from": SMS_FROM})
    media_url = twilio.add_media(account[0], b"x" * 2048, "video/mp4")
    params = sms(account, "A video", media=[(media_url, "video/mp4")])
    client = app.test_client()
    assert post_twilio(client, inbound(channel), account[1], params).status_code == 200
    desk_emulator.pull(app, channel)
    link = desk_emulator.threads[params["MessageSid"]]["content"].split("media-0.mp4: ", 1)[1]
    assert client.get(proxy_path(link)).status_code == 413


def test_media_redirected_to_a_cdn_get_the_credentials_only_at_twilio(
    make_app: Callable[..., Flask], desk_emulator: DeskEmulator
) -> None:
    sid, token = "AC" + "1" * 32, "2" * 32
    with redirecting_twilio(sid, token, PNG) as (api_base, seen):
        app = make_app(connectors={"twilio": TwilioKind}, PUBLIC_BASE_URL=PUBLIC_BASE, TWILIO_API_BASE=api_base)
        channel = new_channel(app, (sid, token), **{"from": SMS_FROM})
        media_url = f"{api_base}/2010-04-01/Accounts/{sid}/Messages/MM{'3' * 32}/Media/ME{'4' * 32}"
        params = inbound_sms_params(sid, CUSTOMER, SMS_FROM, "", media=[(media_url, "image/png")])
        client = app.test_client()
        assert post_twilio(client, inbound(channel), token, params).status_code == 200
        desk_emulator.pull(app, channel)
        link = desk_emulator.threads[params["MessageSid"]]["content"].split(": ", 1)[1]

        served = client.get(proxy_path(link))

    assert served.status_code == 200 and served.data == PNG and served.mimetype == "image/png"
    basic = "Basic " + base64.b64encode(f"{sid}:{token}".encode()).decode()
    assert seen == [("twilio", basic), ("cdn", None)]


# --- units ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("refusal", "kind"), [(500, "could not take"), (400, "refused")])
def test_a_part_failing_after_the_first_was_sent_ends_the_delivery_without_an_automatic_retry(
    refusal: int, kind: str
) -> None:
    created: list[str] = []

    def answer(method: str, path: str, headers: dict[str, str]) -> Answer:
        if created:
            return refusal, {"Content-Type": "application/json"}, b'{"code": 20500, "message": "Boom"}'
        created.append(f"SM{'5' * 32}")
        return 201, {"Content-Type": "application/json"}, f'{{"sid": "{created[0]}", "status": "queued"}}'.encode()

    reply = OutboundReply(channel_id="ch_t", reply_id="9", conversation_id=CUSTOMER, in_reply_to=None,
                          content="x", content_type="text/plain", text="word " * 700)
    with scripted_server(answer) as base:
        connector = TwilioConnector(f"{base}/Messages.json", ("AC" + "0" * 32, "secret-token"), {"From": SMS_FROM},
                                    None, make_http_session(allow_private=True))
        with pytest.raises(PermanentDeliveryError) as raised:
            connector.deliver(reply, 2.0)
    assert raised.value.outcome_unknown
    assert raised.value.message.startswith(f"Twilio accepted part 1 of 3 (first SM{'5' * 32}) but not part 2: "
                                           f"Twilio {kind}")
    assert "secret-token" not in raised.value.message


def test_split_body_keeps_parts_within_1600_utf16_units_and_loses_no_words() -> None:
    assert split_body("short") == ["short"]
    assert split_body("") == [""]
    emoji = "😀" * 1000  # 2000 UTF-16 units
    parts = split_body(emoji)
    assert [len(part) for part in parts] == [800, 200]
    words = " ".join(f"w{index}" for index in range(1500))
    parts = split_body(words)
    assert all(len(part.encode("utf-16-le")) // 2 <= 1600 for part in parts)
    assert " ".join(parts).split() == words.split()
    assert split_body("x" * 3300) == ["x" * 1600, "x" * 1600, "x" * 100]


# --- helpers -------------------------------------------------------------------------------------


# What a scripted server answers: status, headers, body.
Answer = tuple[int, dict[str, str], bytes]


@contextmanager
def scripted_server(answer: Callable[[str, str, dict[str, str]], Answer]) -> Iterator[str]:
    """An HTTP server on 127.0.0.1 answering each request with answer(method, path, headers); its base URL."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            """Quiet."""

        def do_GET(self) -> None:
            self._answer("GET")

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self._answer("POST")

        def _answer(self, method: str) -> None:
            status, headers, body = answer(method, self.path, {k.lower(): v for k, v in self.headers.items()})
            self.send_response(status)
            for name, value in {**headers, "Content-Length": str(len(body))}.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@contextmanager
def redirecting_twilio(sid: str, token: str, content: bytes) -> Iterator[tuple[str, list[tuple[str, str | None]]]]:
    """A Twilio media host on 127.0.0.1 that checks Basic auth and redirects (307) to a CDN on another host
    name (localhost), as Twilio does; yields its base URL and who saw which Authorization header."""
    seen: list[tuple[str, str | None]] = []
    expected = "Basic " + base64.b64encode(f"{sid}:{token}".encode()).decode()
    port: list[int] = []

    def answer(method: str, path: str, headers: dict[str, str]) -> Answer:
        authorization = headers.get("authorization")
        if path.startswith("/cdn/"):
            seen.append(("cdn", authorization))
            return 200, {"Content-Type": "image/png"}, content
        seen.append(("twilio", authorization))
        if authorization != expected:
            return 401, {}, b""
        return 307, {"Location": f"http://localhost:{port[0]}/cdn/file?Signature=x"}, b""

    with scripted_server(answer) as base:
        port.append(int(urlsplit(base).port or 0))
        yield base, seen
