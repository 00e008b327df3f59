"""Authentication of Desk's pull and push requests (SPEC B2)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import Connection, Row

from app.errors import ApiError
from app.keyring import token_matches
from app.store.queries import channel_row


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


def authenticate_desk(conn: Connection, params: Mapping[str, Any], org_id: str | None) -> Row[Any]:
    """The channel a Desk request belongs to; raises ApiError in SPEC B2's order."""
    channel_id = params.get("channelId")
    token = params.get("channelToken")
    if not isinstance(channel_id, str) or not channel_id or not isinstance(token, str) or not token:
        raise ApiError(
            401, "missing_credentials", "The config params channelId and channelToken are required."
        )
    channel = channel_row(conn, channel_id)
    if channel is None or not token_matches(token, channel.desk_token_hash):
        # One answer for both cases: a caller cannot tell which channel ids exist.
        raise ApiError(401, "invalid_credentials", "Unknown channel or wrong channelToken.")
    if not org_id:
        raise ApiError(400, "missing_org_id", "The orgId query parameter is required.")
    if channel.org_id is not None and channel.org_id != org_id:
        raise ApiError(403, "org_mismatch", "This channel belongs to another Desk organisation.")
    if not channel.enabled:
        raise ApiError(403, "channel_disabled", "This channel is disabled.")
    return channel
