"""`flask --app wsgi channel ...`: create, list, disable and enable channels."""

from __future__ import annotations

import sys
from typing import Any

import click
import orjson
from flask.cli import AppGroup

from app.admin import channels
from app.connectors import CONNECTOR_TYPES
from app.errors import ApiError
from app.services import services

channel_cli = AppGroup("channel", help="Create and manage channels.")


def _print(value: Any) -> None:
    click.echo(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode())


@channel_cli.command("create")
@click.option("--connector", required=True, type=click.Choice(CONNECTOR_TYPES), help="Connector type.")
@click.option("--outbound-url", required=True, help="Where agent replies are delivered.")
@click.option("--name", default=None, help="A name for operators.")
@click.option("--org-id", default=None, help="The Desk orgId this channel is limited to.")
def create(connector: str, outbound_url: str, name: str | None, org_id: str | None) -> None:
    """Create a channel and print its credentials (shown only now)."""
    svc = services()
    data = {"connector": connector, "outbound_url": outbound_url, "name": name, "org_id": org_id}
    try:
        created = channels.create_channel(
            svc.db, svc.keyring, data, allow_private=svc.settings.allow_private_outbound
        )
    except ApiError as exc:
        _fail(exc)
    _print(created)


@channel_cli.command("list")
def list_() -> None:
    """List channels with their state and sync figures (no secrets)."""
    _print({"channels": channels.list_channels(services().db)})


@channel_cli.command("disable")
@click.argument("channel_id")
def disable(channel_id: str) -> None:
    """Disable a channel: Desk's pulls and pushes are refused; inbound messages still queue."""
    _set(channel_id, False)


@channel_cli.command("enable")
@click.argument("channel_id")
def enable(channel_id: str) -> None:
    """Enable a channel again."""
    _set(channel_id, True)


def _set(channel_id: str, enabled: bool) -> None:
    summary = channels.set_enabled(services().db, channel_id, enabled)
    if summary is None:
        _fail(ApiError(404, "unknown_channel", f"There is no channel {channel_id}."))
    _print(summary)


def _fail(exc: ApiError) -> None:
    body: dict[str, Any] = {"error": exc.code, "message": exc.message}
    if exc.fields:
        body["fields"] = exc.fields
    click.echo(orjson.dumps(body).decode(), err=True)
    sys.exit(1)
