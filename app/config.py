"""Environment to typed settings: the only module that reads the environment."""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

INSTANCE_DIR = Path(__file__).resolve().parent.parent / "instance"
MAX_PULL_BATCH = 1000


# Every variable Settings reads (tests give a server exactly the ones they choose).
VARIABLES = (
    "DATABASE_URL", "SECRET_KEY", "ADMIN_TOKEN", "PUSH_DEADLINE_SECONDS", "PULL_BATCH_LIMIT",
    "ALLOW_PRIVATE_OUTBOUND", "MAX_BODY_BYTES", "INSTANCE_PATH", "LOG_FORMAT", "SQLITE_BUSY_TIMEOUT_SECONDS",
    "METRICS_TOKEN", "SECRET_OVERLAP_SECONDS", "STALL_MINUTES", "LEDGER_RETENTION_DAYS", "DESK_EXTENSION_SECRET",
    "DESK_CAPTURE_DIR", "PUBLIC_BASE_URL", "TELEGRAM_API_BASE", "TWILIO_API_BASE", "MEDIA_MAX_BYTES",
    "EVENT_RETENTION_DAYS", "EVENT_RETRY_SCHEDULE",
)
# SPEC B16: attempts at once, then after 5 s, 5 min, 30 min, 2 h, 5 h, 10 h and 10 h.
EVENT_RETRY_SCHEDULE = (0.0, 5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0)
TELEGRAM_API_BASE = "https://api.telegram.org"
TWILIO_API_BASE = "https://api.twilio.com"
MEDIA_MAX_BYTES = 20 * 1024 * 1024


class ConfigError(ValueError):
    """A configuration value is missing or malformed."""


@dataclass(frozen=True)
class Settings:
    """Everything the service reads from its environment (SPEC B9)."""

    database_url: str
    secret_key: str
    admin_token: str | None
    push_deadline_seconds: float
    pull_batch_limit: int
    allow_private_outbound: bool
    max_body_bytes: int
    instance_path: Path
    log_format: str = "json"
    sqlite_busy_timeout_seconds: float = 10.0
    metrics_token: str | None = None
    secret_overlap_seconds: int = 86400
    stall_minutes: int = 15
    ledger_retention_days: int = 60
    desk_extension_secret: str | None = None
    desk_capture_dir: Path | None = None
    public_base_url: str | None = None
    telegram_api_base: str = TELEGRAM_API_BASE
    twilio_api_base: str = TWILIO_API_BASE
    media_max_bytes: int = MEDIA_MAX_BYTES
    event_retention_days: int = 60
    event_retry_schedule: tuple[float, ...] = EVENT_RETRY_SCHEDULE

    def __repr__(self) -> str:
        # Keep secrets out of tracebacks and debug output.
        return (
            f"Settings(database_url={_redact_url(self.database_url)!r}, "
            f"push_deadline_seconds={self.push_deadline_seconds}, "
            f"pull_batch_limit={self.pull_batch_limit}, "
            f"allow_private_outbound={self.allow_private_outbound}, "
            f"max_body_bytes={self.max_body_bytes})"
        )

    @classmethod
    def from_env(cls, overrides: Mapping[str, str] | None = None) -> Settings:
        """Build settings from os.environ, with `overrides` taking precedence."""
        env = {**os.environ, **(overrides or {})}
        instance = Path(env.get("INSTANCE_PATH") or INSTANCE_DIR)
        return cls(
            database_url=database_url(env, instance),
            secret_key=env.get("SECRET_KEY") or _instance_secret_key(instance),
            admin_token=env.get("ADMIN_TOKEN") or None,
            push_deadline_seconds=_number(env, "PUSH_DEADLINE_SECONDS", 10.0, 0.1, 300.0),
            pull_batch_limit=int(_number(env, "PULL_BATCH_LIMIT", 1000, 1, MAX_PULL_BATCH, integer=True)),
            allow_private_outbound=_flag(env, "ALLOW_PRIVATE_OUTBOUND"),
            max_body_bytes=int(_number(env, "MAX_BODY_BYTES", 1024 * 1024, 1024, 1 << 30, integer=True)),
            instance_path=instance,
            log_format=_choice(env, "LOG_FORMAT", ("json", "text")),
            sqlite_busy_timeout_seconds=_number(env, "SQLITE_BUSY_TIMEOUT_SECONDS", 10.0, 0.1, 600.0),
            metrics_token=env.get("METRICS_TOKEN") or None,
            secret_overlap_seconds=int(_number(env, "SECRET_OVERLAP_SECONDS", 86400, 0, 30 * 86400, integer=True)),
            stall_minutes=int(_number(env, "STALL_MINUTES", 15, 1, 1440, integer=True)),
            ledger_retention_days=int(_number(env, "LEDGER_RETENTION_DAYS", 60, 7, 3650, integer=True)),
            desk_extension_secret=env.get("DESK_EXTENSION_SECRET") or None,
            desk_capture_dir=_writable_dir(env, "DESK_CAPTURE_DIR"),
            public_base_url=_public_base_url(env, allow_plain_http=_flag(env, "ALLOW_PRIVATE_OUTBOUND")),
            telegram_api_base=_api_base(env, "TELEGRAM_API_BASE", TELEGRAM_API_BASE),
            twilio_api_base=_api_base(env, "TWILIO_API_BASE", TWILIO_API_BASE),
            media_max_bytes=int(_number(env, "MEDIA_MAX_BYTES", MEDIA_MAX_BYTES, 1024, 1 << 31, integer=True)),
            event_retention_days=int(_number(env, "EVENT_RETENTION_DAYS", 60, 7, 3650, integer=True)),
            event_retry_schedule=_schedule(env, "EVENT_RETRY_SCHEDULE", EVENT_RETRY_SCHEDULE),
        )


