"""POST /inbound/<channel_id>: the external service's webhooks, read by the channel's connector."""

from __future__ import annotations

from flask import Blueprint, Response, g, request

from app.connectors.base import InboundRequest
from app.services import services
from app.store.queries import CHANNEL_ID
from app.usecases.ingest import receive_inbound
from app.usecases.reports import receive_status
from app.web.body import read_body

inbound = Blueprint("inbound", __name__)


@inbound.post("/inbound/<channel_id>")
def receive(channel_id: str) -> Response:
    svc = services()
    if CHANNEL_ID.fullmatch(channel_id):
        g.channel_id = channel_id  # for the logs; whatever else the path holds stays out of them
    webhook = _inbound_request(svc.settings.max_body_bytes)
    answer = receive_inbound(svc.db, svc.keyring, svc.connectors, channel_id, webhook,
                             extension_secret=svc.settings.desk_extension_secret)
    return Response(answer.body, status=answer.status, content_type=answer.content_type)


@inbound.post("/inbound/<channel_id>/status")
def receive_status_callback(channel_id: str) -> Response:
    """A provider's delivery report on a reply (SPEC B15: Twilio's StatusCallback)."""
    svc = services()
    if CHANNEL_ID.fullmatch(channel_id):
        g.channel_id = channel_id
    answer = receive_status(svc.db, svc.keyring, svc.connectors, channel_id,
                            _inbound_request(svc.settings.max_body_bytes))
    return Response(answer.body, status=answer.status, content_type=answer.content_type)


def _inbound_request(max_body_bytes: int) -> InboundRequest:
    """The request as a connector reads it: path, query string, lower-case headers, raw body."""
    return InboundRequest(
        path=request.path,
        headers={name.lower(): value for name, value in request.headers.items()},
        body=read_body(max_body_bytes),
        content_type=request.mimetype,
        query_string=request.query_string.decode("latin-1"),
    )
