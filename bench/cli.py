"""`python -m bench`: run the SPEC C2 benchmark and report each figure against its target."""

from __future__ import annotations

import argparse
import os
import platform
import secrets
import shlex
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import orjson
from sqlalchemy import text
from standardwebhooks.webhooks import Webhook

from app import create_app
from app.services import Services
from app.usecases.channels import create_channel
from bench import figures as fig
from bench import machine, realtime, whatif
from bench.database import fresh_database, seed_inbox, seed_inboxes, seeded_rows_differences
from bench.load import Client, WrkSettings, ensure_wrk
from bench.payloads import batch_body, signed_headers
from bench.servers import ROOT, GunicornSettings, Process, Server, start_gunicorn, start_receiver

RESULTS = ROOT / "bench" / "results"
SMALL_INBOX = 1000
VERIFY_MESSAGES = 40
# The ingest channels start with a history, as a channel in service has, and with current
# PostgreSQL statistics (ANALYZE after seeding): a brand-new table whose statistics say
# "empty" gets plans that scan the whole channel (see RESULTS.md), which is not the steady state.
HISTORY = 10_000
ALL_FIGURES = "abcdefg"
QUIET = 0.2  # the CPUs' busy fraction under which the machine counts as quiet
# Settings a developer may have exported that would change what is measured.
_CLEARED_ENV = ("DATABASE_URL", "SECRET_KEY", "ADMIN_TOKEN", "PUSH_DEADLINE_SECONDS", "PULL_BATCH_LIMIT",
                "MAX_BODY_BYTES", "ALLOW_PRIVATE_OUTBOUND", "INSTANCE_PATH", "DESK_EXTENSION_SECRET",
                "DESK_CAPTURE_DIR", "PGAPPNAME")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--database-url", help="a PostgreSQL server URL (postgresql+psycopg://...); the run uses a "
                        "new schema in it and drops it at the end. Default: a SQLite file in a temporary folder.")
    parser.add_argument("--inbox-size", type=int, default=1_000_000,
                        help="rows of the large inbox of figure (c) (default 1,000,000)")
    parser.add_argument("--runs", type=int, default=5, help="runs (or rounds) per measurement; medians are reported")
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per wrk run (default 4)")
    parser.add_argument("--connections", type=int, default=8, help="wrk connections (default 8)")
    parser.add_argument("--latency-requests", type=int, default=10,
                        help="sequential requests per round for pull latencies (push uses 4x)")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers, both servers (default 2)")
    parser.add_argument("--threads", type=int, default=4, help="gunicorn threads per worker (default 4)")
    parser.add_argument("--worker-class", default="gthread", help="gunicorn worker class (default gthread)")
    parser.add_argument("--wait-quiet", type=float, default=60.0,
                        help="before each figure, wait up to this many seconds for other work to leave the CPUs "
                        "(default 60; 0: do not wait)")
    parser.add_argument("--without-worker", action="store_true",
                        help="do not run a background worker beside deskbridge (make run runs one)")
    parser.add_argument("--figures", default=None, help=f"which figures to measure, e.g. 'ab' (default {ALL_FIGURES})")
    parser.add_argument("--realtime-channels", type=int, default=50,
                        help="channels receiving a message at once in each round of figure (f) (default 50)")
    parser.add_argument("--realtime-sustained", type=float, default=10.0,
                        help="seconds of sustained traffic after (f)'s rounds, every channel one message a "
                        "second, reported for information (default 10; 0: none)")
    parser.add_argument("--output", type=Path, default=None,
                        help="where to write the JSON results (default bench/results/latest.json, "
                        "or latest-whatif.json with --what-if)")
    parser.add_argument("--what-if", default="", help="serve deskbridge with these patches of bench/whatif.py "
                        "(comma-separated), to measure a recommended change before it is made")
    args = parser.parse_args(argv)
    try:
        args.what_if = whatif.parse(args.what_if)
    except ValueError as exc:
        parser.error(str(exc))
    if args.output is None:
        args.output = RESULTS / ("latest-whatif.json" if args.what_if else "latest.json")
    if args.inbox_size < 2 * SMALL_INBOX:
        parser.error(f"--inbox-size must be at least {2 * SMALL_INBOX}")
    if args.runs < 1 or args.duration < 1 or args.connections < 1:
        parser.error("--runs, --duration and --connections must be positive")
    if args.figures is None:
        # Real-time delivery is the background worker's work: without it, (f) is left out.
        args.figures = ALL_FIGURES.replace("f", "") if args.without_worker else ALL_FIGURES
    if set(args.figures) - set(ALL_FIGURES):
        parser.error(f"--figures takes letters among {ALL_FIGURES}")
    if "f" in args.figures and args.without_worker:
        parser.error("figure (f), real-time delivery, needs the background worker: drop --without-worker")
    if args.realtime_channels < 1 or args.realtime_sustained < 0:
        parser.error("--realtime-channels must be positive, --realtime-sustained not negative")
    return args


