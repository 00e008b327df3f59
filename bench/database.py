"""A fresh, migrated database for one run, and the bulk seeding of large inboxes."""

from __future__ import annotations

import json
import multiprocessing
import re
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from psycopg.types.json import _JsonWrapper as JsonWrapper
from sqlalchemy import Table, create_engine, text, update
from sqlalchemy.engine import Dialect, make_url

from app.rendering import html_to_text, sanitize_html, subject_line
from app.store.database import Database
from app.store.models import Channel, Conversation, InboxMessage
from app.usecases.clock import utcnow
from bench.payloads import loaded_message, message

ROOT = Path(__file__).resolve().parent.parent
SEED_CHUNK = 100_000  # messages per transaction (about)
SEED_WORKERS = 1  # with this process writing, one builder keeps both cores busy
PIECE = 10_000  # messages per piece built by the worker process
_DIGITS = re.compile(r"\d+")


@dataclass(frozen=True)
class BenchDatabase:
    """The database of one run: the URL deskbridge gets, and what it is."""

    url: str
    backend: str  # "sqlite" or "postgresql"
    where: str  # the file or the schema, for the report


def migrate(url: str) -> None:
    """`alembic upgrade head` against url, as an operator would run it."""
    config = Config(str(ROOT / "alembic.ini"))
    config.attributes["database_url"] = url
    config.attributes["configure_logger"] = False
    command.upgrade(config, "head")


@contextmanager
def fresh_database(server_url: str | None, workdir: Path) -> Iterator[BenchDatabase]:
    """A new migrated database: a SQLite file in workdir, or a new schema on a PostgreSQL server.

    The PostgreSQL schema is dropped on the way out, whatever happened.
    """
    if server_url is None:
        path = workdir / "deskbridge.sqlite3"
        url = f"sqlite:///{path}"
        migrate(url)
        yield BenchDatabase(url=url, backend="sqlite", where=str(path))
        return
    parsed = make_url(server_url)
    if parsed.get_backend_name() != "postgresql":
        raise ValueError("--database-url must be a postgresql+psycopg:// URL (SQLite is the default)")
    schema = f"bench_{uuid.uuid4().hex[:12]}"
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        try:
            url = parsed.update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(
                hide_password=False
            )
            migrate(url)
            yield BenchDatabase(url=url, backend="postgresql", where=f"schema {schema}")
        finally:
            with admin.connect() as conn:
                # Connections of stopped servers can linger for a moment; do not wait on them.
                conn.execute(text("SET lock_timeout = '30s'"))
                conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    finally:
        admin.dispose()


def _processors(table: Table, dialect: Dialect) -> tuple[list[str], list[Callable[[Any], Any] | None]]:
    """The columns of a table (but its id) and their bind processors, as SQLAlchemy applies them."""
    columns = [column for column in table.columns if column.name != "id"]
    return [c.name for c in columns], [c.type.dialect_impl(dialect).bind_processor(dialect) for c in columns]


def _derived_subject(item: dict[str, Any], cache: dict[str, str]) -> str:
    """The subject ingest derives for a conversation (app/usecases/ingest.py _derived_subject).

    Rendering HTML takes about half a millisecond, too slow for a million rows; the
    generated HTML differs only in its numbers, so a rendered subject without digits
    is reused for HTML that differs only in its digits.
    """
    html = item.get("html")
    if html:
        key = _DIGITS.sub("0", html)
        if key in cache:
            return cache[key]
    body = html_to_text(html) if html else item.get("text") or ""
    subject = subject_line(body)
    if not subject:
        for attachment in item.get("attachments") or []:
            subject = subject_line(f"Attachment: {attachment.get('name') or attachment['url']}")
            break
        else:
            subject = "(no subject)"
    if html and not _DIGITS.search(subject):
        cache[_DIGITS.sub("0", html)] = subject
    return subject


