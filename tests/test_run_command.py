"""The README's run command migrates a fresh SQLite database and serves with gunicorn."""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import time

import pytest
import requests
from sqlalchemy import create_engine, inspect

from tests.conftest import ROOT


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_line(stream, needle: str, timeout: float) -> list[str]:
    """Read lines from a pipe until one contains needle; fail after timeout."""
    seen: list[str] = []
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        ready, _, _ = select.select([stream], [], [], end - time.monotonic())
        if not ready:
            break
        line = stream.readline()
        if not line:
            break
        seen.append(line)
        if needle in line:
            return seen
    pytest.fail(f"{needle!r} did not appear; output was:\n{''.join(seen)}")


def test_make_run_starts_gunicorn_on_a_fresh_sqlite_database(tmp_path):
    port = free_port()
    env = {key: value for key, value in os.environ.items() if key not in ("DATABASE_URL", "SECRET_KEY")}
    env.update(INSTANCE_PATH=str(tmp_path / "instance"), BIND=f"127.0.0.1:{port}", WEB_CONCURRENCY="1", THREADS="2")
    process = subprocess.Popen(
        ["make", "--no-print-directory", "run"],
        cwd=ROOT,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_for_line(process.stdout, "Booting worker", timeout=120)
        answer = requests.get(f"http://127.0.0.1:{port}/healthz", timeout=10)
        assert answer.status_code == 200 and answer.json() == {"status": "ok"}
        ready = requests.get(f"http://127.0.0.1:{port}/readyz", timeout=10)
        assert ready.status_code == 200
        database = tmp_path / "instance" / "deskbridge.sqlite3"
        engine = create_engine(f"sqlite:///{database}")
        try:
            assert {"channels", "inbox_messages", "conversations", "replies"} <= set(inspect(engine).get_table_names())
        finally:
            engine.dispose()
        assert (tmp_path / "instance" / "secret_key").stat().st_size > 0
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
