"""Figure (f), real-time delivery (SPEC B14, C2): from the inbound 200 to the Desk emulator
receiving the import, with many channels receiving messages at once.

Each channel has a Desk emulator of its own (tests/desk_emulator.py: a small threaded HTTP
server on 127.0.0.1 serving the Invoke API, checking the HASH with the extension secret) as
its `desk_domain`. Before measuring, every emulator makes Desk's first pull (which records the
channel's securityContext and orgId: without them deskbridge imports nothing), and a warm-up
round proves the whole path (ingest, job, worker, Invoke API) works for every channel.

A round: one sender thread per channel, released together by a barrier, each POSTs one new
message to its channel's /inbound/<id> on a keep-alive connection and notes `time.monotonic()`
when the 200 has been read; the emulator notes `time.monotonic()` when it creates the thread
(same process, same clock). A message's latency is the difference. Between rounds the
benchmark waits until every message has arrived and no import job is queued or running.
"""

from __future__ import annotations

import math
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import func, select, text
from standardwebhooks.webhooks import Webhook

from app.connectors import Connectors
from app.keyring import Keyring
from app.store.database import Database
from app.store.models import ACTIVE_JOB_STATUSES, Channel, Job
from app.usecases.channels import create_channel
from bench.load import Client
from bench.payloads import ORG_ID, SECURITY_CONTEXT, message, signed_headers
from bench.servers import Process, Server
from tests.desk_emulator import DeskEmulator

IMPORT_JOB = "channel.import"
ARRIVAL_TIMEOUT = 30.0  # seconds a round's messages may take to reach Desk before the figure fails
IDLE_TIMEOUT = 30.0  # seconds the import jobs may take to settle after a round
READY_TIMEOUT = 60.0  # seconds for the worker's readiness (its LISTEN on PostgreSQL)
WARMUP_ROUNDS = 2
# A message may reach Desk before its sender has read the 200: the job is queued at the ingest's commit,
# and in a burst the answer can leave gunicorn tens of ms after that commit (on PostgreSQL the worker is
# woken at the commit itself), or the sender thread can wait for this process's GIL. It counts as 0 ms;
# beyond this margin it is listed under "problems".
NEGATIVE_TOLERANCE_MS = 10.0
SUSTAINED_INTERVAL = 1.0  # seconds between two messages of one channel in the sustained traffic
# PostgreSQL: the worker's sessions carry this application_name (PGAPPNAME, read by libpq), so the
# benchmark can see in pg_stat_activity that its LISTEN connection is up before measuring.
WORKER_APPLICATION_NAME = "deskbridge-bench-worker"


@dataclass
class Realtime:
    """The emulators and channels of figure (f), set up before the servers start (the run closes the emulators)."""

    secret: str
    emulators: list[DeskEmulator]
    channels: list[dict[str, Any]]
    worker: Process | None
    application_name: str
    sustained_seconds: float = 0.0  # of sustained traffic after the bursts (information); 0: none
    pulls_made: int = 0  # Desk pulls made by the setup (none may follow during the measurement)
    warmup: list[dict[str, Any]] = field(default_factory=list)


def start_emulators(secret: str, count: int) -> list[DeskEmulator]:
    """`count` running Desk emulators keyed with the extension secret, one installation each."""
    emulators: list[DeskEmulator] = []
    try:
        for i in range(count):
            emulators.append(DeskEmulator(secret, installation_id=f"bench-inst-{i}").start())
    except BaseException:
        for emulator in emulators:
            emulator.close()
        raise
    return emulators


def create_channels(db: Database, keyring: Keyring, connectors: Connectors,
                    emulators: list[DeskEmulator]) -> list[dict[str, Any]]:
    """One webhook channel per emulator, its desk_domain the emulator's base URL (as `channel create`)."""
    return [
        create_channel(db, keyring, connectors, {
            "connector": "webhook", "outbound_url": "http://127.0.0.1:9/unused", "name": f"bench realtime {i}",
            "org_id": ORG_ID, "desk_domain": emulator.base_url})
        for i, emulator in enumerate(emulators)
    ]


# --- readiness ---------------------------------------------------------------------------------


