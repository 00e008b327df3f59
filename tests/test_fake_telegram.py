"""The fake Telegram Bot API (tests/fake_telegram.py), exercised through real HTTP as a client would."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests

from tests import fake_telegram as fake_telegram_module
from tests.fake_telegram import (
    ANY_METHOD,
    BLOCKED,
    DROP,
    FILE_DOWNLOAD,
    FLOOD,
    HANG,
    MAX_DOWNLOAD_SIZE,
    SECRET_TOKEN_HEADER,
    SERVER_ERROR,
    TOKEN_PATTERN,
    FakeTelegram,
    audio_update,
    deliver,
    document_update,
    edited_update,
    file_id_of,
    file_of,
    new_token,
    photo_update,
    poll_update,
    running_telegram,
    sticker_update,
    text_update,
    user,
    utf16_length,
    video_update,
    voice_update,
)

fake_telegram = fake_telegram_module.fake_telegram  # the fixture, as a conftest would provide it

CHAT = 424242


def call(fake: FakeTelegram, method: str, *, token: str | None = None, verb: str = "POST", **kwargs: Any
         ) -> requests.Response:
    """Call a bot method on the fake over HTTP."""
    return requests.request(verb, fake.api_url(method, token), timeout=5, **kwargs)


def error(status: int, description: str) -> dict[str, Any]:
    """The documented error envelope."""
    return {"ok": False, "error_code": status, "description": description}


@pytest.fixture
def tg(fake_telegram: FakeTelegram) -> FakeTelegram:
    """The fake with one private chat, CHAT, known."""
    fake_telegram.add_chat(CHAT, username="ada_l")
    return fake_telegram


# Tokens and bots


def test_new_token_has_telegrams_shape() -> None:
    token = new_token()
    assert re.fullmatch(r"\d+:[A-Za-z0-9_-]{35}", token)
    assert new_token(123456).startswith("123456:")
    assert TOKEN_PATTERN.fullmatch(new_token())
    with pytest.raises(ValueError):
        FakeTelegram(tokens=["not-a-token"])


def test_the_fixture_yields_a_started_fake_with_one_bot(fake_telegram: FakeTelegram) -> None:
    assert fake_telegram.base_url.startswith("http://127.0.0.1:")
    assert list(fake_telegram.bots) == [fake_telegram.token]
    assert call(fake_telegram, "getMe").status_code == 200


@pytest.mark.parametrize("spelling", ["getMe", "getme", "GETME"])
@pytest.mark.parametrize("verb", ["GET", "POST"])
def test_get_me_answers_the_bot_in_any_spelling(fake_telegram: FakeTelegram, spelling: str, verb: str) -> None:
    answer = call(fake_telegram, spelling, verb=verb)
    assert answer.status_code == 200
    assert answer.headers["Content-Type"] == "application/json"
    body = answer.json()
    assert set(body) == {"ok", "result"}
    me = body["result"]
    bot = fake_telegram.bot()
    assert me["id"] == int(fake_telegram.token.split(":")[0]) == bot.id
    assert me["is_bot"] is True
    assert (me["first_name"], me["username"]) == (bot.first_name, bot.username)
    assert me["username"].endswith("_bot")
    assert fake_telegram.call_count("getMe") == 1


def test_several_bots_are_told_apart() -> None:
    first, second = new_token(111), new_token(222)
    with running_telegram([first, second]) as fake:
        fake.bots[second].username = "second_bot"
        assert call(fake, "getMe", token=first).json()["result"]["id"] == 111
        assert call(fake, "getMe", token=second).json()["result"]["username"] == "second_bot"


def test_an_unknown_token_is_401_and_an_unknown_method_404(fake_telegram: FakeTelegram) -> None:
    refused = call(fake_telegram, "getMe", token=new_token())
    assert (refused.status_code, refused.json()) == (401, error(401, "Unauthorized"))
    unknown = call(fake_telegram, "sendChatAction", data={"chat_id": 1, "action": "typing"})
    assert (unknown.status_code, unknown.json()) == (404, error(404, "Not Found"))
    for path in ("/", "/getMe", f"/bot{fake_telegram.token}/", f"/bot{fake_telegram.token}/getMe/extra"):
        stray = requests.get(fake_telegram.base_url + path, timeout=5)
        assert (stray.status_code, stray.json()) == (404, error(404, "Not Found"))


def test_a_stub_answers_a_method_the_fake_does_not_implement(fake_telegram: FakeTelegram) -> None:
    fake_telegram.stub("sendChatAction", True)
    answer = call(fake_telegram, "sendchataction", data={"chat_id": 1, "action": "typing"})
    assert answer.json() == {"ok": True, "result": True}
    assert fake_telegram.calls_to("sendChatAction")[0].params == {"chat_id": "1", "action": "typing"}


# sendMessage: parameters, checks, records


def _send_kwargs(encoding: str, params: dict[str, Any]) -> dict[str, Any]:
    """requests arguments carrying params in one of the four encodings the Bot API accepts."""
    as_text = {name: value if isinstance(value, str) else json.dumps(value) for name, value in params.items()}
    if encoding == "query":
        return {"verb": "GET", "params": as_text}
    if encoding == "json":
        return {"json": params}
    if encoding == "form":
        return {"data": as_text}
    return {"files": {name: (None, value.encode()) for name, value in as_text.items()}}


@pytest.mark.parametrize("encoding", ["query", "json", "form", "multipart"])
def test_send_message_reads_all_four_encodings(tg: FakeTelegram, encoding: str) -> None:
    tg.remember(text_update(CHAT, "Hello", message_id=7))
    text = "Grüße, \N{GRINNING FACE} & <b>?=</b>\nline two"
    params = {"chat_id": CHAT, "text": text, "reply_parameters": {"message_id": 7}, "disable_notification": True}
    answer = call(tg, "sendMessage", **_send_kwargs(encoding, params))
    assert answer.status_code == 200, answer.text
    message = answer.json()["result"]
    assert message["text"] == text
    assert message["chat"] == {"id": CHAT, "first_name": "Ada", "last_name": "Lovelace", "username": "ada_l",
                               "type": "private"}
    assert message["reply_to_message"]["message_id"] == 7
    assert message["reply_to_message"]["text"] == "Hello"
    [sent] = tg.sent
    assert (sent.chat_id, sent.text, sent.reply_to_message_id, sent.message_id) == (CHAT, text, 7, 8)
    assert sent.params["chat_id"] == str(CHAT)
    assert json.loads(sent.params["reply_parameters"]) == {"message_id": 7}
    assert sent.params["disable_notification"] == "true"
    assert tg.calls[0].http_method == ("GET" if encoding == "query" else "POST")


def test_multipart_file_parts_are_recorded_and_chunked_bodies_read(tg: FakeTelegram) -> None:
    tg.stub("sendDocument", {"message_id": 1})
    upload = {"chat_id": (None, str(CHAT)), "document": ("report.pdf", b"%PDF-1.7", "application/pdf")}
    assert call(tg, "sendDocument", files=upload).json() == {"ok": True, "result": {"message_id": 1}}
    [document] = tg.wait_for_calls(1, "senddocument")
    assert document.params == {"chat_id": str(CHAT)}
    assert document.files == {"document": ("report.pdf", b"%PDF-1.7")}
    chunks = iter([b'{"chat_id": 424242, ', b'"text": "in chunks"}'])
    answer = call(tg, "sendMessage", data=chunks, headers={"Content-Type": "application/json"})
    assert answer.json()["result"]["text"] == "in chunks"
    assert "chunked" in tg.calls[-1].headers["transfer-encoding"]


def test_a_body_that_is_not_a_json_object_is_400(tg: FakeTelegram) -> None:
    for body in (b"{not json", b"[1, 2]"):
        answer = call(tg, "sendMessage", data=body, headers={"Content-Type": "application/json"})
        assert (answer.status_code, answer.json()) == (400, error(400, "Bad Request: can't parse JSON object"))
    assert tg.errors == []


def test_a_chat_id_may_be_a_string_or_a_username(tg: FakeTelegram) -> None:
    assert call(tg, "sendMessage", json={"chat_id": str(CHAT), "text": "a"}).status_code == 200
    assert call(tg, "sendMessage", json={"chat_id": "@ADA_L", "text": "b"}).json()["result"]["chat"]["id"] == CHAT
    group = tg.add_chat(-1001234567890, type="supergroup", title="Support")
    answer = call(tg, "sendMessage", data={"chat_id": group["id"], "text": "c"})
    assert answer.json()["result"]["chat"] == {"id": -1001234567890, "title": "Support", "type": "supergroup"}


@pytest.mark.parametrize(
    ("text", "status", "description"),
    [
        ("a" * 4096, 200, None),
        ("a" * 4097, 400, "Bad Request: message is too long"),
        ("\N{EURO SIGN}" * 4096, 200, None),  # one UTF-16 code unit each
        ("\N{GRINNING FACE}" * 2048, 200, None),  # two code units each: 4096
        ("\N{GRINNING FACE}" * 2048 + "a", 400, "Bad Request: message is too long"),
        ("", 400, "Bad Request: message text is empty"),
        (" \n\t", 400, "Bad Request: message text is empty"),
    ],
)
def test_text_length_is_counted_in_utf16_code_units(
    tg: FakeTelegram, text: str, status: int, description: str | None
) -> None:
    answer = call(tg, "sendMessage", json={"chat_id": CHAT, "text": text})
    assert answer.status_code == status
    if description is not None:
        assert answer.json() == error(status, description)
        assert tg.sent == []
    else:
        assert tg.sent[0].text == text


def test_utf16_length() -> None:
    assert utf16_length("abc") == 3
    assert utf16_length("\N{GRINNING FACE}") == 2
    assert utf16_length("e\N{COMBINING ACUTE ACCENT}") == 2


def test_a_missing_text_is_checked_before_the_chat(fake_telegram: FakeTelegram) -> None:
    answer = call(fake_telegram, "sendMessage", data={"chat_id": 1})
    assert answer.json() == error(400, "Bad Request: message text is empty")


@pytest.mark.parametrize(
    ("chat_id", "description"),
    [(None, "Bad Request: chat_id is empty"), (999, "Bad Request: chat not found"),
     ("@nobody", "Bad Request: chat not found"), ("not-a-chat", "Bad Request: chat not found")],
)
def test_an_unknown_chat_is_400(tg: FakeTelegram, chat_id: Any, description: str) -> None:
    params = {"text": "hi"} | ({} if chat_id is None else {"chat_id": chat_id})
    answer = call(tg, "sendMessage", data=params)
    assert (answer.status_code, answer.json()) == (400, error(400, description))


def test_replies_need_an_existing_message_unless_allowed_without(tg: FakeTelegram) -> None:
    missing = call(tg, "sendMessage", data={"chat_id": CHAT, "text": "re", "reply_to_message_id": 5})
    assert (missing.status_code, missing.json()) == (400, error(400, "Bad Request: message to be replied not found"))
    nested = {"message_id": 5, "allow_sending_without_reply": True}
    loose = call(tg, "sendMessage", json={"chat_id": CHAT, "text": "re", "reply_parameters": nested})
    assert loose.status_code == 200
    assert "reply_to_message" not in loose.json()["result"]
    legacy = call(tg, "sendMessage",
                  data={"chat_id": CHAT, "text": "re", "reply_to_message_id": 5, "allow_sending_without_reply": "1"})
    assert legacy.status_code == 200
    assert [sent.reply_to_message_id for sent in tg.sent] == [5, 5]
    garbled = call(tg, "sendMessage", data={"chat_id": CHAT, "text": "re", "reply_parameters": "{oops"})
    assert garbled.json() == error(400, "Bad Request: can't parse reply parameters JSON object")


def test_a_reply_to_the_bots_own_message_quotes_it_without_its_own_reply(tg: FakeTelegram) -> None:
    tg.remember(text_update(CHAT, "question", message_id=1))
    first = call(tg, "sendMessage", json={"chat_id": CHAT, "text": "answer", "reply_to_message_id": 1}).json()
    second = call(tg, "sendMessage", json={"chat_id": CHAT, "text": "more", "reply_to_message_id": 2}).json()
    assert first["result"]["message_id"] == 2
    quoted = second["result"]["reply_to_message"]
    assert (quoted["message_id"], quoted["text"], quoted["from"]["is_bot"]) == (2, "answer", True)
    assert "reply_to_message" not in quoted


def test_message_ids_increase_per_chat_and_the_sender_is_the_bot(tg: FakeTelegram) -> None:
    tg.add_chat(777)
    tg.remember(text_update(CHAT, "hi", message_id=10))
    ids = [
        (chat, call(tg, "sendMessage", data={"chat_id": chat, "text": "x"}).json()["result"]["message_id"])
        for chat in (CHAT, 777, CHAT, 777)
    ]
    assert ids == [(CHAT, 11), (777, 1), (CHAT, 12), (777, 2)]
    message = tg.sent[0].message
    bot = tg.bot()
    assert message["from"] == {"id": bot.id, "is_bot": True, "first_name": bot.first_name, "username": bot.username}
    assert isinstance(message["date"], int) and abs(message["date"] - time.time()) < 5
    assert [m["message_id"] for m in tg.messages(CHAT)] == [10, 11, 12]


def test_concurrent_sends_get_distinct_ids(tg: FakeTelegram) -> None:
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda n: call(tg, "sendMessage", data={"chat_id": CHAT, "text": str(n)}), range(16)))
    assert {answer.status_code for answer in answers} == {200}
    assert sorted(sent.message_id for sent in tg.wait_for_sent(16)) == list(range(1, 17))


def test_wait_for_sent_blocks_until_sent_and_times_out(tg: FakeTelegram) -> None:
    sender = threading.Thread(target=call, args=(tg, "sendMessage"), kwargs={"data": {"chat_id": CHAT, "text": "x"}})
    sender.start()
    assert [sent.text for sent in tg.wait_for_sent(1)] == ["x"]
    sender.join()
    with pytest.raises(TimeoutError):
        tg.wait_for_sent(2, timeout=0.01)


def test_a_blocked_chat_is_403(tg: FakeTelegram) -> None:
    tg.block_chat(CHAT)
    answer = call(tg, "sendMessage", data={"chat_id": CHAT, "text": "x"})
    assert (answer.status_code, answer.json()) == (403, error(403, "Forbidden: bot was blocked by the user"))
    assert tg.sent == []
    tg.unblock_chat(CHAT)
    assert call(tg, "sendMessage", data={"chat_id": CHAT, "text": "x"}).status_code == 200


# Webhooks


@pytest.mark.parametrize(
    ("params", "description"),
    [
        ({"url": "http://bridge.example.com/hook"},
         "Bad Request: bad webhook: An HTTPS URL must be provided for webhook"),
        ({"url": "https://bridge.example.com:8080/hook"},
         "Bad Request: bad webhook: Webhook can be set up only on ports 80, 88, 443 or 8443"),
        ({"url": "https://127.0.0.1/hook"}, "Bad Request: bad webhook: IP address 127.0.0.1 is reserved"),
        ({"url": "https://10.1.2.3:8443/hook"}, "Bad Request: bad webhook: IP address 10.1.2.3 is reserved"),
        ({"url": "ftp://bridge.example.com/hook"}, "Bad Request: invalid webhook URL specified"),
        ({"url": "https://bridge.example.com/h", "secret_token": "a b"},
         "Bad Request: secret token contains unallowed characters"),
        ({"url": "https://bridge.example.com/h", "secret_token": "s=1"},
         "Bad Request: secret token contains unallowed characters"),
        ({"url": "https://bridge.example.com/h", "secret_token": "x" * 257}, "Bad Request: secret token is too long"),
    ],
)
def test_set_webhook_refuses_what_telegram_refuses(
    fake_telegram: FakeTelegram, params: dict[str, str], description: str
) -> None:
    answer = call(fake_telegram, "setWebhook", data=params)
    assert (answer.status_code, answer.json()) == (400, error(400, description))
    assert fake_telegram.webhook().url == ""


def test_set_webhook_records_and_get_webhook_info_reports_without_the_secret(fake_telegram: FakeTelegram) -> None:
    url = "https://bridge.example.com:8443/telegram/webhook/ch_1"
    secret = "S3cret_-" + "x" * 248  # 256 characters, the longest allowed
    params = {"url": url, "secret_token": secret, "allowed_updates": '["message", "edited_message"]',
              "max_connections": "10"}
    answer = call(fake_telegram, "setWebhook", data=params)
    assert answer.json() == {"ok": True, "result": True, "description": "Webhook was set"}
    hook = fake_telegram.webhook()
    assert (hook.url, hook.secret_token, hook.max_connections) == (url, secret, 10)
    assert fake_telegram.bot().allowed_updates == ["message", "edited_message"]
    info = call(fake_telegram, "getWebhookInfo", verb="GET")
    assert info.json() == {"ok": True, "result": {
        "url": url, "has_custom_certificate": False, "pending_update_count": 0, "max_connections": 10,
        "allowed_updates": ["message", "edited_message"],
    }}
    assert secret not in info.text
    again = call(fake_telegram, "setWebhook", data=params)
    assert again.json() == {"ok": True, "result": True, "description": "Webhook is already set"}
    assert fake_telegram.bot().webhooks_set == 1


def test_allowed_updates_as_a_json_list_and_reset_to_the_default(fake_telegram: FakeTelegram) -> None:
    url = "https://bridge.example.com/hook"
    call(fake_telegram, "setWebhook", json={"url": url, "allowed_updates": ["message"]})
    assert call(fake_telegram, "getWebhookInfo").json()["result"]["allowed_updates"] == ["message"]
    assert call(fake_telegram, "setWebhook", json={"url": url, "allowed_updates": "not json"}).status_code == 200
    assert fake_telegram.bot().allowed_updates == ["message"]  # unparsable: kept, as the real server does
    call(fake_telegram, "setWebhook", json={"url": url, "allowed_updates": []})
    info = call(fake_telegram, "getWebhookInfo").json()["result"]
    assert "allowed_updates" not in info
    assert info["max_connections"] == 40


def test_delete_webhook_and_set_webhook_with_an_empty_url(fake_telegram: FakeTelegram) -> None:
    call(fake_telegram, "setWebhook", data={"url": "https://bridge.example.com/hook", "secret_token": "abc"})
    deleted = call(fake_telegram, "deleteWebhook", data={"drop_pending_updates": "true"})
    assert deleted.json() == {"ok": True, "result": True, "description": "Webhook was deleted"}
    again = call(fake_telegram, "deleteWebhook")
    assert again.json() == {"ok": True, "result": True, "description": "Webhook is already deleted"}
    assert call(fake_telegram, "getWebhookInfo").json()["result"] == {
        "url": "", "has_custom_certificate": False, "pending_update_count": 0}
    call(fake_telegram, "setWebhook", data={"url": "https://bridge.example.com/hook"})
    cleared = call(fake_telegram, "setWebhook", data={"url": ""})
    assert cleared.json()["description"] == "Webhook was deleted"
    assert fake_telegram.webhook().url == ""


def test_set_webhook_twice_within_the_interval_is_flood_controlled() -> None:
    with running_telegram(set_webhook_interval=60) as fake:
        assert call(fake, "setWebhook", data={"url": "https://bridge.example.com/a"}).status_code == 200
        answer = call(fake, "setWebhook", data={"url": "https://bridge.example.com/b"})
        assert answer.status_code == 429
        assert answer.headers["Retry-After"] == "1"
        assert answer.json() == {"ok": False, "error_code": 429, "description": "Too Many Requests: retry after 1",
                                 "parameters": {"retry_after": 1}}
        assert fake.webhook().url == "https://bridge.example.com/a"


# Files


def test_get_file_and_download(fake_telegram: FakeTelegram) -> None:
    token = fake_telegram.token
    content = b"%PDF-1.7 fake"
    registered = fake_telegram.add_file(token, "BQAC-1", content, file_path="documents/file_1.pdf",
                                        file_unique_id="AgADuniq")
    answer = call(fake_telegram, "getFile", data={"file_id": "BQAC-1"})
    expected = {"file_id": "BQAC-1", "file_unique_id": "AgADuniq", "file_size": len(content),
                "file_path": "documents/file_1.pdf"}
    assert answer.json() == {"ok": True, "result": expected} and registered == expected
    download = requests.get(fake_telegram.file_url("documents/file_1.pdf"), timeout=5)
    assert download.status_code == 200
    assert download.content == content
    assert download.headers["Content-Type"] == "application/pdf"
    assert download.headers["Content-Length"] == str(len(content))
    assert [(d.file_path, d.status) for d in fake_telegram.downloads] == [("documents/file_1.pdf", 200)]


def test_get_file_errors_and_counts(fake_telegram: FakeTelegram) -> None:
    other = fake_telegram.add_bot().token
    fake_telegram.add_file(other, "theirs", b"x")
    fake_telegram.add_file(fake_telegram.token, "huge", b"\0" * (MAX_DOWNLOAD_SIZE + 1))
    cases = [
        ({"file_id": "nope"}, "Bad Request: invalid file_id"),
        ({}, "Bad Request: file_id not specified"),
        ({"file_id": "theirs"}, "Bad Request: invalid file_id"),  # file ids belong to one bot
        ({"file_id": "huge"}, "Bad Request: file is too big"),
    ]
    for params, description in cases:
        answer = call(fake_telegram, "getFile", params=params, verb="GET")
        assert (answer.status_code, answer.json()) == (400, error(400, description))
    assert fake_telegram.get_file_calls == 4
    assert call(fake_telegram, "getFile", token=other, data={"file_id": "theirs"}).status_code == 200
    assert fake_telegram.call_count("getfile") == 5


def test_downloads_of_unknown_files_or_with_a_wrong_token_are_404(fake_telegram: FakeTelegram) -> None:
    fake_telegram.add_file(fake_telegram.token, "F", b"bytes", file_path="photos/file_9.jpg")
    for url in (fake_telegram.file_url("photos/file_9.jpg", token=new_token()), fake_telegram.file_url("photos/x.jpg"),
                f"{fake_telegram.base_url}/file/bot{fake_telegram.token}/"):
        answer = requests.get(url, timeout=5)
        assert (answer.status_code, answer.json()) == (404, error(404, "Not Found"))


@pytest.mark.parametrize(
    ("file_path", "content_type"),
    [("photos/file_1.jpg", "image/jpeg"), ("voice/file_2.oga", "audio/ogg"), ("stickers/file_3.webp", "image/webp"),
     ("documents/file_4.txt", "text/plain"), ("documents/file_5", "application/octet-stream")],
)
def test_downloads_have_a_content_type_from_the_extension(
    fake_telegram: FakeTelegram, file_path: str, content_type: str
) -> None:
    fake_telegram.add_file(fake_telegram.token, "F", b"bytes", file_path=file_path)
    assert requests.get(fake_telegram.file_url(file_path), timeout=5).headers["Content-Type"] == content_type


def test_attach_registers_an_updates_file(fake_telegram: FakeTelegram) -> None:
    photo = photo_update(CHAT, message_id=1)
    file_id = fake_telegram.attach(photo, b"\xff\xd8jpeg")
    assert file_id == photo["message"]["photo"][-1]["file_id"] == file_id_of(photo)
    result = call(fake_telegram, "getFile", data={"file_id": file_id}).json()["result"]
    assert re.fullmatch(r"photos/file_\d+\.jpg", result["file_path"])
    assert result["file_unique_id"] == photo["message"]["photo"][-1]["file_unique_id"]
    assert requests.get(fake_telegram.file_url(result["file_path"]), timeout=5).content == b"\xff\xd8jpeg"
    document = document_update(CHAT, message_id=2, file_name="Invoice 7.PDF", file_id="doc-7")
    assert fake_telegram.attach(document, b"%PDF") == "doc-7"
    path = call(fake_telegram, "getFile", data={"file_id": "doc-7"}).json()["result"]["file_path"]
    assert path.startswith("documents/") and path.endswith(".PDF")
    fake_telegram.attach(voice_update(CHAT, message_id=3, file_id="v"), b"ogg", file_path="voice/mine.oga")
    assert requests.get(fake_telegram.file_url("voice/mine.oga"), timeout=5).content == b"ogg"


# Faults


def test_flood_for_the_next_calls_of_one_method(tg: FakeTelegram) -> None:
    tg.fail("sendMessage", FLOOD, times=2, retry_after=7)
    assert call(tg, "getMe").status_code == 200  # another method is not affected
    for _ in range(2):
        answer = call(tg, "SENDMESSAGE", data={"chat_id": CHAT, "text": "x"})
        assert answer.status_code == 429
        assert answer.headers["Retry-After"] == "7"
        assert answer.json() == {"ok": False, "error_code": 429, "description": "Too Many Requests: retry after 7",
                                 "parameters": {"retry_after": 7}}
    assert call(tg, "sendMessage", data={"chat_id": CHAT, "text": "x"}).status_code == 200
    assert [c.fault for c in tg.calls_to("sendMessage")] == [FLOOD, FLOOD, None]
    assert [c.status for c in tg.calls_to("sendMessage")] == [429, 429, 200]
    assert len(tg.sent) == 1


def test_server_errors_as_json_or_as_nginx_html(fake_telegram: FakeTelegram) -> None:
    fake_telegram.fail("getMe", SERVER_ERROR)
    fake_telegram.fail("getMe", SERVER_ERROR, status=502, html=True)
    first = call(fake_telegram, "getMe")
    assert (first.status_code, first.json()) == (500, error(500, "Internal Server Error"))
    second = call(fake_telegram, "getMe")
    assert second.status_code == 502
    assert second.headers["Content-Type"] == "text/html"
    assert "<title>502 Bad Gateway</title>" in second.text and "nginx" in second.text
    assert call(fake_telegram, "getMe").status_code == 200


def test_blocked_fault_any_method_and_heal(tg: FakeTelegram) -> None:
    tg.fail(ANY_METHOD, BLOCKED, times=None)
    for method in ("getMe", "sendMessage", "getFile"):
        answer = call(tg, method, data={"chat_id": CHAT, "text": "x"})
        assert (answer.status_code, answer.json()) == (403, error(403, "Forbidden: bot was blocked by the user"))
    tg.heal()
    assert call(tg, "sendMessage", data={"chat_id": CHAT, "text": "x"}).status_code == 200


def test_unknown_fault_kinds_are_refused(fake_telegram: FakeTelegram) -> None:
    with pytest.raises(ValueError):
        fake_telegram.fail("getMe", "explode")


def test_drop_closes_the_connection_without_an_answer(tg: FakeTelegram) -> None:
    tg.fail("sendMessage", DROP)
    with pytest.raises(requests.ConnectionError):
        call(tg, "sendMessage", data={"chat_id": CHAT, "text": "x"})
    [dropped] = tg.calls_to("sendMessage")
    assert (dropped.fault, dropped.status) == (DROP, None)
    assert tg.sent == []
    assert call(tg, "sendMessage", data={"chat_id": CHAT, "text": "x"}).status_code == 200


def test_a_hanging_call_is_served_once_released(tg: FakeTelegram) -> None:
    tg.fail("sendMessage", HANG)
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(call, tg, "sendMessage", data={"chat_id": CHAT, "text": "held"})
        tg.wait_for_hanging(1)
        assert not pending.done()
        assert tg.sent == []
        tg.release()
        answer = pending.result(timeout=5)
    assert answer.status_code == 200
    assert [sent.text for sent in tg.sent] == ["held"]
    assert tg.wait_for_answered(1, "sendMessage")[0].fault == HANG


def test_a_hanging_call_is_dropped_on_close() -> None:
    fake = FakeTelegram().start()
    try:
        fake.fail(ANY_METHOD, HANG)
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(call, fake, "getMe")
            fake.wait_for_hanging(1)
            started = time.monotonic()
            fake.close()
            assert time.monotonic() - started < 1
            with pytest.raises(requests.ConnectionError):
                pending.result(timeout=5)
    finally:
        fake.close()


def test_close_does_not_wait_for_idle_keep_alive_connections() -> None:
    fake = FakeTelegram().start()
    session = requests.Session()
    try:
        assert session.get(fake.api_url("getMe"), timeout=5).status_code == 200
        assert session.get(fake.api_url("getMe"), timeout=5).status_code == 200  # the same connection
        started = time.monotonic()
        fake.close()
        assert time.monotonic() - started < 1
    finally:
        session.close()


def test_faults_on_file_downloads(fake_telegram: FakeTelegram) -> None:
    fake_telegram.add_file(fake_telegram.token, "F", b"bytes", file_path="documents/a.bin")
    fake_telegram.fail(FILE_DOWNLOAD, FLOOD, retry_after=3)
    fake_telegram.fail(FILE_DOWNLOAD, DROP)
    assert requests.get(fake_telegram.file_url("documents/a.bin"), timeout=5).status_code == 429
    with pytest.raises(requests.ConnectionError):
        requests.get(fake_telegram.file_url("documents/a.bin"), timeout=5)
    assert requests.get(fake_telegram.file_url("documents/a.bin"), timeout=5).content == b"bytes"
    assert [(d.status, d.fault) for d in fake_telegram.downloads] == [(429, FLOOD), (None, DROP), (200, None)]
    assert fake_telegram.calls == []  # downloads are not method calls
    assert fake_telegram.errors == []


# Update builders


def test_text_update_has_the_documented_shape() -> None:
    update = text_update(CHAT, "hello", message_id=5, date=1_700_000_000)
    assert set(update) == {"update_id", "message"}
    message = update["message"]
    assert message == {
        "message_id": 5,
        "from": {"id": CHAT, "is_bot": False, "first_name": "Ada", "last_name": "Lovelace", "username": "ada_lovelace",
                 "language_code": "en"},
        "chat": {"id": CHAT, "first_name": "Ada", "last_name": "Lovelace", "username": "ada_lovelace",
                 "type": "private"},
        "date": 1_700_000_000,
        "text": "hello",
    }
    later = text_update(CHAT, "again", message_id=6)
    assert later["update_id"] > update["update_id"]
    assert text_update(CHAT, "x", message_id=1, update_id=9)["update_id"] == 9


def test_a_sender_without_optional_names() -> None:
    sender = user(55, first_name="Bo", last_name=None, username=None, language_code=None)
    message = text_update(55, "x", message_id=1, from_user=sender)["message"]
    assert message["from"] == {"id": 55, "is_bot": False, "first_name": "Bo"}
    assert message["chat"] == {"id": 55, "first_name": "Bo", "type": "private"}


def test_photo_update_sizes_grow_and_the_largest_is_last() -> None:
    update = photo_update(CHAT, message_id=1, caption="look", sizes=[(800, 600), (90, 68), (320, 240)],
                          file_id="big")
    photo = update["message"]["photo"]
    assert [(size["width"], size["height"]) for size in photo] == [(90, 68), (320, 240), (800, 600)]
    sizes = [size["file_size"] for size in photo]
    assert sizes == sorted(sizes) and len(set(sizes)) == 3
    assert photo[-1]["file_id"] == "big"
    assert len({size["file_id"] for size in photo}) == 3
    assert update["message"]["caption"] == "look"
    assert "caption" not in photo_update(CHAT, message_id=2)["message"]


def test_file_updates_have_their_documented_fields() -> None:
    document = document_update(CHAT, message_id=1, file_name="a.txt", mime_type="text/plain", file_id="d",
                               file_size=3, caption="c")["message"]
    assert document["document"] == {"file_id": "d", "file_unique_id": document["document"]["file_unique_id"],
                                    "file_name": "a.txt", "mime_type": "text/plain", "file_size": 3}
    assert document["caption"] == "c"
    voice = voice_update(CHAT, message_id=2)["message"]["voice"]
    assert {"file_id", "file_unique_id", "duration", "mime_type", "file_size"} <= set(voice)
    video = video_update(CHAT, message_id=3)["message"]["video"]
    assert {"file_id", "file_unique_id", "width", "height", "duration", "mime_type", "file_size"} <= set(video)
    audio = audio_update(CHAT, message_id=4, performer="P", title="T")["message"]["audio"]
    assert (audio["performer"], audio["title"], audio["mime_type"]) == ("P", "T", "audio/mpeg")
    sticker_message = sticker_update(CHAT, message_id=5)["message"]
    assert "caption" not in sticker_message
    assert sticker_message["sticker"]["type"] == "regular" and sticker_message["sticker"]["emoji"]
    assert file_of(sticker_update(CHAT, message_id=6))[0] == "sticker"
    assert voice["file_id"].startswith("AwAC") and video["file_id"].startswith("BAAC")


def test_poll_and_edited_updates() -> None:
    poll = poll_update(CHAT, message_id=1, question="Q?", options=["a", "b", "c"])["message"]["poll"]
    assert (poll["question"], [o["text"] for o in poll["options"]], poll["type"]) == ("Q?", ["a", "b", "c"], "regular")
    edited = edited_update(CHAT, "fixed", message_id=4, date=1000, edit_date=1090)
    assert set(edited) == {"update_id", "edited_message"}
    assert (edited["edited_message"]["text"], edited["edited_message"]["edit_date"]) == ("fixed", 1090)
    default = edited_update(CHAT, "fixed", message_id=4)["edited_message"]
    assert default["edit_date"] > default["date"]
    with pytest.raises(ValueError):
        file_of(text_update(CHAT, "no file", message_id=1))


# Deliveries to a webhook


class Recorder:
    """A tiny local webhook endpoint: records each POST and answers a set status."""

    def __init__(self, status: int = 200) -> None:
        """Listen on 127.0.0.1 (not yet serving)."""
        self.status = status
        self.received: list[tuple[str, dict[str, str], bytes]] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                """Keep the test output quiet."""

            def do_POST(self) -> None:
                """Record the request, answer the set status."""
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                recorder.received.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(recorder.status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"


@contextmanager
def recording(status: int = 200) -> Iterator[Recorder]:
    """A running Recorder, stopped on exit."""
    recorder = Recorder(status)
    thread = threading.Thread(target=recorder.server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    try:
        yield recorder
    finally:
        recorder.server.shutdown()
        recorder.server.server_close()
        thread.join()


def test_deliver_posts_json_with_the_secret_header() -> None:
    update = text_update(CHAT, "hi \N{GRINNING FACE}", message_id=1)
    with recording() as recorder:
        assert deliver(f"{recorder.base}/hook?a=1", update, "s3cr3t") == (200, b"ok")
        assert deliver(f"{recorder.base}/hook", update) == (200, b"ok")
    (path, headers, body), (_, bare_headers, _) = recorder.received
    assert path == "/hook?a=1"
    assert headers["content-type"] == "application/json"
    assert headers[SECRET_TOKEN_HEADER.lower()] == "s3cr3t"
    assert json.loads(body) == update
    assert SECRET_TOKEN_HEADER.lower() not in bare_headers


def test_deliver_to_webhook_uses_the_registered_path_and_secret(tg: FakeTelegram) -> None:
    registered = "https://bridge.example.com/telegram/webhook/ch_1?v=2"
    call(tg, "setWebhook", data={"url": registered, "secret_token": "tok_1"})
    update = text_update(31337, "from a new chat", message_id=40)
    with recording() as recorder:
        assert tg.deliver_to_webhook(tg.token, update, recorder.base) == (200, b"ok")
    [(path, headers, body)] = recorder.received
    assert path == "/telegram/webhook/ch_1?v=2"
    assert headers[SECRET_TOKEN_HEADER.lower()] == "tok_1"
    assert json.loads(body) == update
    assert tg.deliveries[0].url == f"{recorder.base}/telegram/webhook/ch_1?v=2"
    reply = call(tg, "sendMessage", json={"chat_id": 31337, "text": "got it", "reply_to_message_id": 40})
    assert reply.status_code == 200  # the delivered message and its chat are known now
    assert reply.json()["result"]["message_id"] == 41


def test_deliver_to_webhook_honours_allowed_updates_and_records_errors(fake_telegram: FakeTelegram) -> None:
    token = fake_telegram.token
    with pytest.raises(LookupError):
        fake_telegram.deliver_to_webhook(token, text_update(1, "x", message_id=1), "http://127.0.0.1:9")
    call(fake_telegram, "setWebhook", json={"url": "https://bridge.example.com/h", "allowed_updates": ["message"]})
    with recording(status=500) as recorder:
        assert fake_telegram.deliver_to_webhook(token, edited_update(1, "x", message_id=1), recorder.base) is None
        assert recorder.received == []
        assert fake_telegram.deliver_to_webhook(token, text_update(1, "x", message_id=1), recorder.base) == (500, b"ok")
    info = call(fake_telegram, "getWebhookInfo").json()["result"]
    assert info["last_error_message"] == "Wrong response from the webhook: 500 Internal Server Error"
    assert isinstance(info["last_error_date"], int)
