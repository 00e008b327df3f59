"""The `telegram` connector (SPEC B15): a bot's webhook updates in as inbox messages, agent replies
out with sendMessage, the bot's files served to Desk through the media proxy.

The bot token is a credential in every Bot API URL (`/bot<token>/<method>`, `/file/bot<token>/...`),
so no URL is ever put in a log line, an error message or an exception text: failures are told in
our own words (bounded_request's, or the ones below) and Telegram's `description`.
"""

from __future__ import annotations

import hmac
import logging
import mimetypes
import re
import secrets
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import orjson
import requests
from marshmallow import EXCLUDE, Schema, ValidationError, fields, validate

from app.connectors.base import (
    ChannelConfig,
    Connector,
    Delivered,
    DeliveryError,
    DeliveryReport,
    InboundAnswer,
    InboundRequest,
    KindContext,
    MediaStream,
    NewChannel,
    OutboundReply,
    PermanentDeliveryError,
    RotatedSecret,
    SettingsChange,
    TransientDeliveryError,
)
from app.connectors.http import HttpFailure, bounded_request
from app.connectors.text import split_text as shared_split_text
from app.domain.errors import Invalid, NotFound, ProviderFailed, TooLarge, Unauthenticated
from app.domain.messages import IngestResult
from app.validation import Text, parse_json_object, str_keys

log = logging.getLogger(__name__)

SECRET_TOKEN_HEADER = "x-telegram-bot-api-secret-token"
ALLOWED_UPDATES = ("message", "edited_message")
MAX_TEXT_UNITS = 4096  # sendMessage's limit, in UTF-16 code units
ADMIN_TIMEOUT_SECONDS = 10.0  # getMe and setWebhook, when a channel is created, updated or rotated
MAX_ADMIN_WAIT_SECONDS = 5.0  # a flood-control wait worth making for the operator (setWebhook: about 1 s)
MEDIA_TIMEOUT_SECONDS = 15.0  # getFile, and connecting to / each read of a file download
MEDIA_CHUNK_BYTES = 64 * 1024
LATER_PART_TRIES = 3
MIN_SEND_SECONDS = 0.05
PART_RETRY_SECONDS = 0.5
MAX_DESCRIPTION = 200
MAX_NAME = 255
TRANSIENT_STATUSES = frozenset({408, 429}) | frozenset(range(500, 600))
TOKEN_SHAPE = r"\d{1,20}:[A-Za-z0-9_-]{30,200}"
_MIME_TYPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}")
_UPDATE_TYPE = re.compile(r"[a-z_]{1,40}")
_MESSAGE_REF = re.compile(r"(-?\d{1,20}):(\d{1,20})(?::.*)?", re.DOTALL)
# Kinds of message deskbridge does not turn into inbox messages; named in the log when one is skipped
# (a fixed list, so that nothing the sender wrote reaches the log).
_SKIPPED_KINDS = (
    "sticker", "poll", "dice", "game", "location", "venue", "contact", "video_note", "story", "invoice",
    "new_chat_members", "left_chat_member", "new_chat_title", "new_chat_photo", "delete_chat_photo",
    "group_chat_created", "supergroup_chat_created", "pinned_message", "message_auto_delete_timer_changed",
    "migrate_to_chat_id", "migrate_from_chat_id", "forum_topic_created", "forum_topic_closed",
    "forum_topic_reopened", "write_access_allowed", "users_shared", "chat_shared", "successful_payment",
)


class BotToken(Text):
    """A bot token of Telegram's shape, `<bot id>:<secret>`."""

    default_error_messages = {"bot_token": "Must be a bot token from @BotFather, like 123456789:AAH...."}

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        token = super()._deserialize(value, attr, data, **kwargs).strip()
        if not re.fullmatch(TOKEN_SHAPE, token):
            raise self.make_error("bot_token")
        return token


# --- the Bot API -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class BotAnswer:
    """What a Bot API method answered: the HTTP status, and the envelope's result or error."""

    status: int
    result: Any
    description: str
    retry_after: float | None

    @property
    def ok(self) -> bool:
        """Telegram accepted the call (its HTTP status says so; the envelope's `ok` agrees)."""
        return 200 <= self.status < 300

    def reason(self) -> str:
        """The status and Telegram's description, for a person to read."""
        return f"HTTP {self.status}: {self.description}" if self.description else f"HTTP {self.status}"


