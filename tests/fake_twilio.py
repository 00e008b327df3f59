"""A local fake of Twilio Programmable Messaging (SMS, MMS, WhatsApp): a REST API server and a webhook sender.

The server is a real HTTP server on 127.0.0.1 (`FakeTwilio().start()`, base URL `base_url`); code under
test reaches it by using `base_url` where it would use `https://api.twilio.com`, building URLs the same way.

**REST API** (Messages resource, https://www.twilio.com/docs/messaging/api/message-resource, and its Media
subresource, https://www.twilio.com/docs/messaging/api/media-resource). Every call needs HTTP Basic auth,
`AccountSid:AuthToken` (or `ApiKeySid:ApiKeySecret` of the same account); a missing or wrong one, or an
account other than the one in the URL, is HTTP 401 code 20003 "Authenticate" (with `WWW-Authenticate`).

- `POST /2010-04-01/Accounts/{AC}/Messages.json` (form-encoded `To`, `From` or `MessagingServiceSid`,
  `Body`, repeatable `MediaUrl`, `StatusCallback`, `ContentSid`/`ContentVariables`) creates a message:
  HTTP 201 with the Message resource (status `queued`; `accepted` with `from` null and `num_segments` "0"
  when sent through a Messaging Service without `From`, as documented). It is refused with HTTP 400 and
  Twilio's error object `{"code", "message", "more_info", "status"}`, checked in this order: 21604 no
  To; 21603 neither From nor MessagingServiceSid; 21602 no Body, MediaUrl or ContentSid; 21617 Body over
  1600 characters; 21211 To not E.164 (`+`, 8-15 digits, optionally `whatsapp:`); 21620 a MediaUrl that
  is not http(s); 21701 an unknown Messaging Service; 21910 From and To of different channels (SMS vs
  WhatsApp); 21606 an SMS From the account does not own (63007 for a `whatsapp:` one, as Twilio answers
  for an unknown WhatsApp sender); 21610 a To registered with `opt_out()`.
- `GET /2010-04-01/Accounts/{AC}/Messages/{SM|MM}.json` is the message (its status follows `set_status()`).
- `GET /2010-04-01/Accounts/{AC}/Messages/{MM}/Media/{ME}` serves the bytes of a file registered with
  `add_media()` (Basic auth required, as when "HTTP Basic Authentication for media access" is enabled);
  with `.json` it is the Media resource. Anything unknown is HTTP 404 code 20404 "The requested resource
  <path> was not found".

Error codes and texts are those of Twilio's error dictionary (https://www.twilio.com/docs/api/errors, one
page per code at https://www.twilio.com/docs/errors/<code>, which is each error's `more_info`).

**Faults**, for the next `times` API calls (any, or only `on=CREATE|FETCH|MEDIA`) or until `heal()`
(`times=None`): `fail(HTTP_429)` (code 20429 "Too Many Requests"; `Retry-After` only if asked for, Twilio
does not document one), `fail(HTTP_500)` / `fail(HTTP_503)` (code 20500 "Internal Server Error"),
`fail(HANG)` (held until `release()`, then served normally, or `close()`, then dropped), `fail(DROP)` (the
connection is closed without an answer) and `fail_with(status, code, message)` (any Twilio error).

**Webhooks**, as Twilio sends them (https://www.twilio.com/docs/usage/webhooks/webhooks-security):
`signature()` is the documented `X-Twilio-Signature` (base64 HMAC-SHA1 keyed with the Auth Token over the
full URL followed by every parameter name and value, sorted by name, the values of a repeated name sorted
too; twilio-python's validator counts identical repeated values once), computed here without any Twilio
or application code. `inbound_sms_params()` builds an incoming message request
(https://www.twilio.com/docs/messaging/guides/webhook-request), `status_callback_params()` a status callback
(https://www.twilio.com/docs/messaging/guides/track-outbound-message-status), and
`post_signed()` posts either, signed over the public URL Twilio would have been configured with, to the
local address of the service under test. `FakeTwilio.send_inbound()` and `send_status_callbacks()` do it
with an account's own token.

Only the standard library is used; the `fake_twilio` fixture is defined only when pytest is importable.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import http.client
import json
import math
import re
import secrets
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

API_VERSION = "2010-04-01"
SIGNATURE_HEADER = "X-Twilio-Signature"
MAX_BODY_CHARS = 1600

# Faults (the first argument of `fail`).
HTTP_429 = "http_429"  # HTTP 429, code 20429 "Too Many Requests"
HTTP_500 = "http_500"  # HTTP 500, code 20500 "Internal Server Error"
HTTP_503 = "http_503"  # HTTP 503, code 20500 "Internal Server Error"
HANG = "hang"  # hold the call until release() (then serve it) or close() (then drop it)
DROP = "drop"  # close the connection without an answer, having done nothing
FAULTS = frozenset({HTTP_429, HTTP_500, HTTP_503, HANG, DROP})
_ERROR_FAULTS = {HTTP_429: (429, 20429, "Too Many Requests"), HTTP_500: (500, 20500, "Internal Server Error"),
                 HTTP_503: (503, 20500, "Internal Server Error")}

# The kinds of API call (a fault's `on`, an ApiRequest's `kind`).
CREATE = "create"  # POST .../Messages.json
FETCH = "fetch"  # GET .../Messages/{sid}.json
MEDIA = "media"  # GET .../Messages/{sid}/Media/{sid}[.json]
KINDS = frozenset({CREATE, FETCH, MEDIA})

OUTSIDE_WINDOW = 63016
OUTSIDE_WINDOW_MESSAGE = (
    "Failed to send freeform message because you are outside the allowed window. "
    "If you are using WhatsApp, please use a Message Template."
)
_CALLBACK_ERROR_MESSAGES = {OUTSIDE_WINDOW: OUTSIDE_WINDOW_MESSAGE}

_E164 = re.compile(r"\+[1-9][0-9]{7,14}")
_ADDRESS = re.compile(r"(?:whatsapp:)?\+[1-9][0-9]{7,14}")
_ACCOUNT = r"(?P<account>[^/]+)"
_CREATE_PATH = re.compile(rf"/{API_VERSION}/Accounts/{_ACCOUNT}/Messages\.json")
_FETCH_PATH = re.compile(rf"/{API_VERSION}/Accounts/{_ACCOUNT}/Messages/(?P<sid>[^/]+)\.json")
_MEDIA_PATH = re.compile(
    rf"/{API_VERSION}/Accounts/{_ACCOUNT}/Messages/(?P<message>[^/]+)/Media/(?P<sid>[^/.]+)(?P<json>\.json)?"
)
_ANY_ACCOUNT_PATH = re.compile(rf"/{API_VERSION}/Accounts/{_ACCOUNT}(?:/.*|\.json)?")
_MEDIA_URL_SID = re.compile(r"/Messages/(?P<sid>(?:MM|SM)[0-9a-f]{32})/Media/")

# GSM 03.38: the basic set (one septet each) and the extension table (two septets each).
_GSM_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿"
    "abcdefghijklmnopqrstuvwxyzäöñüà"
)
_GSM_EXTENSION = frozenset("^{}\\[~]|€\f")
_COUNTRIES = {"1": "US", "44": "GB", "49": "DE", "33": "FR", "34": "ES", "39": "IT", "31": "NL", "61": "AU",
              "91": "IN", "55": "BR", "52": "MX", "81": "JP", "27": "ZA", "353": "IE", "41": "CH", "43": "AT"}

Params = Mapping[str, str | Iterable[str]] | Iterable[tuple[str, str]]


def new_sid(prefix: str) -> str:
    """A Twilio SID: a two-letter prefix and 32 lowercase hex digits."""
    return prefix + secrets.token_hex(16)


def error_body(status: int, code: int, message: str) -> dict[str, Any]:
    """Twilio's REST error object."""
    return {"code": code, "message": message, "more_info": f"https://www.twilio.com/docs/errors/{code}",
            "status": status}


