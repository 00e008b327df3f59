"""Marshmallow schemas of the admin API's answers (SPEC B7, B8, B10, B12, B16), for its OpenAPI document
(app/web/openapi.py); the use cases build the answers as plain dicts, these describe them.

Every field an answer always carries is `required` (nullable ones `allow_none`), and a schema
refuses unknown fields, so the document says `additionalProperties: false`: a key added to an
answer without being described here fails tests/test_openapi.py. Also here: the two inputs the
web layer reads without a use-case schema (the rotate body and the export query).
"""

from __future__ import annotations

from marshmallow import Schema, fields, validate

from app.store.models import EVENT_TYPES, INSTALLATION_STATUSES
from app.usecases import subscriptions
from app.usecases.channels import ROTATABLE
from app.usecases.ledger import STATUSES, LedgerFilter

CHANNEL_STATES = ("enabled", "disabled")
HEALTH_STATUSES = ("ok", "stalled", "disabled")
ATTEMPT_OUTCOMES = ("sent", "transient", "permanent")
EXPORT_FORMATS = ("csv", "jsonl")


class PathParameters(Schema):
    """The admin API's path parameters; a route takes those its URL rule names (`only=`)."""

    channel_id = fields.String(required=True, metadata={"examples": ["ch_x7Jq0aR2s9T1vW3yZ5b8cQ"]})
    ledger_id = fields.Integer(required=True, metadata={"description": "deskbridge's ledger id."})
    subscription_id = fields.String(required=True, metadata={"examples": ["whk_Q2x9fLr0aB7cD1eF3gH5iJ"]})


# ---------------------------------------------------------------- errors (SPEC B8)


class Error(Schema):
    """Every error answer."""

    error = fields.String(required=True, metadata={"description": "A stable code.", "examples": ["validation_error"]})
    message = fields.String(required=True, metadata={"description": "Readable text."})
    field_errors = fields.Dict(keys=fields.String(), data_key="fields", metadata={
        "description": "Validation errors only: the messages per field (nested for list items and objects)."})


# ---------------------------------------------------------------- channels


class DeskCredentials(Schema):
    channelId = fields.String(required=True)
    channelToken = fields.String(required=True, metadata={"description": "Shown only at creation and rotation."})


class InboundShown(Schema):
    path = fields.String(required=True, metadata={"examples": ["/inbound/ch_abc"]})
    secret = fields.String(metadata={"description": "webhook connector: whsec_..., shown only at creation."})
    webhook_url = fields.String(metadata={
        "description": "telegram, twilio: the public URL the provider posts to (PUBLIC_BASE_URL + path)."})
    status_callback_url = fields.String(metadata={"description": "twilio: where delivery reports arrive."})


class OutboundShown(Schema):
    url = fields.String(required=True)
    secret = fields.String(required=True, metadata={"description": "whsec_..., shown only at creation."})


class OutboundUrl(Schema):
    url = fields.String(required=True)


class CreatedChannel(Schema):
    """`channel create`'s output: the channel's secrets, shown this once."""

    id = fields.String(required=True, metadata={"examples": ["ch_x7Jq0aR2s9T1vW3yZ5b8cQ"]})
    name = fields.String(required=True, allow_none=True)
    org_id = fields.String(required=True, allow_none=True)
    desk = fields.Nested(DeskCredentials, required=True)
    inbound = fields.Nested(InboundShown, required=True)
    outbound = fields.Nested(OutboundShown, metadata={"description": "webhook connector."})
    settings = fields.Dict(metadata={"description": "telegram, twilio: the connector's settings, its secrets "
                                                    "(bot_token, auth_token) shown only at creation."})


class ChannelSummary(Schema):
    """A channel as listed: state and sync figures, no secrets."""

    id = fields.String(required=True)
    name = fields.String(required=True, allow_none=True)
    org_id = fields.String(required=True, allow_none=True)
    connector = fields.String(required=True)
    state = fields.String(required=True, validate=validate.OneOf(CHANNEL_STATES))
    desk_domain = fields.String(required=True, metadata={
        "description": "The Zoho Desk data centre: a host name (https implied) or a base URL."})
    outbound = fields.Nested(OutboundUrl, metadata={"description": "Connectors that deliver to an outbound URL."})
    last_seq = fields.Integer(required=True, metadata={"description": "The newest inbox message."})
    acked_seq = fields.Integer(required=True, metadata={"description": "The highest cursor Desk has sent back."})
    imported_seq = fields.Integer(required=True, metadata={
        "description": "Every message up to it reached Desk by a real-time import (SPEC B14)."})
    pending_seq = fields.Integer(required=True, metadata={
        "description": "Messages Desk has not got: last_seq - max(acked_seq, imported_seq)."})
    last_pull_at = fields.DateTime(required=True, allow_none=True)
    last_import_at = fields.DateTime(required=True, allow_none=True, metadata={
        "description": "When an import last succeeded."})
    created_at = fields.DateTime(required=True)


class ChannelList(Schema):
    channels = fields.List(fields.Nested(ChannelSummary), required=True)


