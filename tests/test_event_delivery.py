"""SPEC B16 event delivery on both databases, to real receivers on 127.0.0.1 that verify the
Standard Webhooks signatures independently (tests/receiver.py): signing and webhook-id, the retry
schedule, 410 Gone, timeouts, the address policy at delivery, the 5-day rule, and (SPEC C1.8) a
worker killed with SIGKILL mid-delivery losing no event."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from prometheus_client import REGISTRY
from sqlalchemy import delete, insert, select, update

from app.connectors.addresses import AddressRefused, check_address
from app.connectors.http import make_http_session
from app.jobs.worker import Worker
from app.keyring import new_webhook_secret
from app.store.models import EVENT_TYPES, Event, EventAttempt, EventDelivery, Subscription
from app.usecases.clock import utcnow
from app.usecases.event_delivery import deliver_due_events, event_http_session, failing_for_days
from app.usecases.events import event_body, record_events
from tests.conftest import ROOT
from tests.live_server import SECRET_KEY, SERVICE_VARIABLES
from tests.receiver import (
    HANG,
    TRICKLE_BODY,
    Answer,
    Receiver,
    closed_port,
    running_receiver,
    spec_signature_valid,
    svix_signature_valid,
)
from tests.support import services

SECRET = new_webhook_secret()
FAST_SCHEDULE = (0.0, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)

# --- helpers ---------------------------------------------------------------------------------------


def add_subscription(app: Flask, url: str, *, sub_id: str = "sub_1", events: tuple[str, ...] = EVENT_TYPES,
                     secret: str = SECRET, changed_days_ago: float = 0) -> str:
    """A subscription row, as the subscriptions API stores one (the secret encrypted)."""
    svc = services(app)
    changed = utcnow() - timedelta(days=changed_days_ago)
    with svc.db.write() as conn:
        conn.execute(insert(Subscription), {
            "id": sub_id, "url": url, "events": list(events), "channels": [], "description": None,
            "enabled": True, "secret": svc.keyring.encrypt(secret), "disabled_reason": None,
            "created_at": changed, "updated_at": changed,
        })
    return sub_id


def record(app: Flask, count: int = 1, kind: str = "channel.created") -> list[str]:
    """Record `count` events in one transaction; their ids, in order."""
    with services(app).db.write() as conn:
        record_events(conn, [(kind, None, {"n": n}) for n in range(count)])
    with services(app).db.session() as session:
        return list(session.scalars(select(Event.id).where(Event.type == kind).order_by(Event.id)))


def deliveries(app: Flask) -> list[EventDelivery]:
    with services(app).db.session() as session:
        return list(session.scalars(select(EventDelivery).order_by(EventDelivery.id)))


def only_delivery(app: Flask) -> EventDelivery:
    (delivery,) = deliveries(app)
    return delivery


def attempts(app: Flask) -> list[EventAttempt]:
    with services(app).db.session() as session:
        return list(session.scalars(select(EventAttempt).order_by(EventAttempt.id)))


def subscription(app: Flask, sub_id: str = "sub_1") -> Subscription:
    with services(app).db.session() as session:
        return session.get_one(Subscription, sub_id)


def change_deliveries(app: Flask, **values: Any) -> None:
    with services(app).db.write() as conn:
        conn.execute(update(EventDelivery).values(**values))


def make_due(app: Flask) -> None:
    """What the passing of time does to deliveries waiting for their next attempt."""
    change_deliveries(app, next_attempt_at=utcnow() - timedelta(seconds=1))


def deliver(app: Flask, *, limit: int = 50, **options: Any) -> int:
    """One claim, send and record, as a worker's delivery loop does."""
    svc = services(app)
    allow_private = svc.settings.allow_private_outbound
    options.setdefault("schedule", svc.settings.event_retry_schedule)
    http = make_http_session(allow_private=allow_private)
    try:
        return deliver_due_events(svc.db, svc.keyring, http, worker_id="test-worker", limit=limit,
                                  allow_private=allow_private, **options)
    finally:
        http.close()