def inbox_and_conversation_rows(
    channel_id: str, prefix: str, first: int, last: int, now: datetime
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Rows of messages first..last (seq = n), as ingest writes them (app/usecases/ingest.py), not yet bound."""
    inbox: list[dict[str, Any]] = []
    conversations: list[dict[str, Any]] = []
    subjects: dict[str, str] = {}
    for n in range(first, last + 1):
        item = loaded_message(message(prefix, n))
        if item.get("html"):
            item["html"] = sanitize_html(item["html"])  # what ingest stores
        html = item.get("html")
        inbox.append({
            "channel_id": channel_id, "seq": n, "ext_id": item["id"], "conversation_ext_id": item["conversation_id"],
            "content": html or item.get("text") or "", "content_type": "text/html" if html else "text/plain",
            "direction": item.get("direction", "in"), "can_reply": item.get("can_reply", True),
            "author": item.get("author") or None, "attachments": item.get("attachments") or None,
            "permalink": item.get("permalink"), "created_at": item.get("created_at") or now, "received_at": now,
        })
        subject = (item.get("subject") or "").strip()[:255] or _derived_subject(item, subjects)
        conversations.append({"channel_id": channel_id, "ext_id": item["conversation_id"], "first_seq": n,
                              "subject": subject, "created_at": now})
    return inbox, conversations


def _in_column_order(rows: list[dict[str, Any]], columns: list[str], table: str) -> list[tuple[Any, ...]]:
    """Row dicts as tuples in the table's column order; a column the seeder does not fill is an error."""
    missing = [name for name in columns if rows and name not in rows[0]]
    if missing:
        raise RuntimeError(f"the seeder does not fill {table}.{', '.join(missing)}: update bench/database.py "
                           "to write rows as app/usecases/ingest.py does")
    return [tuple(row[name] for name in columns) for row in rows]


def _frozen(value: Any) -> Any:
    """A hashable stand-in for a column value (dicts and lists become tuples)."""
    if isinstance(value, dict):
        return ("d", *((k, _frozen(v)) for k, v in value.items()))
    if isinstance(value, list):
        return ("l", *(_frozen(v) for v in value))
    return value


class _Binder:
    """Applies the columns' bind processors, remembering results for repeated values.

    Authors, empty attachments and the receive time repeat across rows, and JSON
    serialization and datetime formatting are most of the cost of a row; a column
    whose values do not repeat (the creation time) stops being remembered.
    """

    def __init__(self, processors: list[Callable[[Any], Any] | None]) -> None:
        self._active = [(i, p) for i, p in enumerate(processors) if p is not None]
        self._memo: dict[int, dict[Any, Any]] = {i: {} for i, _ in self._active}
        self._hits = dict.fromkeys(self._memo, 0)
        self._seen = 0

    def bind(self, rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
        bound = []
        for row in rows:
            values = list(row)
            for i, process in self._active:
                memo = self._memo.get(i)
                if memo is None:
                    values[i] = process(values[i])
                    continue
                key = _frozen(values[i])
                if key in memo:
                    self._hits[i] += 1
                    values[i] = memo[key]
                    continue
                values[i] = memo[key] = process(values[i])
            bound.append(tuple(values))
            self._seen += 1
            if self._seen == 2000:
                self._memo = {i: memo for i, memo in self._memo.items() if self._hits[i] > 1000}
        return bound


_BINDERS: dict[str, tuple[tuple[list[str], _Binder], tuple[list[str], _Binder]]] = {}


def _copy_value(value: Any) -> str:
    """One value in PostgreSQL's COPY text format."""
    if value is None:
        return "\\N"
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, JsonWrapper):  # what the psycopg dialect binds JSON columns to
        value = (value.dumps or json.dumps)(value.obj)
    text_ = str(value)
    if "\\" in text_ or "\t" in text_ or "\n" in text_ or "\r" in text_:
        text_ = text_.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
    return text_


def _to_copy(process: Callable[[Any], Any] | None) -> Callable[[Any], Any]:
    """A column's bind processor followed by the COPY text formatting."""
    if process is None:
        return _copy_value
    return lambda value: _copy_value(process(value))


Rows = list[tuple[Any, ...]] | bytes


def _binders(url: str) -> tuple[tuple[list[str], _Binder], tuple[list[str], _Binder]]:
    if url not in _BINDERS:
        dialect = create_engine(url).dialect
        made = []
        for table in (InboxMessage.__table__, Conversation.__table__):
            columns, processors = _processors(table, dialect)  # type: ignore[arg-type]
            if not url.startswith("sqlite"):
                processors = [_to_copy(p) for p in processors]
            made.append((columns, _Binder(processors)))
        _BINDERS[url] = (made[0], made[1])
    return _BINDERS[url]


def bound_rows(url: str, channel_id: str, prefix: str, first: int, last: int, now: datetime) -> tuple[Rows, Rows]:
    """Rows of messages first..last, bound for the driver of `url` (runs in a worker process).

    For PostgreSQL they come as COPY data, so that the worker does the formatting too.
    """
    (inbox_columns, inbox_binder), (conv_columns, conv_binder) = _binders(url)
    inbox_rows, conv_rows = inbox_and_conversation_rows(channel_id, prefix, first, last, now)
    inbox = inbox_binder.bind(_in_column_order(inbox_rows, inbox_columns, "inbox_messages"))
    conversations = conv_binder.bind(_in_column_order(conv_rows, conv_columns, "conversations"))
    if url.startswith("sqlite"):
        return inbox, conversations
    return (("".join("\t".join(row) + "\n" for row in inbox)).encode(),
            ("".join("\t".join(row) + "\n" for row in conversations)).encode())


def seed_inbox(db: Database, channel_id: str, prefix: str, count: int) -> dict[str, float]:
    """Bulk-load `count` messages (seq 1..count) into an empty channel's inbox; see seed_inboxes."""
    return seed_inboxes(db, [(channel_id, prefix, count)])


def seed_inboxes(db: Database, plans: list[tuple[str, str, int]], chunk: int = SEED_CHUNK) -> dict[str, float]:
    """Bulk-load messages into empty channels' inboxes, with their conversations: (channel, prefix, count) each.

    The rows are those ingest would write (inbox_messages, conversations, then
    channels.last_seq), with values bound by the models' own column types; a channel
    gets seq 1..count. A worker process builds and binds them in pieces; this process
    writes them through the driver in transactions of about `chunk` messages:
    executemany on SQLite, COPY on PostgreSQL.
    """
    started = time.monotonic()
    inbox_columns = _processors(InboxMessage.__table__, db.engine.dialect)[0]  # type: ignore[arg-type]
    conv_columns = _processors(Conversation.__table__, db.engine.dialect)[0]  # type: ignore[arg-type]
    url = db.engine.url.set(database=None, query={}).render_as_string(hide_password=True)
    now = utcnow()
    pieces = [(channel_id, prefix, first, min(first + PIECE - 1, count))
              for channel_id, prefix, count in plans for first in range(1, count + 1, PIECE)]
    raw = db.engine.raw_connection()
    try:
        driver = raw.driver_connection
        if db.is_sqlite:
            # A page cache that holds the indexes being filled (this connection only).
            driver.execute("PRAGMA cache_size = -1000000")
        else:
            _skip_foreign_key_triggers(driver)
        with ProcessPoolExecutor(max_workers=SEED_WORKERS, mp_context=multiprocessing.get_context("spawn")) as pool:
            pending: deque[Future[tuple[Rows, Rows]]] = deque()
            in_transaction = 0  # messages written since the last commit
            for index in range(len(pieces)):
                while len(pending) < 4 and index + len(pending) < len(pieces):
                    pending.append(pool.submit(bound_rows, url, *pieces[index + len(pending)], now))
                _, _, first, last = pieces[index]
                inbox, conversations = pending.popleft().result()
                if db.is_sqlite:
                    _sqlite_insert(driver, "conversations", conv_columns, conversations, begin=in_transaction == 0)
                    _sqlite_insert(driver, "inbox_messages", inbox_columns, inbox, begin=False)
                else:
                    with driver.cursor() as cursor:
                        _pg_copy(cursor, "conversations", conv_columns, conversations)
                        _pg_copy(cursor, "inbox_messages", inbox_columns, inbox)
                in_transaction += last - first + 1
                if in_transaction >= chunk or index == len(pieces) - 1:
                    driver.execute("COMMIT") if db.is_sqlite else driver.commit()
                    in_transaction = 0
        if db.is_sqlite:
            driver.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        else:
            # What autovacuum does shortly after a bulk load; done at once so the plans are settled.
            with driver.cursor() as cursor:
                cursor.execute("ANALYZE inbox_messages")
                cursor.execute("ANALYZE conversations")
            driver.commit()
    finally:
        raw.close()
    with db.session(write=True) as session:
        for channel_id, _, count in plans:
            session.execute(update(Channel).where(Channel.id == channel_id).values(last_seq=count))
        session.commit()
    seconds = time.monotonic() - started
    rows = sum(count for _, _, count in plans)
    return {"rows": rows, "seconds": round(seconds, 2), "rows_per_second": round(rows / seconds) if seconds else 0}


def _skip_foreign_key_triggers(driver: Any) -> None:
    """Skip the per-row foreign key checks of this session (superuser only): every row is the one channel's."""
    try:
        with driver.cursor() as cursor:
            cursor.execute("SET session_replication_role = replica")
        driver.commit()
    except Exception:
        driver.rollback()


def _sqlite_insert(driver: Any, table: str, columns: list[str], rows: Rows, *, begin: bool) -> None:
    assert not isinstance(rows, bytes)
    if begin:
        driver.execute("BEGIN IMMEDIATE")
    marks = ", ".join("?" for _ in columns)
    driver.executemany(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})", rows)


