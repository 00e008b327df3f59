"""`flask --app wsgi webhooks ...`: event subscriptions and their failed executions (SPEC B16), printing
the same JSON as the admin API."""

from __future__ import annotations

from typing import Any

import click
from flask.cli import AppGroup

from app.cli import _fail, _print, _run
from app.domain.errors import ConfirmationRequired
from app.services import services
from app.store.models import EVENT_TYPES
from app.usecases import subscriptions
from app.usecases.paging import Page

webhooks_cli = AppGroup("webhooks", help="Subscribe URLs to deskbridge's events; see and retry failed deliveries.")


def _given(**options: Any) -> dict[str, Any]:
    """The options given (not None), keyed as the admin API names them."""
    return {name: value for name, value in options.items() if value is not None}


def _page(page: Page) -> dict[str, Any]:
    return {"items": page.items, "next_cursor": page.next_cursor}


_EVENT = click.Choice(EVENT_TYPES)


@webhooks_cli.command("create")
@click.option("--url", required=True, help="Where events are POSTed (the outbound address policy applies).")
@click.option("--event", "events", multiple=True, required=True, type=_EVENT, help="An event type; repeat for more.")
@click.option("--channel", "channels", multiple=True, help="Only this channel's events; repeat for more (none: all).")
@click.option("--description", default=None, help="A note for operators.")
@click.option("--disabled", is_flag=True, help="Create it disabled.")
def create(url: str, events: tuple[str, ...], channels: tuple[str, ...], description: str | None,
           disabled: bool) -> None:
    """Create a webhook and print its signing secret (shown only now)."""
    svc = services()
    body = {"url": url, "events": list(events), "channels": list(channels), "description": description,
            "enabled": not disabled}
    _print(_run(lambda: subscriptions.create_subscription(svc.db, svc.keyring, body,
                                                          allow_private=svc.settings.allow_private_outbound)))


@webhooks_cli.command("list")
@click.option("--status", default=None, help="enabled or disabled.")
@click.option("--channel", default=None, help="Webhooks that receive this channel's events.")
@click.option("--since", default=None, help="Created at or after this ISO-8601 time.")
@click.option("--until", default=None, help="Created before this ISO-8601 time.")
@click.option("--limit", default=None, help="Webhooks per page (default 50, at most 250).")
@click.option("--cursor", default=None, help="The next_cursor of the previous page.")
def list_(**options: Any) -> None:
    """List webhooks, newest first (no secrets)."""
    _print(_page(_run(lambda: subscriptions.list_subscriptions(services().db, _given(**options)))))


@webhooks_cli.command("show")
@click.argument("subscription_id")
def show(subscription_id: str) -> None:
    """Show a webhook (no secret)."""
    _print(_run(lambda: subscriptions.show_subscription(services().db, subscription_id)))


@webhooks_cli.command("update")
@click.argument("subscription_id")
@click.option("--url", default=None, help="A new URL.")
@click.option("--event", "events", multiple=True, type=_EVENT, help="Replace the event types; repeat for more.")
@click.option("--channel", "channels", multiple=True, help="Replace the channels; repeat for more.")
@click.option("--all-channels", is_flag=True, help="Every channel's events (clears the channel list).")
@click.option("--description", default=None, help="A new note ('' for none).")
@click.option("--enable/--disable", "enabled", default=None, help="Enable (clears disabled_reason) or disable.")
def update(subscription_id: str, url: str | None, events: tuple[str, ...], channels: tuple[str, ...],
           all_channels: bool, description: str | None, enabled: bool | None) -> None:
    """Change a webhook's URL, events, channels, description or state."""
    svc = services()
    changes = _given(url=url, enabled=enabled)
    if events:
        changes["events"] = list(events)
    if channels or all_channels:
        changes["channels"] = [] if all_channels else list(channels)
    if description is not None:
        changes["description"] = description or None
    _print(_run(lambda: subscriptions.update_subscription(svc.db, subscription_id, changes,
                                                          allow_private=svc.settings.allow_private_outbound)))


@webhooks_cli.command("delete")
@click.argument("subscription_id")
@click.option("--yes", is_flag=True, help="Confirm: its deliveries go with it.")
def delete(subscription_id: str, yes: bool) -> None:
    """Delete a webhook with its deliveries (the events stay)."""
    if not yes:
        _fail(ConfirmationRequired("confirmation_required", "Deleting a webhook needs --yes."))
    _run(lambda: subscriptions.delete_subscription(services().db, subscription_id))
    _print({"deleted": subscription_id})


