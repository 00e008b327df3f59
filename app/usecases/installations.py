"""What Desk's platform says about an installation (SPEC B12) and the links its agents open
(SPEC B13): platform callbacks, the installations list, open in source."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import Connection, Row

from app.desk import callbacks
from app.desk.auth import ORG_ID
from app.desk.callbacks import Callback
from app.desk.mapping import desk_time, optional_desk_time
from app.keyring import Keyring
from app.store import queries
from app.store.database import Database
from app.usecases import events
from app.usecases.clock import utcnow
from app.usecases.paging import Page, PageQuery, decode_cursor, encode_cursor, not_a_cursor
from app.validation import load

log = logging.getLogger(__name__)

ENTITIES = ("ticket", "thread")
MAX_EXT_ID = 255
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


# ---------------------------------------------------------------- platform callbacks


def record_callback(db: Database, keyring: Keyring, callback: Callback) -> dict[str, Any]:
    """Record a verified callback, in one transaction: the org's installation, its channels'
    securityContext, and, on uninstall or a later install, which of its channels are enabled."""
    event = _printable(callback.event)
    if callback.body_event is not None:
        log.warning("callback %s for org %s: the body names another event, %s; the path's is used",
                    event, callback.org_id, _printable(callback.body_event))
    if not callback.known:
        log.warning("callback for an unknown event %s (org %s): accepted, nothing recorded", event, callback.org_id)
        return {"ok": True}
    now = utcnow()
    context = callback.security_context
    with db.write() as conn:
        installation = _locked_installation(conn, callback, now)
        values: dict[str, Any] = {"last_event": callback.event, "last_event_at": now, "updated_at": now}
        if context is not None:
            # The newest securityContext of the org, and so of each of its channels (SPEC B3).
            ciphertext, digest = keyring.encrypt(context), keyring.digest(context)
            values.update(security_context=ciphertext, security_context_digest=digest)
            queries.record_org_context(conn, callback.org_id, ciphertext, digest, now)
        disabled: list[str] = []
        enabled: list[str] = []
        if callback.event == callbacks.UNINSTALL:
            values.update(status="uninstalled", uninstalled_at=now)
            disabled = queries.disable_for_uninstall(conn, callback.org_id)
            if installation.status == "installed" or installation.uninstalled_at is None:  # not a repeat
                _record_for_org(conn, "channel.uninstalled", callback.org_id, now)
        elif callback.event in callbacks.INSTALLING_EVENTS:
            if installation.status != "installed" or installation.installed_at is None:
                values.update(status="installed", installed_at=now)
                _record_for_org(conn, "channel.installed", callback.org_id, now)
            enabled = queries.enable_after_install(conn, callback.org_id)
        queries.update_installation(conn, callback.org_id, values)
    status = values.get("status", installation.status)
    log.info("callback %s for org %s recorded: %s%s%s", event, callback.org_id, status,
             f", channels disabled: {', '.join(disabled)}" if disabled else "",
             f", channels enabled again: {', '.join(enabled)}" if enabled else "")
    return {"ok": True}


def _record_for_org(conn: Connection, kind: str, org_id: str, now: datetime) -> None:
    """channel.installed or channel.uninstalled (SPEC B16): one event per channel of the org, or one
    with no channel when the org has none."""
    channels = queries.org_channels(conn, org_id)
    if not channels:
        events.record_event(conn, kind, None, {"channel": None, "org_id": org_id}, now)
        return
    events.record_events(
        conn, [(kind, channel.id, events.channel_data(channel, org_id=org_id)) for channel in channels], now)


def _locked_installation(conn: Connection, callback: Callback, now: datetime) -> Row[Any]:
    """The org's installation row locked until commit, created first if the org is new.

    A new org is recorded installed (only an uninstall says otherwise), with no install time
    unless the event is an install: a revoke from an org installed before we heard of it.
    """
    row = queries.lock_installation(conn, callback.org_id)
    if row is None:
        status = "uninstalled" if callback.event == callbacks.UNINSTALL else "installed"
        queries.insert_installation(conn, {
            "org_id": callback.org_id, "status": status, "installed_at": None, "uninstalled_at": None,
            "last_event": callback.event, "last_event_at": now, "security_context": None,
            "security_context_digest": None, "created_at": now, "updated_at": now,
        })
        # Inserted here, or by a concurrent callback of the same org that committed first.
        row = queries.lock_installation(conn, callback.org_id)
        assert row is not None
    return row


def _printable(value: Any) -> str:
    """A name from a request, fit for a log line: quoted, control characters escaped, cut short."""
    text = value if isinstance(value, str) else repr(value)
    return repr(text[:64] + ("..." if len(text) > 64 else ""))


# ---------------------------------------------------------------- the installations list


class InstallationsQuery(PageQuery):
    """`GET /api/installations` and `installation list`: a page at a time."""


def list_installations(db: Database, query: Any) -> Page:
    """Installations newest first (by when first recorded), with their channels; never a securityContext."""
    params = load(InstallationsQuery(), query, "The query is not valid.")
    after = _decode_cursor(params["cursor"]) if "cursor" in params else None
    with db.read() as conn:
        rows = list(queries.installations_page(conn, params["limit"] + 1, after))
        more = len(rows) > params["limit"]
        rows = rows[: params["limit"]]
        channels = queries.channels_of_desk_orgs(conn, [row.org_id for row in rows])
    items = [_item(row, channels.get(row.org_id, [])) for row in rows]
    return Page(items, _encode_cursor(rows[-1].created_at, rows[-1].org_id) if more else None)


def _item(row: Row[Any], channel_ids: list[str]) -> dict[str, Any]:
    return {
        "org_id": row.org_id,
        "status": row.status,
        "installed_at": optional_desk_time(row.installed_at),
        "uninstalled_at": optional_desk_time(row.uninstalled_at),
        "last_event": row.last_event,
        "last_event_at": desk_time(row.last_event_at),
        "channels": channel_ids,
    }


def _encode_cursor(created_at: datetime, org_id: str) -> str:
    micros = (created_at - _EPOCH) // timedelta(microseconds=1)
    return encode_cursor("i", f"{micros}:{org_id}")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    micros, sep, org_id = decode_cursor("i", cursor).partition(":")
    if sep and micros.isdigit() and ORG_ID.fullmatch(org_id):
        try:
            return _EPOCH + timedelta(microseconds=int(micros)), org_id
        except OverflowError:
            pass
    raise not_a_cursor()


# ---------------------------------------------------------------- open in source


@dataclass(frozen=True)
class SourceLink:
    """Where "open in source" leads: the permalink, or why there is none."""

    url: str | None
    found: bool  # whether the ticket or thread exists (a 404 says "no such item" or "no link")


PERMALINKS_TRIED = 5


def source_link(db: Database, entity: str, ext_id: str, *, parent_id: str | None = None,
                org_id: str | None = None) -> SourceLink:
    """The permalink of a thread (a message), or of a ticket (its conversation's first message that
    has one), among the channels of a Desk org when given, else among all channels."""
    if not _could_exist(ext_id) or (parent_id is not None and not _could_exist(parent_id)):
        return SourceLink(None, found=False)
    if org_id is not None and not ORG_ID.fullmatch(org_id):
        return SourceLink(None, found=False)
    with db.read() as conn:
        channel_ids = queries.channel_ids(conn, org_id)
        if not channel_ids:
            return SourceLink(None, found=False)
        if entity == "thread":
            found = queries.message_permalinks(conn, channel_ids, ext_id, parent_id)
            candidates = [found[channel_id] for channel_id in channel_ids if found.get(channel_id)]
            return SourceLink(_first_web_link(candidates), found=bool(found))
        having = queries.conversation_channels(conn, channel_ids, ext_id)
        for channel_id in (c for c in channel_ids if c in having):
            link = _first_web_link(queries.first_permalinks(conn, channel_id, ext_id, PERMALINKS_TRIED))
            if link is not None:
                return SourceLink(link, found=True)
        return SourceLink(None, found=bool(having))


def _could_exist(ext_id: str) -> bool:
    # Longer ids are never stored, and some strings (NUL) would not even reach the query.
    return 0 < len(ext_id) <= MAX_EXT_ID and "\x00" not in ext_id


def _first_web_link(candidates: list[Any]) -> str | None:
    """The first http(s) URL with a host among stored permalinks (checked at ingest; checked again
    here because a browser follows it)."""
    for url in candidates:
        if not isinstance(url, str) or not url.isprintable() or any(ch.isspace() for ch in url):
            continue
        try:
            parts = urlsplit(url)
        except ValueError:
            continue
        if parts.scheme.lower() in ("http", "https") and parts.hostname:
            return url
    return None
