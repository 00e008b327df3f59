"""The database goes away and comes back (SPEC B8, C1.10).

While it is away, a request that needs it is answered 503 {"error": "database_unavailable"}
with a Retry-After header and logged as one WARNING line without a traceback; when it is back,
the same process serves again, and every message that was answered 200 reaches Desk once.

PostgreSQL: the app logs in as a role of the test's own, which a superuser locks out
(NOLOGIN, sessions terminated) and lets back in. SQLite: another connection holds the
database's write lock for longer than the app's busy timeout.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from werkzeug.test import TestResponse

from app.usecases.channels import create_channel
from tests.desk_simulator import message
from tests.support import desk_pull_body, services, signed_headers

Channel = dict[str, Any]


# --- helpers -------------------------------------------------------------------------------


def new_channel_on(app: Flask) -> Channel:
    """A webhook channel created through the admin use case of this app."""
    svc = services(app)
    data = {"connector": "webhook", "outbound_url": "http://127.0.0.1:9/unused", "name": "outage channel"}
    return create_channel(svc.db, svc.keyring, svc.connectors, data)


def send(client: FlaskClient, channel: Channel, ext_id: str) -> TestResponse:
    """One signed inbound webhook carrying one message; the webhook id is the message id."""
    raw = json.dumps(message(ext_id, "c1"))
    headers = signed_headers(channel["inbound"]["secret"], raw, msg_id=f"evt_{ext_id}")
    return client.post(channel["inbound"]["path"], data=raw, headers=headers)


def pull(client: FlaskClient, channel: Channel, state: str = "") -> TestResponse:
    return client.post("/desk/pull?orgId=1", json=desk_pull_body(channel, state=state))


def everything_desk_receives(client: FlaskClient, channel: Channel) -> list[str]:
    """The thread ids of every pull from the start, following channelState until a pull brings nothing."""
    received: list[str] = []
    state = ""
    for _ in range(20):
        answer = pull(client, channel, state)
        assert answer.status_code == 200, answer.get_data(as_text=True)
        threads = answer.json["data"]["threads"]
        if not threads:
            return received
        received += [thread["extId"] for thread in threads]
        state = answer.json["channelState"]
    raise AssertionError(f"pulls never reached the head of the inbox: {received}")


def assert_database_unavailable(answer: TestResponse) -> None:
    """SPEC B8's answer to an outage: 503, the JSON error shape, and a Retry-After in seconds."""
    assert answer.status_code == 503, answer.get_data(as_text=True)
    assert answer.mimetype == "application/json"
    body = answer.json
    assert set(body) == {"error", "message"}
    assert body["error"] == "database_unavailable"
    assert isinstance(body["message"], str) and body["message"]
    assert answer.headers.get("Retry-After", "").isdigit(), answer.headers
    assert int(answer.headers["Retry-After"]) > 0


def assert_one_warning_without_traceback(records: list[logging.LogRecord]) -> None:
    """One request's logging: exactly one WARNING line, nothing louder, and no traceback anywhere."""
    loud = [r for r in records if r.levelno >= logging.WARNING]
    assert [r.levelno for r in loud] == [logging.WARNING], [(r.levelname, r.name, r.getMessage()) for r in loud]
    assert "database" in loud[0].getMessage() or "readiness" in loud[0].getMessage(), loud[0].getMessage()
    assert "\n" not in loud[0].getMessage()
    with_traceback = [r for r in records if r.exc_info or r.exc_text or r.stack_info]
    assert not with_traceback, [(r.name, r.getMessage()) for r in with_traceback]


def answered_during_outage(caplog: pytest.LogCaptureFixture, request: Any, *args: Any, **kwargs: Any) -> TestResponse:
    """Run one request with fresh log capture; it must be the outage answer, logged once."""
    caplog.clear()
    with caplog.at_level(logging.INFO):
        answer = request(*args, **kwargs)
    assert_database_unavailable(answer)
    assert_one_warning_without_traceback(caplog.records)
    return answer


