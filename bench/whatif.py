"""What-if patches: changes bench/RESULTS.md recommends, tried without editing app/.

Each patch replaces one piece of deskbridge at run time, in the process that applies
it (the profiler's, or the gunicorn workers of `python -m bench --what-if ...`), so
that a recommendation comes with a measured gain. They are experiments, not fixes:
the real change belongs in app/, with its tests. A patch whose target has changed
upstream refuses to apply (ValueError) rather than measure something else.

- custom-plans: PostgreSQL sessions with plan_cache_mode=force_custom_plan, so that a
  statement psycopg prepares (after 5 runs) is never run with a generic plan made
  while the table was small (app/store/database.py make_engine: connect_args).
- orjson-json: the engine (de)serializes JSON columns with orjson instead of the json
  module (app/store/database.py make_engine: json_serializer, json_deserializer).
- no-access-log, no-metrics: what the access line and the request metrics cost (features
  SPEC B17 asks for; measured, not meant to be turned off).
- quiet-idle-worker: the background worker's idle threads wait for the poll interval or a
  wake-up without first waking each other (app/jobs/worker.py Worker._work: at bde34eb every
  thread that finds no job calls notify_all on the condition the other idle threads wait on,
  so they wake each other without end and an idle worker polls ~1,000-1,500 times a second,
  a whole core). Applies to the worker process too (`--what-if` runs both servers and the
  worker from bench.whatif_wsgi).

To add one: a function that patches a module attribute, checks that the attribute
still is what it expects, and an entry in PATCHES.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

ENV = "BENCH_WHAT_IF"


def _engine_options(change: Callable[[Any, dict[str, Any]], None]) -> None:
    """Wrap create_engine as app.store.database calls it, changing its keyword arguments."""
    from app.store import database

    if not hasattr(database, "create_engine"):
        raise ValueError("app.store.database no longer calls create_engine: update bench/whatif.py")
    original = database.create_engine

    def create_engine(url: Any, **options: Any) -> Any:
        change(url, options)
        return original(url, **options)

    database.create_engine = create_engine  # type: ignore[assignment]


def custom_plans() -> None:
    from sqlalchemy.engine import make_url

    def change(url: Any, options: dict[str, Any]) -> None:
        parsed = make_url(url)
        if parsed.get_backend_name() != "postgresql":
            return
        connect_args = options.setdefault("connect_args", {})
        # Keep the URL's own options (the benchmark's search_path): connect_args would replace them.
        given = connect_args.get("options") or parsed.query.get("options") or ""
        # Plan each execution with the parameters at hand: a prepared statement's generic plan,
        # fixed while a table was small, can stay a sequential scan as the table grows.
        connect_args["options"] = f"{given} -c plan_cache_mode=force_custom_plan".strip()

    _engine_options(change)


def orjson_json() -> None:
    import orjson

    def change(_url: Any, options: dict[str, Any]) -> None:
        options.setdefault("json_serializer", lambda value: orjson.dumps(value).decode())
        options.setdefault("json_deserializer", orjson.loads)

    _engine_options(change)


def no_access_log() -> None:
    """What the access line (one JSON line per request, SPEC B17) costs: it is not written."""
    from app import logging as app_logging

    if not hasattr(app_logging, "ACCESS_LOGGER"):
        raise ValueError("app.logging has no ACCESS_LOGGER any more: update bench/whatif.py")
    import logging

    logging.getLogger(app_logging.ACCESS_LOGGER).disabled = True


def no_metrics() -> None:
    """What the request metrics cost: /metrics and its request hooks are not installed."""
    from app.web import metrics

    if not hasattr(metrics, "init_metrics"):
        raise ValueError("app.web.metrics has no init_metrics any more: update bench/whatif.py")
    metrics.init_metrics = lambda app: None  # type: ignore[assignment]


def quiet_idle_worker() -> None:
    """Idle worker threads wait without waking one another (wake() and the LISTEN still wake them)."""
    import inspect

    from app.jobs import worker

    source = inspect.getsource(worker.Worker._work)
    if "self._wake.notify_all()" not in source or "self._idle += 1" not in source:
        raise ValueError("app.jobs.worker.Worker._work changed (fixed upstream?): update bench/whatif.py")

    def _work(self: Any, holder: str) -> None:
        while not self._stopping.is_set():
            try:
                ran = self.work_one(holder)
            except Exception as exc:
                worker._log_loop_error("could not claim or record a job", exc)
                self._stopping.wait(worker.ERROR_PAUSE_SECONDS)
                continue
            if not ran:
                with self._wake:
                    if not self._stopping.is_set():
                        self._idle += 1
                        self._wake.wait(self.poll_seconds)
                        self._idle -= 1

    worker.Worker._work = _work  # type: ignore[method-assign]


PATCHES: dict[str, Callable[[], None]] = {
    "custom-plans": custom_plans,
    "orjson-json": orjson_json,
    "no-access-log": no_access_log,
    "no-metrics": no_metrics,
    "quiet-idle-worker": quiet_idle_worker,
}


def parse(names: str | None) -> list[str]:
    """The patch names of a comma-separated list; ValueError for an unknown one."""
    chosen = [name.strip() for name in (names or "").split(",") if name.strip()]
    unknown = [name for name in chosen if name not in PATCHES]
    if unknown:
        raise ValueError(f"unknown what-if patches: {', '.join(unknown)} (known: {', '.join(PATCHES)})")
    return chosen


def apply(names: list[str]) -> None:
    """Apply patches, before the app is created."""
    for name in names:
        PATCHES[name]()


def apply_from_env() -> list[str]:
    """Apply the patches named by BENCH_WHAT_IF."""
    names = parse(os.environ.get(ENV))
    apply(names)
    return names
