"""The admin API behind a bearer token (SPEC B7): create and list channels."""

from __future__ import annotations

import hmac

from flask import Blueprint, Response, request

from app.domain.errors import NotFound, Unauthenticated
from app.services import services
from app.usecases import channels
from app.validation import parse_json_object
from app.web.body import read_body
from app.web.errors import json_response

admin_api = Blueprint("admin_api", __name__, url_prefix="/api")


@admin_api.before_request
def _require_admin() -> None:
    token = services().settings.admin_token
    if not token:
        # The admin API does not exist unless an ADMIN_TOKEN is configured.
        raise NotFound("not_found", "The requested URL was not found on the server.")
    scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(presented.strip().encode(), token.encode()):
        raise Unauthenticated("unauthorized", "A valid 'Authorization: Bearer <ADMIN_TOKEN>' header is required.")


@admin_api.post("/channels")
def create_channel() -> Response:
    svc = services()
    body = parse_json_object(read_body(svc.settings.max_body_bytes))
    return json_response(channels.create_channel(svc.db, svc.keyring, svc.connectors, body), 201)


@admin_api.get("/channels")
def list_channels() -> Response:
    return json_response({"channels": channels.list_channels(services().db)})


@admin_api.post("/channels/<channel_id>/disable")
def disable_channel(channel_id: str) -> Response:
    return json_response(channels.set_enabled(services().db, channel_id, False))


@admin_api.post("/channels/<channel_id>/enable")
def enable_channel(channel_id: str) -> Response:
    return json_response(channels.set_enabled(services().db, channel_id, True))
