"""The figures of SPEC C2, each measured against deskbridge and, where it has one, the bare baseline."""

from __future__ import annotations

import itertools
import operator
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from app.desk.state import encode_state
from app.keyring import Keyring
from app.store.database import Database
from app.store.models import Channel
from bench import machine
from bench.load import Client, WrkRun, WrkSettings, run_wrk
from bench.payloads import (
    DESK_QUERY,
    batch_bodies,
    pull_body,
    push_body,
    signed_lines,
    single_bodies,
    static_line,
    write_replay_file,
)
from bench.realtime import Realtime, measure_realtime
from bench.servers import Process, Server

EMPTY_PULL = {"data": {"tickets": [], "threads": []}}
BATCH_SIZE = 100
OTHER_LOAD_WARNING = 0.25  # cores of other work during a run worth a warning
INFO = "info"  # a figure shown for understanding, with no target of its own
FAN_OUT = 8  # channels of the informational multi-channel ingest figure
_COMPARE = {">=": operator.ge, "<=": operator.le, "<": operator.lt, ">": operator.gt}


@dataclass
class Figure:
    """One line of the results table."""

    key: str
    title: str
    unit: str  # of the deskbridge and baseline values
    result_label: str  # what the result is: a ratio, a time, a rate
    target_op: str
    target: float
    deskbridge: float | None = None
    baseline: float | None = None
    result: float | None = None
    details: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def passed(self) -> bool | None:
        """Whether the result meets the target (None when it could not be measured, or is for information)."""
        if self.result is None or self.error or self.target_op == INFO:
            return None
        return bool(_COMPARE[self.target_op](self.result, self.target))

    def as_dict(self) -> dict[str, Any]:
        return {"key": self.key, "title": self.title, "unit": self.unit, "deskbridge": self.deskbridge,
                "baseline": self.baseline, "result": self.result, "result_label": self.result_label,
                "target": None if self.target_op == INFO else f"{self.target_op} {self.target:g}",
                "passed": self.passed, "problems": self.problems,
                "error": self.error, "details": self.details}


@dataclass
class Bench:
    """Everything the figures need: servers, settings, the database and the channels."""

    wrk: str
    wrk_settings: WrkSettings
    runs: int
    latency_requests: int
    workdir: Path
    desk: Server
    bare: Server
    receiver: Server
    db: Database
    keyring: Keyring
    channels: dict[str, dict[str, Any]]
    small_size: int
    inbox_size: int
    postgres: bool = False
    worker: Process | None = None  # the background worker beside deskbridge, as `make run` starts it
    realtime: Realtime | None = None  # figure (f)'s emulators and channels
    database_server_url: str | None = None  # the PostgreSQL server given (figure g makes its own schemas)
    memo: dict[str, Any] = field(default_factory=dict)

    def channel_id(self, name: str) -> str:
        return str(self.channels[name]["id"])

    def last_seq(self, name: str) -> int:
        with self.db.session() as session:
            channel = session.get(Channel, self.channel_id(name))
            assert channel is not None
            return channel.last_seq

    def state(self, name: str, seq: int) -> str:
        """A valid channelState for a channel's cursor."""
        return encode_state(self.keyring, self.channel_id(name), seq)


