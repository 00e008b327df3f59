"""SPEC B9: settings from the environment, with working defaults."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest

from app.config import VARIABLES, ConfigError, Settings
from tests.conftest import ROOT


def test_defaults_use_sqlite_in_the_instance_folder_and_generate_a_kept_secret_key(tmp_path, monkeypatch):
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
    first = Settings.from_env({"INSTANCE_PATH": str(tmp_path)})
    assert first.database_url == f"sqlite:///{tmp_path / 'deskbridge.sqlite3'}"
    assert len(first.secret_key) >= 40
    key_file = tmp_path / "secret_key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    second = Settings.from_env({"INSTANCE_PATH": str(tmp_path)})
    assert second.secret_key == first.secret_key
    assert (first.admin_token, first.push_deadline_seconds, first.pull_batch_limit) == (None, 10.0, 1000)
    assert (first.allow_private_outbound, first.max_body_bytes) == (False, 1024 * 1024)


def test_environment_values_are_parsed(tmp_path):
    settings = Settings.from_env(
        {
            "INSTANCE_PATH": str(tmp_path),
            "DATABASE_URL": "postgresql+psycopg://u:pw@db/x",
            "SECRET_KEY": "k",
            "ADMIN_TOKEN": "t",
            "PUSH_DEADLINE_SECONDS": "2.5",
            "PULL_BATCH_LIMIT": "10",
            "ALLOW_PRIVATE_OUTBOUND": "yes",
            "MAX_BODY_BYTES": "4096",
        }
    )
    assert settings.database_url == "postgresql+psycopg://u:pw@db/x"
    assert (settings.secret_key, settings.admin_token) == ("k", "t")
    assert (settings.push_deadline_seconds, settings.pull_batch_limit) == (2.5, 10)
    assert (settings.allow_private_outbound, settings.max_body_bytes) == (True, 4096)
    assert not (tmp_path / "secret_key").exists()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PULL_BATCH_LIMIT", "0"),
        ("PULL_BATCH_LIMIT", "1001"),
        ("PULL_BATCH_LIMIT", "ten"),
        ("PUSH_DEADLINE_SECONDS", "-1"),
        ("PUSH_DEADLINE_SECONDS", "soon"),
        ("ALLOW_PRIVATE_OUTBOUND", "maybe"),
        ("MAX_BODY_BYTES", "1.5"),
    ],
)
def test_malformed_values_stop_startup_with_a_clear_message(tmp_path, name, value):
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({"INSTANCE_PATH": str(tmp_path), "SECRET_KEY": "k", name: value})


def test_settings_repr_hides_secrets(tmp_path):
    settings = Settings.from_env(
        {
            "INSTANCE_PATH": str(tmp_path),
            "SECRET_KEY": "very-secret-key",
            "ADMIN_TOKEN": "admin-secret",
            "DATABASE_URL": "postgresql://u:dbpass@h/d",
        }
    )
    text = repr(settings)
    assert "very-secret-key" not in text and "admin-secret" not in text and "dbpass" not in text


@pytest.mark.parametrize("scheme", ["postgres", "postgresql", "postgresql+psycopg"])
def test_postgres_urls_as_providers_write_them_mean_psycopg_3(tmp_path, scheme):
    settings = Settings.from_env({"INSTANCE_PATH": str(tmp_path), "SECRET_KEY": "k",
                                  "DATABASE_URL": f"{scheme}://u:pw@db:5432/x"})
    assert settings.database_url == "postgresql+psycopg://u:pw@db:5432/x"


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("mysql://u@h/d", "sqlite or postgresql"),
        ("postgresql+psycopg2://u@h/d", "psycopg 3"),
        ("just-a-word", "DATABASE_URL must look like"),
    ],
)
def test_unusable_database_urls_are_refused_by_name_without_echoing_them(tmp_path, url, complaint):
    with pytest.raises(ConfigError, match="DATABASE_URL") as refused:
        Settings.from_env({"INSTANCE_PATH": str(tmp_path), "SECRET_KEY": "k", "DATABASE_URL": url})
    assert complaint in str(refused.value)


def test_log_format_is_json_by_default_and_may_be_text(tmp_path):
    base = {"INSTANCE_PATH": str(tmp_path), "SECRET_KEY": "k"}
    assert Settings.from_env(base).log_format == "json"
    assert Settings.from_env(base | {"LOG_FORMAT": "text"}).log_format == "text"
    with pytest.raises(ConfigError, match="LOG_FORMAT"):
        Settings.from_env(base | {"LOG_FORMAT": "xml"})


@pytest.mark.parametrize(
    ("name", "value"),
    [("PUSH_DEADLINE_SECONDS", "abc"), ("DATABASE_URL", "postgresql+psycopg2://u:topsecret@h/d")],
)
def test_the_run_command_stops_on_a_malformed_value_with_one_line_naming_it(tmp_path, name, value):
    env = {key: val for key, val in os.environ.items() if key not in ("DATABASE_URL", "SECRET_KEY")}
    env.update({"INSTANCE_PATH": str(tmp_path), name: value})
    done = subprocess.run(
        [sys.executable, "-m", "app.serve"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert name in lines[0] and "Traceback" not in done.stderr
    assert "topsecret" not in done.stderr
    assert done.stdout == ""


def test_desk_extension_settings_are_read(tmp_path):
    settings = Settings.from_env({"INSTANCE_PATH": str(tmp_path), "SECRET_KEY": "k",
                                  "DESK_EXTENSION_SECRET": "ext-secret", "DESK_CAPTURE_DIR": str(tmp_path / "cap"),
                                  "PUBLIC_BASE_URL": "https://desk.example.com/bridge/"})
    assert settings.desk_extension_secret == "ext-secret"
    assert settings.desk_capture_dir == tmp_path / "cap"
    assert settings.public_base_url == "https://desk.example.com/bridge"
    assert "ext-secret" not in repr(settings)


@pytest.mark.parametrize("url", ["http://desk.example.com", "ftp://x", "https://", "https://x/?a=1", "not a url"])
def test_public_base_url_must_be_https(tmp_path, url):
    with pytest.raises(ConfigError, match="PUBLIC_BASE_URL"):
        Settings.from_env({"INSTANCE_PATH": str(tmp_path), "SECRET_KEY": "k", "PUBLIC_BASE_URL": url})


def test_plain_http_public_base_url_is_allowed_for_local_trials(tmp_path):
    settings = Settings.from_env({"INSTANCE_PATH": str(tmp_path), "SECRET_KEY": "k", "ALLOW_PRIVATE_OUTBOUND": "true",
                                  "PUBLIC_BASE_URL": "http://127.0.0.1:8000"})
    assert settings.public_base_url == "http://127.0.0.1:8000"


def test_an_unwritable_capture_folder_stops_the_run_command_with_one_line(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    env = {key: val for key, val in os.environ.items() if key not in ("DATABASE_URL", "SECRET_KEY")}
    env.update({"INSTANCE_PATH": str(tmp_path), "DESK_CAPTURE_DIR": str(blocker / "capture")})
    done = subprocess.run(
        [sys.executable, "-m", "app.serve"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "DESK_CAPTURE_DIR" in lines[0], done.stderr

