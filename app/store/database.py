"""The engine and sessions, set up for SQLite (several workers) and PostgreSQL."""

from __future__ import annotations

import fcntl
import os
import select
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from app.domain.errors import Unavailable

# A write transaction on SQLite starts with BEGIN IMMEDIATE: it takes the database
# write lock at once (waiting up to busy_timeout), so a transaction never fails
# half-way when it upgrades from reading to writing. This is the per-channel lock
# of SPEC B3 on SQLite, where the write lock is per database.
WRITE_TRANSACTION = {"deskbridge_write": True}
SQLITE_BUSY_TIMEOUT_SECONDS = 10.0
# A SQLite writer that waited in the writers' queue may wait this much less for the write
# lock itself (an execution option, in milliseconds); see Database._write_lock.
BUSY_WAIT_OPTION = "deskbridge_busy_wait_ms"
# ... but never less than this: a foreign checkpoint may hold the lock for a moment.
MIN_BUSY_WAIT_MS = 50
RETRY_AFTER_SECONDS = 5


class DatabaseUnavailable(Exception):
    """The database does not answer (down, refusing logins, locked past the busy timeout)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    @classmethod
    def from_error(cls, exc: BaseException) -> DatabaseUnavailable | None:
        """The outage an exception reports, or None if it is something else (a bug)."""
        if isinstance(exc, cls):
            return exc
        if isinstance(exc, sa_exc.TimeoutError):
            return cls("no database connection free in time")
        if isinstance(exc, (sa_exc.OperationalError, sa_exc.InterfaceError)):
            # The class name only: the driver's text may quote SQL or connection details.
            return cls(f"{type(exc.orig).__name__ if exc.orig is not None else type(exc).__name__}"
                       f"{' (connection lost)' if exc.connection_invalidated else ''}")
        return None

    def as_domain_error(self) -> Unavailable:
        """What a caller is told."""
        return Unavailable(
            "database_unavailable",
            "The database is not available right now; try again in a few seconds.",
            retry_after=RETRY_AFTER_SECONDS,
        )


def make_engine(url: str, *, busy_timeout: float = SQLITE_BUSY_TIMEOUT_SECONDS) -> Engine:
    """Create an engine; SQLite gets WAL, a busy timeout and foreign keys."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(url, busy_timeout)
    # No pre-ping (a round trip per request): a connection the server has closed is found
    # at checkout without one (_drop_connections_closed_by_server), and one found dead by a
    # statement raises once, after which SQLAlchemy replaces the whole pool. Recycling
    # bounds a connection's age. A request holds one connection at a time, so a worker needs
    # about as many as it has threads; several workers per host must stay under the
    # server's max_connections.
    # hide_parameters: an error's text quotes its statement's parameters, which may be message content.
    engine = create_engine(url, pool_size=4, max_overflow=8, pool_recycle=1800, hide_parameters=True)
    _drop_connections_closed_by_server(engine)
    return engine


def _drop_connections_closed_by_server(engine: Engine) -> None:
    """Replace, at checkout, a pooled connection that the server has ended.

    When the server ends a session (restart, failover, pg_terminate_backend, an idle
    timeout) it sends an error and closes the socket, so an idle connection with
    anything to read is dead. Polling the socket costs no round trip. Nothing has been
    sent on the connection yet, so taking a new one is safe for reads and writes alike;
    a statement that fails later is never retried.
    """

    @event.listens_for(engine, "connect")
    def _fresh(_dbapi_connection: Any, record: Any) -> None:
        record.info["deskbridge_fresh"] = True  # record.info is emptied on every reconnect

    @event.listens_for(engine, "checkout")
    def _check(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        if record.info.pop("deskbridge_fresh", False):
            return  # just opened: nothing to find, and a second new one would not be better
        if _closed_by_server(dbapi_connection):
            # The pool takes a new connection (or raises the connect error, an outage).
            raise sa_exc.DisconnectionError("the server closed this pooled connection")


def _closed_by_server(dbapi_connection: Any) -> bool:
    """Whether an idle connection has something to read (the server's goodbye, or EOF)."""
    try:
        fd = dbapi_connection.fileno()
    except Exception:  # the driver's "connection is closed"
        return True
    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLPRI)
    return bool(poller.poll(0))


