"""Liveness and readiness probes."""

from __future__ import annotations

import logging

from flask import Blueprint, Response

from app.services import services
from app.store.database import DatabaseUnavailable
from app.web.errors import domain_error_response, json_response

health = Blueprint("health", __name__)
log = logging.getLogger(__name__)


@health.get("/healthz")
def healthz() -> Response:
    return json_response({"status": "ok"})


@health.get("/readyz")
def readyz() -> Response:
    try:
        services().db.ping()
    except Exception as exc:
        unavailable = DatabaseUnavailable.from_error(exc) or DatabaseUnavailable(type(exc).__name__)
        log.warning("readiness check failed: %s", unavailable.reason)
        return domain_error_response(unavailable.as_domain_error())
    return json_response({"status": "ready"})
