"""One JSON error shape for every error answer (SPEC B8), and the one table that maps
domain errors to HTTP statuses."""

from __future__ import annotations

import logging
from typing import Any

import orjson
from flask import Flask, Response, g, request
from werkzeug.exceptions import HTTPException

from app.domain import errors as domain
from app.store.database import DatabaseUnavailable

log = logging.getLogger(__name__)

# Domain error → HTTP status; the first class an error is an instance of decides.
STATUS: tuple[tuple[type[domain.DomainError], int], ...] = (
    (domain.MalformedRequest, 400),
    (domain.ConfirmationRequired, 400),
    (domain.Unauthenticated, 401),
    (domain.Forbidden, 403),
    (domain.NotFound, 404),
    (domain.Conflict, 409),
    (domain.TooLarge, 413),
    (domain.Invalid, 422),
    (domain.DeliveryRejected, 422),
    (domain.DeliveryFailed, 502),
    (domain.ProviderFailed, 502),
    (domain.Unavailable, 503),
)


def status_of(error: domain.DomainError) -> int:
    """The HTTP status that answers a domain error."""
    for kind, status in STATUS:
        if isinstance(error, kind):
            return status
    return 500


def json_response(body: Any, status: int = 200) -> Response:
    """A JSON answer serialized with orjson."""
    return Response(orjson.dumps(body), status=status, mimetype="application/json")


def error_response(status: int, code: str, message: str, fields: dict[str, Any] | None = None) -> Response:
    """The error shape: {"error", "message"} plus "fields" for validation errors."""
    body: dict[str, Any] = {"error": code, "message": message}
    if fields is not None:
        body["fields"] = fields
    return json_response(body, status)


def domain_error_response(error: domain.DomainError) -> Response:
    """The answer to a domain error."""
    response = error_response(status_of(error), error.code, error.message, error.fields)
    if isinstance(error, domain.Unavailable):
        response.headers["Retry-After"] = str(error.retry_after)
    if isinstance(error, domain.TooLarge) or error.code == "malformed_body":
        # The body was left unread (or cannot be read): the connection cannot carry another
        # request. The server's worker turns this into its own Connection: close.
        response.headers["Connection"] = "close"
    return response


def _http_code(exc: HTTPException) -> str:
    return (exc.name or "error").lower().replace(" ", "_").replace("'", "")


def register_error_handlers(app: Flask) -> None:
    """Answer every error, expected or not, with the JSON error shape."""

    @app.errorhandler(domain.DomainError)
    def _domain_error(exc: domain.DomainError) -> Response:
        if isinstance(exc, (domain.Unauthenticated, domain.Forbidden)):
            # Refusals are worth a look (a misconfigured sender, or someone probing); the
            # message names the reason, never the presented credential.
            log.warning("refused %s %s: %s (%s)", request.method, request.path, exc.code, exc.message)
        return domain_error_response(exc)

    @app.errorhandler(DatabaseUnavailable)
    def _database_down(exc: DatabaseUnavailable) -> Response:
        # One line, no traceback: an outage is not a bug, and it may last a while.
        log.warning("database unavailable: %s", exc.reason)
        return domain_error_response(exc.as_domain_error())

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        message = exc.description or exc.name
        if status == 413:
            message = "The request body is larger than this server accepts."
        response = error_response(status, _http_code(exc), message)
        if status == 413:
            response.headers["Connection"] = "close"  # the body is left unread
        if status == 405 and exc.get_response().headers.get("Allow"):
            response.headers["Allow"] = exc.get_response().headers["Allow"]
        return response

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        unavailable = DatabaseUnavailable.from_error(exc)
        if unavailable is not None:
            return _database_down(unavailable)
        request_id = g.get("request_id", "-")
        log.exception("unexpected error on %s %s (request %s)", request.method, request.path, request_id)
        return error_response(500, "internal_error", f"Unexpected server error (request {request_id}).")