def wait_until(condition: Callable[[], Any], timeout: float = 30, what: str = "the condition") -> Any:
    """Poll a condition until it holds; fail the test after timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.02)
    pytest.fail(f"{what} did not come true within {timeout} s")


def all_delivered(app: Flask) -> bool:
    return all(delivery.status == "delivered" for delivery in deliveries(app))


def fast_retries(make_app: Callable[..., Flask]) -> Flask:
    """An app whose deliveries are attempted again within moments: the stand-in receiver listens with
    a backlog of 5, so a burst of new connections may find some refused, to be attempted again."""
    return make_app(EVENT_RETRY_SCHEDULE=",".join(str(delay) for delay in FAST_SCHEDULE))


@contextmanager
def running_worker(app: Flask, **options: Any) -> Iterator[Worker]:
    """A Worker delivering events in its threads (no job handlers), stopped on exit."""
    worker = Worker(services(app), handlers={}, recurring=(), concurrency=1, poll_seconds=0.02, **options)
    thread = threading.Thread(target=worker.run, name="test-worker")
    thread.start()
    try:
        yield worker
    finally:
        worker.stop()
        thread.join(timeout=30)
        assert not thread.is_alive()


def counted(outcome: str) -> float:
    return REGISTRY.get_sample_value("deskbridge_event_deliveries_total", {"outcome": outcome}) or 0.0


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A running receiver that knows the subscriptions' secret."""
    running = Receiver(SECRET).start()
    try:
        yield running
    finally:
        running.close()


class LateReceiver:
    """A receiver on a port that refuses connections until start(): a subscriber that is down."""

    def __init__(self) -> None:
        self.port = closed_port()
        self.url = f"http://127.0.0.1:{self.port}/events"
        self.ids: list[str] = []
        self.valid: list[bool] = []
        self._server: ThreadingHTTPServer | None = None

    def start(self) -> None:
        received = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                """Quiet."""

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {name.lower(): value for name, value in self.headers.items()}
                received.ids.append(headers["webhook-id"])
                received.valid.append(spec_signature_valid(SECRET, headers, raw)
                                      and svix_signature_valid(SECRET, headers, raw))
                self.send_response(204)
                self.end_headers()

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


# --- one delivery ------------------------------------------------------------------------------------


def test_an_event_is_delivered_once_signed_with_the_subscription_secret_and_the_event_id_as_webhook_id(
    app: Flask, receiver: Receiver
) -> None:
    add_subscription(app, receiver.url)
    (event_id,) = record(app)

    assert deliver(app) == 1

    (received,) = receiver.wait_for(1)
    assert received.signature_valid and received.svix_valid and received.spec_valid
    assert received.webhook_id == event_id
    assert received.headers["content-type"] == "application/json"
    with services(app).db.session() as session:
        assert received.body == json.loads(json.dumps(event_body(session.get_one(Event, event_id))))
    assert received.body["id"] == event_id and received.body["type"] == "channel.created"
    delivery = only_delivery(app)
    assert (delivery.status, delivery.attempts, delivery.last_status_code) == ("delivered", 1, 200)
    assert delivery.delivered_at is not None and delivery.locked_by is None and delivery.next_attempt_at is None
    (attempt,) = attempts(app)
    assert (attempt.delivery_id, attempt.success, attempt.status_code, attempt.error) == (delivery.id, True, 200, None)
    assert attempt.duration_ms >= 0 and attempt.subscription_id == "sub_1"

    assert deliver(app) == 0  # nothing is sent twice
    assert len(receiver.received) == 1


def test_a_delivery_is_attempted_again_on_the_schedule_with_the_same_webhook_id_until_it_succeeds(
    app: Flask, receiver: Receiver
) -> None:
    add_subscription(app, receiver.url)
    (event_id,) = record(app)
    receiver.script(500, Answer(503, {"message": "busy"}), 200)
    schedule = (0.0, 5.0, 300.0)

    assert deliver(app, schedule=schedule) == 1
    delivery = only_delivery(app)
    assert (delivery.status, delivery.attempts, delivery.last_status_code) == ("retrying", 1, 500)
    assert delivery.last_error == "The subscriber answered HTTP 500."
    assert 4 < (delivery.next_attempt_at - utcnow()).total_seconds() <= 5
    assert deliver(app, schedule=schedule) == 0  # not before its time

    make_due(app)
    assert deliver(app, schedule=schedule) == 1
    delivery = only_delivery(app)
    assert (delivery.status, delivery.attempts) == ("retrying", 2)
    assert 295 < (delivery.next_attempt_at - utcnow()).total_seconds() <= 300

    make_due(app)
    assert deliver(app, schedule=schedule) == 1
    delivery = only_delivery(app)
    assert (delivery.status, delivery.attempts, delivery.last_error) == ("delivered", 3, None)
    requests = receiver.wait_for(3)
    assert [r.webhook_id for r in requests] == [event_id] * 3
    assert all(r.signature_valid for r in requests)
    assert [(a.success, a.status_code) for a in attempts(app)] == [(False, 500), (False, 503), (True, 200)]


