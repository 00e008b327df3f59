"""One JSON error shape for every error answer (SPEC B8)."""

from __future__ import annotations

import logging
import secrets
from typing import Any

import orjson
from flask import Flask, Response, g, request
from werkzeug.exceptions import HTTPException

log = logging.getLogger(__name__)


class ApiError(Exception):
    """An error answer: HTTP status, a stable code and a readable message."""

    def __init__(self, status: int, code: str, message: str, fields: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.fields = fields


def json_response(body: Any, status: int = 200) -> Response:
    """A JSON answer serialized with orjson."""
    return Response(orjson.dumps(body), status=status, mimetype="application/json")


def error_response(status: int, code: str, message: str, fields: dict[str, Any] | None = None) -> Response:
    """The error shape: {"error", "message"} plus "fields" for validation errors."""
    body: dict[str, Any] = {"error": code, "message": message}
    if fields is not None:
        body["fields"] = fields
    return json_response(body, status)


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """Parse a request body that must be a JSON object, or raise a 400 ApiError."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ApiError(400, "invalid_json", "The request body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_json", "The request body must be a JSON object.")
    return body


def _http_code(exc: HTTPException) -> str:
    return (exc.name or "error").lower().replace(" ", "_").replace("'", "")


def register_error_handlers(app: Flask) -> None:
    """Answer every error, expected or not, with the JSON error shape."""

    @app.before_request
    def _request_id() -> None:
        incoming = request.headers.get("X-Request-Id", "")
        g.request_id = incoming if 0 < len(incoming) <= 64 and incoming.isprintable() else secrets.token_hex(8)

    @app.after_request
    def _echo_request_id(response: Response) -> Response:
        if "request_id" in g:
            response.headers["X-Request-Id"] = g.request_id
        return response

    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError) -> Response:
        return error_response(exc.status, exc.code, exc.message, exc.fields)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        message = exc.description or exc.name
        if status == 413:
            message = "The request body is larger than this server accepts."
        response = error_response(status, _http_code(exc), message)
        if status == 405 and exc.get_response().headers.get("Allow"):
            response.headers["Allow"] = exc.get_response().headers["Allow"]
        return response

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        request_id = g.get("request_id", "-")
        log.exception("unexpected error on %s %s (request %s)", request.method, request.path, request_id)
        response = error_response(500, "internal_error", f"Unexpected server error (request {request_id}).")
        return response
