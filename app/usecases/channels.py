"""Channel use cases shared by the CLI and the admin API (SPEC B7)."""

from __future__ import annotations

import secrets
from typing import Any

from marshmallow import RAISE, Schema, validate

from app.connectors import Connectors
from app.desk.mapping import desk_time
from app.domain.errors import Invalid, NotFound
from app.keyring import Keyring, hash_token, new_token
from app.store import queries
from app.store.database import Database
from app.store.models import Channel
from app.usecases.clock import utcnow
from app.validation import Text, load

COMMON_FIELDS = ("connector", "name", "org_id")


class _CommonFields(Schema):
    """What every channel has; the connector's settings are added per kind."""

    class Meta:
        unknown = RAISE  # our own API: unknown fields are refused

    name = Text(load_default=None, allow_none=True, validate=validate.Length(max=200))
    org_id = Text(load_default=None, allow_none=True, validate=validate.Length(min=1, max=64))


def new_channel_id() -> str:
    """ch_ and random url-safe text."""
    return "ch_" + secrets.token_urlsafe(16)


def create_channel(db: Database, keyring: Keyring, connectors: Connectors, data: Any) -> dict[str, Any]:
    """Create a channel; the answer holds its secrets, shown this once."""
    kind_name = data.get("connector") if isinstance(data, dict) else None
    if not isinstance(kind_name, str) or kind_name not in connectors:
        choices = ", ".join(sorted(connectors))
        raise Invalid("validation_error", "The channel is not valid.",
                      fields={"connector": [f"Must be one of: {choices}."]})
    kind = connectors[kind_name]
    schema = _CommonFields.from_dict(dict(kind.setting_fields()), name=f"New{kind_name.title()}Channel")()
    fields = load(schema, {k: v for k, v in data.items() if k != "connector"}, "The channel is not valid.")
    channel_id = new_channel_id()
    token = new_token()
    parts = kind.new_channel(channel_id, {k: v for k, v in fields.items() if k not in COMMON_FIELDS})
    channel = Channel(
        id=channel_id,
        name=fields["name"],
        org_id=fields["org_id"],
        connector=kind_name,
        settings=parts.settings,
        secrets={name: keyring.encrypt(value) for name, value in parts.secrets.items()},
        desk_token_hash=hash_token(token),
        enabled=True,
        last_seq=0,
        acked_seq=0,
        created_at=utcnow(),
    )
    with db.session(write=True) as session:
        session.add(channel)
        session.commit()
    return {
        "id": channel.id,
        "name": channel.name,
        "org_id": channel.org_id,
        "desk": {"channelId": channel.id, "channelToken": token},
        **parts.shown,
    }


def list_channels(db: Database) -> list[dict[str, Any]]:
    """Every channel with its state and sync figures, without secrets."""
    with db.session() as session:
        return [_summary(channel) for channel in queries.list_channels(session)]


def set_enabled(db: Database, channel_id: str, enabled: bool) -> dict[str, Any]:
    """Enable or disable a channel; the channel as listed."""
    with db.session(write=True) as session:
        channel = queries.get_channel(session, channel_id)
        if channel is None:
            raise NotFound("unknown_channel", f"There is no channel {channel_id}.")
        channel.enabled = enabled
        session.commit()
        return _summary(channel)


def _summary(channel: Channel) -> dict[str, Any]:
    summary = {
        "id": channel.id,
        "name": channel.name,
        "org_id": channel.org_id,
        "connector": channel.connector,
        "state": "enabled" if channel.enabled else "disabled",
    }
    if "outbound_url" in channel.settings:
        summary["outbound"] = {"url": channel.settings["outbound_url"]}
    return {
        **summary,
        "last_seq": channel.last_seq,
        "acked_seq": channel.acked_seq,
        "pending_seq": channel.last_seq - channel.acked_seq,
        "last_pull_at": desk_time(channel.last_pull_at) if channel.last_pull_at else None,
        "created_at": desk_time(channel.created_at),
    }
