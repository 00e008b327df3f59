"""The webhook connector and the address policy on their own: no Flask app, no database."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from app.connectors import http
from app.connectors.addresses import AddressRefused, check_address, check_outbound_url
from app.connectors.base import (
    Delivered,
    DeliveryError,
    OutboundReply,
    PermanentDeliveryError,
    TransientDeliveryError,
)
from app.connectors.fake import FakeConnector
from app.connectors.http import make_http_session
from app.connectors.webhook import WebhookConnector
from app.keyring import new_webhook_secret
from app.usecases.push import BACKOFF_SECONDS, JITTER, deliver_paced
from tests.receiver import (
    CLOSE,
    GARBAGE,
    TRICKLE_BODY,
    TRICKLE_HEADERS,
    Answer,
    Receiver,
    Step,
    closed_port,
    running_receiver,
)

REPLY = OutboundReply(
    channel_id="ch_test", reply_id="42", conversation_id="conv-1", in_reply_to=None,
    content="Hello", content_type="text/plain", text="Hello", author={"name": "Agent"}, attachments=[],
)
DELIVERY_THREAD = "deskbridge-delivery"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with running_receiver(new_webhook_secret()) as running:
        yield running


def connector_to(url: str, secret: str | None = None, *, allow_private: bool = True) -> WebhookConnector:
    return WebhookConnector(
        url, secret or new_webhook_secret(), make_http_session(allow_private=allow_private),
        allow_private=allow_private,
    )


def deliver_once(receiver: Receiver, step: Step, timeout: float = 2.0) -> Delivered:
    receiver.script(step)
    return connector_to(receiver.url, receiver.secret).deliver(REPLY, timeout)


def loopback_names_in_hosts_file() -> list[str]:
    """Host names other than localhost that /etc/hosts maps to a loopback address."""
    names: list[str] = []
    try:
        lines = Path("/etc/hosts").read_text().splitlines()
    except OSError:
        return names
    for line in lines:
        fields = line.split("#", 1)[0].split()
        if len(fields) >= 2 and fields[0].startswith("127."):
            names += [name for name in fields[1:] if name.lower() != "localhost"]
    return names


# --- answers and their classification ------------------------------------------------------------


@pytest.mark.parametrize("status", [200, 201, 202, 204])
def test_2xx_is_delivered(receiver: Receiver, status: int) -> None:
    body = None if status == 204 else {"id": f"m{status}"}

    delivered = deliver_once(receiver, Answer(status, body))

    assert delivered == Delivered(external_id=None if status == 204 else f"m{status}", http_status=status)
    [request] = receiver.received
    assert request.signature_valid
    assert request.webhook_id == "reply_42"


def test_receiver_tells_a_valid_signature_from_one_made_with_another_secret(receiver: Receiver) -> None:
    connector_to(receiver.url, receiver.secret).deliver(REPLY, 2.0)
    connector_to(receiver.url, new_webhook_secret()).deliver(REPLY, 2.0)

    right, wrong = receiver.received
    assert (right.svix_valid, right.spec_valid) == (True, True)
    assert (wrong.svix_valid, wrong.spec_valid) == (False, False)
    assert right.body == wrong.body == {"type": "reply.created", "data": {
        "channel_id": "ch_test", "reply_id": "42", "conversation_id": "conv-1", "in_reply_to": None,
        "content": "Hello", "content_type": "text/plain", "text": "Hello",
        "author": {"name": "Agent", "email": None, "type": None, "photo_url": None}, "attachments": [],
    }}


@pytest.mark.parametrize("status", [408, 429, 500, 501, 502, 503, 504, 599])
def test_408_429_and_5xx_are_transient(receiver: Receiver, status: int) -> None:
    with pytest.raises(TransientDeliveryError) as failure:
        deliver_once(receiver, Answer(status, {"message": "slow down"}))

    assert failure.value.transient is True
    assert f"HTTP {status}" in failure.value.message
    assert "slow down" in failure.value.message


@pytest.mark.parametrize("status", [400, 401, 403, 404, 405, 409, 410, 413, 422, 451])
def test_other_4xx_are_permanent(receiver: Receiver, status: int) -> None:
    with pytest.raises(PermanentDeliveryError) as failure:
        deliver_once(receiver, Answer(status, {"error": "no such conversation"}))

    assert failure.value.transient is False
    assert f"HTTP {status}" in failure.value.message
    assert "no such conversation" in failure.value.message


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_3xx_is_permanent_and_not_followed(receiver: Receiver, status: int) -> None:
    answer = Answer(status, headers={"Location": receiver.url + "/moved"})

    with pytest.raises(PermanentDeliveryError) as failure:
        deliver_once(receiver, answer)

    assert f"HTTP {status}" in failure.value.message
    assert [request.path for request in receiver.received] == ["/hooks/desk"]


@pytest.mark.parametrize(
    ("answer_body", "external_id"),
    [
        ({"id": "msg-1"}, "msg-1"),
        ({"id": 12345, "status": "queued"}, "12345"),
        ({"id": ""}, None),
        ({"id": "   "}, None),
        ({"id": None}, None),
        ({"id": True}, None),
        ({"id": 1.5}, None),
        ({"id": ["msg-1"]}, None),
        ({"data": {"id": "nested"}}, None),
        (["msg-1"], None),
        (b"msg-1", None),
        (b"{not json", None),
        (None, None),
    ],
    ids=repr,
)
def test_external_id_is_read_from_the_answers_id_only(
    receiver: Receiver, answer_body: object, external_id: str | None
) -> None:
    assert deliver_once(receiver, Answer(200, answer_body)) == Delivered(external_id=external_id, http_status=200)


@pytest.mark.parametrize("bad_id", ["x" * 256, "ext\u0000id", "line\nbreak", "   "])
def test_an_id_the_ledger_cannot_hold_as_is_counts_as_no_id(receiver: Receiver, bad_id: str) -> None:
    # A cut or altered id would never match the service's echo of it: better none at all.
    delivered = deliver_once(receiver, Answer(200, {"id": bad_id}))

    assert delivered.external_id is None


def test_receiver_message_with_control_characters_is_cleaned_for_the_agent(receiver: Receiver) -> None:
    with pytest.raises(PermanentDeliveryError) as failure:
        deliver_once(receiver, Answer(400, {"message": "bad\u0000thing\nhere"}))

    assert "bad thing here" in failure.value.message
    assert "\x00" not in failure.value.message


# --- the address policy --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:{port}/",
        "http://[::1]:{port}/",
        "http://localhost:{port}/",
        "http://LOCALHOST.:{port}/",
        "http://app.localhost:{port}/",
        "http://127.1:{port}/",  # a host name that the resolver turns into 127.0.0.1
        "http://0.0.0.0:{port}/",
        "http://10.1.2.3/",
        "http://192.168.0.1/",
        "http://172.16.0.1/",
        "http://169.254.169.254/latest/meta-data/",
        "http://[fe80::1%25eth0]/",
        "http://[::ffff:127.0.0.1]/",
        "http://[fd00::1]/",
        "http://224.0.0.1/",
    ],
)
def test_private_destinations_are_refused_when_not_allowed(url: str) -> None:
    url = url.format(port=closed_port())

    with pytest.raises(AddressRefused):
        check_outbound_url(url, allow_private=False)
    with pytest.raises(PermanentDeliveryError, match="outbound address policy"):
        connector_to(url, allow_private=False).deliver(REPLY, 1.0)


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/hook",
        "file:///etc/passwd",
        "example.com/hook",
        "http:///no-host",
        "https://user:secret@example.com/hook",
        "http://example.com:99999/",
        "http://[::1/",
        "http://a..b/",
    ],
)
def test_malformed_outbound_urls_are_refused_whatever_the_policy(url: str) -> None:
    with pytest.raises(AddressRefused):
        check_outbound_url(url, allow_private=True)
    with pytest.raises(PermanentDeliveryError):
        connector_to(url, allow_private=True).deliver(REPLY, 1.0)


def test_public_ip_and_private_ones_when_allowed_pass_the_policy() -> None:
    check_outbound_url("https://93.184.215.14/hooks", allow_private=False)
    check_outbound_url("http://[2606:4700::1111]:8080/hooks", allow_private=False)
    check_outbound_url("http://127.0.0.1:8080/hooks", allow_private=True)
    check_address("1.1.1.1")
    with pytest.raises(AddressRefused):
        check_address("127.0.0.53")


def test_connect_time_guard_refuses_a_host_name_that_resolves_to_loopback(receiver: Receiver) -> None:
    # 127.1 is not an IP literal to the policy, so only the check on the connected
    # address can stop it (the same path a DNS rebinding attack would take).
    names = ["127.1", *loopback_names_in_hosts_file()]
    for name in names:
        connector = connector_to(f"http://{name}:{receiver.port}/hooks/desk", receiver.secret, allow_private=False)
        with pytest.raises(PermanentDeliveryError, match="outbound address policy") as failure:
            connector.deliver(REPLY, 2.0)
        assert "127." in failure.value.message, name
    assert receiver.received == []
    # The same names do reach the receiver when private destinations are allowed.
    connector_to(f"http://127.1:{receiver.port}/hooks/desk", receiver.secret).deliver(REPLY, 2.0)
    assert len(receiver.received) == 1


def test_address_actually_connected_to_is_checked_even_if_the_lookup_before_said_public(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    # DNS rebinding: the lookup before connecting answered a public address, the
    # connection itself went to 127.0.0.1. Simulated by skipping the first check.
    monkeypatch.setattr(http, "check_resolved", lambda host, port: None)
    connector = connector_to(f"http://127.1:{receiver.port}/hooks/desk", receiver.secret, allow_private=False)

    with pytest.raises(PermanentDeliveryError, match="outbound address policy"):
        connector.deliver(REPLY, 2.0)

    assert receiver.received == []


def test_outbound_http_client_refuses_loopback_at_connect_time(receiver: Receiver) -> None:
    http = make_http_session(allow_private=False)

    with pytest.raises(AddressRefused):
        http.post(receiver.url, data=b"{}", timeout=2)

    assert receiver.received == []


# --- nothing foreign escapes ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("step", "transient"),
    [
        (CLOSE, True),
        (GARBAGE, True),
        (Answer(200, b'{"id": "cut', headers={"Content-Length": "100"}), True),
        (Answer(200, b"not gzip at all", headers={"Content-Encoding": "gzip"}), True),
        (Answer(200, b"", headers={"X-Bad": "a" * 70_000}), True),
    ],
    ids=["closed without answer", "not HTTP", "body cut short", "bad gzip", "header line too long"],
)
def test_broken_answers_become_delivery_errors(receiver: Receiver, step: Step, transient: bool) -> None:
    with pytest.raises(DeliveryError) as failure:
        deliver_once(receiver, step)

    assert not isinstance(failure.value, requests.RequestException)
    assert failure.value.transient is transient
    assert failure.value.message


@pytest.mark.parametrize(
    ("url", "transient"),
    [
        ("http://127.0.0.1:{port}/", True),
        ("https://127.0.0.1:{port}/", True),
        ("http://exa mple.com/", False),
        ("http://a..b/", False),
        ("http://\u2603\u2603..x/", False),
        ("http://127.0.0.1:99999/", False),
    ],
)
def test_unusable_urls_become_delivery_errors(url: str, transient: bool) -> None:
    connector = connector_to(url.format(port=closed_port()), allow_private=True)

    with pytest.raises(DeliveryError) as failure:
        connector.deliver(REPLY, 1.0)

    assert not isinstance(failure.value, requests.RequestException)
    assert failure.value.transient is transient


def test_tls_to_a_plain_http_receiver_is_a_delivery_error(receiver: Receiver) -> None:
    connector = connector_to(f"https://127.0.0.1:{receiver.port}/hooks/desk", receiver.secret)

    with pytest.raises(TransientDeliveryError):
        connector.deliver(REPLY, 2.0)


# --- the hard deadline ---------------------------------------------------------------------------


def delivery_threads() -> set[threading.Thread]:
    return {thread for thread in threading.enumerate() if thread.name == DELIVERY_THREAD}


@pytest.mark.parametrize("trickle", [TRICKLE_BODY, TRICKLE_HEADERS])
def test_trickling_receiver_cannot_hold_a_delivery_past_its_timeout(receiver: Receiver, trickle: str) -> None:
    before = delivery_threads()
    started = time.monotonic()

    with pytest.raises(TransientDeliveryError, match="did not answer within"):
        deliver_once(receiver, trickle, timeout=0.6)

    assert time.monotonic() - started < 0.6 + 0.3
    # The exchange is cut off too: no thread keeps the connection open for the receiver.
    for thread in delivery_threads() - before:
        thread.join(timeout=1.0)
        assert not thread.is_alive(), "the delivery thread outlived its timeout"


# --- pacing around a connector (app.usecases.push.deliver_paced) with the fake ------------------


class Clock:
    """A sleep that records the waits it was asked for and moves a virtual clock, so that
    pacing is checked without waiting (deliver_paced reads time.monotonic for its deadline)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.now = 1000.0
        self.waits: list[float] = []
        monkeypatch.setattr(time, "monotonic", lambda: self.now)

    def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.now += seconds