def rfc2822(moment: datetime) -> str:
    """A timestamp as Twilio writes it, e.g. 'Thu, 24 Aug 2023 05:01:45 +0000'."""
    return format_datetime(moment.astimezone(UTC))


def segment_count(body: str) -> int:
    """How many SMS segments a body takes: GSM-7 (160, or 153 each) or else UCS-2 (70, or 67 each)."""
    if not body:
        return 1
    if all(char in _GSM_BASIC or char in _GSM_EXTENSION for char in body):
        septets = sum(2 if char in _GSM_EXTENSION else 1 for char in body)
        return 1 if septets <= 160 else math.ceil(septets / 153)
    units = len(body.encode("utf-16-le")) // 2
    return 1 if units <= 70 else math.ceil(units / 67)


def channel(address: str) -> str:
    """The channel of an address: the prefix before ':' (e.g. 'whatsapp'), or 'sms'."""
    prefix, colon, _ = address.partition(":")
    return prefix.lower() if colon else "sms"


def _pairs(params: Params) -> list[tuple[str, str]]:
    """Form parameters as (name, value) pairs; a mapping's iterable values repeat their name."""
    if isinstance(params, Mapping):
        pairs: list[tuple[str, str]] = []
        for name, value in params.items():
            if isinstance(value, str):
                pairs.append((name, value))
            else:
                pairs.extend((name, item) for item in value)
        return pairs
    return [(name, value) for name, value in params]


