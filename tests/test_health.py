"""SPEC B7: /healthz answers while the process is up, /readyz while the database answers."""

from __future__ import annotations


def test_healthz_answers_200(client):
    answer = client.get("/healthz")
    assert answer.status_code == 200 and answer.json == {"status": "ok"}


def test_readyz_answers_200_when_the_database_answers(client):
    answer = client.get("/readyz")
    assert answer.status_code == 200 and answer.json == {"status": "ready"}


def test_readyz_answers_503_when_the_database_does_not(make_app, tmp_path):
    app = make_app(DATABASE_URL=f"sqlite:///{tmp_path / 'missing-dir' / 'db.sqlite3'}")
    client = app.test_client()
    answer = client.get("/readyz")
    assert answer.status_code == 503
    assert answer.json["error"] == "database_unavailable"
    assert client.get("/healthz").status_code == 200
