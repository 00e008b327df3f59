"""Channel use cases shared by the CLI and the admin API (SPEC B7)."""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from marshmallow import RAISE, Schema, validate
from sqlalchemy.orm import Session

from app.connectors import Connectors
from app.connectors.base import ChannelConfig
from app.desk.mapping import desk_time, optional_desk_time
from app.domain.errors import ConfirmationRequired, Invalid, NotFound
from app.domain.health import channel_status, synced_at, synced_seq
from app.keyring import Keyring, hash_token, new_token
from app.store import queries
from app.store.database import Database
from app.store.models import Channel, ChannelImport
from app.usecases import events
from app.usecases.clock import utcnow
from app.usecases.imports import import_status
from app.validation import DEFAULT_DESK_DOMAIN, DeskDomain, Text, load

COMMON_FIELDS = ("connector", "name", "org_id", "desk_domain")


class _CommonFields(Schema):
    """What every channel has; the connector's settings are added per kind."""

    class Meta:
        unknown = RAISE  # our own API: unknown fields are refused

    name = Text(load_default=None, allow_none=True, validate=validate.Length(max=200))
    org_id = Text(load_default=None, allow_none=True, validate=validate.Length(min=1, max=64))
    desk_domain = DeskDomain(load_default=DEFAULT_DESK_DOMAIN)


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
    _check_plain_http(fields.get("desk_domain"), connectors.allow_private)
    channel_id = new_channel_id()
    token = new_token()
    parts = kind.new_channel(channel_id, {k: v for k, v in fields.items() if k not in COMMON_FIELDS})
    channel = Channel(
        id=channel_id,
        name=fields["name"],
        org_id=fields["org_id"],
        desk_domain=fields["desk_domain"],
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
        session.flush()
        _record(session, "channel.created", channel)
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


def show_channel(db: Database, channel_id: str, *, stall_minutes: int, extension_secret: str | None = None
                 ) -> dict[str, Any]:
    """One channel with its sync figures and health (SPEC B10, B14), without secrets."""
    now = utcnow()
    with db.session() as session:
        channel = _get(session, channel_id)
        oldest = queries.oldest_waiting_at(session, channel.id, synced_seq(channel.acked_seq, channel.imported_seq))
        failed = queries.replies_failed_since(session, channel.id, now - timedelta(hours=24))
        state = session.get(ChannelImport, channel.id)
        return {**_summary(channel), **_health(channel, oldest, failed, now, stall_minutes),
                **_import_health(channel, state, extension_secret)}


class _ChannelChanges(Schema):
    """What `channel update` may change; the connector's settings are added per kind."""

    class Meta:
        unknown = RAISE

    name = Text(allow_none=True, validate=validate.Length(max=200))
    org_id = Text(allow_none=True, validate=validate.Length(min=1, max=64))
    desk_domain = DeskDomain()


def update_channel(db: Database, keyring: Keyring, connectors: Connectors, channel_id: str, data: Any, *,
                   stall_minutes: int, extension_secret: str | None = None) -> dict[str, Any]:
    """Change a channel's name, Desk org or connector settings; the channel as `show` gives it."""
    if not isinstance(data, dict):
        raise Invalid("validation_error", "The changes must be a JSON object.")
    with db.session() as session:
        kind = connectors[_get(session, channel_id).connector]
    fields = {name: field for name, field in kind.setting_fields().items()}
    for field in fields.values():
        field.required = False
    schema = _ChannelChanges.from_dict(fields, name="ChannelChanges")()
    changes = load(schema, data, "The changes are not valid.")
    _check_plain_http(changes.get("desk_domain"), connectors.allow_private)
    with db.session(write=True) as session:
        channel = _get(session, channel_id)
        for name in ("name", "org_id", "desk_domain"):
            if name in changes:
                setattr(channel, name, changes.pop(name))
        if changes:
            # The kind may call its provider (a new bot token registers the webhook) before anything is stored.
            change = kind.change_settings(ChannelConfig.from_row(channel, keyring.decrypt), changes)
            channel.settings = change.settings
            channel.secrets = _stored_secrets(keyring, channel.secrets, change.secrets)
        session.flush()
        _record(session, "channel.updated", channel)
        session.commit()
    return show_channel(db, channel_id, stall_minutes=stall_minutes, extension_secret=extension_secret)


ROTATABLE = ("inbound", "outbound", "desk-token")


def rotate_secret(
    db: Database, keyring: Keyring, connectors: Connectors, channel_id: str, which: Any, *, overlap_seconds: int
) -> dict[str, Any]:
    """A new secret for a channel, shown this once (SPEC B10). The old inbound secret keeps
    verifying for `overlap_seconds`; a new desk token or outbound secret takes effect at once."""
    if which not in ROTATABLE:
        raise Invalid("validation_error", "The secret to rotate is not valid.",
                      fields={"secret": [f"Must be one of: {', '.join(ROTATABLE)}."]})
    now = utcnow()
    with db.session(write=True) as session:
        channel = _get(session, channel_id)
        previous_valid_until = None
        if which == "desk-token":
            value = new_token()
            channel.desk_token_hash = hash_token(value)
        else:
            kind = connectors[channel.connector]
            until = now + timedelta(seconds=overlap_seconds) if which == "inbound" and overlap_seconds else None
            rotated = kind.rotate_secret(ChannelConfig.from_row(channel, keyring.decrypt), which, until)
            channel.settings = rotated.settings
            channel.secrets = _stored_secrets(keyring, channel.secrets, rotated.secrets)
            value, previous_valid_until = rotated.value, rotated.previous_valid_until
        session.commit()
    return {
        "secret": which,
        "value": value,
        "previous_valid_until": optional_desk_time(previous_valid_until),
    }


def delete_channel(db: Database, channel_id: str, confirm: str | None) -> None:
    """Delete a channel with everything stored for it; `confirm` must repeat its id."""
    if confirm != channel_id:
        raise ConfirmationRequired(
            "confirmation_required",
            f"Deleting a channel deletes its inbox and reply ledger: confirm with its id ({channel_id}).",
        )
    with db.session(write=True) as session:
        channel = _get(session, channel_id)
        _record(session, "channel.deleted", channel)
        session.delete(channel)
        session.commit()


def set_enabled(db: Database, channel_id: str, enabled: bool) -> dict[str, Any]:
    """Enable or disable a channel; the channel as listed."""
    with db.session(write=True) as session:
        channel = _get(session, channel_id)
        changed = channel.enabled != enabled
        channel.enabled = enabled
        session.flush()
        if changed:
            _record(session, "channel.enabled" if enabled else "channel.disabled", channel)
        session.commit()
        return _summary(channel)


def _record(session: Session, kind: str, channel: Channel) -> None:
    """A channel.* event (SPEC B16), in the session's transaction."""
    events.record_event(session.connection(), kind, channel.id, events.channel_data(channel))


def _stored_secrets(keyring: Keyring, stored: dict[str, str], changes: Mapping[str, str | None]) -> dict[str, str]:
    """A channel's secrets (ciphertexts) with `changes` (in clear; None removes one) applied."""
    secrets_now = dict(stored)
    for name, secret in changes.items():
        if secret is None:
            secrets_now.pop(name, None)
        else:
            secrets_now[name] = keyring.encrypt(secret)
    return secrets_now


def _check_plain_http(desk_domain: str | None, allow_private: bool) -> None:
    """A plain-http Desk base URL is for a local emulator only (SPEC B14)."""
    if desk_domain and desk_domain.startswith("http://") and not allow_private:
        raise Invalid("validation_error", "The channel is not valid.", fields={"desk_domain": [
            "A plain http:// base URL needs ALLOW_PRIVATE_OUTBOUND=true (a local Desk emulator); use https."]})


def _get(session: Session, channel_id: str) -> Channel:
    channel = queries.get_channel(session, channel_id)
    if channel is None:
        raise NotFound("unknown_channel", f"There is no channel {channel_id}.")
    return channel


def _summary(channel: Channel) -> dict[str, Any]:
    summary = {
        "id": channel.id,
        "name": channel.name,
        "org_id": channel.org_id,
        "connector": channel.connector,
        "state": "enabled" if channel.enabled else "disabled",
        "desk_domain": channel.desk_domain,
    }
    if "outbound_url" in channel.settings:
        summary["outbound"] = {"url": channel.settings["outbound_url"]}
    return {
        **summary,
        "last_seq": channel.last_seq,
        "acked_seq": channel.acked_seq,
        "imported_seq": channel.imported_seq,
        "pending_seq": channel.last_seq - synced_seq(channel.acked_seq, channel.imported_seq),
        "last_pull_at": optional_desk_time(channel.last_pull_at),
        "last_import_at": optional_desk_time(channel.last_import_at),
        "created_at": desk_time(channel.created_at),
    }


def _health(
    channel: Channel, oldest_waiting: datetime | None, failed_24h: int, now: datetime, stall_minutes: int
) -> dict[str, Any]:
    """SPEC B10's health figures and status."""
    backlog = channel.last_seq - synced_seq(channel.acked_seq, channel.imported_seq)
    status = channel_status(enabled=channel.enabled, backlog=backlog, oldest_waiting_at=oldest_waiting,
                            synced_at=synced_at(channel.acked_at, channel.last_import_at), now=now,
                            stall=timedelta(minutes=stall_minutes))
    return {
        "desk_org_id": channel.desk_org_id,
        "backlog": backlog,
        "oldest_waiting_at": optional_desk_time(oldest_waiting),
        "acked_at": optional_desk_time(channel.acked_at),
        "replies_failed_24h": failed_24h,
        "status": status,
    }



def _import_health(channel: Channel, state: ChannelImport | None, extension_secret: str | None) -> dict[str, Any]:
    """The real-time import's part of the health (SPEC B14): its status and its last failure."""
    status = import_status(channel, state, extension_secret)
    return {
        "import_status": status,
        "import_error": state.error if state is not None and status in ("retrying", "refused") else None,
        "import_retry_at": optional_desk_time(state.retry_at) if state is not None and status == "retrying" else None,
    }
