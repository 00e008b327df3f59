"""The `twilio` connector (SPEC B15): SMS, MMS and WhatsApp through Twilio Programmable Messaging.

Inbound: Twilio's form posts, verified with the official `RequestValidator` over the URL the channel
printed at creation (PUBLIC_BASE_URL + path), become inbox messages; their media go through the
media proxy, fetched with the account's Basic auth. Outbound: the Messages API, called through the
guarded HTTP client (the REST client of the `twilio` package would bypass the address policy and our
deadlines), with a StatusCallback whose signed reports land on the reply ledger.
"""

from __future__ import annotations

import logging
import mimetypes
import re
import time
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from http.client import HTTPException
from typing import Any
from urllib.parse import parse_qsl, urljoin, urlsplit

import orjson
import requests
from marshmallow import ValidationError
from twilio.request_validator import RequestValidator
from urllib3.exceptions import HTTPError as Urllib3Error

from app.connectors.addresses import AddressRefused
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
from app.connectors.http import HttpAnswer, HttpFailure, bounded_request
from app.connectors.messages import load_messages
from app.connectors.text import split_text
from app.domain.errors import Invalid, NotFound, ProviderFailed, TooLarge, Unauthenticated
from app.domain.messages import IngestResult
from app.validation import Text

log = logging.getLogger(__name__)

API_VERSION = "2010-04-01"
EMPTY_TWIML = b'<?xml version="1.0" encoding="UTF-8"?><Response/>'
# Twilio refuses a Body over 1600 characters (error 21617). Longer replies are sent in parts; the
# length is counted in UTF-16 units, which is never less than Twilio's count of characters.
MAX_BODY_UNITS = 1600
MAX_PARTS = 10
MAX_FORM_FIELDS = 1000
MAX_MEDIA = 100
MAX_REDIRECTS = 5
MEDIA_CONNECT_SECONDS = 5.0
MEDIA_READ_SECONDS = 30.0
MEDIA_CHUNK_BYTES = 64 * 1024
TRANSIENT_STATUSES = frozenset({408, 429}) | frozenset(range(500, 600))
TOO_MANY_REQUESTS = 20429
AUTHENTICATE = 20003
REDIRECTS = frozenset({301, 302, 303, 307, 308})
GENERIC_TYPES = frozenset({"", "application/octet-stream", "binary/octet-stream"})
# The ledger's delivery_status column holds 32 characters.
STATUS_VALUE = re.compile(r"[a-z_]{1,32}")

# Short texts for the error codes a status callback carries without an ErrorMessage (Twilio's error
# dictionary, https://www.twilio.com/docs/api/errors).
KNOWN_ERRORS = {
    "21610": "the recipient has unsubscribed (replied STOP)",
    "21614": "the To number is not a valid mobile number",
    "30003": "unreachable destination handset",
    "30004": "message blocked by the recipient or the carrier",
    "30005": "unknown destination handset",
    "30006": "landline or unreachable carrier",
    "30007": "message filtered by the carrier",
    "30008": "unknown error from the carrier",
    "30034": "message from an unregistered number (US A2P 10DLC)",
    "63016": "outside the WhatsApp 24-hour window: only a template message can be sent",
}

# Types Twilio delivers that Python's built-in table has no extension for (WhatsApp voice notes,
# stickers, contact cards).
EXTENSIONS = {
    "audio/ogg": ".ogg", "image/webp": ".webp", "text/vcard": ".vcf", "audio/amr": ".amr",
    "video/3gpp": ".3gp", "audio/mp4": ".m4a", "audio/aac": ".aac", "audio/opus": ".opus",
}
# Built-in types only, so that names do not depend on the host's mime.types.
_BUILT_IN_TYPES = mimetypes.MimeTypes(filenames=())