def first_pulls(realtime: Realtime, desk: Server, db: Database) -> None:
    """Desk's first pull of every channel: it records the securityContext and orgId imports need."""
    for emulator, channel in zip(realtime.emulators, realtime.channels, strict=True):
        result = emulator.pull(desk.base_url, channel, org_id=ORG_ID, security_context=SECURITY_CONTEXT)
        if result.status != 200 or not result.accepted:
            raise RuntimeError(f"Desk's first pull of {channel['id']} answered {result.status}: {result.body!r:.300}")
        realtime.pulls_made += 1
    ids = [c["id"] for c in realtime.channels]
    with db.read() as conn:
        recorded = conn.execute(select(func.count()).select_from(Channel).where(
            Channel.id.in_(ids), Channel.desk_context.is_not(None))).scalar_one()
    if recorded != len(ids):
        raise RuntimeError(f"after the first pulls only {recorded} of {len(ids)} channels have a securityContext")


def wait_for_listener(db: Database, application_name: str, timeout: float = READY_TIMEOUT) -> float:
    """PostgreSQL: wait until the worker's LISTEN connection is up; the seconds waited."""
    started = time.monotonic()
    query = text("SELECT count(*) FROM pg_stat_activity WHERE application_name = :name "
                 "AND datname = current_database() AND query ILIKE 'LISTEN %'")
    while True:
        with db.read() as conn:
            if conn.execute(query, {"name": application_name}).scalar_one():
                return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise RuntimeError(f"the background worker did not LISTEN for jobs within {timeout:.0f} s")
        time.sleep(0.05)


def active_import_jobs(db: Database) -> int:
    with db.read() as conn:
        return int(conn.execute(select(func.count()).select_from(Job).where(
            Job.kind == IMPORT_JOB, Job.status.in_(ACTIVE_JOB_STATUSES))).scalar_one())


def wait_imports_idle(db: Database, timeout: float = IDLE_TIMEOUT) -> None:
    """Wait until no import job is queued or running (the previous round fully settled)."""
    deadline = time.monotonic() + timeout
    while active_import_jobs(db):
        if time.monotonic() > deadline:
            raise RuntimeError(f"import jobs still queued or running {timeout:.0f} s after a round")
        time.sleep(0.02)


# --- one round ---------------------------------------------------------------------------------


@dataclass
class Sent:
    """One message of a round, as its sender saw it."""

    channel: int
    ext_id: str
    answered_at: float = 0.0  # time.monotonic() when the 200 had been read
    post_ms: float = 0.0  # the request's own round trip
    status: int = 0
    error: str | None = None


def send_round(realtime: Realtime, clients: list[Client], numbers: list[int]) -> list[Sent]:
    """Every channel receives one new message at the same moment; each sender's view of it."""
    return send(realtime, clients, [[(n, 0.0)] for n in numbers])


def send(realtime: Realtime, clients: list[Client], schedule: list[list[tuple[int, float]]]) -> list[Sent]:
    """Send each channel its messages (number, seconds after the common start), one sender thread per
    channel, all released together by a barrier; every message as its sender saw it."""
    count = len(realtime.channels)
    prepared: list[list[tuple[str, bytes, dict[str, str], float, Sent]]] = []
    now = datetime.now(UTC)  # signed in advance: well within the 5-minute tolerance
    for i, (channel, plan) in enumerate(zip(realtime.channels, schedule, strict=True)):
        signer = Webhook(channel["inbound"]["secret"])
        requests = []
        for n, offset in plan:
            item = message("rt", n)
            body = orjson.dumps(item)
            headers = signed_headers(signer, f"wh-rt-{n}", body, now)
            requests.append((channel["inbound"]["path"], body, headers, offset, Sent(i, item["id"])))
        prepared.append(requests)
    started: list[float] = []
    barrier = threading.Barrier(count, action=lambda: started.append(time.monotonic()))

    def run(i: int) -> None:
        try:
            barrier.wait(timeout=30)
        except threading.BrokenBarrierError as exc:
            for *_, sent in prepared[i]:
                sent.error = f"the senders were not all ready: {exc!r}"
            return
        for path, body, headers, offset, sent in prepared[i]:
            try:
                # Pacing, not synchronisation: a sustained sender's next message is due at this time.
                time.sleep(max(started[0] + offset - time.monotonic(), 0.0))
                status, answer, seconds = clients[i].post(path, body, headers)
                sent.answered_at = time.monotonic()
                sent.status, sent.post_ms = status, seconds * 1000
                if status != 200 or orjson.loads(answer).get("accepted") != [sent.ext_id]:
                    sent.error = f"answered {status}: {answer[:200]!r}"
            except Exception as exc:  # reported with the round
                sent.error = f"{type(exc).__name__}: {exc}"

    threads = [threading.Thread(target=run, args=(i,), name=f"rt-sender-{i}") for i in range(count)]
    for thread in threads:
        thread.start()
    longest = max((offset for plan in schedule for _, offset in plan), default=0.0)
    for thread in threads:
        thread.join(longest + 120)
    return [sent for requests in prepared for *_, sent in requests]


