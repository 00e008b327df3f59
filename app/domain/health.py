"""A channel's health (SPEC B10, B14), computed the same way wherever it is shown."""

from __future__ import annotations

from datetime import datetime, timedelta


def synced_seq(acked_seq: int, imported_seq: int) -> int:
    """Every message up to this seq reached Desk: Desk's pull cursor moved past it, or an import
    succeeded past it (the `message.synced` notion of SPEC B14)."""
    return max(acked_seq, imported_seq)


def synced_at(acked_at: datetime | None, last_import_at: datetime | None) -> datetime | None:
    """When Desk last got something: its cursor moved, or an import succeeded."""
    known = [moment for moment in (acked_at, last_import_at) if moment is not None]
    return max(known) if known else None


def channel_status(
    *, enabled: bool, backlog: int, oldest_waiting_at: datetime | None, synced_at: datetime | None,
    now: datetime, stall: timedelta,
) -> str:
    """`disabled`; `stalled` when messages wait, the oldest for `stall` or longer, and neither Desk's
    cursor nor an import has moved for as long; else `ok`."""
    if not enabled:
        return "disabled"
    if (backlog > 0 and oldest_waiting_at is not None and now - oldest_waiting_at >= stall
            and (synced_at is None or now - synced_at >= stall)):
        return "stalled"
    return "ok"
