"""Load generation: wrk for throughput, a keep-alive client for latencies."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.servers import HOST

REPLAY_SCRIPT = Path(__file__).resolve().parent / "lua" / "replay.lua"


def ensure_wrk() -> str:
    """The path of wrk, installed with apt-get when it is missing."""
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() != 0:
        raise RuntimeError("wrk is not installed and this is not root: run `sudo apt-get install -y wrk`")
    print("installing wrk with apt-get ...", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, timeout=300)
    subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True, env=env, timeout=300)
    found = shutil.which("wrk")
    if not found:
        raise RuntimeError("apt-get installed wrk but it is not on PATH")
    return found


@dataclass(frozen=True)
class WrkSettings:
    """How wrk loads a server: one thread, a fixed number of connections, a run length."""

    connections: int = 8
    threads: int = 1
    duration: float = 4.0


@dataclass
class WrkRun:
    """One wrk run's outcome, from the replay script's summary line."""

    requests: int
    seconds: float
    statuses: dict[str, int]
    errors: dict[str, int]
    wrapped: int
    latency_p50_ms: float
    latency_p99_ms: float
    problems: list[str] = field(default_factory=list)
    server_cpu_ms: float | None = None  # CPU time of the server's processes per request
    postgres_cpu_ms: float | None = None  # CPU time of all postgres processes per request
    other_load_cores: float | None = None  # CPU the rest of the machine used meanwhile, in cores
    worker_cores: float | None = None  # CPU the (idle) background worker used meanwhile, in cores

    @property
    def rate(self) -> float:
        """Completed requests per second."""
        return self.requests / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"requests_per_second": round(self.rate, 1), "requests": self.requests,
                "seconds": round(self.seconds, 3), "statuses": self.statuses, "errors": self.errors,
                "wrapped": self.wrapped, "latency_p50_ms": self.latency_p50_ms,
                "latency_p99_ms": self.latency_p99_ms, "problems": self.problems,
                "server_cpu_ms_per_request": _round(self.server_cpu_ms),
                "postgres_cpu_ms_per_request": _round(self.postgres_cpu_ms),
                "other_load_cores": _round(self.other_load_cores),
                "worker_cores": _round(self.worker_cores)}


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def run_wrk(wrk: str, port: int, replay_file: Path, settings: WrkSettings, *, duration: float | None = None,
            unique: bool = False) -> WrkRun:
    """Replay a file of requests against 127.0.0.1:port for a bounded time.

    A run is marked with problems when an answer was not 200, a socket error
    happened, or (for unique requests) the file ran out and requests repeated.
    """
    seconds = duration if duration is not None else settings.duration
    command = [wrk, f"-t{settings.threads}", f"-c{settings.connections}", f"-d{max(seconds, 1):.0f}s",
               "--timeout", "30s", "-s", str(REPLAY_SCRIPT), f"http://{HOST}:{port}/", "--", str(replay_file)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 90, check=False)
    summary = next((line[6:] for line in done.stdout.splitlines() if line.startswith("BENCH ")), None)
    if done.returncode != 0 or summary is None:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}")
    data = json.loads(summary)
    run = WrkRun(
        requests=data["requests"], seconds=data["duration_us"] / 1e6, statuses=data["statuses"],
        errors=data["errors"], wrapped=data["wrapped"], latency_p50_ms=data["latency_p50_us"] / 1000,
        latency_p99_ms=data["latency_p99_us"] / 1000,
    )
    others = {status: n for status, n in run.statuses.items() if status != "200"}
    if others:
        run.problems.append(f"answers other than 200: {others}")
    if any(run.errors.values()):
        run.problems.append(f"socket errors: {run.errors}")
    if unique and run.wrapped:
        run.problems.append("the file of unique requests ran out; requests were repeated")
    return run


class Client:
    """A keep-alive HTTP/1.1 client to 127.0.0.1 that times each exchange."""

    def __init__(self, port: int, timeout: float = 60.0) -> None:
        self._port = port
        self._timeout = timeout
        self._conn = http.client.HTTPConnection(HOST, port, timeout=timeout)

    def post(self, path: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, bytes, float]:
        """POST and read the whole answer; (status, body, seconds from send to last byte)."""
        all_headers = {"Content-Type": "application/json", **(headers or {})}
        for attempt in (1, 2):
            try:
                started = time.perf_counter()
                self._conn.request("POST", path, body, all_headers)
                response = self._conn.getresponse()
                data = response.read()
                return response.status, data, time.perf_counter() - started
            except (ConnectionError, http.client.RemoteDisconnected):
                # The server closed an idle keep-alive connection: reconnect once.
                self._conn.close()
                self._conn = http.client.HTTPConnection(HOST, self._port, timeout=self._timeout)
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        self._conn.close()