def signature(auth_token: str, url: str, params: Params) -> str:
    """The X-Twilio-Signature of a form POST to `url`, by Twilio's documented algorithm."""
    grouped: dict[str, list[str]] = {}
    for name, value in _pairs(params):
        grouped.setdefault(name, []).append(value)
    signed = url + "".join(name + value for name in sorted(grouped) for value in sorted(grouped[name]))
    digest = hmac.new(auth_token.encode(), signed.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def _country(number: str) -> str:
    """The ISO country of an E.164 number, for the few calling codes known here ('' otherwise)."""
    digits = number.removeprefix("whatsapp:").removeprefix("+")
    for length in (3, 2, 1):
        if digits[:length] in _COUNTRIES:
            return _COUNTRIES[digits[:length]]
    return ""


def inbound_sms_params(
    account_sid: str,
    from_: str,
    to: str,
    body: str,
    *,
    media: Iterable[tuple[str, str]] = (),
    profile_name: str | None = None,
    whatsapp: bool = False,
    message_sid: str | None = None,
    messaging_service_sid: str | None = None,
) -> dict[str, str]:
    """The form fields of Twilio's incoming-message webhook (SMS/MMS, or WhatsApp with `whatsapp`)."""
    media = list(media)
    if message_sid is None:
        found = next((match for url, _ in media if (match := _MEDIA_URL_SID.search(url))), None)
        message_sid = found["sid"] if found else new_sid("MM" if media else "SM")
    if whatsapp:
        from_ = from_ if from_.startswith("whatsapp:") else f"whatsapp:{from_}"
        to = to if to.startswith("whatsapp:") else f"whatsapp:{to}"
    params = {
        "MessageSid": message_sid,
        "SmsSid": message_sid,
        "SmsMessageSid": message_sid,
        "AccountSid": account_sid,
        "From": from_,
        "To": to,
        "Body": body,
        "NumMedia": str(len(media)),
        "NumSegments": "1" if whatsapp or media else str(segment_count(body)),
        "SmsStatus": "received",
        "ApiVersion": API_VERSION,
    }
    if messaging_service_sid:
        params["MessagingServiceSid"] = messaging_service_sid
    for index, (url, content_type) in enumerate(media):
        params[f"MediaContentType{index}"] = content_type
        params[f"MediaUrl{index}"] = url
    if whatsapp:
        params["ProfileName"] = profile_name or ""
        params["WaId"] = from_.removeprefix("whatsapp:").removeprefix("+")
        kind = media[0][1].split("/")[0] if media else "text"
        params["MessageType"] = kind if kind in ("text", "image", "video", "audio") else "document"
        params["ReferralNumMedia"] = "0"
    else:
        if profile_name is not None:
            params["ProfileName"] = profile_name
        for side, number in (("From", from_), ("To", to)):
            params.update({f"{side}City": "", f"{side}State": "", f"{side}Zip": "", f"{side}Country": _country(number)})
    return params


def status_callback_params(
    message: Message | Mapping[str, Any], status: str, error_code: int | None = None, error_message: str | None = None
) -> dict[str, str]:
    """The form fields of a status callback for an outbound message (a Message, or its resource JSON)."""
    if isinstance(message, Message):
        sid, account_sid, to = message.sid, message.account_sid, message.to
        from_, service = message.from_ or message.sender, message.messaging_service_sid
    else:
        sid, account_sid, to = message["sid"], message["account_sid"], message["to"]
        from_, service = message.get("from"), message.get("messaging_service_sid")
    params = {"MessageSid": sid, "MessageStatus": status, "SmsSid": sid, "SmsStatus": status,
              "AccountSid": account_sid, "To": to, "ApiVersion": API_VERSION}
    if from_:
        params["From"] = from_
    if service:
        params["MessagingServiceSid"] = service
    if channel(to) == "whatsapp":
        params["ChannelPrefix"] = "whatsapp"
        params["ChannelToAddress"] = to.removeprefix("whatsapp:")
    if error_code is not None:
        params["ErrorCode"] = str(error_code)
        text = error_message or _CALLBACK_ERROR_MESSAGES.get(error_code)
        if text:
            params["ErrorMessage"] = text
    return params


def post_signed(
    target_url: str,
    signed_url: str,
    auth_token: str,
    params: Params,
    *,
    headers: Mapping[str, str] | None = None,
    timeout: float = 10.0,
) -> tuple[int, dict[str, str], bytes]:
    """POST a form to `target_url` as Twilio does, signed over `signed_url`; status, headers (lower-case), body."""
    pairs = _pairs(params)
    raw = urlencode(pairs).encode()
    sent = {
        "Content-Type": "application/x-www-form-urlencoded",
        "User-Agent": "TwilioProxy/1.1",
        "Accept": "*/*",
        "I-Twilio-Idempotency-Token": str(uuid.uuid4()),
        "X-Home-Region": "us1",
        SIGNATURE_HEADER: signature(auth_token, signed_url, pairs),
        **(headers or {}),
    }
    parts = urlsplit(target_url)
    connection_class = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    conn = connection_class(parts.hostname or "127.0.0.1", parts.port, timeout=timeout)
    try:
        conn.request("POST", (parts.path or "/") + (f"?{parts.query}" if parts.query else ""), body=raw, headers=sent)
        answer = conn.getresponse()
        return answer.status, {name.lower(): value for name, value in answer.getheaders()}, answer.read()
    finally:
        conn.close()


@dataclass
class Account:
    """A Twilio account: its credentials, the senders it owns and its Messaging Services."""

    sid: str
    auth_token: str
    numbers: set[str] = field(default_factory=set)  # "+1555...", "whatsapp:+1555..."
    services: dict[str, list[str]] = field(default_factory=dict)  # MG sid → its senders


@dataclass
class Message:
    """A message as the fake holds it: every field of the create call, and its current state."""

    sid: str
    account_sid: str
    to: str
    from_: str | None
    body: str
    status: str
    direction: str = "outbound-api"
    media_urls: list[str] = field(default_factory=list)
    status_callback: str | None = None
    messaging_service_sid: str | None = None
    content_sid: str | None = None
    content_variables: str | None = None
    num_segments: int = 1
    error_code: int | None = None
    error_message: str | None = None
    sender: str | None = None  # the From a Messaging Service chose (from_ stays None while "accepted")
    form: list[tuple[str, str]] = field(default_factory=list)  # the request's fields, in order
    date_created: datetime = field(default_factory=lambda: datetime.now(UTC))
    date_updated: datetime | None = None  # None: as date_created
    date_sent: datetime | None = None

    @property
    def uri(self) -> str:
        """The resource's URI, relative to the API host."""
        return f"/{API_VERSION}/Accounts/{self.account_sid}/Messages/{self.sid}.json"

    def param(self, name: str) -> str | None:
        """The first value of a field of the create request."""
        return next((value for key, value in self.form if key == name), None)

    def resource(self) -> dict[str, Any]:
        """The Message resource JSON, as the API answers it."""
        base = self.uri.removesuffix(".json")
        return {
            "account_sid": self.account_sid,
            "api_version": API_VERSION,
            "body": self.body,
            "date_created": rfc2822(self.date_created),
            "date_sent": rfc2822(self.date_sent) if self.date_sent else None,
            "date_updated": rfc2822(self.date_updated or self.date_created),
            "direction": self.direction,
            "error_code": self.error_code,
            "error_message": self.error_message,
            "from": self.from_,
            "messaging_service_sid": self.messaging_service_sid,
            "num_media": str(len(self.media_urls)),
            "num_segments": str(self.num_segments),
            "price": None,
            "price_unit": "USD",
            "sid": self.sid,
            "status": self.status,
            "subresource_uris": {"media": f"{base}/Media.json", "feedback": f"{base}/Feedback.json"},
            "to": self.to,
            "uri": self.uri,
        }


@dataclass(frozen=True)
class Media:
    """An inbound media file, served under its message."""

    sid: str
    account_sid: str
    message_sid: str
    content: bytes
    content_type: str
    date_created: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def path(self) -> str:
        """The path of its content (what MediaUrl{N} points at)."""
        return f"/{API_VERSION}/Accounts/{self.account_sid}/Messages/{self.message_sid}/Media/{self.sid}"

    def resource(self) -> dict[str, Any]:
        """The Media resource JSON."""
        created = rfc2822(self.date_created)
        return {"account_sid": self.account_sid, "content_type": self.content_type, "date_created": created,
                "date_updated": created, "parent_sid": self.message_sid, "sid": self.sid, "uri": f"{self.path}.json"}


@dataclass
class ApiRequest:
    """One call to the REST API as received, and what became of it."""

    method: str
    path: str
    query: str
    form: list[tuple[str, str]]
    headers: dict[str, str]  # lower-case names
    received_at: float  # time.monotonic() on arrival
    kind: str | None  # CREATE, FETCH, MEDIA, or None (no such API)
    fault: str | None = None
    status: int | None = None  # the HTTP status answered; None while pending or when dropped
    code: int | None = None  # the Twilio error code answered, if any
    outcome: str = "pending"  # e.g. created, fetched, media, refused, unauthenticated, not_found, dropped, http_429

    def param(self, name: str) -> str | None:
        """The first value of a form field."""
        return next((value for key, value in self.form if key == name), None)


@dataclass
class _Fault:
    kind: str
    remaining: int | None  # None: until heal()
    on: str | None
    status: int = 0
    code: int = 0
    message: str = ""
    headers: dict[str, str] = field(default_factory=dict)


class _ApiError(Exception):
    """A refusal: an HTTP status and Twilio's error object."""

    def __init__(self, status: int, code: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = dict(headers or {})


class FakeTwilio:
    """Twilio's Messaging REST API on 127.0.0.1, with accounts, records, faults and a webhook sender."""

    def __init__(self) -> None:
        self._accounts: dict[str, Account] = {}
        self._api_keys: dict[str, tuple[str, str]] = {}  # SK sid → (account sid, secret)
        self._opted_out: set[str] = set()
        self._messages: dict[str, Message] = {}  # every message by sid (outbound and inbound)
        self._outbound: list[Message] = []
        self._inbound: list[Message] = []
        self._media: dict[str, Media] = {}
        self._media_fetches: Counter[str] = Counter()  # ME sid → content served
        self._requests: list[ApiRequest] = []
        self._faults: list[_Fault] = []
        self._hanging = 0
        self._release = threading.Event()
        self._changed = threading.Condition()
        self.closing = threading.Event()
        self._closed = False
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.fake = self
        self.port: int = self._server.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}"  # TWILIO_API_BASE for the code under test
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.01}, name="fake-twilio", daemon=True
        )

    # Life cycle

    def start(self) -> FakeTwilio:
        """Start serving (in a daemon thread)."""
        self._thread.start()
        return self

    def close(self) -> None:
        """Drop every hanging call, stop serving and wait for the handler threads (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self.closing.set()
        self._release.set()
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()  # joins the handler threads
        if self._thread.is_alive():
            self._thread.join()

    def __enter__(self) -> FakeTwilio:
        """Start, if not started yet."""
        if not self._thread.is_alive():
            self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        """Close."""
        self.close()

    # Accounts, senders, recipients

    def add_account(self, account_sid: str | None = None, auth_token: str | None = None) -> tuple[str, str]:
        """Create an account; its (AccountSid "AC"+32 hex, AuthToken 32 hex)."""
        account = Account(account_sid or new_sid("AC"), auth_token or secrets.token_hex(16))
        with self._changed:
            self._accounts[account.sid] = account
        return account.sid, account.auth_token

    def add_api_key(self, account_sid: str) -> tuple[str, str]:
        """Create an API key of an account; its (sid "SK"+32 hex, secret), usable as Basic auth."""
        self._account(account_sid)
        key = (new_sid("SK"), secrets.token_hex(16))
        with self._changed:
            self._api_keys[key[0]] = (account_sid, key[1])
        return key

    def auth_token(self, account_sid: str) -> str:
        """An account's AuthToken."""
        return self._account(account_sid).auth_token

    def add_number(self, account_sid: str, number: str) -> str:
        """Give an account a sender it may use as From: "+1555..." (SMS/MMS) or "whatsapp:+1555..."."""
        with self._changed:
            self._account(account_sid).numbers.add(number)
        return number

    def add_messaging_service(
        self, account_sid: str, senders: Iterable[str] = (), service_sid: str | None = None
    ) -> str:
        """Create a Messaging Service ("MG"+32 hex) with a sender pool (each sender is owned by the account)."""
        sid = service_sid or new_sid("MG")
        pool = list(senders)
        with self._changed:
            account = self._account(account_sid)
            account.services[sid] = pool
            account.numbers.update(pool)
        return sid

    def opt_out(self, number: str) -> None:
        """Register a recipient as unsubscribed (it texted STOP): sending to it is refused with 21610."""
        with self._changed:
            self._opted_out.add(number)

    def opt_in(self, number: str) -> None:
        """Undo opt_out()."""
        with self._changed:
            self._opted_out.discard(number)

    def messages_url(self, account_sid: str) -> str:
        """The absolute URL of an account's Messages list (where messages are created)."""
        return f"{self.base_url}/{API_VERSION}/Accounts/{account_sid}/Messages.json"

    # Media

    def add_media(self, account_sid: str, content: bytes, content_type: str, message_sid: str | None = None) -> str:
        """Register an inbound media file (on a new MM message, or `message_sid`); its MediaUrl."""
        self._account(account_sid)
        media = Media(new_sid("ME"), account_sid, message_sid or new_sid("MM"), bytes(content), content_type)
        with self._changed:
            self._media[media.sid] = media
        return f"{self.base_url}{media.path}"

    def media_fetches(self, media_url: str | None = None) -> int:
        """How many times media content was served (all of it, or one MediaUrl's)."""
        with self._changed:
            if media_url is None:
                return sum(self._media_fetches.values())
            return self._media_fetches[urlsplit(media_url).path.rsplit("/", 1)[-1]]

    # Faults

    def fail(self, kind: str, times: int | None = 1, *, on: str | None = None, retry_after: int | None = None) -> None:
        """Apply a fault to the next `times` API calls (of kind `on`, or any), or until heal() (None)."""
        if kind not in FAULTS:
            raise ValueError(f"unknown fault {kind!r}; one of {sorted(FAULTS)}")
        self._check_on(on)
        fault = _Fault(kind, times, on)
        if kind in _ERROR_FAULTS:
            fault.status, fault.code, fault.message = _ERROR_FAULTS[kind]
        if retry_after is not None:
            fault.headers["Retry-After"] = str(retry_after)
        with self._changed:
            if kind == HANG:
                self._release.clear()
            self._faults.append(fault)

    def fail_with(self, status: int, code: int, message: str, times: int | None = 1, *, on: str | None = None) -> None:
        """Answer the next `times` API calls (of kind `on`, or any) with this Twilio error, or until heal()."""
        self._check_on(on)
        with self._changed:
            self._faults.append(_Fault("error", times, on, status, code, message))

    def heal(self) -> None:
        """Forget every queued or persistent fault (hanging calls stay held until release())."""
        with self._changed:
            self._faults.clear()

    def release(self) -> None:
        """Let every hanging call go on (it is then served normally)."""
        self._release.set()

    # Records

    @property
    def messages(self) -> list[Message]:
        """Every message created through the API, in order."""
        with self._changed:
            return list(self._outbound)

    @property
    def inbound(self) -> list[Message]:
        """Every inbound message sent with send_inbound(), in order."""
        with self._changed:
            return list(self._inbound)

    def message(self, sid: str) -> Message:
        """A message by sid (KeyError if unknown)."""
        with self._changed:
            return self._messages[sid]

    def wait_for_messages(self, count: int, timeout: float = 5.0) -> list[Message]:
        """Block until at least `count` messages have been created; all of them."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self._outbound) >= count, timeout):
                raise TimeoutError(f"expected {count} messages created, got {len(self._outbound)}")
            return list(self._outbound)

    @property
    def requests(self) -> list[ApiRequest]:
        """Every API call so far, in arrival order."""
        with self._changed:
            return list(self._requests)

    def wait_for_requests(self, count: int, timeout: float = 5.0) -> list[ApiRequest]:
        """Block until at least `count` API calls have arrived."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self._requests) >= count, timeout):
                raise TimeoutError(f"expected {count} API calls, got {len(self._requests)}")
            return list(self._requests)

    def wait_for_hanging(self, count: int = 1, timeout: float = 5.0) -> None:
        """Block until at least `count` calls are being held by HANG."""
        with self._changed:
            if not self._changed.wait_for(lambda: self._hanging >= count, timeout):
                raise TimeoutError(f"expected {count} hanging calls, got {self._hanging}")

    def set_status(
        self, message_sid: str, status: str, error_code: int | None = None, error_message: str | None = None
    ) -> Message:
        """Move a message to a status (e.g. sent, delivered, undelivered with an error code), as Twilio would."""
        with self._changed:
            message = self._messages[message_sid]
            message.status = status
            message.date_updated = datetime.now(UTC)
            if status != "accepted" and message.from_ is None and message.sender:
                message.from_ = message.sender
                message.num_segments = 1 if message.media_urls or channel(message.to) != "sms" else segment_count(
                    message.body
                )
            if status in ("sent", "delivered", "read") and message.date_sent is None:
                message.date_sent = message.date_updated
            if error_code is not None:
                message.error_code = error_code
                message.error_message = error_message or _CALLBACK_ERROR_MESSAGES.get(error_code)
            self._changed.notify_all()
            return message

    # Webhooks

    def send_inbound(
        self, target_url: str, signed_url: str, account_sid: str, from_: str, to: str, body: str, **options: Any
    ) -> tuple[int, dict[str, str], bytes]:
        """Post an incoming message (inbound_sms_params options) signed with the account's token; the answer."""
        params = inbound_sms_params(account_sid, from_, to, body, **options)
        inbound = Message(
            params["MessageSid"], account_sid, params["To"], params["From"], body, "received", direction="inbound",
            media_urls=[params[f"MediaUrl{index}"] for index in range(int(params["NumMedia"]))],
            messaging_service_sid=params.get("MessagingServiceSid"), num_segments=int(params["NumSegments"]),
            form=list(params.items()),
        )
        with self._changed:
            self._messages[inbound.sid] = inbound
            self._inbound.append(inbound)
        return post_signed(target_url, signed_url, self.auth_token(account_sid), params)

    def send_status_callbacks(
        self, message_sid: str, statuses: Iterable[str | tuple[str, int]], target_base: str
    ) -> list[tuple[int, dict[str, str], bytes]]:
        """Post each status or (status, error_code) to the message's StatusCallback rebased on `target_base`."""
        # The path and query are kept; the signature is over the original StatusCallback with the account's
        # AuthToken, as Twilio signs it; the stored status follows each post. Returns each answer.
        message = self.message(message_sid)
        if not message.status_callback:
            raise ValueError(f"message {message_sid} has no StatusCallback")
        parts = urlsplit(message.status_callback)
        target = target_base.rstrip("/") + parts.path + (f"?{parts.query}" if parts.query else "")
        token = self.auth_token(message.account_sid)
        answers = []
        for item in statuses:
            status, code = (item, None) if isinstance(item, str) else item
            updated = self.set_status(message_sid, status, code)
            answers.append(post_signed(target, message.status_callback, token, status_callback_params(
                updated, status, code
            )))
        return answers

    # Serving the API (called from the handler threads)

    def _account(self, account_sid: str) -> Account:
        """An account by sid (KeyError, explained, if unknown)."""
        try:
            return self._accounts[account_sid]
        except KeyError:
            raise KeyError(f"no such account {account_sid!r}; add_account() it first") from None

    @staticmethod
    def _check_on(on: str | None) -> None:
        """Refuse an unknown kind of call."""
        if on is not None and on not in KINDS:
            raise ValueError(f"unknown kind of call {on!r}; one of {sorted(KINDS)} or None")

    def _arrive(self, request: ApiRequest) -> _Fault | None:
        """Record a call and give it the fault it is due."""
        with self._changed:
            fault = next((f for f in self._faults if f.on is None or f.on == request.kind), None)
            if fault is not None:
                request.fault = fault.kind if fault.kind != "error" else f"error_{fault.code}"
                if fault.remaining is not None:
                    fault.remaining -= 1
                    if fault.remaining <= 0:
                        self._faults.remove(fault)
            self._requests.append(request)
            self._changed.notify_all()
            return fault

    def _hang(self) -> bool:
        """Hold a call until release() or close(); whether it may go on."""
        with self._changed:
            self._hanging += 1
            self._changed.notify_all()
        self._release.wait()
        with self._changed:
            self._hanging -= 1
            self._changed.notify_all()
        return not self.closing.is_set()

    def _finish(self, request: ApiRequest, outcome: str, status: int | None = None, code: int | None = None) -> None:
        """Record what became of a call."""
        with self._changed:
            request.outcome, request.status, request.code = outcome, status, code
            self._changed.notify_all()

    def _authenticate(self, authorization: str, path_account: str | None) -> str:
        """The account a Basic Authorization header stands for (401 20003 otherwise)."""
        refused = _ApiError(401, 20003, "Authenticate", {"WWW-Authenticate": 'Basic realm="Twilio API"'})
        scheme, _, encoded = authorization.partition(" ")
        if scheme.lower() != "basic":
            raise refused
        try:
            username, colon, password = base64.b64decode(encoded.strip(), validate=True).decode().partition(":")
        except ValueError:  # not base64, or not text
            raise refused from None
        with self._changed:
            account = self._accounts.get(username)
            key = self._api_keys.get(username)
        if account is not None:
            account_sid, secret = account.sid, account.auth_token
        elif key is not None:
            account_sid, secret = key
        else:
            raise refused
        if not colon or not hmac.compare_digest(password.encode(), secret.encode()):
            raise refused
        if path_account is not None and path_account != account_sid:
            raise refused
        return account_sid

    def _create(self, account_sid: str, form: list[tuple[str, str]]) -> Message:
        """Validate a create call as Twilio does and record the message."""
        fields: dict[str, str] = {}
        for name, value in form:
            fields.setdefault(name, value)
        media_urls = [value for name, value in form if name == "MediaUrl"]
        to = fields.get("To", "")
        from_ = fields.get("From") or None
        service = fields.get("MessagingServiceSid") or None
        body = fields.get("Body", "")
        content_sid = fields.get("ContentSid") or None
        if not to:
            raise _ApiError(400, 21604, "A 'To' phone number is required.")
        if not from_ and not service:
            raise _ApiError(400, 21603, "A 'From' or 'MessagingServiceSid' parameter is required to send a message")
        if not body and not media_urls and not content_sid:
            raise _ApiError(400, 21602, "Message body is required.")
        if len(body) > MAX_BODY_CHARS:
            raise _ApiError(400, 21617, "The concatenated message body exceeds the 1600 character limit.")
        if not _ADDRESS.fullmatch(to):
            raise _ApiError(400, 21211, f"The 'To' number {to} is not a valid phone number.")
        for url in media_urls:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise _ApiError(400, 21620, "Invalid media URL(s)")
        with self._changed:
            account = self._account(account_sid)
            if service is not None and service not in account.services:
                raise _ApiError(400, 21701, f"The Messaging Service Sid {service} is invalid.")
            if from_ is not None:
                if channel(from_) != channel(to):
                    raise _ApiError(400, 21910, "Invalid From and To pair. From and To should be of the same channel")
                if from_ not in account.numbers:
                    if channel(from_) == "whatsapp":
                        raise _ApiError(400, 63007, "Twilio could not find a Channel with the specified From address")
                    raise _ApiError(
                        400,
                        21606,
                        f"The From phone number {from_} is not a valid, SMS-capable inbound phone number or short "
                        "code for your account.",
                    )
            if to in self._opted_out:
                raise _ApiError(400, 21610, "Attempt to send to unsubscribed recipient")
            sender = from_
            if sender is None and service is not None:
                sender = next((s for s in account.services[service] if channel(s) == channel(to)), None)
            pooled = from_ is None
            message = Message(
                new_sid("MM" if media_urls else "SM"),
                account_sid,
                to,
                from_,
                body,
                "accepted" if pooled else "queued",
                media_urls=media_urls,
                status_callback=fields.get("StatusCallback") or None,
                messaging_service_sid=service,
                content_sid=content_sid,
                content_variables=fields.get("ContentVariables"),
                num_segments=0 if pooled else (1 if media_urls or channel(to) != "sms" else segment_count(body)),
                sender=sender,
                form=list(form),
            )
            self._messages[message.sid] = message
            self._outbound.append(message)
            self._changed.notify_all()
            return message

    def _fetch(self, account_sid: str, sid: str, path: str) -> Message:
        """An account's message (404 20404 otherwise)."""
        with self._changed:
            message = self._messages.get(sid)
            if message is None or message.account_sid != account_sid:
                raise _not_found(path)
            return message

    def _serve_media(self, account_sid: str, message_sid: str, sid: str, path: str, count: bool) -> Media:
        """An account's media file under its message (404 20404 otherwise), counted if its content is served."""
        with self._changed:
            media = self._media.get(sid)
            if media is None or media.account_sid != account_sid or media.message_sid != message_sid:
                raise _not_found(path)
            if count:
                self._media_fetches[sid] += 1
            return media


