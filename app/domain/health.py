"""A channel's health (SPEC B10), computed the same way wherever it is shown."""

from __future__ import annotations

from datetime import datetime, timedelta


def channel_status(
    *, enabled: bool, backlog: int, oldest_waiting_at: datetime | None, acked_at: datetime | None,
    now: datetime, stall: timedelta,
) -> str:
    """`disabled`; `stalled` when messages wait, the oldest for `stall` or longer, and Desk's cursor
    has not moved for as long; else `ok`."""
    if not enabled:
        return "disabled"
    if (backlog > 0 and oldest_waiting_at is not None and now - oldest_waiting_at >= stall
            and (acked_at is None or now - acked_at >= stall)):
        return "stalled"
    return "ok"
