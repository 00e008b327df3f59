"""The engine and sessions, set up for SQLite (several workers) and PostgreSQL."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

# A write transaction on SQLite starts with BEGIN IMMEDIATE: it takes the database
# write lock at once (waiting up to busy_timeout), so a transaction never fails
# half-way when it upgrades from reading to writing. This is the per-channel lock
# of SPEC B3 on SQLite, where the write lock is per database.
WRITE_TRANSACTION = {"deskbridge_write": True}
SQLITE_BUSY_TIMEOUT_MS = 30_000


def make_engine(url: str) -> Engine:
    """Create an engine; SQLite gets WAL, a busy timeout and foreign keys."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(url)
    # No pre-ping (a round trip per request): a connection found dead raises once, and
    # SQLAlchemy then replaces the whole pool. Recycling bounds a connection's age.
    # A request holds one connection at a time, so a worker needs about as many as it
    # has threads; several workers per host must stay under the server's max_connections.
    return create_engine(url, pool_size=4, max_overflow=8, pool_recycle=1800)


def _sqlite_engine(url: str) -> Engine:
    memory = make_url(url).database in (None, "", ":memory:")
    engine = create_engine(
        url,
        # Pooled connections: opening one and setting its pragmas costs more than
        # a whole empty pull. A pooled connection is used by one thread at a time.
        pool_size=8,
        max_overflow=16,
        connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the driver, decide where transactions begin.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
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
        if conn.get_execution_options().get("deskbridge_write"):
            conn.exec_driver_sql("BEGIN IMMEDIATE")

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

    def __init__(self, url: str) -> None:
        self.engine = make_engine(url)
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
                conn.execution_options(isolation_level="AUTOCOMMIT")
            yield conn

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A connection in a write transaction, committed when the block ends without error.

        On SQLite the transaction holds the database write lock from its start; on
        PostgreSQL the use case locks the rows it needs.
        """
        with self._writers.held() if self._writers else nullcontext(), self.engine.connect() as conn:
            conn.execution_options(**WRITE_TRANSACTION)
            with conn.begin():
                yield conn

    @contextmanager
    def session(self, *, write: bool = False) -> Iterator[Session]:
        """A session whose transaction is committed by the caller, rolled back on error.

        A write session holds the database's write lock (SQLite) from its start;
        on PostgreSQL the use case locks the rows it needs.
        """
        with self._writers.held() if write and self._writers else nullcontext():
            session = self._sessions()
            try:
                if write:
                    session.connection(execution_options=WRITE_TRANSACTION)
                yield session
            except BaseException:
                session.rollback()
                raise
            finally:
                session.close()

    def ping(self) -> None:
        """Raise if the database does not answer."""
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    def dispose(self) -> None:
        """Close all pooled connections."""
        self.engine.dispose()
