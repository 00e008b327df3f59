"""The admin API behind a bearer token (SPEC B7, B10, B12, B16): channels and their operations, installations,
event subscriptions (webhooks) and their failed executions."""

from __future__ import annotations

import hmac

from flask import Blueprint, Response, request, stream_with_context

from app.domain.errors import Invalid, NotFound, Unauthenticated
from app.services import services
from app.usecases import channels, installations, ledger, subscriptions
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
    if request.endpoint == "admin_api.openapi_document":
        return  # the API's description holds no data: no token needed (SPEC B17)
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


@admin_api.get("/channels/<channel_id>")
def show_channel(channel_id: str) -> Response:
    svc = services()
    return json_response(channels.show_channel(svc.db, channel_id, stall_minutes=svc.settings.stall_minutes,
                                               extension_secret=svc.settings.desk_extension_secret))


@admin_api.patch("/channels/<channel_id>")
def update_channel(channel_id: str) -> Response:
    svc = services()
    body = parse_json_object(read_body(svc.settings.max_body_bytes))
    return json_response(
        channels.update_channel(svc.db, svc.keyring, svc.connectors, channel_id, body,
                                stall_minutes=svc.settings.stall_minutes,
                                extension_secret=svc.settings.desk_extension_secret)
    )


@admin_api.post("/channels/<channel_id>/rotate")
def rotate_secret(channel_id: str) -> Response:
    svc = services()
    body = parse_json_object(read_body(svc.settings.max_body_bytes))
    unknown = sorted(set(body) - {"secret"})
    if unknown:
        fields = {name: ["Unknown field."] for name in unknown}
        raise Invalid("validation_error", "The request is not valid.", fields=fields)
    rotated = channels.rotate_secret(svc.db, svc.keyring, svc.connectors, channel_id, body.get("secret"),
                                     overlap_seconds=svc.settings.secret_overlap_seconds)
    return json_response(rotated)


@admin_api.delete("/channels/<channel_id>")
def delete_channel(channel_id: str) -> Response:
    channels.delete_channel(services().db, channel_id, request.args.get("confirm"))
    return Response(status=204)


@admin_api.get("/replies")
def list_replies() -> Response:
    page = ledger.list_replies(services().db, request.args.to_dict())
    return json_response({"items": page.items, "next_cursor": page.next_cursor})


@admin_api.get("/replies/<ledger_id>")
def show_reply(ledger_id: str) -> Response:
    return json_response(ledger.show_reply(services().db, ledger_id))


@admin_api.post("/replies/retry")
def retry_replies() -> Response:
    svc = services()
    body = parse_json_object(read_body(svc.settings.max_body_bytes))
    return json_response(ledger.retry_replies(svc.db, body, deadline_seconds=svc.settings.push_deadline_seconds), 202)


@admin_api.post("/replies/delete")
def delete_replies() -> Response:
    svc = services()
    return json_response(ledger.delete_replies(svc.db, parse_json_object(read_body(svc.settings.max_body_bytes))))


@admin_api.get("/replies/export")
def export_replies() -> Response:
    query = request.args.to_dict()
    fmt = query.pop("format", "csv")
    lines = ledger.export_replies(services().db, query, fmt)
    mimetype = "text/csv" if fmt == "csv" else "application/x-ndjson"
    headers = {"Content-Disposition": f'attachment; filename="replies.{fmt}"'}
    return Response(stream_with_context(lines), mimetype=mimetype, headers=headers)


@admin_api.get("/replies/summary")
def replies_summary() -> Response:
    return json_response(ledger.summarise(services().db, request.args.to_dict()))


@admin_api.get("/installations")
def list_installations() -> Response:
    page = installations.list_installations(services().db, request.args.to_dict())
    return json_response({"items": page.items, "next_cursor": page.next_cursor})


@admin_api.post("/webhooks")
def create_webhook() -> Response:
    svc = services()
    body = parse_json_object(read_body(svc.settings.max_body_bytes))
    created = subscriptions.create_subscription(svc.db, svc.keyring, body,
                                                allow_private=svc.settings.allow_private_outbound)
    return json_response(created, 201)


@admin_api.get("/webhooks")
def list_webhooks() -> Response:
    page = subscriptions.list_subscriptions(services().db, request.args.to_dict())
    return json_response({"items": page.items, "next_cursor": page.next_cursor})


@admin_api.get("/webhooks/<subscription_id>")
def show_webhook(subscription_id: str) -> Response:
    return json_response(subscriptions.show_subscription(services().db, subscription_id))


@admin_api.patch("/webhooks/<subscription_id>")
def update_webhook(subscription_id: str) -> Response:
    svc = services()
    body = parse_json_object(read_body(svc.settings.max_body_bytes))
    return json_response(subscriptions.update_subscription(svc.db, subscription_id, body,
                                                           allow_private=svc.settings.allow_private_outbound))


@admin_api.delete("/webhooks/<subscription_id>")
def delete_webhook(subscription_id: str) -> Response:
    subscriptions.delete_subscription(services().db, subscription_id)
    return Response(status=204)


@admin_api.post("/webhooks/<subscription_id>/rotate-secret")
def rotate_webhook_secret(subscription_id: str) -> Response:
    svc = services()
    return json_response(subscriptions.rotate_subscription_secret(svc.db, svc.keyring, subscription_id))


@admin_api.get("/webhooks/<subscription_id>/failures")
def list_webhook_failures(subscription_id: str) -> Response:
    page = subscriptions.list_failures(services().db, subscription_id, request.args.to_dict())
    return json_response({"items": page.items, "next_cursor": page.next_cursor})


@admin_api.post("/webhooks/<subscription_id>/failures/retry")
def retry_webhook_failures(subscription_id: str) -> Response:
    svc = services()
    body = parse_json_object(read_body(svc.settings.max_body_bytes))
    return json_response(subscriptions.retry_failures(svc.db, subscription_id, body), 202)


@admin_api.post("/webhooks/<subscription_id>/failures/delete")
def delete_webhook_failures(subscription_id: str) -> Response:
    svc = services()
    body = parse_json_object(read_body(svc.settings.max_body_bytes))
    return json_response(subscriptions.delete_failures(svc.db, subscription_id, body))


@admin_api.get("/webhooks/<subscription_id>/failures/export")
def export_webhook_failures(subscription_id: str) -> Response:
    query = request.args.to_dict()
    fmt = query.pop("format", "csv")
    lines = subscriptions.export_failures(services().db, subscription_id, query, fmt)
    mimetype = "text/csv" if fmt == "csv" else "application/x-ndjson"
    headers = {"Content-Disposition": f'attachment; filename="{subscription_id}-failures.{fmt}"'}
    return Response(stream_with_context(lines), mimetype=mimetype, headers=headers)


@admin_api.get("/webhooks/<subscription_id>/summary")
def webhook_summary(subscription_id: str) -> Response:
    return json_response(subscriptions.summarise(services().db, subscription_id, request.args.to_dict()))


@admin_api.get("/webhooks/<subscription_id>/executions/summary")
def webhook_executions_summary(subscription_id: str) -> Response:
    return json_response(subscriptions.summarise_executions(services().db, subscription_id, request.args.to_dict()))


@admin_api.get("/openapi.json")
def openapi_document() -> Response:
    """The admin API's OpenAPI document (SPEC B17), built once per app; no token needed."""
    from app.web import openapi

    return Response(openapi.document(), mimetype="application/json")
