"""gunicorn settings for deskbridge; BIND, WEB_CONCURRENCY and THREADS override them."""

import multiprocessing
import os

bind = os.environ.get("BIND", "127.0.0.1:8000")
# Processes rather than threads for CPU work (threads of one process queue on the GIL:
# bench/RESULTS.md measured +31 % ingest for 4 workers x 1 thread over 2 x 4); a few
# threads each keep pushes that wait on a slow external service from blocking pulls.
workers = int(os.environ.get("WEB_CONCURRENCY", 2 * multiprocessing.cpu_count()))
worker_class = "gthread"
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
logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "plain", "stream": "ext://sys.stderr"}},
    "root": {"level": "INFO", "handlers": ["stderr"]},
    "loggers": {
        "gunicorn.error": {"level": "INFO", "handlers": ["stderr"], "propagate": False},
        "sqlalchemy": {"level": "WARNING"},
    },
}
