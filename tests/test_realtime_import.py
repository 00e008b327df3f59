"""Real-time delivery to Desk (SPEC B14, C1.7): new messages imported through the Invoke API of
the Desk emulator (which checks the HASH independently), beside the pull, never instead of it."""

from __future__ import annotations

import json
import random
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import orjson
import pytest
from flask import Flask
from sqlalchemy import select, update

from app.jobs.queue import claim
from app.jobs.worker import Worker
from app.store import queries
from app.store.models import ChannelImport, InboxMessage, Job
from app.usecases import imports
from app.usecases.channels import create_channel
from app.usecases.clock import utcnow
from app.usecases.pull import sync_batch
from tests.conftest import ADMIN_TOKEN
from tests.desk_emulator import (
    AFTER_APPLY_DROP,
    CLOSE_UNAPPLIED,
    EXTENSION_SECRET,
    HTTP_503,
    INNER_500,
    DeskEmulator,
)
from tests.desk_simulator import message
from tests.support import services, signed_headers

ORG = "60001234"


@pytest.fixture
def rt_app(make_app: Callable[..., Flask]) -> Flask:
    """The application with real-time import on (the extension's secret set)."""
    return make_app(DESK_EXTENSION_SECRET=EXTENSION_SECRET)


def new_rt_channel(app: Flask, desk: DeskEmulator, *, pull_first: bool = True) -> dict[str, Any]:
    """A channel whose Desk is the emulator; Desk's first pull records its orgId and securityContext."""
    svc = services(app)
    created = create_channel(svc.db, svc.keyring, svc.connectors, {
        "connector": "webhook", "outbound_url": "http://127.0.0.1:9/unused", "desk_domain": desk.base_url})
    if pull_first:
        assert desk.pull(app, created, org_id=ORG, security_context="ctx-1").accepted
    return created


@pytest.fixture
def rt_channel(rt_app: Flask, desk_emulator: DeskEmulator) -> dict[str, Any]:
    return new_rt_channel(rt_app, desk_emulator)


def send(app: Flask, channel: dict[str, Any], *messages: dict[str, Any]) -> None:
    """Messages in through the channel's signed inbound webhook."""
    raw = orjson.dumps({"messages": list(messages)})
    answer = app.test_client().post(channel["inbound"]["path"], data=raw,
                                    headers=signed_headers(channel["inbound"]["secret"], raw))
    assert answer.status_code == 200, answer.get_json()


def run_due_jobs(app: Flask) -> int:
    """Run every job that is due now, one after another; how many ran."""
    worker = Worker(services(app), recurring=())
    ran = 0
    while worker.work_one():
        ran += 1
    return ran


@contextmanager
def background_worker(app: Flask) -> Iterator[Worker]:
    worker = Worker(services(app), recurring=(), concurrency=3, poll_seconds=0.05)
    thread = threading.Thread(target=worker.run, name="test-worker")
    thread.start()
    try:
        yield worker
    finally:
        worker.stop()
        thread.join(timeout=30)


def import_jobs(app: Flask) -> list[Any]:
    with services(app).db.read() as conn:
        return conn.execute(select(Job).where(Job.kind == imports.JOB_KIND).order_by(Job.id)).all()


def make_imports_due(app: Flask) -> None:
    """Let the backoff pass at once: queued imports and the channel's retry time become due now."""
    now = utcnow()
    with services(app).db.write() as conn:
        conn.execute(update(Job).where(Job.kind == imports.JOB_KIND, Job.status == "queued").values(run_at=now))
        conn.execute(update(ChannelImport).values(retry_at=now))


