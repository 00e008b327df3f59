"""SPEC B10: the ledger export streams: 100,000 entries are written without loading them into
memory. Measured as the peak resident size of a real `flask replies export` process."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import insert

from app.store.database import Database
from app.store.models import Reply
from tests.conftest import ROOT

ENTRIES = 100_000
SMALL = 1_000
MEASURE = (
    "import resource, sys\n"
    "from flask.cli import main\n"
    "sys.argv = ['flask', '--app', 'wsgi', 'replies', 'export', '--format', sys.argv[1]] + sys.argv[2:]\n"
    "try:\n"
    "    main()\n"
    "except SystemExit as exit:\n"
    "    assert not exit.code, exit.code\n"
    "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n"
)


def seed(url: str, channel_id: str) -> datetime:
    """ENTRIES ledger rows, one a second from a fixed start; the time after the first SMALL."""
    start = datetime(2026, 1, 1, tzinfo=UTC)
    db = Database(url)
    try:
        with db.write() as conn:
            for first in range(0, ENTRIES, 10_000):
                conn.execute(insert(Reply), [
                    {"channel_id": channel_id, "desk_reply_id": f"r{n}", "status": "failed", "attempts": 1,
                     "last_error": "HTTP 503: the receiver was down for maintenance", "external_id": None,
                     "conversation_ext_id": "c1", "in_reply_to": None, "content": "x" * 200,
                     "content_type": "text/plain", "author": {"name": "Agent"}, "attachments": [],
                     "created_at": start + timedelta(seconds=n), "attempt_started_at": None,
                     "updated_at": start + timedelta(seconds=n), "sent_at": None}
                    for n in range(first, min(first + 10_000, ENTRIES))
                ])
    finally:
        db.dispose()
    return start + timedelta(seconds=SMALL)


def export_peak_kib(url: str, tmp_path: Path, fmt: str, *args: str) -> tuple[int, int]:
    """Peak resident size (KiB) of an export process, and the lines it wrote."""
    env = {**os.environ, "DATABASE_URL": url, "SECRET_KEY": "test-secret-key", "INSTANCE_PATH": str(tmp_path),
           "LOG_FORMAT": "text"}
    out = tmp_path / f"export-{len(args)}.{fmt}"
    with out.open("wb") as sink:
        done = subprocess.run([sys.executable, "-c", MEASURE, fmt, *args], cwd=ROOT, env=env, stdout=sink,
                              stderr=subprocess.PIPE, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    with out.open("rb") as written:
        lines = sum(1 for _ in written)
    return int(done.stderr.strip().splitlines()[-1]), lines


def test_exporting_100000_entries_takes_about_the_memory_of_exporting_1000(database_url, new_channel, tmp_path):
    channel = new_channel()
    small_until = seed(database_url, channel["id"])

    small_peak, small_lines = export_peak_kib(database_url, tmp_path, "jsonl", "--until", small_until.isoformat())
    full_peak, full_lines = export_peak_kib(database_url, tmp_path, "csv")

    assert (small_lines, full_lines) == (SMALL, ENTRIES + 1)  # the CSV has its header line
    # Loading 100,000 entries would take well over 100 MB; streaming keeps the peak within a
    # few MB of the small export's (the driver's and SQLAlchemy's buffers).
    assert full_peak - small_peak < 25 * 1024, (small_peak, full_peak)
