"""The job table's operations: enqueue in the caller's transaction, claim under a lease, heartbeat,
complete, fail with backoff (SPEC B17; modelled on Solid Queue and GoodJob).

A claimed job is `running` with `locked_by` (the claiming worker) and `locked_until` (the lease's
end). A worker that dies stops extending its lease, and the job is claimed again once the lease
has expired. Only the lease holder can complete or fail a job, so a worker that lost its lease
cannot overwrite what the job's new holder does.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, and_, bindparam, exists, insert, or_, select, text, update
from sqlalchemy.dialects import postgresql, sqlite

from app.store.database import Database
from app.store.models import ACTIVE_JOB_STATUSES, Job
from app.usecases.clock import utcnow

# SPEC B17: a killed worker's job runs again within a minute.
MAX_LEASE_SECONDS = 60.0
DEFAULT_LEASE_SECONDS = 30.0
DEFAULT_MAX_ATTEMPTS = 5
BACKOFF_BASE_SECONDS = 5.0
BACKOFF_MAX_SECONDS = 3600.0
JITTER = 0.2
MAX_ERROR_LENGTH = 2000

_jobs = Job.__table__
# PostgreSQL: every enqueue notifies this channel at commit, so idle workers wake at once (LISTEN).
NOTIFY_CHANNEL = "deskbridge_jobs"
_NOTIFY = text(f"SELECT pg_notify('{NOTIFY_CHANNEL}', '')")


@dataclass(frozen=True)
class ClaimedJob:
    """A job as its worker holds it: `attempts` counts this one."""

    id: int
    kind: str
    payload: dict[str, Any]
    attempts: int
    max_attempts: int
    unique_key: str | None
    locked_by: str
    queue_key: str | None = None


def _insert_if_no_active_duplicate(dialect: str) -> Any:
    """INSERT ... ON CONFLICT (unique_key) WHERE status IN ('queued', 'running') DO NOTHING RETURNING id."""
    module = postgresql if dialect == "postgresql" else sqlite
    return (
        module.insert(_jobs)
        .on_conflict_do_nothing(
            index_elements=[_jobs.c.unique_key], index_where=_jobs.c.status.in_(ACTIVE_JOB_STATUSES)
        )
        .returning(_jobs.c.id)
    )


def _insert_if_none_queued(dialect: str) -> Any:
    """INSERT ... ON CONFLICT (queue_key) WHERE status = 'queued' DO NOTHING RETURNING id."""
    module = postgresql if dialect == "postgresql" else sqlite
    return (
        module.insert(_jobs)
        # A literal, as in the index: PostgreSQL matches the index by its predicate, not a bound parameter.
        .on_conflict_do_nothing(index_elements=[_jobs.c.queue_key], index_where=text("status = 'queued'"))
        .returning(_jobs.c.id)
    )


_ENQUEUE = {name: _insert_if_no_active_duplicate(name) for name in ("postgresql", "sqlite")}
_ENQUEUE_IF_NONE_QUEUED = {name: _insert_if_none_queued(name) for name in ("postgresql", "sqlite")}


def enqueue(
    conn: Connection,
    kind: str,
    payload: Mapping[str, Any],
    *,
    unique_key: str | None = None,
    queue_key: str | None = None,
    run_at: datetime | None = None,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
) -> bool:
    """Add a job in the caller's transaction (so it exists iff the caller's change commits); False,
    and nothing written, when a job with the same unique_key is already queued or running, or one
    with the same queue_key is already queued (give one or the other)."""
    now = utcnow()
    row = {
        "kind": kind,
        "payload": dict(payload),
        "status": "queued",
        "attempts": 0,
        "max_attempts": max_attempts,
        "run_at": run_at or now,
        "unique_key": unique_key,
        "queue_key": queue_key,
        "created_at": now,
        "updated_at": now,
    }
    if unique_key is not None and queue_key is not None:
        raise ValueError("a job has a unique_key or a queue_key, not both")
    if unique_key is None and queue_key is None:
        conn.execute(insert(_jobs), row)
    else:
        statement = (_ENQUEUE if queue_key is None else _ENQUEUE_IF_NONE_QUEUED)[conn.dialect.name]
        # RETURNING, not rowcount: psycopg reports no rowcount for ON CONFLICT DO NOTHING.
        if conn.execute(statement, row).first() is None:
            return False
    if conn.dialect.name == "postgresql":
        conn.execute(_NOTIFY)  # delivered at commit, and only if the transaction commits
    return True


def _claimable(jobs: Any, kinds: Collection[str] | None) -> Any:
    """Queued jobs that are due, and running jobs whose worker stopped renewing the lease."""
    due = or_(
        and_(jobs.c.status == "queued", jobs.c.run_at <= bindparam("now")),
        and_(jobs.c.status == "running", jobs.c.locked_until < bindparam("now")),
    )
    return and_(due, jobs.c.kind.in_(sorted(kinds))) if kinds is not None else due


def claim(
    db: Database, worker_id: str, *, lease_seconds: float = DEFAULT_LEASE_SECONDS, kinds: Collection[str] | None = None
) -> ClaimedJob | None:
    """Take the job that has been due longest (of `kinds`, when given) under a lease, or None.

    PostgreSQL: FOR UPDATE SKIP LOCKED, so concurrent claimers each take a different job.
    SQLite: the claim is a write transaction, and writers run one at a time.
    """
    lease = timedelta(seconds=min(lease_seconds, MAX_LEASE_SECONDS))
    # A plain read first: an idle worker's poll costs no write transaction (SQLite's write
    # lock is the database's) and no row locks.
    with db.read() as conn:
        if not conn.execute(select(exists().where(_claimable(_jobs, kinds))), {"now": utcnow()}).scalar():
            return None
    # An alias: a subquery on the UPDATE's own table would otherwise be correlated to it.
    due = _jobs.alias("due")
    candidate = (
        select(due.c.id)
        .where(_claimable(due, kinds))
        .order_by(due.c.run_at, due.c.id)
        .limit(1)
        .with_for_update(skip_locked=True)  # rendered by PostgreSQL only
        .scalar_subquery()
    )
    with db.write() as conn:
        now = utcnow()
        row = conn.execute(
            update(_jobs)
            .where(_jobs.c.id == candidate)
            .values(
                status="running",
                locked_by=worker_id,
                locked_until=now + lease,
                attempts=_jobs.c.attempts + 1,
                updated_at=now,
            )
            .returning(_jobs.c.id, _jobs.c.kind, _jobs.c.payload, _jobs.c.attempts, _jobs.c.max_attempts,
                       _jobs.c.unique_key, _jobs.c.queue_key),
            {"now": now},
        ).first()
    if row is None:
        return None
    return ClaimedJob(row.id, row.kind, row.payload, row.attempts, row.max_attempts, row.unique_key, worker_id,
                      row.queue_key)


def _held(job_id: int, worker_id: str) -> Any:
    return and_(_jobs.c.id == job_id, _jobs.c.status == "running", _jobs.c.locked_by == worker_id)


def heartbeat(db: Database, job_id: int, worker_id: str, lease_seconds: float = DEFAULT_LEASE_SECONDS) -> bool:
    """Extend a job's lease from now; False when this worker no longer holds it."""
    now = utcnow()
    until = now + timedelta(seconds=min(lease_seconds, MAX_LEASE_SECONDS))
    with db.write() as conn:
        changed = conn.execute(update(_jobs).where(_held(job_id, worker_id)).values(locked_until=until, updated_at=now))
        return changed.rowcount == 1