class BotApi:
    """One bot's Bot API, through the guarded HTTP client."""

    def __init__(self, http: requests.Session, base_url: str, token: str) -> None:
        self._http = http
        self._base_url = base_url.rstrip("/")
        self._token = token

    def __repr__(self) -> str:
        return f"BotApi(base_url={self._base_url!r}, bot_id={self._token.split(':', 1)[0]!r})"

    def call(self, method: str, params: Mapping[str, Any], timeout: float) -> BotAnswer:
        """Call a method with JSON parameters within `timeout` seconds; raises HttpFailure (never naming the URL)."""
        answer = bounded_request(
            self._http, "POST", f"{self._base_url}/bot{self._token}/{method}", timeout, peer="Telegram",
            json=dict(params),
        )
        envelope = _json_object(answer.body)
        parameters = envelope.get("parameters")
        asked = parameters.get("retry_after") if isinstance(parameters, dict) else None
        retry_after = (
            float(asked) if isinstance(asked, (int, float)) and not isinstance(asked, bool) and asked >= 0
            else answer.retry_after()
        )
        return BotAnswer(answer.status, envelope.get("result"), _said(envelope.get("description")), retry_after)

    def open_file(self, file_path: str) -> requests.Response:
        """Start downloading a file getFile named, streamed; raises ProviderFailed (never naming the URL)."""
        url = f"{self._base_url}/file/bot{self._token}/{quote(file_path, safe='/')}"
        try:
            return self._http.get(url, stream=True, allow_redirects=False,
                                  timeout=(MEDIA_TIMEOUT_SECONDS, MEDIA_TIMEOUT_SECONDS))
        except requests.Timeout:
            raise ProviderFailed("telegram_failed", "Telegram did not send the file in time.") from None
        except requests.ConnectionError:
            raise ProviderFailed("telegram_failed", "Telegram could not be reached to download the file.") from None
        except Exception as exc:  # the address policy, urllib3, sockets: their texts may hold the URL
            raise ProviderFailed(
                "telegram_failed", f"The file could not be downloaded from Telegram ({type(exc).__name__})."
            ) from None


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def _said(description: Any) -> str:
    """Telegram's description, short and printable (it is shown to agents and operators)."""
    if not isinstance(description, str):
        return ""
    return "".join(ch if ch.isprintable() else " " for ch in description[:MAX_DESCRIPTION]).strip()


# --- the kind --------------------------------------------------------------------------------------