def show(app: Flask, channel: dict[str, Any]) -> dict[str, Any]:
    """`channel show` through the admin API."""
    answer = app.test_client().get(f"/api/channels/{channel['id']}", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert answer.status_code == 200, answer.get_json()
    return answer.get_json()


def state_seq(state: str | None) -> int | None:
    """The cursor in a deskbridge channelState, read as Desk could not (it is opaque to Desk)."""
    return None if state is None else json.loads(state)["seq"]


# --------------------------------------------------------------------------- the import path


def test_a_message_reaches_desk_by_import_without_a_pull(
    rt_app: Flask, rt_channel: dict[str, Any], desk_emulator: DeskEmulator
) -> None:
    send(rt_app, rt_channel, message("m1", "c1"), message("m2", "c1"))
    (job,) = import_jobs(rt_app)
    assert job.status == "queued" and job.payload == {"channel_id": rt_channel["id"]}

    assert run_due_jobs(rt_app) == 1

    assert set(desk_emulator.tickets) == {"c1"} and set(desk_emulator.threads) == {"m1", "m2"}
    (request,) = desk_emulator.requests
    assert request.hash_valid and request.outcome == "applied"
    assert request.query == {"orgId": ORG}
    assert request.form["securityContext"] == "ctx-1"
    assert request.form["requestURL"] == desk_emulator.import_url
    assert request.form["headers"] == '{"Content-Type":"application/json"}'
    assert state_seq(desk_emulator.channel_state) == 2
    shown = show(rt_app, rt_channel)
    assert (shown["imported_seq"], shown["acked_seq"], shown["pending_seq"], shown["backlog"]) == (2, 0, 0, 0)
    assert shown["import_status"] == "ok" and shown["last_import_at"] is not None
    assert shown["oldest_waiting_at"] is None and len(desk_emulator.pulls) == 1  # the first pull only


def test_the_import_sends_the_pulls_batch_and_desks_next_pull_continues_after_it(
    rt_app: Flask, rt_channel: dict[str, Any], desk_emulator: DeskEmulator
) -> None:
    send(rt_app, rt_channel, message("m1", "c1"), message("m2", "c2"))
    svc = services(rt_app)
    with svc.db.read() as conn:
        pull_batch = sync_batch(conn, svc.keyring, rt_channel["id"], 0, 100).sync
    run_due_jobs(rt_app)

    assert desk_emulator.requests[0].post_body == json.loads(json.dumps(pull_batch))
    following = desk_emulator.pull(rt_app, rt_channel, org_id=ORG, security_context="ctx-1")
    assert following.accepted and state_seq(following.sent_state) == 2 and following.thread_ids == []
    send(rt_app, rt_channel, message("m3", "c1"))
    assert desk_emulator.pull(rt_app, rt_channel, org_id=ORG, security_context="ctx-1").thread_ids == ["m3"]
    assert desk_emulator.created_twice() == {} and desk_emulator.errors == []


def test_a_backlog_over_the_batch_limit_goes_in_several_imports_until_caught_up(
    make_app: Callable[..., Flask], desk_emulator: DeskEmulator
) -> None:
    app = make_app(DESK_EXTENSION_SECRET=EXTENSION_SECRET, PULL_BATCH_LIMIT="2")
    channel = new_rt_channel(app, desk_emulator)
    send(app, channel, *[message(f"m{n}", f"c{n % 2}") for n in range(5)])

    assert run_due_jobs(app) == 1

    assert [len(r.post_body["data"]["threads"]) for r in desk_emulator.requests] == [2, 2, 1]
    assert set(desk_emulator.threads) == {f"m{n}" for n in range(5)}
    assert show(app, channel)["imported_seq"] == 5


def test_a_message_committed_while_an_import_runs_gets_an_import_of_its_own(
    rt_app: Flask, rt_channel: dict[str, Any], desk_emulator: DeskEmulator
) -> None:
    send(rt_app, rt_channel, message("m1"))
    svc = services(rt_app)
    worker = Worker(svc, recurring=())
    job = claim(svc.db, "test-worker")
    assert job is not None and job.kind == imports.JOB_KIND  # running: not yet importing

    send(rt_app, rt_channel, message("m2"))  # queued beside the running one

    assert [j.status for j in import_jobs(rt_app)] == ["running", "queued"]
    worker._run(job)
    run_due_jobs(rt_app)
    assert set(desk_emulator.threads) == {"m1", "m2"} and desk_emulator.created_twice() == {}


# --------------------------------------------------------------------------- when it is off


def test_without_the_extension_secret_nothing_is_queued_and_import_is_off(
    app: Flask, desk_emulator: DeskEmulator
) -> None:
    channel = new_rt_channel(app, desk_emulator)
    send(app, channel, message("m1"))

    assert import_jobs(app) == [] and desk_emulator.requests == []
    assert show(app, channel)["import_status"] == "off"


def test_before_desk_recorded_a_security_context_nothing_is_queued_and_import_is_off(
    rt_app: Flask, desk_emulator: DeskEmulator
) -> None:
    channel = new_rt_channel(rt_app, desk_emulator, pull_first=False)
    send(rt_app, channel, message("m1"))

    assert import_jobs(rt_app) == []
    assert show(rt_app, channel)["import_status"] == "off"
    # Desk's first pull brings the message and records what the next import needs.
    assert desk_emulator.pull(rt_app, channel, org_id=ORG, security_context="ctx-1").thread_ids == ["m1"]
    assert show(rt_app, channel)["import_status"] == "ok"


@pytest.mark.parametrize("change", ["disable", "delete"])
def test_a_job_queued_for_a_channel_disabled_or_deleted_since_ends_without_calling_desk(
    rt_app: Flask, rt_channel: dict[str, Any], desk_emulator: DeskEmulator, change: str
) -> None:
    send(rt_app, rt_channel, message("m1"))
    client = rt_app.test_client()
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    if change == "disable":
        answer = client.post(f"/api/channels/{rt_channel['id']}/disable", headers=auth)
    else:
        answer = client.delete(f"/api/channels/{rt_channel['id']}?confirm={rt_channel['id']}", headers=auth)
    assert answer.status_code in (200, 204), answer.get_json()

    assert run_due_jobs(rt_app) == 1

    assert desk_emulator.requests == []
    assert [j.status for j in import_jobs(rt_app)] == ["done"]


# --------------------------------------------------------------------------- failures


@pytest.mark.parametrize("fault", [HTTP_503, INNER_500, AFTER_APPLY_DROP, CLOSE_UNAPPLIED])
def test_a_transient_failure_is_retried_within_ten_seconds_and_the_pull_still_delivers(
    rt_app: Flask, rt_channel: dict[str, Any], desk_emulator: DeskEmulator, fault: str
) -> None:
    desk_emulator.fail(fault)
    send(rt_app, rt_channel, message("m1"))

    run_due_jobs(rt_app)

    done, retry = import_jobs(rt_app)
    assert done.status == "done" and retry.status == "queued"
    assert timedelta(0) < retry.run_at - utcnow() <= timedelta(seconds=10)
    shown = show(rt_app, rt_channel)
    assert shown["import_status"] == "retrying" and shown["import_error"] and shown["import_retry_at"]
    assert shown["backlog"] == 1  # an import whose answer was lost is not known to have been applied
    # Desk's pull delivers meanwhile (or again, as an update, when the import was applied).
    assert desk_emulator.pull(rt_app, rt_channel, org_id=ORG, security_context="ctx-1").accepted
    assert set(desk_emulator.threads) == {"m1"}

    make_imports_due(rt_app)
    run_due_jobs(rt_app)  # Desk's cursor is not known to have moved before its next pull: m1 again

    assert show(rt_app, rt_channel)["import_status"] == "ok"
    assert desk_emulator.created_twice() == {}
    assert desk_emulator.pull(rt_app, rt_channel, org_id=ORG, security_context="ctx-1").thread_ids == []


def test_failures_in_a_row_back_off_longer_each_time(
    rt_app: Flask, rt_channel: dict[str, Any], desk_emulator: DeskEmulator
) -> None:
    desk_emulator.fail(HTTP_503, times=None)
    send(rt_app, rt_channel, message("m1"))
    delays = []
    for _ in range(3):
        run_due_jobs(rt_app)
        queued = [j for j in import_jobs(rt_app) if j.status == "queued"]
        delays.append((queued[0].run_at - utcnow()).total_seconds())
        make_imports_due(rt_app)

    assert delays[0] <= 10 and delays[0] < delays[1] < delays[2]
    desk_emulator.heal()
    run_due_jobs(rt_app)
    assert set(desk_emulator.threads) == {"m1"} and show(rt_app, rt_channel)["import_status"] == "ok"


def test_while_backing_off_new_messages_do_not_call_desk_before_the_retry_time(
    rt_app: Flask, rt_channel: dict[str, Any], desk_emulator: DeskEmulator
) -> None:
    desk_emulator.fail(HTTP_503)
    send(rt_app, rt_channel, message("m1"))
    run_due_jobs(rt_app)
    calls = len(desk_emulator.requests)

    send(rt_app, rt_channel, message("m2"))  # its job is due now, the channel's retry is not
    run_due_jobs(rt_app)

    assert len(desk_emulator.requests) == calls
    make_imports_due(rt_app)
    run_due_jobs(rt_app)
    assert set(desk_emulator.threads) == {"m1", "m2"}


def test_a_refused_security_context_stops_imports_until_desk_sends_a_new_one(
    rt_app: Flask, rt_channel: dict[str, Any], desk_emulator: DeskEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    desk_emulator.refuse_context("ctx-1")
    send(rt_app, rt_channel, message("m1"))
    run_due_jobs(rt_app)

    shown = show(rt_app, rt_channel)
    assert shown["import_status"] == "refused" and "401" in shown["import_error"]
    assert any("refused" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)
    assert "ctx-1" not in caplog.text
    calls = len(desk_emulator.requests)
    send(rt_app, rt_channel, message("m2"))
    run_due_jobs(rt_app)
    assert len(desk_emulator.requests) == calls  # no call while the same securityContext is recorded
    assert not any(j.status == "queued" for j in import_jobs(rt_app))

    # The pull works throughout, and records Desk's new securityContext.
    assert desk_emulator.pull(rt_app, rt_channel, org_id=ORG, security_context="ctx-2").thread_ids == ["m1", "m2"]
    assert show(rt_app, rt_channel)["import_status"] == "ok"
    send(rt_app, rt_channel, message("m3"))
    run_due_jobs(rt_app)
    assert desk_emulator.requests[-1].form["securityContext"] == "ctx-2"
    assert set(desk_emulator.threads) == {"m1", "m2", "m3"}


# --------------------------------------------------------------------------- one at a time, and crashes


def test_while_another_host_holds_the_channels_import_lease_the_job_waits_and_calls_nothing(
    rt_app: Flask, rt_channel: dict[str, Any], desk_emulator: DeskEmulator
) -> None:
    svc = services(rt_app)
    now = utcnow()
    with svc.db.write() as conn:
        assert queries.take_import_lease(conn, rt_channel["id"], "other-host", now, now + timedelta(seconds=30))
    send(rt_app, rt_channel, message("m1"))

    run_due_jobs(rt_app)

    assert desk_emulator.requests == []
    again = [j for j in import_jobs(rt_app) if j.status == "queued"]
    assert len(again) == 1 and again[0].run_at - utcnow() <= timedelta(seconds=1)


def test_an_import_whose_worker_died_runs_again_once_the_leases_expire(
    rt_app: Flask, rt_channel: dict[str, Any], desk_emulator: DeskEmulator
) -> None:
    svc = services(rt_app)
    send(rt_app, rt_channel, message("m1"))
    job = claim(svc.db, "dead-worker")
    now = utcnow()
    with svc.db.write() as conn:  # it took the channel's lease, then its process was killed
        assert queries.take_import_lease(conn, rt_channel["id"], "dead-holder", now, now + timedelta(seconds=30))
    assert job is not None and run_due_jobs(rt_app) == 0

    past = utcnow() - timedelta(seconds=1)
    with svc.db.write() as conn:
        conn.execute(update(Job).where(Job.id == job.id).values(locked_until=past))
        conn.execute(update(ChannelImport).values(locked_until=past))
    run_due_jobs(rt_app)

    assert set(desk_emulator.threads) == {"m1"}
    assert [j.status for j in import_jobs(rt_app)] == ["done"]


def test_with_a_running_worker_messages_on_many_channels_arrive_by_import_while_no_pull_runs(
    rt_app: Flask
) -> None:
    desks = [DeskEmulator(EXTENSION_SECRET).start() for _ in range(5)]
    try:
        channels = [new_rt_channel(rt_app, desk) for desk in desks]
        with background_worker(rt_app):
            senders = [threading.Thread(target=send, args=(rt_app, channel, message(f"m{n}", "c1")))
                       for n, channel in enumerate(channels)]
            for sender in senders:
                sender.start()
            for sender in senders:
                sender.join()
            for n, desk in enumerate(desks):
                desk.wait_for_threads([f"m{n}"], timeout=10)
        for desk in desks:
            assert len(desk.pulls) == 1 and desk.created_twice() == {}  # the first pull only, before any message
            assert [r.outcome for r in desk.requests] == ["applied"]
    finally:
        for desk in desks:
            desk.close()


# --------------------------------------------------------------------------- races (C1.7)


class CursorCheckingDesk(DeskEmulator):
    """The emulator, checking at every channelState it accepts that it holds every message up to
    that cursor (C1.7: Desk's cursor never passes a message it was not given)."""

    def __init__(self, secret: str, ids_up_to: Callable[[int], list[str]]) -> None:
        super().__init__(secret)
        self.ids_up_to = ids_up_to
        self.cursor_violations: list[tuple[str, int, list[str]]] = []

    def apply(self, sync: Any, source: str = "import") -> tuple[int, dict[str, Any]]:
        with self._changed:  # a re-entrant lock: the check sees the store exactly as this apply left it
            status, answer = super().apply(sync, source)
            state = sync.get("channelState") if isinstance(sync, dict) else None
            if status == 200 and isinstance(state, str):
                seq = state_seq(state)
                missing = [ext_id for ext_id in self.ids_up_to(seq) if ext_id not in self.threads]
                if missing:
                    self.cursor_violations.append((source, seq, missing))
            return status, answer


def wait_for_imports_to_settle(app: Flask, timeout: float = 30.0) -> None:
    """Block until no import job is queued or running (polling the table, as a worker would)."""
    done = threading.Event()
    deadline = utcnow() + timedelta(seconds=timeout)
    while not done.wait(0.05):
        statuses = {j.status for j in import_jobs(app)}
        if not statuses & {"queued", "running"}:
            return
        assert utcnow() < deadline, f"imports still {statuses} after {timeout} s"


@pytest.mark.parametrize("seed", [1, 2])
def test_imports_and_pulls_racing_with_lost_answers_create_nothing_twice_and_lose_nothing(
    rt_app: Flask, monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    monkeypatch.setattr(imports, "FIRST_RETRY_SECONDS", 0.05)
    monkeypatch.setattr(imports, "BUSY_RETRY_SECONDS", 0.05)
    monkeypatch.setattr(imports, "MAX_RETRY_SECONDS", 0.2)
    svc = services(rt_app)
    chance = random.Random(seed)

    def ids_up_to(seq: int) -> list[str]:
        with svc.db.read() as conn:
            return list(conn.execute(select(InboxMessage.ext_id).where(
                InboxMessage.channel_id == channel["id"], InboxMessage.seq <= seq)).scalars())

    desk = CursorCheckingDesk(EXTENSION_SECRET, ids_up_to).start()
    try:
        channel = new_rt_channel(rt_app, desk)
        # Lost answers and failures on the import path, in a fixed random order.
        for fault in chance.choices([AFTER_APPLY_DROP, CLOSE_UNAPPLIED, HTTP_503, AFTER_APPLY_DROP], k=8):
            desk.fail(fault)
        sent: list[str] = []
        inbound_done = threading.Event()

        def inbound() -> None:
            try:
                for batch in range(25):
                    ids = [f"m{batch}-{n}" for n in range(chance.randint(1, 3))]
                    send(rt_app, channel, *[message(i, f"c{chance.randint(0, 4)}") for i in ids])
                    sent.extend(ids)
            finally:
                inbound_done.set()

        with background_worker(rt_app):
            writer = threading.Thread(target=inbound)
            writer.start()
            # Desk pulls while messages arrive and imports run; some answers (or their state) are lost.
            while not inbound_done.is_set():
                desk.pull(rt_app, channel, org_id=ORG, security_context="ctx-1",
                          answer_lost=chance.random() < 0.3, state_lost=chance.random() < 0.2)
            writer.join()
            wait_for_imports_to_settle(rt_app)
        # Whatever the imports did not bring, Desk's next pulls do.
        for _ in range(10):
            if not desk.pull(rt_app, channel, org_id=ORG, security_context="ctx-1").thread_ids:
                break

        assert len(sent) == len(set(sent)) > 25
        assert set(desk.threads) == set(sent), f"missing: {sorted(set(sent) - set(desk.threads))}"
        assert desk.created_twice() == {}
        assert desk.cursor_violations == []
        assert desk.errors == []
        assert any(r.outcome == "applied" for r in desk.requests)  # the import path did carry messages
    finally:
        desk.close()
