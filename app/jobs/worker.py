"""The worker: threads that claim jobs and run their handlers under a lease that a heartbeat
renews, the scheduling of recurring jobs, and the delivery of events to subscribers (SPEC B16,
B17: one thread coordinating a pool of sender threads, woken like the job threads).

Recurring jobs are ordinary jobs with a unique_key: every worker makes sure one is queued, the
key lets only one exist at a time however many workers run, and the worker that completes one
queues the next in the same transaction.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from app import metrics
from app.domain.errors import DomainError
from app.jobs import queue
from app.jobs.handlers import HANDLERS, Handler, RetryLater
from app.jobs.queue import ClaimedJob
from app.services import Services
from app.store.database import DatabaseUnavailable
from app.usecases import event_delivery
from app.usecases.event_delivery import EventDeliverer, event_http_session

log = logging.getLogger(__name__)

DEFAULT_CONCURRENCY = 4
# How long an idle thread waits before looking for work again. On SQLite a look is a cheap read, and
# a real-time import (SPEC B14) should start within a tenth of a second. On PostgreSQL an enqueue
# wakes idle threads at once (LISTEN/NOTIFY); the poll only catches what a notification missed
# (a job whose run_at came, a lost listener connection).
IDLE_POLL_SECONDS = {"sqlite": 0.1, "postgresql": 1.0}
LISTEN_RECONNECT_SECONDS = 2.0
SCHEDULE_EVERY_SECONDS = 10.0
ERROR_PAUSE_SECONDS = 2.0
# After a stop, running jobs get this long to finish; then they are abandoned (their leases expire).
STOP_GRACE_SECONDS = 25.0
RECURRING_MAX_ATTEMPTS = 3


@dataclass(frozen=True)
class Recurring:
    """A job kind run every `every_seconds`, one at a time across all workers."""

    kind: str
    every_seconds: float

    @property
    def unique_key(self) -> str:
        return f"recurring:{self.kind}"


RECURRING = (
    Recurring("replies.sweep", 15),  # SPEC B10: at least once a minute
    Recurring("channels.health", 60),
    Recurring("retention", 3600),
)


class Worker:
    """Runs jobs in `concurrency` threads, and delivers events (unless deliver_events is False), until
    stop() (SIGTERM, SIGINT in `flask worker`)."""

    def __init__(
        self,
        svc: Services,
        *,
        concurrency: int = DEFAULT_CONCURRENCY,
        lease_seconds: float = queue.DEFAULT_LEASE_SECONDS,
        poll_seconds: float | None = None,
        handlers: Mapping[str, Handler] | None = None,
        recurring: Sequence[Recurring] = RECURRING,
        deliver_events: bool = True,
        event_senders: int = event_delivery.SENDERS,
        event_lease_seconds: float = event_delivery.LEASE_SECONDS,
        event_timeout_seconds: float = event_delivery.TIMEOUT_SECONDS,
    ) -> None:
        self.svc = svc
        self.id = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self.concurrency = concurrency
        self.lease_seconds = min(lease_seconds, queue.MAX_LEASE_SECONDS)
        dialect = svc.db.engine.dialect.name
        self.poll_seconds = IDLE_POLL_SECONDS.get(dialect, 0.5) if poll_seconds is None else poll_seconds
        self._listens = dialect == "postgresql"
        wake_lock = threading.RLock()
        self._wake = threading.Condition(wake_lock)
        self._idle = 0  # threads waiting for work, under _wake
        # Told when a thread becomes idle (wait_until_idle). Not _wake: notifying _wake there would wake
        # the other idle threads, which would poll and wake each other without end.
        self._idle_changed = threading.Condition(wake_lock)
        self.listening = threading.Event()  # PostgreSQL: set while the LISTEN connection is up
        self.handlers = dict(HANDLERS if handlers is None else handlers)
        self.recurring = {job.kind: job for job in recurring if job.kind in self.handlers}
        self._stopping = threading.Event()
        self._stopped = threading.Event()
        self._running: dict[str, ClaimedJob] = {}  # by the holder's id (one per thread)
        self._lock = threading.Lock()
        self.deliver_events = deliver_events
        self.event_senders = event_senders
        self.event_lease_seconds = event_delivery.checked_lease(event_timeout_seconds, event_lease_seconds)
        self.event_timeout_seconds = event_timeout_seconds

    def run(self, wait_for_stop: Callable[[float], bool] | None = None) -> None:
        """Work until stop(), or until wait_for_stop(timeout) says to (it waits up to timeout seconds);
        then give running jobs STOP_GRACE_SECONDS to finish."""
        wait = wait_for_stop or self._stopping.wait
        threads = [
            threading.Thread(target=self._work, args=(f"{self.id}/{n}",), name=f"job-thread-{n}", daemon=True)
            for n in range(self.concurrency)
        ]
        if self.deliver_events:
            threads.append(threading.Thread(target=self._deliver_events, name="event-delivery", daemon=True))
        helpers = [threading.Thread(target=self._heartbeat, name="job-heartbeat", daemon=True)]
        if self._listens:
            helpers.append(threading.Thread(target=self._listen, name="job-listener", daemon=True))
        for thread in [*threads, *helpers]:
            thread.start()
        events = f", events by {self.event_senders} senders" if self.deliver_events else ""
        log.info("background worker %s started: %d threads, %g s leases%s", self.id, self.concurrency,
                 self.lease_seconds, events, extra={"worker": self.id, "pid": os.getpid()})
        try:
            while True:
                self.schedule_recurring()
                if wait(SCHEDULE_EVERY_SECONDS) or self._stopping.is_set():
                    break
            self.stop()
            grace_ends = time.monotonic() + STOP_GRACE_SECONDS
            for thread in threads:
                thread.join(max(0.0, grace_ends - time.monotonic()))
        finally:
            self._stopped.set()
        abandoned = self.running_jobs()
        if abandoned:
            log.warning("background worker %s stopped with %d jobs unfinished; they run again when their leases "
                        "expire", self.id, len(abandoned), extra={"worker": self.id})
        else:
            log.info("background worker %s stopped", self.id, extra={"worker": self.id})

    def stop(self) -> None:
        """Claim no more jobs; run() returns once the running ones end (or the grace period does)."""
        self._stopping.set()
        self.wake()

    def wake(self) -> None:
        """Make every idle thread look for work now."""
        with self._wake:
            self._wake.notify_all()

    def running_jobs(self) -> list[ClaimedJob]:
        with self._lock:
            return list(self._running.values())

    def work_one(self, holder: str | None = None) -> bool:
        """Claim one job and run it; False when no job was due."""
        job = queue.claim(self.svc.db, holder or f"{self.id}/0", lease_seconds=self.lease_seconds,
                          kinds=self.handlers)
        if job is None:
            return False
        self._run(job)
        return True

    def schedule_recurring(self) -> None:
        """Queue each recurring job that is neither queued nor running (first start, or after it failed)."""
        wanted = {job.unique_key: job for job in self.recurring.values()}
        if not wanted:
            return
        try:
            missing = set(wanted) - queue.active_unique_keys(self.svc.db, wanted)
            if missing:
                with self.svc.db.write() as conn:
                    for key in sorted(missing):
                        queue.enqueue(conn, wanted[key].kind, {}, unique_key=key,
                                      max_attempts=RECURRING_MAX_ATTEMPTS)
        except Exception as exc:
            _log_loop_error("could not schedule recurring jobs", exc)

    def _work(self, holder: str) -> None:
        while not self._stopping.is_set():
            try:
                ran = self.work_one(holder)
            except Exception as exc:
                _log_loop_error("could not claim or record a job", exc)
                self._stopping.wait(ERROR_PAUSE_SECONDS)
                continue
            if not ran:
                with self._wake:
                    if not self._stopping.is_set():
                        self._idle += 1
                        self._idle_changed.notify_all()
                        self._wake.wait(self.poll_seconds)
                        self._idle -= 1

    def _deliver_events(self) -> None:
        """Deliver events until stopped (SPEC B16); the sends under way end and are recorded first."""
        settings = self.svc.settings
        http = event_http_session(allow_private=settings.allow_private_outbound, connections=self.event_senders)
        deliverer = EventDeliverer(
            self.svc.db, self.svc.keyring, http, worker_id=f"{self.id}/events",
            schedule=settings.event_retry_schedule, allow_private=settings.allow_private_outbound,
            senders=self.event_senders, timeout=self.event_timeout_seconds, lease_seconds=self.event_lease_seconds,
        )
        try:
            deliverer.run(self._stopping, self._wait_for_work, self.poll_seconds)
        except Exception:
            log.exception("event delivery stopped unexpectedly; the deliveries it held are attempted again once "
                          "their leases expire")
        finally:
            deliverer.close()
            http.close()

    def _wait_for_work(self, timeout: float) -> None:
        """Wait until woken (a notification, stop()) or timeout."""
        with self._wake:
            if not self._stopping.is_set():
                self._wake.wait(timeout)

    def wait_until_idle(self, threads: int, timeout: float) -> bool:
        """Block until `threads` threads wait for work (for tests and diagnostics); whether they did."""
        with self._wake:
            return self._idle_changed.wait_for(lambda: self._idle >= threads, timeout)

    def _listen(self) -> None:
        """PostgreSQL: LISTEN for enqueued jobs on a connection of its own and wake idle threads."""
        while not self._stopping.is_set():
            try:
                raw = self.svc.db.engine.raw_connection()
            except Exception as exc:
                _log_loop_error("could not listen for new jobs", exc)
                self._stopping.wait(LISTEN_RECONNECT_SECONDS)
                continue
            try:
                connection = raw.driver_connection
                raw.detach()  # a connection of its own: never handed back to the pool in LISTEN mode
                connection.autocommit = True
                connection.execute(f"LISTEN {queue.NOTIFY_CHANNEL}")
                self.listening.set()
                self.wake()  # anything enqueued before the LISTEN took effect
                while not self._stopping.is_set():
                    if any(True for _ in connection.notifies(timeout=0.5, stop_after=1)):
                        self.wake()
            except Exception as exc:
                self.listening.clear()
                _log_loop_error("lost the connection that listens for new jobs", exc)
                self._stopping.wait(LISTEN_RECONNECT_SECONDS)
            finally:
                with contextlib.suppress(Exception):
                    raw.close()

    def _run(self, job: ClaimedJob) -> None:
        """Run a claimed job's handler and record its outcome."""
        extra = {"job": job.kind, "job_id": job.id, "attempt": job.attempts}
        if job.attempts > job.max_attempts:
            # Its last attempt ended with its worker (killed, or the host lost): no attempt is left.
            if queue.fail(self.svc.db, job, "its worker stopped during the last attempt") is not None:
                log.error("job %d (%s) failed: its worker stopped during its last attempt", job.id, job.kind,
                          extra=extra)
            return
        with self._lock:
            self._running[job.locked_by] = job
        started = time.monotonic()
        error: BaseException | None = None
        try:
            self.handlers[job.kind](self.svc, job.payload)
        except Exception as exc:
            error = exc
        finally:
            with self._lock:
                self._running.pop(job.locked_by, None)
        extra["duration_ms"] = round((time.monotonic() - started) * 1000)
        if error is None:
            recurring = self.recurring.get(job.kind)
            again = recurring.every_seconds if recurring and job.unique_key == recurring.unique_key else None
            if queue.complete(self.svc.db, job, reschedule_in=again):
                metrics.job_finished(job.kind, "done")
                log.debug("job %d (%s) done", job.id, job.kind, extra=extra)
            else:
                log.warning("job %d (%s) finished after its lease was taken over; its result is not recorded",
                            job.id, job.kind, extra=extra)
            return
        reason = _reason(error)
        retry_in = error.seconds if isinstance(error, RetryLater) else None
        status = queue.fail(self.svc.db, job, reason, retry_in=retry_in)
        if status is not None:
            metrics.job_finished(job.kind, status)
        if status is None:
            log.warning("job %d (%s) failed after its lease was taken over: %s", job.id, job.kind, reason,
                        extra=extra)
        elif status == "failed":
            log.error("job %d (%s) failed for good after %d attempts: %s", job.id, job.kind, job.attempts, reason,
                      extra=extra, exc_info=_unexpected(error))
        else:
            log.warning("job %d (%s) attempt %d of %d failed, to be tried again: %s", job.id, job.kind,
                        job.attempts, job.max_attempts, reason, extra=extra, exc_info=_unexpected(error))

    def _heartbeat(self) -> None:
        """Renew the lease of every running job, three times per lease."""
        while not self._stopped.wait(self.lease_seconds / 3):
            for job in self.running_jobs():
                try:
                    held = queue.heartbeat(self.svc.db, job.id, job.locked_by, self.lease_seconds)
                except Exception as exc:
                    _log_loop_error(f"could not renew the lease of job {job.id}", exc)
                    continue
                if not held:
                    log.warning("job %d (%s) lost its lease to another worker", job.id, job.kind,
                                extra={"job": job.kind, "job_id": job.id})


def _reason(error: BaseException) -> str:
    """An error as recorded and logged: our own messages, or the exception's type and text."""
    if isinstance(error, RetryLater):
        return error.reason
    if isinstance(error, DomainError):
        return error.message
    unavailable = DatabaseUnavailable.from_error(error)
    if unavailable is not None:
        return f"the database is not available: {unavailable.reason}"
    return f"{type(error).__name__}: {error}"


def _unexpected(error: BaseException) -> bool:
    """Whether a traceback helps: not for our own errors or an outage."""
    return not isinstance(error, (RetryLater, DomainError)) and DatabaseUnavailable.from_error(error) is None


def _log_loop_error(what: str, exc: BaseException) -> None:
    unavailable = DatabaseUnavailable.from_error(exc)
    if unavailable is not None:
        log.warning("%s: the database is not available: %s", what, unavailable.reason)
    else:
        log.exception("%s", what)
