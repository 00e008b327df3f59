"""The admin API's OpenAPI 3.1 document (SPEC B17: `GET /api/openapi.json`).

apispec and its marshmallow plugin write it from marshmallow schemas: the use cases' input
schemas (app/usecases/channels.py, ledger.py, subscriptions.py, with the connectors' own settings fields) and
the answers' schemas of app/web/api_schemas.py; nothing here is a hand-written JSON schema.

The paths are the app's own: every URL rule under /api/ that `operations()` describes (keyed by
endpoint and method), with its path parameters taken from the rule. A route added without an
entry here is left out of the document, and an entry whose route is gone describes nothing:
tests/test_openapi.py fails on either, so the document cannot drift from the app unseen.
The document is built once per app, at its first request, and kept in app.extensions.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import orjson
from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from flask import Flask, current_app
from marshmallow import fields, validate
from werkzeug.routing import Rule

from app.connectors.base import ConnectorKind
from app.metrics import build_version
from app.usecases import channels, installations, ledger, subscriptions
from app.web import api_schemas as answers

API_PREFIX = "/api/"
OPENAPI_VERSION = "3.1.0"
SECURITY_SCHEME = "bearerAuth"
EXTENSION_KEY = "deskbridge.openapi"
IGNORED_METHODS = frozenset({"HEAD", "OPTIONS"})

# The error answers the admin API gives (SPEC B8), each with the one error shape.
ERRORS: dict[int, tuple[str, str]] = {
    400: ("BadRequest", "The body is not a JSON object (invalid_json), or a confirmation is missing "
                        "(confirmation_required)."),
    401: ("Unauthorized", "The bearer token is missing or wrong."),
    404: ("NotFound", "No such channel, reply or webhook, or the admin API is off (ADMIN_TOKEN unset)."),
    413: ("TooLarge", "The body is larger than MAX_BODY_BYTES."),
    422: ("Invalid", "The input is not valid: `fields` names each field and what is wrong with it."),
    503: ("Unavailable", "The database does not answer; ask again after Retry-After seconds."),
}
ALWAYS = (401, 404, 503)  # any admin route: a token, the API switched on, a database
BODY = (400, 413, 422)  # a route that reads a JSON body


@dataclass(frozen=True)
class Operation:
    """One method of one admin route, as the document describes it."""

    summary: str
    tag: str
    status: int  # of the successful answer
    answer: Any = None  # its JSON schema (class or name), or None
    content: Mapping[str, Any] | None = None  # media types → schemas, for answers that are not JSON
    body: Any = None  # the JSON request body's schema
    query: Any = None  # the query string's schema
    errors: tuple[int, ...] = ALWAYS
    description: str = ""
    public: bool = False  # needs no bearer token


def _creation_body(kinds: Mapping[str, ConnectorKind]) -> Any:
    """`POST /api/channels`: the common fields and the connector's settings, per connector kind
    (as channels.create_channel builds its schema)."""
    per_kind = []
    for name, kind in sorted(kinds.items()):
        connector = fields.String(required=True, validate=validate.OneOf([name]))
        declared = {"connector": connector, **kind.setting_fields()}
        per_kind.append(channels._CommonFields.from_dict(declared, name=f"New{name.title()}Channel"))
    return per_kind[0] if len(per_kind) == 1 else {"oneOf": per_kind}


def _changes_body(kinds: Mapping[str, ConnectorKind]) -> Any:
    """`PATCH /api/channels/<id>`: every field optional, the settings of the channel's kind
    (as channels.update_channel builds its schema)."""
    per_kind = []
    for name, kind in sorted(kinds.items()):
        settings = {}
        for field_name, field in kind.setting_fields().items():
            settings[field_name] = optional = copy.copy(field)
            optional.required = False
        per_kind.append(channels._ChannelChanges.from_dict(settings, name=f"{name.title()}ChannelChanges"))
    # anyOf: every field is optional, so a body may fit several kinds (the channel's kind decides).
    return per_kind[0] if len(per_kind) == 1 else {"anyOf": per_kind}


def operations(kinds: Mapping[str, ConnectorKind]) -> dict[tuple[str, str], Operation]:
    """Every admin route the document describes, by (endpoint, method)."""
    entries = "A list answers newest first, a page at a time: pass `next_cursor` back as `cursor`."
    return {
        ("admin_api.list_channels", "GET"): Operation(
            "List channels with their state and sync figures (no secrets)", "channels", 200, answers.ChannelList),
        ("admin_api.create_channel", "POST"): Operation(
            "Create a channel; the answer shows its secrets this once", "channels", 201, answers.CreatedChannel,
            body=_creation_body(kinds), errors=ALWAYS + BODY),
        ("admin_api.show_channel", "GET"): Operation(
            "Show a channel with its sync figures and health", "channels", 200, answers.ChannelDetail),
        ("admin_api.update_channel", "PATCH"): Operation(
            "Change a channel's name, Desk org or connector settings", "channels", 200, answers.ChannelDetail,
            body=_changes_body(kinds), errors=ALWAYS + BODY),
        ("admin_api.disable_channel", "POST"): Operation(
            "Disable a channel: Desk's pulls and pushes get 403, inbound is still accepted", "channels", 200,
            answers.ChannelSummary),
        ("admin_api.enable_channel", "POST"): Operation(
            "Enable a channel", "channels", 200, answers.ChannelSummary),
        ("admin_api.rotate_secret", "POST"): Operation(
            "Rotate a secret: inbound, outbound or desk-token; the answer shows the new one this once",
            "channels", 200, answers.RotatedSecret, body=answers.RotateRequest, errors=ALWAYS + BODY,
            description="A rotated inbound secret leaves the old one valid for SECRET_OVERLAP_SECONDS; a new "
                        "desk token or outbound secret takes effect at once."),
        ("admin_api.delete_channel", "DELETE"): Operation(
            "Delete a channel with everything stored for it", "channels", 204, query=answers.DeleteChannelQuery,
            errors=(*ALWAYS, 400)),
        ("admin_api.list_replies", "GET"): Operation(
            "List reply ledger entries", "replies", 200, answers.LedgerPage, query=ledger.ListQuery,
            errors=(*ALWAYS, 422), description=entries),
        ("admin_api.show_reply", "GET"): Operation(
            "Show a ledger entry with its attempts history", "replies", 200, answers.LedgerEntryDetail),
        ("admin_api.retry_replies", "POST"): Operation(
            "Deliver entries again, in the background, with the same idempotency key", "replies", 202,
            answers.RetryAnswer, body=ledger.RetryRequest, errors=ALWAYS + BODY,
            description=f"Either `ids` (at most {ledger.MAX_RETRY_IDS}) or the filter with `\"status\": "
                        "\"failed\"`. Sent entries, entries being delivered right now and unknown ids are skipped."),
        ("admin_api.delete_replies", "POST"): Operation(
            "Delete ledger entries", "replies", 200, answers.DeleteAnswer, body=ledger.DeleteRequest,
            errors=ALWAYS + BODY),
        ("admin_api.export_replies", "GET"): Operation(
            "Export ledger entries, oldest first, streamed", "replies", 200,
            content={"text/csv": fields.String(metadata={"description": "A header line, then one entry a line."}),
                     "application/x-ndjson": answers.LedgerEntry},
            query=answers.ExportQuery, errors=(*ALWAYS, 422),
            description="`format=csv` (the default) answers text/csv; `format=jsonl` one JSON entry a line."),
        ("admin_api.replies_summary", "GET"): Operation(
            "Counts, success rate and delivery times per hour or day", "replies", 200, answers.Summary,
            query=ledger.SummaryQuery, errors=(*ALWAYS, 422),
            description="Grouped per channel unless filtered to one."),
        ("admin_api.list_installations", "GET"): Operation(
            "List the Desk installations that platform callbacks recorded, with their channels", "installations",
            200, answers.InstallationPage, query=installations.InstallationsQuery, errors=(*ALWAYS, 422),
            description=f"Newest first (by when an org was first heard of). {entries} Never a securityContext."),
        ("admin_api.create_webhook", "POST"): Operation(
            "Subscribe a URL to events; the answer shows its signing secret this once", "webhooks", 201,
            answers.CreatedWebhook, body=subscriptions.NewSubscription, errors=ALWAYS + BODY,
            description="The URL follows the outbound address policy; unknown event types and unknown channel ids "
                        "are refused (422 naming the field). Deliveries are Standard Webhooks signed with the "
                        "secret; the webhook-id is the event's id."),
        ("admin_api.list_webhooks", "GET"): Operation(
            "List webhooks (event subscriptions)", "webhooks", 200, answers.WebhookPage,
            query=subscriptions.SubscriptionsQuery, errors=(*ALWAYS, 422), description=f"{entries} No secrets."),
        ("admin_api.show_webhook", "GET"): Operation(
            "Show a webhook (no secret)", "webhooks", 200, answers.Webhook),
        ("admin_api.update_webhook", "PATCH"): Operation(
            "Change a webhook's URL, events, channels, description or state", "webhooks", 200, answers.Webhook,
            body=subscriptions.SubscriptionChanges, errors=ALWAYS + BODY,
            description="Enabling clears disabled_reason; disabling sets it to \"operator\". Channel ids must name "
                        "existing channels, except those the webhook already has."),
        ("admin_api.delete_webhook", "DELETE"): Operation(
            "Delete a webhook with its deliveries (the events stay)", "webhooks", 204),
        ("admin_api.rotate_webhook_secret", "POST"): Operation(
            "Replace a webhook's signing secret; the answer shows the new one this once", "webhooks", 200,
            answers.WebhookSecret, description="The next attempt of every delivery is signed with it."),
        ("admin_api.list_webhook_failures", "GET"): Operation(
            "List a webhook's failed executions: deliveries whose last attempt failed", "webhooks", 200,
            answers.FailurePage, query=subscriptions.FailuresQuery, errors=(*ALWAYS, 422), description=entries),
        ("admin_api.retry_webhook_failures", "POST"): Operation(
            "Attempt failed deliveries again now, with the same event id", "webhooks", 202,
            answers.DeliveryRetryAnswer, body=subscriptions.RetryFailures, errors=ALWAYS + BODY,
            description=f"At most {subscriptions.MAX_RETRY_IDS} delivery ids. Delivered ones, unknown ids, ones being "
                        "attempted right now and every one of a disabled webhook are skipped."),
        ("admin_api.delete_webhook_failures", "POST"): Operation(
            "Delete failed deliveries", "webhooks", 200, answers.DeleteAnswer, body=subscriptions.DeleteFailures,
            errors=ALWAYS + BODY, description=f"At most {subscriptions.MAX_DELETE_IDS} delivery ids; ids of "
                                              "deliveries that are not failures of this webhook are left alone."),
        ("admin_api.export_webhook_failures", "GET"): Operation(
            "Export a webhook's failed executions, oldest first, streamed", "webhooks", 200,
            content={"text/csv": fields.String(metadata={"description": "A header line, then one delivery a line."}),
                     "application/x-ndjson": answers.Failure},
            query=answers.FailuresExportQuery, errors=(*ALWAYS, 422),
            description="`format=csv` (the default) answers text/csv; `format=jsonl` one JSON delivery a line."),
        ("admin_api.webhook_summary", "GET"): Operation(
            "Count a webhook's deliveries: delivered, retrying, failed, in all and per event type", "webhooks", 200,
            answers.WebhookSummary, query=subscriptions.SummaryQuery, errors=(*ALWAYS, 422)),
        ("admin_api.webhook_executions_summary", "GET"): Operation(
            "A webhook's attempts per hour or day: successes, failures and durations", "webhooks", 200,
            answers.ExecutionsSummary, query=subscriptions.ExecutionsQuery, errors=(*ALWAYS, 422)),
        ("admin_api.openapi_document", "GET"): Operation(
            "This document", "meta", 200, content={"application/json": fields.Dict()},
            errors=(404,), public=True, description="Needs no token; 404 while ADMIN_TOKEN is unset."),
    }


def admin_rules(app: Flask) -> Iterator[tuple[Rule, str]]:
    """Every (rule, method) of the admin API in the app's url_map."""
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith(API_PREFIX):
            for method in sorted((rule.methods or set()) - IGNORED_METHODS):
                yield rule, method