class ChannelDetail(ChannelSummary):
    """A channel as `channel show` gives it: the summary plus health (SPEC B10)."""

    desk_org_id = fields.String(required=True, allow_none=True)
    backlog = fields.Integer(required=True)
    oldest_waiting_at = fields.DateTime(required=True, allow_none=True, metadata={
        "description": "The oldest message Desk has not got (by pull or import)."})
    acked_at = fields.DateTime(required=True, allow_none=True)
    replies_failed_24h = fields.Integer(required=True)
    status = fields.String(required=True, validate=validate.OneOf(HEALTH_STATUSES))
    import_status = fields.String(required=True, validate=validate.OneOf(("ok", "retrying", "refused", "off")),
                                  metadata={"description": "The real-time import (SPEC B14): off without the "
                                            "extension secret or a recorded securityContext and org; refused "
                                            "until Desk sends a new securityContext."})
    import_error = fields.String(required=True, allow_none=True, metadata={
        "description": "Why the last import failed, while retrying or refused."})
    import_retry_at = fields.DateTime(required=True, allow_none=True, metadata={
        "description": "When the next import is tried, while retrying."})


class DeleteChannelQuery(Schema):
    confirm = fields.String(metadata={"description": "The channel's id again; without it the answer is 400 "
                                                     "confirmation_required."})


class RotateRequest(Schema):
    """Which secret to rotate (the web layer checks it by hand)."""

    secret = fields.String(required=True, validate=validate.OneOf(ROTATABLE))


class RotatedSecret(Schema):
    secret = fields.String(required=True, validate=validate.OneOf(ROTATABLE))
    value = fields.String(required=True, metadata={"description": "The new secret, shown this once."})
    previous_valid_until = fields.DateTime(required=True, allow_none=True, metadata={
        "description": "Until when the old inbound secret still verifies (SECRET_OVERLAP_SECONDS)."})


# ---------------------------------------------------------------- the reply ledger


class LedgerEntry(Schema):
    """A reply ledger entry (no content: it is the customer's conversation)."""

    id = fields.Integer(required=True)
    channel_id = fields.String(required=True)
    desk_reply_id = fields.String(required=True)
    status = fields.String(required=True, validate=validate.OneOf(STATUSES))
    attempts = fields.Integer(required=True)
    last_error = fields.String(required=True, allow_none=True)
    external_id = fields.String(required=True, allow_none=True)
    delivery_status = fields.String(required=True, allow_none=True, metadata={
        "description": "A provider's delivery report after it accepted the reply (Twilio: queued, sent, delivered, "
                       "undelivered, failed, read)."})
    delivery_error = fields.String(required=True, allow_none=True, metadata={
        "description": "The provider's error code and message with an undelivered or failed report."})
    created_at = fields.DateTime(required=True)
    updated_at = fields.DateTime(required=True)
    sent_at = fields.DateTime(required=True, allow_none=True)


class LedgerPage(Schema):
    items = fields.List(fields.Nested(LedgerEntry), required=True)
    next_cursor = fields.String(required=True, allow_none=True, metadata={"description": "null on the last page."})


class Attempt(Schema):
    started_at = fields.DateTime(required=True)
    duration_ms = fields.Integer(required=True)
    outcome = fields.String(required=True, validate=validate.OneOf(ATTEMPT_OUTCOMES))
    http_status = fields.Integer(required=True, allow_none=True)
    error = fields.String(required=True, allow_none=True)


class LedgerEntryDetail(LedgerEntry):
    attempts_history = fields.List(fields.Nested(Attempt), required=True,
                                   metadata={"description": "One element per attempt, oldest first."})


class Skipped(Schema):
    id = fields.Integer(required=True)
    reason = fields.String(required=True, metadata={"examples": ["already sent", "not found"]})


class RetryAnswer(Schema):
    queued = fields.List(fields.Integer(), required=True)
    skipped = fields.List(fields.Nested(Skipped), required=True)


class DeleteAnswer(Schema):
    deleted = fields.Integer(required=True)


class ExportQuery(LedgerFilter):
    format = fields.String(load_default="csv", validate=validate.OneOf(EXPORT_FORMATS))


class Counts(Schema):
    pending = fields.Integer(required=True)
    sent = fields.Integer(required=True)
    failed = fields.Integer(required=True)


class Interval(Schema):
    start = fields.DateTime(required=True)
    channel_id = fields.String(metadata={"description": "When grouped per channel (no channel filter)."})
    counts = fields.Nested(Counts, required=True)
    success_rate = fields.Float(required=True, allow_none=True,
                                metadata={"description": "sent / (sent + failed); null when both are 0."})
    p50_ms = fields.Integer(required=True, allow_none=True)
    p95_ms = fields.Integer(required=True, allow_none=True)


class Summary(Schema):
    intervals = fields.List(fields.Nested(Interval), required=True)


# ---------------------------------------------------------------- installations (SPEC B12)