def _terminate(signum: int, _frame: FrameType | None) -> None:
    # Turn SIGTERM into an exception, so that every finally block stops its servers.
    print(f"stopping: received {signal.Signals(signum).name}", file=sys.stderr, flush=True)
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 0 when every selected figure was measured, 1 otherwise."""
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    started = time.monotonic()
    commit_at_start = _git_head()
    wrk = ensure_wrk()
    gunicorn = GunicornSettings(workers=args.workers, threads=args.threads, worker_class=args.worker_class)
    wrk_settings = WrkSettings(connections=args.connections, duration=args.duration)
    results: list[fig.Figure] = []
    meta: dict[str, Any] = {}
    cpu_busy_before: list[float | None] = []
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="deskbridge-bench-")))
        database = stack.enter_context(fresh_database(args.database_url, workdir))
        print(f"database: {database.backend} ({database.where})", flush=True)
        env = {key: value for key, value in os.environ.items() if key not in _CLEARED_ENV}
        # The extension secret turns real-time import on (SPEC B14), for figure (f); the other
        # figures' channels never get a securityContext with new messages, so they import nothing.
        extension_secret = secrets.token_urlsafe(32)
        overrides = {"DATABASE_URL": database.url, "SECRET_KEY": secrets.token_urlsafe(32),
                     "INSTANCE_PATH": str(workdir / "instance"), "ALLOW_PRIVATE_OUTBOUND": "true",
                     "DESK_EXTENSION_SECRET": extension_secret}
        env.update(overrides)
        env["PYTHONPATH"] = str(ROOT)
        env["BENCH_FULL_PULL_FILE"] = str(workdir / "full-pull.json")
        env[whatif.ENV] = ",".join(args.what_if)
        app = create_app(overrides)
        services: Services = app.extensions["deskbridge"]
        stack.callback(services.db.dispose)

        receiver = start_receiver(workdir, lifetime=3600)
        stack.callback(receiver.stop)
        channels = _create_channels(services, receiver)
        emulators: list[realtime.DeskEmulator] = []
        realtime_channels: list[dict[str, Any]] = []
        if "f" in args.figures:
            emulators = realtime.start_emulators(extension_secret, args.realtime_channels)
            for emulator in emulators:
                stack.callback(emulator.close)
            realtime_channels = realtime.create_channels(services.db, services.keyring, services.connectors,
                                                         emulators)
        print(f"seeding the {SMALL_INBOX}-row inbox, and {HISTORY:,} rows of history in each ingest channel ...",
              flush=True)
        history = [name for name in channels if name in ("ingest", "batch") or name.startswith("fan-")]
        seed_inboxes(services.db, [(channels["pull"]["id"], "P", SMALL_INBOX),
                                   *((channels[name]["id"], "H", HISTORY) for name in history)])
        desk_app = "bench.whatif_wsgi:app" if args.what_if else "wsgi:app"
        desk = start_gunicorn("deskbridge", desk_app, gunicorn, env, workdir)
        stack.callback(desk.stop)
        worker: Process | None = None
        application_name = f"{realtime.WORKER_APPLICATION_NAME}-{secrets.token_hex(4)}"
        if not args.without_worker:
            # As `make run`: one background worker beside the web server (idle but for figure (f): it
            # polls the job table, and on PostgreSQL listens for new jobs). PGAPPNAME names its
            # PostgreSQL sessions, so that (f) can see its LISTEN is up before measuring.
            worker = Process("worker", [sys.executable, "-m", "flask", "--app", desk_app, "worker"],
                             {**env, "PGAPPNAME": application_name}, workdir / "worker.log")
            stack.callback(worker.stop)
        bare = start_gunicorn("baseline", "bench.baseline:app", gunicorn, env, workdir)
        stack.callback(bare.stop)
        _verify_seeding(services, desk, channels)

        bench = fig.Bench(
            wrk=wrk, wrk_settings=wrk_settings, runs=args.runs, latency_requests=args.latency_requests,
            workdir=workdir, desk=desk, bare=bare, receiver=receiver, db=services.db, keyring=services.keyring,
            channels=channels, small_size=SMALL_INBOX, inbox_size=args.inbox_size,
            postgres=database.backend == "postgresql", worker=worker,
            realtime=realtime.Realtime(extension_secret, emulators, realtime_channels, worker, application_name,
                                       sustained_seconds=args.realtime_sustained) if emulators else None,
            database_server_url=args.database_url,
        )

        def seed_large() -> dict[str, float]:
            print(f"seeding the {args.inbox_size:,}-row inbox ...", flush=True)
            stats = seed_inbox(services.db, channels["large"]["id"], "L", args.inbox_size)
            print(f"  seeded in {stats['seconds']} s ({stats['rows_per_second']:,} rows/s)", flush=True)
            return stats

        steps: list[tuple[str, str, Callable[[], list[fig.Figure]]]] = [
            ("a", "empty pull", lambda: [fig.empty_pull(bench)]),
            ("b", "full pull", lambda: [fig.full_pull(bench)]),
            ("d", "ingest, one message per request", lambda: [fig.ingest_single(bench)]),
            ("d", "ingest, batches of 100", lambda: [fig.ingest_batch(bench)]),
            ("d", f"ingest, one message per request over {fig.FAN_OUT} channels", lambda: [fig.ingest_fan_out(bench)]),
            ("e", "push overhead", lambda: [fig.push_overhead(bench)]),
            ("f", f"real-time delivery, {args.realtime_channels} channels at once",
             lambda: fig.realtime_delivery(bench)),
            ("g", "event deliveries by one worker process", lambda: fig.event_deliveries(bench)),
            # Last: the large inbox stays in the database once seeded.
            ("c", "pull against inbox size", lambda: fig.inbox_size(bench, seed_large)),
        ]
        for letter, name, step in steps:
            if letter not in args.figures:
                continue
            # The background worker is ours: its own CPU time is reported with the figures, not waited out.
            own = (worker.pid,) if worker is not None else ()
            busy = machine.cpu_busy(exclude_groups=own)
            waited = 0.0
            while busy is not None and busy >= QUIET and waited < args.wait_quiet:
                # Other work shares the machine: give it a moment (bounded) to finish.
                waited += 1.0
                busy = machine.cpu_busy(exclude_groups=own)
            busy_note = "" if busy is None or busy < QUIET else f" (warning: other work keeps the CPUs {busy:.0%} busy)"
            print(f"measuring ({letter}) {name} ...{busy_note}", flush=True)
            cpu_busy_before.append(busy)
            step_started = time.monotonic()
            try:
                results.extend(step())
            except Exception as exc:
                traceback.print_exc()
                results.append(fig.Figure(f"{letter}_error", f"({letter}) {name}", "", "", ">=", 0,
                                          error=f"{type(exc).__name__}: {exc}"))
            print(f"  done in {time.monotonic() - step_started:.0f} s", flush=True)
        meta = _meta(args, database.backend, services, gunicorn, wrk_settings, wrk)
        meta["commit"] = commit_at_start
        if meta["commit_at_end"] == commit_at_start:
            del meta["commit_at_end"]
        else:
            print(f"warning: the code changed during the run ({commit_at_start} -> {meta['commit_at_end']})")
        meta["cpu_busy_before_each_figure"] = cpu_busy_before
    meta["elapsed_seconds"] = round(time.monotonic() - started, 1)
    print()
    print(render_table(results, meta))
    _write(args.output, meta, results)
    return 0 if all(f.error is None for f in results) else 1


def _create_channels(services: Services, receiver: Server) -> dict[str, dict[str, Any]]:
    """The channels the figures use, created as the admin CLI would."""
    outbound = {"push": f"{receiver.base_url}/hook"}
    channels = {}
    names = ["pull", "large", "verify", "ingest", "batch", "push", *(f"fan-{i}" for i in range(fig.FAN_OUT))]
    for name in names:
        data = {"connector": "webhook", "outbound_url": outbound.get(name, "http://127.0.0.1:9/unused"),
                "name": f"bench {name}", "org_id": "60001234"}
        channels[name] = create_channel(services.db, services.keyring, services.connectors, data)
    return channels


def _verify_seeding(services: Services, desk: Server, channels: dict[str, dict[str, Any]]) -> None:
    """Ingest the first seeded messages over HTTP into another channel; the stored rows must be the same."""
    channel = channels["verify"]
    body = batch_body("P", range(1, VERIFY_MESSAGES + 1))  # seq 1..40, as seeded
    headers = signed_headers(Webhook(channel["inbound"]["secret"]), "wh-verify", body)
    client = Client(desk.port)
    try:
        status, answer, _ = client.post(channel["inbound"]["path"], body, headers)
    finally:
        client.close()
    if status != 200:
        raise RuntimeError(f"ingesting the verification batch answered {status}: {answer[:300]!r}")
    problems = seeded_rows_differences(services.db, channels["pull"]["id"], channel["id"], VERIFY_MESSAGES)
    if problems:
        raise RuntimeError("seeded rows differ from ingested ones:\n  " + "\n  ".join(problems[:20]))


def _meta(args: argparse.Namespace, backend: str, services: Services, gunicorn: GunicornSettings,
          wrk_settings: WrkSettings, wrk: str) -> dict[str, Any]:
    with services.db.engine.connect() as conn:
        version = conn.execute(text("SELECT sqlite_version()" if backend == "sqlite" else "SHOW server_version"))
        database_version = str(version.scalar())
    wrk_version = subprocess.run([wrk, "-v"], capture_output=True, text=True, check=False).stdout.split("\n")[0]
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": _command(),
        "backend": backend,
        "database_version": database_version,
        "inbox_size": args.inbox_size,
        "what_if": args.what_if,
        "runs": args.runs,
        "figures": args.figures,
        "realtime_channels": args.realtime_channels if "f" in args.figures else None,
        "realtime_sustained_seconds": args.realtime_sustained if "f" in args.figures else None,
        "gunicorn": {"workers": gunicorn.workers, "threads": gunicorn.threads, "worker_class": gunicorn.worker_class,
                     "keep_alive": gunicorn.keep_alive},
        "wrk": {"threads": wrk_settings.threads, "connections": wrk_settings.connections,
                "duration_seconds": wrk_settings.duration, "version": wrk_version.strip()},
        "machine": machine.describe(),
        "python": platform.python_version(),
        "sqlite_library": sqlite3.sqlite_version,
        "commit_at_end": _git_head(),
    }


def _command() -> str:
    launcher = os.environ.get("BENCH_LAUNCHER") or f"{_relative(sys.executable)} -m bench"
    return " ".join([launcher, *(shlex.quote(a) for a in _redacted_argv(sys.argv[1:]))])


def _redacted_argv(argv: list[str]) -> list[str]:
    from sqlalchemy.engine import make_url

    out = []
    for arg in argv:
        try:
            out.append(make_url(arg).render_as_string(hide_password=True) if "://" in arg else arg)
        except Exception:
            out.append(arg)
    return out


def _relative(path: str) -> str:
    try:
        return str(Path(path).relative_to(ROOT))
    except ValueError:
        return path


def _git_head() -> str | None:
    """The commit measured, with "+changes" when app/, wsgi.py or migrations/ differ from it (read-only git)."""
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                          check=False).stdout.strip()
    if not head:
        return None
    changed = subprocess.run(["git", "status", "--porcelain", "--", "app", "wsgi.py", "migrations"], cwd=ROOT,
                             capture_output=True, text=True, check=False).stdout.strip()
    return f"{head}+changes" if changed else head


def _value(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit in ("req/s", "msg/s"):
        return f"{value:,.0f} {unit}"
    return f"{value:,.2f} {unit}" if unit else f"{value:,.3f}"


def render_table(results: list[fig.Figure], meta: dict[str, Any]) -> str:
    """The results as a Markdown table."""
    rows = [("figure", "deskbridge", "baseline", "result", "target", "pass")]
    for f in results:
        if f.error:
            rows.append((f.title, "-", "-", f"ERROR: {f.error}"[:80], "-", "error"))
            continue
        result_unit = {"ratio": "", "ratio to 1,000 rows": ""}.get(f.result_label, f.result_label.split()[0])
        result = _value(f.result, result_unit) if result_unit else f"{f.result:.3f}"
        target_unit = "" if not result_unit else f" {result_unit}"
        if f.target_op == fig.INFO:
            target, verdict = "(information)", "info"
        else:
            target, verdict = f"{f.target_op} {f.target:g}{target_unit}", "PASS" if f.passed else "FAIL"
        rows.append((f.title, _value(f.deskbridge, f.unit), _value(f.baseline, f.unit), result, target,
                     verdict + (" (!)" if f.problems else "")))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["| " + " | ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)) + " |" for r in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    cpu_lines = []
    for f in results:
        desk = f.details.get("deskbridge_server_cpu_ms_per_request")
        bare = f.details.get("baseline_server_cpu_ms_per_request")
        if desk is None:
            continue
        pg = f.details.get("deskbridge_postgres_cpu_ms_per_request")
        line = f"- {f.title}: deskbridge {desk:.2f} ms"
        line += f" + PostgreSQL {pg:.2f} ms" if pg is not None else ""
        cpu_lines.append(line + (f", baseline {bare:.2f} ms" if bare is not None else ""))
    if cpu_lines:
        cpu_lines.insert(0, "CPU time per request (server processes; PostgreSQL: all its processes, medians):")
    problems = [f"- {f.title}: {p}" for f in results for p in f.problems]
    what_if = f"WHAT-IF {','.join(meta['what_if'])}: " if meta.get("what_if") else ""
    g, w = meta.get("gunicorn", {}), meta.get("wrk", {})
    header = (f"{what_if}{meta.get('backend')} {meta.get('database_version')}, "
              f"inbox {meta.get('inbox_size', 0):,} rows; gunicorn --workers {g.get('workers')} "
              f"--threads {g.get('threads')} --worker-class {g.get('worker_class')}; "
              f"wrk -t{w.get('threads')} -c{w.get('connections')} -d{w.get('duration_seconds')}s; "
              f"medians of {meta.get('runs')} runs")
    return "\n".join([header, "", *lines, *(["", *cpu_lines] if cpu_lines else []),
                      *(["", "problems:", *problems] if problems else [])])


def _write(output: Path, meta: dict[str, Any], results: list[fig.Figure]) -> None:
    document = {"meta": meta, "figures": [f.as_dict() for f in results]}
    data = orjson.dumps(document, option=orjson.OPT_INDENT_2)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_bytes(data)
    kind = f"{meta.get('backend', 'run')}{'-whatif' if meta.get('what_if') else ''}"
    stamped = RESULTS / f"{kind}-{datetime.now(UTC):%Y%m%d-%H%M%S}.json"
    stamped.parent.mkdir(parents=True, exist_ok=True)
    stamped.write_bytes(data)
    print(f"\nresults: {_relative(str(output))} and {_relative(str(stamped))}")
