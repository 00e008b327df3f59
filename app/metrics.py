"""Metrics (SPEC B17): the Prometheus families, the functions that record them, the gauges read
from the database at scrape time, and the gunicorn side of prometheus_client's multiprocess mode.

Under gunicorn the master points PROMETHEUS_MULTIPROC_DIR at an empty directory before any
worker starts (configure_multiprocess); every worker then writes its counters and histograms to
files of its own there, and whichever worker answers /metrics adds up the files of all of them.
Without the variable (the Flask test client, the CLI) a process keeps them in memory.
prometheus_client picks one of the two modes when it is first imported, so this module imports it
only once the families are first needed: never in the gunicorn master before the directory is set.

Gauges that describe the database (channels by health status, the oldest queued job) are read
at scrape time, so that they are the same whichever worker answers. No label carries a channel,
org, chat or message id: label values come from small fixed sets (outcomes, statuses, URL rules).
"""

from __future__ import annotations

import functools
import importlib.metadata
import logging
import os
import shutil
import tempfile
import threading
import time
import tomllib
from collections.abc import Iterator, Mapping, MutableMapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, String, and_, case, column, func, inspect, or_, select, table

from app.domain.errors import DomainError
from app.domain.messages import IngestResult
from app.store.database import Database, DatabaseUnavailable
from app.store.models import Channel, InboxMessage, UtcDateTime
from app.store.queries import SYNCED_SEQ
from app.usecases.clock import utcnow

if TYPE_CHECKING:
    from prometheus_client import Counter, Histogram
    from prometheus_client.core import Metric

    from app.connectors.base import ConnectorKind, Delivered, DeliveryError, InboundAnswer, InboundRequest

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
MULTIPROC_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
# Left in a directory that configure_multiprocess created, so that only such a one is removed at exit.
CREATED_MARK = ".created-by-deskbridge"
# The pid of the process that prepared the directory for this run (set beside it): a child
# gunicorn master started by `make run` finds it and leaves the directory as it is.
OWNER_VARIABLE = "DESKBRIDGE_METRICS_DIR_OWNER"

PUSH_OUTCOMES = ("sent", "already_sent", "conflict", "failed", "rejected")
ATTEMPT_OUTCOMES = ("sent", "transient", "permanent")
INBOUND_RESULTS = ("accepted", "duplicate", "rejected")
CHANNEL_STATUSES = ("ok", "stalled", "disabled")
# What an event delivery attempt (SPEC B16) left the delivery as.
EVENT_DELIVERY_OUTCOMES = ("delivered", "retrying", "failed")
# Methods outside this set (any token is a valid HTTP method) share one label value.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "unmatched"  # the endpoint label of a request that matched no URL rule
# An empty pull takes about a millisecond; a push may take up to its deadline (10 s by default).
HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
PUSH_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 30.0, 60.0)

# The jobs table belongs to the background-work module; described here with only the two
# columns read, so that the gauge works whether or not the table exists yet.
JOBS = table("jobs", column("status", String()), column("run_at", UtcDateTime()))