class TelegramKind:
    """A Telegram bot: its webhook updates in, its messages out."""

    name = "telegram"
    drops_repeats = False  # sendMessage has no idempotency key: a repeat is a second message

    def __init__(self, context: KindContext, *, sleep: Callable[[float], None] = time.sleep) -> None:
        self._http = context.http
        self._api_base = context.telegram_api_base
        self._public_base_url = context.public_base_url
        self._media = context.media
        self._sleep = sleep

    def __repr__(self) -> str:
        return f"TelegramKind(api_base={self._api_base!r})"

    def setting_fields(self) -> Mapping[str, Any]:
        """bot_token, required."""
        return {"bot_token": BotToken(required=True)}

    def new_channel(self, channel_id: str, settings: Mapping[str, Any]) -> NewChannel:
        """Check the token with getMe and point the bot's webhook at the channel, with a fresh secret token."""
        token = settings["bot_token"]
        bot, secret_token = self._register(channel_id, token)
        url = self._webhook_url(channel_id)
        return NewChannel(
            settings=bot,
            secrets={"bot_token": token, "secret_token": secret_token},
            # The secret token is not shown: Telegram holds it, and nobody else needs it.
            shown={
                "inbound": {"path": f"/inbound/{channel_id}", "webhook_url": url},
                "settings": {"bot_username": bot["bot_username"], "bot_token": token},
            },
        )

    def change_settings(self, channel: ChannelConfig, changes: Mapping[str, Any]) -> SettingsChange:
        """A new bot token: checked with getMe and registered with setWebhook (fresh secret token)."""
        if "bot_token" not in changes:
            return SettingsChange(dict(channel.settings), {})
        token = changes["bot_token"]
        # The old bot's webhook is left alone: its token may be revoked already, or serve another channel now.
        bot, secret_token = self._register(channel.id, token)
        return SettingsChange({**channel.settings, **bot}, {"bot_token": token, "secret_token": secret_token})

    def rotate_secret(self, channel: ChannelConfig, which: str, overlap_until: datetime | None) -> RotatedSecret:
        """A new inbound secret token, registered with setWebhook; `outbound` has no meaning here.

        There is no overlap: Telegram sends the new token from the moment setWebhook answers, so the
        old one is refused at once (an update refused in between is sent again by Telegram, with the
        new token). The token itself is not shown: only Telegram needs it, and every place it is
        printed is one more place it can leak.
        """
        if which != "inbound":
            raise Invalid("validation_error", "A telegram channel has no outbound secret: replies are sent with "
                          "the bot token (change it with channel update).",
                          fields={"secret": ["outbound has no meaning for a telegram channel."]})
        secret_token = new_secret_token()
        api = BotApi(self._http, self._api_base, channel.secrets["bot_token"])
        self._set_webhook(api, channel.id, secret_token)
        return RotatedSecret(dict(channel.settings), {"secret_token": secret_token},
                             "registered with Telegram (setWebhook); the secret token is not shown")

    def read_inbound(self, channel: ChannelConfig, request: InboundRequest) -> list[dict[str, Any]]:
        """Check the secret token header, then turn a message or edited_message update into one inbox
        message; anything else is acknowledged and skipped."""
        presented = request.headers.get(SECRET_TOKEN_HEADER, "")
        expected = channel.secrets["secret_token"]
        if not presented or not hmac.compare_digest(presented.encode("utf-8", "replace"), expected.encode()):
            raise Unauthenticated("invalid_secret_token",
                                  "The X-Telegram-Bot-Api-Secret-Token header is missing or wrong.")
        update = parse_json_object(request.body)
        return read_update(update, lambda ref: self._media.link(channel.id, ref))

    def inbound_answer(self, result: IngestResult) -> InboundAnswer:
        """200 {}: Telegram only needs a 2xx."""
        return InboundAnswer(200, "application/json", b"{}")

    def outbound(self, channel: ChannelConfig) -> Connector:
        """sendMessage with the channel's bot."""
        return TelegramConnector(BotApi(self._http, self._api_base, channel.secrets["bot_token"]), sleep=self._sleep)

    def read_status(self, channel: ChannelConfig, request: InboundRequest) -> list[DeliveryReport]:
        """Telegram sends no delivery status callbacks."""
        raise NotFound("no_status_callbacks", "This channel's connector sends no status callbacks.")

    def status_answer(self) -> InboundAnswer:
        """Never reached: read_status refuses."""
        return InboundAnswer(204, "application/json", b"")

    def fetch_media(self, channel: ChannelConfig, ref: Mapping[str, Any], max_bytes: int) -> MediaStream:
        """getFile again (file links expire after an hour), then stream the download."""
        file_id = ref.get("file_id")
        if not isinstance(file_id, str) or not file_id:
            raise NotFound("unknown_media", "There is no such media file.")
        api = BotApi(self._http, self._api_base, channel.secrets["bot_token"])
        try:
            answer = api.call("getFile", {"file_id": file_id}, MEDIA_TIMEOUT_SECONDS)
        except HttpFailure as exc:
            raise ProviderFailed("telegram_failed", f"{exc.message} The file was not fetched.") from None
        if not answer.ok:
            if answer.status == 400 and "too big" in answer.description.lower():
                raise TooLarge("media_too_large", "Telegram does not let bots download files over 20 MB.")
            raise ProviderFailed("telegram_failed", f"Telegram did not give the file ({answer.reason()}).")
        file = answer.result if isinstance(answer.result, dict) else {}
        file_path, file_size = file.get("file_path"), file.get("file_size")
        if not isinstance(file_path, str) or not file_path:
            raise ProviderFailed("telegram_failed", "Telegram did not give a path to download the file from.")
        if isinstance(file_size, int) and file_size > max_bytes:
            raise TooLarge("media_too_large", f"The file is larger than MEDIA_MAX_BYTES ({max_bytes} bytes).")
        response = api.open_file(file_path)
        if response.status_code != 200:
            response.close()
            raise ProviderFailed("telegram_failed", f"Telegram did not serve the file (HTTP {response.status_code}).")
        return MediaStream(
            content_type=_content_type(ref.get("type"), response.headers.get("Content-Type")),
            length=_length(response.headers.get("Content-Length")),
            chunks=_file_chunks(response),
            close=response.close,
        )

    def _webhook_url(self, channel_id: str) -> str:
        if not self._public_base_url:
            raise Invalid("public_base_url_required",
                          "PUBLIC_BASE_URL must be set for a telegram channel: Telegram sends its updates there.")
        return f"{self._public_base_url}/inbound/{channel_id}"

    def _register(self, channel_id: str, token: str) -> tuple[dict[str, Any], str]:
        """getMe, then setWebhook with a fresh secret token; the bot's settings and the secret token."""
        self._webhook_url(channel_id)  # before Telegram is called at all
        api = BotApi(self._http, self._api_base, token)
        me = self._admin_call(api, "getMe", {})
        if not isinstance(me, dict) or not isinstance(me.get("id"), int):
            raise Invalid("telegram_failed", "Telegram's answer to getMe has no bot id; nothing was stored.")
        secret_token = new_secret_token()
        self._set_webhook(api, channel_id, secret_token)
        username = me.get("username") if isinstance(me.get("username"), str) else None
        return {"bot_id": me["id"], "bot_username": username}, secret_token

    def _set_webhook(self, api: BotApi, channel_id: str, secret_token: str) -> None:
        url = self._webhook_url(channel_id)
        params = {"url": url, "secret_token": secret_token, "allowed_updates": list(ALLOWED_UPDATES)}
        self._admin_call(api, "setWebhook", params, webhook_url=url)

    def _admin_call(self, api: BotApi, method: str, params: Mapping[str, Any], *, webhook_url: str | None = None
                    ) -> Any:
        """A method called for the operator; its result, or Invalid saying why nothing was stored."""
        for attempt in (1, 2):
            try:
                answer = api.call(method, params, ADMIN_TIMEOUT_SECONDS)
            except HttpFailure as exc:
                # A setWebhook whose answer was lost may have taken effect: doing it again settles it.
                maybe = " Telegram may have taken it: try again." if exc.sent and webhook_url is not None else ""
                raise Invalid("telegram_unreachable",
                              f"{exc.message} {method} failed, so nothing was stored.{maybe}") from None
            if answer.ok:
                return answer.result
            wait = answer.retry_after if answer.retry_after is not None else 1.0
            if answer.status == 429 and attempt == 1 and wait <= MAX_ADMIN_WAIT_SECONDS:
                self._sleep(wait)  # setWebhook is limited to about once a second per bot
                continue
            break
        if answer.status in (401, 404):
            # An unknown or revoked token: Telegram answers 401 Unauthorized (404 for a malformed one).
            refusal = f"Telegram refused this bot token: {answer.description or answer.reason()}."
            raise Invalid("bot_token_refused", f"{refusal} Nothing was stored.", fields={"bot_token": [refusal]})
        if webhook_url is not None and answer.status == 400:
            raise Invalid("webhook_refused",
                          f"Telegram refused the webhook URL {webhook_url} ({answer.reason()}); check PUBLIC_BASE_URL "
                          "(Telegram needs HTTPS on port 443, 80, 88 or 8443). Nothing was stored.")
        raise Invalid("telegram_failed", f"Telegram failed {method} ({answer.reason()}); nothing was stored.")


