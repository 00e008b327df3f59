"""SQLAlchemy models: channels, conversations, the inbox, the reply ledger and its attempts, jobs, installations."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    event,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

class UtcDateTime(TypeDecorator[datetime]):
    """A timestamp stored in UTC and always read back timezone-aware."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        # SQLite keeps no zone: the stored value is UTC by construction.
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# BIGINT on PostgreSQL; INTEGER on SQLite so that it stays the rowid alias.
BigId = BigInteger().with_variant(Integer(), "sqlite")
ID_LENGTH = 255


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Channel(Base):
    """One link between a Desk installation and one external service account."""

    __tablename__ = "channels"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str | None] = mapped_column(String(200))
    org_id: Mapped[str | None] = mapped_column(String(64))
    connector: Mapped[str] = mapped_column(String(32))
    # The connector's settings (webhook: outbound_url), and its secrets, each value a
    # Fernet ciphertext (webhook: inbound_secret, outbound_secret): one shape for any kind.
    settings: Mapped[dict[str, Any]] = mapped_column(JSON)
    secrets: Mapped[dict[str, str]] = mapped_column(JSON)
    desk_token_hash: Mapped[str] = mapped_column(String(64))
    # Zoho Desk's data centre (SPEC B14): a host name, or a base URL for a local emulator.
    desk_domain: Mapped[str] = mapped_column(String(255), default="desk.zoho.com", server_default="desk.zoho.com")
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    # last_seq doubles as the per-channel sequence counter; its row is the lock.
    last_seq: Mapped[int] = mapped_column(BigInteger, default=0)
    acked_seq: Mapped[int] = mapped_column(BigInteger, default=0)
    last_pull_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    acked_at: Mapped[datetime | None] = mapped_column(UtcDateTime())  # when acked_seq last moved
    # The real-time import's cursor (SPEC B14): every message up to it reached Desk by an import.
    # A message is synced once acked_seq or imported_seq is at or past it.
    imported_seq: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    last_import_at: Mapped[datetime | None] = mapped_column(UtcDateTime())  # when imported_seq last moved
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    # What Desk's latest authenticated pull or push carried (SPEC B3): the orgId, and the
    # securityContext as a Fernet ciphertext plus a keyed digest, so that a request can
    # tell whether it changed without decrypting (and writes only when it did).
    desk_org_id: Mapped[str | None] = mapped_column(String(64))
    desk_context: Mapped[str | None] = mapped_column(Text)
    desk_context_digest: Mapped[str | None] = mapped_column(String(64))
    desk_context_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    # "uninstall" while the channel is disabled because its Desk org uninstalled the extension
    # (SPEC B12): a later install enables exactly these again, not those an operator disabled.
    disabled_by: Mapped[str | None] = mapped_column(String(16))


