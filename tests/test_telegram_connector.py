"""The telegram connector (SPEC B15) end to end: channels registered with a fake Bot API over real HTTP,
updates into Desk's pull, agent replies out as sendMessage, the bot's files through the media proxy."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from app.connectors.base import ChannelConfig, ChannelSecrets, KindContext, OutboundReply, PermanentDeliveryError
from app.connectors.http import make_http_session
from app.connectors.media import MediaLinks
from app.connectors.telegram import TelegramKind, read_update, split_text
from app.connectors.text import utf16_units
from app.domain.errors import Invalid
from app.store.models import Channel, InboxMessage, Reply
from app.usecases.channels import create_channel
from tests.conftest import ADMIN_TOKEN
from tests.desk_emulator import DeskEmulator
from tests.fake_telegram import (
    BLOCKED,
    FILE_DOWNLOAD,
    FLOOD,
    HANG,
    SECRET_TOKEN_HEADER,
    SERVER_ERROR,
    FakeTelegram,
    audio_update,
    document_update,
    edited_update,
    fake_telegram,  # noqa: F401 (the fixture)
    new_token,
    photo_update,
    poll_update,
    sticker_update,
    text_update,
    user,
    video_update,
    voice_update,
)
from tests.receiver import closed_port
from tests.support import desk_push_body, services, serving

PUBLIC_BASE_URL = "https://deskbridge.example"
CHAT = 424242
PUSH_URL = "/desk/push?orgId=42"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
SECRET_SHAPE = re.compile(r"[A-Za-z0-9_-]{1,256}")


@pytest.fixture
def tg_app(make_app: Callable[..., Flask], fake_telegram: FakeTelegram) -> Flask:  # noqa: F811
    """The app with the telegram kind, a public base URL and the fake Bot API."""
    return make_app(connectors={"telegram": TelegramKind}, PUBLIC_BASE_URL=PUBLIC_BASE_URL,
                    TELEGRAM_API_BASE=fake_telegram.base_url)


@pytest.fixture
def tg_client(tg_app: Flask) -> FlaskClient:
    return tg_app.test_client()


@pytest.fixture
def bot_channel(tg_app: Flask, fake_telegram: FakeTelegram) -> dict[str, Any]:  # noqa: F811
    """A telegram channel of the fake's bot, as `channel create` printed it."""
    return new_telegram_channel(tg_app, fake_telegram.token)


def new_telegram_channel(app: Flask, token: str) -> dict[str, Any]:
    svc = services(app)
    return create_channel(svc.db, svc.keyring, svc.connectors, {"connector": "telegram", "bot_token": token})


def post_update(client: FlaskClient, fake: FakeTelegram, channel: dict[str, Any], update: dict[str, Any],
                secret: str | None = "registered", token: str | None = None) -> Any:
    """POST an update to the channel's inbound path as Telegram would (with the registered secret token)."""
    fake.remember(update)  # the chat and message become known to the fake, so replies to them succeed
    headers = {}
    if secret == "registered":
        secret = fake.webhook(token).secret_token
    if secret is not None:
        headers[SECRET_TOKEN_HEADER] = secret
    return client.post(channel["inbound"]["path"], json=update, headers=headers)


def inbox(app: Flask) -> list[InboxMessage]:
    with services(app).db.session() as session:
        return list(session.scalars(select(InboxMessage).order_by(InboxMessage.seq)))


def ledger(app: Flask) -> list[Reply]:
    with services(app).db.session() as session:
        return list(session.scalars(select(Reply).order_by(Reply.id)))


def channels(app: Flask) -> list[Channel]:
    with services(app).db.session() as session:
        return list(session.scalars(select(Channel)))


def media_path(url: str) -> str:
    """The path of a media proxy link (the test client serves any host)."""
    assert url.startswith(f"{PUBLIC_BASE_URL}/media/"), url
    return urlsplit(url).path


# --- channel creation -----------------------------------------------------------------------------


def test_creating_a_channel_checks_the_token_and_registers_the_webhook_with_a_random_secret(
    tg_app: Flask, tg_client: FlaskClient, fake_telegram: FakeTelegram  # noqa: F811
) -> None:
    answer = tg_client.post("/api/channels", json={"connector": "telegram", "bot_token": fake_telegram.token,
                                                   "name": "support bot"}, headers=ADMIN)

    assert answer.status_code == 201, answer.json
    created = answer.json
    channel_id = created["id"]
    bot = fake_telegram.bot()
    hook = fake_telegram.webhook()
    assert created["inbound"] == {"path": f"/inbound/{channel_id}",
                                  "webhook_url": f"{PUBLIC_BASE_URL}/inbound/{channel_id}"}
    assert created["settings"] == {"bot_username": bot.username, "bot_token": fake_telegram.token}
    assert hook.url == f"{PUBLIC_BASE_URL}/inbound/{channel_id}"
    assert hook.secret_token and SECRET_SHAPE.fullmatch(hook.secret_token) and len(hook.secret_token) >= 32
    assert hook.secret_token not in answer.get_data(as_text=True)  # Telegram holds it; nobody else needs it
    assert bot.allowed_updates == ["message", "edited_message"]
    assert [call.name for call in fake_telegram.calls] == ["getme", "setwebhook"]
    [row] = channels(tg_app)
    assert row.settings == {"bot_id": bot.id, "bot_username": bot.username}
    stored = str(row.secrets)
    assert fake_telegram.token not in stored and hook.secret_token not in stored  # encrypted
    assert fake_telegram.errors == []