def new_secret_token() -> str:
    """A webhook secret token: 43 characters of [A-Za-z0-9_-] (Telegram allows 1 to 256 of them)."""
    return secrets.token_urlsafe(32)


def _content_type(from_ref: Any, from_response: str | None) -> str:
    """The file's type as the message gave it, else as the download was served."""
    for candidate in (from_ref, (from_response or "").split(";")[0].strip()):
        if isinstance(candidate, str) and _MIME_TYPE.fullmatch(candidate):
            return candidate.lower()
    return "application/octet-stream"


def _length(header: str | None) -> int | None:
    if header is None or not header.strip().isdigit():
        return None
    return int(header)


def _file_chunks(response: requests.Response) -> Iterator[bytes]:
    """The download's bytes; a failure midway is told without the exception's text (it may hold the URL)."""
    try:
        yield from response.iter_content(chunk_size=MEDIA_CHUNK_BYTES)
    except Exception as exc:
        log.warning("a file download from Telegram broke off (%s)", type(exc).__name__)
        raise ProviderFailed("telegram_failed", "Telegram stopped sending the file.") from None


# --- inbound: updates into inbox messages ----------------------------------------------------------


class _TelegramText(fields.String):
    """Text as Telegram sent it, without NUL characters (the databases cannot store them)."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        return super()._deserialize(value, attr, data, **kwargs).replace("\x00", "")


class _Payload(Schema):
    """Telegram's objects: unknown fields are ignored (the Bot API adds fields often)."""

    class Meta:
        unknown = EXCLUDE


