"""Liveness and readiness probes."""

from __future__ import annotations

import logging

from flask import Blueprint, Response

from app.errors import error_response, json_response
from app.services import services

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
        log.warning("readiness check failed: %s", type(exc).__name__)
        return error_response(503, "database_unavailable", "The database does not answer.")
    return json_response({"status": "ready"})
