"""`python -m bench.profile`: where a request's time goes, in-process, with the Flask test client.

Builds a fresh database (SQLite, or a PostgreSQL schema with --database-url) with the
same channels and seeded inbox as the benchmark, then runs each hot path N times
under a profiler and prints the time per request and the profile:
- empty-pull, full-pull: POST /desk/pull at the head, and from cursor 0 over 1000 rows;
- ingest-single, ingest-batch: POST /inbound/<id> with 1 and 100 new signed messages;
- push: POST /desk/push to a receiver on 127.0.0.1 (bench/receiver.py).

The profiler is pyinstrument when installed (`.venv/bin/pip install pyinstrument`),
else cProfile. Without a profiler (--no-profile) it only times the requests.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import itertools
import pstats
import secrets
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import orjson
from flask.testing import FlaskClient
from standardwebhooks.webhooks import Webhook

from app import create_app
from app.desk.state import encode_state
from app.services import Services
from app.usecases.channels import create_channel
from bench import machine, whatif
from bench.database import fresh_database, seed_inboxes
from bench.payloads import DESK_QUERY, ORG_ID, batch_body, message, pull_body, push_body, signed_headers
from bench.servers import start_receiver

SCENARIOS = ("empty-pull", "full-pull", "ingest-single", "ingest-batch", "push")


def _scenarios(client: FlaskClient, services: Services, channels: dict[str, dict[str, Any]]
               ) -> dict[str, Callable[[], None]]:
    keyring = services.keyring
    pull = channels["pull"]
    head = orjson.dumps(pull_body(pull, encode_state(keyring, pull["id"], 1000)))
    full = orjson.dumps(pull_body(pull, encode_state(keyring, pull["id"], 0)))
    numbers = itertools.count()
    batches = itertools.count()
    replies = itertools.count()

    def post(path: str, body: bytes, headers: dict[str, str] | None = None) -> None:
        answer = client.post(path, data=body, headers=headers or {"Content-Type": "application/json"})
        if answer.status_code != 200:
            raise RuntimeError(f"{path} answered {answer.status_code}: {answer.data[:300]!r}")

    def inbound(name: str, body: bytes) -> None:
        channel = channels[name]
        webhook_id = f"wh-{secrets.token_hex(6)}"
        post(channel["inbound"]["path"], body, signed_headers(Webhook(channel["inbound"]["secret"]), webhook_id, body))

    return {
        "empty-pull": lambda: post(f"/desk/pull?{DESK_QUERY}", head),
        "full-pull": lambda: post(f"/desk/pull?{DESK_QUERY}", full),
        "ingest-single": lambda: inbound("ingest", orjson.dumps(message("p", next(numbers)))),
        "ingest-batch": lambda: inbound("batch", batch_body("q", _hundred(next(batches)))),
        "push": lambda: post(f"/desk/push?{DESK_QUERY}",
                             orjson.dumps(push_body(channels["push"], f"profile-{next(replies)}"))),
    }


def _hundred(batch: int) -> range:
    return range(batch * 100, batch * 100 + 100)


def _profile(name: str, run: Callable[[], None], count: int, mode: str, top: int) -> str:
    for _ in range(3):
        run()  # warm-up: imports, connections, caches
    started, cpu_started = time.perf_counter(), time.process_time()
    if mode == "none":
        pg_started = machine.cpu_seconds(command="postgres")
        for _ in range(count):
            run()
        wall = (time.perf_counter() - started) * 1000 / count
        cpu = (time.process_time() - cpu_started) * 1000 / count
        pg = (machine.cpu_seconds(command="postgres") - pg_started) * 1000 / count
        return (f"{name}: {wall:.2f} ms/request, of which {cpu:.2f} ms CPU in this process; "
                f"postgres processes {pg:.2f} ms CPU/request (no profiler)\n")
    if mode == "pyinstrument":
        from pyinstrument import Profiler

        profiler = Profiler(interval=0.0005)
        profiler.start()
        for _ in range(count):
            run()
        profiler.stop()
        elapsed = time.perf_counter() - started
        text = profiler.output_text(unicode=False, color=False, show_all=False)
    else:
        profile = cProfile.Profile()
        profile.enable()
        for _ in range(count):
            run()
        profile.disable()
        elapsed = time.perf_counter() - started
        out = io.StringIO()
        stats = pstats.Stats(profile, stream=out)
        stats.sort_stats("cumulative").print_stats(top)
        stats.sort_stats("tottime").print_stats(top)
        text = out.getvalue()
    return f"=== {name}: {elapsed * 1000 / count:.2f} ms/request under the profiler ({count} requests)\n{text}\n"


def main(argv: list[str] | None = None) -> int:
    """Profile the hot paths and print the profiles."""
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", help="a PostgreSQL server URL; default: a SQLite file")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS),
                        help="comma-separated, among " + ", ".join(SCENARIOS))
    parser.add_argument("--requests", type=int, default=200, help="requests per scenario (full pull: a tenth)")
    parser.add_argument("--profiler", choices=("pyinstrument", "cprofile", "none"), default=None)
    parser.add_argument("--top", type=int, default=30, help="cProfile: lines per listing")
    parser.add_argument("--what-if", default="", help="comma-separated patches of bench/whatif.py to apply first")
    args = parser.parse_args(argv)
    try:
        patches = whatif.parse(args.what_if)
    except ValueError as exc:
        parser.error(str(exc))
    whatif.apply(patches)
    mode = args.profiler
    if mode is None:
        try:
            import pyinstrument  # noqa: F401

            mode = "pyinstrument"
        except ImportError:
            mode = "cprofile"
    chosen = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = set(chosen) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="deskbridge-profile-")))
        database = stack.enter_context(fresh_database(args.database_url, workdir))
        app = create_app({"DATABASE_URL": database.url, "SECRET_KEY": secrets.token_urlsafe(32),
                          "INSTANCE_PATH": str(workdir / "instance"), "ALLOW_PRIVATE_OUTBOUND": "true"})
        services: Services = app.extensions["deskbridge"]
        stack.callback(services.db.dispose)
        receiver = start_receiver(workdir, lifetime=1800)
        stack.callback(receiver.stop)
        channels = {}
        for name in ("pull", "ingest", "batch", "push"):
            url = f"{receiver.base_url}/hook" if name == "push" else "http://127.0.0.1:9/unused"
            channels[name] = create_channel(services.db, services.keyring, services.connectors,
                                            {"connector": "webhook", "outbound_url": url, "org_id": ORG_ID})
        # As the benchmark: 1000 messages to pull, and a history in the ingest channels (current statistics).
        seed_inboxes(services.db, [(channels["pull"]["id"], "P", 1000), (channels["ingest"]["id"], "H", 10_000),
                                   (channels["batch"]["id"], "H", 10_000)])
        runs = _scenarios(app.test_client(), services, channels)
        print(f"database: {database.backend}; profiler: {mode}; what-if: {', '.join(patches) or 'none'}\n")
        for name in chosen:
            count = max(args.requests // 10, 5) if name == "full-pull" else args.requests
            print(_profile(name, runs[name], count, mode, args.top), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
