"""`flask --app wsgi worker`: run background jobs until SIGTERM or SIGINT (SPEC B17)."""

from __future__ import annotations

import logging
import signal

import click
from flask.cli import with_appcontext

from app.jobs.queue import DEFAULT_LEASE_SECONDS, MAX_LEASE_SECONDS
from app.jobs.worker import DEFAULT_CONCURRENCY, Worker
from app.services import services

log = logging.getLogger(__name__)
STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


@click.command("worker")
@click.option("--concurrency", type=click.IntRange(1, 64), default=DEFAULT_CONCURRENCY, show_default=True,
              help="Threads running jobs.")
@click.option("--lease-seconds", type=click.FloatRange(1, MAX_LEASE_SECONDS), default=DEFAULT_LEASE_SECONDS,
              show_default=True, help="How long a job stays claimed without a heartbeat (a killed worker's "
              "jobs run again after it).")
@with_appcontext
def worker_cli(concurrency: int, lease_seconds: float) -> None:
    """Run background jobs until SIGTERM or SIGINT; running jobs get a grace period to finish."""
    worker = Worker(services(), concurrency=concurrency, lease_seconds=lease_seconds)
    # The stop signals are taken synchronously (sigtimedwait), not by a handler: a handler runs in the
    # main thread between any two bytecodes, and one that set the worker's Event could deadlock on the
    # Event's lock if the main thread held it just then. Blocked before the worker's threads start, so
    # they inherit the mask and the signals wait for the main thread. A repeated signal changes nothing:
    # the grace period bounds the stop.
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)

    def stop_requested(timeout: float) -> bool:
        received = signal.sigtimedwait(STOP_SIGNALS, timeout)
        if received is None:
            return False
        log.info("stopping on %s", signal.Signals(received.si_signo).name, extra={"worker": worker.id})
        return True

    worker.run(wait_for_stop=stop_requested)
