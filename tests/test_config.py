"""SPEC B9: settings from the environment, with working defaults."""

from __future__ import annotations

import stat

import pytest

from app.config import ConfigError, Settings


def test_defaults_use_sqlite_in_the_instance_folder_and_generate_a_kept_secret_key(tmp_path, monkeypatch):
    for name in (
        "DATABASE_URL",
        "SECRET_KEY",
        "ADMIN_TOKEN",
        "PUSH_DEADLINE_SECONDS",
        "PULL_BATCH_LIMIT",
        "ALLOW_PRIVATE_OUTBOUND",
        "MAX_BODY_BYTES",
    ):
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