def database_url(env: Mapping[str, str] | None = None, instance: Path | None = None) -> str:
    """The database URL: DATABASE_URL, else a SQLite file in the instance folder."""
    env = os.environ if env is None else env
    url = (env.get("DATABASE_URL") or "").strip()
    if url:
        return _normalised_database_url(url)
    instance = Path(env.get("INSTANCE_PATH") or instance or INSTANCE_DIR)
    instance.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{instance / 'deskbridge.sqlite3'}"


def _normalised_database_url(url: str) -> str:
    """postgres:// and postgresql:// (as hosting providers write them) mean psycopg 3."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ConfigError("DATABASE_URL must look like postgresql+psycopg://user:pass@host/db or sqlite:///path")
    if scheme in ("postgres", "postgresql"):
        url = f"postgresql+psycopg://{rest}"
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigError("DATABASE_URL is not a database URL") from None
    backend, driver = parsed.get_backend_name(), parsed.get_driver_name()
    if backend not in ("sqlite", "postgresql"):
        raise ConfigError(f"DATABASE_URL names {backend!r}: deskbridge runs on sqlite or postgresql")
    if backend == "postgresql" and driver != "psycopg":
        raise ConfigError(f"DATABASE_URL names the driver {driver!r}: use postgresql+psycopg:// (psycopg 3)")
    return url


def _instance_secret_key(instance: Path) -> str:
    """Read the generated secret key, creating it once (safe against racing workers)."""
    instance.mkdir(parents=True, exist_ok=True)
    path = instance / "secret_key"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(48))
    for _ in range(100):
        key = path.read_text().strip()
        if key:
            return key
        # Another worker created the file and has not written it yet.
        os.sched_yield()
    raise ConfigError(f"{path} is empty: delete it or set SECRET_KEY")


def _number(
    env: Mapping[str, str], name: str, default: float, low: float, high: float, *, integer: bool = False
) -> float:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw) if integer else float(raw)
    except ValueError:
        kind = "a whole number" if integer else "a number"
        raise ConfigError(f"{name} must be {kind}, got {raw!r}") from None
    if not low <= value <= high:
        raise ConfigError(f"{name} must be between {low:g} and {high:g}, got {raw!r}")
    return value


def _writable_dir(env: Mapping[str, str], name: str) -> Path | None:
    """A folder the service writes into, created now: one that cannot be written stops the start."""
    import tempfile

    raw = (env.get(name) or "").strip()
    if not raw:
        return None
    directory = Path(raw)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".probe-"):
            pass
    except OSError as exc:
        raise ConfigError(f"{name} {raw!r} cannot be written: {exc.strerror or type(exc).__name__}") from None
    return directory


def _public_base_url(env: Mapping[str, str], *, allow_plain_http: bool) -> str | None:
    """PUBLIC_BASE_URL: https://host[:port][/prefix] (plain http only with ALLOW_PRIVATE_OUTBOUND)."""
    from urllib.parse import urlsplit

    raw = (env.get("PUBLIC_BASE_URL") or "").strip()
    if not raw:
        return None
    try:
        parts = urlsplit(raw)
        parts.port  # noqa: B018 (raises on a malformed port)
    except ValueError:
        raise ConfigError("PUBLIC_BASE_URL is not a URL") from None
    schemes = ("https", "http") if allow_plain_http else ("https",)
    if parts.scheme not in schemes or not parts.hostname or parts.query or parts.fragment:
        plain = " (http only with ALLOW_PRIVATE_OUTBOUND=true)" if not allow_plain_http else ""
        raise ConfigError(f"PUBLIC_BASE_URL must look like https://host[:port][/path]{plain}, got {raw!r}")
    return raw.rstrip("/")


