"""A fake of the Telegram Bot API: a real HTTP server on 127.0.0.1 that answers bot methods and serves files.

It follows the Bot API documentation (https://core.telegram.org/bots/api) and, where the documentation is
silent (error texts, how parameters are read), the open-source Bot API server
(https://github.com/tdlib/telegram-bot-api, `telegram-bot-api/Client.cpp`):

- **Requests** ("Making requests"): `{base_url}/bot<token>/<method>`, GET or POST, method names
  case-insensitive; parameters from the query string and from an `application/json`,
  `application/x-www-form-urlencoded` or `multipart/form-data` body. As in the real server, a JSON body's
  string values are taken as they are and its other values as their JSON text, so `reply_parameters` may be
  an object in JSON and a JSON string in a form. The code under test reaches the fake by using `base_url`
  (`http://127.0.0.1:<port>`) where it would use `https://api.telegram.org`.
- **Answers**: `{"ok": true, "result": ...}` (with a `description` where Telegram gives one), or
  `{"ok": false, "error_code": N, "description": "..."}` with HTTP status N; flood control adds
  `"parameters": {"retry_after": N}` and a `Retry-After` header. An unknown token is 401 `Unauthorized`, an
  unknown method or path 404 `Not Found`.
- **Methods**: getMe, setWebhook, deleteWebhook, getWebhookInfo, sendMessage and getFile, with the checks and
  error texts of the real API (see the `_m_*` methods); `stub(method, result)` answers any other method.
  Chats must be made known with `add_chat` (or by delivering an update from them); messages get ids that
  increase per chat; `sent` records every message sent.
- **Files** ("getFile", "Downloading files"): `GET {base_url}/file/bot<token>/<file_path>` serves the bytes
  registered with `add_file` or `attach`; anything else is 404 with a JSON error body, as Telegram answers.
- **Webhooks** ("setWebhook", "Update"): `deliver` POSTs an Update as Telegram does (`application/json`, the
  `X-Telegram-Bot-Api-Secret-Token` header); `FakeTelegram.deliver_to_webhook` does it to the URL and with
  the secret a bot registered, honouring its `allowed_updates`.
- **Update builders** (`text_update`, `photo_update`, `document_update`, ...): pure functions returning Update
  dicts of the documented shape, with increasing `update_id`s and realistic file ids.

Faults, for the next call(s) of a method (`fail(method, kind, times=1)`), of any method (`ANY_METHOD`) or of
file downloads (`FILE_DOWNLOAD`), or until `heal()` (`times=None`): `FLOOD` (429 with `retry_after`),
`SERVER_ERROR` (500 JSON by default; `status=502, html=True` is Nginx's HTML page), `BLOCKED` (403), `HANG`
(held until `release()`, then served, or `close()`, then dropped) and `DROP` (the connection closed without
an answer). `block_chat(chat_id)` makes every sendMessage to a chat 403.

Not emulated: parse_mode and entities (text is measured and echoed as sent), uploads (multipart file parts are
recorded, not stored), getUpdates, groups and permissions, pending update queues and webhook retries.

No pytest is needed by the fake itself; the `fake_telegram` fixture is defined only when pytest is importable.
"""

from __future__ import annotations

import contextlib
import copy
import http.client
import ipaddress
import itertools
import json
import mimetypes
import re
import secrets
import socket
import string
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from email import policy
from email.message import Message
from email.parser import BytesParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import PurePosixPath
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

Json = dict[str, Any]

# Faults (the values of `fail`'s `kind`).
FLOOD = "flood"  # HTTP 429 "Too Many Requests: retry after N", parameters.retry_after and a Retry-After header
SERVER_ERROR = "server_error"  # HTTP `status` (500) with a JSON error, or Nginx's HTML page with html=True
BLOCKED = "blocked"  # HTTP 403 "Forbidden: bot was blocked by the user"
HANG = "hang"  # hold the request until release() (then serve it) or close() (then drop it)
DROP = "drop"  # close the connection without an answer
FAULTS = frozenset({FLOOD, SERVER_ERROR, BLOCKED, HANG, DROP})
ANY_METHOD = "*"  # fail(ANY_METHOD, ...): the next call of any bot method
FILE_DOWNLOAD = "file"  # fail(FILE_DOWNLOAD, ...): the next file download

API_ORIGIN = "https://api.telegram.org"  # what `base_url` stands in for
SECRET_TOKEN_HEADER = "X-Telegram-Bot-Api-Secret-Token"
MAX_TEXT_LENGTH = 4096  # UTF-16 code units (sendMessage)
MAX_DOWNLOAD_SIZE = 20 * 1024 * 1024  # getFile refuses bigger files
WEBHOOK_PORTS = (80, 88, 443, 8443)
DEFAULT_MAX_CONNECTIONS = 40
UPDATE_TYPES = (
    "message", "edited_message", "channel_post", "edited_channel_post", "business_connection", "business_message",
    "edited_business_message", "deleted_business_messages", "message_reaction", "message_reaction_count",
    "inline_query", "chosen_inline_result", "callback_query", "shipping_query", "pre_checkout_query",
    "purchased_paid_media", "poll", "poll_answer", "my_chat_member", "chat_member", "chat_join_request",
    "chat_boost", "removed_chat_boost",
)
DEFAULT_ALLOWED_UPDATES = tuple(
    name for name in UPDATE_TYPES if name not in {"chat_member", "message_reaction", "message_reaction_count"}
)
TOKEN_PATTERN = re.compile(r"(\d{1,19}):[A-Za-z0-9_-]{35}")
NGINX_502 = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad Gateway</h1></center>"
    b"\r\n<hr><center>nginx/1.18.0</center>\r\n</body>\r\n</html>\r\n"
)

_API_PATH = re.compile(r"/bot([^/]*)/([^/]*)")
_FILE_PATH = re.compile(r"/file/bot([^/]+)/(.+)")
_SECRET_TOKEN = re.compile(r"[A-Za-z0-9_-]*")
_ID_ALPHABET = string.ascii_letters + string.digits + "-_"
_CONTENT_TYPES = {".oga": "audio/ogg", ".ogg": "audio/ogg", ".webp": "image/webp", ".tgs": "application/x-tgsticker",
                  ".webm": "video/webm", ".mp3": "audio/mpeg", ".mp4": "video/mp4", ".jpg": "image/jpeg"}
# File kinds: the file_id prefix Telegram's ids start with, the getFile directory, the default extension.
_FILE_KINDS = {
    "photo": ("AgACAgIAAxkBAAI", "photos", ".jpg"),
    "document": ("BQACAgIAAxkBAAI", "documents", ""),
    "video": ("BAACAgIAAxkBAAI", "videos", ".mp4"),
    "audio": ("CQACAgIAAxkBAAI", "music", ".mp3"),
    "voice": ("AwACAgIAAxkBAAI", "voice", ".oga"),
    "sticker": ("CAACAgIAAxkBAAI", "stickers", ".webp"),
    "animation": ("CgACAgIAAxkBAAI", "animations", ".mp4"),
    "video_note": ("DQACAgIAAxkBAAI", "video_notes", ".mp4"),
}
_MESSAGE_KEYS = ("message", "edited_message", "channel_post", "edited_channel_post", "business_message",
                 "edited_business_message")