class Installation(Schema):
    """A Desk org's installation as platform callbacks recorded it (never its securityContext)."""

    org_id = fields.String(required=True, metadata={"examples": ["28732"]})
    status = fields.String(required=True, validate=validate.OneOf(INSTALLATION_STATUSES))
    installed_at = fields.DateTime(required=True, allow_none=True, metadata={
        "description": "The latest install; null for an org first heard of by a revoke or an uninstall."})
    uninstalled_at = fields.DateTime(required=True, allow_none=True, metadata={
        "description": "The latest uninstall (kept after a later install, whose installed_at is later)."})
    last_event = fields.String(required=True, metadata={"examples": ["onInstall"]})
    last_event_at = fields.DateTime(required=True)
    channels = fields.List(fields.String(), required=True, metadata={
        "description": "The ids of the org's channels: configured org_id, else the orgId Desk last sent."})


class InstallationPage(Schema):
    items = fields.List(fields.Nested(Installation), required=True)
    next_cursor = fields.String(required=True, allow_none=True, metadata={"description": "null on the last page."})


# ---------------------------------------------------------------- event subscriptions (SPEC B16)


class Webhook(Schema):
    """An event subscription (never its secret)."""

    id = fields.String(required=True, metadata={"examples": ["whk_Q2x9fLr0aB7cD1eF3gH5iJ"]})
    url = fields.String(required=True)
    events = fields.List(fields.String(validate=validate.OneOf(EVENT_TYPES)), required=True)
    channels = fields.List(fields.String(), required=True, metadata={"description": "Empty: every channel."})
    description = fields.String(required=True, allow_none=True)
    enabled = fields.Boolean(required=True)
    disabled_reason = fields.String(required=True, allow_none=True, validate=validate.OneOf(
        ("gone", "failing", "operator")), metadata={
        "description": "While disabled: gone (the receiver answered 410), failing (every delivery failed for 5 "
                       "days) or operator."})
    created_at = fields.DateTime(required=True)
    updated_at = fields.DateTime(required=True)


class CreatedWebhook(Webhook):
    secret = fields.String(required=True, metadata={
        "description": "whsec_..., the Standard Webhooks signing secret, shown this once."})


class WebhookPage(Schema):
    items = fields.List(fields.Nested(Webhook), required=True)
    next_cursor = fields.String(required=True, allow_none=True, metadata={"description": "null on the last page."})


class WebhookSecret(Schema):
    secret = fields.String(required=True, metadata={
        "description": "The new whsec_... secret, shown this once; the next attempt is signed with it."})


class Failure(Schema):
    """A delivery whose last attempt failed."""

    id = fields.Integer(required=True, metadata={"description": "The delivery's id: what retry, delete take."})
    event_id = fields.String(required=True, metadata={"description": "The event's id: the webhook-id header of "
                                                                      "every attempt.", "examples": ["evt_..."]})
    type = fields.String(required=True, validate=validate.OneOf(EVENT_TYPES))
    channel_id = fields.String(required=True, allow_none=True)
    status = fields.String(required=True, validate=validate.OneOf(subscriptions.FAILURE_STATUSES), metadata={
        "description": "retrying (another attempt at next_attempt_at), or failed once the schedule is spent."})
    attempts = fields.Integer(required=True)
    last_status_code = fields.Integer(required=True, allow_none=True)
    last_error = fields.String(required=True, allow_none=True)
    next_attempt_at = fields.DateTime(required=True, allow_none=True, metadata={"description": "While retrying."})
    created_at = fields.DateTime(required=True)
    updated_at = fields.DateTime(required=True)


class FailurePage(Schema):
    items = fields.List(fields.Nested(Failure), required=True)
    next_cursor = fields.String(required=True, allow_none=True, metadata={"description": "null on the last page."})


class FailuresExportQuery(subscriptions.FailuresFilter):
    format = fields.String(load_default="csv", validate=validate.OneOf(EXPORT_FORMATS))


class SkippedDelivery(Schema):
    id = fields.Integer(required=True)
    reason = fields.String(required=True, metadata={"examples": [
        "already delivered", "not found", "being delivered right now", "subscription disabled"]})


class DeliveryRetryAnswer(Schema):
    queued = fields.List(fields.Integer(), required=True, metadata={"description": "Due again now."})
    skipped = fields.List(fields.Nested(SkippedDelivery), required=True)


class DeliveryCounts(Schema):
    delivered = fields.Integer(required=True)
    retrying = fields.Integer(required=True)
    failed = fields.Integer(required=True)


class WebhookSummary(Schema):
    counts = fields.Nested(DeliveryCounts, required=True)
    by_type = fields.Dict(keys=fields.String(validate=validate.OneOf(EVENT_TYPES)),
                          values=fields.Nested(DeliveryCounts), required=True,
                          metadata={"description": "The same counts per event type (types with deliveries only)."})


class ExecutionInterval(Schema):
    start = fields.DateTime(required=True)
    attempts = fields.Integer(required=True)
    successes = fields.Integer(required=True)
    failures = fields.Integer(required=True)
    p50_ms = fields.Integer(required=True, allow_none=True, metadata={"description": "Over every attempt."})
    p95_ms = fields.Integer(required=True, allow_none=True)


class ExecutionsSummary(Schema):
    intervals = fields.List(fields.Nested(ExecutionInterval), required=True,
                            metadata={"description": "Oldest first; intervals without attempts are left out."})