def _schedule(env: Mapping[str, str], name: str, default: tuple[float, ...]) -> tuple[float, ...]:
    """A retry schedule: comma-separated delays in seconds before each attempt, the first usually 0."""
    raw = (env.get(name) or "").strip()
    if not raw:
        return default
    try:
        delays = tuple(float(part) for part in raw.split(","))
    except ValueError:
        raise ConfigError(f"{name} must be comma-separated seconds, got {raw!r}") from None
    if not 1 <= len(delays) <= 20 or any(not 0 <= delay <= 7 * 86400 for delay in delays):
        raise ConfigError(f"{name} must list 1 to 20 delays of 0 to 604800 seconds, got {raw!r}")
    return delays


def _api_base(env: Mapping[str, str], name: str, default: str) -> str:
    """A provider's API base URL (SPEC B15): https://host[:port]; plain http (a local fake in tests)
    only with ALLOW_PRIVATE_OUTBOUND."""
    from urllib.parse import urlsplit

    raw = (env.get(name) or "").strip()
    if not raw:
        return default
    try:
        parts = urlsplit(raw)
        parts.port  # noqa: B018 (raises on a malformed port)
    except ValueError:
        raise ConfigError(f"{name} is not a URL") from None
    schemes = ("https", "http") if _flag(env, "ALLOW_PRIVATE_OUTBOUND") else ("https",)
    if parts.scheme not in schemes or not parts.hostname or parts.query or parts.fragment:
        raise ConfigError(f"{name} must look like https://host[:port] (http only with ALLOW_PRIVATE_OUTBOUND=true), "
                          f"got {raw!r}")
    return raw.rstrip("/")


def _choice(env: Mapping[str, str], name: str, choices: tuple[str, ...]) -> str:
    raw = (env.get(name) or "").strip().lower()
    if not raw:
        return choices[0]
    if raw not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {raw!r}")
    return raw


def _flag(env: Mapping[str, str], name: str) -> bool:
    raw = (env.get(name) or "").strip().lower()
    if raw in ("", "0", "false", "no", "off"):
        return False
    if raw in ("1", "true", "yes", "on"):
        return True
    raise ConfigError(f"{name} must be true or false, got {raw!r}")


def _redact_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparseable>"