def openapi_path(rule: str) -> str:
    """A Flask rule as an OpenAPI path template: <channel_id> or <int:n> → {channel_id}, {n}."""
    return re.sub(r"<(?:[^<>:]+:)?([^<>:]+)>", r"{\1}", rule)


def _operation(endpoint: str, rule: Rule, op: Operation, converter: Any) -> dict[str, Any]:
    def media(schema: Any) -> dict[str, Any]:
        # A bare field (a text body, a free-form object) is converted as the plugin converts fields.
        return {"schema": converter.field2property(schema) if isinstance(schema, fields.Field) else schema}

    parameters: list[dict[str, Any]] = []
    if rule.arguments:
        parameters.append({"in": "path", "schema": answers.PathParameters(only=sorted(rule.arguments))})
    if op.query is not None:
        parameters.append({"in": "query", "schema": op.query})
    if op.content is not None:
        success: dict[str, Any] = {"content": {kind: media(schema) for kind, schema in op.content.items()}}
    elif op.answer is not None:
        success = {"content": {"application/json": {"schema": op.answer}}}
    else:
        success = {}
    responses: dict[str, Any] = {str(op.status): {"description": HTTPStatus(op.status).phrase, **success}}
    for status in sorted(op.errors):
        responses[str(status)] = ERRORS[status][0]
    operation: dict[str, Any] = {
        "operationId": endpoint.rpartition(".")[2],
        "summary": op.summary,
        "tags": [op.tag],
        "responses": responses,
    }
    if parameters:
        operation["parameters"] = parameters
    if op.description:
        operation["description"] = op.description
    if op.body is not None:
        operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": op.body}}}
    if op.public:
        operation["security"] = []
    return operation