def complete(db: Database, job: ClaimedJob, *, reschedule_in: float | None = None) -> bool:
    """Mark a job done; False when its worker lost the lease (the result is not recorded).

    reschedule_in: enqueue the job again (same kind, payload and unique_key) to run that many
    seconds from now, in the same transaction, so a recurring job is never missing.
    """
    now = utcnow()
    with db.write() as conn:
        changed = conn.execute(
            update(_jobs)
            .where(_held(job.id, job.locked_by))
            .values(status="done", locked_by=None, locked_until=None, finished_at=now, updated_at=now)
        )
        if changed.rowcount != 1:
            return False
        if reschedule_in is not None:
            enqueue(conn, job.kind, job.payload, unique_key=job.unique_key, max_attempts=job.max_attempts,
                    run_at=now + timedelta(seconds=reschedule_in))
        return True


def backoff_seconds(attempts: int) -> float:
    """How long a job waits after its `attempts`-th failed attempt: exponential, with jitter."""
    scheduled = min(BACKOFF_BASE_SECONDS * 2 ** (max(attempts, 1) - 1), BACKOFF_MAX_SECONDS)
    return scheduled * random.uniform(1 - JITTER, 1 + JITTER)


def fail(db: Database, job: ClaimedJob, error: str, *, retry_in: float | None = None) -> str | None:
    """Record a failed attempt: queued again after retry_in seconds (default: backoff), or `failed`
    for good once max_attempts are used. The new status, or None when the worker lost the lease."""
    now = utcnow()
    final = job.attempts >= job.max_attempts
    values: dict[str, Any] = {
        "locked_by": None,
        "locked_until": None,
        "last_error": error[:MAX_ERROR_LENGTH],
        "updated_at": now,
    }
    if final:
        values.update(status="failed", finished_at=now)
    else:
        delay = backoff_seconds(job.attempts) if retry_in is None else retry_in
        values.update(status="queued", run_at=now + timedelta(seconds=delay))
    with db.write() as conn:
        if not final and job.queue_key is not None and _queued_with_key(conn, job.queue_key):
            # A job queued since this one started does the same work: this one ends here.
            values.pop("run_at")
            values.update(status="done", finished_at=now)
        changed = conn.execute(update(_jobs).where(_held(job.id, job.locked_by)).values(**values))
    if changed.rowcount != 1:
        return None
    return values["status"]


def _queued_with_key(conn: Connection, queue_key: str) -> bool:
    return conn.execute(
        select(exists().where(_jobs.c.queue_key == queue_key, _jobs.c.status == "queued"))
    ).scalar_one()


def active_unique_keys(db: Database, keys: Collection[str]) -> set[str]:
    """Which of these unique keys a queued or running job holds."""
    with db.read() as conn:
        held = conn.execute(
            select(_jobs.c.unique_key).where(_jobs.c.unique_key.in_(sorted(keys)),
                                             _jobs.c.status.in_(ACTIVE_JOB_STATUSES))
        )
        return set(held.scalars())
