"""Delivery of recorded events to their subscribers (SPEC B16): claimed under a lease, sent as
signed Standard Webhooks from a pool of sender threads, their outcomes recorded in batches.

A delivery is due while `pending` or `retrying` with `next_attempt_at` passed and no live lease.
A claim sets `locked_by` and `locked_until` (a lease longer than one attempt's timeout), taken
with FOR UPDATE SKIP LOCKED on PostgreSQL and in a write transaction (one writer) on SQLite; a
worker killed mid-delivery leaves its lease to expire, and the delivery is attempted again, with
the same `webhook-id` (the event id). `attempts` counts recorded attempts only, so an attempt cut
short by a killed worker is made again in full rather than used up.

After an attempt: 2xx within the timeout is `delivered` (an answer after the timeout is a
failure); otherwise the delivery waits for the next delay of the schedule (`retrying`) or, once
the schedule is spent, is `failed`. A refusal by the outbound address policy is `failed` at once
(the same URL would be refused again; the operator fixes it and retries the failures).

Disabled subscriptions get nothing: a due delivery of a disabled subscription is `failed` when
claimed, without an attempt, so that it shows among the subscription's failures and can be
retried once it is enabled again. A `410 Gone` disables the subscription at once (reason "gone");
so does failing for 5 days (reason "failing", see `failing_for_days`); either way its waiting
deliveries are `failed` in the same transaction.

Throughput (SPEC C2): one coordinator thread records the outcomes that came in and claims the
next deliveries in one write transaction (executemany), while up to `senders` threads send;
a subscription may hold at most half of the senders, so that a hanging receiver cannot stall
everyone else's deliveries. Deliveries to one subscription are concurrent, and claims take due
deliveries in index order (oldest first) but promise none: receivers must not rely on order.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import orjson
from sqlalchemy import Boolean, Connection, Integer, Row, String, bindparam, exists, or_, select, update
from standardwebhooks.webhooks import Webhook

from app import metrics
from app.connectors.addresses import AddressRefused, check_outbound_url
from app.connectors.http import HttpFailure, bounded_request, make_http_session
from app.keyring import Keyring, SecretUnreadable
from app.store.database import Database, DatabaseUnavailable
from app.store.models import BigId, Event, EventAttempt, EventDelivery, Subscription, UtcDateTime
from app.usecases.clock import utcnow
from app.usecases.events import event_body

if TYPE_CHECKING:
    import requests

log = logging.getLogger(__name__)

TIMEOUT_SECONDS = 15.0  # SPEC B16: 2xx within 15 s is success
# Longer than an attempt's timeout plus recording it; at most the job queue's 60 s (SPEC B17).
LEASE_SECONDS = 30.0
MAX_LEASE_SECONDS = 60.0
SENDERS = 64
# A subscription whose deliveries all failed for this long is disabled (SPEC B16).
FAILING_FOR = timedelta(days=5)
# How often one deliverer looks again whether a failing subscription has failed for FAILING_FOR.
FAILING_CHECK_EVERY_SECONDS = 60.0
# After the first outcome comes in, wait this long at most for more (up to half of those in flight)
# to record them together.
GATHER_SECONDS = 0.002
# While new deliveries fill every claim, how often a claim looks for retrying ones that came due.
LOOK_AT_RETRYING_SECONDS = 0.1
ERROR_PAUSE_SECONDS = 2.0
MAX_ERROR_LENGTH = 500
PEER = "The subscriber"
WAITING = ("pending", "retrying")
GONE, FAILING = "gone", "failing"

_deliveries = EventDelivery.__table__
_attempts = EventAttempt.__table__
_events = Event.__table__
_subscriptions = Subscription.__table__


def event_http_session(*, allow_private: bool, connections: int = SENDERS) -> requests.Session:
    """The guarded HTTP client (make_http_session), with a connection pool per host as large as the
    number of senders, so that concurrent deliveries to one receiver reuse their connections."""
    http = make_http_session(allow_private=allow_private)
    # Rebuilt with a larger pool: requests' adapters keep 10 connections per host.
    http.get_adapter("https://").init_poolmanager(connections, connections)
    return http


def checked_lease(timeout: float, lease_seconds: float) -> float:
    """The lease a delivery is claimed under (at most MAX_LEASE_SECONDS); it must outlast an attempt."""
    lease_seconds = min(lease_seconds, MAX_LEASE_SECONDS)
    if timeout >= lease_seconds:
        raise ValueError(f"an attempt's timeout ({timeout:g} s) must be shorter than the lease it is made under "
                         f"({lease_seconds:g} s)")
    return lease_seconds


@dataclass(frozen=True)
class Target:
    """A subscription as its deliveries are sent: where, signed how (None: the secret is unreadable),
    and why its URL is refused by the outbound address policy, if it is."""

    id: str
    url: str
    signer: Webhook | None
    refused: str | None = None


@dataclass(frozen=True)
class Claimed:
    """A delivery held under a lease: `attempts` were recorded before this one."""

    id: int
    event_id: str
    event_type: str
    target: Target
    attempts: int
    body: bytes
    lease_ends: float  # time.monotonic()


Recorded = tuple["Attempt", str, datetime | None]  # a result, the delivery's new status, its next attempt


@dataclass(frozen=True)
class Attempt:
    """What one attempt came to. `permanent`: no later attempt can do better (address policy)."""

    delivery: Claimed
    started_at: datetime
    seconds: float
    status_code: int | None
    error: str | None
    permanent: bool = False

    @property
    def success(self) -> bool:
        return self.error is None and self.status_code is not None and 200 <= self.status_code < 300


class EventDeliverer:
    """Claims due event deliveries, sends them from `senders` threads and records their outcomes.

    `run` is the worker's loop (SPEC B17); `deliver_due` does one claim, send and record, and returns.
    """

    def __init__(
        self,
        db: Database,
        keyring: Keyring,
        http: requests.Session,
        *,
        worker_id: str,
        schedule: Sequence[float],
        allow_private: bool,
        senders: int = SENDERS,
        timeout: float = TIMEOUT_SECONDS,
        lease_seconds: float = LEASE_SECONDS,
    ) -> None:
        if not schedule:
            raise ValueError("a retry schedule has at least one delay")
        lease_seconds = checked_lease(timeout, lease_seconds)
        self.db = db
        self.keyring = keyring
        self.http = http
        self.worker_id = worker_id
        self.schedule = tuple(schedule)
        self.allow_private = allow_private
        self.senders = max(1, senders)
        # A subscription whose receiver hangs holds half the senders at most; the other half serves the others.
        self.per_subscription = max(1, self.senders // 2)
        # Claims wait until this many senders are idle (unless all are): fewer, larger transactions.
        self.claim_at_least = max(1, self.senders // 8)
        self.timeout = timeout
        self.lease = timedelta(seconds=lease_seconds)
        self._pool = ThreadPoolExecutor(self.senders, thread_name_prefix="event-sender")
        self._done = threading.Condition()
        self._finished: collections.deque[Attempt] = collections.deque()  # under _done
        # The coordinator's own bookkeeping (one thread): claimed and not yet recorded, per subscription.
        self._outstanding = 0
        self._by_subscription: collections.Counter[str] = collections.Counter()
        self._signers: dict[str, Webhook | None] = {}  # by secret ciphertext
        self._failing_checked: dict[str, float] = {}  # subscription id -> time.monotonic()
        self._look_at_retrying = 0.0  # time.monotonic()

    def close(self) -> None:
        """Let the sender threads end (after the sends under way)."""
        self._pool.shutdown(wait=True)

    def __enter__(self) -> EventDeliverer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the two ways to drive it -------------------------------------------------------------

    def deliver_due(self, limit: int) -> int:
        """Claim up to `limit` due deliveries, send them concurrently, record the outcomes; how many
        were attempted (deliveries of disabled subscriptions are failed without an attempt)."""
        claimed = self._record_and_claim([], limit)
        with self._done:
            self._done.wait_for(lambda: len(self._finished) >= claimed)
        self._record_and_claim(self._take_finished(), 0)
        return claimed

    def run(self, stopping: threading.Event, wait_for_work: Callable[[float], None], poll_seconds: float) -> None:
        """Deliver until `stopping` is set, then let the sends under way end and record them.
        wait_for_work(timeout) returns after timeout seconds or when woken (new events)."""
        look = True  # whether deliveries may be due: at the start, when woken, after a full claim
        while True:
            results = self._take_finished()
            stop = stopping.is_set()
            room = 0 if stop else self._room(len(results))
            if room and look and not results:
                try:
                    look = self._anything_due()
                except Exception as exc:
                    _log_loop_error("could not look for due event deliveries", exc)
                    stopping.wait(ERROR_PAUSE_SECONDS)
                    continue
            want = room if (look or results) else 0
            if results or want:
                try:
                    claimed = self._record_and_claim(results, want)
                except Exception as exc:
                    _log_loop_error("could not record or claim event deliveries", exc)
                    self._keep_unrecorded(results, give_up=stop)
                    if not stop:
                        stopping.wait(ERROR_PAUSE_SECONDS)
                    continue
                if want:
                    look = claimed >= want
                continue
            if stop and self._outstanding == 0:
                return
            if self._outstanding:
                if not self._wait_for_outcomes(poll_seconds):
                    look = True
            else:
                wait_for_work(poll_seconds)
                look = True

    # --- claiming -------------------------------------------------------------------------------

    def _room(self, recording: int) -> int:
        """How many deliveries to claim now: the idle senders, once claim_at_least of them are idle."""
        busy = self._outstanding - recording
        idle = self.senders - busy
        return idle if idle >= self.claim_at_least or busy == 0 else 0

    def _anything_due(self) -> bool:
        """A plain read, so that an idle worker's poll costs no write transaction."""
        with self.db.read() as conn:
            return bool(conn.execute(_ANYTHING_DUE, {"now": utcnow()}).scalar())

    def _record_and_claim(self, results: list[Attempt], want: int) -> int:
        """Record `results` and claim up to `want` deliveries in one write transaction, then start
        sending the claimed ones; how many were claimed."""
        if not results and not want:
            return 0
        for result in results:  # their senders are free: the claim may replace them
            self._release(result.delivery)
        try:
            with self.db.write() as conn:
                now = utcnow()
                recorded = self._record(conn, results, now) if results else []
                claimed = self._claim(conn, now, want) if want else []
        except BaseException:
            for result in results:
                self._hold(result.delivery)
            raise
        for result, status, next_attempt_at in recorded:
            self._observe(result, status, next_attempt_at)
        for delivery in claimed:
            self._hold(delivery)
            self._pool.submit(self._send, delivery)
        return len(claimed)

    def _claim(self, conn: Connection, now: datetime, want: int) -> list[Claimed]:
        """Take up to `want` due deliveries, at most per_subscription of them in flight per
        subscription; with their events and subscriptions, read in the claim's transaction (a new URL
        or a rotated secret applies from the next claim)."""
        full = [sub for sub, count in self._by_subscription.items() if count >= self.per_subscription]
        query = _CANDIDATES_EXCEPT if full else _CANDIDATES
        # Each status on its own: each is one range of the (status, next_attempt_at) index, cut short
        # by the LIMIT. Retrying ones first, but while new ones fill every claim they are looked for
        # a few times a second only (a look is a statement).
        clock = time.monotonic()
        retrying_first = clock >= self._look_at_retrying
        rows: list[Row[Any]] = []
        for status in ("retrying", "pending") if retrying_first else ("pending", "retrying"):
            rows.extend(conn.execute(query, {"status": status, "now": now, "full": full,
                                             "limit": want - len(rows)}).all())
            if status == "retrying":
                self._look_at_retrying = clock + LOOK_AT_RETRYING_SECONDS
            if len(rows) >= want:
                break
        taken = collections.Counter(self._by_subscription)
        picked: list[Row[Any]] = []
        for row in rows:
            if taken[row.subscription_id] < self.per_subscription:
                taken[row.subscription_id] += 1
                picked.append(row)
        if not picked:
            return []
        conn.execute(_LOCK, {"ids": [row.delivery_id for row in picked], "worker": self.worker_id,
                             "until": now + self.lease, "now": now})
        disabled = [row.delivery_id for row in picked if not row.enabled]
        if disabled:
            _fail_waiting(conn, now, "The subscription is disabled: the event was not sent.", ids=disabled)
            metrics.event_deliveries_failed_unsent(len(disabled))
        lease_ends = clock + self.lease.total_seconds()
        targets: dict[str, Target] = {}
        bodies: dict[str, bytes] = {}
        claimed: list[Claimed] = []
        for row in picked:
            if not row.enabled:
                continue
            target = targets.get(row.subscription_id)
            if target is None:
                target = targets[row.subscription_id] = self._target(row)
            body = bodies.get(row.id)
            if body is None:  # serialised once per event: the same bytes on every attempt
                body = bodies[row.id] = orjson.dumps(event_body(row))
            claimed.append(Claimed(row.delivery_id, row.id, row.type, target, row.attempts, body, lease_ends))
        return claimed

    def _target(self, row: Row[Any]) -> Target:
        """A claimed delivery's subscription; its URL checked against the address policy again (the
        session checks the address it connects to as well)."""
        try:
            check_outbound_url(row.url, allow_private=self.allow_private, resolve=False)
        except AddressRefused as exc:
            return Target(row.subscription_id, row.url, None, f"Refused by the outbound address policy: {exc}.")
        return Target(row.subscription_id, row.url, self._signer(row.secret))

    def _signer(self, ciphertext: str) -> Webhook | None:
        if ciphertext not in self._signers:
            if len(self._signers) > 1000:  # rotated-out secrets
                self._signers.clear()
            try:
                self._signers[ciphertext] = Webhook(self.keyring.decrypt(ciphertext))
            except SecretUnreadable:
                self._signers[ciphertext] = None
        return self._signers[ciphertext]

    # --- sending (in the sender threads) --------------------------------------------------------

    def _send(self, delivery: Claimed) -> None:
        try:
            result = self._attempt(delivery)
        except Exception as exc:  # a bug: the delivery still gets an outcome
            log.exception("unexpected error delivering event %s", delivery.event_id)
            result = Attempt(delivery, utcnow(), 0.0, None, f"Delivery failed unexpectedly ({type(exc).__name__}).")
        with self._done:
            self._finished.append(result)
            self._done.notify_all()

    def _attempt(self, delivery: Claimed) -> Attempt:
        """POST the event, signed, within the timeout (unless the address policy refuses its URL)."""
        target = delivery.target
        started_at, began = utcnow(), time.perf_counter()

        def outcome(status: int | None, error: str | None, permanent: bool = False) -> Attempt:
            return Attempt(delivery, started_at, time.perf_counter() - began, status, error, permanent)

        if target.refused is not None:
            return outcome(None, target.refused, permanent=True)
        if target.signer is None:
            return outcome(None, "The subscription's secret cannot be decrypted (was SECRET_KEY changed?).")
        now = datetime.now(UTC)
        headers = {
            "Content-Type": "application/json",
            "webhook-id": delivery.event_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": target.signer.sign(delivery.event_id, now, delivery.body.decode()),
        }
        try:
            answer = bounded_request(self.http, "POST", target.url, self.timeout, peer=PEER,
                                     data=delivery.body, headers=headers)
        except HttpFailure as exc:
            return outcome(None, exc.message, permanent=not exc.transient)
        if 200 <= answer.status < 300:
            return outcome(answer.status, None)
        gone = " Gone: the subscription is disabled" if answer.status == 410 else ""
        return outcome(answer.status, f"{PEER} answered HTTP {answer.status}{gone}.")

    def _take_finished(self) -> list[Attempt]:
        with self._done:
            results = list(self._finished)
            self._finished.clear()
            return results

    def _wait_for_outcomes(self, timeout: float) -> bool:
        """Wait for an outcome, then briefly for more (recorded together); whether any came."""
        with self._done:
            if not self._done.wait_for(lambda: self._finished, timeout):
                return False
            self._done.wait_for(lambda: 2 * len(self._finished) >= self._outstanding, GATHER_SECONDS)
            return True

    # --- recording --------------------------------------------------------------------------------

    def _record(self, conn: Connection, results: list[Attempt], now: datetime) -> list[Recorded]:
        """One attempt row per result and each delivery's new state (executemany), under the lease:
        a delivery whose lease was taken over keeps what its new holder records. Then the subscriptions
        that answered 410, or failed for 5 days, are disabled. What each result came to.

        A subscription disabled while its deliveries were in flight has them failed at their next claim."""
        gone = {result.delivery.target.id for result in results if result.status_code == 410}
        attempts: list[dict[str, Any]] = []
        changes: list[dict[str, Any]] = []
        failing: set[str] = set()
        recorded: list[Recorded] = []
        for result in results:
            delivery, sub = result.delivery, result.delivery.target.id
            ended = result.started_at + timedelta(seconds=result.seconds)
            number = delivery.attempts + 1
            attempts.append({
                "delivery_id": delivery.id, "subscription_id": sub, "started_at": result.started_at,
                "duration_ms": round(result.seconds * 1000), "status_code": result.status_code,
                "success": result.success, "error": _clip(result.error),
            })
            change = {"b_id": delivery.id, "b_status": "delivered", "b_next": None, "b_delivered": None,
                      "b_code": result.status_code, "b_error": _clip(result.error)}
            if result.success:
                change["b_delivered"] = ended
            elif result.permanent or sub in gone or number >= len(self.schedule):
                change["b_status"] = "failed"
            else:
                change["b_status"] = "retrying"
                change["b_next"] = ended + timedelta(seconds=self.schedule[number])
            changes.append(change)
            if not result.success:
                failing.add(sub)
            recorded.append((result, change["b_status"], change["b_next"]))
        # The deliveries first: that locks those still held, and a delivery deleted meanwhile (its
        # subscription deleted, or its failure deleted by an operator) gets no attempt row.
        conn.execute(_RECORD, [{**change, "b_worker": self.worker_id, "b_now": now} for change in changes])
        conn.execute(_INSERT_ATTEMPT, attempts)
        for sub in sorted(gone):
            _disable(conn, sub, GONE, now, "The subscription was disabled: its receiver answered 410 Gone.")
        for sub in sorted(failing - gone):
            if self._check_failing_now(sub) and failing_for_days(conn, sub, now):
                _disable(conn, sub, FAILING, now,
                         "The subscription was disabled: its deliveries all failed for 5 days.")
        return recorded

    def _observe(self, result: Attempt, status: str, next_attempt_at: datetime | None) -> None:
        """Count the outcome, and log a failed attempt with its reason (no secret, no payload)."""
        metrics.event_delivery_attempted(status, result.seconds)
        if result.success:
            return
        delivery = result.delivery
        number = delivery.attempts + 1
        if next_attempt_at is not None:
            wait = (next_attempt_at - utcnow()).total_seconds()
            after = f"attempted again in {max(wait, 0):.0f} s"
        else:
            after = "failed for good"
        log.warning(
            "event %s (%s) to subscription %s: attempt %d failed, %s: %s", delivery.event_id,
            delivery.event_type, delivery.target.id, number, after, result.error,
            extra={"subscription_id": delivery.target.id, "delivery_id": delivery.id, "event_id": delivery.event_id,
                   "attempt": number, "status_code": result.status_code},
        )

    def _check_failing_now(self, sub: str) -> bool:
        """At most once a minute per subscription: the check reads the attempts history."""
        last = self._failing_checked.get(sub)
        now = time.monotonic()
        if last is not None and now - last < FAILING_CHECK_EVERY_SECONDS:
            return False
        self._failing_checked[sub] = now
        return True

    def _hold(self, delivery: Claimed) -> None:
        self._outstanding += 1
        self._by_subscription[delivery.target.id] += 1

    def _release(self, delivery: Claimed) -> None:
        self._outstanding -= 1
        self._by_subscription[delivery.target.id] -= 1
        if self._by_subscription[delivery.target.id] <= 0:
            del self._by_subscription[delivery.target.id]

    def _keep_unrecorded(self, results: list[Attempt], *, give_up: bool) -> None:
        """Outcomes that could not be recorded: kept for the next try while their lease lasts; after
        that (or when stopping) the delivery is attempted again by whoever claims it."""
        now = time.monotonic()
        kept = []
        for result in results:
            if not give_up and result.delivery.lease_ends > now:
                kept.append(result)
            else:
                self._release(result.delivery)
        if len(kept) < len(results):
            log.warning("%d event delivery outcomes were not recorded; those deliveries are attempted again "
                        "once their leases expire", len(results) - len(kept))
        with self._done:
            self._finished.extendleft(reversed(kept))


