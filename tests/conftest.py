"""Fixtures: every test that touches the database runs on SQLite and on PostgreSQL.

PostgreSQL runs when TEST_DATABASE_URL names a server (as .ci/run does). Each test
session migrates a schema of its own (so concurrent runs do not collide), and each
test starts from empty tables.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.config import Config
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from app import create_app
from app.usecases.channels import create_channel
from tests.support import desk_pull_body, desk_push_body, services, signed_headers

# Fixtures of the stand-ins: the receiver (receiver, hooked), the Desk emulator (desk_emulator),
# the real gunicorn (start_live_server).
pytest_plugins = ["tests.receiver", "tests.desk_emulator", "tests.live_server"]

ROOT = Path(__file__).resolve().parent.parent
PG_URL = os.environ.get("TEST_DATABASE_URL")
BACKENDS = ["sqlite"] + (["postgresql"] if PG_URL else [])
TABLES = ("event_attempts", "event_deliveries", "events", "subscriptions", "installations", "jobs",
          "channel_imports", "channel_health", "reply_attempts", "replies", "inbox_messages", "conversations",
          "channels")
ADMIN_TOKEN = "test-admin-token-0123456789"


def migrate(url: str) -> None:
    """Run `alembic upgrade head` against url, as an operator would."""
    config = Config(str(ROOT / "alembic.ini"))
    config.attributes["database_url"] = url
    config.attributes["configure_logger"] = False
    command.upgrade(config, "head")


def pg_schema_url(schema: str) -> str:
    """TEST_DATABASE_URL with its search_path set to one schema."""
    assert PG_URL
    return (
        make_url(PG_URL).update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(hide_password=False)
    )


class PgSchema:
    """A PostgreSQL schema that lives for as long as a test needs it."""

    def __init__(self) -> None:
        assert PG_URL
        self.name = f"t_{uuid.uuid4().hex[:12]}"
        self._admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
        with self._admin.connect() as conn:
            conn.execute(text(f'CREATE SCHEMA "{self.name}"'))
        self.url = pg_schema_url(self.name)

    def drop(self) -> None:
        with self._admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{self.name}" CASCADE'))
        self._admin.dispose()


@pytest.fixture(scope="session", params=BACKENDS)
def backend_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A migrated database for the whole session, on each backend in turn."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'deskbridge.sqlite3'}"
        migrate(url)
        yield url
        return
    schema = PgSchema()
    try:
        migrate(schema.url)
        yield schema.url
    finally:
        schema.drop()


@pytest.fixture
def database_url(backend_url: str) -> str:
    """The session's database, emptied for this test."""
    engine = create_engine(backend_url)
    try:
        with engine.begin() as conn:
            if engine.dialect.name == "postgresql":
                conn.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
            else:
                for table in TABLES:
                    conn.execute(text(f"DELETE FROM {table}"))
    finally:
        engine.dispose()
    return backend_url


@pytest.fixture
def make_app(database_url: str, tmp_path: Path) -> Iterator[Callable[..., Flask]]:
    """Build apps on the test database; keyword arguments override settings."""
    apps: list[Flask] = []

    def build(connectors: Mapping[str, Any] | None = None, **overrides: str) -> Flask:
        settings = {
            "DATABASE_URL": database_url,
            "INSTANCE_PATH": str(tmp_path / "instance"),
            "SECRET_KEY": "test-secret-key",
            "ADMIN_TOKEN": ADMIN_TOKEN,
            "ALLOW_PRIVATE_OUTBOUND": "true",
            "PUSH_DEADLINE_SECONDS": "2",
        }
        settings.update(overrides)
        app = create_app(settings, connectors=connectors)
        app.config["TESTING"] = True
        apps.append(app)
        return app

    yield build
    for app in apps:
        services(app).db.dispose()


@pytest.fixture
def app(make_app: Callable[..., Flask]) -> Flask:
    """The application with test settings (private outbound allowed, 2 s push deadline)."""
    return make_app()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def new_channel(app: Flask) -> Callable[..., dict[str, Any]]:
    """Create channels through the admin use case; returns the creation output."""

    def create(outbound_url: str = "http://127.0.0.1:9/unused", **fields: Any) -> dict[str, Any]:
        svc = services(app)
        data = {"connector": "webhook", "outbound_url": outbound_url, **fields}
        return create_channel(svc.db, svc.keyring, svc.connectors, data)

    return create


@pytest.fixture
def channel(new_channel: Callable[..., dict[str, Any]]) -> dict[str, Any]:
    """One channel, as `channel create` printed it."""
    return new_channel(name="test channel")


__all__ = ["desk_pull_body", "desk_push_body", "services", "signed_headers"]
