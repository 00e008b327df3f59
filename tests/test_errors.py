"""SPEC B8: every error answer is JSON, with no HTML pages and no stack traces."""

from __future__ import annotations

import logging

import pytest
from flask import Flask

from tests.conftest import ADMIN_TOKEN


def assert_json_error(answer, status: int, code: str) -> None:
    assert answer.status_code == status
    assert answer.mimetype == "application/json"
    assert answer.json["error"] == code
    assert answer.json["message"]
    assert "<html" not in answer.get_data(as_text=True).lower()


def test_unknown_path_is_json_404(client):
    assert_json_error(client.get("/nowhere"), 404, "not_found")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", "/desk/pull"),
        ("put", "/desk/push"),
        ("delete", "/api/channels"),
        ("get", "/inbound/ch_x"),
        ("post", "/healthz"),
    ],
)
def test_wrong_method_is_json_405_with_allow_header(client, method, path):
    answer = getattr(client, method)(path)
    assert_json_error(answer, 405, "method_not_allowed")
    assert answer.headers.get("Allow")


@pytest.mark.parametrize("path", ["/desk/pull?orgId=1", "/desk/push?orgId=1", "/inbound/{id}", "/api/channels"])
def test_body_over_max_body_bytes_is_json_413(make_app, new_channel, path):
    app = make_app(MAX_BODY_BYTES="2048")
    created = new_channel()
    answer = app.test_client().post(
        path.format(id=created["id"]),
        data=b"{" + b" " * 4096 + b"}",
        content_type="application/json",
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
    )
    assert_json_error(answer, 413, "request_entity_too_large")


def test_unexpected_exception_is_logged_with_request_id_and_answered_json_500(make_app, caplog):
    app: Flask = make_app()

    @app.get("/boom")
    def boom():
        raise RuntimeError("kaboom secret internals")

    client = app.test_client()
    with caplog.at_level(logging.ERROR):
        answer = client.get("/boom", headers={"X-Request-Id": "req-123"})
    assert_json_error(answer, 500, "internal_error")
    assert "kaboom" not in answer.get_data(as_text=True)
    assert "req-123" in answer.json["message"]
    assert answer.headers["X-Request-Id"] == "req-123"
    record = next(r for r in caplog.records if "req-123" in r.getMessage())
    assert record.exc_info and "kaboom" in str(record.exc_info[1])


def test_request_id_is_generated_when_absent_or_unusable(client):
    generated = client.get("/healthz").headers["X-Request-Id"]
    assert len(generated) == 16
    assert client.get("/healthz", headers={"X-Request-Id": "x" * 500}).headers["X-Request-Id"] != "x" * 500