_update_ids = itertools.count(712_000_001)
_file_numbers = itertools.count(1)


def new_token(bot_id: int | None = None) -> str:
    """A bot token of Telegram's shape, `<digits>:<35 characters of [A-Za-z0-9_-]>`."""
    digits = bot_id if bot_id is not None else 6_000_000_000 + secrets.randbelow(1_000_000_000)
    return f"{digits}:AA{''.join(secrets.choice(_ID_ALPHABET) for _ in range(33))}"


def new_file_id(kind: str = "document") -> str:
    """A file_id shaped like Telegram's for that kind of file (photo, document, voice, ...)."""
    prefix = _FILE_KINDS[kind][0]
    return prefix + "".join(secrets.choice(_ID_ALPHABET) for _ in range(56))


def new_file_unique_id() -> str:
    """A file_unique_id shaped like Telegram's."""
    return "AQAD" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(12))


def utf16_length(text: str) -> int:
    """The length of text in UTF-16 code units, as Telegram counts it."""
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


class _ApiError(Exception):
    """An error answer of the Bot API."""

    def __init__(self, status: int, description: str, retry_after: int | None = None) -> None:
        """An error with its HTTP status (= error_code) and description."""
        super().__init__(description)
        self.status = status
        self.description = description
        self.retry_after = retry_after

    def body(self) -> Json:
        """The documented error envelope."""
        body: Json = {"ok": False, "error_code": self.status, "description": self.description}
        if self.retry_after is not None:
            body["parameters"] = {"retry_after": self.retry_after}
        return body


def _flood(retry_after: int) -> _ApiError:
    """A flood-control error."""
    return _ApiError(429, f"Too Many Requests: retry after {retry_after}", retry_after)


@dataclass
class Webhook:
    """A bot's webhook as set with setWebhook (the secret is kept here but never answered)."""

    url: str = ""
    secret_token: str | None = None
    max_connections: int = 0
    drop_pending_updates: bool = False
    last_error_date: int | None = None
    last_error_message: str | None = None


@dataclass
class Bot:
    """One bot the fake knows: its token, its User fields and its webhook."""

    token: str
    id: int
    username: str
    first_name: str
    webhook: Webhook = field(default_factory=Webhook)
    allowed_updates: list[str] | None = None  # None: Telegram's default (all but chat_member and reactions)
    webhook_set_at: float | None = None  # time.monotonic() of the last setWebhook with a URL
    webhooks_set: int = 0  # setWebhook calls that changed the webhook

    def user(self, *, me: bool = False) -> Json:
        """The bot's User object: as in a message's `from`, or with the fields only getMe answers (me=True)."""
        fields: Json = {"id": self.id, "is_bot": True, "first_name": self.first_name, "username": self.username}
        if me:
            fields.update(can_join_groups=True, can_read_all_group_messages=False, supports_inline_queries=False,
                          can_connect_to_business=False, has_main_web_app=False)
        return fields


@dataclass
class ApiCall:
    """One request to a bot method as received, and what was answered."""

    token: str
    method: str  # as spelled in the path
    http_method: str
    params: dict[str, str]
    files: dict[str, tuple[str, bytes]]  # multipart file parts: field name → (file name, bytes)
    content_type: str
    headers: dict[str, str]  # lower-case names
    received_at: float  # time.monotonic() on arrival
    fault: str | None = None
    status: int | None = None  # the HTTP status answered; None while pending, or if dropped
    answer: Any = None  # the JSON answered (None for an HTML answer or none)

    @property
    def name(self) -> str:
        """The method name in lower case (method names are case-insensitive)."""
        return self.method.lower()


@dataclass(frozen=True)
class SentMessage:
    """A message a bot sent successfully with sendMessage."""

    token: str
    chat_id: int
    text: str
    reply_to_message_id: int | None  # as requested (reply_to_message_id or reply_parameters.message_id)
    params: dict[str, str]  # every parameter as received
    message: Json  # the Message object answered

    @property
    def message_id(self) -> int:
        """The id the message got in its chat."""
        return int(self.message["message_id"])


@dataclass(frozen=True)
class StoredFile:
    """A file a bot can getFile and download."""

    file_id: str
    file_unique_id: str
    file_path: str
    content: bytes

    def file_object(self) -> Json:
        """The File object getFile answers."""
        return {"file_id": self.file_id, "file_unique_id": self.file_unique_id, "file_size": len(self.content),
                "file_path": self.file_path}


@dataclass(frozen=True)
class Download:
    """One file download request and its HTTP status (None if dropped)."""

    token: str
    file_path: str
    status: int | None
    fault: str | None


@dataclass(frozen=True)
class Delivery:
    """One update POSTed to a webhook by deliver_to_webhook."""

    url: str
    update: Json
    secret_token: str | None
    status: int
    body: bytes


@dataclass
class _Fault:
    method: str  # lower case, ANY_METHOD or FILE_DOWNLOAD
    kind: str
    remaining: int | None  # None: until heal()
    retry_after: int
    status: int
    html: bool