# --- PostgreSQL: the server refuses the app's role ------------------------------------------------


class LockableRole:
    """A LOGIN role of the test's own with the privileges the app needs on the test schema."""

    def __init__(self, database_url: str) -> None:
        url = make_url(database_url)
        options = url.query.get("options", "")
        assert isinstance(options, str) and options.startswith("-csearch_path="), url
        self.schema = options.removeprefix("-csearch_path=")
        self.name = f"deskbridge_outage_{uuid.uuid4().hex[:12]}"
        # The app connects as the role to the same host, database and search_path.
        self.url = url.set(username=self.name, password=None).render_as_string(hide_password=False)
        self._admin: Engine = create_engine(database_url, isolation_level="AUTOCOMMIT")

    def create(self) -> None:
        with self._admin.connect() as conn:
            conn.execute(text(f'CREATE ROLE "{self.name}" LOGIN'))
            conn.execute(text(f'GRANT USAGE ON SCHEMA "{self.schema}" TO "{self.name}"'))
            conn.execute(
                text(f'GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA "{self.schema}" TO "{self.name}"')
            )
            conn.execute(text(f'GRANT USAGE ON ALL SEQUENCES IN SCHEMA "{self.schema}" TO "{self.name}"'))

    def sessions(self) -> int:
        with self._admin.connect() as conn:
            return conn.execute(
                text("SELECT count(*) FROM pg_stat_activity WHERE usename = :role"), {"role": self.name}
            ).scalar_one()

    def terminate_sessions(self) -> None:
        """End every session of the role; pg_terminate_backend waits (bounded) until each is gone."""
        with self._admin.connect() as conn:
            conn.execute(
                text("SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity WHERE usename = :role"),
                {"role": self.name},
            )
        assert self.sessions() == 0

    def lock_out(self) -> None:
        """The outage: the role may not log in, and its open sessions are gone."""
        with self._admin.connect() as conn:
            conn.execute(text(f'ALTER ROLE "{self.name}" NOLOGIN'))
        self.terminate_sessions()

    def let_in(self) -> None:
        with self._admin.connect() as conn:
            conn.execute(text(f'ALTER ROLE "{self.name}" LOGIN'))

    def drop(self) -> None:
        try:
            with self._admin.connect() as conn:
                exists = conn.execute(text("SELECT 1 FROM pg_roles WHERE rolname = :role"), {"role": self.name})
                if exists.first() is None:
                    return
            self.terminate_sessions()
            with self._admin.connect() as conn:
                conn.execute(text(f'REVOKE ALL ON ALL TABLES IN SCHEMA "{self.schema}" FROM "{self.name}"'))
                conn.execute(text(f'REVOKE ALL ON ALL SEQUENCES IN SCHEMA "{self.schema}" FROM "{self.name}"'))
                conn.execute(text(f'REVOKE ALL ON SCHEMA "{self.schema}" FROM "{self.name}"'))
                conn.execute(text(f'DROP OWNED BY "{self.name}"'))
                conn.execute(text(f'DROP ROLE IF EXISTS "{self.name}"'))
        finally:
            self._admin.dispose()


@pytest.fixture
def lockable_role(database_url: str) -> Iterator[LockableRole]:
    if make_url(database_url).get_backend_name() != "postgresql":
        pytest.skip("a refused login needs PostgreSQL (set TEST_DATABASE_URL)")
    role = LockableRole(database_url)
    try:
        role.create()
        yield role
    finally:
        role.drop()


@pytest.fixture
def app_as_role(lockable_role: LockableRole, make_app: Any) -> Iterator[Flask]:
    """The app logged in as the lockable role; its engine is disposed before the role is dropped."""
    app = make_app(DATABASE_URL=lockable_role.url)
    try:
        yield app
    finally:
        services(app).db.dispose()


