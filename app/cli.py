"""`flask --app wsgi channel ...`: create, list, show, update, disable, enable, rotate, delete (SPEC B7, B10);
`replies ...` (the reply ledger) and `installation list` (SPEC B12)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import click
import orjson
from flask.cli import AppGroup

from app.connectors import CONNECTOR_TYPES
from app.domain.errors import ConfirmationRequired, DomainError
from app.services import services
from app.store.database import DatabaseUnavailable
from app.usecases import channels, installations, ledger

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


# The connectors' settings as CLI flags (SPEC B15); the admin API takes them in snake_case.
CONNECTOR_OPTIONS = (
    ("--outbound-url", "outbound_url", "webhook: where agent replies are delivered."),
    ("--bot-token", "bot_token", "telegram: the bot's token from @BotFather."),
    ("--account-sid", "account_sid", "twilio: the account SID (AC...)."),
    ("--auth-token", "auth_token", "twilio: the account's auth token."),
    ("--from", "from", "twilio: the sender, +1555... or whatsapp:+1555..."),
    ("--messaging-service-sid", "messaging_service_sid", "twilio: a Messaging Service (MG...) instead of --from."),
)


def connector_options(command: Any) -> Any:
    """Add the connectors' setting flags to a command (they reach it in **settings: `from` is a keyword)."""
    for flag, name, help_text in reversed(CONNECTOR_OPTIONS):
        command = click.option(flag, name, default=None, help=help_text)(command)
    return command


def _connector_settings(given: dict[str, Any]) -> dict[str, Any]:
    """The connector flags given, keyed as the admin API names them."""
    return {name: given[name] for _, name, _ in CONNECTOR_OPTIONS if given.get(name) is not None}


@channel_cli.command("create")
@click.option("--connector", required=True, type=click.Choice(CONNECTOR_TYPES), help="Connector type.")
@connector_options
@click.option("--name", default=None, help="A name for operators.")
@click.option("--org-id", default=None, help="The Desk orgId this channel is limited to.")
@click.option("--desk-domain", default=None,
              help="Zoho Desk's data centre: desk.zoho.com (default), desk.zoho.eu, desk.zoho.in, ...")
def create(connector: str, name: str | None, org_id: str | None, desk_domain: str | None, **settings: Any) -> None:
    """Create a channel and print its credentials (shown only now)."""
    svc = services()
    data = {"connector": connector, "name": name, "org_id": org_id, **_connector_settings(settings)}
    if desk_domain is not None:
        data["desk_domain"] = desk_domain
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


@channel_cli.command("show")
@click.argument("channel_id")
def show(channel_id: str) -> None:
    """Show a channel with its sync figures and health."""
    svc = services()
    _print(_run(lambda: channels.show_channel(svc.db, channel_id, stall_minutes=svc.settings.stall_minutes,
                                              extension_secret=svc.settings.desk_extension_secret)))


@channel_cli.command("update")
@click.argument("channel_id")
@click.option("--name", default=None, help="A new name.")
@click.option("--org-id", default=None, help="The Desk orgId the channel is limited to ('' for none).")
@connector_options
@click.option("--desk-domain", default=None, help="Zoho Desk's data centre (desk.zoho.eu, ...).")
def update(channel_id: str, name: str | None, org_id: str | None, desk_domain: str | None, **settings: Any) -> None:
    """Change a channel's name, Desk org or connector settings (a new bot token registers the webhook)."""
    svc = services()
    changes: dict[str, Any] = _connector_settings(settings)
    if name is not None:
        changes["name"] = name
    if org_id is not None:
        changes["org_id"] = org_id or None
    if desk_domain is not None:
        changes["desk_domain"] = desk_domain
    _print(_run(lambda: channels.update_channel(svc.db, svc.keyring, svc.connectors, channel_id, changes,
                                                stall_minutes=svc.settings.stall_minutes,
                                                extension_secret=svc.settings.desk_extension_secret)))


@channel_cli.command("rotate")
@click.argument("channel_id")
@click.option("--secret", "which", required=True, type=click.Choice(channels.ROTATABLE), help="Which secret.")
def rotate(channel_id: str, which: str) -> None:
    """Replace a secret and print the new one (shown only now)."""
    svc = services()
    _print(_run(lambda: channels.rotate_secret(svc.db, svc.keyring, svc.connectors, channel_id, which,
                                               overlap_seconds=svc.settings.secret_overlap_seconds)))


@channel_cli.command("delete")
@click.argument("channel_id")
@click.option("--yes", is_flag=True, help="Confirm: the channel's inbox and reply ledger go with it.")
def delete(channel_id: str, yes: bool) -> None:
    """Delete a channel with everything stored for it."""
    _run(lambda: channels.delete_channel(services().db, channel_id, channel_id if yes else None))
    _print({"deleted": channel_id})