def test_two_channels_get_different_secret_tokens(
    tg_app: Flask, fake_telegram: FakeTelegram  # noqa: F811
) -> None:
    other = fake_telegram.add_bot().token
    new_telegram_channel(tg_app, fake_telegram.token)
    new_telegram_channel(tg_app, other)

    assert fake_telegram.webhook().secret_token != fake_telegram.webhook(other).secret_token


def test_a_bot_token_telegram_refuses_creates_no_channel_and_says_why(
    tg_app: Flask, tg_client: FlaskClient, fake_telegram: FakeTelegram  # noqa: F811
) -> None:
    unknown = new_token()

    answer = tg_client.post("/api/channels", json={"connector": "telegram", "bot_token": unknown}, headers=ADMIN)

    assert answer.status_code == 422
    assert answer.json["error"] == "bot_token_refused"
    assert "Unauthorized" in answer.json["message"]
    assert "Unauthorized" in answer.json["fields"]["bot_token"][0]
    assert unknown not in answer.get_data(as_text=True)
    assert channels(tg_app) == []
    assert fake_telegram.call_count("setWebhook") == 0


@pytest.mark.parametrize("token", ["", "not-a-token", "123:short", "123456:" + "a" * 29, "x123456:" + "a" * 35])
def test_a_badly_shaped_bot_token_is_refused_before_telegram_is_called(
    tg_app: Flask, tg_client: FlaskClient, fake_telegram: FakeTelegram, token: str  # noqa: F811
) -> None:
    answer = tg_client.post("/api/channels", json={"connector": "telegram", "bot_token": token}, headers=ADMIN)

    assert answer.status_code == 422
    assert "bot_token" in answer.json["fields"]
    assert fake_telegram.calls == []
    assert channels(tg_app) == []


def test_a_bot_token_is_required(tg_client: FlaskClient) -> None:
    answer = tg_client.post("/api/channels", json={"connector": "telegram"}, headers=ADMIN)

    assert answer.status_code == 422
    assert "bot_token" in answer.json["fields"]


def test_unreachable_telegram_creates_no_channel_and_says_so(make_app: Callable[..., Flask]) -> None:
    app = make_app(connectors={"telegram": TelegramKind}, PUBLIC_BASE_URL=PUBLIC_BASE_URL,
                   TELEGRAM_API_BASE=f"http://127.0.0.1:{closed_port()}")
    token = new_token()

    answer = app.test_client().post("/api/channels", json={"connector": "telegram", "bot_token": token},
                                    headers=ADMIN)

    assert answer.status_code == 422
    assert answer.json["error"] == "telegram_unreachable"
    assert "Telegram could not be reached" in answer.json["message"]
    assert token not in answer.get_data(as_text=True)
    assert channels(app) == []


def test_a_telegram_channel_needs_a_public_base_url(
    make_app: Callable[..., Flask], fake_telegram: FakeTelegram  # noqa: F811
) -> None:
    app = make_app(connectors={"telegram": TelegramKind}, TELEGRAM_API_BASE=fake_telegram.base_url)

    answer = app.test_client().post("/api/channels", json={"connector": "telegram",
                                                           "bot_token": fake_telegram.token}, headers=ADMIN)

    assert answer.status_code == 422
    assert answer.json["error"] == "public_base_url_required"
    assert "PUBLIC_BASE_URL" in answer.json["message"]
    assert fake_telegram.calls == []
    assert channels(app) == []


def test_a_webhook_url_telegram_refuses_creates_no_channel(
    make_app: Callable[..., Flask], fake_telegram: FakeTelegram  # noqa: F811
) -> None:
    app = make_app(connectors={"telegram": TelegramKind}, PUBLIC_BASE_URL="https://deskbridge.example:9443",
                   TELEGRAM_API_BASE=fake_telegram.base_url)

    answer = app.test_client().post("/api/channels", json={"connector": "telegram",
                                                           "bot_token": fake_telegram.token}, headers=ADMIN)

    assert answer.status_code == 422
    assert answer.json["error"] == "webhook_refused"
    assert "ports 80, 88, 443 or 8443" in answer.json["message"] and "PUBLIC_BASE_URL" in answer.json["message"]
    assert channels(app) == []


def test_setwebhook_flood_control_is_waited_out_for_the_operator(
    make_app: Callable[..., Flask],
) -> None:
    with FakeTelegram(set_webhook_interval=1.0) as fake:
        app = make_app(connectors={"telegram": TelegramKind}, PUBLIC_BASE_URL=PUBLIC_BASE_URL,
                       TELEGRAM_API_BASE=fake.base_url)
        channel = new_telegram_channel(app, fake.token)
        first_secret = fake.webhook().secret_token

        answer = app.test_client().post(f"/api/channels/{channel['id']}/rotate", json={"secret": "inbound"},
                                        headers=ADMIN)

        assert answer.status_code == 200, answer.json
        assert [call.status for call in fake.calls_to("setWebhook")] == [200, 429, 200]
        assert fake.webhook().secret_token != first_secret


