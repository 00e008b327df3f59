"""gunicorn settings for deskbridge; BIND, WEB_CONCURRENCY and THREADS override them."""

import multiprocessing
import os
from typing import Any

bind = os.environ.get("BIND", "127.0.0.1:8000")
# Processes rather than threads for CPU work (threads of one process queue on the GIL:
# bench/RESULTS.md measured +31 % ingest for 4 workers x 1 thread over 2 x 4); a few
# threads each keep pushes that wait on a slow external service from blocking pulls.
workers = int(os.environ.get("WEB_CONCURRENCY", 2 * multiprocessing.cpu_count()))
# gthread, with the server's own error answers (malformed requests, limits) in the JSON shape.
worker_class = "app.web.server.JsonErrorWorker"
threads = int(os.environ.get("THREADS", "4"))
# For gthread workers this is the worker heartbeat, not a limit on one request: a
# push waiting PUSH_DEADLINE_SECONDS on a slow service does not trip it.
timeout = 60
graceful_timeout = 30
keepalive = 5
accesslog = None  # query strings carry Desk's securityContext: keep them out of logs
errorlog = "-"
loglevel = "info"
# The control socket sits at one fixed path per user: two servers on a host would clash.
control_socket_disable = True
# The app logs through the root logger (app/logging.py, LOG_FORMAT json or text); gunicorn's
# own lines use the same format. The root gets its handler from create_app() in each worker.
_log_format = os.environ.get("LOG_FORMAT", "json").lower()
logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"deskbridge": {"()": "app.logging.formatter", "log_format": _log_format}},
    # The text format names request_id, which gunicorn's own records lack.
    "filters": {"text_defaults": {"()": "app.logging.TextDefaults"}},
    "handlers": {
        "stderr": {
            "class": "logging.StreamHandler",
            "formatter": "deskbridge",
            "stream": "ext://sys.stderr",
            "filters": ["text_defaults"] if _log_format == "text" else [],
        },
    },
    "root": {"level": "INFO", "handlers": []},
    "loggers": {
        "gunicorn.error": {"level": "INFO", "handlers": ["stderr"], "propagate": False},
        "sqlalchemy": {"level": "WARNING"},
    },
}


def on_starting(server: object) -> None:
    """Stop at once, with one line, on a malformed setting: not once per worker with a traceback."""
    import sys

    from app.config import ConfigError, Settings

    try:
        Settings.from_env()
    except ConfigError as exc:
        print(f"deskbridge: configuration error: {exc}", file=sys.stderr)
        sys.exit(2)
    # Metrics (app/metrics.py): an empty PROMETHEUS_MULTIPROC_DIR that every worker inherits.
    # Imported here, not at the top: the master must not load prometheus_client before it is set.
    from app.metrics import configure_multiprocess

    configure_multiprocess(os.environ)


def child_exit(server: object, worker: Any) -> None:
    """A worker has exited: its counts stay in the totals (prometheus_client's bookkeeping)."""
    from app.metrics import worker_exited

    worker_exited(worker.pid, os.environ)


def on_exit(server: object) -> None:
    """Remove the metrics directory if on_starting created it."""
    from app.metrics import remove_multiprocess_dir

    remove_multiprocess_dir(os.environ)