class FakeTelegram:
    """The Telegram Bot API for a set of bots: a local HTTP server, its records and its faults."""

    def __init__(self, tokens: Iterable[str] | None = None, *, set_webhook_interval: float = 0.0) -> None:
        """Know `tokens` (one new bot if None); set_webhook_interval=1 floods setWebhook within 1 s, as Telegram."""
        self.set_webhook_interval = set_webhook_interval
        self.bots: dict[str, Bot] = {}
        self._chats: dict[int, Json] = {}
        self._messages: dict[int, dict[int, Json]] = {}
        self._blocked: set[int] = set()
        self._files: dict[str, dict[str, StoredFile]] = {}
        self._stubs: dict[str, Any] = {}
        self._calls: list[ApiCall] = []
        self._sent: list[SentMessage] = []
        self._downloads: list[Download] = []
        self._deliveries: list[Delivery] = []
        self._errors: list[str] = []
        self._faults: list[_Fault] = []
        self._hanging = 0
        self._release = threading.Event()
        self._changed = threading.Condition()
        self.closing = threading.Event()
        for token in [new_token()] if tokens is None else tokens:
            self.add_bot(token)
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.fake = self
        self.port: int = self._server.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.01}, name="fake-telegram", daemon=True
        )

    # Life cycle

    def start(self) -> FakeTelegram:
        """Serve in a daemon thread."""
        if not self._thread.is_alive():
            self._thread.start()
        return self

    def close(self) -> None:
        """Drop every hanging request and open connection, stop serving and wait for the handler threads."""
        self.closing.set()
        self._release.set()
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join()
        self._server.close_connections()
        self._server.server_close()  # joins the handler threads

    def __enter__(self) -> FakeTelegram:
        """Start (if not started yet)."""
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        """Close."""
        self.close()

    # Bots, chats, files

    def add_bot(self, token: str | None = None, *, username: str | None = None, first_name: str = "Deskbridge Test"
                ) -> Bot:
        """Know one more bot (a new token if None); its id is the token's digits."""
        token = token if token is not None else new_token()
        match = TOKEN_PATTERN.fullmatch(token)
        if match is None:
            raise ValueError(f"not a bot token of Telegram's shape: {token!r}")
        bot_id = int(match.group(1))
        bot = Bot(token, bot_id, username or f"test{bot_id}_bot", first_name)
        with self._changed:
            self.bots[token] = bot
            self._files.setdefault(token, {})
        return bot

    @property
    def token(self) -> str:
        """The first bot's token."""
        return next(iter(self.bots))

    def bot(self, token: str | None = None) -> Bot:
        """The bot with this token (the first bot if None)."""
        return self.bots[token if token is not None else self.token]

    def api_url(self, method: str, token: str | None = None) -> str:
        """The URL of a bot method, `{base_url}/bot<token>/<method>`."""
        return f"{self.base_url}/bot{token if token is not None else self.token}/{method}"

    def file_url(self, file_path: str, token: str | None = None) -> str:
        """The download URL of a file, `{base_url}/file/bot<token>/<file_path>`."""
        return f"{self.base_url}/file/bot{token if token is not None else self.token}/{file_path}"

    def add_chat(
        self,
        chat_id: int,
        *,
        first_name: str = "Ada",
        last_name: str | None = "Lovelace",
        username: str | None = None,
        type: str = "private",
        title: str | None = None,
    ) -> Json:
        """Make a chat known (sendMessage answers "chat not found" otherwise); its Chat object."""
        chat: Json = {"id": chat_id}
        if type == "private":
            chat.update(_without_none(first_name=first_name, last_name=last_name, username=username))
        else:
            chat.update(_without_none(title=title or f"Chat {chat_id}", username=username))
        chat["type"] = type
        with self._changed:
            self._chats[chat_id] = chat
            self._messages.setdefault(chat_id, {})
        return dict(chat)

    def block_chat(self, chat_id: int) -> None:
        """Answer every sendMessage to this chat 403 "Forbidden: bot was blocked by the user"."""
        with self._changed:
            self._blocked.add(chat_id)

    def unblock_chat(self, chat_id: int) -> None:
        """Let messages reach this chat again."""
        with self._changed:
            self._blocked.discard(chat_id)

    def remember(self, update: Json) -> None:
        """Know the chat and the message of an update (so that replies to it succeed), as Telegram would."""
        message = _message_of(update)
        if message is None:
            return
        chat = message["chat"]
        with self._changed:
            self._chats.setdefault(chat["id"], dict(chat))
            self._messages.setdefault(chat["id"], {})[message["message_id"]] = copy.deepcopy(message)

    def messages(self, chat_id: int) -> list[Json]:
        """Every message known in a chat (remembered or sent), by message_id."""
        with self._changed:
            stored = self._messages.get(chat_id, {})
            return [copy.deepcopy(stored[key]) for key in sorted(stored)]

    def add_file(
        self, token: str, file_id: str, content: bytes, *, file_path: str | None = None,
        file_unique_id: str | None = None,
    ) -> Json:
        """Let a bot getFile `file_id` and download `content` at `file_path`; the File object."""
        if token not in self.bots:
            raise ValueError(f"unknown bot token {token!r}")
        path = file_path or f"documents/file_{next(_file_numbers)}"
        stored = StoredFile(file_id, file_unique_id or new_file_unique_id(), path, bytes(content))
        with self._changed:
            self._files[token][file_id] = stored
        return stored.file_object()

    def attach(self, update: Json, content: bytes, *, token: str | None = None, file_path: str | None = None) -> str:
        """Register the bytes of an update's file (the largest photo size) under its file_id; the file_id."""
        kind, file = file_of(update)
        if file_path is None:
            _, directory, extension = _FILE_KINDS[kind]
            if kind == "document" and "." in file.get("file_name", ""):
                extension = PurePosixPath(file["file_name"]).suffix
            elif kind == "sticker":
                extension = ".tgs" if file.get("is_animated") else ".webm" if file.get("is_video") else extension
            file_path = f"{directory}/file_{next(_file_numbers)}{extension}"
        self.add_file(token if token is not None else self.token, file["file_id"], content, file_path=file_path,
                      file_unique_id=file.get("file_unique_id"))
        return str(file["file_id"])

    def stub(self, method: str, result: Any) -> None:
        """Answer a method the fake does not implement (e.g. sendChatAction) with `{"ok": true, "result": result}`."""
        with self._changed:
            self._stubs[method.lower()] = result

    # Faults

    def fail(
        self, method: str, kind: str, times: int | None = 1, *, retry_after: int = 5, status: int = 500,
        html: bool = False,
    ) -> None:
        """Apply a fault to the next `times` calls of `method` (ANY_METHOD, FILE_DOWNLOAD), or until heal() (None)."""
        if kind not in FAULTS:
            raise ValueError(f"unknown fault {kind!r}; one of {sorted(FAULTS)}")
        with self._changed:
            if kind == HANG:
                self._release.clear()
            self._faults.append(_Fault(method.lower(), kind, times, retry_after, status, html))

    def heal(self) -> None:
        """Forget every fault still queued or persistent (hanging requests stay held until release())."""
        with self._changed:
            self._faults.clear()

    def release(self) -> None:
        """Let every hanging request go on (it is then served normally)."""
        self._release.set()

    # Records

    @property
    def calls(self) -> list[ApiCall]:
        """Every bot method call so far, in arrival order."""
        with self._changed:
            return list(self._calls)

    def calls_to(self, method: str) -> list[ApiCall]:
        """The calls of one method (any spelling)."""
        name = method.lower()
        return [call for call in self.calls if call.name == name]

    def call_count(self, method: str) -> int:
        """How many times a method was called (any spelling, whatever the answer)."""
        return len(self.calls_to(method))

    @property
    def get_file_calls(self) -> int:
        """How many getFile calls arrived."""
        return self.call_count("getFile")

    @property
    def sent(self) -> list[SentMessage]:
        """Every message sent successfully, in order."""
        with self._changed:
            return list(self._sent)

    @property
    def downloads(self) -> list[Download]:
        """Every file download request, in order."""
        with self._changed:
            return list(self._downloads)

    @property
    def deliveries(self) -> list[Delivery]:
        """Every update delivered with deliver_to_webhook, in order."""
        with self._changed:
            return list(self._deliveries)

    @property
    def errors(self) -> list[str]:
        """Exceptions raised inside the fake while serving (a bug in the fake; tests may assert it is empty)."""
        with self._changed:
            return list(self._errors)

    def webhook(self, token: str | None = None) -> Webhook:
        """A copy of a bot's webhook (the first bot's if None), secret included."""
        with self._changed:
            return replace(self.bot(token).webhook)

    def wait_for_calls(self, count: int, method: str | None = None, timeout: float = 5.0) -> list[ApiCall]:
        """Block until at least `count` calls (of `method`, if given) have arrived; those calls."""
        name = method.lower() if method else None

        def matching() -> list[ApiCall]:
            """The calls wanted."""
            return [call for call in self._calls if name is None or call.name == name]

        with self._changed:
            if not self._changed.wait_for(lambda: len(matching()) >= count, timeout):
                raise TimeoutError(f"expected {count} calls of {method or 'any method'}, got {len(matching())}")
            return matching()

    def wait_for_answered(self, count: int, method: str | None = None, timeout: float = 5.0) -> list[ApiCall]:
        """Block until at least `count` calls (of `method`, if given) have been answered; those calls."""
        name = method.lower() if method else None

        def answered() -> list[ApiCall]:
            """The answered calls wanted."""
            return [c for c in self._calls if (name is None or c.name == name) and c.status is not None]

        with self._changed:
            if not self._changed.wait_for(lambda: len(answered()) >= count, timeout):
                got = len(answered())
                raise TimeoutError(f"expected {count} answered calls of {method or 'any method'}, got {got}")
            return answered()

    def wait_for_sent(self, count: int, timeout: float = 5.0) -> list[SentMessage]:
        """Block until at least `count` messages have been sent; every sent message."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self._sent) >= count, timeout):
                raise TimeoutError(f"expected {count} sent messages, got {len(self._sent)}")
            return list(self._sent)

    def wait_for_hanging(self, count: int = 1, timeout: float = 5.0) -> None:
        """Block until at least `count` requests are being held by HANG."""
        with self._changed:
            if not self._changed.wait_for(lambda: self._hanging >= count, timeout):
                raise TimeoutError(f"expected {count} hanging requests, got {self._hanging}")

    # Webhook deliveries

    def would_deliver(self, token: str, update: Json) -> bool:
        """Whether Telegram would send this update to the bot, given its allowed_updates."""
        allowed = self.bot(token).allowed_updates
        return update_type(update) in (DEFAULT_ALLOWED_UPDATES if allowed is None else allowed)

    def deliver_to_webhook(
        self, token: str, update: Json, target_base: str, *, timeout: float = 10.0
    ) -> tuple[int, bytes] | None:
        """POST an update to the bot's webhook (scheme and host replaced by target_base); None if not allowed."""
        # The registered secret is sent; the update's chat and message become known (so replies succeed);
        # an answer other than 2xx becomes the webhook's last_error_message, as getWebhookInfo reports it.
        with self._changed:
            hook = replace(self.bot(token).webhook)
        if not hook.url:
            raise LookupError(f"bot {token.split(':')[0]} has no webhook; call setWebhook first")
        if not self.would_deliver(token, update):
            return None
        registered, target = urlsplit(hook.url), urlsplit(target_base)
        url = urlunsplit((target.scheme, target.netloc, target.path.rstrip("/") + registered.path, registered.query,
                          ""))
        self.remember(update)
        status, body = deliver(url, update, hook.secret_token, timeout=timeout)
        with self._changed:
            self._deliveries.append(Delivery(url, copy.deepcopy(update), hook.secret_token, status, body))
            live = self.bot(token).webhook
            if not 200 <= status < 300 and live.url == hook.url:
                live.last_error_date = int(time.time())
                reason = http.client.responses.get(status, "")
                live.last_error_message = f"Wrong response from the webhook: {status} {reason}".rstrip()
            self._changed.notify_all()
        return status, body

    # Serving (called from the handler threads)

    def _arrive(self, call: ApiCall) -> _Fault | None:
        """Record a call; the fault it is due."""
        with self._changed:
            fault = self._take_fault(call.name)
            call.fault = fault.kind if fault else None
            self._calls.append(call)
            self._changed.notify_all()
            return fault

    def _take_fault(self, name: str) -> _Fault | None:
        """The first queued fault for this method (or download), used up by one."""
        with self._changed:
            for index, fault in enumerate(self._faults):
                if fault.method == name or (fault.method == ANY_METHOD and name != FILE_DOWNLOAD):
                    if fault.remaining is not None:
                        fault.remaining -= 1
                        if fault.remaining <= 0:
                            del self._faults[index]
                    return fault
            return None

    def _hang(self) -> bool:
        """Hold a request until release() or close(); whether it may go on."""
        with self._changed:
            self._hanging += 1
            self._changed.notify_all()
        self._release.wait()
        with self._changed:
            self._hanging -= 1
            self._changed.notify_all()
        return not self.closing.is_set()

    def _answered(self, call: ApiCall, status: int | None, answer: Any) -> None:
        """Record what a call was answered (None: nothing, the connection was dropped)."""
        with self._changed:
            call.status = status
            call.answer = answer
            self._changed.notify_all()

    def _error(self, message: str) -> None:
        """Keep an exception raised while serving."""
        with self._changed:
            self._errors.append(message)

    def _dispatch(self, call: ApiCall) -> Json:
        """The answer to a bot method call (raises _ApiError for an error answer)."""
        bot = self.bots.get(call.token)
        if bot is None:
            raise _ApiError(401, "Unauthorized")
        handler = getattr(self, f"_m_{call.name}", None) if call.name.isalnum() else None
        if handler is None:
            with self._changed:
                if call.name in self._stubs:
                    return {"ok": True, "result": copy.deepcopy(self._stubs[call.name])}
            raise _ApiError(404, "Not Found")
        result, description = handler(bot, call.params)
        answer: Json = {"ok": True, "result": result}
        if description is not None:
            answer["description"] = description
        return answer

    def _file_at(self, token: str, file_path: str) -> StoredFile | None:
        """The bot's file stored at file_path, if any."""
        with self._changed:
            for stored in self._files.get(token, {}).values():
                if stored.file_path == file_path:
                    return stored
            return None

    def _downloaded(self, download: Download) -> None:
        """Record a download request."""
        with self._changed:
            self._downloads.append(download)
            self._changed.notify_all()

    # Bot methods: (result, description or None), or _ApiError

    def _m_getme(self, bot: Bot, params: dict[str, str]) -> tuple[Any, str | None]:
        """getMe: the bot's User object."""
        return bot.user(me=True), None

    def _m_setwebhook(self, bot: Bot, params: dict[str, str]) -> tuple[Any, str | None]:
        """setWebhook: check the URL and the secret as Telegram does, then record the webhook."""
        url = params.get("url", "")
        if not url:
            return self._m_deletewebhook(bot, params)
        now = time.monotonic()
        with self._changed:
            last = bot.webhook_set_at
            if self.set_webhook_interval and last is not None and now - last < self.set_webhook_interval:
                raise _flood(1)
            bot.webhook_set_at = now
        _check_webhook_url(url)
        secret = params.get("secret_token", "")
        if len(secret) > 256:
            raise _ApiError(400, "Bad Request: secret token is too long")
        if not _SECRET_TOKEN.fullmatch(secret):
            raise _ApiError(400, "Bad Request: secret token contains unallowed characters")
        max_connections = min(max(_to_int(params.get("max_connections", ""), DEFAULT_MAX_CONNECTIONS), 1), 100)
        drop = _to_bool(params.get("drop_pending_updates", ""))
        with self._changed:
            allowed = _allowed_updates(params.get("allowed_updates", ""), bot.allowed_updates)
            bot.allowed_updates = allowed
            old = bot.webhook
            if (old.url, old.secret_token, old.max_connections) == (url, secret or None, max_connections) and not drop:
                return True, "Webhook is already set"
            bot.webhook = Webhook(url, secret or None, max_connections, drop)
            bot.webhooks_set += 1
        return True, "Webhook was set"

    def _m_deletewebhook(self, bot: Bot, params: dict[str, str]) -> tuple[Any, str | None]:
        """deleteWebhook (and setWebhook with an empty url)."""
        with self._changed:
            if not bot.webhook.url:
                return True, "Webhook is already deleted"
            bot.webhook = Webhook(drop_pending_updates=_to_bool(params.get("drop_pending_updates", "")))
        return True, "Webhook was deleted"

    def _m_getwebhookinfo(self, bot: Bot, params: dict[str, str]) -> tuple[Any, str | None]:
        """getWebhookInfo: the documented WebhookInfo, without the secret."""
        with self._changed:
            hook = bot.webhook
            info: Json = {"url": hook.url, "has_custom_certificate": False, "pending_update_count": 0}
            if hook.last_error_date is not None:
                info["last_error_date"] = hook.last_error_date
                info["last_error_message"] = hook.last_error_message
            if hook.url:
                info["max_connections"] = hook.max_connections
            if bot.allowed_updates is not None and tuple(bot.allowed_updates) != DEFAULT_ALLOWED_UPDATES:
                info["allowed_updates"] = list(bot.allowed_updates)
        return info, None

    def _m_sendmessage(self, bot: Bot, params: dict[str, str]) -> tuple[Any, str | None]:
        """sendMessage: check text, chat and reply as Telegram does; record and answer the Message."""
        text = params.get("text", "")
        if not text.strip():
            raise _ApiError(400, "Bad Request: message text is empty")
        chat_id = self._resolve_chat(params.get("chat_id", ""))
        reply_to, allow_without_reply = _reply_parameters(params)
        with self._changed:
            chat_messages = self._messages.setdefault(chat_id, {})
            replied = chat_messages.get(reply_to) if reply_to else None
            if reply_to and replied is None and not allow_without_reply:
                raise _ApiError(400, "Bad Request: message to be replied not found")
            if utf16_length(text) > MAX_TEXT_LENGTH:
                raise _ApiError(400, "Bad Request: message is too long")
            if chat_id in self._blocked:
                raise _ApiError(403, "Forbidden: bot was blocked by the user")
            message: Json = {
                "message_id": max(chat_messages, default=0) + 1,
                "from": bot.user(),
                "chat": dict(self._chats[chat_id]),
                "date": int(time.time()),
                "text": text,
            }
            if replied is not None:
                quoted = copy.deepcopy(replied)
                quoted.pop("reply_to_message", None)
                message["reply_to_message"] = quoted
            chat_messages[message["message_id"]] = message
            self._sent.append(SentMessage(bot.token, chat_id, text, reply_to or None, dict(params),
                                          copy.deepcopy(message)))
            self._changed.notify_all()
            return copy.deepcopy(message), None

    def _m_getfile(self, bot: Bot, params: dict[str, str]) -> tuple[Any, str | None]:
        """getFile: the File object of a registered file."""
        file_id = params.get("file_id", "")
        if not file_id:
            raise _ApiError(400, "Bad Request: file_id not specified")
        with self._changed:
            stored = self._files[bot.token].get(file_id)
        if stored is None:
            raise _ApiError(400, "Bad Request: invalid file_id")
        if len(stored.content) > MAX_DOWNLOAD_SIZE:
            raise _ApiError(400, "Bad Request: file is too big")
        return stored.file_object(), None

    def _resolve_chat(self, raw: str) -> int:
        """The id of a known chat named by chat_id (a number or @username)."""
        raw = raw.strip()
        if not raw:
            raise _ApiError(400, "Bad Request: chat_id is empty")
        with self._changed:
            if raw.startswith("@"):
                wanted = raw[1:].lower()
                for chat_id, chat in self._chats.items():
                    if str(chat.get("username", "")).lower() == wanted:
                        return chat_id
                raise _ApiError(400, "Bad Request: chat not found")
            try:
                chat_id = int(raw)
            except ValueError:
                raise _ApiError(400, "Bad Request: chat not found") from None
            if chat_id not in self._chats:
                raise _ApiError(400, "Bad Request: chat not found")
            return chat_id