class Conversation(Base):
    """A thread of messages in the external service; one Desk ticket."""

    __tablename__ = "conversations"
    __table_args__ = (
        UniqueConstraint("channel_id", "ext_id"),
        Index("ix_conversations_channel_first_seq", "channel_id", "first_seq"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    channel_id: Mapped[str] = mapped_column(ForeignKey("channels.id", ondelete="CASCADE"))
    ext_id: Mapped[str] = mapped_column(String(ID_LENGTH))
    subject: Mapped[str] = mapped_column(String(ID_LENGTH))
    first_seq: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())


class InboxMessage(Base):
    """A message received from the external service, numbered per channel by seq."""

    __tablename__ = "inbox_messages"
    __table_args__ = (
        UniqueConstraint("channel_id", "ext_id"),
        # Serves "messages of channel X with seq > N in seq order" as a range scan.
        UniqueConstraint("channel_id", "seq"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    channel_id: Mapped[str] = mapped_column(ForeignKey("channels.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(BigInteger)
    ext_id: Mapped[str] = mapped_column(String(ID_LENGTH))
    conversation_ext_id: Mapped[str] = mapped_column(String(ID_LENGTH))
    content: Mapped[str] = mapped_column(Text)
    content_type: Mapped[str] = mapped_column(String(16))
    direction: Mapped[str] = mapped_column(String(3))
    can_reply: Mapped[bool] = mapped_column(Boolean)
    author: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    attachments: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)
    permalink: Mapped[str | None] = mapped_column(String(2048))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    received_at: Mapped[datetime] = mapped_column(UtcDateTime())


class Reply(Base):
    """The reply ledger: one row per agent reply Desk pushed, keyed by Desk's id."""

    __tablename__ = "replies"
    __table_args__ = (
        UniqueConstraint("channel_id", "desk_reply_id"),
        Index("ix_replies_channel_external_id", "channel_id", "external_id"),
        Index("ix_replies_status_updated_at", "status", "updated_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    channel_id: Mapped[str] = mapped_column(ForeignKey("channels.id", ondelete="CASCADE"))
    desk_reply_id: Mapped[str] = mapped_column(String(ID_LENGTH))
    status: Mapped[str] = mapped_column(String(8))  # pending, sent, failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    external_id: Mapped[str | None] = mapped_column(String(ID_LENGTH))
    conversation_ext_id: Mapped[str] = mapped_column(String(ID_LENGTH))
    in_reply_to: Mapped[str | None] = mapped_column(String(ID_LENGTH))
    content: Mapped[str] = mapped_column(Text)
    content_type: Mapped[str] = mapped_column(String(16))
    author: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    attachments: Mapped[list[Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    attempt_started_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime())
    sent_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    # A provider's delivery reports after it accepted the reply (SPEC B15, Twilio's status
    # callbacks): the status stays `sent` (never sent again); these say what became of it.
    delivery_status: Mapped[str | None] = mapped_column(String(32))
    delivery_error: Mapped[str | None] = mapped_column(String(500))  # "<code>: <message>"
    delivery_updated_at: Mapped[datetime | None] = mapped_column(UtcDateTime())


class ReplyAttempt(Base):
    """One delivery attempt of a ledger entry (SPEC B4): the attempts history."""

    __tablename__ = "reply_attempts"
    __table_args__ = (Index("ix_reply_attempts_reply_id", "reply_id", "id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    reply_id: Mapped[int] = mapped_column(BigId, ForeignKey("replies.id", ondelete="CASCADE"))
    started_at: Mapped[datetime] = mapped_column(UtcDateTime())
    duration_ms: Mapped[int] = mapped_column(Integer)
    outcome: Mapped[str] = mapped_column(String(9))  # sent, transient, permanent
    http_status: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)


# The statuses in which a job holds its unique_key: at most one such job per key.
ACTIVE_JOB_STATUSES = ("queued", "running")


class Job(Base):
    """Background work (SPEC B17): claimed under a lease, retried with backoff; failed jobs are kept."""

    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_status_run_at", "status", "run_at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(64))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(8))  # queued, running, done, failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer)
    run_at: Mapped[datetime] = mapped_column(UtcDateTime())  # when it may run (next)
    locked_by: Mapped[str | None] = mapped_column(String(128))  # the worker holding the lease
    locked_until: Mapped[datetime | None] = mapped_column(UtcDateTime())  # the lease's end
    last_error: Mapped[str | None] = mapped_column(Text)
    unique_key: Mapped[str | None] = mapped_column(String(ID_LENGTH))
    # Like unique_key, but held while queued only: one more job may be queued while one runs
    # (a channel's import: a message committed during a run gets a run of its own).
    queue_key: Mapped[str | None] = mapped_column(String(ID_LENGTH))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime())


# A partial unique index (PostgreSQL and SQLite alike): enqueue() inserts ON CONFLICT DO NOTHING against it.
Index(
    "ux_jobs_unique_key_active",
    Job.unique_key,
    unique=True,
    postgresql_where=Job.status.in_(ACTIVE_JOB_STATUSES),
    sqlite_where=Job.status.in_(ACTIVE_JOB_STATUSES),
)

Index(
    "ux_jobs_queue_key_queued",
    Job.queue_key,
    unique=True,
    postgresql_where=Job.status == "queued",
    sqlite_where=Job.status == "queued",
)


class ChannelHealth(Base):
    """The health status the background check last computed for a channel, to log its changes."""

    __tablename__ = "channel_health"

    channel_id: Mapped[str] = mapped_column(ForeignKey("channels.id", ondelete="CASCADE"), primary_key=True)
    status: Mapped[str] = mapped_column(String(8))  # ok, stalled, disabled
    changed_at: Mapped[datetime] = mapped_column(UtcDateTime())


IMPORT_STATUSES = ("ok", "retrying", "refused")  # as stored; "off" is computed (SPEC B14)


class ChannelImport(Base):
    """The real-time import's state for one channel (SPEC B14): its lease (one import per channel at a
    time across hosts), the last outcome, and the backoff after failures."""

    __tablename__ = "channel_imports"

    channel_id: Mapped[str] = mapped_column(ForeignKey("channels.id", ondelete="CASCADE"), primary_key=True)
    status: Mapped[str] = mapped_column(String(8), default="ok")  # ok, retrying, refused
    error: Mapped[str | None] = mapped_column(String(500))  # the last failure's reason
    failures: Mapped[int] = mapped_column(Integer, default=0)  # consecutive failed imports
    retry_at: Mapped[datetime | None] = mapped_column(UtcDateTime())  # no import before then (backoff)
    # The digest of the securityContext Desk refused: imports stop until another one is recorded.
    refused_digest: Mapped[str | None] = mapped_column(String(64))
    locked_by: Mapped[str | None] = mapped_column(String(128))
    locked_until: Mapped[datetime | None] = mapped_column(UtcDateTime())
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime())


@event.listens_for(Channel.enabled, "set")
def _enabled_by_hand(channel: Channel, value: bool, old: bool, initiator: Any) -> None:
    """An enable or disable through the ORM (an operator's) makes the channel the operator's
    again: a later install must not enable a channel that was disabled by hand since."""
    channel.disabled_by = None


# "Open in source" of a ticket (SPEC B13): the first message of a conversation that has a
# permalink. Partial: messages without one (most connectors' messages) cost ingest nothing.
Index(
    "ix_inbox_messages_permalinks",
    InboxMessage.channel_id,
    InboxMessage.conversation_ext_id,
    InboxMessage.seq,
    postgresql_where=InboxMessage.permalink.is_not(None),
    sqlite_where=InboxMessage.permalink.is_not(None),
)

INSTALLATION_STATUSES = ("installed", "uninstalled")


class Installation(Base):
    """What Desk's platform callbacks told us of one Desk org's installation (SPEC B12)."""

    __tablename__ = "installations"
    __table_args__ = (Index("ix_installations_created_at", "created_at", "org_id"),)

    org_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    status: Mapped[str] = mapped_column(String(11))  # installed, uninstalled
    installed_at: Mapped[datetime | None] = mapped_column(UtcDateTime())  # the latest install
    uninstalled_at: Mapped[datetime | None] = mapped_column(UtcDateTime())  # the latest uninstall
    last_event: Mapped[str] = mapped_column(String(64))
    last_event_at: Mapped[datetime] = mapped_column(UtcDateTime())
    # The newest securityContext of a callback, a Fernet ciphertext plus a keyed digest (as on
    # channels): never shown, never logged.
    security_context: Mapped[str | None] = mapped_column(Text)
    security_context_digest: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime())


# ---------------------------------------------------------------- event subscriptions (SPEC B16)

EVENT_TYPES = (
    "message.received", "message.synced",
    "reply.received", "reply.sent", "reply.failed", "reply.status",
    "channel.created", "channel.updated", "channel.disabled", "channel.enabled", "channel.deleted",
    "channel.installed", "channel.uninstalled", "channel.stalled", "channel.recovered",
)
DELIVERY_STATUSES = ("pending", "retrying", "delivered", "failed")


class Subscription(Base):
    """Another system's subscription to deskbridge's events: where to send which, signed how."""

    __tablename__ = "subscriptions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    url: Mapped[str] = mapped_column(String(2048))
    events: Mapped[list[str]] = mapped_column(JSON)  # event types
    channels: Mapped[list[str]] = mapped_column(JSON)  # channel ids; empty: every channel
    description: Mapped[str | None] = mapped_column(String(500))
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    secret: Mapped[str] = mapped_column(Text)  # whsec_..., a Fernet ciphertext
    # Why deliveries stopped: "gone" (the receiver answered 410), "failing" (5 days of failures), or
    # "operator"; None while enabled.
    disabled_reason: Mapped[str | None] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime())


class Event(Base):
    """Something that happened, recorded in the transaction of the change it reports (an outbox).
    Recorded only when a subscription wanted it; it outlives the channel it names."""

    __tablename__ = "events"
    __table_args__ = (Index("ix_events_created_at", "created_at"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # evt_<time><random>: sorts by time
    type: Mapped[str] = mapped_column(String(32))
    channel_id: Mapped[str | None] = mapped_column(String(64))  # no foreign key: events outlive channels
    data: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())


class EventDelivery(Base):
    """One event to one subscription: attempted until delivered or its schedule is spent."""

    __tablename__ = "event_deliveries"
    __table_args__ = (
        Index("ix_event_deliveries_status_next", "status", "next_attempt_at"),
        Index("ix_event_deliveries_subscription", "subscription_id", "status", "id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(ForeignKey("events.id", ondelete="CASCADE"), index=True)
    subscription_id: Mapped[str] = mapped_column(ForeignKey("subscriptions.id", ondelete="CASCADE"))
    event_type: Mapped[str] = mapped_column(String(32))  # the event's, for filters and summaries
    channel_id: Mapped[str | None] = mapped_column(String(64))  # the event's
    status: Mapped[str] = mapped_column(String(10))  # pending, retrying, delivered, failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UtcDateTime())  # due, while pending or retrying
    # The lease of the worker sending it: a killed worker's delivery is attempted again after it.
    locked_by: Mapped[str | None] = mapped_column(String(128))
    locked_until: Mapped[datetime | None] = mapped_column(UtcDateTime())
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime())
    delivered_at: Mapped[datetime | None] = mapped_column(UtcDateTime())


class EventAttempt(Base):
    """One attempt at an event delivery: the executions history and its summaries."""

    __tablename__ = "event_attempts"
    __table_args__ = (
        Index("ix_event_attempts_subscription_started", "subscription_id", "started_at"),
        Index("ix_event_attempts_delivery", "delivery_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    delivery_id: Mapped[int] = mapped_column(BigId, ForeignKey("event_deliveries.id", ondelete="CASCADE"))
    subscription_id: Mapped[str] = mapped_column(String(64))
    started_at: Mapped[datetime] = mapped_column(UtcDateTime())
    duration_ms: Mapped[int] = mapped_column(Integer)
    status_code: Mapped[int | None] = mapped_column(Integer)
    success: Mapped[bool] = mapped_column(Boolean)
    error: Mapped[str | None] = mapped_column(String(500))
