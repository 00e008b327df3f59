"""The Twilio fake itself, over real HTTP: auth, validation, the Message shape, media, faults and webhooks.

Its signatures are checked against the official `twilio` package (RequestValidator), and its answers
against the official REST client, so that the fake can be trusted where the app is tested against it.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl

import pytest
import requests
from twilio.base.exceptions import TwilioRestException
from twilio.request_validator import RequestValidator
from twilio.rest import Client
from werkzeug.datastructures import MultiDict

from tests.fake_twilio import (
    CREATE,
    DROP,
    HANG,
    HTTP_429,
    HTTP_500,
    HTTP_503,
    MEDIA,
    OUTSIDE_WINDOW_MESSAGE,
    SIGNATURE_HEADER,
    FakeTwilio,
    fake_twilio,  # noqa: F401  (the fixture)
    inbound_sms_params,
    post_signed,
    running_fake_twilio,
    segment_count,
    signature,
    status_callback_params,
)

SMS_FROM = "+15550001111"
WA_FROM = "whatsapp:+15550002222"
CUSTOMER = "+15557654321"
PUBLIC_BASE = "https://deskbridge.example"
TIMEOUT = 5


@dataclass
class Sent:
    """What the account under test can do against the fake."""

    fake: FakeTwilio
    sid: str
    token: str

    @property
    def url(self) -> str:
        return self.fake.messages_url(self.sid)

    def post(self, data: Any, auth: tuple[str, str] | bool | None = True) -> requests.Response:
        """POST to Messages.json (with the account's credentials unless told otherwise)."""
        credentials = (self.sid, self.token) if auth is True else (auth or None)
        return requests.post(self.url, data=data, auth=credentials, timeout=TIMEOUT)

    def get(self, url: str, auth: bool = True) -> requests.Response:
        return requests.get(url, auth=(self.sid, self.token) if auth else None, timeout=TIMEOUT)


@pytest.fixture
def account(fake_twilio: FakeTwilio) -> Sent:  # noqa: F811
    """An account owning an SMS number and a WhatsApp sender."""
    sid, token = fake_twilio.add_account()
    fake_twilio.add_number(sid, SMS_FROM)
    fake_twilio.add_number(sid, WA_FROM)
    return Sent(fake_twilio, sid, token)


def sms(**fields: Any) -> dict[str, Any]:
    """A valid SMS create form, with fields overridden (None removes one)."""
    form: dict[str, Any] = {"To": CUSTOMER, "From": SMS_FROM, "Body": "Hello"}
    form.update(fields)
    return {name: value for name, value in form.items() if value is not None}


def assert_error(response: requests.Response, status: int, code: int, message: str | None = None) -> None:
    """The answer is Twilio's error object with this status and code (and message)."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"code", "message", "more_info", "status"}
    assert body["code"] == code and body["status"] == status
    assert body["more_info"] == f"https://www.twilio.com/docs/errors/{code}"
    if message is not None:
        assert body["message"] == message


# Accounts and authentication


def test_accounts_have_twilio_shaped_credentials(fake_twilio: FakeTwilio) -> None:  # noqa: F811
    sid, token = fake_twilio.add_account()
    assert re.fullmatch(r"AC[0-9a-f]{32}", sid) and re.fullmatch(r"[0-9a-f]{32}", token)
    assert fake_twilio.add_account("AC" + "1" * 32, "t" * 32) == ("AC" + "1" * 32, "t" * 32)
    assert re.fullmatch(r"MG[0-9a-f]{32}", fake_twilio.add_messaging_service(sid))
    assert fake_twilio.base_url == f"http://127.0.0.1:{fake_twilio.port}"


@pytest.mark.parametrize("auth", ["none", "wrong_token", "other_account", "garbage"])
def test_every_call_needs_basic_auth(account: Sent, auth: str) -> None:
    other_sid, other_token = account.fake.add_account()
    if auth == "garbage":
        response = requests.post(account.url, data=sms(), headers={"Authorization": "Basic %%%"}, timeout=TIMEOUT)
    else:
        credentials = {"none": None, "wrong_token": (account.sid, "0" * 32), "other_account": (other_sid, other_token)}
        response = account.post(sms(), auth=credentials[auth])
    assert_error(response, 401, 20003, "Authenticate")
    assert response.headers["WWW-Authenticate"].startswith("Basic")
    assert account.fake.messages == []
    assert account.fake.requests[-1].outcome == "unauthenticated"


def test_an_api_key_of_the_account_authenticates(account: Sent) -> None:
    key_sid, secret = account.fake.add_api_key(account.sid)
    assert re.fullmatch(r"SK[0-9a-f]{32}", key_sid)
    assert account.post(sms(), auth=(key_sid, secret)).status_code == 201


# Creating messages


@pytest.mark.parametrize(
    ("form", "code", "message"),
    [
        (sms(To=None), 21604, "A 'To' phone number is required."),
        (sms(To="5551234"), 21211, "The 'To' number 5551234 is not a valid phone number."),
        (sms(To="+1555"), 21211, "The 'To' number +1555 is not a valid phone number."),
        (sms(To="+1234567890123456"), 21211, "The 'To' number +1234567890123456 is not a valid phone number."),
        (sms(To="messenger:+1555765"), 21211, "The 'To' number messenger:+1555765 is not a valid phone number."),
        (
            sms(From="+15559999999"),
            21606,
            "The From phone number +15559999999 is not a valid, SMS-capable inbound phone number or short code for "
            "your account.",
        ),
        (sms(From=None), 21603, "A 'From' or 'MessagingServiceSid' parameter is required to send a message"),
        (sms(Body=None), 21602, "Message body is required."),
        (sms(Body=""), 21602, "Message body is required."),
        (sms(Body="x" * 1601), 21617, "The concatenated message body exceeds the 1600 character limit."),
        (sms(From=WA_FROM), 21910, "Invalid From and To pair. From and To should be of the same channel"),
        (sms(To=f"whatsapp:{CUSTOMER}"), 21910, "Invalid From and To pair. From and To should be of the same channel"),
        (
            sms(From="whatsapp:+15559999999", To=f"whatsapp:{CUSTOMER}"),
            63007,
            "Twilio could not find a Channel with the specified From address",
        ),
        (sms(MediaUrl="ftp://example.com/a.png"), 21620, "Invalid media URL(s)"),
        (sms(From=None, MessagingServiceSid="MG" + "0" * 32), 21701, None),
    ],
)
def test_invalid_messages_are_refused_with_twilio_error_codes(
    account: Sent, form: dict[str, Any], code: int, message: str | None
) -> None:
    assert_error(account.post(form), 400, code, message)
    assert account.fake.messages == []
    assert account.fake.requests[-1].code == code


def test_an_opted_out_recipient_is_refused(account: Sent) -> None:
    account.fake.opt_out(CUSTOMER)
    assert_error(account.post(sms()), 400, 21610, "Attempt to send to unsubscribed recipient")
    account.fake.opt_in(CUSTOMER)
    assert account.post(sms()).status_code == 201


def test_a_created_message_has_the_documented_shape_and_is_recorded(account: Sent) -> None:
    callback = f"{PUBLIC_BASE}/twilio/status/ch-1?attempt=1"
    response = account.post(sms(Body="Hello there", StatusCallback=callback))
    assert response.status_code == 201, response.text
    body = response.json()
    sid = body["sid"]
    assert re.fullmatch(r"SM[0-9a-f]{32}", sid)
    uri = f"/2010-04-01/Accounts/{account.sid}/Messages/{sid}"
    assert body == {
        "account_sid": account.sid,
        "api_version": "2010-04-01",
        "body": "Hello there",
        "date_created": body["date_created"],
        "date_sent": None,
        "date_updated": body["date_created"],
        "direction": "outbound-api",
        "error_code": None,
        "error_message": None,
        "from": SMS_FROM,
        "messaging_service_sid": None,
        "num_media": "0",
        "num_segments": "1",
        "price": None,
        "price_unit": "USD",
        "sid": sid,
        "status": "queued",
        "subresource_uris": {"media": f"{uri}/Media.json", "feedback": f"{uri}/Feedback.json"},
        "to": CUSTOMER,
        "uri": f"{uri}.json",
    }
    assert parsedate_to_datetime(body["date_created"]).utcoffset() is not None  # RFC 2822, with a zone
    [message] = account.fake.wait_for_messages(1, timeout=1)
    assert (message.sid, message.to, message.from_, message.body) == (sid, CUSTOMER, SMS_FROM, "Hello there")
    assert message.status_callback == callback and message.param("StatusCallback") == callback
    fetched = account.get(f"{account.fake.base_url}{uri}.json")
    assert fetched.status_code == 200 and fetched.json() == body


def test_media_messages_whatsapp_and_messaging_services(account: Sent) -> None:
    media = ["https://cdn.example/a.png", "https://cdn.example/b.pdf"]
    mms = account.post(sms(Body=None, MediaUrl=media)).json()
    assert re.fullmatch(r"MM[0-9a-f]{32}", mms["sid"]) and mms["num_media"] == "2" and mms["body"] == ""
    assert account.fake.message(mms["sid"]).media_urls == media

    whatsapp = account.post(sms(From=WA_FROM, To=f"whatsapp:{CUSTOMER}")).json()
    assert whatsapp["from"] == WA_FROM and whatsapp["to"] == f"whatsapp:{CUSTOMER}"

    template = account.post(sms(From=WA_FROM, To=f"whatsapp:{CUSTOMER}", Body=None, ContentSid="HX" + "a" * 32))
    assert template.status_code == 201
    assert account.fake.message(template.json()["sid"]).content_sid == "HX" + "a" * 32

    service = account.fake.add_messaging_service(account.sid, senders=["+15550003333"])
    pooled = account.post(sms(From=None, MessagingServiceSid=service)).json()
    assert (pooled["status"], pooled["from"], pooled["num_segments"]) == ("accepted", None, "0")
    assert pooled["messaging_service_sid"] == service
    assert account.fake.set_status(pooled["sid"], "sent").from_ == "+15550003333"
    assert len(account.fake.wait_for_messages(4, timeout=1)) == 4


def test_segments_are_counted_as_gsm_7_or_ucs_2(account: Sent) -> None:
    assert [segment_count(body) for body in ("x" * 160, "x" * 161, "€" * 80, "€" * 81, "é" * 160, "ж" * 70)] == [
        1, 2, 1, 2, 1, 1
    ]
    assert segment_count("ж" * 71) == 2
    assert account.post(sms(Body="ж" * 135)).json()["num_segments"] == "3"


def test_an_unknown_message_or_path_is_a_twilio_404(account: Sent) -> None:
    path = f"/2010-04-01/Accounts/{account.sid}/Messages/SM{'0' * 32}.json"
    assert_error(account.get(account.fake.base_url + path), 404, 20404, f"The requested resource {path} was not found")
    assert_error(account.get(f"{account.fake.base_url}/2010-04-01/Calls.json"), 404, 20404)


def test_wait_for_messages_times_out_without_sleeping(fake_twilio: FakeTwilio) -> None:  # noqa: F811
    with pytest.raises(TimeoutError, match="expected 1 messages"):
        fake_twilio.wait_for_messages(1, timeout=0.05)


# Media


def test_media_is_served_with_basic_auth_and_counted(account: Sent) -> None:
    content = b"\x89PNG\r\n\x1a\n" + bytes(range(256))
    url = account.fake.add_media(account.sid, content, "image/png")
    assert re.fullmatch(
        rf"{re.escape(account.fake.base_url)}/2010-04-01/Accounts/{account.sid}/Messages/MM[0-9a-f]{{32}}/Media/"
        r"ME[0-9a-f]{32}",
        url,
    )
    assert_error(account.get(url, auth=False), 401, 20003, "Authenticate")
    assert account.fake.media_fetches(url) == 0
    fetched = account.get(url)
    assert fetched.status_code == 200 and fetched.content == content
    assert fetched.headers["Content-Type"] == "image/png"
    assert fetched.headers["Content-Length"] == str(len(content))
    assert account.fake.media_fetches(url) == 1 and account.fake.media_fetches() == 1
    resource = account.get(f"{url}.json").json()
    assert resource["content_type"] == "image/png" and url.endswith(resource["sid"])
    second = account.fake.add_media(account.sid, b"%PDF", "application/pdf", message_sid=resource["parent_sid"])
    assert resource["parent_sid"] in second


def test_unknown_media_is_a_twilio_404(account: Sent) -> None:
    url = account.fake.add_media(account.sid, b"x", "text/plain")
    unknown = url[:-32] + "0" * 32
    path = unknown.removeprefix(account.fake.base_url)
    assert_error(account.get(unknown), 404, 20404, f"The requested resource {path} was not found")
    assert account.fake.media_fetches() == 0


# Faults


@pytest.mark.parametrize(
    ("kind", "status", "code", "message"),
    [
        (HTTP_429, 429, 20429, "Too Many Requests"),
        (HTTP_500, 500, 20500, "Internal Server Error"),
        (HTTP_503, 503, 20500, "Internal Server Error"),
    ],
)
def test_error_faults_apply_to_the_next_calls_only(
    account: Sent, kind: str, status: int, code: int, message: str
) -> None:
    account.fake.fail(kind, times=2)
    for _ in range(2):
        response = account.post(sms())
        assert_error(response, status, code, message)
        assert "Retry-After" not in response.headers
    assert account.fake.messages == []
    assert account.post(sms()).status_code == 201
    assert [request.fault for request in account.fake.requests] == [kind, kind, None]


def test_a_429_may_carry_retry_after_and_faults_may_last_until_heal(account: Sent) -> None:
    account.fake.fail(HTTP_429, times=None, retry_after=3)
    for _ in range(3):
        response = account.post(sms())
        assert response.status_code == 429 and response.headers["Retry-After"] == "3"
    account.fake.heal()
    assert account.post(sms()).status_code == 201


def test_fail_with_answers_any_twilio_error_and_can_target_one_kind_of_call(account: Sent) -> None:
    account.fake.fail_with(400, 63016, OUTSIDE_WINDOW_MESSAGE, on=CREATE)
    url = account.fake.add_media(account.sid, b"x", "text/plain")
    account.fake.fail(HTTP_503, on=MEDIA)
    assert account.get(url).status_code == 503
    assert_error(account.post(sms()), 400, 63016, OUTSIDE_WINDOW_MESSAGE)
    assert account.get(url).status_code == 200 and account.post(sms()).status_code == 201


def test_a_hanging_call_is_served_once_released(account: Sent) -> None:
    account.fake.fail(HANG)
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(account.post, sms())
        account.fake.wait_for_hanging(1)
        assert not pending.done() and account.fake.messages == []
        account.fake.release()
        assert pending.result(timeout=TIMEOUT).status_code == 201
    assert len(account.fake.messages) == 1 and account.fake.requests[0].outcome == "created"


def test_a_hanging_call_is_dropped_on_close() -> None:
    fake = FakeTwilio().start()
    sid, token = fake.add_account()
    fake.add_number(sid, SMS_FROM)
    fake.fail(HANG)
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(requests.post, fake.messages_url(sid), data=sms(), auth=(sid, token), timeout=TIMEOUT)
        fake.wait_for_hanging(1)
        fake.close()
        with pytest.raises(requests.ConnectionError):
            pending.result(timeout=TIMEOUT)
    assert fake.messages == [] and fake.requests[0].outcome == "dropped_on_close"
    fake.close()  # idempotent


def test_a_dropped_call_gets_no_answer_and_does_nothing(account: Sent) -> None:
    account.fake.fail(DROP)
    with pytest.raises(requests.ConnectionError):
        account.post(sms())
    assert account.fake.messages == []
    assert account.fake.requests[0].outcome == "dropped" and account.fake.requests[0].status is None
    assert account.post(sms()).status_code == 201


def test_faults_are_checked(fake_twilio: FakeTwilio) -> None:  # noqa: F811
    with pytest.raises(ValueError, match="unknown fault"):
        fake_twilio.fail("explode")
    with pytest.raises(ValueError, match="unknown kind"):
        fake_twilio.fail(DROP, on="everything")


# The official client against the fake


def test_the_official_twilio_client_works_against_the_fake(account: Sent) -> None:
    client = Client(account.sid, account.token)
    client.api.base_url = account.fake.base_url
    sent = client.messages.create(to=CUSTOMER, from_=SMS_FROM, body="Hi", status_callback=f"{PUBLIC_BASE}/s")
    assert sent.sid.startswith("SM") and sent.status == "queued" and sent.num_segments == "1"
    assert sent.date_created is not None and sent.date_created.tzinfo is not None
    assert client.messages(sent.sid).fetch().body == "Hi"
    with pytest.raises(TwilioRestException) as refused:
        client.messages.create(to="12", from_=SMS_FROM, body="Hi")
    assert (refused.value.status, refused.value.code) == (400, 21211)


# Signatures


SIGNATURE_CASES = [
    ("https://deskbridge.example/inbound/ch-1", {"Body": "Hello", "From": "+15557654321", "To": "+15550001111"}),
    ("https://deskbridge.example:8443/inbound/ch-1?token=a%20b&x=1", {"Body": "zß 日本語 😀", "ProfileName": "Zoë"}),
    ("http://127.0.0.1:5000/inbound", {}),
    ("https://deskbridge.example/inbound", {"b": "1", "B": "2", "a": "", "A_": "x"}),
]


@pytest.mark.parametrize(("url", "params"), SIGNATURE_CASES)
def test_signature_agrees_with_the_twilio_package(url: str, params: dict[str, str]) -> None:
    token = "f" * 32
    validator = RequestValidator(token)
    ours = signature(token, url, params)
    assert ours == validator.compute_signature(url, params)
    assert validator.validate(url, params, ours)
    assert not validator.validate(url, {**params, "Extra": "1"}, ours)
    assert not RequestValidator("e" * 32).validate(url, params, ours)


def test_signature_over_repeated_keys_agrees_with_the_twilio_package() -> None:
    token, url = "12345", "https://deskbridge.example/inbound?x=1"
    pairs = [("MediaUrl", "https://b.example/2"), ("Body", "hi"), ("MediaUrl", "https://a.example/1")]
    ours = signature(token, url, pairs)
    assert ours == signature(token, url, {"Body": "hi", "MediaUrl": ["https://a.example/1", "https://b.example/2"]})
    assert ours == RequestValidator(token).compute_signature(url, MultiDict(pairs))
    assert RequestValidator(token).validate(url, MultiDict(pairs), ours)


def test_signature_matches_twilios_published_example_and_ports() -> None:
    # Twilio's own example (api-snippets security/signature_validation): token 12345.
    params = {"CallSid": "CA1234567890ABCDE", "Caller": "+14158675310", "Digits": "1234", "From": "+14158675310",
              "To": "+18005551212"}
    url = "https://mycompany.com/myapp.php?foo=1&bar=2"
    assert signature("12345", url, params) == "GvWf1cFY/Q7PnoempGyD5oXAezc="
    # Twilio may have signed with or without the default port; the validator accepts either.
    assert RequestValidator("12345").validate("https://mycompany.com:443/myapp.php?foo=1&bar=2", params,
                                              signature("12345", url, params))


# Webhooks


@dataclass(frozen=True)
class Hit:
    """A request the recording server got."""

    path: str
    headers: dict[str, str]
    form: list[tuple[str, str]]


class Recorder:
    """A tiny service under test: records each POST and answers 200 with empty TwiML."""

    def __init__(self) -> None:
        self.hits: list[Hit] = []
        self.changed = threading.Condition()
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                """Quiet."""

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                form = parse_qsl(raw.decode(), keep_blank_values=True)  # Twilio sends empty fields too
                hit = Hit(self.path, {k.lower(): v for k, v in self.headers.items()}, form)
                with recorder.changed:
                    recorder.hits.append(hit)
                    recorder.changed.notify_all()
                payload = b"<Response></Response>"
                self.send_response(200)
                self.send_header("Content-Type", "text/xml")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    running = Recorder()
    yield running
    running.close()


def check_signed(hit: Hit, signed_url: str, token: str) -> None:
    """The hit is a form Twilio would have sent to signed_url, validly signed."""
    assert hit.headers["content-type"] == "application/x-www-form-urlencoded"
    assert hit.headers["user-agent"].startswith("TwilioProxy")
    assert RequestValidator(token).validate(signed_url, MultiDict(hit.form), hit.headers[SIGNATURE_HEADER.lower()])


def test_post_signed_sends_a_validly_signed_inbound_sms(account: Sent, recorder: Recorder) -> None:
    media_url = account.fake.add_media(account.sid, b"jpeg bytes", "image/jpeg")
    params = inbound_sms_params(account.sid, CUSTOMER, SMS_FROM, "Hi, 日本", media=[(media_url, "image/jpeg")])
    signed_url = f"{PUBLIC_BASE}/inbound/ch-1?x=1"
    status, headers, body = post_signed(f"{recorder.base}/inbound/ch-1?x=1", signed_url, account.token, params)
    assert (status, headers["content-type"], body) == (200, "text/xml", b"<Response></Response>")
    [hit] = recorder.hits
    assert hit.path == "/inbound/ch-1?x=1"
    check_signed(hit, signed_url, account.token)
    form = dict(hit.form)
    assert form == params
    assert form["MessageSid"] == form["SmsSid"] == form["SmsMessageSid"] and form["MessageSid"] in media_url
    assert (form["AccountSid"], form["From"], form["To"], form["Body"]) == (account.sid, CUSTOMER, SMS_FROM, "Hi, 日本")
    assert (form["NumMedia"], form["MediaUrl0"], form["MediaContentType0"]) == ("1", media_url, "image/jpeg")
    assert (form["SmsStatus"], form["ApiVersion"], form["FromCountry"], form["NumSegments"]) == (
        "received", "2010-04-01", "US", "1"
    )
    assert "MessagingServiceSid" not in form and "WaId" not in form


def test_inbound_whatsapp_params(account: Sent) -> None:
    params = inbound_sms_params(account.sid, CUSTOMER, WA_FROM, "hola", profile_name="Zoë", whatsapp=True,
                                messaging_service_sid="MG" + "1" * 32, message_sid="SM" + "2" * 32)
    assert params["From"] == f"whatsapp:{CUSTOMER}" and params["To"] == WA_FROM
    assert (params["ProfileName"], params["WaId"], params["MessageType"]) == ("Zoë", CUSTOMER[1:], "text")
    assert params["MessagingServiceSid"] == "MG" + "1" * 32 and params["MessageSid"] == "SM" + "2" * 32
    assert re.fullmatch(r"SM[0-9a-f]{32}", inbound_sms_params(account.sid, CUSTOMER, SMS_FROM, "x")["MessageSid"])


def test_send_inbound_signs_with_the_account_token(account: Sent, recorder: Recorder) -> None:
    signed_url = f"{PUBLIC_BASE}/inbound/ch-2"
    status, _, _ = account.fake.send_inbound(f"{recorder.base}/inbound/ch-2", signed_url, account.sid, CUSTOMER,
                                             SMS_FROM, "hello")
    assert status == 200
    check_signed(recorder.hits[0], signed_url, account.token)
    [inbound] = account.fake.inbound
    assert account.get(f"{account.fake.base_url}{inbound.uri}").json()["direction"] == "inbound"


def test_status_callbacks_follow_the_message(account: Sent, recorder: Recorder) -> None:
    callback = f"{PUBLIC_BASE}/twilio/status/ch-1?attempt=1"
    sid = account.post(sms(From=WA_FROM, To=f"whatsapp:{CUSTOMER}", StatusCallback=callback)).json()["sid"]
    answers = account.fake.send_status_callbacks(sid, ["sent", ("undelivered", 63016)], recorder.base)
    assert [status for status, _, _ in answers] == [200, 200]
    assert [hit.path for hit in recorder.hits] == ["/twilio/status/ch-1?attempt=1"] * 2
    for hit in recorder.hits:
        check_signed(hit, callback, account.token)
    sent, undelivered = (dict(hit.form) for hit in recorder.hits)
    assert sent == {
        "MessageSid": sid, "MessageStatus": "sent", "SmsSid": sid, "SmsStatus": "sent", "AccountSid": account.sid,
        "From": WA_FROM, "To": f"whatsapp:{CUSTOMER}", "ApiVersion": "2010-04-01", "ChannelPrefix": "whatsapp",
        "ChannelToAddress": CUSTOMER,
    }
    assert (undelivered["MessageStatus"], undelivered["ErrorCode"]) == ("undelivered", "63016")
    assert undelivered["ErrorMessage"] == OUTSIDE_WINDOW_MESSAGE
    fetched = account.get(f"{account.fake.base_url}{account.fake.message(sid).uri}").json()
    assert (fetched["status"], fetched["error_code"]) == ("undelivered", 63016)


def test_status_callback_params_for_sms(account: Sent) -> None:
    resource = account.post(sms()).json()
    params = status_callback_params(resource, "failed", 30003)
    assert (params["From"], params["To"], params["ErrorCode"]) == (SMS_FROM, CUSTOMER, "30003")
    assert "ErrorMessage" not in params and "ChannelPrefix" not in params
    assert status_callback_params(resource, "delivered") == status_callback_params(
        account.fake.message(resource["sid"]), "delivered"
    )
    with pytest.raises(ValueError, match="no StatusCallback"):
        account.fake.send_status_callbacks(resource["sid"], ["sent"], "http://127.0.0.1:1")


def test_the_context_manager_starts_and_closes() -> None:
    with running_fake_twilio() as fake:
        sid, token = fake.add_account()
        assert requests.get(fake.messages_url(sid).replace("Messages.json", "Messages/x.json"), auth=(sid, token),
                            timeout=TIMEOUT).status_code == 404
    with pytest.raises(requests.ConnectionError):
        requests.get(fake.base_url, timeout=TIMEOUT)
    with FakeTwilio() as other:
        assert other.requests == []
