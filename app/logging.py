"""Logs (SPEC B17): one JSON object per line (or text), the request's ids on every record,
and one access line per request. Never a secret, a token, a securityContext or message content:
callers log ids, statuses and reasons only, and the access line has the path without its query."""

from __future__ import annotations

import logging
import secrets
import sys
import time
from typing import Any

import orjson
from flask import Flask, Response, g, has_request_context, request
from pythonjsonlogger.json import JsonFormatter

ACCESS_LOGGER = "deskbridge.access"
CONTEXT_FIELDS = ("request_id", "channel_id", "reply_id", "job")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s"


class RequestContext(logging.Filter):
    """Adds the current request's ids to every record that does not carry them already."""

    def filter(self, record: logging.LogRecord) -> bool:
        if has_request_context():
            for name in ("request_id", "channel_id"):
                if getattr(record, name, None) is None and name in g:
                    setattr(record, name, g.get(name))
        return True


class TextDefaults(logging.Filter):
    """Gives text-format records the fields their format names."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = "-"
        return True


def _orjson_text(value: Any, **options: Any) -> str:
    # python-json-logger's serializer hook, with orjson (a third of the cost of json.dumps:
    # one line is written per request). Anything orjson cannot encode goes through the
    # formatter's own default, else str().
    return orjson.dumps(value, default=options.get("default") or str).decode()


def json_formatter() -> logging.Formatter:
    """time, level, logger, message, and any context fields the record carries."""
    return JsonFormatter(
        "{levelname}{name}{message}",
        style="{",
        rename_fields={"levelname": "level", "name": "logger"},
        timestamp="time",  # ISO 8601, UTC
        json_serializer=_orjson_text,
    )


def formatter(log_format: str) -> logging.Formatter:
    """The formatter for LOG_FORMAT (json or text)."""
    return json_formatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)


def configure_logging(log_format: str, level: int = logging.INFO) -> None:
    """Send the root logger's records to stderr in the chosen format (once per process)."""
    # One line is written per request: skip what no line shows (the logging HOWTO's
    # "Optimization": caller lookup walks the stack; thread and process names).
    logging._srcfile = None  # type: ignore[attr-defined]
    logging.logThreads = False
    logging.logMultiprocessing = False
    logging.logProcesses = False
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "deskbridge", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.deskbridge = True  # type: ignore[attr-defined]
    handler.setFormatter(formatter(log_format))
    handler.addFilter(RequestContext())
    if log_format != "json":
        handler.addFilter(TextDefaults())
    root.addHandler(handler)
    if root.level == logging.NOTSET or root.level > level:
        root.setLevel(level)
    logging.getLogger("sqlalchemy").setLevel(max(logging.getLogger("sqlalchemy").level, logging.WARNING))
    # urllib3's DEBUG lines hold request paths, and a Telegram Bot API path holds the bot token.
    logging.getLogger("urllib3").setLevel(max(logging.getLogger("urllib3").level, logging.WARNING))


def init_request_logging(app: Flask) -> None:
    """Request ids (X-Request-Id, yours if usable) and one access line per request."""
    access = logging.getLogger(ACCESS_LOGGER)

    @app.before_request
    def _start() -> None:
        incoming = request.headers.get("X-Request-Id", "")
        g.request_id = incoming if 0 < len(incoming) <= 64 and incoming.isprintable() else secrets.token_hex(8)
        g.started = time.perf_counter()

    @app.after_request
    def _finish(response: Response) -> Response:
        if "request_id" in g:
            response.headers["X-Request-Id"] = g.request_id
        if "started" in g:
            fields: dict[str, Any] = {
                "method": request.method,
                "path": request.path,
                "status": response.status_code,
                "duration_ms": round((time.perf_counter() - g.started) * 1000, 2),
            }
            access.info("%s %s %s", request.method, request.path, response.status_code, extra=fields)
        return response