def _pg_copy(cursor: Any, table: str, columns: list[str], data: Rows) -> None:
    assert isinstance(data, bytes)
    with cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
        copy.write(data)


_JSON_COLUMNS = ("author", "attachments")
_COMPARED = ("seq", "ext_id", "conversation_ext_id", "content", "content_type", "direction", "can_reply",
             "author", "attachments", "permalink", "created_at")


def seeded_rows_differences(db: Database, seeded_channel: str, ingested_channel: str, last_seq: int) -> list[str]:
    """How seeded rows differ from the same messages ingested over HTTP (stored values, as the driver reads them)."""
    inbox_sql = text(
        f"SELECT {', '.join(_COMPARED)} FROM inbox_messages WHERE channel_id = :c AND seq <= :n ORDER BY seq"
    )
    conv_sql = text("SELECT ext_id, subject, first_seq FROM conversations WHERE channel_id = :c AND first_seq <= :n "
                    "ORDER BY first_seq")
    problems: list[str] = []
    with db.engine.connect() as conn:
        for label, sql, names in (("inbox_messages", inbox_sql, _COMPARED),
                                  ("conversations", conv_sql, ("ext_id", "subject", "first_seq"))):
            seeded = conn.execute(sql, {"c": seeded_channel, "n": last_seq}).all()
            ingested = conn.execute(sql, {"c": ingested_channel, "n": last_seq}).all()
            if len(seeded) != len(ingested):
                problems.append(f"{label}: {len(seeded)} seeded rows, {len(ingested)} ingested")
                continue
            for a, b in zip(seeded, ingested, strict=True):
                for name, x, y in zip(names, a, b, strict=True):
                    if name in _JSON_COLUMNS and isinstance(x, str) and isinstance(y, str):
                        # The same JSON value, whatever serializer wrote it (the what-if patches may change it).
                        x, y = json.loads(x), json.loads(y)
                    if x != y or type(x) is not type(y):
                        problems.append(f"{label} seq/ext {a[0]} column {name}: seeded {x!r} != ingested {y!r}")
    return problems