def _sqlite_engine(url: str, busy_timeout: float) -> Engine:
    memory = make_url(url).database in (None, "", ":memory:")
    engine = create_engine(
        url,
        hide_parameters=True,
        # Pooled connections: opening one and setting its pragmas costs more than
        # a whole empty pull. A pooled connection is used by one thread at a time.
        pool_size=8,
        max_overflow=16,
        connect_args={"check_same_thread": False, "timeout": busy_timeout},
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the driver, decide where transactions begin.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
        cursor.execute("PRAGMA foreign_keys = ON")
        if not memory:
            cursor.execute("PRAGMA journal_mode = WAL")
            # In WAL mode NORMAL is durable against process crashes and consistent
            # after power loss; it skips one fsync per commit.
            cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        # Reads run without an explicit transaction (each statement sees the latest
        # commit): no read depends on a snapshot across statements, because a
        # conversation is committed together with its first message.
        options = conn.get_execution_options()
        if not options.get("deskbridge_write"):
            return
        wait_ms = options.get(BUSY_WAIT_OPTION)
        if wait_ms is None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
            return
        # What is left of this writer's wait after its time in the writers' queue.
        conn.exec_driver_sql(f"PRAGMA busy_timeout = {int(wait_ms)}")
        try:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        finally:
            conn.exec_driver_sql(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")

    return engine


class _WriterQueue:
    """Serialises SQLite writers of all processes on a blocking file lock.

    SQLite's own busy handler polls with sleeps of 1 to 100 ms, so under
    contention writers spend most of their time asleep while the lock is free.
    A blocked flock() wakes as soon as the holder lets go. Each acquisition
    opens its own descriptor, so threads of one process queue as well.
    """

    def __init__(self, database_path: str) -> None:
        self._path = database_path + ".writelock"

    @contextmanager
    def held(self) -> Iterator[None]:
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock


class Database:
    """The engine and the session factory of one application."""

    def __init__(self, url: str, *, busy_timeout: float = SQLITE_BUSY_TIMEOUT_SECONDS) -> None:
        self.engine = make_engine(url, busy_timeout=busy_timeout)
        self._busy_timeout = busy_timeout
        self.is_sqlite = self.engine.dialect.name == "sqlite"
        database = self.engine.url.database
        self._writers = (
            _WriterQueue(database) if self.is_sqlite and database not in (None, "", ":memory:") else None
        )
        self._sessions = sessionmaker(self.engine, expire_on_commit=False, autoflush=False)

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A connection for reads, outside any transaction: each statement sees the latest commit.

        No read depends on a snapshot across statements (a conversation is committed
        together with its first message), and PostgreSQL is spared BEGIN and ROLLBACK.
        """
        with self.engine.connect() as conn:
            if not self.is_sqlite:
                self._autocommit(conn)
            yield conn

    def _autocommit(self, conn: Connection) -> None:
        """Switch a PostgreSQL connection to AUTOCOMMIT; a dead connection is an outage.

        The driver's error escapes here unwrapped by SQLAlchemy, so it is classified here.
        """
        try:
            conn.execution_options(isolation_level="AUTOCOMMIT")
        except self.engine.dialect.loaded_dbapi.Error as exc:
            dbapi_connection = conn.connection.dbapi_connection
            if not self.engine.dialect.is_disconnect(exc, dbapi_connection, None):
                raise
            conn.invalidate(exc)
            raise DatabaseUnavailable(f"{type(exc).__name__} (connection lost)") from exc

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A connection in a write transaction, committed when the block ends without error.

        On SQLite the transaction holds the database write lock from its start; on
        PostgreSQL the use case locks the rows it needs.
        """
        with self._write_lock() as options, self.engine.connect() as conn:
            conn.execution_options(**options)
            with conn.begin():
                yield conn

    @contextmanager
    def session(self, *, write: bool = False) -> Iterator[Session]:
        """A session whose transaction is committed by the caller, rolled back on error.

        A write session holds the database's write lock (SQLite) from its start;
        on PostgreSQL the use case locks the rows it needs.
        """
        with self._write_lock() if write else nullcontext(WRITE_TRANSACTION) as options:
            session = self._sessions()
            try:
                if write:
                    session.connection(execution_options=options)
                yield session
            except BaseException:
                session.rollback()
                raise
            finally:
                session.close()

    @contextmanager
    def _write_lock(self) -> Iterator[dict[str, Any]]:
        """SQLite: wait in the writers' queue. Yields the write transaction's execution options.

        A writer's whole wait is bounded by about the busy timeout: time spent in the queue
        is taken from what BEGIN IMMEDIATE may wait. Without that, while another process
        holds the database's lock (a backup, the sqlite3 shell), every queued writer would
        wait its full busy timeout in turn, and the last of N would answer after N timeouts.
        """
        if self._writers is None:
            yield WRITE_TRANSACTION
            return
        queued_at = time.monotonic()
        with self._writers.held():
            queued = time.monotonic() - queued_at
            if queued < self._busy_timeout / 10:
                yield WRITE_TRANSACTION  # the usual case: no extra statements
            else:
                left_ms = max(MIN_BUSY_WAIT_MS, int((self._busy_timeout - queued) * 1000))
                yield {**WRITE_TRANSACTION, BUSY_WAIT_OPTION: left_ms}

    def ping(self) -> None:
        """Raise if the database does not answer."""
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    def dispose(self) -> None:
        """Close all pooled connections."""
        self.engine.dispose()