def build_spec(app: Flask) -> APISpec:
    """The document of the app's admin API."""
    plugin = MarshmallowPlugin()
    spec = APISpec(
        title="deskbridge admin API",
        version=build_version(),
        openapi_version=OPENAPI_VERSION,
        plugins=[plugin],
        info={"description": "Channels, the reply ledger, installations and webhooks (SPEC B7, B10, B12, B16), behind "
                             "`Authorization: Bearer <ADMIN_TOKEN>`. Every error answer is `{\"error\", \"message\"}` "
                             "plus `fields` for validation errors. The API answers 404 while ADMIN_TOKEN is unset."},
        security=[{SECURITY_SCHEME: []}],
    )
    spec.components.security_scheme(SECURITY_SCHEME, {"type": "http", "scheme": "bearer",
                                                      "description": "ADMIN_TOKEN"})
    spec.components.schema("Error", schema=answers.Error)
    for status, (name, description) in ERRORS.items():
        response: dict[str, Any] = {"description": description,
                                    "content": {"application/json": {"schema": "Error"}}}
        if status == 503:
            response["headers"] = {"Retry-After": {"description": "Seconds to wait.",
                                                   "schema": plugin.converter.field2property(fields.Integer())}}
        spec.components.response(name, response)
    for tag, description in (("channels", "Channels (SPEC B7, B10)"), ("replies", "The reply ledger (SPEC B10)"),
                             ("installations", "Desk installations (SPEC B12)"),
                             ("webhooks", "Event subscriptions and their failed executions (SPEC B16)"),
                             ("meta", "About the API itself")):
        spec.tag({"name": tag, "description": description})
    described = operations(app.extensions["deskbridge"].connectors)
    paths: dict[str, dict[str, Any]] = {}
    for rule, method in admin_rules(app):
        op = described.get((rule.endpoint, method))
        if op is not None:
            path = paths.setdefault(openapi_path(rule.rule), {})
            path[method.lower()] = _operation(rule.endpoint, rule, op, plugin.converter)
    for path, path_operations in sorted(paths.items()):
        spec.path(path=path, operations=path_operations)
    return spec


def document() -> bytes:
    """The current app's document as JSON, built at the first call and kept with the app."""
    app: Flask = current_app._get_current_object()  # the app itself, not the proxy
    cached = app.extensions.get(EXTENSION_KEY)
    if cached is None:
        cached = app.extensions[EXTENSION_KEY] = orjson.dumps(build_spec(app).to_dict())
    return cached
