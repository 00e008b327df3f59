"""GET /metrics (SPEC B17), and the request hook that counts and times every answer."""

from __future__ import annotations

import hmac

from flask import Blueprint, Flask, Response, current_app, g, request

from app import metrics
from app.domain.errors import Unauthenticated
from app.services import services

EXTENSION = "deskbridge.metrics"
# The classic Prometheus text format, which generate_latest writes.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

metrics_api = Blueprint("metrics", __name__)


@metrics_api.get("/metrics")
def scrape() -> Response:
    _authorize(services().settings.metrics_token)
    exposition: metrics.Exposition = current_app.extensions[EXTENSION]
    return Response(exposition.render(), content_type=CONTENT_TYPE)


def _authorize(token: str | None) -> None:
    """With METRICS_TOKEN set, the scraper must present it as a bearer token."""
    if token is None:
        return
    scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(presented.strip().encode(), token.encode()):
        raise Unauthenticated("unauthorized", "A valid 'Authorization: Bearer <METRICS_TOKEN>' header is required.")


def init_metrics(app: Flask) -> None:
    """Serve /metrics and count every answer of `app` (once, however often it is called)."""
    if EXTENSION in app.extensions:
        return
    svc = app.extensions["deskbridge"]
    app.extensions[EXTENSION] = metrics.Exposition(svc.db, svc.settings.stall_minutes)
    app.register_blueprint(metrics_api)
    recorded = metrics.families()

    @app.after_request
    def _count(response: Response) -> Response:
        # No database work here: a few dictionary lookups and two increments per request. The
        # start time is the one app.logging takes for the access line.
        rule = request.url_rule
        recorded.request_answered(
            rule.rule if rule is not None else metrics.UNMATCHED, request.method, response.status_code, g.get("started")
        )
        return response