_UNIX_TIME = validate.Range(min=0, max=1 << 35)


class _User(_Payload):
    id = fields.Integer(strict=True, required=True)
    first_name = _TelegramText(load_default="")
    last_name = _TelegramText(load_default=None)
    username = _TelegramText(load_default=None)


class _Chat(_Payload):
    id = fields.Integer(strict=True, required=True)
    title = _TelegramText(load_default=None)


class _File(_Payload):
    file_id = _TelegramText(required=True, validate=validate.Length(min=1, max=1024))
    file_unique_id = _TelegramText(load_default=None, validate=validate.Length(max=255))
    file_size = fields.Integer(strict=True, load_default=None, validate=validate.Range(min=0))
    file_name = _TelegramText(load_default=None)
    mime_type = _TelegramText(load_default=None)
    width = fields.Integer(strict=True, load_default=0)
    height = fields.Integer(strict=True, load_default=0)


class _Message(_Payload):
    message_id = fields.Integer(strict=True, required=True)
    sender = fields.Nested(_User, data_key="from", load_default=None)
    sender_chat = fields.Nested(_Chat, load_default=None)
    chat = fields.Nested(_Chat, required=True)
    date = fields.Integer(strict=True, required=True, validate=_UNIX_TIME)
    edit_date = fields.Integer(strict=True, load_default=None, validate=_UNIX_TIME)
    text = _TelegramText(load_default=None)
    caption = _TelegramText(load_default=None)
    photo = fields.List(fields.Nested(_File), load_default=None)
    document = fields.Nested(_File, load_default=None)
    voice = fields.Nested(_File, load_default=None)
    video = fields.Nested(_File, load_default=None)
    audio = fields.Nested(_File, load_default=None)


_MESSAGE = _Message()
# Each kind of file: the default content type and extension of its name when Telegram gives none.
_FILE_KINDS = {
    "document": ("application/octet-stream", ""),
    "voice": ("audio/ogg", ".ogg"),
    "video": ("video/mp4", ".mp4"),
    "audio": ("audio/mpeg", ".mp3"),
}