def test_a_delivery_whose_schedule_is_spent_is_failed_and_not_attempted_again(app: Flask, receiver: Receiver) -> None:
    add_subscription(app, receiver.url)
    record(app)
    receiver.script(500, 500, 500, 200)
    schedule = (0.0, 0.0, 0.0)
    failed_before = counted("failed")

    for _ in schedule:
        assert deliver(app, schedule=schedule) == 1

    delivery = only_delivery(app)
    assert (delivery.status, delivery.attempts, delivery.last_status_code) == ("failed", 3, 500)
    assert delivery.next_attempt_at is None
    assert deliver(app, schedule=schedule) == 0
    assert len(receiver.received) == 3
    assert len(attempts(app)) == 3
    assert counted("failed") == failed_before + 1


def test_a_delivery_deleted_while_it_is_sent_does_not_keep_the_others_from_being_recorded(
    app: Flask, receiver: Receiver
) -> None:
    add_subscription(app, receiver.url)
    doomed, kept = record(app, 2)

    def delete_delivery(received: Any) -> None:
        if received.webhook_id == doomed:  # as an operator deleting it from the failures meanwhile
            with services(app).db.write() as conn:
                conn.execute(delete(EventDelivery).where(EventDelivery.event_id == doomed))

    receiver.script(*[Answer(500, before=delete_delivery)] * 2)

    assert deliver(app) == 2

    (delivery,) = deliveries(app)
    assert (delivery.event_id, delivery.status, delivery.attempts) == (kept, "retrying", 1)
    assert [(a.delivery_id, a.status_code) for a in attempts(app)] == [(delivery.id, 500)]


# --- receivers that are down, gone, slow --------------------------------------------------------------


def test_a_receiver_answering_errors_for_a_while_gets_every_event_with_the_same_webhook_id_on_every_attempt(
    make_app: Callable[..., Flask], receiver: Receiver
) -> None:
    app = fast_retries(make_app)
    add_subscription(app, receiver.url)
    receiver.script(*[500] * 15)
    event_ids = record(app, 10)

    with running_worker(app):
        wait_until(lambda: all_delivered(app), what="every event delivered")

    requests = receiver.received
    assert len(requests) >= 25  # 15 failures, then each event once
    assert all(r.signature_valid for r in requests)
    assert {r.webhook_id for r in requests} == set(event_ids)
    assert all(r.webhook_id == r.body["id"] for r in requests)
    assert [a.status_code for a in attempts(app)].count(500) == 15
    assert sum(d.attempts for d in deliveries(app)) == len(attempts(app))


def test_a_receiver_that_refuses_connections_for_a_while_receives_every_event_once_it_is_back(
    make_app: Callable[..., Flask]
) -> None:
    app = fast_retries(make_app)
    late = LateReceiver()
    add_subscription(app, late.url)
    event_ids = record(app, 5)
    try:
        with running_worker(app):
            wait_until(lambda: all(d.attempts >= 2 for d in deliveries(app)), what="two refused attempts each")
            assert all(d.status == "retrying" for d in deliveries(app))
            assert "could not be reached" in deliveries(app)[0].last_error
            late.start()
            wait_until(lambda: all_delivered(app), what="every event delivered")
    finally:
        late.close()
    assert sorted(late.ids) == sorted(event_ids)
    assert all(late.valid)


def test_410_gone_disables_the_subscription_at_once_and_fails_its_waiting_deliveries(
    app: Flask, receiver: Receiver
) -> None:
    add_subscription(app, receiver.url, sub_id="sub_gone", events=("channel.created",))
    add_subscription(app, receiver.url, sub_id="sub_other", events=("channel.updated",))
    gone_events = record(app, 3, "channel.created")
    other_events = record(app, 2, "channel.updated")
    receiver.script(Answer(410, {"message": "no such hook"}))

    assert deliver(app, limit=1) == 1  # the oldest delivery: one of sub_gone's

    gone = subscription(app, "sub_gone")
    assert (gone.enabled, gone.disabled_reason) == (False, "gone")
    mine = [d for d in deliveries(app) if d.subscription_id == "sub_gone"]
    assert [d.status for d in mine] == ["failed"] * 3
    assert sorted(d.attempts for d in mine) == [0, 0, 1]
    assert all("410" in d.last_error for d in mine)

    assert deliver(app) == 2  # only the other subscription's
    assert sorted(r.webhook_id for r in receiver.received[1:]) == other_events
    assert receiver.received[0].webhook_id in gone_events
    assert subscription(app, "sub_other").enabled


