"""The admin API: POST and GET /api/channels behind a bearer token."""

from __future__ import annotations

import hmac

from flask import Blueprint, Response, request

from app.admin import channels
from app.errors import ApiError, json_response, parse_json_object
from app.services import services

admin_api = Blueprint("admin_api", __name__, url_prefix="/api")


@admin_api.before_request
def _require_admin() -> None:
    token = services().settings.admin_token
    if not token:
        # The admin API does not exist unless an ADMIN_TOKEN is configured.
        raise ApiError(404, "not_found", "The requested URL was not found on the server.")
    scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(presented.strip().encode(), token.encode()):
        raise ApiError(401, "unauthorized", "A valid 'Authorization: Bearer <ADMIN_TOKEN>' header is required.")


@admin_api.post("/channels")
def create_channel() -> Response:
    svc = services()
    body = parse_json_object(request.get_data(cache=False))
    created = channels.create_channel(svc.db, svc.keyring, body, allow_private=svc.settings.allow_private_outbound)
    return json_response(created, 201)


@admin_api.get("/channels")
def list_channels() -> Response:
    return json_response({"channels": channels.list_channels(services().db)})