def _wrk(bench: Bench, server: Server, replay: Path, *, duration: float | None = None,
         unique: bool = False) -> WrkRun:
    """run_wrk, also recording CPU time: the server's and PostgreSQL's per request, the background
    worker's, and other load.

    Other load is what the whole machine used beyond the server, PostgreSQL, the background
    worker, wrk and this process, in cores: other work sharing the machine while the run measured.
    """
    server_before = machine.cpu_seconds(group=server.pid)
    worker_before = machine.cpu_seconds(group=bench.worker.pid) if bench.worker else 0.0
    pg_before = machine.cpu_by_process(command="postgres") if bench.postgres else {}
    children_before, self_before = _rusage(resource.RUSAGE_CHILDREN), _rusage(resource.RUSAGE_SELF)
    busy_before = machine.busy_seconds()
    run = run_wrk(bench.wrk, server.port, replay, bench.wrk_settings, duration=duration, unique=unique)
    busy = machine.busy_seconds() - busy_before
    wrk_cpu = _rusage(resource.RUSAGE_CHILDREN) - children_before
    own = _rusage(resource.RUSAGE_SELF) - self_before
    server_cpu = machine.cpu_seconds(group=server.pid) - server_before
    pg_cpu = machine.cpu_used_since(pg_before, command="postgres") if bench.postgres else 0.0
    worker_cpu = machine.cpu_seconds(group=bench.worker.pid) - worker_before if bench.worker else 0.0
    if run.seconds:
        run.other_load_cores = max(busy - server_cpu - pg_cpu - worker_cpu - wrk_cpu - own, 0.0) / run.seconds
        if bench.worker:
            run.worker_cores = worker_cpu / run.seconds
    if run.requests:
        run.server_cpu_ms = server_cpu * 1000 / run.requests
        if bench.postgres:
            run.postgres_cpu_ms = pg_cpu * 1000 / run.requests
    return run