def deliver_due_events(
    db: Database,
    keyring: Keyring,
    http: requests.Session,
    *,
    worker_id: str,
    schedule: Sequence[float],
    limit: int,
    allow_private: bool,
    timeout: float = TIMEOUT_SECONDS,
    lease_seconds: float = LEASE_SECONDS,
) -> int:
    """Claim up to `limit` due event deliveries, send them concurrently and record what came of each;
    how many were attempted."""
    with EventDeliverer(db, keyring, http, worker_id=worker_id, schedule=schedule, allow_private=allow_private,
                        senders=limit, timeout=timeout, lease_seconds=lease_seconds) as deliverer:
        # One batch may hold every delivery of one subscription.
        deliverer.per_subscription = deliverer.senders
        return deliverer.deliver_due(limit)


# --- statements --------------------------------------------------------------------------------------


def _due(now: Any) -> Any:
    """Waiting deliveries whose time has come and that nobody holds (or whose holder's lease ended)."""
    return (_deliveries.c.status.in_(WAITING) & (_deliveries.c.next_attempt_at <= now)
            & or_(_deliveries.c.locked_until.is_(None), _deliveries.c.locked_until < now))


# Built once: a statement built per call costs more than running it.
_NOW = bindparam("now", type_=UtcDateTime())
_ANYTHING_DUE = select(exists().where(_due(_NOW)))
# Due deliveries (in no ORDER BY: sorting by next_attempt_at would read the whole due range whenever
# PostgreSQL's statistics are behind a burst of new rows; scans of the (status, next_attempt_at) index
# still come oldest first), with their subscriptions and their events (the event's columns under
# their own names, as event_body reads them).
_DUE = (
    select(_deliveries.c.id, _deliveries.c.subscription_id, _deliveries.c.event_id, _deliveries.c.attempts)
    .where(_deliveries.c.status == bindparam("status"), _deliveries.c.next_attempt_at <= _NOW,
           or_(_deliveries.c.locked_until.is_(None), _deliveries.c.locked_until < _NOW))
    .limit(bindparam("limit"))
    .with_for_update(skip_locked=True)  # rendered by PostgreSQL only
)


