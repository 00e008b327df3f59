"""Who a Desk pull or push comes from, and whether to believe it (SPEC B2)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Row

from app.domain.errors import Forbidden, MalformedRequest, Unauthenticated
from app.keyring import Keyring, token_matches
from app.store import queries
from app.store.database import Database

ORG_ID = re.compile(r"[!-~]{1,64}")


@dataclass(frozen=True)
class DeskCaller:
    """What a pull or push says about its sender: our two config params and Desk's query."""

    channel_id: Any
    channel_token: Any = field(repr=False)
    org_id: str | None
    security_context: str | None = field(default=None, repr=False)


def config_params(value: Any) -> dict[str, Any]:
    """Desk's config params as a dict, given as an object or as [{name, value}, ...]."""
    if isinstance(value, dict):
        return value
    if isinstance(value, list):
        return {
            item["name"]: item.get("value")
            for item in value
            if isinstance(item, dict) and isinstance(item.get("name"), str)
        }
    return {}


def desk_caller(params: Mapping[str, Any], query: Mapping[str, str]) -> DeskCaller:
    """The caller of a pull (params: the body) or a push (params: its configParams)."""
    return DeskCaller(
        channel_id=params.get("channelId"),
        channel_token=params.get("channelToken"),
        org_id=query.get("orgId") or None,
        security_context=query.get("securityContext") or None,
    )


def authenticate_desk(db: Database, caller: DeskCaller) -> Row[Any]:
    """The channel a Desk request belongs to; raises in SPEC B2's order."""
    channel_id, token = caller.channel_id, caller.channel_token
    if not isinstance(channel_id, str) or not channel_id or not isinstance(token, str) or not token:
        raise Unauthenticated("missing_credentials", "The config params channelId and channelToken are required.")
    with db.read() as conn:
        channel = queries.channel_row(conn, channel_id)
    if channel is None or not token_matches(token, channel.desk_token_hash):
        # One answer for both cases: a caller cannot tell which channel ids exist.
        raise Unauthenticated("invalid_credentials", "Unknown channel or wrong channelToken.")
    if not caller.org_id:
        raise MalformedRequest("missing_org_id", "The orgId query parameter is required.")
    if not ORG_ID.fullmatch(caller.org_id):
        raise MalformedRequest("invalid_org_id", "The orgId query parameter must be 1 to 64 visible characters.")
    if channel.org_id is not None and channel.org_id != caller.org_id:
        raise Forbidden("org_mismatch", "This channel belongs to another Desk organisation.")
    if not channel.enabled:
        raise Forbidden("channel_disabled", "This channel is disabled.")
    return channel


MAX_CONTEXT_LENGTH = 8192


def context_changes(keyring: Keyring, channel: Row[Any], caller: DeskCaller, now: datetime) -> dict[str, Any]:
    """The channel columns to write so that it records this request's orgId and securityContext
    (SPEC B3); empty when both are as recorded, so that an unchanged request writes nothing."""
    values: dict[str, Any] = {}
    if caller.org_id and caller.org_id != channel.desk_org_id and ORG_ID.fullmatch(caller.org_id):
        values["desk_org_id"] = caller.org_id
    context = caller.security_context
    if context and len(context) <= MAX_CONTEXT_LENGTH:
        digest = keyring.digest(context)
        if digest != channel.desk_context_digest:
            values.update(desk_context=keyring.encrypt(context), desk_context_digest=digest, desk_context_at=now)
    return values