def _rusage(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def _median(values: list[float]) -> float:
    return float(statistics.median(values))


def _rounded(value: float, digits: int = 2) -> float:
    return round(value, digits)


# --- (a) a pull with nothing new -------------------------------------------------------------


def empty_pull(bench: Bench) -> Figure:
    """Throughput of a pull whose cursor is at the head, against the bare endpoint (wrk, interleaved runs)."""
    figure = Figure("a_empty_pull", "(a) empty pull throughput", "req/s", "ratio", ">=", 0.5)
    path = f"/desk/pull?{DESK_QUERY}"
    head = bench.last_seq("pull")
    body = orjson.dumps(pull_body(bench.channels["pull"], bench.state("pull", head)))
    status, answer, _ = _once(bench.desk, path, body)
    if status != 200 or orjson.loads(answer) != EMPTY_PULL:
        raise RuntimeError(f"deskbridge's empty pull answered {status}: {answer[:300]!r}")
    replay = bench.workdir / "empty-pull.replay"
    write_replay_file(replay, [static_line(path, body)])
    desk_runs, bare_runs = _interleaved(bench, replay, replay)
    return _throughput_figure(figure, desk_runs, bare_runs)


def _interleaved(bench: Bench, desk_file: Path, bare_file: Path) -> tuple[list[WrkRun], list[WrkRun]]:
    _wrk(bench, bench.bare, bare_file, duration=1)  # warm-up
    _wrk(bench, bench.desk, desk_file, duration=1)
    desk_runs, bare_runs = [], []
    for _ in range(bench.runs):
        bare_runs.append(_wrk(bench, bench.bare, bare_file))
        desk_runs.append(_wrk(bench, bench.desk, desk_file))
    return desk_runs, bare_runs


def _throughput_figure(figure: Figure, desk_runs: list[WrkRun], bare_runs: list[WrkRun], scale: float = 1) -> Figure:
    figure.deskbridge = _rounded(_median([r.rate for r in desk_runs]) * scale, 1)
    figure.baseline = _rounded(_median([r.rate for r in bare_runs]) * scale, 1)
    figure.result = _rounded(figure.deskbridge / figure.baseline, 3) if figure.baseline else None
    if len(desk_runs) == len(bare_runs) and all(r.rate for r in bare_runs):
        # Runs taken in pairs (baseline, then deskbridge): the median of the pairs' ratios
        # follows slow changes of the machine's load better than a ratio of medians.
        paired = _rounded(_median([d.rate / b.rate for d, b in zip(desk_runs, bare_runs, strict=True)]), 3)
        figure.details["ratio_of_medians"] = figure.result
        figure.details["median_of_paired_ratios"] = paired
        figure.result = paired
    loads = [r.other_load_cores for r in (*desk_runs, *bare_runs) if r.other_load_cores is not None]
    if loads:
        figure.details["other_load_cores_max"] = _rounded(max(loads), 2)
        if max(loads) > OTHER_LOAD_WARNING:
            figure.problems.append(f"other work used up to {max(loads):.1f} cores during the runs")
    worker_loads = [r.worker_cores for r in (*desk_runs, *bare_runs) if r.worker_cores is not None]
    if worker_loads:
        figure.details["worker_cores_max"] = _rounded(max(worker_loads), 2)
        if max(worker_loads) > OTHER_LOAD_WARNING:
            # Nothing gives it work during these figures: an idle worker should use next to nothing.
            figure.problems.append(f"the idle background worker used up to {max(worker_loads):.2f} cores "
                                   "during the runs")
    figure.details.update(deskbridge_runs=[r.as_dict() for r in desk_runs],
                          baseline_runs=[r.as_dict() for r in bare_runs])
    for label, runs in (("deskbridge", desk_runs), ("baseline", bare_runs)):
        server = [r.server_cpu_ms for r in runs if r.server_cpu_ms is not None]
        postgres = [r.postgres_cpu_ms for r in runs if r.postgres_cpu_ms is not None]
        figure.details[f"{label}_server_cpu_ms_per_request"] = _rounded(_median(server), 3) if server else None
        if postgres:
            figure.details[f"{label}_postgres_cpu_ms_per_request"] = _rounded(_median(postgres), 3)
    for label, runs in (("deskbridge", desk_runs), ("baseline", bare_runs)):
        for i, run in enumerate(runs):
            figure.problems.extend(f"{label} run {i + 1}: {p}" for p in run.problems)
    return figure


def _once(server: Server, path: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, bytes, float]:
    client = Client(server.port)
    try:
        return client.post(path, body, headers)
    finally:
        client.close()


# --- (b) a full pull, and (c) pull time against inbox size ----------------------------------


def _latencies(bench: Bench, server: Server, path: str, make_body: Callable[[], bytes],
               check: Callable[[int, bytes], None], per_round: int, warmup: int = 3,
               runs: int | None = None) -> dict[str, Any]:
    """Sequential requests from one keep-alive client: per round, the median client and server times."""
    client = Client(server.port)
    route = path.split("?", 1)[0]
    try:
        for _ in range(warmup):
            status, answer, _ = client.post(path, make_body())
            check(status, answer)
        client_medians, server_medians, sizes = [], [], []
        for _ in range(runs or bench.runs):
            offset = server.access_log_offset()
            times = []
            for _ in range(per_round):
                status, answer, seconds = client.post(path, make_body())
                check(status, answer)
                times.append(seconds * 1000)
                sizes.append(len(answer))
            client_medians.append(_median(times))
            server_times = server.server_times_ms(offset, "POST", route)
            if server_times:
                server_medians.append(_median(server_times))
    finally:
        client.close()
    return {
        "client_ms": _rounded(_median(client_medians)),
        "server_ms": _rounded(_median(server_medians)) if server_medians else None,
        "client_round_medians_ms": [_rounded(v) for v in client_medians],
        "server_round_medians_ms": [_rounded(v) for v in server_medians],
        "requests_per_round": per_round,
        "answer_bytes": int(_median(sizes)) if sizes else 0,
    }


def _pull_check(threads: int, tickets: int) -> Callable[[int, bytes], None]:
    def check(status: int, answer: bytes) -> None:
        if status != 200:
            raise RuntimeError(f"a pull answered {status}: {answer[:300]!r}")
        data = orjson.loads(answer)["data"]
        if len(data["threads"]) != threads or len(data["tickets"]) != tickets:
            raise RuntimeError(f"a pull returned {len(data['threads'])} threads and {len(data['tickets'])} tickets, "
                               f"expected {threads} and {tickets}")
    return check


def _pull_latency(bench: Bench, channel: str, cursor: int, runs: int | None = None) -> dict[str, Any]:
    """Latency of deskbridge's pull of the 1000 messages after `cursor`."""
    batch = min(1000, bench.last_seq(channel) - cursor)
    body = orjson.dumps(pull_body(bench.channels[channel], bench.state(channel, cursor)))
    return _latencies(bench, bench.desk, f"/desk/pull?{DESK_QUERY}", lambda: body, _pull_check(batch, batch),
                      bench.latency_requests, runs=runs)


def full_pull(bench: Bench) -> Figure:
    """A pull of 1000 threads and 1000 tickets: client-measured time, and gunicorn's %(D)s."""
    figure = Figure("b_full_pull", "(b) full pull, 1000 threads + 1000 tickets", "ms", "ms (client)", "<", 150)
    desk = _pull_latency(bench, "pull", 0)
    bench.memo["small_pull"] = desk
    # The bare app answers the very same JSON, saved from deskbridge's answer.
    body = orjson.dumps(pull_body(bench.channels["pull"], bench.state("pull", 0)))
    _, answer, _ = _once(bench.desk, f"/desk/pull?{DESK_QUERY}", body)
    (bench.workdir / "full-pull.json").write_bytes(answer)
    bare = _latencies(bench, bench.bare, f"/desk/pull?{DESK_QUERY}&full=1", lambda: body, _pull_check(1000, 1000),
                      bench.latency_requests)
    figure.deskbridge, figure.baseline = desk["client_ms"], bare["client_ms"]
    figure.result = desk["client_ms"]
    figure.details.update(deskbridge=desk, baseline=bare, deskbridge_server_ms=desk["server_ms"],
                          baseline_server_ms=bare["server_ms"])
    return figure


def inbox_size(bench: Bench, seed: Callable[[], dict[str, float]]) -> list[Figure]:
    """Pull time over a large inbox (end and start) against the 1000-row inbox, rounds interleaved.

    Each round pulls from the 1,000-row inbox, then at the end and at the start of the
    large one, so that a change in the machine's load touches all three alike.
    """
    seeding = seed()
    large_last = bench.last_seq("large")
    variants = {"small": ("pull", 0), "end": ("large", large_last - 1000), "start": ("large", 0)}
    rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
    for _ in range(bench.runs):
        for name, (channel, cursor) in variants.items():
            rounds[name].append(_pull_latency(bench, channel, cursor, runs=1))
    measured = {name: _merged(parts) for name, parts in rounds.items()}
    small = measured["small"]
    size = f"{bench.inbox_size:,}"
    figures = []
    for key, title, large in (("c_inbox_end", f"(c) pull at the end of a {size}-row inbox", measured["end"]),
                              ("c_inbox_start", f"(c) pull at the start of a {size}-row inbox", measured["start"])):
        figure = Figure(key, title, "ms", "ratio to 1,000 rows", "<=", 1.5)
        figure.deskbridge, figure.baseline = large["client_ms"], small["client_ms"]
        figure.result = _rounded(large["client_ms"] / small["client_ms"], 3)
        figure.details.update(large=large, small=small, small_before_seeding=bench.memo.get("small_pull"),
                              seeding=seeding,
                              server_ratio=_rounded(large["server_ms"] / small["server_ms"], 3)
                              if large["server_ms"] and small["server_ms"] else None)
        figures.append(figure)
    return figures


def _merged(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One latency measurement from single-round ones: the median of the round medians."""
    client = [v for p in parts for v in p["client_round_medians_ms"]]
    server = [v for p in parts for v in p["server_round_medians_ms"]]
    return {
        "client_ms": _rounded(_median(client)),
        "server_ms": _rounded(_median(server)) if server else None,
        "client_round_medians_ms": client,
        "server_round_medians_ms": server,
        "requests_per_round": parts[0]["requests_per_round"],
        "answer_bytes": parts[0]["answer_bytes"],
    }


# --- (d) inbound ingest --------------------------------------------------------------------


def _signed_file(bench: Bench, name: str, channel: str, bodies: Any) -> Path:
    path = bench.workdir / f"{name}.replay"
    secret = bench.channels[channel]["inbound"]["secret"]
    write_replay_file(path, signed_lines(f"/inbound/{bench.channel_id(channel)}", secret, bodies))
    return path


def ingest_single(bench: Bench) -> Figure:
    """One message per request, each new and freshly signed, against the bare endpoint (runs in pairs)."""
    figure = Figure("d_ingest_single", "(d) inbound ingest, 1 message/request", "req/s", "ratio", ">=", 0.3)
    bare_file = _signed_file(bench, "single-bare", "ingest", single_bodies("bare", 0, 5000))
    warm = _wrk(bench, bench.bare, bare_file, duration=1)
    # deskbridge cannot answer faster than the bare app: that bounds how many requests a run needs.
    capacity = int(warm.rate * bench.wrk_settings.duration * 2) + 1000
    warm_file = _signed_file(bench, "single-warm", "ingest", single_bodies("warm", 0, capacity // 3))
    _wrk(bench, bench.desk, warm_file, duration=1)
    files = [_signed_file(bench, f"single-{i}", "ingest", single_bodies(f"s{i}", 0, capacity))
             for i in range(bench.runs)]
    before = bench.last_seq("ingest")
    bare_runs, desk_runs = [], []
    for replay in files:
        bare_runs.append(_wrk(bench, bench.bare, bare_file))
        desk_runs.append(_wrk(bench, bench.desk, replay, unique=True))
    _check_stored(figure, bench, "ingest", before, sum(r.statuses.get("200", 0) for r in desk_runs), 1)
    figure.details["requests_prepared_per_run"] = capacity
    bench.memo["single_bare_runs"] = bare_runs
    bench.memo["single_capacity"] = capacity
    return _throughput_figure(figure, desk_runs, bare_runs)


def ingest_fan_out(bench: Bench) -> Figure:
    """One message per request spread over several channels: shows how much of (d) is the per-channel lock."""
    figure = Figure("d_ingest_single_fan_out", f"(d) ingest, 1 message/request over {FAN_OUT} channels",
                    "req/s", "ratio", INFO, 0)
    bare_runs = bench.memo.get("single_bare_runs")
    if bare_runs is None:
        bare_file = _signed_file(bench, "single-bare", "ingest", single_bodies("bare", 0, 5000))
        bare_runs = [_wrk(bench, bench.bare, bare_file) for _ in range(bench.runs)]
    capacity = bench.memo.get("single_capacity") or int(max(r.rate for r in bare_runs) * bench.wrk_settings.duration
                                                         * 1.3) + 1000
    names = [f"fan-{i}" for i in range(FAN_OUT)]

    def lines(prefix: str, count: int) -> Any:
        for i, pair in enumerate(single_bodies(prefix, 0, count)):
            channel = bench.channels[names[i % FAN_OUT]]
            yield from signed_lines(channel["inbound"]["path"], channel["inbound"]["secret"], [pair])

    def replay(name: str, prefix: str, count: int) -> Path:
        path = bench.workdir / f"{name}.replay"
        write_replay_file(path, lines(prefix, count))
        return path

    _wrk(bench, bench.desk, replay("fan-warm", "fw", capacity // 3), duration=1)
    files = [replay(f"fan-{i}", f"f{i}", capacity) for i in range(bench.runs)]
    before = sum(bench.last_seq(name) for name in names)
    desk_runs = [_wrk(bench, bench.desk, f, unique=True) for f in files]
    stored = sum(bench.last_seq(name) for name in names) - before
    answered = sum(r.statuses.get("200", 0) for r in desk_runs)
    figure.details["messages_stored"] = stored
    if stored < answered:
        figure.problems.append(f"{answered} requests answered 200 but only {stored} messages were stored")
    return _throughput_figure(figure, desk_runs, bare_runs)


def ingest_batch(bench: Bench) -> Figure:
    """Batches of 100 new messages per request: messages per second."""
    figure = Figure("d_ingest_batch", "(d) inbound ingest, batches of 100", "msg/s", "msg/s", ">=", 5000)
    bare_file = _signed_file(bench, "batch-bare", "batch", batch_bodies("bare", 0, 300, BATCH_SIZE))
    _wrk(bench, bench.bare, bare_file, duration=1)
    # A 2-second calibration run (also the warm-up) tells how many batches a run needs.
    warm_file = _signed_file(bench, "batch-warm", "batch", batch_bodies("warm", 0, 1000, BATCH_SIZE))
    calibration = _wrk(bench, bench.desk, warm_file, duration=2, unique=True)
    capacity = min(int(calibration.rate * bench.wrk_settings.duration * 2) + 100, 2000)
    files = [_signed_file(bench, f"batch-{i}", "batch", batch_bodies(f"b{i}", 0, capacity, BATCH_SIZE))
             for i in range(bench.runs)]
    before = bench.last_seq("batch")
    bare_runs, desk_runs = [], []
    for replay in files:
        bare_runs.append(_wrk(bench, bench.bare, bare_file))
        desk_runs.append(_wrk(bench, bench.desk, replay, unique=True))
    _check_stored(figure, bench, "batch", before, sum(r.statuses.get("200", 0) for r in desk_runs), BATCH_SIZE)
    figure = _throughput_figure(figure, desk_runs, bare_runs, scale=BATCH_SIZE)
    figure.details["batches_prepared_per_run"] = capacity
    figure.details["ratio_to_baseline"] = (_rounded(figure.deskbridge / figure.baseline, 3)
                                           if figure.deskbridge and figure.baseline else None)
    figure.result = figure.deskbridge
    return figure


def _check_stored(figure: Figure, bench: Bench, channel: str, before: int, answered: int, per_request: int) -> None:
    stored = bench.last_seq(channel) - before
    figure.details["messages_stored"] = stored
    if stored < answered * per_request:
        figure.problems.append(f"{answered} requests answered 200 but only {stored} messages were stored")


# --- (e) push overhead -----------------------------------------------------------------------


def push_overhead(bench: Bench) -> Figure:
    """Median push time minus the median time of a direct request to the same receiver."""
    figure = Figure("e_push_overhead", "(e) push overhead over a direct request", "ms", "ms", "<", 10)
    ids = itertools.count(1)
    channel = bench.channels["push"]

    def push() -> bytes:
        return orjson.dumps(push_body(channel, f"bench-{next(ids)}"))

    def push_check(status: int, answer: bytes) -> None:
        if status != 200 or not orjson.loads(answer).get("extId", "").startswith("rcv-"):
            raise RuntimeError(f"a push answered {status}: {answer[:300]!r}")

    def direct_check(status: int, answer: bytes) -> None:
        if status != 200:
            raise RuntimeError(f"the receiver answered {status}")

    # A direct request carries a body like the one deskbridge delivers.
    resource = push_body(channel, "direct")["resource"]
    direct_body = orjson.dumps({"type": "reply.created", "data": {
        "channel_id": channel["id"], "reply_id": "direct", "conversation_id": resource["extParentId"],
        "in_reply_to": resource["replyToExtId"], "content": resource["content"], "content_type": "text/plain",
        "text": resource["content"], "author": {"name": "John Snow", "email": "john.snow@example.com",
                                                "type": "AGENT", "photo_url": resource["author"]["photoURL"]},
        "attachments": []}})
    per_round = max(bench.latency_requests * 4, 20)
    desk = _latencies(bench, bench.desk, f"/desk/push?{DESK_QUERY}", push, push_check, per_round, warmup=10)
    direct = _latencies(bench, bench.receiver, "/hook", lambda: direct_body, direct_check, per_round, warmup=10)
    figure.deskbridge, figure.baseline = desk["client_ms"], direct["client_ms"]
    figure.result = _rounded(desk["client_ms"] - direct["client_ms"])
    figure.details.update(deskbridge=desk, direct=direct)
    return figure



# --- (f) real-time delivery -------------------------------------------------------------------


def realtime_delivery(bench: Bench) -> list[Figure]:
    """From the inbound 200 to the Desk emulator receiving the import, every channel at once (bench/realtime.py)."""
    if bench.realtime is None:
        raise RuntimeError("real-time delivery was not set up (it needs the background worker)")
    groups = {"deskbridge": bench.desk.pid, "worker": bench.worker.pid if bench.worker else None}
    cpu_before = {name: machine.cpu_seconds(group=pid) for name, pid in groups.items() if pid}
    pg_before = machine.cpu_by_process(command="postgres") if bench.postgres else {}
    self_before = _rusage(resource.RUSAGE_SELF)  # the senders and the emulators run in this process
    busy_before, started = machine.busy_seconds(), time.monotonic()
    data = measure_realtime(bench.realtime, bench.desk, bench.db, rounds=bench.runs, postgres=bench.postgres,
                            log=lambda line: print(line, flush=True))
    seconds = time.monotonic() - started
    cpu = {name: machine.cpu_seconds(group=groups[name]) - before for name, before in cpu_before.items()}
    if bench.postgres:
        cpu["postgres"] = machine.cpu_used_since(pg_before, command="postgres")
    cpu["benchmark"] = _rusage(resource.RUSAGE_SELF) - self_before
    busy = machine.busy_seconds() - busy_before
    cpu["other"] = max(busy - sum(cpu.values()), 0.0)
    # Cores used while the figure ran (first pulls and warm-up included): by process, and other work.
    data["cores"] = {name: _rounded(value / seconds, 2) for name, value in cpu.items()}
    if data["cores"]["other"] > OTHER_LOAD_WARNING:
        data["problems"].append(f"other work used {data['cores']['other']:.2f} cores on average meanwhile")
    channels = data["channels"]
    median = Figure("f_realtime_median", f"(f) real-time delivery, {channels} channels at once: median", "ms",
                    "ms", "<", 300)
    p95 = Figure("f_realtime_p95", f"(f) real-time delivery, {channels} channels at once: 95th percentile",
                 "ms", "ms", "<", 1000)
    median.deskbridge = median.result = data["median_ms"]
    p95.deskbridge = p95.result = data["p95_ms"]
    problems = data.pop("problems")
    median.problems.extend(problems)
    p95.problems.extend(problems)
    median.details.update(data)
    p95.details.update({key: value for key, value in data.items() if key not in ("latencies_ms", "sustained")})
    figures = [median, p95]
    sustained = data.get("sustained")
    if sustained:
        # Information: steady traffic rather than a burst (no target of its own in SPEC C2).
        what = f"(f) sustained, {sustained['messages_per_second']:g} msg/s over {channels} channels"
        for key, label in (("median_ms", "median"), ("p95_ms", "95th percentile")):
            row = Figure(f"f_realtime_sustained_{key[:-3]}", f"{what}: {label}", "ms", "ms", INFO, 0)
            row.deskbridge = row.result = sustained[key]
            row.details.update({k: v for k, v in sustained.items() if k != "latencies_ms" or key == "median_ms"})
            figures.append(row)
    return figures


EVENT_RUN_EVENTS = 5000


def event_deliveries(bench: Bench) -> list[Figure]:
    """(g) SPEC C2: events delivered per second by one worker process (this one, running the app's
    Worker) to the local receiver, each run on a fresh database (tests/event_throughput.py)."""
    from tests.event_throughput import fresh_database as fresh_event_database
    from tests.event_throughput import measure_event_delivery

    rates = []
    for _ in range(bench.runs):
        with fresh_event_database(bench.database_server_url) as url:
            run = measure_event_delivery(url, f"{bench.receiver.base_url}/events", events=EVENT_RUN_EVENTS)
        rates.append(run.per_second)
        print(f"  {run.events} events in {run.seconds:.2f} s: {run.per_second:,.0f} events/s", flush=True)
    figure = Figure("g_event_deliveries", "(g) event deliveries by one worker process", "events/s", "events/s",
                    ">=", 500)
    figure.deskbridge = figure.result = round(statistics.median(rates))
    figure.details.update({"events_per_run": EVENT_RUN_EVENTS, "runs_per_second": [round(r) for r in rates]})
    return [figure]
