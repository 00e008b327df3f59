"""The README's run command migrates a fresh SQLite database, serves with gunicorn and runs the
background worker beside it; stopping it, or losing either process, stops both (no orphan left)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from sqlalchemy import create_engine, inspect, select

from app.jobs import queue
from app.store.database import Database
from app.store.models import Job
from tests.conftest import ROOT
from tests.live_server import LiveServer

STARTED = re.compile(r"started the (web server|background worker) \(pid (\d+)\)")


@pytest.fixture
def make_run(tmp_path: Path) -> Iterator[LiveServer]:
    """`make run` on a fresh instance folder, in a process group of its own, booted."""
    env = {key: value for key, value in os.environ.items() if key not in ("DATABASE_URL", "SECRET_KEY")}
    env.update(INSTANCE_PATH=str(tmp_path / "instance"), BIND="127.0.0.1:0", WEB_CONCURRENCY="1", THREADS="2",
               LOG_FORMAT="text")
    process = subprocess.Popen(
        ["make", "--no-print-directory", "run"],
        cwd=ROOT,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    server = LiveServer(process)
    try:
        server.wait_until_booted()
        yield server
    finally:
        server.stop()


def children(server: LiveServer) -> dict[str, int]:
    """The pids of the web server and the background worker, as the supervisor logged them, once the
    worker has started."""
    server.wait_for_log(" started: ", timeout=60)
    return {match.group(1): int(match.group(2)) for line in server.log_lines() if (match := STARTED.search(line))}


def wait_for_the_group_to_end(server: LiveServer, timeout: float = 60) -> int:
    """Wait for `make run` to exit and for every process of its group to be gone; its exit status."""
    status = server.process.wait(timeout=timeout)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(server.process.pid, 0)
        except ProcessLookupError:
            return status
        time.sleep(0.05)
    pytest.fail(f"processes of `make run` outlived it:\n{''.join(server.log_lines())}")


def database(tmp_path: Path) -> Database:
    return Database(f"sqlite:///{tmp_path / 'instance' / 'deskbridge.sqlite3'}")


def test_make_run_serves_and_runs_background_work_on_a_fresh_sqlite_database(
    make_run: LiveServer, tmp_path: Path
) -> None:
    answer = requests.get(f"{make_run.url}/healthz", timeout=10)
    assert answer.status_code == 200 and answer.json() == {"status": "ok"}
    ready = requests.get(f"{make_run.url}/readyz", timeout=10)
    assert ready.status_code == 200
    engine = create_engine(f"sqlite:///{tmp_path / 'instance' / 'deskbridge.sqlite3'}")
    try:
        tables = set(inspect(engine).get_table_names())
    finally:
        engine.dispose()
    assert {"channels", "inbox_messages", "conversations", "replies", "jobs"} <= tables
    assert (tmp_path / "instance" / "secret_key").stat().st_size > 0

    db = database(tmp_path)
    try:
        with db.write() as conn:
            queue.enqueue(conn, "channels.health", {}, unique_key="test:health")

        def status() -> str:
            with db.read() as conn:
                return conn.execute(select(Job.status).where(Job.unique_key == "test:health")).scalar_one()

        deadline = time.monotonic() + 30
        while status() != "done" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert status() == "done", "".join(make_run.log_lines())
    finally:
        db.dispose()


def test_sigterm_to_make_run_alone_stops_the_web_server_and_the_worker(make_run: LiveServer) -> None:
    assert set(children(make_run)) == {"web server", "background worker"}

    make_run.process.send_signal(signal.SIGTERM)  # to make only, not to its process group

    wait_for_the_group_to_end(make_run)
    make_run.wait_for_log("stopping on SIGTERM")  # the supervisor got it from make
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{make_run.url}/healthz", timeout=5)


def test_ctrl_c_stops_make_run_and_both_of_its_processes(make_run: LiveServer) -> None:
    children(make_run)

    os.killpg(make_run.process.pid, signal.SIGINT)  # what a terminal sends to the foreground group

    wait_for_the_group_to_end(make_run)
    assert "background worker" in make_run.wait_for_log("stopped")


def test_make_run_ends_and_stops_the_web_server_when_the_worker_dies(make_run: LiveServer) -> None:
    worker = children(make_run)["background worker"]

    os.kill(worker, signal.SIGKILL)

    assert wait_for_the_group_to_end(make_run) != 0
    make_run.wait_for_log("the background worker ended")
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{make_run.url}/healthz", timeout=5)