def _candidates(due: Any) -> Any:
    due = due.subquery("due")
    return (
        select(due.c.id.label("delivery_id"), due.c.subscription_id, due.c.attempts,
               _subscriptions.c.url, _subscriptions.c.secret, _subscriptions.c.enabled,
               _events.c.id, _events.c.type, _events.c.channel_id, _events.c.data, _events.c.created_at)
        .select_from(due.join(_subscriptions, _subscriptions.c.id == due.c.subscription_id)
                     .join(_events, _events.c.id == due.c.event_id))
    )


_CANDIDATES = _candidates(_DUE)
_CANDIDATES_EXCEPT = _candidates(_DUE.where(_deliveries.c.subscription_id.not_in(bindparam("full", expanding=True))))
_LOCK = (
    update(_deliveries)
    .where(_deliveries.c.id.in_(bindparam("ids", expanding=True)))
    .values(locked_by=bindparam("worker"), locked_until=bindparam("until", type_=UtcDateTime()), updated_at=_NOW)
)
_INSERT_ATTEMPT = _attempts.insert().from_select(
    ["delivery_id", "subscription_id", "started_at", "duration_ms", "status_code", "success", "error"],
    select(bindparam("delivery_id", type_=BigId), bindparam("subscription_id", type_=String()),
           bindparam("started_at", type_=UtcDateTime()), bindparam("duration_ms", type_=Integer()),
           bindparam("status_code", type_=Integer()), bindparam("success", type_=Boolean()),
           bindparam("error", type_=String()))
    .where(exists().where(_deliveries.c.id == bindparam("delivery_id"))),
)
_RECORD = (
    update(_deliveries)
    .where(_deliveries.c.id == bindparam("b_id"), _deliveries.c.locked_by == bindparam("b_worker"))
    .values(
        status=bindparam("b_status"),
        attempts=_deliveries.c.attempts + 1,
        next_attempt_at=bindparam("b_next", type_=UtcDateTime()),
        delivered_at=bindparam("b_delivered", type_=UtcDateTime()),
        last_status_code=bindparam("b_code"),
        last_error=bindparam("b_error"),
        locked_by=None,
        locked_until=None,
        updated_at=bindparam("b_now", type_=UtcDateTime()),
    )
)


