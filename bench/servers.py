"""The processes a benchmark run starts: gunicorn servers and the push receiver.

Every process gets a session (process group) of its own, so that stopping it also
stops its children (gunicorn's workers); `stop()` sends SIGTERM to the group, then
SIGKILL if it has not gone within a few seconds.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
ACCESS_LOG_FORMAT = "%(m)s %(U)s %(s)s %(D)s"


@dataclass(frozen=True)
class GunicornSettings:
    """The server settings shared by deskbridge and the bare baseline."""

    workers: int = 2
    threads: int = 4
    worker_class: str = "gthread"
    keep_alive: int = 5

    def args(self) -> list[str]:
        """gunicorn command-line options."""
        return ["--workers", str(self.workers), "--threads", str(self.threads), "--worker-class", self.worker_class,
                "--keep-alive", str(self.keep_alive)]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


class Process:
    """A child process in its own process group, stopped with its children."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.popen = subprocess.Popen(
            command, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        """True while the process runs."""
        return self.popen.poll() is None

    def stop(self, grace: float = 10.0) -> None:
        """Stop the process group: SIGTERM, then SIGKILL after `grace` seconds."""
        try:
            if self.alive():
                _signal_group(self.popen.pid, signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.popen.wait(grace)
            # Workers may outlive a master that was killed: the group goes in any case.
            _signal_group(self.popen.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(5)
        finally:
            self._log.close()

    def log_tail(self, lines: int = 30) -> str:
        """The end of the process's output, for error messages."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


class Server(Process):
    """An HTTP server on 127.0.0.1, with its gunicorn access log when it has one."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], workdir: Path, port: int,
                 access_log: Path | None = None) -> None:
        super().__init__(name, command, env, workdir / f"{name}.log")
        self.port = port
        self.access_log = access_log

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def wait_ready(self, path: str | None = "/healthz", timeout: float = 60.0) -> None:
        """Wait until the server answers (GET path with 200, or accepts a connection)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited with {self.popen.returncode}:\n{self.log_tail()}")
            try:
                conn = http.client.HTTPConnection(HOST, self.port, timeout=2)
                try:
                    if path is None:
                        conn.connect()
                        return
                    conn.request("GET", path)
                    if conn.getresponse().status == 200:
                        return
                finally:
                    conn.close()
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not get ready within {timeout:.0f} s:\n{self.log_tail()}")

    def access_log_offset(self) -> int:
        """The access log's current size, to read what comes after it."""
        return self.access_log.stat().st_size if self.access_log and self.access_log.exists() else 0

    def server_times_ms(self, since: int, method: str, path: str) -> list[float]:
        """%(D)s of the access log lines after offset `since` for method and path, in ms."""
        if self.access_log is None:
            return []
        # The worker writes its access line after the response is sent: give it a moment.
        time.sleep(0.05)
        with self.access_log.open("rb") as handle:
            handle.seek(since)
            text = handle.read().decode(errors="replace")
        times = []
        for line in text.splitlines():
            parts = line.split()
            if len(parts) == 4 and parts[0] == method and parts[1] == path:
                times.append(int(parts[3]) / 1000.0)
        return times


def start_gunicorn(name: str, app_spec: str, settings: GunicornSettings, env: dict[str, str], workdir: Path) -> Server:
    """Start `gunicorn app_spec` on a free port of 127.0.0.1 and wait until it answers /healthz."""
    port = free_port()
    access_log = workdir / f"{name}.access.log"
    # An empty config file: gunicorn would otherwise read ./gunicorn.conf.py, and the two
    # servers must run with exactly the settings below and nothing else.
    config = workdir / "gunicorn.bench.conf.py"
    config.write_text("# The benchmark's servers take all their settings from the command line.\n")
    command = [
        sys.executable, "-m", "gunicorn", app_spec, "--config", str(config), "--bind", f"{HOST}:{port}",
        *settings.args(),
        "--access-logfile", str(access_log), "--access-logformat", ACCESS_LOG_FORMAT,
        "--log-level", "warning", "--graceful-timeout", "5",
    ]
    server = Server(name, command, env, workdir, port, access_log)
    try:
        server.wait_ready()
    except BaseException:
        server.stop()
        raise
    return server


def start_receiver(workdir: Path, lifetime: float) -> Server:
    """Start the push receiver (bench/receiver.py) on a free port of 127.0.0.1."""
    port = free_port()
    command = [sys.executable, "-m", "bench.receiver", str(port), str(int(lifetime))]
    server = Server("receiver", command, {**os.environ, "PYTHONPATH": str(ROOT)}, workdir, port)
    try:
        server.wait_ready(path=None)
    except BaseException:
        server.stop()
        raise
    return server