@webhooks_cli.command("rotate-secret")
@click.argument("subscription_id")
def rotate_secret(subscription_id: str) -> None:
    """Replace a webhook's signing secret and print the new one (shown only now)."""
    svc = services()
    _print(_run(lambda: subscriptions.rotate_subscription_secret(svc.db, svc.keyring, subscription_id)))


def _failure_filters(command: Any) -> Any:
    for option in reversed((
        click.option("--status", default=None, type=click.Choice(subscriptions.FAILURE_STATUSES)),
        click.option("--type", "type_", default=None, type=_EVENT, help="Only this event type."),
        click.option("--channel", default=None, help="Only events of this channel."),
        click.option("--since", default=None, help="Created at or after this ISO-8601 time."),
        click.option("--until", default=None, help="Created before this ISO-8601 time."),
    )):
        command = option(command)
    return command


def _failure_query(type_: str | None, **options: Any) -> dict[str, Any]:
    return _given(type=type_, **options)


@webhooks_cli.command("failures")
@click.argument("subscription_id")
@_failure_filters
@click.option("--limit", default=None, help="Deliveries per page (default 50, at most 250).")
@click.option("--cursor", default=None, help="The next_cursor of the previous page.")
def failures(subscription_id: str, **options: Any) -> None:
    """List a webhook's deliveries whose last attempt failed, newest first."""
    query = _failure_query(**options)
    _print(_page(_run(lambda: subscriptions.list_failures(services().db, subscription_id, query))))


@webhooks_cli.command("retry")
@click.argument("subscription_id")
@click.argument("delivery_ids", nargs=-1, type=int, required=True)
def retry(subscription_id: str, delivery_ids: tuple[int, ...]) -> None:
    """Attempt failed deliveries again now, with the same event id (at most 99)."""
    _print(_run(lambda: subscriptions.retry_failures(services().db, subscription_id, {"ids": list(delivery_ids)})))


@webhooks_cli.command("delete-failures")
@click.argument("subscription_id")
@click.argument("delivery_ids", nargs=-1, type=int, required=True)
@click.option("--yes", is_flag=True, help="Confirm.")
def delete_failures(subscription_id: str, delivery_ids: tuple[int, ...], yes: bool) -> None:
    """Delete failed deliveries and their attempts (at most 300)."""
    if not yes:
        _fail(ConfirmationRequired("confirmation_required", "Deleting deliveries needs --yes."))
    _print(_run(lambda: subscriptions.delete_failures(services().db, subscription_id, {"ids": list(delivery_ids)})))


@webhooks_cli.command("export")
@click.argument("subscription_id")
@click.option("--format", "fmt", type=click.Choice(subscriptions.EXPORT_FORMATS), default="csv")
@_failure_filters
def export(subscription_id: str, fmt: str, **options: Any) -> None:
    """Write a webhook's failed deliveries to standard output as CSV or JSON lines, streamed."""
    query = _failure_query(**options)
    lines = _run(lambda: subscriptions.export_failures(services().db, subscription_id, query, fmt))
    for line in lines:
        click.echo(line, nl=False)  # bytes: written to the binary stream as they come


@webhooks_cli.command("summary")
@click.argument("subscription_id")
@click.option("--since", default=None, help="Deliveries created at or after this ISO-8601 time.")
@click.option("--until", default=None, help="Deliveries created before this ISO-8601 time.")
def summary(subscription_id: str, since: str | None, until: str | None) -> None:
    """Count a webhook's deliveries: delivered, retrying, failed, in all and per event type."""
    query = _given(since=since, until=until)
    _print(_run(lambda: subscriptions.summarise(services().db, subscription_id, query)))


@webhooks_cli.command("executions")
@click.argument("subscription_id")
@click.option("--interval", default="day", type=click.Choice(subscriptions.INTERVALS))
@click.option("--since", default=None, help="Attempts started at or after this ISO-8601 time.")
@click.option("--until", default=None, help="Attempts started before this ISO-8601 time.")
def executions(subscription_id: str, interval: str, since: str | None, until: str | None) -> None:
    """A webhook's attempts per hour or day: successes, failures and durations (p50, p95)."""
    query = _given(interval=interval, since=since, until=until)
    _print(_run(lambda: subscriptions.summarise_executions(services().db, subscription_id, query)))