def _check_webhook_url(url: str) -> None:
    """Refuse a webhook URL as api.telegram.org does (HTTPS only, ports 80/88/443/8443, no reserved IP)."""
    parts = urlsplit(url if "://" in url else f"https://{url}")
    if parts.scheme.lower() == "http":
        raise _ApiError(400, "Bad Request: bad webhook: An HTTPS URL must be provided for webhook")
    try:
        port = parts.port
    except ValueError:
        port = -1
    if parts.scheme.lower() != "https" or not parts.hostname or port == -1:
        raise _ApiError(400, "Bad Request: invalid webhook URL specified")
    if port is not None and port not in WEBHOOK_PORTS:
        raise _ApiError(400, "Bad Request: bad webhook: Webhook can be set up only on ports 80, 88, 443 or 8443")
    try:
        address = ipaddress.ip_address(parts.hostname)
    except ValueError:
        return
    if not address.is_global:
        raise _ApiError(400, f"Bad Request: bad webhook: IP address {address} is reserved")


def _allowed_updates(raw: str, current: list[str] | None) -> list[str] | None:
    """allowed_updates as the Bot API server reads it: unparsable or absent keeps the current list."""
    if not raw:
        return current
    try:
        value = json.loads(raw)
    except ValueError:
        return current
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        return current
    wanted = {item.lower() for item in value}
    chosen = [name for name in UPDATE_TYPES if name in wanted]
    return chosen or None  # none known (e.g. []): the default