replies_cli = AppGroup("replies", help="See, retry, delete and export agent replies (the reply ledger).")


def _filters(channel: str | None, status: str | None, since: str | None, until: str | None) -> dict[str, str]:
    given = {"channel": channel, "status": status, "since": since, "until": until}
    return {name: value for name, value in given.items() if value is not None}


def _filter_options(command: Any) -> Any:
    for option in reversed((
        click.option("--channel", default=None, help="Only this channel's replies."),
        click.option("--status", default=None, help="pending, sent or failed."),
        click.option("--since", default=None, help="Created at or after this ISO-8601 time."),
        click.option("--until", default=None, help="Created before this ISO-8601 time."),
    )):
        command = option(command)
    return command


@replies_cli.command("list")
@_filter_options
@click.option("--limit", default=None, help="Entries per page (default 50, at most 250).")
@click.option("--cursor", default=None, help="The next_cursor of the previous page.")
def replies_list(channel: str | None, status: str | None, since: str | None, until: str | None,
                 limit: str | None, cursor: str | None) -> None:
    """List ledger entries, newest first."""
    query: dict[str, Any] = _filters(channel, status, since, until)
    query.update({name: value for name, value in (("limit", limit), ("cursor", cursor)) if value is not None})
    page = _run(lambda: ledger.list_replies(services().db, query))
    _print({"items": page.items, "next_cursor": page.next_cursor})


@replies_cli.command("show")
@click.argument("ledger_id")
def replies_show(ledger_id: str) -> None:
    """Show one entry with its attempts history."""
    _print(_run(lambda: ledger.show_reply(services().db, ledger_id)))


@replies_cli.command("retry")
@click.argument("ledger_ids", nargs=-1, type=int)
@click.option("--all-failed", is_flag=True, help="Every failed entry (with --channel, --since, --until).")
@click.option("--channel", default=None)
@click.option("--since", default=None)
@click.option("--until", default=None)
def replies_retry(ledger_ids: tuple[int, ...], all_failed: bool, channel: str | None, since: str | None,
                  until: str | None) -> None:
    """Deliver entries again in the background, with the same idempotency key."""
    svc = services()
    body: dict[str, Any] = (
        {"ids": list(ledger_ids)} if ledger_ids or not all_failed else _filters(channel, "failed", since, until)
    )
    _print(_run(lambda: ledger.retry_replies(svc.db, body, deadline_seconds=svc.settings.push_deadline_seconds)))


@replies_cli.command("delete")
@click.argument("ledger_ids", nargs=-1, type=int, required=True)
@click.option("--yes", is_flag=True, help="Confirm.")
def replies_delete(ledger_ids: tuple[int, ...], yes: bool) -> None:
    """Delete entries and their attempts history."""
    if not yes:
        _fail(ConfirmationRequired("confirmation_required", "Deleting ledger entries needs --yes."))
    _print(_run(lambda: ledger.delete_replies(services().db, {"ids": list(ledger_ids)})))


@replies_cli.command("export")
@click.option("--format", "fmt", type=click.Choice(("csv", "jsonl")), default="csv")
@_filter_options
def replies_export(fmt: str, channel: str | None, status: str | None, since: str | None, until: str | None) -> None:
    """Write entries to standard output as CSV or JSON lines, streamed."""
    lines = _run(lambda: ledger.export_replies(services().db, _filters(channel, status, since, until), fmt))
    for line in lines:
        click.echo(line, nl=False)  # bytes: written to the binary stream as they come


@replies_cli.command("summary")
@_filter_options
@click.option("--interval", default="day", type=click.Choice(("hour", "day")))
def replies_summary(channel: str | None, status: str | None, since: str | None, until: str | None,
                    interval: str) -> None:
    """Counts, success rate and delivery times per interval."""
    query = {**_filters(channel, status, since, until), "interval": interval}
    _print(_run(lambda: ledger.summarise(services().db, query)))


installation_cli = AppGroup("installation", help="See the Desk installations that platform callbacks recorded.")


@installation_cli.command("list")
@click.option("--limit", default=None, help="Installations per page (default 50, at most 250).")
@click.option("--cursor", default=None, help="The next_cursor of the previous page.")
def installation_list(limit: str | None, cursor: str | None) -> None:
    """List installations newest first, with their channels (never a securityContext)."""
    query = {name: value for name, value in (("limit", limit), ("cursor", cursor)) if value is not None}
    page = _run(lambda: installations.list_installations(services().db, query))
    _print({"items": page.items, "next_cursor": page.next_cursor})


def _fail(exc: DomainError) -> NoReturn:
    body: dict[str, Any] = {"error": exc.code, "message": exc.message}
    if exc.fields:
        body["fields"] = exc.fields
    click.echo(orjson.dumps(body).decode(), err=True)
    sys.exit(1)