def collect(realtime: Realtime, sent: list[Sent]) -> list[dict[str, Any]]:
    """Wait for every message of a round to reach its emulator; per message, what happened."""
    failed = [s for s in sent if s.error]
    if failed:
        raise RuntimeError(f"{len(failed)} inbound requests failed, e.g. channel {failed[0].channel}: "
                           f"{failed[0].error}")
    out = []
    for s in sent:
        emulator = realtime.emulators[s.channel]
        arrived = emulator.wait_for_threads([s.ext_id], timeout=ARRIVAL_TIMEOUT)[s.ext_id]
        out.append({"channel": s.channel, "ext_id": s.ext_id, "latency_ms": (arrived - s.answered_at) * 1000,
                    "post_ms": s.post_ms, "answered_at": s.answered_at, "arrived_at": arrived})
    return out


def nearest_rank(values: list[float], fraction: float) -> float:
    """The nearest-rank percentile: the smallest value with at least `fraction` of the values at or below it."""
    ordered = sorted(values)
    return ordered[max(math.ceil(fraction * len(ordered)) - 1, 0)]


def summary(latencies: list[float]) -> dict[str, float]:
    return {"median_ms": round(statistics.median(latencies), 1), "p95_ms": round(nearest_rank(latencies, 0.95), 1),
            "max_ms": round(max(latencies), 1), "min_ms": round(min(latencies), 1)}


# --- the figure --------------------------------------------------------------------------------


def measure_realtime(realtime: Realtime, desk: Server, db: Database, *, rounds: int, postgres: bool,
                     log: Callable[[str], None] = print) -> dict[str, Any]:
    """Warm up, then `rounds` rounds of one message per channel at once, then (information) sustained
    traffic: every channel one message per SUSTAINED_INTERVAL seconds, the channels' phases spread
    evenly, for `realtime.sustained_seconds`. Every message's latency, and the checks."""
    if realtime.worker is None or not realtime.worker.alive():
        raise RuntimeError("real-time delivery needs the background worker (it is not running)")
    first_pulls(realtime, desk, db)
    listener_wait = wait_for_listener(db, realtime.application_name) if postgres else None
    numbers = iter(range(1, 10**9))
    clients = [Client(desk.port) for _ in realtime.channels]
    try:
        for _ in range(WARMUP_ROUNDS):
            wait_imports_idle(db)
            warm = collect(realtime, send_round(realtime, clients, [next(numbers) for _ in realtime.channels]))
            realtime.warmup.append(summary([m["latency_ms"] for m in warm]))
        wait_imports_idle(db)
        pulls_before = sum(len(e.pulls) for e in realtime.emulators)
        requests_before = [len(e.requests) for e in realtime.emulators]
        access_offset = desk.access_log_offset()
        per_round: list[list[dict[str, Any]]] = []
        for r in range(rounds):
            wait_imports_idle(db)
            measured = collect(realtime, send_round(realtime, clients, [next(numbers) for _ in realtime.channels]))
            per_round.append(measured)
            s = summary([m["latency_ms"] for m in measured])
            log(f"  round {r + 1}: median {s['median_ms']} ms, p95 {s['p95_ms']} ms, max {s['max_ms']} ms")
        sustained: list[dict[str, Any]] = []
        if realtime.sustained_seconds > 0:
            wait_imports_idle(db)
            count = len(realtime.channels)
            per_channel = max(int(realtime.sustained_seconds / SUSTAINED_INTERVAL), 1)
            schedule = [[(next(numbers), (i / count + j) * SUSTAINED_INTERVAL) for j in range(per_channel)]
                        for i in range(count)]
            sustained = collect(realtime, send(realtime, clients, schedule))
            s = summary([m["latency_ms"] for m in sustained])
            log(f"  sustained, {count / SUSTAINED_INTERVAL:g} messages/s for {per_channel * SUSTAINED_INTERVAL:g} s: "
                f"median {s['median_ms']} ms, p95 {s['p95_ms']} ms, max {s['max_ms']} ms")
        wait_imports_idle(db)
    finally:
        for client in clients:
            client.close()
    pull_lines = _pull_lines(desk, access_offset)
    report = _report(realtime, per_round, sustained, pulls_before, requests_before, pull_lines)
    report["listener_ready_after_s"] = round(listener_wait, 2) if listener_wait is not None else None
    return report