class Families:
    """The process's metric families, with the label children that hot paths use resolved once."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Histogram

        self.http_requests = Counter(
            "deskbridge_http_requests_total", "HTTP requests answered, by URL rule, method and status.",
            ("endpoint", "method", "status"),
        )
        self.http_duration = Histogram(
            "deskbridge_http_request_duration_seconds", "Time to answer an HTTP request, by URL rule.",
            ("endpoint",), buckets=HTTP_BUCKETS,
        )
        self.inbound_messages = Counter(
            "deskbridge_inbound_messages_total",
            "Inbound messages by connector and result: accepted, duplicate, or rejected (a refused webhook, "
            "counted once: its messages cannot be counted).",
            ("connector", "result"),
        )
        self.pushes = Counter(
            "deskbridge_pushes_total",
            "Deliveries of agent replies asked for (a Desk push, or a retry of the ledger), by outcome.",
            ("outcome",),
        )
        self.delivery_attempts = Counter(
            "deskbridge_delivery_attempts_total", "Attempts to deliver a reply to the external service, by outcome.",
            ("outcome",),
        )
        self.push_duration = Histogram(
            "deskbridge_push_duration_seconds", "Time from claiming a reply for delivery to recording its outcome.",
            buckets=PUSH_BUCKETS,
        )
        self.imports = Counter("deskbridge_imports_total", "Real-time imports into Desk, by outcome.", ("outcome",))
        self.jobs = Counter(
            "deskbridge_jobs_total", "Background jobs finished, by kind and status.", ("kind", "status")
        )
        self.event_deliveries = Counter(
            "deskbridge_event_deliveries_total",
            "Event delivery attempts to subscribers, by what they left the delivery as: delivered, retrying "
            "(attempted again later) or failed (no attempt left, refused, 410 Gone; also a delivery of a "
            "disabled subscription, failed without an attempt).",
            ("outcome",),
        )
        self.event_delivery_duration = Histogram(
            "deskbridge_event_delivery_duration_seconds",
            "Time of one event delivery attempt, from sending to the answer (or the timeout).",
            buckets=PUSH_BUCKETS,
        )
        # Resolved now: a label lookup takes a lock and builds a tuple, a dict lookup does neither.
        self.push_outcomes = {outcome: self.pushes.labels(outcome) for outcome in PUSH_OUTCOMES}
        self.attempt_outcomes = {outcome: self.delivery_attempts.labels(outcome) for outcome in ATTEMPT_OUTCOMES}
        self.event_outcomes = {outcome: self.event_deliveries.labels(outcome) for outcome in EVENT_DELIVERY_OUTCOMES}
        self._requests: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}

    def request_answered(self, endpoint: str, method: str, status: int, started: float | None) -> None:
        """Count one answered request; `started` is its time.perf_counter() at the start, if known."""
        # Normalised before the lookup: a cache keyed by any method a client invents would grow without bound.
        key = (endpoint, method if method in METHODS else "other", status)
        children = self._requests.get(key)
        if children is None:
            children = self._requests.setdefault(
                key, (self.http_requests.labels(endpoint, key[1], str(status)), self.http_duration.labels(endpoint))
            )
        children[0].inc()
        if started is not None:
            children[1].observe(time.perf_counter() - started)

    def inbound(self, connector: str, result: str, count: int) -> None:
        if count:
            self.inbound_messages.labels(connector, result).inc(count)


_families: Families | None = None
_families_lock = threading.Lock()


def families() -> Families:
    """The process's metric families, created on first use."""
    found = _families
    if found is None:
        found = _create_families()
    return found


def _create_families() -> Families:
    global _families
    with _families_lock:
        if _families is None:
            directory = multiprocess_dir()
            if directory is not None:
                # A CLI command run with the variable set must not fail for want of the directory.
                Path(directory).mkdir(parents=True, exist_ok=True)
            _families = Families()
        return _families


def multiprocess_dir() -> str | None:
    """The directory of multiprocess mode, if on. prometheus_client reads this variable itself
    (it is no deskbridge setting): this module must agree with it."""
    return os.environ.get(MULTIPROC_VARIABLE) or None


# --- recording: one-line calls from the use cases -------------------------------------------------


def delivery_attempt(outcome: str) -> None:
    """Count one attempt to deliver a reply: sent, transient or permanent."""
    recorded = families()
    (recorded.attempt_outcomes.get(outcome) or recorded.delivery_attempts.labels(outcome)).inc()


def push_settled(outcome: str) -> None:
    """Count a delivery asked for that needed no delivery work: already_sent, or conflict (one in progress)."""
    recorded = families()
    (recorded.push_outcomes.get(outcome) or recorded.pushes.labels(outcome)).inc()


def push_delivered(outcome: Delivered | DeliveryError, claimed_at: datetime) -> None:
    """Count a delivery's outcome (sent; failed when transient; rejected) and its time since the claim."""
    recorded = families()
    label = ("failed" if outcome.transient else "rejected") if isinstance(outcome, Exception) else "sent"
    recorded.push_outcomes[label].inc()
    recorded.push_duration.observe(max(0.0, (utcnow() - claimed_at).total_seconds()))


def import_finished(outcome: str) -> None:
    """Count one real-time import into Desk (SPEC B14) by outcome."""
    families().imports.labels(outcome).inc()


def job_finished(kind: str, status: str) -> None:
    """Count one background job that ended (kind: the job's kind, never an id; status: done, failed, ...)."""
    families().jobs.labels(kind, status).inc()