# --- inbound --------------------------------------------------------------------------------------


def test_text_photo_document_and_edit_reach_desk_once_with_ids_actors_and_media_links(
    tg_app: Flask, bot_channel: dict[str, Any], fake_telegram: FakeTelegram,  # noqa: F811
    desk_emulator: DeskEmulator,
) -> None:
    sent_at = 1_700_000_000
    ada = user(CHAT, first_name="Ada", last_name="Lovelace", username="ada_lovelace")
    updates = [
        text_update(CHAT, "Hello, my order is late", message_id=10, from_user=ada, date=sent_at),
        photo_update(CHAT, message_id=11, caption="This is the box", from_user=ada, date=sent_at + 1),
        document_update(CHAT, message_id=12, file_name="invoice.pdf", from_user=ada, date=sent_at + 2),
        edited_update(CHAT, "Hello, my order is very late", message_id=10, from_user=ada, date=sent_at,
                      edit_date=sent_at + 60),
    ]
    fake_telegram.attach(updates[1], b"\xff\xd8jpeg bytes")
    fake_telegram.attach(updates[2], b"%PDF-1.7 invoice")

    with serving(tg_app) as base:
        answers = [fake_telegram.deliver_to_webhook(fake_telegram.token, update, base) for update in updates]
        again = fake_telegram.deliver_to_webhook(fake_telegram.token, updates[0], base)  # Telegram's retry

    assert answers == [(200, b"{}")] * 4 and again == (200, b"{}")
    pull = desk_emulator.pull(tg_app, bot_channel)
    assert pull.status == 200
    edit_id = f"{CHAT}:10:edit:{sent_at + 60}"
    assert pull.thread_ids == [f"{CHAT}:10", f"{CHAT}:11", f"{CHAT}:12", edit_id]
    assert list(desk_emulator.tickets) == [str(CHAT)]
    ticket = desk_emulator.tickets[str(CHAT)]
    assert ticket["subject"] == "Hello, my order is late"
    actor = {"extId": str(CHAT), "name": "Ada Lovelace", "displayName": "@ada_lovelace"}
    assert ticket["actor"] == actor
    threads = desk_emulator.threads
    assert all(thread["actor"] == actor and thread["extParentId"] == str(CHAT) for thread in threads.values())
    assert threads[f"{CHAT}:10"]["content"] == "Hello, my order is late"
    assert threads[f"{CHAT}:10"]["createdTime"] == "2023-11-14T22:13:20.000Z"
    assert threads[edit_id]["content"] == "Hello, my order is very late"
    assert threads[edit_id]["createdTime"] == "2023-11-14T22:14:20.000Z"
    photo_id = updates[1]["message"]["photo"][-1]["file_unique_id"]
    caption, photo_link = threads[f"{CHAT}:11"]["content"].split("\n\n")
    assert caption == "This is the box"
    assert photo_link.startswith(f"photo-{photo_id}.jpg: {PUBLIC_BASE_URL}/media/")
    assert threads[f"{CHAT}:12"]["content"].startswith(f"invoice.pdf: {PUBLIC_BASE_URL}/media/")
    assert fake_telegram.token not in str(pull.body)
    assert desk_emulator.created_twice() == {} and desk_emulator.errors == []
    assert desk_emulator.pull(tg_app, bot_channel).thread_ids == []


