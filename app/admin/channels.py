"""Channel use cases shared by the CLI and the admin API."""

from __future__ import annotations

import secrets
from typing import Any

from marshmallow import RAISE, Schema, ValidationError, validate, validates

from app.connectors import CONNECTOR_TYPES
from app.connectors.addresses import AddressRefused, check_outbound_url
from app.desk.mapping import desk_time
from app.keyring import Keyring, hash_token, new_token, new_webhook_secret
from app.store import queries
from app.store.database import Database
from app.store.models import Channel
from app.sync.clock import utcnow
from app.validation import Text, load


class NewChannelSchema(Schema):
    """Input of channel creation; our own API, so unknown fields are refused."""

    class Meta:
        unknown = RAISE

    connector = Text(required=True, validate=validate.OneOf(CONNECTOR_TYPES))
    outbound_url = Text(required=True, validate=validate.Length(min=1, max=2048))
    name = Text(load_default=None, allow_none=True, validate=validate.Length(max=200))
    org_id = Text(load_default=None, allow_none=True, validate=validate.Length(min=1, max=64))

    def __init__(self, *, allow_private: bool) -> None:
        super().__init__()
        self.allow_private = allow_private

    @validates("outbound_url")
    def _public_url(self, value: str, **_: Any) -> None:
        try:
            check_outbound_url(value, allow_private=self.allow_private)
        except AddressRefused as exc:
            raise ValidationError(f"Refused: {exc}.") from None


def new_channel_id() -> str:
    """ch_ and random url-safe text."""
    return "ch_" + secrets.token_urlsafe(16)


def create_channel(db: Database, keyring: Keyring, data: Any, *, allow_private: bool) -> dict[str, Any]:
    """Create a channel; the answer holds its secrets, shown this once."""
    fields = load(NewChannelSchema(allow_private=allow_private), data, "The channel is not valid.")
    token, inbound_secret, outbound_secret = new_token(), new_webhook_secret(), new_webhook_secret()
    channel = Channel(
        id=new_channel_id(),
        name=fields["name"],
        org_id=fields["org_id"],
        connector=fields["connector"],
        outbound_url=fields["outbound_url"],
        desk_token_hash=hash_token(token),
        inbound_secret=keyring.encrypt(inbound_secret),
        outbound_secret=keyring.encrypt(outbound_secret),
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
        "inbound": {"path": f"/inbound/{channel.id}", "secret": inbound_secret},
        "outbound": {"url": channel.outbound_url, "secret": outbound_secret},
    }


def list_channels(db: Database) -> list[dict[str, Any]]:
    """Every channel with its state and sync figures, without secrets."""
    with db.session() as session:
        return [_summary(channel) for channel in queries.list_channels(session)]


def set_enabled(db: Database, channel_id: str, enabled: bool) -> dict[str, Any] | None:
    """Enable or disable a channel; None if there is no such channel."""
    with db.session(write=True) as session:
        channel = queries.get_channel(session, channel_id)
        if channel is None:
            return None
        channel.enabled = enabled
        session.commit()
        return _summary(channel)


def _summary(channel: Channel) -> dict[str, Any]:
    return {
        "id": channel.id,
        "name": channel.name,
        "org_id": channel.org_id,
        "connector": channel.connector,
        "state": "enabled" if channel.enabled else "disabled",
        "outbound": {"url": channel.outbound_url},
        "last_seq": channel.last_seq,
        "acked_seq": channel.acked_seq,
        "pending_seq": channel.last_seq - channel.acked_seq,
        "last_pull_at": desk_time(channel.last_pull_at) if channel.last_pull_at else None,
        "created_at": desk_time(channel.created_at),
    }
