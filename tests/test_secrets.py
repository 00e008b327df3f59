"""Secrets never appear in clear in logs or in the database, after channels were created and used."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from sqlalchemy import text

from tests.conftest import ADMIN_TOKEN, TABLES, services
from tests.support import desk_pull_body, desk_push_body, signed_headers


class _Accept(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        body = b'{"id": "ext-1"}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def receiver_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Accept)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/hook"
    server.shutdown()
    server.server_close()


def secret_forms(created: dict) -> list[str]:
    forms = [created["desk"]["channelToken"]]
    for secret in (created["inbound"]["secret"], created["outbound"]["secret"]):
        forms += [secret, secret.removeprefix("whsec_")]
    return forms


def test_no_secret_in_logs_or_database_after_a_full_cycle(app, client, caplog, receiver_url):
    caplog.set_level(logging.DEBUG)
    logging.getLogger("sqlalchemy.engine").setLevel(logging.INFO)  # logs every SQL parameter
    try:
        created = client.post(
            "/api/channels",
            json={"connector": "webhook", "outbound_url": receiver_url},
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        ).json
        cli_created = json.loads(
            app.test_cli_runner()
            .invoke(args=["channel", "create", "--connector", "webhook", "--outbound-url", receiver_url])
            .output
        )
        caplog.clear()  # creation printed the secrets, by design; from here on they must not show
        body = json.dumps({"id": "m1", "conversation_id": "c1", "text": "hi"})
        inbound = client.post(
            created["inbound"]["path"], data=body, headers=signed_headers(created["inbound"]["secret"], body)
        )
        assert inbound.status_code == 200
        bad = client.post(
            created["inbound"]["path"], data=body, headers=signed_headers(cli_created["inbound"]["secret"], body)
        )
        assert bad.status_code == 401
        assert client.post("/desk/pull?orgId=1", json=desk_pull_body(created)).status_code == 200
        wrong = desk_pull_body(created) | {"channelToken": cli_created["desk"]["channelToken"]}
        assert client.post("/desk/pull?orgId=1", json=wrong).status_code == 401
        pushed = client.post("/desk/push?orgId=1", json=desk_push_body(created))
        assert pushed.status_code == 200, pushed.json
        listed = client.get("/api/channels", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        app.test_cli_runner().invoke(args=["channel", "list"])
    finally:
        logging.getLogger("sqlalchemy.engine").setLevel(logging.WARNING)

    logged = "\n".join(f"{r.getMessage()} {r.args!r}" for r in caplog.records)
    assert "INSERT INTO inbox_messages" in logged or "inbox_messages" in logged  # SQL was logged
    with services(app).db.session() as session:
        stored = "\n".join(
            repr(row) for table in TABLES for row in session.execute(text(f"SELECT * FROM {table}")).all()
        )
    assert created["id"] in stored and cli_created["id"] in stored
    for secret in secret_forms(created) + secret_forms(cli_created):
        assert secret not in logged
        assert secret not in stored
        assert secret not in listed.get_data(as_text=True)