def test_media_links_serve_the_files_without_the_bot_token_in_body_headers_or_logs(
    tg_app: Flask, tg_client: FlaskClient, bot_channel: dict[str, Any], fake_telegram: FakeTelegram,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    photo = photo_update(CHAT, message_id=5, caption="look")
    document = document_update(CHAT, message_id=6, file_name="notes.txt", mime_type="text/plain")
    photo_bytes, document_bytes = b"\xff\xd8\xff\xe0 photo", b"plain notes"
    fake_telegram.attach(photo, photo_bytes)
    fake_telegram.attach(document, document_bytes)

    with caplog.at_level(logging.INFO):
        for update in (photo, document):
            assert post_update(tg_client, fake_telegram, bot_channel, update).status_code == 200
        links = [message.attachments[0]["url"] for message in inbox(tg_app)]
        served = [tg_client.get(media_path(link)) for link in links]
        served_again = tg_client.get(media_path(links[0]))

    assert [answer.status_code for answer in served] == [200, 200]
    assert (served[0].data, served[0].content_type) == (photo_bytes, "image/jpeg")
    assert (served[1].data, served[1].mimetype) == (document_bytes, "text/plain")
    assert served[0].headers["Content-Length"] == str(len(photo_bytes))
    assert served_again.data == photo_bytes
    assert fake_telegram.get_file_calls == 3  # getFile again for every request: Telegram's file links expire
    token = fake_telegram.token
    for answer in [*served, served_again]:
        assert token not in str(answer.headers) and token.encode() not in answer.data
    assert token not in caplog.text
    assert all(token not in link for link in links)
    assert fake_telegram.errors == []


def test_a_voice_video_and_audio_get_names_and_types(
    tg_app: Flask, tg_client: FlaskClient, bot_channel: dict[str, Any], fake_telegram: FakeTelegram  # noqa: F811
) -> None:
    updates = [voice_update(CHAT, message_id=1), video_update(CHAT, message_id=2, file_name=None),
               audio_update(CHAT, message_id=3, caption="my song")]
    for update in updates:
        assert post_update(tg_client, fake_telegram, bot_channel, update).status_code == 200

    voice, video, audio = inbox(tg_app)
    unique = [update["message"][kind]["file_unique_id"] for update, kind in zip(updates, ("voice", "video", "audio"),
                                                                               strict=True)]
    assert [(a["name"], a["content_type"], a["size"]) for a in voice.attachments] == [
        (f"voice-{unique[0]}.ogg", "audio/ogg", 6144)]
    assert [(a["name"], a["content_type"]) for a in video.attachments] == [(f"video-{unique[1]}.mp4", "video/mp4")]
    assert [(a["name"], a["content_type"]) for a in audio.attachments] == [("song.mp3", "audio/mpeg")]
    assert (voice.content, audio.content) == ("", "my song")


def test_a_wrong_or_missing_secret_token_is_401_and_nothing_is_stored(
    tg_app: Flask, tg_client: FlaskClient, bot_channel: dict[str, Any], fake_telegram: FakeTelegram,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    update = text_update(CHAT, "let me in", message_id=1)
    registered = fake_telegram.webhook().secret_token

    with caplog.at_level(logging.INFO):
        answers = [post_update(tg_client, fake_telegram, bot_channel, update, secret=secret)
                   for secret in (None, "", "wrong", registered[:-1], registered + "x", "é" * 10)]

    assert [answer.status_code for answer in answers] == [401] * 6
    assert answers[0].json["error"] == "invalid_secret_token"
    assert inbox(tg_app) == []
    assert registered not in caplog.text


def test_a_sticker_a_poll_and_other_update_types_are_acknowledged_and_skipped(
    tg_app: Flask, tg_client: FlaskClient, bot_channel: dict[str, Any], fake_telegram: FakeTelegram,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    poll = poll_update(CHAT, message_id=2, question="Secret question?")
    callback = {"update_id": 9, "callback_query": {"id": "1", "from": user(CHAT), "data": "private data"}}
    with caplog.at_level(logging.INFO, logger="app.connectors.telegram"):
        answers = [post_update(tg_client, fake_telegram, bot_channel, update)
                   for update in (sticker_update(CHAT, message_id=1), poll, callback)]

    assert [(answer.status_code, answer.json) for answer in answers] == [(200, {})] * 3
    assert inbox(tg_app) == []
    skipped = [record.getMessage() for record in caplog.records if record.name == "app.connectors.telegram"]
    assert skipped == ["telegram update skipped: message with sticker", "telegram update skipped: message with poll",
                       "telegram update skipped: callback_query"]
    assert "Secret question" not in caplog.text and "private data" not in caplog.text


def test_a_body_that_is_not_json_is_400_and_an_update_of_the_wrong_shape_422(
    tg_app: Flask, tg_client: FlaskClient, bot_channel: dict[str, Any], fake_telegram: FakeTelegram  # noqa: F811
) -> None:
    headers = {SECRET_TOKEN_HEADER: fake_telegram.webhook().secret_token}
    path = bot_channel["inbound"]["path"]

    not_json = tg_client.post(path, data=b"{not json", headers={**headers, "Content-Type": "application/json"})
    no_chat = tg_client.post(path, json={"update_id": 1, "message": {"message_id": 1, "date": 1, "text": "hi"}},
                             headers=headers)
    text_id = tg_client.post(path, json={"update_id": 1, "message": {"message_id": "1", "chat": {"id": CHAT},
                                                                      "date": 1, "text": "hi"}}, headers=headers)

    assert not_json.status_code == 400
    assert no_chat.status_code == 422 and "chat" in no_chat.json["fields"]["message"]
    assert text_id.status_code == 422 and "message_id" in text_id.json["fields"]["message"]
    assert inbox(tg_app) == []


def test_a_group_message_is_a_conversation_of_the_group_with_its_sender_as_author() -> None:
    links = MediaLinks(b"k" * 32, PUBLIC_BASE_URL)
    group = {"id": -1001234567890, "title": "Customers", "type": "supergroup"}
    grace = user(77, first_name="Grace", last_name=None, username=None)
    update = text_update(-1001234567890, "hi all\x00", message_id=3, chat=group, from_user=grace, date=0)
    anonymous = text_update(-1001234567890, "admin here", message_id=4, chat=group, from_user={}, date=0)
    del anonymous["message"]["from"]
    anonymous["message"]["sender_chat"] = group

    [message] = read_update(update, lambda ref: links.link("ch_x", ref))
    [from_chat] = read_update(anonymous, lambda ref: links.link("ch_x", ref))

    assert message == {
        "id": "-1001234567890:3", "conversation_id": "-1001234567890", "text": "hi all",
        "created_at": datetime(1970, 1, 1, tzinfo=UTC), "direction": "in", "can_reply": True, "attachments": [],
        "author": {"id": "77", "name": "Grace", "display_name": "Grace"},
    }
    assert from_chat["author"] == {"id": "-1001234567890", "name": "Customers", "display_name": "Customers"}


def test_status_callbacks_are_404_for_telegram(
    tg_client: FlaskClient, bot_channel: dict[str, Any]
) -> None:
    answer = tg_client.post(f"{bot_channel['inbound']['path']}/status", data=b"{}")

    assert answer.status_code == 404


# --- outbound -------------------------------------------------------------------------------------


def test_an_agent_reply_reaches_the_chat_as_a_reply_to_the_customers_message(
    tg_app: Flask, tg_client: FlaskClient, bot_channel: dict[str, Any], fake_telegram: FakeTelegram  # noqa: F811
) -> None:
    post_update(tg_client, fake_telegram, bot_channel, text_update(CHAT, "where is it?", message_id=41))
    body = desk_push_body(bot_channel, extParentId=str(CHAT), replyToExtId=f"{CHAT}:41",
                          content="<p>It ships <b>today</b></p>", contentType="text/html",
                          attachments=[{"name": "label.pdf", "href": "https://desk.zoho.com/a/1"}])

    answer = tg_client.post(PUSH_URL, json=body)

    assert answer.status_code == 200, answer.json
    [sent] = fake_telegram.sent
    assert (sent.token, sent.chat_id, sent.reply_to_message_id) == (fake_telegram.token, CHAT, 41)
    assert sent.text == "It ships today\n\nAttachments: label.pdf"
    assert answer.json["extId"] == f"{CHAT}:{sent.message_id}"
    [row] = ledger(tg_app)
    assert (row.status, row.external_id) == ("sent", f"{CHAT}:{sent.message_id}")


def test_a_reply_to_an_edit_replies_to_the_edited_message_and_one_of_another_chat_to_none(
    tg_client: FlaskClient, bot_channel: dict[str, Any], fake_telegram: FakeTelegram  # noqa: F811
) -> None:
    post_update(tg_client, fake_telegram, bot_channel, text_update(CHAT, "first", message_id=7))

    edit = tg_client.post(PUSH_URL, json=desk_push_body(bot_channel, id="1", extParentId=str(CHAT),
                                                        replyToExtId=f"{CHAT}:7:edit:1700000060"))
    elsewhere = tg_client.post(PUSH_URL, json=desk_push_body(bot_channel, id="2", extParentId=str(CHAT),
                                                             replyToExtId="999:7"))

    assert (edit.status_code, elsewhere.status_code) == (200, 200)
    assert [sent.reply_to_message_id for sent in fake_telegram.sent] == [7, None]


def test_a_blocked_bot_gives_desk_422_with_telegrams_reason(
    tg_app: Flask, tg_client: FlaskClient, bot_channel: dict[str, Any], fake_telegram: FakeTelegram  # noqa: F811
) -> None:
    post_update(tg_client, fake_telegram, bot_channel, text_update(CHAT, "bye", message_id=1))
    fake_telegram.block_chat(CHAT)

    answer = tg_client.post(PUSH_URL, json=desk_push_body(bot_channel, extParentId=str(CHAT)))

    assert answer.status_code == 422
    assert "Forbidden: bot was blocked by the user" in answer.json["message"]
    assert fake_telegram.call_count("sendMessage") == 1  # permanent: not tried again
    [row] = ledger(tg_app)
    assert row.status == "failed" and "bot was blocked by the user" in row.last_error


def test_an_unknown_chat_gives_desk_422(
    tg_client: FlaskClient, bot_channel: dict[str, Any], fake_telegram: FakeTelegram  # noqa: F811
) -> None:
    answer = tg_client.post(PUSH_URL, json=desk_push_body(bot_channel, extParentId="31337"))

    assert answer.status_code == 422
    assert "chat not found" in answer.json["message"]


def test_flood_control_is_waited_out_within_the_push_deadline(
    make_app: Callable[..., Flask], fake_telegram: FakeTelegram  # noqa: F811
) -> None:
    app = make_app(connectors={"telegram": TelegramKind}, PUBLIC_BASE_URL=PUBLIC_BASE_URL,
                   TELEGRAM_API_BASE=fake_telegram.base_url, PUSH_DEADLINE_SECONDS="4")
    channel = new_telegram_channel(app, fake_telegram.token)
    client = app.test_client()
    post_update(client, fake_telegram, channel, text_update(CHAT, "hi", message_id=1))
    fake_telegram.fail("sendMessage", FLOOD, retry_after=1)

    started = time.monotonic()
    answer = client.post(PUSH_URL, json=desk_push_body(channel, extParentId=str(CHAT)))
    took = time.monotonic() - started

    assert answer.status_code == 200, answer.json
    first, second = fake_telegram.calls_to("sendMessage")
    assert (first.status, second.status) == (429, 200)
    assert second.received_at - first.received_at >= 1.0
    assert took < 4 + 1
    assert len(fake_telegram.sent) == 1


def test_flood_control_longer_than_the_deadline_fails_the_push_at_once(
    tg_app: Flask, tg_client: FlaskClient, bot_channel: dict[str, Any], fake_telegram: FakeTelegram  # noqa: F811
) -> None:
    post_update(tg_client, fake_telegram, bot_channel, text_update(CHAT, "hi", message_id=1))
    fake_telegram.fail("sendMessage", FLOOD, retry_after=30)

    started = time.monotonic()
    answer = tg_client.post(PUSH_URL, json=desk_push_body(bot_channel, extParentId=str(CHAT)))

    assert answer.status_code == 502
    assert "retry after 30" in answer.json["message"]
    assert time.monotonic() - started < 1.0
    assert fake_telegram.call_count("sendMessage") == 1


def test_a_telegram_server_error_is_tried_again(
    tg_client: FlaskClient, bot_channel: dict[str, Any], fake_telegram: FakeTelegram  # noqa: F811
) -> None:
    post_update(tg_client, fake_telegram, bot_channel, text_update(CHAT, "hi", message_id=1))
    fake_telegram.fail("sendMessage", SERVER_ERROR, status=502, html=True)

    answer = tg_client.post(PUSH_URL, json=desk_push_body(bot_channel, extParentId=str(CHAT)))

    assert answer.status_code == 200, answer.json
    assert [call.status for call in fake_telegram.calls_to("sendMessage")] == [502, 200]


def test_a_reply_telegram_may_have_sent_is_not_sent_again(
    make_app: Callable[..., Flask], fake_telegram: FakeTelegram  # noqa: F811
) -> None:
    app = make_app(connectors={"telegram": TelegramKind}, PUBLIC_BASE_URL=PUBLIC_BASE_URL,
                   TELEGRAM_API_BASE=fake_telegram.base_url, PUSH_DEADLINE_SECONDS="0.5")
    channel = new_telegram_channel(app, fake_telegram.token)
    client = app.test_client()
    post_update(client, fake_telegram, channel, text_update(CHAT, "hi", message_id=1))
    fake_telegram.fail("sendMessage", HANG)

    answer = client.post(PUSH_URL, json=desk_push_body(channel, extParentId=str(CHAT)))
    fake_telegram.release()

    assert answer.status_code == 502
    assert "outcome unknown" in answer.json["message"].lower()
    assert fake_telegram.call_count("sendMessage") == 1


def test_a_long_reply_is_split_into_parts_sent_in_order(
    tg_app: Flask, tg_client: FlaskClient, bot_channel: dict[str, Any], fake_telegram: FakeTelegram  # noqa: F811
) -> None:
    post_update(tg_client, fake_telegram, bot_channel, text_update(CHAT, "tell me everything", message_id=3))
    paragraphs = [f"Paragraph {n}: " + "lorem ipsum 😀 " * 150 for n in range(5)]
    text = "\n\n".join(paragraph.strip() for paragraph in paragraphs)
    assert utf16_units(text) > 2 * 4096

    answer = tg_client.post(PUSH_URL, json=desk_push_body(bot_channel, extParentId=str(CHAT),
                                                          replyToExtId=f"{CHAT}:3", content=text))

    assert answer.status_code == 200, answer.json
    sent = fake_telegram.sent
    assert len(sent) >= 3
    assert all(utf16_units(part.text) <= 4096 for part in sent)
    assert "\n\n".join(part.text for part in sent) == text  # cut at paragraph boundaries
    assert [part.reply_to_message_id for part in sent] == [3] + [None] * (len(sent) - 1)
    assert answer.json["extId"] == f"{CHAT}:{sent[0].message_id}"


def test_a_later_part_that_fails_leaves_the_reply_sent_with_the_first_parts_id(
    tg_app: Flask, tg_client: FlaskClient, bot_channel: dict[str, Any], fake_telegram: FakeTelegram,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    post_update(tg_client, fake_telegram, bot_channel, text_update(CHAT, "hi", message_id=1))

    def block_after_the_first_part(response: requests.Response, *args: Any, **kwargs: Any) -> None:
        if response.url.endswith("/sendMessage"):
            fake_telegram.block_chat(CHAT)  # the user blocks the bot while the reply is being sent

    services(tg_app).connectors.http.hooks["response"].append(block_after_the_first_part)
    with caplog.at_level(logging.WARNING):
        answer = tg_client.post(PUSH_URL, json=desk_push_body(bot_channel, extParentId=str(CHAT),
                                                              content="word " * 2000))

    assert answer.status_code == 200, answer.json
    [first] = fake_telegram.sent
    assert answer.json["extId"] == f"{CHAT}:{first.message_id}"
    assert [call.status for call in fake_telegram.calls_to("sendMessage")] == [200, 403]
    [row] = ledger(tg_app)
    assert (row.status, row.external_id) == ("sent", f"{CHAT}:{first.message_id}")
    assert "part 2 of 3 was not sent" in caplog.text and "bot was blocked" in caplog.text
    assert fake_telegram.token not in caplog.text


def test_a_flooded_later_part_is_sent_after_telegrams_wait() -> None:
    with FakeTelegram() as fake:
        fake.add_chat(CHAT)
        context = _context(fake)
        flooded: list[bool] = []

        def flood_the_second_part(response: requests.Response, *args: Any, **kwargs: Any) -> None:
            if not flooded:
                flooded.append(True)
                fake.fail("sendMessage", FLOOD, retry_after=1)

        context.http.hooks["response"].append(flood_the_second_part)
        waits: list[float] = []
        kind = TelegramKind(context, sleep=waits.append)

        delivered = kind.outbound(_channel(fake)).deliver(_reply("word " * 1000), 5.0)

        assert [call.status for call in fake.calls_to("sendMessage")] == [200, 429, 200]
        assert waits == [1.0]
        assert [sent.text for sent in fake.sent] == split_text("word " * 1000)
        assert delivered.external_id == f"{CHAT}:{fake.sent[0].message_id}"


def test_an_empty_reply_is_refused_without_calling_telegram() -> None:
    with FakeTelegram() as fake:
        kind = TelegramKind(_context(fake))

        with pytest.raises(PermanentDeliveryError, match="no text"):
            kind.outbound(_channel(fake)).deliver(_reply("  \n"), 2.0)
        assert fake.calls == []


def _context(fake: FakeTelegram) -> KindContext:
    return KindContext(make_http_session(allow_private=True), True, PUBLIC_BASE_URL,
                       MediaLinks(b"k" * 32, PUBLIC_BASE_URL), telegram_api_base=fake.base_url)


def _channel(fake: FakeTelegram) -> ChannelConfig:
    return ChannelConfig("ch_x", "telegram", {}, ChannelSecrets({"bot_token": fake.token}, str))


def _reply(text: str) -> OutboundReply:
    return OutboundReply("ch_x", "1", str(CHAT), None, text, "text/plain", text)


@pytest.mark.parametrize(
    ("text", "limit", "expected"),
    [
        ("short", 5, ["short"]),
        ("a" * 10, 4, ["aaaa", "aaaa", "aa"]),
        ("😀" * 5, 4, ["😀😀", "😀😀", "😀"]),  # two UTF-16 units each, never cut in half
        ("😀" * 3, 3, ["😀", "😀", "😀"]),
        ("ab cd\nef gh", 4, ["ab", "cd", "ef", "gh"]),
        ("abc\n\ndefgh", 5, ["abc", "defgh"]),
        ("a bcdefgh", 4, ["a bc", "defg", "h"]),  # a boundary in the first half makes too short a part
        ("   \n\n  ", 4, []),
    ],
)
def test_split_text_cuts_at_boundaries_within_the_limit(text: str, limit: int, expected: list[str]) -> None:
    assert split_text(text, limit=limit) == expected


# --- rotation and settings ------------------------------------------------------------------------


def test_rotating_inbound_registers_a_new_secret_token_that_takes_effect_at_once(
    tg_app: Flask, tg_client: FlaskClient, bot_channel: dict[str, Any], fake_telegram: FakeTelegram  # noqa: F811
) -> None:
    old = fake_telegram.webhook().secret_token
    assert old is not None

    answer = tg_client.post(f"/api/channels/{bot_channel['id']}/rotate", json={"secret": "inbound"}, headers=ADMIN)

    assert answer.status_code == 200, answer.json
    new = fake_telegram.webhook().secret_token
    assert new and new != old and SECRET_SHAPE.fullmatch(new)
    assert fake_telegram.webhook().url == f"{PUBLIC_BASE_URL}/inbound/{bot_channel['id']}"
    assert answer.json["value"].startswith("registered with Telegram")
    assert new not in answer.get_data(as_text=True) and answer.json["previous_valid_until"] is None
    update = text_update(CHAT, "after rotation", message_id=1)
    assert post_update(tg_client, fake_telegram, bot_channel, update, secret=old).status_code == 401
    assert post_update(tg_client, fake_telegram, bot_channel, update).status_code == 200
    assert [message.ext_id for message in inbox(tg_app)] == [f"{CHAT}:1"]


def test_rotating_outbound_is_422_for_telegram(
    tg_client: FlaskClient, bot_channel: dict[str, Any], fake_telegram: FakeTelegram  # noqa: F811
) -> None:
    answer = tg_client.post(f"/api/channels/{bot_channel['id']}/rotate", json={"secret": "outbound"}, headers=ADMIN)

    assert answer.status_code == 422
    assert "outbound has no meaning" in answer.json["fields"]["secret"][0]
    assert fake_telegram.call_count("setWebhook") == 1  # the creation's only


def test_updating_the_bot_token_registers_the_webhook_for_the_new_bot(
    tg_app: Flask, tg_client: FlaskClient, bot_channel: dict[str, Any], fake_telegram: FakeTelegram  # noqa: F811
) -> None:
    new_bot = fake_telegram.add_bot(username="new_support_bot")
    old_secret = fake_telegram.webhook().secret_token

    answer = tg_client.patch(f"/api/channels/{bot_channel['id']}", json={"bot_token": new_bot.token}, headers=ADMIN)

    assert answer.status_code == 200, answer.json
    assert new_bot.token not in answer.get_data(as_text=True)
    hook = fake_telegram.webhook(new_bot.token)
    assert hook.url == f"{PUBLIC_BASE_URL}/inbound/{bot_channel['id']}"
    assert hook.secret_token and hook.secret_token != old_secret
    [row] = channels(tg_app)
    assert row.settings == {"bot_id": new_bot.id, "bot_username": "new_support_bot"}
    update = text_update(CHAT, "to the new bot", message_id=1)
    assert post_update(tg_client, fake_telegram, bot_channel, update, token=new_bot.token).status_code == 200
    push = tg_client.post(PUSH_URL, json=desk_push_body(bot_channel, extParentId=str(CHAT)))
    assert push.status_code == 200, push.json
    assert [sent.token for sent in fake_telegram.sent] == [new_bot.token]


def test_a_refused_new_bot_token_changes_nothing(
    tg_app: Flask, tg_client: FlaskClient, bot_channel: dict[str, Any], fake_telegram: FakeTelegram  # noqa: F811
) -> None:
    before = channels(tg_app)[0]

    answer = tg_client.patch(f"/api/channels/{bot_channel['id']}", json={"bot_token": new_token(), "name": "x"},
                             headers=ADMIN)

    assert answer.status_code == 422
    assert "Unauthorized" in answer.json["fields"]["bot_token"][0]
    after = channels(tg_app)[0]
    assert (after.settings, after.secrets, after.name) == (before.settings, before.secrets, before.name)
    update = text_update(CHAT, "still here", message_id=1)
    assert post_update(tg_client, fake_telegram, bot_channel, update).status_code == 200


# --- the media proxy ------------------------------------------------------------------------------


def test_media_proxy_answers_404_for_a_bad_token(
    tg_client: FlaskClient, bot_channel: dict[str, Any], fake_telegram: FakeTelegram  # noqa: F811
) -> None:
    assert tg_client.get("/media/not-a-token").status_code == 404
    assert fake_telegram.calls_to("getFile") == []


def test_media_proxy_answers_502_when_telegram_fails(
    tg_app: Flask, tg_client: FlaskClient, bot_channel: dict[str, Any], fake_telegram: FakeTelegram,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    update = document_update(CHAT, message_id=1)
    fake_telegram.attach(update, b"report")
    post_update(tg_client, fake_telegram, bot_channel, update)
    path = media_path(inbox(tg_app)[0].attachments[0]["url"])

    with caplog.at_level(logging.INFO):
        fake_telegram.fail("getFile", SERVER_ERROR)
        get_file_failed = tg_client.get(path)
        fake_telegram.fail(FILE_DOWNLOAD, SERVER_ERROR)
        download_failed = tg_client.get(path)
        fake_telegram.fail("getFile", BLOCKED)
        refused = tg_client.get(path)
        healed = tg_client.get(path)

    assert [answer.status_code for answer in (get_file_failed, download_failed, refused)] == [502] * 3
    assert get_file_failed.is_json and get_file_failed.json["error"] == "telegram_failed"
    assert "HTTP 500" in get_file_failed.json["message"] and "HTTP 500" in download_failed.json["message"]
    assert healed.status_code == 200 and healed.data == b"report"
    for answer in (get_file_failed, download_failed, refused):
        assert fake_telegram.token not in answer.get_data(as_text=True)
    assert fake_telegram.token not in caplog.text


def test_media_proxy_answers_502_when_telegram_is_unreachable(
    tg_app: Flask, tg_client: FlaskClient, bot_channel: dict[str, Any], fake_telegram: FakeTelegram  # noqa: F811
) -> None:
    update = photo_update(CHAT, message_id=1)
    post_update(tg_client, fake_telegram, bot_channel, update)
    link = inbox(tg_app)[0].attachments[0]["url"]
    fake_telegram.close()

    answer = tg_client.get(media_path(link))

    assert answer.status_code == 502
    assert "could not be reached" in answer.json["message"]
    assert fake_telegram.token not in answer.get_data(as_text=True)


def test_media_proxy_answers_413_for_a_file_over_media_max_bytes(
    make_app: Callable[..., Flask], fake_telegram: FakeTelegram  # noqa: F811
) -> None:
    app = make_app(connectors={"telegram": TelegramKind}, PUBLIC_BASE_URL=PUBLIC_BASE_URL,
                   TELEGRAM_API_BASE=fake_telegram.base_url, MEDIA_MAX_BYTES="1024")
    channel = new_telegram_channel(app, fake_telegram.token)
    client = app.test_client()
    update = document_update(CHAT, message_id=1, file_size=4096)
    fake_telegram.attach(update, b"x" * 4096)
    post_update(client, fake_telegram, channel, update)

    answer = client.get(media_path(inbox(app)[0].attachments[0]["url"]))

    assert answer.status_code == 413
    assert fake_telegram.downloads == []  # refused on getFile's file_size, before downloading


def test_a_media_token_of_another_kind_of_reference_is_404(
    tg_app: Flask, tg_client: FlaskClient, bot_channel: dict[str, Any]
) -> None:
    link = services(tg_app).connectors.media.link(bot_channel["id"], {"sid": "ME123"})

    assert tg_client.get(media_path(link)).status_code == 404


def test_read_update_refuses_nothing_it_can_read_and_names_the_field_it_cannot() -> None:
    with pytest.raises(Invalid) as refused:
        read_update({"update_id": 1, "edited_message": {"message_id": 1, "chat": {"id": "x"}, "date": 1}},
                    lambda ref: "unused")

    assert refused.value.fields == {"edited_message": {"chat": {"id": ["Not a valid integer."]}}}
