"""SPEC B17 background work on both databases: the job table (enqueue in the caller's transaction,
unique keys, claims under a lease, backoff), the worker, and the job handlers of SPEC B10
(reply retries, the sweeper of abandoned replies, channel health, retention)."""

from __future__ import annotations

import json
import logging
import threading
from collections import Counter
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import insert, select, update

from app.connectors.fake import FakeConnector, FakeWebhookKind
from app.jobs import handlers, queue
from app.jobs.handlers import OUTCOME_UNKNOWN
from app.jobs.worker import RECURRING, Worker
from app.services import Services
from app.store.models import Channel, ChannelHealth, InboxMessage, Job, Reply, ReplyAttempt
from app.usecases.channels import create_channel
from app.usecases.clock import utcnow
from tests.receiver import Answer, Receiver
from tests.support import desk_pull_body, desk_push_body, services, signed_headers

# --- helpers ---------------------------------------------------------------------------------------


def add_job(app: Flask, kind: str, payload: Mapping[str, Any] | None = None, **options: Any) -> bool:
    with services(app).db.write() as conn:
        return queue.enqueue(conn, kind, payload or {}, **options)


def all_jobs(app: Flask) -> list[Job]:
    with services(app).db.session() as session:
        return list(session.scalars(select(Job).order_by(Job.id)))


def only_job(app: Flask) -> Job:
    (job,) = all_jobs(app)
    return job


def change_job(app: Flask, job_id: int, **values: Any) -> None:
    with services(app).db.write() as conn:
        conn.execute(update(Job).where(Job.id == job_id).values(**values))


def make_due(app: Flask, job_id: int) -> None:
    """Let a job waiting for its backoff run now (no sleeping in tests)."""
    change_job(app, job_id, run_at=utcnow() - timedelta(seconds=1))


def expire_lease(app: Flask, job_id: int) -> None:
    """What the passing of time does to the lease of a worker that died."""
    change_job(app, job_id, locked_until=utcnow() - timedelta(seconds=1))


def worker(app: Flask, handlers_by_kind: Mapping[str, Any] | None = None, **options: Any) -> Worker:
    return Worker(services(app), handlers=handlers_by_kind, recurring=(), **options)


def ledger(app: Flask) -> Reply:
    with services(app).db.session() as session:
        return session.scalars(select(Reply)).one()


def seconds_from_now(moment: datetime) -> float:
    return (moment - utcnow()).total_seconds()


# --- the job table -----------------------------------------------------------------------------


def test_a_job_enqueued_in_a_transaction_that_rolls_back_does_not_exist(app: Flask) -> None:
    class Abort(Exception):
        pass

    with pytest.raises(Abort), services(app).db.write() as conn:
        assert queue.enqueue(conn, "channels.health", {}, unique_key="health")
        raise Abort

    assert all_jobs(app) == []
    assert add_job(app, "channels.health", unique_key="health")  # the key was never taken


def test_a_unique_key_allows_one_queued_or_running_job_at_a_time(app: Flask) -> None:
    assert add_job(app, "reply.retry", {"ledger_id": 1}, unique_key="reply:1")
    assert not add_job(app, "reply.retry", {"ledger_id": 1}, unique_key="reply:1")
    assert add_job(app, "reply.retry", {"ledger_id": 2}, unique_key="reply:2")
    assert add_job(app, "reply.retry", {"ledger_id": 1})  # no key, no limit
    assert len(all_jobs(app)) == 3

    claimed = queue.claim(services(app).db, "w1", kinds={"reply.retry"})
    assert claimed is not None and claimed.unique_key == "reply:1"
    assert not add_job(app, "reply.retry", {"ledger_id": 1}, unique_key="reply:1")  # running holds it too

    assert queue.complete(services(app).db, claimed)
    assert add_job(app, "reply.retry", {"ledger_id": 1}, unique_key="reply:1")  # done frees it


def test_a_claim_takes_the_longest_due_job_under_a_lease_and_counts_the_attempt(app: Flask) -> None:
    db = services(app).db
    add_job(app, "later", run_at=utcnow() + timedelta(minutes=5))
    add_job(app, "first", {"n": 1}, run_at=utcnow() - timedelta(seconds=10))
    add_job(app, "second", run_at=utcnow() - timedelta(seconds=5))

    claimed = queue.claim(db, "host:1/0", lease_seconds=20)

    assert claimed is not None
    assert (claimed.kind, claimed.payload, claimed.attempts, claimed.locked_by) == ("first", {"n": 1}, 1, "host:1/0")
    row = next(job for job in all_jobs(app) if job.id == claimed.id)
    assert (row.status, row.locked_by, row.attempts) == ("running", "host:1/0", 1)
    assert row.locked_until is not None and 18 < seconds_from_now(row.locked_until) <= 20
    assert queue.claim(db, "host:1/0", kinds={"first", "later"}) is None  # later is not due yet
    assert queue.claim(db, "host:1/0").kind == "second"