def test_postgres_refusing_the_app_answers_503_and_the_same_app_recovers_without_losing_messages(
    app_as_role: Flask, lockable_role: LockableRole, caplog: pytest.LogCaptureFixture
) -> None:
    client = app_as_role.test_client()
    channel = new_channel_on(app_as_role)
    assert send(client, channel, "before").status_code == 200
    assert lockable_role.sessions() > 0  # the pool holds a connection that the outage kills

    lockable_role.lock_out()

    answered_during_outage(caplog, send, client, channel, "during")
    answered_during_outage(caplog, pull, client, channel)
    answered_during_outage(caplog, client.get, "/readyz")
    answered_during_outage(caplog, send, client, channel, "during")  # the sender retries: still refused

    lockable_role.let_in()

    caplog.clear()
    with caplog.at_level(logging.WARNING):
        # The same app, in the same process: its first requests succeed.
        assert client.get("/readyz").status_code == 200
        retried = send(client, channel, "during")  # the sender's retry of the message refused above
        assert retried.status_code == 200, retried.get_data(as_text=True)
        assert retried.json == {"accepted": ["during"], "duplicates": []}
        after = send(client, channel, "after")
        assert after.status_code == 200, after.get_data(as_text=True)
        assert everything_desk_receives(client, channel) == ["before", "during", "after"]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text


def test_postgres_sessions_terminated_while_logins_work_do_not_fail_the_next_requests(
    app_as_role: Flask, lockable_role: LockableRole
) -> None:
    """A restart of the server (or a failover) kills pooled connections; the next requests get new ones."""
    client = app_as_role.test_client()
    channel = new_channel_on(app_as_role)
    assert send(client, channel, "before").status_code == 200
    assert lockable_role.sessions() > 0

    lockable_role.terminate_sessions()

    assert client.get("/readyz").status_code == 200
    assert pull(client, channel).status_code == 200
    assert send(client, channel, "after").status_code == 200
    assert everything_desk_receives(client, channel) == ["before", "after"]


def test_postgres_session_ended_during_a_write_answers_503_stores_nothing_and_the_next_requests_succeed(
    app_as_role: Flask, lockable_role: LockableRole, caplog: pytest.LogCaptureFixture
) -> None:
    """A connection that dies under a statement is an outage for that request only; the write is not retried."""
    client = app_as_role.test_client()
    channel = new_channel_on(app_as_role)
    assert send(client, channel, "before").status_code == 200
    engine = services(app_as_role).db.engine
    armed = {"write": True}

    def end_session_under_the_write(conn: Any, *_: Any) -> None:
        if armed["write"] and conn.get_execution_options().get("deskbridge_write"):
            armed["write"] = False
            lockable_role.terminate_sessions()  # the checkout found it alive; the statement finds it dead

    event.listen(engine, "before_cursor_execute", end_session_under_the_write)
    try:
        answered_during_outage(caplog, send, client, channel, "during")
    finally:
        event.remove(engine, "before_cursor_execute", end_session_under_the_write)
    assert not armed["write"]

    retried = send(client, channel, "during")
    assert retried.status_code == 200, retried.get_data(as_text=True)
    assert retried.json == {"accepted": ["during"], "duplicates": []}
    assert everything_desk_receives(client, channel) == ["before", "during"]


def test_postgres_read_on_a_connection_found_closed_answers_503_not_500(
    app_as_role: Flask, caplog: pytest.LogCaptureFixture
) -> None:
    """Switching a dead connection to AUTOCOMMIT raises the driver's own error, unwrapped by SQLAlchemy."""
    client = app_as_role.test_client()
    channel = new_channel_on(app_as_role)
    db = services(app_as_role).db
    armed = {"close": True}

    def close_the_new_connection(dbapi_connection: Any, _record: Any) -> None:
        if armed["close"]:
            armed["close"] = False
            dbapi_connection.close()

    db.dispose()  # the next request opens a connection, which the listener closes at once
    event.listen(db.engine, "connect", close_the_new_connection)
    try:
        answered_during_outage(caplog, pull, client, channel)
    finally:
        event.remove(db.engine, "connect", close_the_new_connection)
    assert not armed["close"]

    assert pull(client, channel).status_code == 200