def _disable(conn: Connection, subscription_id: str, reason: str, now: datetime, why: str) -> None:
    """Disable a subscription and fail its waiting deliveries (those other workers hold keep their
    outcome, and are failed when next claimed)."""
    changed = conn.execute(
        update(_subscriptions)
        .where(_subscriptions.c.id == subscription_id, _subscriptions.c.enabled.is_(True))
        .values(enabled=False, disabled_reason=reason, updated_at=now)
    )
    if changed.rowcount != 1:
        return
    failed = _fail_waiting(conn, now, why, subscription_id=subscription_id)
    log.warning("subscription %s disabled (%s): %d waiting deliveries failed", subscription_id, reason, failed,
                extra={"subscription_id": subscription_id})


def _fail_waiting(conn: Connection, now: datetime, why: str, *, ids: Iterable[int] = (),
                  subscription_id: str | None = None) -> int:
    """Mark waiting deliveries failed without an attempt: these ids, or every unheld one of a subscription."""
    query = update(_deliveries).where(_deliveries.c.status.in_(WAITING))
    if subscription_id is not None:
        query = query.where(_deliveries.c.subscription_id == subscription_id,
                            or_(_deliveries.c.locked_until.is_(None), _deliveries.c.locked_until < now))
    else:
        query = query.where(_deliveries.c.id.in_(sorted(ids)))
    result = conn.execute(query.values(status="failed", next_attempt_at=None, last_error=why, locked_by=None,
                                       locked_until=None, updated_at=now))
    return result.rowcount