def read_update(update: dict[str, Any], link: Callable[[dict[str, Any]], str]) -> list[dict[str, Any]]:
    """The inbox messages of one Update (one, or none for what deskbridge does not handle); `link`
    makes a media proxy link for a file reference."""
    update_type = next((key for key in update if key != "update_id"), "none")
    if update_type not in ALLOWED_UPDATES:
        log.info("telegram update skipped: %s", update_type if _UPDATE_TYPE.fullmatch(update_type) else "unknown")
        return []
    raw = update[update_type]
    try:
        message = _MESSAGE.load(raw if isinstance(raw, dict) else {})
    except ValidationError as exc:
        raise Invalid("validation_error", "The Telegram update is not valid; nothing was stored.",
                      fields=str_keys({update_type: exc.messages})) from None
    chat_id = message["chat"]["id"]
    prefix = f"{chat_id}:{message['message_id']}"
    attachments = _attachments(message, prefix, link)
    text = message["text"] if message["text"] is not None else message["caption"]
    if not (text and text.strip()) and not attachments:
        kind = next((name for name in _SKIPPED_KINDS if name in raw), "nothing deskbridge handles")
        log.info("telegram update skipped: %s with %s", update_type, kind)
        return []
    edited = update_type == "edited_message"
    edit_date = message["edit_date"] if message["edit_date"] is not None else message["date"]
    inbox_message: dict[str, Any] = {
        "id": f"{prefix}:edit:{edit_date}" if edited else prefix,
        "conversation_id": str(chat_id),
        "created_at": datetime.fromtimestamp(edit_date if edited else message["date"], UTC),
        "direction": "in",
        "can_reply": True,
        "attachments": attachments,
    }
    if text and text.strip():
        inbox_message["text"] = text
    author = _author(message)
    if author is not None:
        inbox_message["author"] = author
    return [inbox_message]


def _author(message: dict[str, Any]) -> dict[str, str] | None:
    """The sender: a person (name = first + last, displayName = @username), else the chat it spoke as."""
    sender = message["sender"]
    if sender is not None:
        name = " ".join(part for part in (sender["first_name"], sender["last_name"]) if part).strip()
        name = name or sender["username"] or str(sender["id"])
        display = f"@{sender['username']}" if sender["username"] else name
        return {"id": str(sender["id"]), "name": name[:MAX_NAME], "display_name": display[:MAX_NAME]}
    if message["sender_chat"] is not None:
        chat = message["sender_chat"]
        name = (chat["title"] or str(chat["id"]))[:MAX_NAME]
        return {"id": str(chat["id"]), "name": name, "display_name": name}
    return None


def _attachments(message: dict[str, Any], prefix: str, link: Callable[[dict[str, Any]], str]) -> list[dict[str, Any]]:
    """The message's files as media proxy links: the largest photo size, document, voice, video, audio."""
    found: list[tuple[dict[str, Any], str, str]] = []  # the file, its name, its content type
    if message["photo"]:
        photo = max(message["photo"], key=lambda size: (size["width"] * size["height"], size["file_size"] or 0))
        found.append((photo, f"photo-{photo['file_unique_id'] or prefix}.jpg", "image/jpeg"))
    for kind, (default_type, default_extension) in _FILE_KINDS.items():
        file = message[kind]
        if file is None:
            continue
        content_type = file["mime_type"] if _MIME_TYPE.fullmatch(file["mime_type"] or "") else default_type
        name = (file["file_name"] or "").strip()
        if not name:
            extension = mimetypes.guess_extension(content_type) if kind == "document" else default_extension
            name = f"{kind}-{file['file_unique_id'] or prefix}{extension or ''}"
        found.append((file, name[:MAX_NAME], content_type))
    attachments: list[dict[str, Any]] = []
    for file, name, content_type in found:
        attachment: dict[str, Any] = {
            "url": link({"file_id": file["file_id"], "name": name, "type": content_type}),
            "name": name,
            "content_type": content_type,
        }
        if file["file_size"] is not None:
            attachment["size"] = file["file_size"]
        attachments.append(attachment)
    return attachments


# --- outbound: replies as sendMessage --------------------------------------------------------------