def _reply_parameters(params: dict[str, str]) -> tuple[int, bool]:
    """The message to reply to (0: none) and allow_sending_without_reply, from either way of giving them."""
    if "reply_parameters" not in params:
        return _message_id(params.get("reply_to_message_id", "")), _to_bool(
            params.get("allow_sending_without_reply", ""))
    raw = params["reply_parameters"]
    if not raw:
        return 0, False
    try:
        value = json.loads(raw)
    except ValueError:
        raise _ApiError(400, "Bad Request: can't parse reply parameters JSON object") from None
    if not isinstance(value, dict):
        raise _ApiError(400, "Bad Request: object expected as reply parameters")
    if not value:
        return 0, False
    message_id = value.get("message_id")
    if isinstance(message_id, str) and message_id.lstrip("-").isdigit():
        message_id = int(message_id)
    if not isinstance(message_id, int) or isinstance(message_id, bool):
        raise _ApiError(400, 'Bad Request: field "message_id" must be of type Number')
    return max(message_id, 0), bool(value.get("allow_sending_without_reply", False))


def _message_id(raw: str) -> int:
    """A message id parameter as the server reads it (garbage or negative: 0)."""
    return max(_to_int(raw, 0), 0)


def _to_int(raw: str, default: int) -> int:
    """An integer parameter (absent: default; not a number: 0, as td::to_integer)."""
    if not raw.strip():
        return default
    try:
        return int(raw.strip())
    except ValueError:
        return 0