def failing_for_days(conn: Connection, subscription_id: str, now: datetime, span: timedelta = FAILING_FOR) -> bool:
    """Whether a subscription's deliveries have all failed for `span` (5 days): it was last changed
    (created, enabled again, given a new URL) at least `span` ago, its latest attempt at or before
    `now - span` failed, and no attempt since succeeded. Two reads of the (subscription_id,
    started_at) index: the second only when the first finds a failure, and it stops at the first
    success."""
    cutoff = now - span
    changed = conn.execute(select(_subscriptions.c.updated_at).where(_subscriptions.c.id == subscription_id)).scalar()
    if changed is None or changed > cutoff:
        return False
    before = conn.execute(
        select(_attempts.c.success)
        .where(_attempts.c.subscription_id == subscription_id, _attempts.c.started_at <= cutoff)
        .order_by(_attempts.c.started_at.desc())
        .limit(1)
    ).first()
    if before is None or before.success:
        return False
    succeeded_since = conn.execute(select(exists().where(
        _attempts.c.subscription_id == subscription_id, _attempts.c.started_at > cutoff, _attempts.c.success.is_(True),
    ))).scalar()
    return not succeeded_since


def _clip(error: str | None) -> str | None:
    return None if error is None else error[:MAX_ERROR_LENGTH]


def _log_loop_error(what: str, exc: BaseException) -> None:
    unavailable = DatabaseUnavailable.from_error(exc)
    if unavailable is not None:
        log.warning("%s: the database is not available: %s", what, unavailable.reason)
    else:
        log.exception("%s", what)