class Pattern(Text):
    """A text that must match a regular expression in full (surrounding blanks are dropped)."""

    def __init__(self, pattern: str, description: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.pattern = re.compile(pattern)
        self.description = description

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        text = super()._deserialize(value, attr, data, **kwargs).strip()
        if not self.pattern.fullmatch(text):
            raise ValidationError(f"Must be {self.description}.")
        return text


class Sender(Pattern):
    """A Twilio sender: an E.164 number, or a WhatsApp sender `whatsapp:+...` (prefix in lower case)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(r"(?i:whatsapp:)?\+[1-9][0-9]{6,14}",
                         "an E.164 number such as +15551234567, or whatsapp:+15551234567", **kwargs)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        text = super()._deserialize(value, attr, data, **kwargs)
        return "whatsapp:" + text[len("whatsapp:"):] if text[:1].lower() == "w" else text


class _Form(dict[str, list[str]]):
    """A webhook's form fields, every value of a repeated name kept (as RequestValidator reads them)."""

    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        super().__init__()
        for name, value in pairs:
            self.setdefault(name, []).append(value)

    def getlist(self, name: str) -> list[str]:
        """Every value of a field (the validator's interface for repeated names)."""
        return self[name]

    def first(self, name: str) -> str:
        """The first value of a field, or ''."""
        values = self.get(name)
        return values[0] if values else ""


class TwilioKind:
    """Twilio Programmable Messaging: SMS, MMS and WhatsApp senders of one account."""

    name = "twilio"
    drops_repeats = False  # the Messages API has no idempotency key (SPEC B4)

    def __init__(self, context: KindContext) -> None:
        self._http = context.http
        self._public_base_url = context.public_base_url
        self._media = context.media
        self._api_base = context.twilio_api_base.rstrip("/")
        self._overlap = timedelta(seconds=context.secret_overlap_seconds)

    def __repr__(self) -> str:
        return f"TwilioKind(api_base={self._api_base!r})"

    def setting_fields(self) -> Mapping[str, Any]:
        """account_sid and auth_token, and `from` or messaging_service_sid (one of them: new_channel checks)."""
        return {
            "account_sid": Pattern(r"AC[0-9a-f]{32}", "an account SID: AC and 32 hexadecimal digits", required=True),
            "auth_token": Pattern(r"[\x21-\x7e]{1,128}", "the account's auth token (1 to 128 visible characters)",
                                  required=True),
            "from": Sender(),
            "messaging_service_sid": Pattern(r"MG[0-9a-f]{32}",
                                             "a Messaging Service SID: MG and 32 hexadecimal digits"),
        }

    def new_channel(self, channel_id: str, settings: Mapping[str, Any]) -> NewChannel:
        """The account and sender as given; the auth token stored as a secret. The credentials are not
        checked with Twilio here: the first reply shows whether they work."""
        if not self._public_base_url:
            raise Invalid("public_base_url_required",
                          "PUBLIC_BASE_URL must be set to create a twilio channel: Twilio posts to it.")
        sender = _one_sender(settings.get("from"), settings.get("messaging_service_sid"))
        stored = {"account_sid": settings["account_sid"], **sender}
        path = f"/inbound/{channel_id}"
        return NewChannel(
            settings=stored,
            secrets={"auth_token": settings["auth_token"]},
            shown={
                "inbound": {
                    "path": path,
                    "webhook_url": f"{self._public_base_url}{path}",
                    "status_callback_url": f"{self._public_base_url}{path}/status",
                },
                "settings": {**stored, "auth_token": settings["auth_token"]},
            },
        )

    def read_inbound(self, channel: ChannelConfig, request: InboundRequest) -> list[dict[str, Any]]:
        """Verify Twilio's signature, then turn the incoming message into one inbox message (none when
        it has neither text nor media)."""
        form = self._verified_form(channel, request, f"/inbound/{channel.id}")
        message = self._message(channel, form)
        return [] if message is None else load_messages(message)

    def inbound_answer(self, result: IngestResult) -> InboundAnswer:
        """An empty TwiML response: nothing is sent back to the customer."""
        return InboundAnswer(200, "text/xml", EMPTY_TWIML)

    def outbound(self, channel: ChannelConfig) -> Connector:
        """The Messages API of the channel's account, from its number or Messaging Service."""
        status_callback = (
            f"{self._public_base_url}/inbound/{channel.id}/status" if self._public_base_url else None
        )
        return TwilioConnector(
            f"{self._api_base}/{API_VERSION}/Accounts/{channel.settings['account_sid']}/Messages.json",
            (channel.settings["account_sid"], channel.secrets["auth_token"]),
            _sender_fields(channel.settings),
            status_callback,
            self._http,
        )

    def rotate_secret(self, channel: ChannelConfig, which: str, overlap_until: datetime | None) -> RotatedSecret:
        """Refused: the auth token is Twilio's, not ours."""
        if which == "inbound":
            raise Invalid(
                "rotation_not_supported",
                "A twilio channel's webhooks are signed with the account's auth token: rotate it in the Twilio "
                f"Console, then give the new one with `channel update {channel.id} --auth-token TOKEN`.",
            )
        raise Invalid(
            "rotation_not_supported",
            "A twilio channel has no outbound secret: replies use the account's auth token "
            f"(`channel update {channel.id} --auth-token TOKEN`).",
        )

    def change_settings(self, channel: ChannelConfig, changes: Mapping[str, Any]) -> SettingsChange:
        """A new auth token (the previous one keeps verifying webhooks for a day), account, or sender:
        giving `from` or messaging_service_sid replaces whichever the channel had."""
        settings = {key: value for key, value in channel.settings.items() if key != "auth_token_previous_until"}
        secrets: dict[str, str | None] = {}
        if "from" in changes or "messaging_service_sid" in changes:
            sender = _one_sender(changes.get("from"), changes.get("messaging_service_sid"))
            settings.pop("from", None)
            settings.pop("messaging_service_sid", None)
            settings.update(sender)
        if "account_sid" in changes:
            settings["account_sid"] = changes["account_sid"]
        if "auth_token" in changes and changes["auth_token"] != channel.secrets["auth_token"]:
            secrets = {"auth_token": changes["auth_token"], "auth_token_previous": channel.secrets["auth_token"]}
            # Webhooks signed with the previous token keep verifying for SECRET_OVERLAP_SECONDS: Twilio
            # signs with its primary token until the new one is promoted.
            settings["auth_token_previous_until"] = (datetime.now(UTC) + self._overlap).isoformat()
        elif _previous_still_valid(channel):
            settings["auth_token_previous_until"] = channel.settings["auth_token_previous_until"]
        else:
            secrets["auth_token_previous"] = None
        return SettingsChange(settings, secrets)

    def read_status(self, channel: ChannelConfig, request: InboundRequest) -> list[DeliveryReport]:
        """A signed status callback on a message we sent: its status and error code."""
        form = self._verified_form(channel, request, f"/inbound/{channel.id}/status")
        sid = form.first("MessageSid")
        status = form.first("MessageStatus") or form.first("SmsStatus")
        if not sid or not status:
            missing = {name: ["Missing."] for name, value in (("MessageSid", sid), ("MessageStatus", status))
                       if not value}
            raise Invalid("validation_error", "The status callback is not valid.", fields=missing)
        if not STATUS_VALUE.fullmatch(status):
            log.warning("Twilio status %r of %s not recorded: not a status the ledger can hold", status[:40], sid,
                        extra={"channel_id": channel.id})
            return []
        code = form.first("ErrorCode").strip() or None
        message = form.first("ErrorMessage").strip() or (KNOWN_ERRORS.get(code) if code else None)
        return [DeliveryReport(external_id=sid, status=status, error_code=code, error_message=message)]

    def status_answer(self) -> InboundAnswer:
        """204: Twilio takes any 2xx."""
        return InboundAnswer(204, "text/plain", b"")

    def fetch_media(self, channel: ChannelConfig, ref: Mapping[str, Any], max_bytes: int) -> MediaStream:
        """GET a MediaUrl with the account's Basic auth, following Twilio's redirect to its CDN (the
        credentials go only to the media URL's own origin), and stream it."""
        url = ref.get("url")
        if not isinstance(url, str) or not self._is_twilio_url(url):
            raise NotFound("unknown_media", "There is no such media file.")
        response = self._open_media(url, (channel.settings["account_sid"], channel.secrets["auth_token"]))
        status = response.status_code
        if status != 200:
            response.close()
            if status == 404:
                raise NotFound("unknown_media", "Twilio no longer has this file (deleted, or past its retention).")
            if status in (401, 403):
                raise ProviderFailed("provider_failed", "Twilio refused the channel's credentials for this file: "
                                     "set the current auth token with `channel update --auth-token`.")
            raise ProviderFailed("provider_failed", f"Twilio failed to serve the file (HTTP {status}).")
        length = _content_length(response.headers.get("Content-Length"))
        if length is not None and length > max_bytes:
            response.close()
            raise TooLarge("media_too_large", f"The file is larger than MEDIA_MAX_BYTES ({max_bytes} bytes).")
        content_type = response.headers.get("Content-Type") or ""
        if content_type.split(";")[0].strip().lower() in GENERIC_TYPES and isinstance(ref.get("type"), str):
            content_type = ref["type"]  # a CDN that forgot the type: Twilio's webhook named it
        return MediaStream(content_type or "application/octet-stream", length, _chunks(response), response.close)

    # --- inbound ---------------------------------------------------------------------------------

    def _verified_form(self, channel: ChannelConfig, request: InboundRequest, path: str) -> _Form:
        """The posted fields, once X-Twilio-Signature proves Twilio signed them for this URL; else 401."""
        signature = request.headers.get("x-twilio-signature", "")
        if not signature:
            raise Unauthenticated("missing_signature", "The request has no X-Twilio-Signature header.")
        if not self._public_base_url:
            raise Unauthenticated("public_base_url_required",
                                  "PUBLIC_BASE_URL is not set, so Twilio's signature cannot be checked.")
        invalid = Unauthenticated("invalid_signature", "The X-Twilio-Signature header is not valid for this request.")
        try:
            # Blank fields are signed too.
            pairs = parse_qsl(request.body.decode("utf-8"), keep_blank_values=True, errors="strict",
                              max_num_fields=MAX_FORM_FIELDS)
        except ValueError:  # not UTF-8, or too many fields: not something Twilio signed
            raise invalid from None
        form = _Form(pairs)
        # Twilio signs the URL it was configured with: the one new_channel printed, plus any query.
        url = self._public_base_url + path + (f"?{request.query_string}" if request.query_string else "")
        tokens = [channel.secrets["auth_token"]]
        if _previous_still_valid(channel):
            tokens.append(channel.secrets["auth_token_previous"])
        if not any(RequestValidator(token).validate(url, form, signature) for token in tokens):
            raise invalid
        return form

    def _message(self, channel: ChannelConfig, form: _Form) -> dict[str, Any] | None:
        """The inbox message of an incoming-message webhook; None when there is nothing to show."""
        sid, sender = form.first("MessageSid"), form.first("From")
        if not sid or not sender:
            missing = {name: ["Missing."] for name, value in (("MessageSid", sid), ("From", sender)) if not value}
            raise Invalid("validation_error", "The webhook is not an incoming message; nothing was stored.",
                          fields=missing)
        text = form.first("Body")
        location = _location(form)
        if location:
            text = f"{text}\n\n{location}" if text.strip() else location
        attachments = self._attachments(channel, form)
        if not text.strip() and not attachments:
            # A message needs text or attachments (SPEC B5); Twilio still gets its 200.
            log.info("Twilio message %s has neither text nor media: not stored", sid, extra={"channel_id": channel.id})
            return None
        number = _phone_number(sender)
        author = {"id": sender, "name": form.first("ProfileName").strip() or number or sender}
        if number:
            author["phone"] = number
        return {
            "id": sid,
            "conversation_id": sender,
            "text": text if text.strip() else None,
            "author": author,
            "attachments": attachments,
            "direction": "in",
        }

    def _attachments(self, channel: ChannelConfig, form: _Form) -> list[dict[str, Any]]:
        """MediaUrl{N} as media proxy links named media-<N>.<extension> (Twilio's media have no names)."""
        try:
            count = min(max(int(form.first("NumMedia") or 0), 0), MAX_MEDIA)
        except ValueError:
            count = 0
        attachments = []
        for index in range(count):
            url = form.first(f"MediaUrl{index}")
            if not url:
                continue
            content_type = form.first(f"MediaContentType{index}").strip() or "application/octet-stream"
            name = f"media-{index}{_extension(content_type)}"
            link = self._media.link(channel.id, {"url": url, "type": content_type, "name": name})
            attachments.append({"url": link, "name": name, "content_type": content_type})
        return attachments

    # --- media -----------------------------------------------------------------------------------

    def _is_twilio_url(self, url: str) -> bool:
        """Whether a media URL is Twilio's (its API host, or any https *.twilio.com): the only places the
        account's credentials may go."""
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        return _origin(url) == _origin(self._api_base) or (
            parts.scheme == "https" and (host == "twilio.com" or host.endswith(".twilio.com"))
        )

    def _open_media(self, url: str, auth: tuple[str, str]) -> requests.Response:
        """The final answer for a media URL, redirects followed by hand: Basic auth only to the URL's
        own origin (Twilio redirects to a CDN with a signed URL of its own)."""
        origin = _origin(url)
        for _ in range(MAX_REDIRECTS + 1):
            response = self._get(url, auth if _origin(url) == origin else None)
            location = response.headers.get("Location")
            if response.status_code not in REDIRECTS or not location:
                return response
            response.close()
            url = urljoin(url, location)
            if urlsplit(url).scheme not in ("http", "https"):
                raise ProviderFailed("provider_failed", "Twilio redirected the file to a URL that is not http(s).")
        raise ProviderFailed("provider_failed", "Twilio redirected the file too many times.")

    def _get(self, url: str, auth: tuple[str, str] | None) -> requests.Response:
        """One streamed GET through the guarded client; failures as ProviderFailed."""
        try:
            return self._http.request("GET", url, auth=auth, stream=True, allow_redirects=False,
                                      timeout=(MEDIA_CONNECT_SECONDS, MEDIA_READ_SECONDS))
        except Exception as exc:  # everything is translated at the adapter edge
            raise _media_failure(exc) from None


def _media_failure(exc: Exception) -> ProviderFailed:
    """A foreign exception while fetching a file, as ours (the message names no URL or credential)."""
    if isinstance(exc, ProviderFailed):
        return exc
    if isinstance(exc, AddressRefused):
        return ProviderFailed("provider_failed", f"The file's address is refused by the outbound policy: {exc}.")
    if isinstance(exc, requests.Timeout):
        return ProviderFailed("provider_failed", "Twilio did not serve the file in time.")
    if isinstance(exc, (requests.RequestException, OSError, HTTPException, Urllib3Error)):
        return ProviderFailed("provider_failed", f"Twilio could not be reached for the file ({type(exc).__name__}).")
    log.error("unexpected error fetching a Twilio media file", exc_info=exc)
    return ProviderFailed("provider_failed", f"Fetching the file failed unexpectedly ({type(exc).__name__}).")


def _chunks(response: requests.Response) -> Iterator[bytes]:
    """The file's bytes; a failure mid-stream is ours too (the proxy's answer is then cut off)."""
    try:
        yield from response.iter_content(chunk_size=MEDIA_CHUNK_BYTES)
    except Exception as exc:  # translated, as everywhere at the adapter edge
        log.warning("a Twilio media file broke off while streaming (%s)", type(exc).__name__)
        raise _media_failure(exc) from None


def _content_length(value: str | None) -> int | None:
    if value is None or not value.strip().isdigit():
        return None
    return int(value.strip())


def _origin(url: str) -> tuple[str, str, int | None]:
    """Scheme, host and port of a URL (the default port made explicit)."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), port or {"http": 80, "https": 443}.get(scheme)


# --- settings ------------------------------------------------------------------------------------


def _one_sender(sender: str | None, service: str | None) -> dict[str, str]:
    """{"from": ...} or {"messaging_service_sid": ...}: exactly one of the two, else 422 naming both."""
    if bool(sender) == bool(service):
        reason = "Give `from` or `messaging_service_sid`, not both." if sender else \
            "Give `from` (the number replies are sent from) or `messaging_service_sid`."
        raise Invalid("validation_error", "The channel is not valid.",
                      fields={"from": [reason], "messaging_service_sid": [reason]})
    return {"from": sender} if sender else {"messaging_service_sid": str(service)}


def _sender_fields(settings: Mapping[str, Any]) -> dict[str, str]:
    """The create call's sender: From, or MessagingServiceSid (Twilio then picks from its pool)."""
    if settings.get("from"):
        return {"From": settings["from"]}
    return {"MessagingServiceSid": settings["messaging_service_sid"]}


def _previous_still_valid(channel: ChannelConfig) -> bool:
    """Whether the auth token replaced by `channel update` still verifies webhooks."""
    until = channel.settings.get("auth_token_previous_until")
    return (
        "auth_token_previous" in channel.secrets
        and isinstance(until, str)
        and datetime.now(UTC) < datetime.fromisoformat(until)
    )


# --- inbound details -----------------------------------------------------------------------------


def _phone_number(address: str) -> str | None:
    """The E.164 number of a Twilio address (`+1555...` or `whatsapp:+1555...`), if it is one."""
    number = address.removeprefix("whatsapp:")
    return number if re.fullmatch(r"\+[0-9]{6,15}", number) else None


def _extension(content_type: str) -> str:
    """The file extension of a content type, `.bin` when none is known."""
    bare = content_type.split(";", 1)[0].strip().lower()
    return EXTENSIONS.get(bare) or _BUILT_IN_TYPES.guess_extension(bare) or ".bin"


def _location(form: _Form) -> str | None:
    """A shared WhatsApp location as text with a map link (it comes without Body or media)."""
    try:
        latitude, longitude = float(form.first("Latitude")), float(form.first("Longitude"))
    except ValueError:
        return None
    if not (-90 <= latitude <= 90 and -180 <= longitude <= 180):
        return None
    place = ", ".join(part for part in (form.first("Label").strip(), form.first("Address").strip()) if part)
    link = f"https://www.google.com/maps/search/?api=1&query={latitude},{longitude}"
    return f"Location: {place}\n{link}" if place else f"Location: {link}"


# --- outbound ------------------------------------------------------------------------------------


class TwilioConnector:
    """Sends a reply with the Messages API; its status callbacks come back to the channel."""

    def __init__(
        self, messages_url: str, auth: tuple[str, str], sender: dict[str, str], status_callback: str | None,
        http: requests.Session,
    ) -> None:
        self._url = messages_url
        self._auth = auth
        self._sender = sender
        self._status_callback = status_callback
        self._http = http

    def __repr__(self) -> str:
        return f"TwilioConnector(url={self._url!r}, sender={self._sender!r})"

    def deliver(self, reply: OutboundReply, timeout: float) -> Delivered:
        """Create the message (in parts when it is over Twilio's 1600 characters); the first part's sid
        is the external id. A part that fails after an earlier one went out ends the delivery without
        an automatic retry, which would send the earlier parts again."""
        deadline = time.monotonic() + timeout
        parts = split_body(reply.text_with_attachment_names())
        if len(parts) > MAX_PARTS:
            raise PermanentDeliveryError(
                f"The reply is too long for text messages: it would take {len(parts)} messages of at most "
                f"{MAX_BODY_UNITS} characters; at most {MAX_PARTS} are sent. Shorten it."
            )
        first: Delivered | None = None
        for number, body in enumerate(parts, start=1):
            try:
                created = self._create(reply.conversation_id, body, max(deadline - time.monotonic(), 0.05))
            except DeliveryError as exc:
                if first is None:
                    raise
                raise PermanentDeliveryError(
                    f"Twilio accepted part{'s' if number > 2 else ''} 1{f'-{number - 1}' if number > 2 else ''} "
                    f"of {len(parts)} (first {first.external_id}) but not part {number}: {exc.message} The rest was "
                    "not sent; sending the reply again would repeat what was delivered.",
                    http_status=exc.http_status, outcome_unknown=True,
                ) from None
            first = first or created
        assert first is not None
        return first

    def _create(self, to: str, body: str, timeout: float) -> Delivered:
        """One Messages API create call."""
        form = {"To": to, **self._sender, "Body": body}
        if self._status_callback:
            form["StatusCallback"] = self._status_callback
        try:
            answer = bounded_request(self._http, "POST", self._url, timeout, peer="Twilio", data=form, auth=self._auth)
        except HttpFailure as exc:
            error = TransientDeliveryError if exc.transient else PermanentDeliveryError
            raise error(exc.message, outcome_unknown=exc.sent) from None
        if 200 <= answer.status < 300:
            resource = _json_object(answer.body)
            sid, status = resource.get("sid"), resource.get("status")
            return Delivered(
                external_id=sid if isinstance(sid, str) and sid else None,
                http_status=answer.status,
                delivery_status=status if isinstance(status, str) and STATUS_VALUE.fullmatch(status) else None,
            )
        raise _refusal(answer)


def _refusal(answer: HttpAnswer) -> DeliveryError:
    """Twilio's error answer, classified (SPEC B15): 20429, 408, 429 and 5xx transient; else permanent."""
    error = _json_object(answer.body)
    code = error.get("code") if isinstance(error.get("code"), int) else None
    text = _printable(error.get("message"))
    said = f": {text}" if text else ""
    if answer.status in TRANSIENT_STATUSES or code == TOO_MANY_REQUESTS:
        name = f"{code}" if code else f"HTTP {answer.status}"
        return TransientDeliveryError(_sentence(f"Twilio could not take the message now ({name}){said}"),
                                      http_status=answer.status, retry_after=answer.retry_after())
    if answer.status == 401 or code == AUTHENTICATE:
        return PermanentDeliveryError(
            "Twilio refused the channel's credentials (20003): set the account's current auth token with "
            "`channel update --auth-token`.", http_status=answer.status)
    name = f"{code}" if code else f"HTTP {answer.status}"
    return PermanentDeliveryError(_sentence(f"Twilio refused the message ({name}){said}"), http_status=answer.status)


def _json_object(raw: bytes) -> dict[str, Any]:
    try:
        parsed = orjson.loads(raw) if raw.strip() else None
    except orjson.JSONDecodeError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def _printable(value: Any) -> str:
    """A short excerpt of a provider's text, safe to show an agent."""
    if not isinstance(value, str):
        return ""
    return "".join(ch if ch.isprintable() else " " for ch in value[:300]).strip()


def _sentence(text: str) -> str:
    return text if text.endswith((".", "!", "?")) else f"{text}."


def split_body(text: str, limit: int = MAX_BODY_UNITS) -> list[str]:
    """A text in parts of at most `limit` UTF-16 units (Twilio's 1600), cut at a paragraph, a line or a
    word when one is in the second half of the part; an empty text is one empty part."""
    return split_text(text, limit) or [text]