def test_transient_failures_are_retried_until_success(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock(monkeypatch)
    fake = FakeConnector(TransientDeliveryError("503"), TransientDeliveryError("timeout"), Delivered("ext-9"))

    outcome, attempts = deliver_paced(fake, REPLY, clock.now + 10, sleep=clock.sleep)

    assert outcome == Delivered("ext-9")
    assert [a.outcome for a in attempts] == ["transient", "transient", "sent"]
    assert [a.error for a in attempts] == ["503", "timeout", None]
    assert [reply for reply, _ in fake.deliveries] == [REPLY, REPLY, REPLY]


@pytest.mark.parametrize("drops_repeats", [True, False])
def test_an_unknown_outcome_is_sent_again_only_to_a_service_that_drops_repeats(
    monkeypatch: pytest.MonkeyPatch, drops_repeats: bool
) -> None:
    clock = Clock(monkeypatch)
    fake = FakeConnector(TransientDeliveryError("No answer in time.", outcome_unknown=True), Delivered("ext-9"))

    outcome, attempts = deliver_paced(fake, REPLY, clock.now + 10, sleep=clock.sleep, drops_repeats=drops_repeats)

    if drops_repeats:
        assert outcome == Delivered("ext-9") and len(attempts) == 2
    else:  # SPEC B4: the reply may have arrived; sending it again could deliver it twice
        assert isinstance(outcome, TransientDeliveryError) and len(fake.deliveries) == len(attempts) == 1
        assert outcome.message == "No answer in time. Outcome unknown: not sent again automatically."


def test_a_failure_known_not_to_have_reached_the_service_is_retried_even_without_repeat_dropping(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = Clock(monkeypatch)
    fake = FakeConnector(TransientDeliveryError("Connection refused."), Delivered("ext-9"))

    outcome, attempts = deliver_paced(fake, REPLY, clock.now + 10, sleep=clock.sleep, drops_repeats=False)

    assert outcome == Delivered("ext-9") and len(attempts) == 2


def test_a_receiver_failing_every_time_gets_four_attempts_paced_about_half_1_5_and_3_5_seconds_apart(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = Clock(monkeypatch)
    fake = FakeConnector(*[TransientDeliveryError("HTTP 500", http_status=500) for _ in range(20)])

    outcome, attempts = deliver_paced(fake, REPLY, clock.now + 10, sleep=clock.sleep)

    assert isinstance(outcome, TransientDeliveryError)
    assert len(attempts) == len(fake.deliveries) == 4
    assert [a.http_status for a in attempts] == [500, 500, 500, 500]
    assert len(clock.waits) == 3
    for waited, base in zip(clock.waits, (0.5, 1.5, 3.5), strict=True):
        assert base * 0.8 <= waited <= base * 1.2


def test_waits_are_jittered_so_that_replies_failing_together_do_not_retry_in_step(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first_waits = set()
    for _ in range(5):
        clock = Clock(monkeypatch)
        deliver_paced(FakeConnector(TransientDeliveryError("x"), Delivered("y")), REPLY, clock.now + 10,
                      sleep=clock.sleep)
        first_waits.add(clock.waits[0])
    assert len(first_waits) == 5
    assert all(BACKOFF_SECONDS[0] * (1 - JITTER) <= wait <= BACKOFF_SECONDS[0] * (1 + JITTER) for wait in first_waits)


def test_fewer_attempts_when_the_deadline_is_shorter(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock(monkeypatch)
    fake = FakeConnector(*[TransientDeliveryError(f"failure {n}") for n in range(20)])

    outcome, attempts = deliver_paced(fake, REPLY, clock.now + 2.5, sleep=clock.sleep)

    # 0.5 s then 1.5 s (with at most 20 % jitter) fit in 2.5 s only when the jitter is low:
    # at least two attempts, at most three, and never a wait past the deadline.
    assert 2 <= len(attempts) <= 3
    assert isinstance(outcome, TransientDeliveryError) and outcome.message == f"failure {len(attempts) - 1}"
    assert clock.now <= 1000.0 + 2.5


def test_retry_after_that_fits_in_the_deadline_is_waited_out(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock(monkeypatch)
    fake = FakeConnector(TransientDeliveryError("HTTP 429", http_status=429, retry_after=4.0), Delivered("ok"))

    outcome, attempts = deliver_paced(fake, REPLY, clock.now + 10, sleep=clock.sleep)

    assert outcome == Delivered("ok")
    assert clock.waits == [4.0]
    assert len(attempts) == 2


def test_retry_after_beyond_the_deadline_ends_the_delivery_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock(monkeypatch)
    fake = FakeConnector(TransientDeliveryError("HTTP 503", http_status=503, retry_after=30.0), Delivered("never"))

    outcome, attempts = deliver_paced(fake, REPLY, clock.now + 10, sleep=clock.sleep)

    assert isinstance(outcome, TransientDeliveryError) and outcome.http_status == 503
    assert clock.waits == []
    assert len(attempts) == len(fake.deliveries) == 1


def test_permanent_failure_is_not_retried() -> None:
    rejection = PermanentDeliveryError("HTTP 400", http_status=400)
    fake = FakeConnector(rejection, Delivered("never"))

    outcome, attempts = deliver_paced(fake, REPLY, time.monotonic() + 5)

    assert outcome is rejection
    assert [(a.outcome, a.http_status, a.error) for a in attempts] == [("permanent", 400, "HTTP 400")]
    assert len(fake.deliveries) == 1


class SlowFake(FakeConnector):
    """A fake that uses up its whole timeout (at most `slowness`) before answering."""

    def __init__(self, slowness: float, *outcomes: Delivered | DeliveryError) -> None:
        super().__init__(*outcomes)
        self.slowness = slowness
        self.started: list[float] = []

    def deliver(self, reply: OutboundReply, timeout: float) -> Delivered:
        self.started.append(time.monotonic())
        time.sleep(min(timeout, self.slowness))  # simulates a slow external service
        return super().deliver(reply, timeout)


def test_no_attempt_is_given_time_beyond_the_deadline() -> None:
    fake = SlowFake(0.3, *[TransientDeliveryError("slow") for _ in range(100)])
    started = time.monotonic()
    deadline = started + 1.2

    outcome, attempts = deliver_paced(fake, REPLY, deadline)

    assert isinstance(outcome, TransientDeliveryError)
    assert len(attempts) == 2  # 0.3 s, about 0.5 s of backoff, 0.3 s; no room for 1.5 s more
    assert time.monotonic() - started <= 1.2 + 0.5  # slack for a loaded machine; the bound that matters:
    for began, (_, timeout) in zip(fake.started, fake.deliveries, strict=True):
        assert began + timeout <= deadline + 0.06  # MIN_ATTEMPT_SECONDS of slack at most
    assert all(a.duration_ms >= 250 for a in attempts)