# --- SQLite: another process holds the write lock past the busy timeout -------------------------


@pytest.fixture
def sqlite_path(database_url: str) -> str:
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite":
        pytest.skip("the file lock scenario is SQLite's")
    assert url.database
    return url.database


@pytest.fixture
def write_lock_holder(sqlite_path: str) -> Iterator[sqlite3.Connection]:
    """A connection of its own on the same file, in autocommit mode until the test takes the lock."""
    holder = sqlite3.connect(sqlite_path, isolation_level=None, timeout=5)
    try:
        yield holder
    finally:
        if holder.in_transaction:
            holder.execute("ROLLBACK")
        holder.close()


def inbox_size(holder: sqlite3.Connection, channel: Channel) -> tuple[int, int]:
    """The channel's stored messages and its last_seq, read by the lock holder itself."""
    (messages,) = holder.execute(
        "SELECT count(*) FROM inbox_messages WHERE channel_id = ?", (channel["id"],)
    ).fetchone()
    (last_seq,) = holder.execute("SELECT last_seq FROM channels WHERE id = ?", (channel["id"],)).fetchone()
    return messages, last_seq


def test_sqlite_locked_past_the_busy_timeout_answers_503_and_accepts_the_message_once_unlocked(
    make_app: Any, write_lock_holder: sqlite3.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app(SQLITE_BUSY_TIMEOUT_SECONDS="0.3")
    client = app.test_client()
    channel = new_channel_on(app)
    assert send(client, channel, "before").status_code == 200

    write_lock_holder.execute("BEGIN IMMEDIATE")  # held until the ROLLBACK below
    answered_during_outage(caplog, send, client, channel, "during")
    assert inbox_size(write_lock_holder, channel) == (1, 1)  # nothing of "during" was stored
    write_lock_holder.execute("ROLLBACK")

    caplog.clear()
    with caplog.at_level(logging.WARNING):
        retried = send(client, channel, "during")
        assert retried.status_code == 200, retried.get_data(as_text=True)
        assert retried.json == {"accepted": ["during"], "duplicates": []}
        assert everything_desk_receives(client, channel) == ["before", "during"]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    assert inbox_size(write_lock_holder, channel) == (2, 2)


def test_sqlite_writers_queued_behind_a_foreign_lock_each_answer_503_within_about_one_busy_timeout(
    make_app: Any, write_lock_holder: sqlite3.Connection
) -> None:
    """Writers queue for the lock; each may wait the busy timeout in all, not one timeout per writer ahead of it."""
    busy_timeout, writers = 0.3, 8
    app = make_app(SQLITE_BUSY_TIMEOUT_SECONDS=str(busy_timeout))
    channel = new_channel_on(app)
    start = threading.Barrier(writers)

    def timed_send(ext_id: str) -> tuple[int, float]:
        client = app.test_client()
        start.wait(timeout=10)
        began = time.monotonic()
        answer = send(client, channel, ext_id)
        return answer.status_code, time.monotonic() - began

    write_lock_holder.execute("BEGIN IMMEDIATE")
    with ThreadPoolExecutor(writers) as pool:
        results = list(pool.map(timed_send, [f"m{n}" for n in range(writers)]))
    write_lock_holder.execute("ROLLBACK")

    assert [status for status, _ in results] == [503] * writers
    slowest = max(seconds for _, seconds in results)
    # One after another each would take (writers x busy timeout) = 2.4 s; the bound leaves room for a slow machine.
    assert slowest < 5 * busy_timeout, results
    assert inbox_size(write_lock_holder, channel) == (0, 0)

    client = app.test_client()
    assert [send(client, channel, f"m{n}").status_code for n in range(writers)] == [200] * writers
    assert everything_desk_receives(client, channel) == [f"m{n}" for n in range(writers)]