@pytest.mark.parametrize("step", [HANG, TRICKLE_BODY, "late-200"])
def test_a_receiver_that_does_not_answer_in_time_is_cut_off_and_the_attempt_counts_as_failed(
    app: Flask, receiver: Receiver, step: str
) -> None:
    add_subscription(app, receiver.url)
    record(app)
    gate = receiver.gate()
    receiver.script(Answer(200, hold=gate) if step == "late-200" else step)

    started = time.monotonic()
    assert deliver(app, timeout=0.5, schedule=(0.0, 60.0)) == 1
    elapsed = time.monotonic() - started
    gate.set()  # a 2xx that comes now is too late

    assert 0.5 <= elapsed < 3
    delivery = only_delivery(app)
    assert (delivery.status, delivery.attempts, delivery.last_status_code) == ("retrying", 1, None)
    assert "did not answer" in delivery.last_error
    (attempt,) = attempts(app)
    assert not attempt.success and 500 <= attempt.duration_ms < 3000


def test_a_hanging_subscriber_does_not_hold_up_another_subscribers_deliveries(
    app: Flask, receiver: Receiver
) -> None:
    with running_worker(app, event_senders=8, event_timeout_seconds=10), running_receiver(SECRET) as hanging:
        hanging.script(*[HANG] * 40)
        add_subscription(app, hanging.url, sub_id="sub_slow", events=("channel.created",))
        add_subscription(app, receiver.url, sub_id="sub_fast", events=("channel.updated",))
        record(app, 40, "channel.created")
        fast_events = record(app, 20, "channel.updated")

        receiver.wait_for(20, timeout=5)
        assert len(hanging.received) <= 4  # half the senders at most
    assert sorted(r.webhook_id for r in receiver.received) == fast_events


# --- disabled subscriptions, the address policy, the 5-day rule ------------------------------------------


def test_deliveries_of_a_disabled_subscription_are_failed_without_being_sent(app: Flask, receiver: Receiver) -> None:
    add_subscription(app, receiver.url)
    record(app, 2)
    with services(app).db.write() as conn:
        conn.execute(update(Subscription).values(enabled=False, disabled_reason="operator"))

    assert deliver(app) == 0

    assert receiver.received == []
    assert [(d.status, d.attempts) for d in deliveries(app)] == [("failed", 0), ("failed", 0)]
    assert all("disabled" in d.last_error for d in deliveries(app))
    assert attempts(app) == []


def test_the_address_policy_is_checked_again_at_delivery(make_app: Callable[..., Flask], receiver: Receiver) -> None:
    app = make_app(ALLOW_PRIVATE_OUTBOUND="false")
    add_subscription(app, receiver.url)  # stored while private receivers were allowed
    record(app)

    assert deliver(app) == 1

    assert receiver.received == []
    delivery = only_delivery(app)
    assert (delivery.status, delivery.attempts) == ("failed", 1)  # the same URL would be refused again
    assert delivery.last_error.startswith("Refused by the outbound address policy")
    assert "127.0.0.1" in delivery.last_error


def test_a_host_name_that_resolves_to_a_private_address_is_refused_where_it_connects(
    make_app: Callable[..., Flask], receiver: Receiver
) -> None:
    host = socket.gethostname()
    try:
        address = socket.getaddrinfo(host, receiver.port, proto=socket.IPPROTO_TCP)[0][4][0]
        check_address(address)
    except (OSError, AddressRefused):
        pass  # it resolves to a private address: what this test needs
    else:
        pytest.skip(f"{host} resolves to the public address {address}")
    app = make_app(ALLOW_PRIVATE_OUTBOUND="false")
    add_subscription(app, f"http://{host}:{receiver.port}/events")
    record(app)
    svc = services(app)

    http = event_http_session(allow_private=False)
    try:
        deliver_due_events(svc.db, svc.keyring, http, worker_id="test-worker", limit=10, allow_private=False,
                           schedule=svc.settings.event_retry_schedule)
    finally:
        http.close()

    assert receiver.received == []
    delivery = only_delivery(app)
    assert (delivery.status, delivery.attempts) == ("failed", 1)
    assert delivery.last_error.startswith("Refused by the outbound address policy")