def event_delivery_attempted(outcome: str, seconds: float) -> None:
    """Count one event delivery attempt by outcome (delivered, retrying, failed) and observe its duration."""
    recorded = families()
    recorded.event_outcomes[outcome].inc()
    recorded.event_delivery_duration.observe(seconds)


def event_deliveries_failed_unsent(count: int) -> None:
    """Count deliveries failed without an attempt (their subscription is disabled)."""
    if count:
        families().event_outcomes["failed"].inc(count)


class CountedInbound:
    """A connector kind whose inbound half is counted: messages stored (accepted, duplicate) and
    webhooks refused (rejected). Everything else is the kind's own."""

    def __init__(self, kind: ConnectorKind) -> None:
        self._kind = kind

    def read_inbound(self, channel: Any, request: InboundRequest) -> list[dict[str, Any]]:
        try:
            return self._kind.read_inbound(channel, request)
        except DomainError:
            families().inbound(self._kind.name, "rejected", 1)
            raise

    def inbound_answer(self, result: IngestResult) -> InboundAnswer:
        recorded = families()
        recorded.inbound(self._kind.name, "accepted", len(result.accepted))
        recorded.inbound(self._kind.name, "duplicate", len(result.duplicates))
        return self._kind.inbound_answer(result)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._kind, name)


def counting_inbound(kind: ConnectorKind) -> Any:
    """The connector kind `kind`, with what its inbound half reads counted (see CountedInbound)."""
    return CountedInbound(kind)


# --- the gauges read from the database at scrape time ---------------------------------------------


@dataclass(frozen=True)
class DatabaseGauges:
    """What the database says at one moment: channels per health status, the oldest due job's wait."""

    channels: Mapping[str, int]
    oldest_queued_job_age_seconds: float


def read_database_gauges(conn: Connection, now: datetime, stall_minutes: int) -> DatabaseGauges:
    """Count channels by health status (SPEC B10) and measure how long the oldest due job has waited."""
    return DatabaseGauges(_channels_by_status(conn, now, stall_minutes), _oldest_queued_job_age(conn, now))


def _channels_by_status(conn: Connection, now: datetime, stall_minutes: int) -> dict[str, int]:
    """disabled: not enabled; stalled: messages wait, the oldest for STALL_MINUTES or more, and no
    pull moved acked_seq nor an import succeeded for as long; else ok. One statement, one index probe per
    waiting channel."""
    cutoff = now - timedelta(minutes=stall_minutes)
    channels, inbox = Channel.__table__, InboxMessage.__table__
    oldest_waiting = (
        select(inbox.c.received_at)
        .where(inbox.c.channel_id == channels.c.id, inbox.c.seq > SYNCED_SEQ)
        .order_by(inbox.c.seq)
        .limit(1)
        .scalar_subquery()
    )
    status = case(
        (channels.c.enabled.is_(False), "disabled"),
        (
            and_(
                channels.c.last_seq > SYNCED_SEQ,
                or_(channels.c.acked_at.is_(None), channels.c.acked_at <= cutoff),
                or_(channels.c.last_import_at.is_(None), channels.c.last_import_at <= cutoff),
                oldest_waiting <= cutoff,
            ),
            "stalled",
        ),
        else_="ok",
    )
    per_channel = select(status.label("status")).select_from(channels).subquery()
    counts = {name: 0 for name in CHANNEL_STATUSES}
    for name, count in conn.execute(select(per_channel.c.status, func.count()).group_by(per_channel.c.status)):
        counts[name] = count
    return counts


def _oldest_queued_job_age(conn: Connection, now: datetime) -> float:
    """Seconds the oldest due queued job has waited since it was due; 0 without one (or without a jobs table)."""
    if not inspect(conn).has_table("jobs"):
        return 0.0
    oldest = conn.scalar(select(func.min(JOBS.c.run_at)).where(JOBS.c.status == "queued", JOBS.c.run_at <= now))
    return max(0.0, (now - oldest).total_seconds()) if oldest is not None else 0.0


