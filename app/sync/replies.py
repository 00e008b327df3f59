"""Agent replies pushed by Desk: the reply ledger and delivery within a deadline."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Row
from tenacity import (
    Retrying,
    retry_if_exception,
    stop_before_delay,
    wait_exponential_jitter,
)

from app.connectors import ChannelEndpoint
from app.connectors.base import Connector, Delivered, DeliveryError, OutboundReply
from app.desk import mapping
from app.desk.auth import authenticate_desk, config_params
from app.desk.schemas import ReplyResourceSchema
from app.errors import ApiError
from app.keyring import Keyring
from app.rendering import html_to_text
from app.store import queries
from app.store.database import Database
from app.sync.clock import utcnow
from app.validation import load

MIN_ATTEMPT_SECONDS = 0.05


@dataclass(frozen=True)
class PushAnswer:
    status: int
    body: dict[str, Any]


ConnectorFor = Callable[[ChannelEndpoint], Connector]


_RESOURCE = ReplyResourceSchema()


def push_reply(
    db: Database,
    keyring: Keyring,
    connector_for: ConnectorFor,
    body: Mapping[str, Any],
    org_id: str | None,
    deadline_seconds: float,
) -> PushAnswer:
    """Deliver an agent's reply once, answering within the deadline (SPEC B4)."""
    started = time.monotonic()
    with db.read() as conn:
        channel = authenticate_desk(conn, config_params(body.get("configParams")), org_id)
    resource = body.get("resource")
    if not isinstance(resource, dict):
        problem = "Missing data for required field." if resource is None else "Must be an object."
        raise ApiError(422, "validation_error", "The reply is not valid.", fields={"resource": [problem]})
    reply_in = load(_RESOURCE, resource, "The reply is not valid.")
    # Everything that can fail before delivery happens before the reply is recorded,
    # so a recorded reply always gets an outcome.
    endpoint = ChannelEndpoint(channel.connector, channel.outbound_url, keyring.decrypt(channel.outbound_secret))
    connector = connector_for(endpoint)
    claim = _claim(db, channel.id, reply_in, deadline_seconds)
    if isinstance(claim, PushAnswer):
        return claim
    reply, claimed_at = claim
    outcome, attempts = _deliver(connector, _outbound(channel.id, reply), started + deadline_seconds)
    return _finish(db, reply, claimed_at, outcome, attempts)


def _claim(
    db: Database, channel_id: str, reply_in: dict[str, Any], deadline_seconds: float
) -> PushAnswer | tuple[Row[Any], datetime]:
    """Record the reply as pending (committed before any delivery), or answer without delivering."""
    now = utcnow()
    with db.write() as conn:
        reply = queries.insert_reply_if_new(conn, {
            "channel_id": channel_id,
            "desk_reply_id": reply_in["id"],
            "status": "pending",
            "attempts": 0,
            "conversation_ext_id": reply_in["extParentId"],
            "in_reply_to": reply_in.get("replyToExtId"),
            "content": reply_in.get("content") or reply_in.get("summary") or "",
            "content_type": reply_in["contentType"],
            "author": reply_in.get("author"),
            "attachments": reply_in.get("attachments") or [],
            "created_at": now,
            "attempt_started_at": now,
            "updated_at": now,
        })
        if reply is None:
            reply = queries.lock_reply(conn, channel_id, reply_in["id"])
            if reply.status == "sent":
                return PushAnswer(200, _success_body(reply, reply.external_id, reply.sent_at or reply.updated_at))
            in_flight_until = (reply.attempt_started_at or now) + timedelta(seconds=deadline_seconds + 1)
            if reply.status == "pending" and now < in_flight_until:
                return PushAnswer(409, {
                    "error": "reply_in_progress",
                    "message": "This reply is being delivered right now; ask again in a few seconds.",
                })
            # failed (the caller asked again), or pending left behind by a crash
            queries.reclaim_reply(conn, reply.id, now)
        return reply, now


def _outbound(channel_id: str, reply: Row[Any]) -> OutboundReply:
    text = html_to_text(reply.content) if reply.content_type == "text/html" else reply.content
    return OutboundReply(
        channel_id=channel_id,
        reply_id=reply.desk_reply_id,
        conversation_id=reply.conversation_ext_id,
        in_reply_to=reply.in_reply_to,
        content=reply.content,
        content_type=reply.content_type,
        text=text,
        author=reply.author,
        attachments=list(reply.attachments or []),
    )


def _deliver(connector: Connector, outbound: OutboundReply, deadline: float) -> tuple[Delivered | DeliveryError, int]:
    """Deliver with backoff on transient failures, never past the deadline."""
    attempts = 0
    budget = deadline - time.monotonic() - MIN_ATTEMPT_SECONDS

    def attempt() -> Delivered:
        nonlocal attempts
        attempts += 1
        return connector.deliver(outbound, max(deadline - time.monotonic(), MIN_ATTEMPT_SECONDS))

    retrying = Retrying(
        retry=retry_if_exception(lambda exc: isinstance(exc, DeliveryError) and exc.transient),
        wait=wait_exponential_jitter(multiplier=0.1, max=2.0, jitter=0.1),
        stop=stop_before_delay(max(budget, 0.0)),
        reraise=True,
    )
    try:
        return retrying(attempt), attempts
    except DeliveryError as exc:
        return exc, attempts


def _finish(
    db: Database, reply: Row[Any], claimed_at: datetime, outcome: Delivered | DeliveryError, attempts: int
) -> PushAnswer:
    """Record the outcome in the ledger and build the answer."""
    now = utcnow()
    with db.write() as conn:
        # Only the request that holds the claim writes its outcome.
        if isinstance(outcome, Delivered):
            external_id = outcome.external_id or f"desk-reply-{reply.desk_reply_id}"
            queries.record_outcome(conn, reply.id, claimed_at, attempts=attempts, status="sent", now=now,
                                   external_id=external_id)
        else:
            queries.record_outcome(conn, reply.id, claimed_at, attempts=attempts, status="failed", now=now,
                                   last_error=outcome.message)
    if isinstance(outcome, Delivered):
        return PushAnswer(200, _success_body(reply, external_id, now))
    if outcome.transient:
        return PushAnswer(502, {"error": "delivery_failed",
                                "message": f"{outcome.message} The reply was not delivered ({attempts} attempts)."})
    return PushAnswer(422, {"error": "delivery_rejected", "message": f"{outcome.message} The reply was not delivered."})


def _success_body(reply: Row[Any], external_id: str, sent_at: datetime) -> dict[str, Any]:
    return {
        "extId": external_id,
        "extParentId": reply.conversation_ext_id,
        "createdTime": mapping.desk_time(sent_at),
        "direction": "out",
        "content": reply.content,
        "contentType": reply.content_type,
        "canReply": True,
    }
