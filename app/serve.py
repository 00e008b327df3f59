"""`make run`: check the configuration, migrate the database, then become gunicorn.

A malformed setting stops here with one line naming it (SPEC B9), before any worker
starts and repeats it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from app.config import ConfigError, Settings

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    """Validate settings, run `alembic upgrade head`, exec gunicorn with the project's config."""
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"deskbridge: configuration error: {exc}", file=sys.stderr)
        sys.exit(2)
    from alembic import command
    from alembic.config import Config

    from app.store.database import DatabaseUnavailable

    config = Config(str(ROOT / "alembic.ini"))
    config.attributes["database_url"] = settings.database_url
    try:
        command.upgrade(config, "head")
    except Exception as exc:
        unavailable = DatabaseUnavailable.from_error(exc)
        if unavailable is None:
            raise
        print(f"deskbridge: the database is not available: {unavailable.reason}", file=sys.stderr)
        sys.exit(3)
    gunicorn = str(Path(sys.executable).with_name("gunicorn"))
    os.chdir(ROOT)
    os.execv(gunicorn, [gunicorn, "--config", "gunicorn.conf.py", "wsgi:app"])


if __name__ == "__main__":
    main()
