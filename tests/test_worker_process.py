"""SPEC C1.8 with real processes: a worker killed with SIGKILL in the middle of a job loses no job;
another worker runs it again once the lease has expired (and not before), and a reply is delivered
again with the same webhook-id. `flask --app wsgi worker` stops on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from app.jobs import queue
from app.store.models import Job, Reply
from tests.conftest import ROOT
from tests.live_server import SECRET_KEY, SERVICE_VARIABLES
from tests.receiver import Answer, Receiver
from tests.support import desk_push_body, services

LEASE_SECONDS = "2"

# A worker whose one job kind blocks until the test lets it go: it notes each run (by pid) in a file,
# then waits for another file to exist.
BLOCKING_WORKER = """
import os, sys, time
from pathlib import Path

from app import create_app
from app.jobs.worker import Worker

runs, release, lease = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3])


def block(svc, payload):
    with runs.open("a") as out:
        out.write(f"{os.getpid()}\\n")
    while not release.exists():
        time.sleep(0.05)


app = create_app()
Worker(app.extensions["deskbridge"], handlers={"test.block": block}, recurring=(), lease_seconds=lease,
       poll_seconds=0.1).run()
"""


def wait_until(condition: Callable[[], Any], timeout: float = 30, what: str = "the condition") -> Any:
    """Poll a condition until it holds; fail the test after timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.05)
    pytest.fail(f"{what} did not come true within {timeout} s")


@pytest.fixture
def spawn(database_url: str, tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start processes on the test's database (output in tmp_path); any left running are killed after the test."""
    processes: list[subprocess.Popen[bytes]] = []
    env = {key: value for key, value in os.environ.items() if key not in SERVICE_VARIABLES}
    env.update(DATABASE_URL=database_url, INSTANCE_PATH=str(tmp_path / "instance"), SECRET_KEY=SECRET_KEY,
               ALLOW_PRIVATE_OUTBOUND="true", PUSH_DEADLINE_SECONDS="2")

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


def output(tmp_path: Path, index: int) -> str:
    return (tmp_path / f"process-{index}.log").read_text(errors="replace")


def only_job(app: Flask) -> Job:
    with services(app).db.session() as session:
        return session.scalars(select(Job)).one()


def add_job(app: Flask, kind: str, payload: dict[str, Any] | None = None, **options: Any) -> None:
    with services(app).db.write() as conn:
        queue.enqueue(conn, kind, payload or {}, **options)


def test_a_job_whose_worker_was_killed_runs_again_once_its_lease_expires_and_not_before(
    app: Flask, spawn: Callable[..., subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    runs, release = tmp_path / "runs", tmp_path / "release"

    def run_pids() -> list[int]:
        return [int(line) for line in runs.read_text().split()] if runs.exists() else []

    add_job(app, "test.block")
    first = spawn(sys.executable, "-c", BLOCKING_WORKER, str(runs), str(release), LEASE_SECONDS)
    wait_until(run_pids, what="the first worker running the job")
    claimed = only_job(app)
    second = spawn(sys.executable, "-c", BLOCKING_WORKER, str(runs), str(release), LEASE_SECONDS)
    wait_until(lambda: "started" in output(tmp_path, 1), what="the second worker starting")

    # The first worker's heartbeats renew its lease past its first end while the second one looks for work.
    wait_until(lambda: only_job(app).locked_until >= claimed.locked_until + timedelta(seconds=2),
               what="a renewed lease")
    assert (run_pids(), only_job(app).locked_by) == ([first.pid], claimed.locked_by)

    first.send_signal(signal.SIGKILL)
    first.wait()
    release.touch()

    wait_until(lambda: only_job(app).status == "done", what="the job done by the second worker")
    assert run_pids() == [first.pid, second.pid]
    assert only_job(app).attempts == 2


def job_status(app: Flask, unique_key: str) -> str:
    with services(app).db.session() as session:
        return session.scalars(select(Job.status).where(Job.unique_key == unique_key)).one()


def ledger(app: Flask) -> Reply:
    with services(app).db.session() as session:
        return session.scalars(select(Reply)).one()


def test_flask_worker_delivers_again_a_reply_whose_worker_was_killed_mid_delivery_with_the_same_webhook_id(
    app: Flask, client: FlaskClient, hooked: dict[str, Any], receiver: Receiver,
    spawn: Callable[..., subprocess.Popen[bytes]], tmp_path: Path,
) -> None:
    held = receiver.gate()
    receiver.script(Answer(400, {"message": "closed"}), Answer(200, {"id": "ext-1"}, hold=held),
                    Answer(200, {"id": "ext-1"}))
    assert client.post("/desk/push?orgId=1", json=desk_push_body(hooked)).status_code == 422
    entry = ledger(app)
    add_job(app, "reply.retry", {"ledger_id": entry.id}, unique_key=f"reply:{entry.id}")
    worker = (sys.executable, "-m", "flask", "--app", "wsgi", "worker", "--lease-seconds", LEASE_SECONDS)

    first = spawn(*worker)
    receiver.wait_for(2, timeout=30)  # the first worker is delivering it, and gets no answer
    first.send_signal(signal.SIGKILL)
    first.wait()
    second = spawn(*worker)

    wait_until(lambda: ledger(app).status == "sent", timeout=60,
               what=f"the reply sent by the second worker; its output:\n{output(tmp_path, 1)}")
    deliveries = receiver.wait_for(3)
    assert len(deliveries) == 3
    assert {delivery.webhook_id for delivery in deliveries} == {"reply_287189379819"}
    assert all(delivery.signature_valid for delivery in deliveries)
    assert ledger(app).external_id == "ext-1"
    wait_until(lambda: job_status(app, f"reply:{entry.id}") == "done", what="the job done")

    second.send_signal(signal.SIGTERM)
    assert second.wait(timeout=30) == 0, output(tmp_path, 1)
    assert "stopped" in output(tmp_path, 1)


def test_flask_worker_stops_at_once_on_a_repeated_sigterm(
    spawn: Callable[..., subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    worker = spawn(sys.executable, "-m", "flask", "--app", "wsgi", "worker")
    wait_until(lambda: " started: " in output(tmp_path, 0), what="the worker starting")

    # `make run` on Ctrl-C: the terminal signals the whole group and the supervisor forwards it too.
    worker.send_signal(signal.SIGTERM)
    worker.send_signal(signal.SIGTERM)

    assert worker.wait(timeout=15) == 0, output(tmp_path, 0)
    assert "stopped" in output(tmp_path, 0)
