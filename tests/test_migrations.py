"""Alembic owns the schema: an empty database migrated to head matches the models."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from app.store.database import make_engine
from app.store.models import Base
from tests.conftest import BACKENDS, ROOT, PgSchema, migrate


@pytest.fixture(params=BACKENDS)
def empty_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.sqlite3'}"
        return
    schema = PgSchema()
    try:
        yield schema.url
    finally:
        schema.drop()


def differences(url: str) -> list[object]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            return compare_metadata(context, Base.metadata)
    finally:
        engine.dispose()


def test_empty_database_migrated_to_head_matches_the_models(empty_database):
    migrate(empty_database)
    assert differences(empty_database) == []


def test_migrations_downgrade_to_base_and_upgrade_again(empty_database):
    migrate(empty_database)
    config = Config(str(ROOT / "alembic.ini"))
    config.attributes["database_url"] = empty_database
    config.attributes["configure_logger"] = False
    command.downgrade(config, "base")
    engine = make_engine(empty_database)
    try:
        assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    finally:
        engine.dispose()
    migrate(empty_database)
    assert differences(empty_database) == []


def test_sqlite_connections_use_wal_busy_timeout_and_foreign_keys(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'pragmas.sqlite3'}")
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 5000
    finally:
        engine.dispose()


def test_concurrent_upgrades_of_an_empty_database_both_succeed(empty_database):
    # Hosts starting together each run `alembic upgrade head`: two processes, as there.
    env = {**os.environ, "DATABASE_URL": empty_database}
    alembic = str(Path(sys.executable).with_name("alembic"))
    runs = [
        subprocess.Popen([alembic, "upgrade", "head"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
        for _ in range(2)
    ]
    outputs = [run.communicate(timeout=120)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    assert differences(empty_database) == []


def test_a_webhook_channel_made_before_connector_settings_keeps_working_after_the_upgrade(
    empty_database: str, tmp_path: Path
) -> None:
    from sqlalchemy import text

    from app import create_app
    from app.keyring import Keyring, hash_token, new_token, new_webhook_secret
    from tests.receiver import Answer, running_receiver
    from tests.support import desk_push_body, signed_headers

    config = Config(str(ROOT / "alembic.ini"))
    config.attributes["database_url"] = empty_database
    config.attributes["configure_logger"] = False
    command.upgrade(config, "0001")
    keyring = Keyring("migration-test-key")
    token, inbound, outbound = new_token(), new_webhook_secret(), new_webhook_secret()
    with running_receiver(outbound) as receiver:
        engine = make_engine(empty_database)
        try:
            with engine.begin() as conn:
                conn.execute(
                    text(
                        "INSERT INTO channels (id, name, org_id, connector, outbound_url, desk_token_hash,"
                        " inbound_secret, outbound_secret, enabled, last_seq, acked_seq, created_at)"
                        " VALUES ('ch_old', 'old', NULL, 'webhook', :url, :hash, :inbound, :outbound, true, 0, 0,"
                        " CURRENT_TIMESTAMP)"
                    ),
                    {"url": receiver.url, "hash": hash_token(token), "inbound": keyring.encrypt(inbound),
                     "outbound": keyring.encrypt(outbound)},
                )
        finally:
            engine.dispose()
        command.upgrade(config, "head")
        app = create_app({"DATABASE_URL": empty_database, "SECRET_KEY": "migration-test-key",
                          "INSTANCE_PATH": str(tmp_path), "ALLOW_PRIVATE_OUTBOUND": "true"})
        try:
            client = app.test_client()
            body = '{"id": "m1", "conversation_id": "c1", "text": "still here"}'
            answer = client.post("/inbound/ch_old", data=body, headers=signed_headers(inbound, body))
            assert answer.status_code == 200, answer.json
            receiver.script(Answer(200, {"id": "sent-1"}))
            channel = {"desk": {"channelId": "ch_old", "channelToken": token}}
            pushed = client.post("/desk/push?orgId=1", json=desk_push_body(channel))
            assert pushed.status_code == 200, pushed.json
            assert receiver.received[0].signature_valid
        finally:
            app.extensions["deskbridge"].db.dispose()
    command.downgrade(config, "0001")  # and back: the channel's columns are restored
    engine = make_engine(empty_database)
    try:
        with engine.connect() as conn:
            row = conn.execute(text("SELECT outbound_url, inbound_secret FROM channels WHERE id = 'ch_old'")).one()
    finally:
        engine.dispose()
    assert row.outbound_url == receiver.url
    assert keyring.decrypt(row.inbound_secret) == inbound