def add_attempt(app: Flask, delivery_id: int, days_ago: float, success: bool) -> None:
    with services(app).db.write() as conn:
        conn.execute(insert(EventAttempt), {
            "delivery_id": delivery_id, "subscription_id": "sub_1", "started_at": utcnow() - timedelta(days=days_ago),
            "duration_ms": 10, "status_code": 200 if success else 500, "success": success,
            "error": None if success else "The subscriber answered HTTP 500.",
        })


# (subscription last changed, attempts before this one as (days ago, success)) -> disabled
FIVE_DAY_CASES = {
    "failing for 6 days": (10, [(9, True), (6, False), (3, False), (1, False)], True),
    "failing since its creation 6 days ago": (6, [(5.9, False), (2, False)], True),
    "a success 4 days ago": (10, [(6, False), (4, True), (1, False)], False),
    "failing for 4 days only": (10, [(6, True), (4, False), (1, False)], False),
    "enabled again a day ago": (1, [(6, False), (3, False)], False),
    "no attempt before 5 days ago": (10, [(4, False), (1, False)], False),
}


@pytest.mark.parametrize("case", FIVE_DAY_CASES)
def test_a_subscription_whose_deliveries_all_failed_for_5_days_is_disabled(
    app: Flask, receiver: Receiver, case: str
) -> None:
    changed_days_ago, history, disabled = FIVE_DAY_CASES[case]
    add_subscription(app, receiver.url, changed_days_ago=changed_days_ago)
    record(app, 2)
    first, waiting = deliveries(app)
    for days_ago, success in history:
        add_attempt(app, first.id, days_ago, success)
    with services(app).db.write() as conn:
        conn.execute(update(EventDelivery).where(EventDelivery.id == waiting.id)
                     .values(status="retrying", attempts=1, next_attempt_at=utcnow() + timedelta(hours=1)))
    receiver.script(500)

    assert deliver(app) == 1

    sub = subscription(app)
    if disabled:
        assert (sub.enabled, sub.disabled_reason) == (False, "failing")
        assert [d.status for d in deliveries(app)] == ["failed", "failed"]
        assert "5 days" in deliveries(app)[1].last_error
    else:
        assert (sub.enabled, sub.disabled_reason) == (True, None)
        assert [d.status for d in deliveries(app)] == ["retrying", "retrying"]


def test_the_5_day_rule_reads_attempts_of_that_subscription_only(app: Flask) -> None:
    add_subscription(app, "http://127.0.0.1:9/a", changed_days_ago=10)
    add_subscription(app, "http://127.0.0.1:9/b", sub_id="sub_2", changed_days_ago=10)
    record(app)
    first = deliveries(app)[0]
    add_attempt(app, first.id, 6, False)
    with services(app).db.write() as conn:
        conn.execute(insert(EventAttempt), {
            "delivery_id": first.id, "subscription_id": "sub_2", "started_at": utcnow() - timedelta(days=1),
            "duration_ms": 1, "status_code": 200, "success": True, "error": None,
        })
        assert failing_for_days(conn, "sub_1", utcnow())
        assert not failing_for_days(conn, "sub_2", utcnow())


# --- logs and metrics --------------------------------------------------------------------------------------


