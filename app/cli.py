"""`flask --app wsgi channel ...`: create, list, disable and enable channels (SPEC B7)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import click
import orjson
from flask.cli import AppGroup

from app.connectors import CONNECTOR_TYPES
from app.domain.errors import DomainError
from app.services import services
from app.store.database import DatabaseUnavailable
from app.usecases import channels

channel_cli = AppGroup("channel", help="Create and manage channels.")
T = TypeVar("T")


def _print(value: Any) -> None:
    click.echo(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode())


def _run(action: Callable[[], T]) -> T:
    """Run a use case; a domain error or an outage becomes one JSON line on stderr and exit 1."""
    try:
        return action()
    except DomainError as exc:
        _fail(exc)
    except Exception as exc:
        unavailable = DatabaseUnavailable.from_error(exc)
        if unavailable is None:
            raise
        _fail(unavailable.as_domain_error())


@channel_cli.command("create")
@click.option("--connector", required=True, type=click.Choice(CONNECTOR_TYPES), help="Connector type.")
@click.option("--outbound-url", required=True, help="Where agent replies are delivered.")
@click.option("--name", default=None, help="A name for operators.")
@click.option("--org-id", default=None, help="The Desk orgId this channel is limited to.")
def create(connector: str, outbound_url: str, name: str | None, org_id: str | None) -> None:
    """Create a channel and print its credentials (shown only now)."""
    svc = services()
    data = {"connector": connector, "outbound_url": outbound_url, "name": name, "org_id": org_id}
    _print(_run(lambda: channels.create_channel(svc.db, svc.keyring, svc.connectors, data)))


@channel_cli.command("list")
def list_() -> None:
    """List channels with their state and sync figures (no secrets)."""
    _print({"channels": _run(lambda: channels.list_channels(services().db))})


@channel_cli.command("disable")
@click.argument("channel_id")
def disable(channel_id: str) -> None:
    """Disable a channel: Desk's pulls and pushes are refused; inbound messages still queue."""
    _print(_run(lambda: channels.set_enabled(services().db, channel_id, False)))


@channel_cli.command("enable")
@click.argument("channel_id")
def enable(channel_id: str) -> None:
    """Enable a channel again."""
    _print(_run(lambda: channels.set_enabled(services().db, channel_id, True)))


def _fail(exc: DomainError) -> NoReturn:
    body: dict[str, Any] = {"error": exc.code, "message": exc.message}
    if exc.fields:
        body["fields"] = exc.fields
    click.echo(orjson.dumps(body).decode(), err=True)
    sys.exit(1)
