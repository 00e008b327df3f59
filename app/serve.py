"""`make run`: check the configuration, migrate the database, then run the web server (gunicorn)
and the background worker (`flask worker`) side by side until a signal or either one ends.

A malformed setting stops here with one line naming it (SPEC B9), before any process starts
and repeats it. This process stays as a small supervisor: SIGTERM, SIGINT or SIGHUP stop both
children gracefully; when one of them ends on its own the other is stopped and `make run`
exits with that child's status, so a process manager sees one service and restarts it whole.
If the supervisor itself is killed, the kernel sends both children SIGTERM (Linux).
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import suppress
from pathlib import Path
from types import FrameType

from app.config import ConfigError, Settings

ROOT = Path(__file__).resolve().parent.parent
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
# gunicorn's graceful_timeout (30 s) and the worker's grace period (25 s), with a margin.
STOP_TIMEOUT_SECONDS = 40.0
PR_SET_PDEATHSIG = 1

log = logging.getLogger("app.serve")


def main() -> None:
    """Validate settings, run `alembic upgrade head`, then supervise gunicorn and the worker."""
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"deskbridge: configuration error: {exc}", file=sys.stderr)
        sys.exit(2)
    from alembic import command
    from alembic.config import Config

    from app.logging import configure_logging
    from app.store.database import DatabaseUnavailable

    # Our log format from here on, alembic's lines included (its own logging setup is not used).
    configure_logging(settings.log_format)
    config = Config(str(ROOT / "alembic.ini"))
    config.attributes["database_url"] = settings.database_url
    config.attributes["configure_logger"] = False
    try:
        command.upgrade(config, "head")
    except Exception as exc:
        unavailable = DatabaseUnavailable.from_error(exc)
        if unavailable is None:
            raise
        print(f"deskbridge: the database is not available: {unavailable.reason}", file=sys.stderr)
        sys.exit(3)
    os.chdir(ROOT)
    bin_dir = Path(sys.executable).parent
    # One metrics directory for the web server and the background worker (app/metrics.py).
    from app.metrics import configure_multiprocess, remove_multiprocess_dir

    configure_multiprocess(os.environ)
    try:
        code = supervise({
            "web server": [str(bin_dir / "gunicorn"), "--config", "gunicorn.conf.py", "wsgi:app"],
            "background worker": [sys.executable, "-m", "flask", "--app", "wsgi", "worker"],
        })
    finally:
        remove_multiprocess_dir(os.environ)
    sys.exit(code)


def supervise(commands: Mapping[str, Sequence[str]]) -> int:
    """Run the commands until a stop signal or until one ends; then stop the others. The exit status:
    the first nonzero one of the children, the one that ended first leading."""
    children: dict[str, subprocess.Popen[bytes]] = {}
    received: list[int] = []

    def stop(signum: int, _frame: FrameType | None) -> None:
        # Nothing that takes a lock or writes a stream: this runs between any two bytecodes of the
        # main thread, which may hold one of those just then.
        received.append(signum)
        _terminate(children.values())

    for signum in STOP_SIGNALS:
        signal.signal(signum, stop)
    before_exec = _ended_with(os.getpid())
    for name, command in commands.items():
        children[name] = subprocess.Popen(command, preexec_fn=before_exec)
        log.info("started the %s (pid %d)", name, children[name].pid)
        if received:  # a signal came before this child existed
            _terminate(children.values())
    first, status = _wait_any(children)
    if received:
        log.info("stopping on %s", signal.Signals(received[0]).name)
    else:
        log.warning("the %s ended (exit status %d): stopping the others", first, status)
        _terminate(children.values())
    codes = [status] + [_wait_or_kill(child) for name, child in children.items() if name != first]
    code = next((code for code in codes if code != 0), 0)
    return 128 - code if code < 0 else code  # killed by signal N: 128 + N, as a shell reports it


def _ended_with(parent: int) -> Callable[[], None]:
    """What a child runs before exec: ask for SIGTERM when the supervisor dies, even by SIGKILL (Linux)."""
    prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None

    def before_exec() -> None:
        if prctl is not None:
            prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the supervisor died before the line above took effect
            os._exit(1)

    return before_exec


def _wait_any(children: Mapping[str, subprocess.Popen[bytes]]) -> tuple[str, int]:
    """Block until a child ends (signals are handled meanwhile); its name and exit status."""
    by_pid = {child.pid: name for name, child in children.items()}
    while True:
        pid, wait_status = os.wait()
        if pid in by_pid:
            child = children[by_pid[pid]]
            child.returncode = os.waitstatus_to_exitcode(wait_status)  # reaped here, so Popen must not wait
            return by_pid[pid], child.returncode


def _terminate(children: Iterable[subprocess.Popen[bytes]]) -> None:
    """SIGTERM to each child not known to have ended (os.kill: Popen.send_signal would poll, and reap)."""
    for child in children:
        if child.returncode is None:
            with suppress(ProcessLookupError):
                os.kill(child.pid, signal.SIGTERM)


def _wait_or_kill(child: subprocess.Popen[bytes]) -> int:
    try:
        return child.wait(timeout=STOP_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        log.warning("pid %d did not stop within %g s: killing it", child.pid, STOP_TIMEOUT_SECONDS)
        child.kill()
        return child.wait()


if __name__ == "__main__":
    main()