def test_a_failed_attempt_is_logged_at_warning_with_its_reason_and_no_secret_or_content(
    app: Flask, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    add_subscription(app, receiver.url)
    with services(app).db.write() as conn:
        record_events(conn, [("message.received", None, {"message": {"content": "very private words"}})])
    receiver.script(Answer(502, {"message": "upstream says something"}))
    retrying_before, delivered_before = counted("retrying"), counted("delivered")

    with caplog.at_level(logging.WARNING, logger="app.usecases.event_delivery"):
        deliver(app)

    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    text = warning.getMessage()
    assert "HTTP 502" in text and "attempted again" in text and "sub_1" in text
    assert "private words" not in text and SECRET not in text and SECRET.removeprefix("whsec_") not in text
    assert (warning.subscription_id, warning.attempt, warning.status_code) == ("sub_1", 1, 502)
    assert counted("retrying") == retrying_before + 1

    make_due(app)
    deliver(app)
    assert counted("delivered") == delivered_before + 1
    assert (REGISTRY.get_sample_value("deskbridge_event_delivery_duration_seconds_count") or 0) >= 2


# --- the worker ----------------------------------------------------------------------------------------------


def test_the_worker_delivers_events_with_no_other_process_and_stops_cleanly(
    make_app: Callable[..., Flask], receiver: Receiver
) -> None:
    app = fast_retries(make_app)
    add_subscription(app, receiver.url)
    gate = receiver.gate()
    receiver.script(Answer(200, hold=gate))

    with running_worker(app) as worker:
        if not services(app).db.is_sqlite:
            assert worker.listening.wait(timeout=10)
        event_ids = record(app, 30)
        receiver.wait_for(1)
        gate.set()
        wait_until(lambda: all_delivered(app), what="every event delivered")
        last = record(app, 1, "channel.deleted")
        wait_until(lambda: all_delivered(app), what="the worker still delivering")
    assert {r.webhook_id for r in receiver.received} == set(event_ids + last)
    assert all(r.signature_valid for r in receiver.received)
    assert all(d.locked_by is None for d in deliveries(app))


def test_a_stopping_worker_records_the_delivery_it_was_sending_and_claims_no_more(
    app: Flask, receiver: Receiver
) -> None:
    add_subscription(app, receiver.url)
    gate = receiver.gate()
    receiver.script(Answer(200, hold=gate))
    record(app)

    with running_worker(app) as worker:
        receiver.wait_for(1)
        worker.stop()
        later = record(app, 1, "channel.deleted")
        gate.set()
    first, second = deliveries(app)
    assert (first.status, first.attempts) == ("delivered", 1)
    assert (second.event_id, second.status, second.attempts) == (later[0], "pending", 0)
    assert len(receiver.received) == 1


def test_two_workers_deliver_each_event_once(app: Flask, receiver: Receiver) -> None:
    add_subscription(app, receiver.url)

    with running_worker(app, event_senders=4), running_worker(app, event_senders=4):
        event_ids = record(app, 60)
        receiver.wait_for(60)
        wait_until(lambda: all_delivered(app), what="every event delivered")

    assert sorted(r.webhook_id for r in receiver.received) == sorted(event_ids)
    assert {d.attempts for d in deliveries(app)} == {1}


def test_a_worker_refuses_an_attempt_timeout_its_lease_would_not_outlast(app: Flask) -> None:
    with pytest.raises(ValueError, match="shorter than the lease"):
        Worker(services(app), event_timeout_seconds=15, event_lease_seconds=10)


DELIVERING_WORKER = """
import sys

from app import create_app
from app.jobs.worker import Worker

lease, timeout = float(sys.argv[1]), float(sys.argv[2])
app = create_app()
Worker(app.extensions["deskbridge"], handlers={}, recurring=(), poll_seconds=0.05, event_lease_seconds=lease,
       event_timeout_seconds=timeout).run()
"""


@pytest.fixture
def spawn(database_url: str, tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start worker processes on the test's database; any left running are killed after the test."""
    processes: list[subprocess.Popen[bytes]] = []
    env = {key: value for key, value in os.environ.items() if key not in SERVICE_VARIABLES}
    env.update(DATABASE_URL=database_url, INSTANCE_PATH=str(tmp_path / "instance"), SECRET_KEY=SECRET_KEY,
               ALLOW_PRIVATE_OUTBOUND="true")

    def start(*command: str) -> subprocess.Popen[bytes]:
        log = (tmp_path / f"process-{len(processes)}.log").open("wb")
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        processes.append(process)
        return process

    yield start
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_a_worker_killed_mid_delivery_loses_no_event_it_is_sent_again_after_the_lease_with_the_same_webhook_id(
    app: Flask, receiver: Receiver, spawn: Callable[..., subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    add_subscription(app, receiver.url)
    (event_id,) = record(app)
    arrivals: list[datetime] = []
    receiver.script(HANG, Answer(204, before=lambda received: arrivals.append(utcnow())))
    lease, timeout = "3", "2"

    first = spawn(sys.executable, "-c", DELIVERING_WORKER, lease, timeout)
    receiver.wait_for(1, timeout=30)
    held = only_delivery(app)
    assert held.locked_by is not None and held.status == "pending"
    first.send_signal(signal.SIGKILL)
    first.wait()
    spawn(sys.executable, "-c", DELIVERING_WORKER, lease, timeout)

    wait_until(lambda: only_delivery(app).status == "delivered", timeout=60,
               what=f"the event delivered by the second worker:\n{(tmp_path / 'process-1.log').read_text()}")
    requests = receiver.received
    assert [r.webhook_id for r in requests] == [event_id, event_id]
    assert all(r.signature_valid for r in requests)
    assert arrivals[0] >= held.locked_until  # not before the killed worker's lease ended
    delivery = only_delivery(app)
    assert delivery.attempts == 1  # the killed worker's attempt left no record: it was made again in full
    assert [(a.success, a.status_code) for a in attempts(app)] == [(True, 204)]