class DatabaseCollector:
    """Gauges computed at scrape time: build info, and what the database says (left out, with a
    warning, while the database does not answer: the counters are still worth serving)."""

    def __init__(self, db: Database, stall_minutes: int, version: str) -> None:
        self._db = db
        self._stall_minutes = stall_minutes
        self._version = version

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import GaugeMetricFamily

        build = GaugeMetricFamily("deskbridge_build_info", "The running deskbridge version.", labels=["version"])
        build.add_metric([self._version], 1)
        yield build
        try:
            with self._db.read() as conn:
                gauges = read_database_gauges(conn, utcnow(), self._stall_minutes)
        except Exception as exc:
            unavailable = DatabaseUnavailable.from_error(exc)
            if unavailable is None:
                raise
            log.warning("metrics: database gauges left out: %s", unavailable.reason)
            return
        channels = GaugeMetricFamily("deskbridge_channels", "Channels by health status.", labels=["status"])
        for name in CHANNEL_STATUSES:
            channels.add_metric([name], gauges.channels.get(name, 0))
        yield channels
        yield GaugeMetricFamily(
            "deskbridge_oldest_queued_job_age_seconds",
            "How long the oldest queued job that is due has waited since it was due (0 when none).",
            value=gauges.oldest_queued_job_age_seconds,
        )


class Exposition:
    """What GET /metrics answers: the families of every worker (multiprocess mode) or of this
    process, then the gauges read from the database."""

    def __init__(self, db: Database, stall_minutes: int) -> None:
        from prometheus_client import REGISTRY, CollectorRegistry
        from prometheus_client.multiprocess import MultiProcessCollector

        families()  # created now, so that every family is exposed (at 0) from the start
        if multiprocess_dir() is not None:
            recorded = CollectorRegistry()
            MultiProcessCollector(recorded)
        else:
            recorded = REGISTRY
        database = CollectorRegistry()
        database.register(DatabaseCollector(db, stall_minutes, build_version()))
        self._registries = (recorded, database)

    def render(self) -> bytes:
        """The Prometheus text format (0.0.4)."""
        from prometheus_client import generate_latest

        return b"".join(generate_latest(registry) for registry in self._registries)


@functools.cache
def build_version() -> str:
    """deskbridge's version: the installed package's, else pyproject.toml's."""
    try:
        return importlib.metadata.version("deskbridge")
    except importlib.metadata.PackageNotFoundError:
        pass
    try:
        return str(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"])
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return "unknown"


# --- the server's side of multiprocess mode: gunicorn's master, `make run` ------------------------


def configure_multiprocess(environ: MutableMapping[str, str]) -> Path:
    """Before any process that records metrics starts: point PROMETHEUS_MULTIPROC_DIR (in `environ`,
    which they inherit) at an empty directory: the one configured, emptied of a previous run's
    files, or else a new temporary one, removed by remove_multiprocess_dir at exit.

    Called by `make run` for the web server and the background worker together, and by the
    gunicorn master, which leaves alone a directory that a parent process prepared."""
    configured = environ.get(MULTIPROC_VARIABLE)
    if configured and environ.get(OWNER_VARIABLE):
        return Path(configured)
    if configured:
        directory = Path(configured)
        directory.mkdir(parents=True, exist_ok=True)
        # Files of processes that are gone: their counts belong to an earlier run of the server.
        for stale in directory.glob("*.db"):
            stale.unlink(missing_ok=True)
    else:
        directory = Path(tempfile.mkdtemp(prefix="deskbridge-metrics-"))
        (directory / CREATED_MARK).touch()
        environ[MULTIPROC_VARIABLE] = str(directory)
    environ[OWNER_VARIABLE] = str(os.getpid())
    return directory


def worker_exited(pid: int, environ: Mapping[str, str]) -> None:
    """In the gunicorn master, when a worker has exited: prometheus_client's bookkeeping for a
    dead process. Its counters stay in the directory: the totals keep what it counted."""
    directory = environ.get(MULTIPROC_VARIABLE)
    if directory:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, directory)


def remove_multiprocess_dir(environ: Mapping[str, str]) -> None:
    """At exit of the process that ran configure_multiprocess: remove the directory if it created it."""
    directory = environ.get(MULTIPROC_VARIABLE)
    if (
        directory
        and environ.get(OWNER_VARIABLE) == str(os.getpid())
        and (Path(directory) / CREATED_MARK).exists()
    ):
        shutil.rmtree(directory, ignore_errors=True)