def _to_bool(raw: str) -> bool:
    """A boolean parameter as the server reads it ("true", "yes" or "1")."""
    return raw.strip().lower() in {"true", "yes", "1"}


def _without_none(**fields: Any) -> Json:
    """The fields that are not None."""
    return {name: value for name, value in fields.items() if value is not None}


def _json_bytes(value: Any) -> bytes:
    """Compact UTF-8 JSON, as Telegram writes it."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def parse_params(query: str, content_type: str, raw: bytes) -> tuple[dict[str, str], dict[str, tuple[str, bytes]]]:
    """A request's parameters (query string, then body) and multipart file parts, as the Bot API reads them."""
    params = dict(parse_qsl(query, keep_blank_values=True))
    files: dict[str, tuple[str, bytes]] = {}
    media_type = content_type.split(";")[0].strip().lower()
    if not raw:
        return params, files
    if media_type == "application/json":
        try:
            body = json.loads(raw)
        except ValueError:
            raise _ApiError(400, "Bad Request: can't parse JSON object") from None
        if not isinstance(body, dict):
            raise _ApiError(400, "Bad Request: can't parse JSON object")
        for name, value in body.items():
            if value is not None:
                params[name] = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    elif media_type == "application/x-www-form-urlencoded":
        params.update(parse_qsl(raw.decode("utf-8", errors="replace"), keep_blank_values=True))
    elif media_type == "multipart/form-data":
        message = BytesParser(policy=policy.HTTP).parsebytes(
            b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + raw
        )
        if not message.is_multipart():
            raise _ApiError(400, "Bad Request: can't parse multipart/form-data")
        for part in message.get_payload():
            assert isinstance(part, Message)
            name = part.get_param("name", header="content-disposition")
            if not isinstance(name, str):
                continue
            payload = part.get_payload(decode=True)
            content = payload if isinstance(payload, bytes) else b""
            filename = part.get_filename()
            if filename is not None:
                files[name] = (filename, content)
            else:
                params[name] = content.decode(part.get_content_charset() or "utf-8", errors="replace")
    return params, files


def _content_type_of(file_path: str) -> str:
    """The Content-Type a download is served with, from the file's extension."""
    suffix = PurePosixPath(file_path).suffix.lower()
    return _CONTENT_TYPES.get(suffix) or mimetypes.guess_type(file_path)[0] or "application/octet-stream"


