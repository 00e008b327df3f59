"""SPEC C2 event deliveries: how many events per second one worker delivers to a local receiver.

Not a test: a measurement, to run by hand or for bench/ to import:

    python -m tests.event_throughput [--database-url postgresql+psycopg://...] [--events 5000] [--runs 3]

    with local_receiver() as url, fresh_database(server_url_or_None) as database_url:
        result = measure_event_delivery(database_url, url, events=5000)  # .per_second, .per_cpu_second

Each run records the events first (one subscription, one delivery each), then starts a Worker in
this process (its event delivery only: no job handlers) and times it from its start until the
last delivery is `delivered` (its delivered_at). The receiver is bench/receiver.py in a process of
its own (it answers 200 at once and keeps connections alive).
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, func, insert, select, text
from sqlalchemy.engine import make_url

from app import create_app
from app.jobs.worker import Worker
from app.keyring import new_webhook_secret
from app.store.models import EVENT_TYPES, EventDelivery, Subscription
from app.usecases import event_delivery
from app.usecases.clock import utcnow
from app.usecases.events import record_events

ROOT = Path(__file__).resolve().parent.parent
RECORD_CHUNK = 1000  # events per recording transaction


@dataclass(frozen=True)
class EventThroughput:
    """One run: events delivered, the seconds from the worker's start until the last was recorded,
    and the CPU time this process spent meanwhile (all its threads; on a busy machine, events per
    CPU-second vary less than events per second)."""

    events: int
    seconds: float
    cpu_seconds: float

    @property
    def per_second(self) -> float:
        return self.events / self.seconds

    @property
    def per_cpu_second(self) -> float:
        return self.events / self.cpu_seconds


@contextmanager
def local_receiver() -> Iterator[str]:
    """bench/receiver.py on a free local port, in a process of its own; yields its URL."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen([sys.executable, "-m", "bench.receiver", str(port), "3600"], cwd=ROOT)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}/events"
    finally:
        process.kill()
        process.wait()


def measure_event_delivery(
    database_url: str, receiver_url: str, *, events: int = 5000, senders: int = event_delivery.SENDERS,
    instance_path: str | None = None, timeout: float = 300.0,
) -> EventThroughput:
    """Record `events` events for one subscription on a migrated, empty database, then time one
    in-process Worker delivering them all to `receiver_url`."""
    with tempfile.TemporaryDirectory() as scratch:
        app = create_app({
            "DATABASE_URL": database_url, "SECRET_KEY": "event-throughput", "ALLOW_PRIVATE_OUTBOUND": "true",
            "INSTANCE_PATH": instance_path or scratch, "LOG_FORMAT": "text",
        })
        svc = app.extensions["deskbridge"]
        try:
            now = utcnow()
            with svc.db.write() as conn:
                conn.execute(insert(Subscription), {
                    "id": f"sub_{uuid.uuid4().hex[:12]}", "url": receiver_url, "events": list(EVENT_TYPES),
                    "channels": [], "description": "throughput", "enabled": True,
                    "secret": svc.keyring.encrypt(new_webhook_secret()), "disabled_reason": None,
                    "created_at": now, "updated_at": now,
                })
            for start in range(0, events, RECORD_CHUNK):
                with svc.db.write() as conn:
                    record_events(conn, [("message.synced", "chan_bench", {"message_id": f"m{n}",
                                                                          "conversation_id": f"c{n % 50}"})
                                         for n in range(start, min(start + RECORD_CHUNK, events))])
            delivered = select(func.count(), func.max(EventDelivery.delivered_at)).where(
                EventDelivery.status == "delivered")
            worker = Worker(svc, handlers={}, recurring=(), concurrency=1, event_senders=senders)
            thread = threading.Thread(target=worker.run, name="throughput-worker")
            began, cpu_began = utcnow(), time.process_time()
            thread.start()
            try:
                deadline = time.monotonic() + timeout
                while True:
                    # Seldom, so as not to slow the worker down: the time is the last delivery's.
                    time.sleep(0.2)
                    with svc.db.read() as conn:
                        count, last = conn.execute(delivered).one()
                    if count >= events:
                        cpu_seconds = time.process_time() - cpu_began
                        break
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"not every event was delivered within {timeout:g} s")
            finally:
                worker.stop()
                thread.join(timeout=60)
            return EventThroughput(events, (last - began).total_seconds(), cpu_seconds)
        finally:
            svc.db.dispose()


@contextmanager
def fresh_database(server_url: str | None) -> Iterator[str]:
    """A new migrated database: a SQLite file, or a new schema on a PostgreSQL server (dropped after)."""
    def migrate(url: str) -> None:
        config = Config(str(ROOT / "alembic.ini"))
        config.attributes["database_url"] = url
        config.attributes["configure_logger"] = False
        command.upgrade(config, "head")

    if server_url is None:
        with tempfile.TemporaryDirectory() as directory:
            url = f"sqlite:///{Path(directory) / 'events.sqlite3'}"
            migrate(url)
            yield url
        return
    schema = f"events_{uuid.uuid4().hex[:12]}"
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        try:
            url = make_url(server_url).update_query_dict({"options": f"-csearch_path={schema}"})
            rendered = url.render_as_string(hide_password=False)
            migrate(rendered)
            yield rendered
        finally:
            with admin.connect() as conn:
                conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    finally:
        admin.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", help="a PostgreSQL server (a new schema is made); default: SQLite")
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--senders", type=int, default=event_delivery.SENDERS)
    options = parser.parse_args()
    results = []
    with local_receiver() as receiver_url:
        for run in range(options.runs):
            with fresh_database(options.database_url) as url:
                result = measure_event_delivery(url, receiver_url, events=options.events, senders=options.senders)
            results.append(result)
            print(f"run {run + 1}: {result.events} events in {result.seconds:.2f} s = {result.per_second:.0f} events/s"
                  f" ({result.per_cpu_second:.0f} per CPU-second)", flush=True)
    print(f"median: {statistics.median(r.per_second for r in results):.0f} events/s, "
          f"{statistics.median(r.per_cpu_second for r in results):.0f} per CPU-second ({options.senders} senders)")


if __name__ == "__main__":
    main()