def test_leases_last_at_most_a_minute(app: Flask) -> None:
    add_job(app, "slow")

    queue.claim(services(app).db, "w1", lease_seconds=3600)

    assert seconds_from_now(only_job(app).locked_until) <= queue.MAX_LEASE_SECONDS


def test_concurrent_claimers_run_every_job_exactly_once(app: Flask) -> None:
    db = services(app).db
    with db.write() as conn:
        for n in range(200):
            queue.enqueue(conn, "count", {"n": n})
    runs: list[int] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def claimer(name: str) -> None:
        try:
            while (job := queue.claim(db, name, lease_seconds=30)) is not None:
                with lock:
                    runs.append(job.payload["n"])
                assert queue.complete(db, job)
        except BaseException as exc:  # reported below: a thread's failure must fail the test
            errors.append(exc)

    threads = [threading.Thread(target=claimer, args=(f"claimer-{n}",)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert errors == []
    assert sorted(runs) == list(range(200))
    assert {job.status for job in all_jobs(app)} == {"done"}
    assert {job.attempts for job in all_jobs(app)} == {1}


def test_a_heartbeat_extends_the_lease_only_for_its_holder(app: Flask) -> None:
    db = services(app).db
    add_job(app, "slow")
    claimed = queue.claim(db, "w1", lease_seconds=5)

    assert queue.heartbeat(db, claimed.id, "w1", lease_seconds=50)
    assert seconds_from_now(only_job(app).locked_until) > 45
    assert not queue.heartbeat(db, claimed.id, "w2", lease_seconds=50)


def test_a_job_whose_lease_expired_is_claimed_again_and_its_old_holder_cannot_record_a_result(app: Flask) -> None:
    db = services(app).db
    add_job(app, "slow")
    stale = queue.claim(db, "w1", lease_seconds=30)
    assert queue.claim(db, "w2") is None  # the lease holds

    expire_lease(app, stale.id)
    taken = queue.claim(db, "w2", lease_seconds=30)

    assert taken is not None and (taken.id, taken.attempts) == (stale.id, 2)
    assert not queue.heartbeat(db, stale.id, "w1")
    assert not queue.complete(db, stale)
    assert queue.fail(db, stale, "too late") is None
    assert (only_job(app).status, only_job(app).locked_by) == ("running", "w2")
    assert queue.complete(db, taken)
    assert (only_job(app).status, only_job(app).last_error) == ("done", None)


# --- the worker ------------------------------------------------------------------------------------


def test_a_failing_job_is_retried_with_growing_backoff_then_kept_as_failed(
    app: Flask, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(svc: Services, payload: Mapping[str, Any]) -> None:
        raise RuntimeError("the service is down")

    run = worker(app, {"broken": broken})
    add_job(app, "broken", max_attempts=3)
    delays = []
    with caplog.at_level(logging.WARNING, logger="app.jobs"):
        for _ in range(2):
            assert run.work_one()
            job = only_job(app)
            assert (job.status, job.last_error) == ("queued", "RuntimeError: the service is down")
            assert job.locked_by is None and job.locked_until is None
            delays.append(seconds_from_now(job.run_at))
            assert not run.work_one()  # not before its backoff
            make_due(app, job.id)
        assert run.work_one()

    job = only_job(app)
    assert (job.status, job.attempts, job.last_error) == ("failed", 3, "RuntimeError: the service is down")
    assert job.finished_at is not None
    assert 3.5 < delays[0] < 6.5 and 7.5 < delays[1] < 12.5  # about 5 s, then 10 s, with jitter
    assert not run.work_one()  # a failed job stays for inspection and is not run again
    levels = [(record.levelname, record.job) for record in caplog.records if hasattr(record, "job")]
    assert levels == [("WARNING", "broken"), ("WARNING", "broken"), ("ERROR", "broken")]


def test_backoff_grows_exponentially_with_jitter_up_to_a_cap() -> None:
    for attempts, nominal in ((1, 5), (2, 10), (3, 20), (4, 40)):
        assert nominal * 0.8 <= queue.backoff_seconds(attempts) <= nominal * 1.2
    assert queue.backoff_seconds(40) <= queue.BACKOFF_MAX_SECONDS * 1.2


def test_a_job_whose_worker_died_during_its_last_attempt_fails_without_running_again(app: Flask) -> None:
    ran = []
    run = worker(app, {"fragile": lambda svc, payload: ran.append(payload)})
    add_job(app, "fragile", max_attempts=1)
    dead = queue.claim(services(app).db, "dead-worker", kinds={"fragile"})
    expire_lease(app, dead.id)

    assert run.work_one()

    job = only_job(app)
    assert (job.status, job.attempts, ran) == ("failed", 2, [])
    assert "worker stopped" in job.last_error


def test_recurring_jobs_are_queued_once_however_many_workers_schedule_them(app: Flask) -> None:
    first, second = Worker(services(app)), Worker(services(app))

    first.schedule_recurring()
    second.schedule_recurring()

    jobs = all_jobs(app)
    assert sorted(job.kind for job in jobs) == sorted(recurring.kind for recurring in RECURRING)
    assert {job.unique_key for job in jobs} == {f"recurring:{recurring.kind}" for recurring in RECURRING}
    assert all(job.run_at <= utcnow() for job in jobs)  # each runs at once the first time


def test_a_completed_recurring_job_queues_its_next_run_in_the_same_transaction(app: Flask) -> None:
    ran = []
    run = Worker(services(app), handlers={"replies.sweep": lambda svc, payload: ran.append(1)})
    run.schedule_recurring()

    assert run.work_one()
    run.schedule_recurring()  # finds the next run queued: adds nothing

    done, following = all_jobs(app)
    assert (done.status, following.status, ran) == ("done", "queued", [1])
    assert following.unique_key == done.unique_key == "recurring:replies.sweep"
    assert 13 < seconds_from_now(following.run_at) <= 15


def test_a_stopped_worker_ends_at_once_when_idle(app: Flask) -> None:
    run = worker(app, {"count": lambda svc, payload: None}, concurrency=2, poll_seconds=30)
    thread = threading.Thread(target=run.run)
    thread.start()

    run.stop()
    thread.join(timeout=5)

    assert not thread.is_alive()


def test_a_worker_runs_queued_jobs_in_its_threads_until_stopped(app: Flask) -> None:
    done = threading.Semaphore(0)
    seen: list[int] = []

    def count(svc: Services, payload: Mapping[str, Any]) -> None:
        seen.append(payload["n"])
        done.release()

    run = worker(app, {"count": count}, concurrency=3, poll_seconds=0.05)
    thread = threading.Thread(target=run.run)
    thread.start()
    try:
        for n in range(10):
            add_job(app, "count", {"n": n})
        for _ in range(10):
            assert done.acquire(timeout=10)
    finally:
        run.stop()
        thread.join(timeout=10)
    assert sorted(seen) == list(range(10))
    assert not thread.is_alive()


# --- reply.retry and the sweeper (SPEC B10) ------------------------------------------------------


def test_a_retry_of_a_deleted_ledger_entry_completes_quietly(app: Flask) -> None:
    add_job(app, "reply.retry", {"ledger_id": 987654}, unique_key="reply:987654")

    assert worker(app).work_one()

    assert (only_job(app).status, only_job(app).last_error) == ("done", None)


def test_a_retry_of_a_reply_being_delivered_right_now_runs_again_after_the_deadline(
    app: Flask, client: FlaskClient, hooked: dict[str, Any], receiver: Receiver
) -> None:
    receiver.script(Answer(400, {"message": "closed"}))
    client.post("/desk/push?orgId=1", json=desk_push_body(hooked))
    entry = ledger(app)
    with services(app).db.write() as conn:  # another process's delivery has just started
        conn.execute(update(Reply).where(Reply.id == entry.id).values(status="pending", attempt_started_at=utcnow()))
    add_job(app, "reply.retry", {"ledger_id": entry.id}, unique_key=f"reply:{entry.id}")

    assert worker(app).work_one()

    job = only_job(app)
    assert (job.status, job.last_error) == ("queued", "the reply is being delivered right now")
    deadline = services(app).settings.push_deadline_seconds
    assert deadline < seconds_from_now(job.run_at) <= deadline + 1
    assert len(receiver.received) == 1


def crash_mid_delivery(app: Flask, ledger_id: int, seconds_ago: float) -> None:
    """Leave an entry as a process that died during its delivery leaves it."""
    started = utcnow() - timedelta(seconds=seconds_ago)
    with services(app).db.write() as conn:
        conn.execute(update(Reply).where(Reply.id == ledger_id)
                     .values(status="pending", external_id=None, sent_at=None, attempt_started_at=started))


def test_the_sweeper_delivers_a_reply_a_crash_left_pending_with_the_same_webhook_id(
    app: Flask, client: FlaskClient, hooked: dict[str, Any], receiver: Receiver
) -> None:
    receiver.script(Answer(200, {"id": "ext-1"}), Answer(200, {"id": "ext-1"}))
    assert client.post("/desk/push?orgId=1", json=desk_push_body(hooked)).status_code == 200
    entry = ledger(app)
    deadline = services(app).settings.push_deadline_seconds
    crash_mid_delivery(app, entry.id, seconds_ago=deadline + 2)
    run = worker(app)

    handlers.sweep_replies(services(app), {})
    handlers.sweep_replies(services(app), {})  # the next sweep finds it queued already

    job = only_job(app)
    assert (job.kind, job.payload, job.unique_key) == ("reply.retry", {"ledger_id": entry.id}, f"reply:{entry.id}")
    assert run.work_one()
    first, second = receiver.wait_for(2)
    assert first.webhook_id == second.webhook_id and second.signature_valid
    row = ledger(app)
    assert (row.status, row.external_id) == ("sent", "ext-1")
    assert only_job(app).status == "done"


def test_the_sweeper_leaves_a_reply_whose_delivery_may_still_be_running(
    app: Flask, client: FlaskClient, hooked: dict[str, Any], receiver: Receiver
) -> None:
    receiver.script(Answer(200, {"id": "ext-1"}))
    client.post("/desk/push?orgId=1", json=desk_push_body(hooked))
    crash_mid_delivery(app, ledger(app).id, seconds_ago=0.5)

    handlers.sweep_replies(services(app), {})

    assert all_jobs(app) == []


def test_the_sweeper_fails_an_unknown_outcome_for_a_service_that_does_not_drop_repeats(make_app: Any) -> None:
    fake = FakeConnector()
    app = make_app(connectors={"webhook": FakeWebhookKind(fake, drops_repeats=False)})
    svc = services(app)
    channel = create_channel(svc.db, svc.keyring, svc.connectors,
                             {"connector": "webhook", "outbound_url": "http://127.0.0.1:9/unused"})
    assert app.test_client().post("/desk/push?orgId=1", json=desk_push_body(channel)).status_code == 200
    crash_mid_delivery(app, ledger(app).id, seconds_ago=svc.settings.push_deadline_seconds + 2)

    handlers.sweep_replies(svc, {})

    row = ledger(app)
    assert (row.status, row.last_error) == ("failed", OUTCOME_UNKNOWN)
    assert all_jobs(app) == []
    assert len(fake.deliveries) == 1


# --- channel health --------------------------------------------------------------------------------


def send(client: FlaskClient, channel: dict[str, Any], message_id: str) -> None:
    body = json.dumps({"id": message_id, "conversation_id": "c1", "text": f"text {message_id}"})
    headers = signed_headers(channel["inbound"]["secret"], body, msg_id=f"evt_{message_id}")
    assert client.post(channel["inbound"]["path"], data=body, headers=headers).status_code == 200


def pull(client: FlaskClient, channel: dict[str, Any], state: str | None = None) -> str:
    answer = client.post("/desk/pull?orgId=42", json=desk_pull_body(channel, state))
    assert answer.status_code == 200, answer.json
    return answer.json.get("channelState", state)


def health_records(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str, str]]:
    return [(record.levelname, record.channel_id, record.status) for record in caplog.records
            if getattr(record, "job", None) == "channels.health"]


def test_the_health_check_logs_a_stalled_channel_once_then_its_recovery(
    make_app: Any, new_channel: Any, caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app(STALL_MINUTES="15")
    client = app.test_client()
    svc = services(app)
    channel, quiet = new_channel(), new_channel()
    for n in range(3):
        send(client, channel, f"m{n}")
    send(client, quiet, "q1")  # waiting, but not for long
    with svc.db.write() as conn:
        conn.execute(update(InboxMessage).where(InboxMessage.channel_id == channel["id"])
                     .values(received_at=utcnow() - timedelta(minutes=20)))

    with caplog.at_level(logging.INFO, logger="app.jobs"):
        handlers.check_channel_health(svc, {})
        handlers.check_channel_health(svc, {})  # still stalled: said once
        assert health_records(caplog) == [("WARNING", channel["id"], "stalled")]

        pull(client, channel, pull(client, channel))  # Desk takes the messages and acknowledges them
        handlers.check_channel_health(svc, {})
        handlers.check_channel_health(svc, {})

    assert health_records(caplog) == [("WARNING", channel["id"], "stalled"), ("INFO", channel["id"], "ok")]
    with svc.db.session() as session:
        ours = ChannelHealth.channel_id.in_([channel["id"], quiet["id"]])
        stored = {row.channel_id: row.status for row in session.scalars(select(ChannelHealth).where(ours))}
    assert stored == {channel["id"]: "ok", quiet["id"]: "ok"}


def test_a_channel_whose_cursor_moved_lately_is_not_stalled(app: Flask, client: FlaskClient, channel: Any) -> None:
    svc = services(app)
    send(client, channel, "m1")
    with svc.db.write() as conn:
        conn.execute(update(InboxMessage).values(received_at=utcnow() - timedelta(hours=1)))
        conn.execute(update(Channel).values(acked_at=utcnow() - timedelta(minutes=1)))

    handlers.check_channel_health(svc, {})

    with svc.db.session() as session:
        stored = session.scalars(select(ChannelHealth.status).where(ChannelHealth.channel_id == channel["id"]))
        assert stored.all() == ["ok"]


# --- retention -------------------------------------------------------------------------------------


def add_reply(app: Flask, channel_id: str, name: str, status: str, days_old: float, touched_days_ago: float) -> int:
    created, touched = utcnow() - timedelta(days=days_old), utcnow() - timedelta(days=touched_days_ago)
    with services(app).db.write() as conn:
        ledger_id = conn.execute(insert(Reply).returning(Reply.id), {
            "channel_id": channel_id, "desk_reply_id": name, "status": status, "attempts": 1,
            "conversation_ext_id": "c1", "content": "hello", "content_type": "text/plain",
            "created_at": created, "attempt_started_at": created, "updated_at": touched,
        }).scalar_one()
        conn.execute(insert(ReplyAttempt), {"reply_id": ledger_id, "started_at": created, "duration_ms": 5,
                                            "outcome": "sent" if status == "sent" else "permanent"})
    return ledger_id


def test_retention_deletes_only_final_entries_past_retention_and_old_finished_jobs(
    make_app: Any, new_channel: Any
) -> None:
    app = make_app(LEDGER_RETENTION_DAYS="30")
    channel_id = new_channel()["id"]
    add_reply(app, channel_id, "old-sent", "sent", 40, 40)
    add_reply(app, channel_id, "old-failed", "failed", 31, 31)
    add_reply(app, channel_id, "old-pending", "pending", 40, 40)
    add_reply(app, channel_id, "young-sent", "sent", 29, 29)
    add_reply(app, channel_id, "old-retried-lately", "failed", 40, 2)
    now = utcnow()
    for kind, status, finished_days_ago in (("old done", "done", 2), ("young done", "done", 0.5),
                                            ("old failed", "failed", 31), ("young failed", "failed", 10)):
        add_job(app, kind)
        last = all_jobs(app)[-1]
        change_job(app, last.id, status=status, finished_at=now - timedelta(days=finished_days_ago))

    handlers.purge_expired(services(app), {})

    with services(app).db.session() as session:
        kept = set(session.scalars(select(Reply.desk_reply_id)))
        attempts = Counter(session.scalars(select(ReplyAttempt.reply_id)))
        reply_ids = set(session.scalars(select(Reply.id)))
    assert kept == {"old-pending", "young-sent", "old-retried-lately"}
    assert set(attempts) == reply_ids  # the deleted entries' attempts went with them
    assert {job.kind for job in all_jobs(app)} == {"young done", "young failed"}


def test_retention_works_in_batches_until_nothing_is_left(
    make_app: Any, new_channel: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(handlers, "PURGE_BATCH", 3)
    app = make_app(LEDGER_RETENTION_DAYS="30")
    channel_id = new_channel()["id"]
    for n in range(10):
        add_reply(app, channel_id, f"old-{n}", "sent", 40, 40)

    handlers.purge_expired(services(app), {})

    with services(app).db.session() as session:
        assert session.scalars(select(Reply)).all() == []


def test_on_postgresql_an_enqueued_job_wakes_an_idle_worker_long_before_its_poll(app: Flask) -> None:
    if services(app).db.is_sqlite:
        pytest.skip("LISTEN/NOTIFY is PostgreSQL's; SQLite workers poll every 0.1 s")
    ran = threading.Event()
    run = worker(app, {"count": lambda svc, payload: ran.set()}, concurrency=1, poll_seconds=60)
    thread = threading.Thread(target=run.run)
    thread.start()
    try:
        assert run.listening.wait(timeout=10)
        run.wake()  # a wake-up after LISTEN: the thread polls once more, finds nothing, and waits 60 s
        assert run.wait_until_idle(1, timeout=10)
        add_job(app, "count", {})  # only its notification can wake the thread within the 20 s below
        assert ran.wait(timeout=20)
    finally:
        run.stop()
        thread.join(timeout=10)
