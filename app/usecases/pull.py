"""The inbox out to Desk: pull batches (SPEC B3)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import Connection, Row

from app.desk import mapping
from app.desk.auth import DeskCaller, context_changes
from app.desk.state import DamagedState, decode_state, encode_state
from app.keyring import Keyring
from app.store import queries
from app.store.database import Database
from app.usecases import events
from app.usecases.clock import utcnow

log = logging.getLogger(__name__)

# A pull that changes nothing writes nothing: last_pull_at is kept to this resolution
# (Desk pulls every 4 minutes), so that frequent empty pulls stay pure reads.
LAST_PULL_RESOLUTION = timedelta(seconds=60)


def pull(
    db: Database, keyring: Keyring, channel: Row[Any], caller: DeskCaller, raw_state: Any, limit: int
) -> dict[str, Any]:
    """Desk's sync object for an authenticated pull: messages after its cursor, with the tickets they open."""
    acked: int | None = None
    try:
        cursor = decode_state(keyring, channel.id, raw_state)
        if cursor > channel.last_seq:
            raise DamagedState(f"channelState cursor {cursor} is ahead of the inbox ({channel.last_seq})")
        damaged = False
        acked = cursor if raw_state else None
    except DamagedState as exc:
        # Desk would send the same state every 4 minutes forever: heal it instead.
        log.warning(
            "damaged channelState (%s); resuming from acked_seq %s", exc, channel.acked_seq,
            extra={"channel_id": channel.id},
        )
        cursor, damaged = channel.acked_seq, True
    # At the head of the inbox there is nothing to read (a message committed since the
    # channel row was read comes with the next pull).
    if cursor < channel.last_seq:
        with db.read() as conn:
            answer = sync_batch(conn, keyring, channel.id, cursor, limit).sync
    else:
        answer = mapping.empty_sync()
    if damaged and "channelState" not in answer:
        answer["channelState"] = encode_state(keyring, channel.id, cursor)
    now = utcnow()
    changes = context_changes(keyring, channel, caller, now)
    acked_grows = acked is not None and acked > channel.acked_seq
    if acked_grows:
        changes["acked_at"] = now
    if changes or acked_grows or channel.last_pull_at is None or now - channel.last_pull_at >= LAST_PULL_RESOLUTION:
        with db.write() as conn:
            before = events.sync_cursors_if_wanted(conn, channel.id) if acked_grows else None
            queries.record_pull(conn, channel.id, acked, now, changes)
            if before is not None and acked is not None:
                events.record_synced(conn, channel.id, before, acked, before.imported_seq, now)
    return answer


@dataclass(frozen=True)
class SyncBatch:
    """A sync object for Desk and the seq of the last message it covers (None: nothing new)."""

    sync: dict[str, Any]
    last_seq: int | None

    @property
    def gives_desk_anything(self) -> bool:
        """Whether it holds a ticket or a thread (a batch of echoes only holds neither)."""
        return bool(self.sync["data"]["tickets"] or self.sync["data"]["threads"])


def sync_batch(conn: Connection, keyring: Keyring, channel_id: str, after_seq: int, limit: int) -> SyncBatch:
    """The sync object for the messages after `after_seq`: threads, the tickets they open, and
    the channelState of the last one (none when there is nothing new). Pull and import share it."""
    messages = queries.messages_after(conn, channel_id, after_seq, limit)
    if not messages:
        return SyncBatch(mapping.empty_sync(), None)
    last_seq = messages[-1].seq
    conversations = queries.conversations_first_between(conn, channel_id, after_seq, last_seq)
    return SyncBatch(mapping.sync_object(conversations, messages, encode_state(keyring, channel_id, last_seq)),
                     last_seq)