def _pull_lines(desk: Server, offset: int) -> int:
    """Pulls deskbridge served since the offset of its access log (there must be none)."""
    if desk.access_log is None:
        return 0
    desk.server_times_ms(offset, "POST", "/desk/pull")  # lets the last access lines be written
    with desk.access_log.open("rb") as handle:
        handle.seek(offset)
        return sum(1 for line in handle.read().decode(errors="replace").splitlines()
                   if line.split()[:2] == ["POST", "/desk/pull"])


def _report(realtime: Realtime, per_round: list[list[dict[str, Any]]], sustained: list[dict[str, Any]],
            pulls_before: int, requests_before: list[int], pull_lines: int) -> dict[str, Any]:
    """The bursts' figure, the sustained traffic beside it, and the checks over both."""
    everything = [m for measured in [*per_round, sustained] for m in measured]
    negative = [m["latency_ms"] for m in everything if m["latency_ms"] < 0]
    problems = []
    if negative and -min(negative) > NEGATIVE_TOLERANCE_MS:
        problems.append(f"{len(negative)} messages reached Desk before their sender had read the 200 "
                        f"(by up to {-min(negative):.1f} ms): counted as 0 ms")
    twice = {f"{i}:{key}": n for i, e in enumerate(realtime.emulators) for key, n in e.created_twice().items()}
    if twice:
        problems.append(f"created twice in Desk (C1.7): {dict(list(twice.items())[:5])}")
    errors = [f"{i}: {err}" for i, e in enumerate(realtime.emulators) for err in e.errors]
    if errors:
        problems.append(f"emulator errors: {errors[:5]}")
    pulls_after = sum(len(e.pulls) for e in realtime.emulators)
    if pulls_after != pulls_before or pull_lines:
        problems.append(f"Desk pulls ran during the measurement ({pulls_after - pulls_before} by the emulators, "
                        f"{pull_lines} in deskbridge's access log): the figure is not the import path alone")
    requests = [r for e, before in zip(realtime.emulators, requests_before, strict=True) for r in e.requests[before:]]
    outcomes: dict[str, int] = {}
    for request in requests:
        outcomes[request.outcome] = outcomes.get(request.outcome, 0) + 1
    if set(outcomes) - {"applied"}:
        problems.append(f"Invoke API outcomes other than applied: {outcomes}")
    messages = [m for measured in per_round for m in measured]
    report: dict[str, Any] = {
        **_latency_summary(messages),
        "channels": len(realtime.channels),
        "rounds": len(per_round),
        "round_summaries": [summary([max(m["latency_ms"], 0.0) for m in measured]) for measured in per_round],
        # From the first sender reading its 200 to the last message reaching Desk.
        "round_spans_ms": [_span_ms(measured) for measured in per_round],
        "negative_latencies": len(negative),
        "invoke_calls": len(requests),
        "invoke_outcomes": outcomes,
        "threads_in_desk": sum(len(e.threads) for e in realtime.emulators),
        "created_twice": len(twice),
        "desk_pulls_during_measurement": (pulls_after - pulls_before) + pull_lines,
        "warmup_rounds": realtime.warmup,
        "problems": problems,
    }
    if sustained:
        report["sustained"] = {
            **_latency_summary(sustained),
            "messages_per_second": round(len(realtime.channels) / SUSTAINED_INTERVAL, 1),
            "sent_over_seconds": round(max(m["answered_at"] for m in sustained)
                                       - min(m["answered_at"] for m in sustained), 2),
            "span_ms": _span_ms(sustained),
        }
    return report


def _span_ms(measured: list[dict[str, Any]]) -> float:
    return round((max(m["arrived_at"] for m in measured) - min(m["answered_at"] for m in measured)) * 1000, 1)


def _latency_summary(messages: list[dict[str, Any]]) -> dict[str, Any]:
    """Median, p95 (nearest rank), min, max of latencies clamped at 0, and each message's raw latency."""
    slowest = sorted(messages, key=lambda m: -m["latency_ms"])[:5]
    return {
        **summary([max(m["latency_ms"], 0.0) for m in messages]),
        "messages": len(messages),
        "inbound_post_median_ms": round(statistics.median(m["post_ms"] for m in messages), 2),
        "inbound_post_max_ms": round(max(m["post_ms"] for m in messages), 2),
        "slowest": [{"channel": m["channel"], "ext_id": m["ext_id"], "latency_ms": round(m["latency_ms"], 1)}
                    for m in slowest],
        "latencies_ms": [round(m["latency_ms"], 1) for m in messages],
    }