class _Server(ThreadingHTTPServer):
    daemon_threads = False  # so that server_close() joins every handler thread
    block_on_close = True
    request_queue_size = 128  # concurrent clients are not made to wait for a SYN retry
    fake: FakeTelegram

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        """Listen on address, tracking open connections."""
        super().__init__(address, handler)
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()

    def track(self, connection: socket.socket) -> None:
        """Remember an open connection (closed at once if the fake is closing)."""
        with self._connections_lock:
            self._connections.add(connection)
            closing = self.fake.closing.is_set()
        if closing:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def untrack(self, connection: socket.socket) -> None:
        """Forget a closed connection."""
        with self._connections_lock:
            self._connections.discard(connection)

    def close_connections(self) -> None:
        """Shut every open connection (idle keep-alive ones would otherwise hold server_close())."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"  # keep-alive, as api.telegram.org

    def version_string(self) -> str:
        """The Server header api.telegram.org sends."""
        return "nginx/1.18.0"

    def log_message(self, format: str, *args: Any) -> None:
        """Keep the test output quiet."""

    def setup(self) -> None:
        """Track the connection so that close() can shut it."""
        super().setup()
        self.server.track(self.connection)

    def finish(self) -> None:
        """Forget the connection."""
        with contextlib.suppress(OSError):
            super().finish()
        self.server.untrack(self.connection)

    def do_GET(self) -> None:
        """A bot method or a file download."""
        self._handle()

    def do_POST(self) -> None:
        """A bot method."""
        self._handle()

    def _handle(self) -> None:
        """Read the request and serve it as a download or a bot method call."""
        fake = self.server.fake
        with contextlib.suppress(OSError):  # the client gave up on us: expected with hangs and drops
            raw = self._read_body()
            url = urlsplit(self.path)
            try:
                if self.command == "GET" and _FILE_PATH.fullmatch(url.path):
                    self._download(fake, url.path)
                else:
                    self._api(fake, url.path, url.query, raw)
            except OSError:
                raise
            except Exception as error:  # a bug in the fake: answer 500 and keep it for the test to see
                fake._error(f"{type(error).__name__}: {error}")
                self._send(_json_reply(_ApiError(500, "Internal Server Error").body(), 500))

    def _read_body(self) -> bytes:
        """The request body, by Content-Length or chunked."""
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _api(self, fake: FakeTelegram, path: str, query: str, raw: bytes) -> None:
        """Serve a bot method call: record it, apply its fault or dispatch it, answer."""
        match = _API_PATH.fullmatch(path)
        if match is None or not match.group(2):
            self._send(_json_reply(_ApiError(404, "Not Found").body(), 404))
            return
        token, method = unquote(match.group(1)), unquote(match.group(2))
        content_type = self.headers.get("Content-Type") or ""
        parse_error: _ApiError | None = None
        try:
            params, files = parse_params(query, content_type, raw)
        except _ApiError as error:
            params, files, parse_error = {}, {}, error
        headers = {name.lower(): value for name, value in self.headers.items()}
        call = ApiCall(token, method, self.command, params, files, content_type, headers, time.monotonic())
        fault = fake._arrive(call)
        if fault is not None and not self._faulted(fake, fault):
            fake._answered(call, None, None)
            return
        if fault is not None and fault.kind != HANG:
            reply = _fault_reply(fault)
        else:
            try:
                if parse_error is not None:
                    raise parse_error
                reply = _json_reply(fake._dispatch(call))
            except _ApiError as error:
                reply = _json_reply(error.body(), error.status, error.retry_after)
        fake._answered(call, reply.status, reply.answer)  # recorded before the client can see the answer
        self._send(reply)

    def _faulted(self, fake: FakeTelegram, fault: _Fault) -> bool:
        """Hold or drop for HANG and DROP; whether the request is to be answered at all."""
        if fault.kind == HANG and not fake._hang():
            self.close_connection = True
            return False
        if fault.kind == DROP:
            self.close_connection = True
            return False
        return True

    def _download(self, fake: FakeTelegram, path: str) -> None:
        """Serve a file download: its fault, the bytes or 404."""
        match = _FILE_PATH.fullmatch(path)
        assert match is not None
        token, file_path = unquote(match.group(1)), unquote(match.group(2))
        fault = fake._take_fault(FILE_DOWNLOAD)
        kind = fault.kind if fault is not None else None
        if fault is not None and not self._faulted(fake, fault):
            fake._downloaded(Download(token, file_path, None, kind))
            return
        stored = fake._file_at(token, file_path) if token in fake.bots else None
        if fault is not None and fault.kind != HANG:
            reply = _fault_reply(fault)
        elif stored is None:
            reply = _json_reply(_ApiError(404, "Not Found").body(), 404)
        else:
            reply = _Reply(200, stored.content, _content_type_of(file_path))
        fake._downloaded(Download(token, file_path, reply.status, kind))  # recorded before the client sees it
        self._send(reply)

    def _send(self, reply: _Reply) -> None:
        """Write an answer (always with a Content-Length: the connection is kept alive)."""
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(reply.payload)))
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(reply.payload)
        self.wfile.flush()


@dataclass(frozen=True)
class _Reply:
    """An HTTP answer about to be sent, and the JSON it holds (None for other content)."""

    status: int
    payload: bytes
    content_type: str
    headers: dict[str, str] = field(default_factory=dict)
    answer: Any = None


def _json_reply(body: Any, status: int = 200, retry_after: int | None = None) -> _Reply:
    """A JSON answer (with Retry-After for flood control)."""
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
    return _Reply(status, _json_bytes(body), "application/json", headers, body)


def _fault_reply(fault: _Fault) -> _Reply:
    """The answer of a FLOOD, SERVER_ERROR or BLOCKED fault."""
    if fault.kind == FLOOD:
        error = _flood(fault.retry_after)
    elif fault.kind == BLOCKED:
        error = _ApiError(403, "Forbidden: bot was blocked by the user")
    elif fault.html:
        title = f"{fault.status} {http.client.responses.get(fault.status, 'Error')}".encode()
        return _Reply(fault.status, NGINX_502.replace(b"502 Bad Gateway", title), "text/html")
    else:
        error = _ApiError(fault.status, http.client.responses.get(fault.status, "Internal Server Error"))
    return _json_reply(error.body(), error.status, error.retry_after)


def deliver(url: str, update: Json, secret_token: str | None = None, *, timeout: float = 10.0) -> tuple[int, bytes]:
    """POST an update to a webhook URL as Telegram does (JSON, the secret token header); status and body."""
    parts = urlsplit(url)
    body = _json_bytes(update)
    headers = {"Content-Type": "application/json", "Content-Length": str(len(body))}
    if secret_token:
        headers[SECRET_TOKEN_HEADER] = secret_token
    connection_type = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    connection = connection_type(parts.hostname or "127.0.0.1", parts.port, timeout=timeout)
    try:
        connection.request("POST", (parts.path or "/") + (f"?{parts.query}" if parts.query else ""), body, headers)
        answer = connection.getresponse()
        return answer.status, answer.read()
    finally:
        connection.close()


# Update builders: pure functions returning Update dicts (https://core.telegram.org/bots/api#update).


def user(
    user_id: int,
    *,
    first_name: str = "Ada",
    last_name: str | None = "Lovelace",
    username: str | None = "ada_lovelace",
    language_code: str | None = "en",
    is_bot: bool = False,
) -> Json:
    """A User object (a person unless is_bot)."""
    return {"id": user_id, "is_bot": is_bot, **_without_none(
        first_name=first_name, last_name=last_name, username=username, language_code=language_code)}


def private_chat(
    chat_id: int, *, first_name: str = "Ada", last_name: str | None = "Lovelace", username: str | None = "ada_lovelace"
) -> Json:
    """A Chat object of type private."""
    return {"id": chat_id, **_without_none(first_name=first_name, last_name=last_name, username=username),
            "type": "private"}


def _update(
    chat_id: int,
    message_id: int,
    content: Json,
    *,
    from_user: Json | None,
    chat: Json | None,
    date: int | None,
    update_id: int | None,
    key: str = "message",
    edit_date: int | None = None,
) -> Json:
    """An Update holding one message from a person in a private chat (unless from_user or chat say otherwise)."""
    sender = from_user if from_user is not None else user(chat_id)
    where = chat if chat is not None else private_chat(
        chat_id, first_name=sender.get("first_name", "Ada"), last_name=sender.get("last_name"),
        username=sender.get("username"))
    message: Json = {"message_id": message_id, "from": sender, "chat": where,
                     "date": int(time.time()) if date is None else date}
    if edit_date is not None:
        message["edit_date"] = edit_date
    message.update(content)
    return {"update_id": next(_update_ids) if update_id is None else update_id, key: message}


def _file(kind: str, file_id: str | None, file_size: int | None, **fields: Any) -> Json:
    """A file object of one kind (file_id, file_unique_id, the given fields, file_size)."""
    return {"file_id": file_id or new_file_id(kind), "file_unique_id": new_file_unique_id(), **_without_none(**fields),
            **_without_none(file_size=file_size)}


def text_update(
    chat_id: int,
    text: str,
    *,
    message_id: int,
    from_user: Json | None = None,
    chat: Json | None = None,
    date: int | None = None,
    update_id: int | None = None,
    entities: list[Json] | None = None,
    reply_to_message: Json | None = None,
) -> Json:
    """An Update with a text message."""
    content: Json = {"text": text, **_without_none(entities=entities, reply_to_message=reply_to_message)}
    return _update(chat_id, message_id, content, from_user=from_user, chat=chat, date=date, update_id=update_id)


def edited_update(
    chat_id: int,
    text: str,
    *,
    message_id: int,
    edit_date: int | None = None,
    from_user: Json | None = None,
    chat: Json | None = None,
    date: int | None = None,
    update_id: int | None = None,
) -> Json:
    """An Update with an edited_message (a text message edited at edit_date, a minute after date by default)."""
    sent = int(time.time()) - 60 if date is None else date
    return _update(chat_id, message_id, {"text": text}, from_user=from_user, chat=chat, date=sent,
                   update_id=update_id, key="edited_message", edit_date=sent + 60 if edit_date is None else edit_date)


def photo_update(
    chat_id: int,
    *,
    message_id: int,
    caption: str | None = None,
    sizes: Sequence[tuple[int, int]] = ((90, 68), (320, 240), (800, 600), (1280, 960)),
    file_id: str | None = None,
    file_size: int | None = None,
    from_user: Json | None = None,
    chat: Json | None = None,
    date: int | None = None,
    update_id: int | None = None,
) -> Json:
    """An Update with a photo: PhotoSizes of increasing width, height and file_size (file_id is the largest's)."""
    ordered = sorted(sizes, key=lambda size: size[0] * size[1])
    photo: list[Json] = []
    previous = 0
    for index, (width, height) in enumerate(ordered):
        largest = index == len(ordered) - 1
        size = file_size if largest and file_size is not None else max(previous + 1, width * height // 12)
        previous = size
        photo.append(_file("photo", file_id if largest else None, size, width=width, height=height))
    content: Json = {"photo": photo, **_without_none(caption=caption)}
    return _update(chat_id, message_id, content, from_user=from_user, chat=chat, date=date, update_id=update_id)


def document_update(
    chat_id: int,
    *,
    message_id: int,
    file_name: str = "report.pdf",
    mime_type: str = "application/pdf",
    file_id: str | None = None,
    file_size: int | None = 2048,
    caption: str | None = None,
    from_user: Json | None = None,
    chat: Json | None = None,
    date: int | None = None,
    update_id: int | None = None,
) -> Json:
    """An Update with a document."""
    document = _file("document", file_id, file_size, file_name=file_name, mime_type=mime_type)
    content: Json = {"document": document, **_without_none(caption=caption)}
    return _update(chat_id, message_id, content, from_user=from_user, chat=chat, date=date, update_id=update_id)


def voice_update(
    chat_id: int,
    *,
    message_id: int,
    duration: int = 3,
    mime_type: str = "audio/ogg",
    file_id: str | None = None,
    file_size: int | None = 6144,
    caption: str | None = None,
    from_user: Json | None = None,
    chat: Json | None = None,
    date: int | None = None,
    update_id: int | None = None,
) -> Json:
    """An Update with a voice note."""
    voice = _file("voice", file_id, file_size, duration=duration, mime_type=mime_type)
    content: Json = {"voice": voice, **_without_none(caption=caption)}
    return _update(chat_id, message_id, content, from_user=from_user, chat=chat, date=date, update_id=update_id)


def video_update(
    chat_id: int,
    *,
    message_id: int,
    width: int = 1280,
    height: int = 720,
    duration: int = 5,
    file_name: str | None = "video.mp4",
    mime_type: str = "video/mp4",
    file_id: str | None = None,
    file_size: int | None = 524288,
    caption: str | None = None,
    from_user: Json | None = None,
    chat: Json | None = None,
    date: int | None = None,
    update_id: int | None = None,
) -> Json:
    """An Update with a video."""
    video = _file("video", file_id, file_size, width=width, height=height, duration=duration, file_name=file_name,
                  mime_type=mime_type)
    content: Json = {"video": video, **_without_none(caption=caption)}
    return _update(chat_id, message_id, content, from_user=from_user, chat=chat, date=date, update_id=update_id)


def audio_update(
    chat_id: int,
    *,
    message_id: int,
    duration: int = 180,
    performer: str | None = "Performer",
    title: str | None = "Title",
    file_name: str | None = "song.mp3",
    mime_type: str = "audio/mpeg",
    file_id: str | None = None,
    file_size: int | None = 262144,
    caption: str | None = None,
    from_user: Json | None = None,
    chat: Json | None = None,
    date: int | None = None,
    update_id: int | None = None,
) -> Json:
    """An Update with an audio file (music)."""
    audio = _file("audio", file_id, file_size, duration=duration, performer=performer, title=title,
                  file_name=file_name, mime_type=mime_type)
    content: Json = {"audio": audio, **_without_none(caption=caption)}
    return _update(chat_id, message_id, content, from_user=from_user, chat=chat, date=date, update_id=update_id)


def sticker_update(
    chat_id: int,
    *,
    message_id: int,
    emoji: str = "\N{THUMBS UP SIGN}",
    set_name: str | None = "FakeStickers",
    is_animated: bool = False,
    is_video: bool = False,
    file_id: str | None = None,
    file_size: int | None = 16384,
    from_user: Json | None = None,
    chat: Json | None = None,
    date: int | None = None,
    update_id: int | None = None,
) -> Json:
    """An Update with a sticker (stickers have no caption)."""
    sticker = _file("sticker", file_id, file_size, type="regular", width=512, height=512, is_animated=is_animated,
                    is_video=is_video, emoji=emoji, set_name=set_name)
    return _update(chat_id, message_id, {"sticker": sticker}, from_user=from_user, chat=chat, date=date,
                   update_id=update_id)


def poll_update(
    chat_id: int,
    *,
    message_id: int,
    question: str = "Lunch?",
    options: Sequence[str] = ("Pizza", "Sushi"),
    poll_id: str | None = None,
    from_user: Json | None = None,
    chat: Json | None = None,
    date: int | None = None,
    update_id: int | None = None,
) -> Json:
    """An Update with a message holding a poll the person sent (a kind of message without text or file)."""
    poll: Json = {
        "id": poll_id or str(5_000_000_000_000_000_000 + secrets.randbelow(10**18)),
        "question": question,
        "options": [{"text": option, "voter_count": 0} for option in options],
        "total_voter_count": 0,
        "is_closed": False,
        "is_anonymous": True,
        "type": "regular",
        "allows_multiple_answers": False,
    }
    return _update(chat_id, message_id, {"poll": poll}, from_user=from_user, chat=chat, date=date,
                   update_id=update_id)


def update_type(update: Json) -> str:
    """The kind of an update: its one field besides update_id (message, edited_message, ...)."""
    return next(key for key in update if key != "update_id")


def _message_of(update: Json) -> Json | None:
    """The message an update carries, if it carries one."""
    for key in _MESSAGE_KEYS:
        if isinstance(update.get(key), dict):
            return update[key]  # type: ignore[no-any-return]
    return None


def file_of(update: Json) -> tuple[str, Json]:
    """The kind and the object of an update's file (the largest photo size); ValueError if it has none."""
    message = _message_of(update) or {}
    if message.get("photo"):
        return "photo", message["photo"][-1]
    for kind in ("document", "video", "audio", "voice", "sticker", "animation", "video_note"):
        if isinstance(message.get(kind), dict):
            return kind, message[kind]
    raise ValueError("the update carries no file")


def file_id_of(update: Json) -> str:
    """The file_id of an update's file (the largest photo size)."""
    return str(file_of(update)[1]["file_id"])


@contextmanager
def running_telegram(tokens: Iterable[str] | None = None, **options: Any) -> Iterator[FakeTelegram]:
    """A started fake, closed (every hanging request dropped) on exit."""
    fake = FakeTelegram(tokens, **options).start()
    try:
        yield fake
    finally:
        fake.close()


try:
    import pytest
except ImportError:  # the benchmark runs without pytest
    pytest = None  # type: ignore[assignment]

if pytest is not None:

    @pytest.fixture
    def fake_telegram() -> Iterator[FakeTelegram]:
        """A running fake Telegram Bot API with one bot (`fake_telegram.token`)."""
        with running_telegram() as fake:
            yield fake