class TelegramConnector:
    """Sends a reply to its chat as plain text, in parts of at most 4096 UTF-16 code units."""

    def __init__(self, api: BotApi, *, sleep: Callable[[float], None] = time.sleep) -> None:
        self._api = api
        self._sleep = sleep

    def __repr__(self) -> str:
        return f"TelegramConnector({self._api!r})"

    def deliver(self, reply: OutboundReply, timeout: float) -> Delivered:
        """sendMessage every part in order within `timeout` seconds; the first part's id is the reply's."""
        deadline = time.monotonic() + timeout
        text = reply.text_with_attachment_names()
        if not text.strip():
            raise PermanentDeliveryError("The reply has no text to send to Telegram.")
        parts = split_text(text)
        first = self._send(reply.conversation_id, parts[0], _replied_message(reply), deadline)
        for number, part in enumerate(parts[1:], start=2):
            try:
                self._send_later_part(reply.conversation_id, part, deadline)
            except DeliveryError as exc:
                # The first part is out, with the id Desk will know the reply by. Failing the delivery
                # now would have the whole reply sent again (by Desk, an operator or the sweeper), so that
                # the customer gets the first parts twice; instead the reply counts as sent and the
                # loss of the rest is logged for the operator.
                log.warning(
                    "reply %s: part %d of %d was not sent to Telegram, nor the parts after it (%s); the first "
                    "part was, so the reply counts as sent", reply.reply_id, number, len(parts), exc.message,
                    extra={"channel_id": reply.channel_id, "reply_id": reply.reply_id},
                )
                break
        return first

    def _send_later_part(self, chat_id: str, text: str, deadline: float) -> None:
        """A part after the first: retried within the deadline when Telegram surely did not send it."""
        for attempt in range(1, LATER_PART_TRIES + 1):
            try:
                self._send(chat_id, text, None, deadline)
                return
            except TransientDeliveryError as exc:
                wait = max(exc.retry_after or 0.0, PART_RETRY_SECONDS)
                too_late = time.monotonic() + wait + MIN_SEND_SECONDS > deadline
                if exc.outcome_unknown or attempt == LATER_PART_TRIES or too_late:
                    raise
                self._sleep(wait)

    def _send(self, chat_id: str, text: str, reply_to: int | None, deadline: float) -> Delivered:
        params: dict[str, Any] = {"chat_id": chat_id, "text": text}
        if reply_to is not None:
            # Sent even when the customer has deleted the message meanwhile.
            params["reply_parameters"] = {"message_id": reply_to, "allow_sending_without_reply": True}
        remaining = deadline - time.monotonic()
        if remaining < MIN_SEND_SECONDS:
            raise TransientDeliveryError("No time was left to send the message to Telegram.")
        try:
            answer = self._api.call("sendMessage", params, remaining)
        except HttpFailure as exc:
            error = TransientDeliveryError if exc.transient else PermanentDeliveryError
            raise error(exc.message, outcome_unknown=exc.sent) from None
        if answer.ok:
            return Delivered(external_id=_message_ref(answer.result), http_status=answer.status)
        raise _delivery_error(answer)


def _delivery_error(answer: BotAnswer) -> DeliveryError:
    if answer.status == 429:
        return TransientDeliveryError(f"Telegram asked to slow down ({answer.reason()}).",
                                      http_status=429, retry_after=answer.retry_after)
    if answer.status in TRANSIENT_STATUSES:
        return TransientDeliveryError(f"Telegram failed ({answer.reason()}).", http_status=answer.status,
                                      retry_after=answer.retry_after)
    if answer.status == 401:
        return PermanentDeliveryError(
            f"Telegram refused the channel's bot token ({answer.reason()}); update the channel with a valid token.",
            http_status=401)
    # 400 (chat not found, text refused), 403 (bot blocked by the user, kicked from the group), ...
    return PermanentDeliveryError(f"Telegram refused the reply ({answer.reason()}).", http_status=answer.status)


def _message_ref(result: Any) -> str | None:
    """"<chat.id>:<message_id>" of a sent Message, as inbound messages are named."""
    if not isinstance(result, dict) or not isinstance(result.get("chat"), dict):
        return None
    chat_id, message_id = result["chat"].get("id"), result.get("message_id")
    if isinstance(chat_id, int) and isinstance(message_id, int):
        return f"{chat_id}:{message_id}"
    return None


def _replied_message(reply: OutboundReply) -> int | None:
    """The message_id the reply answers, when in_reply_to names a message of the reply's own chat."""
    match = _MESSAGE_REF.fullmatch(reply.in_reply_to or "")
    if match is None or match.group(1) != reply.conversation_id:
        return None
    return int(match.group(2))


def split_text(text: str, limit: int = MAX_TEXT_UNITS) -> list[str]:
    """A reply's text in parts Telegram takes (4096 UTF-16 code units each)."""
    return shared_split_text(text, limit)