def _not_found(path: str) -> _ApiError:
    """Twilio's 404 for a path."""
    return _ApiError(404, 20404, f"The requested resource {path} was not found")


def _kind(method: str, path: str) -> str | None:
    """The kind of API call a method and path make (None: no such API)."""
    if method == "POST" and _CREATE_PATH.fullmatch(path):
        return CREATE
    if method == "GET" and _MEDIA_PATH.fullmatch(path):
        return MEDIA
    if method == "GET" and _FETCH_PATH.fullmatch(path):
        return FETCH
    return None


class _Server(ThreadingHTTPServer):
    daemon_threads = False  # so that server_close() joins every handler thread
    block_on_close = True
    fake: FakeTwilio


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "FakeTwilio/1.0"

    def log_message(self, format: str, *args: Any) -> None:
        """Keep the test output quiet."""

    def do_GET(self) -> None:
        """Serve a GET (fetch a message, or media)."""
        self._handle("GET")

    def do_POST(self) -> None:
        """Serve a POST (create a message)."""
        self._handle("POST")

    def do_DELETE(self) -> None:
        """Answer a DELETE (not emulated: 405)."""
        self._handle("DELETE")

    def _handle(self, method: str) -> None:
        """Read and record a call, then serve it (or its fault)."""
        fake = self.server.fake
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        url = urlsplit(self.path)
        form = parse_qsl(raw.decode("utf-8", errors="replace"), keep_blank_values=True) if raw else []
        headers = {name.lower(): value for name, value in self.headers.items()}
        request = ApiRequest(method, url.path, url.query, form, headers, time.monotonic(), _kind(method, url.path))
        fault = fake._arrive(request)
        with contextlib.suppress(OSError):  # the client gave up on us: expected with hangs and drops
            self._serve(fake, request, fault)

    def _serve(self, fake: FakeTwilio, request: ApiRequest, fault: _Fault | None) -> None:
        """Apply the call's fault, if any, else answer it."""
        if fault is not None and fault.kind == HANG:
            if not fake._hang():
                fake._finish(request, "dropped_on_close")
                self.close_connection = True
                return
            fault = None
        if fault is not None and fault.kind == DROP:
            fake._finish(request, "dropped")
            self.close_connection = True
            return
        if fault is not None:
            fake._finish(request, request.fault or fault.kind, fault.status, fault.code)
            self._json(fault.status, error_body(fault.status, fault.code, fault.message), fault.headers)
            return
        try:
            outcome, status, payload, content_type = self._route(fake, request)
        except _ApiError as error:
            outcome = "unauthenticated" if error.status == 401 else "not_found" if error.status == 404 else "refused"
            fake._finish(request, outcome, error.status, error.code)
            self._json(error.status, error_body(error.status, error.code, error.message), error.headers)
            return
        fake._finish(request, outcome, status)
        self._send(status, payload, content_type, {"Twilio-Request-Id": new_sid("RQ")})

    def _route(self, fake: FakeTwilio, request: ApiRequest) -> tuple[str, int, bytes, str]:
        """Authenticate and serve a call; (outcome, status, body, content type), or raise _ApiError."""
        path = request.path
        matched = _ANY_ACCOUNT_PATH.fullmatch(path)
        authorization = self.headers.get("Authorization") or ""
        account_sid = fake._authenticate(authorization, matched["account"] if matched else None)
        if request.kind == CREATE:
            message = fake._create(account_sid, request.form)
            return "created", 201, json.dumps(message.resource()).encode(), "application/json"
        if request.kind == FETCH:
            match = _FETCH_PATH.fullmatch(path)
            assert match is not None
            message = fake._fetch(account_sid, match["sid"], path)
            return "fetched", 200, json.dumps(message.resource()).encode(), "application/json"
        if request.kind == MEDIA:
            match = _MEDIA_PATH.fullmatch(path)
            assert match is not None
            as_json = bool(match["json"])
            media = fake._serve_media(account_sid, match["message"], match["sid"], path, count=not as_json)
            if as_json:
                return "media_resource", 200, json.dumps(media.resource()).encode(), "application/json"
            return "media", 200, media.content, media.content_type
        if _CREATE_PATH.fullmatch(path) or _FETCH_PATH.fullmatch(path) or _MEDIA_PATH.fullmatch(path):
            raise _ApiError(405, 20004, "Method not allowed")
        raise _not_found(path)

    def _json(self, status: int, body: Any, headers: Mapping[str, str] | None = None) -> None:
        """Answer with JSON."""
        self._send(status, json.dumps(body).encode(), "application/json", headers)

    def _send(self, status: int, payload: bytes, content_type: str, headers: Mapping[str, str] | None = None) -> None:
        """Answer with a body of a content type, and its Content-Length."""
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)


@contextmanager
def running_fake_twilio() -> Iterator[FakeTwilio]:
    """A started FakeTwilio, closed (every hanging call dropped) on exit."""
    fake = FakeTwilio().start()
    try:
        yield fake
    finally:
        fake.close()


try:
    import pytest
except ImportError:  # usable without pytest
    pytest = None  # type: ignore[assignment]

if pytest is not None:

    @pytest.fixture
    def fake_twilio() -> Iterator[FakeTwilio]:
        """A running FakeTwilio (no accounts yet), closed after the test."""
        with running_fake_twilio() as fake:
            yield fake
