"""deskbridge: a Zoho Desk channel integration backend."""

from __future__ import annotations

from collections.abc import Mapping

from flask import Flask

from app.config import Settings
from app.connectors import ConnectorFactory
from app.keyring import Keyring
from app.services import Services
from app.store.database import Database


def create_app(overrides: Mapping[str, str] | None = None) -> Flask:
    """Assemble the application; `overrides` take precedence over the environment."""
    from app.admin.api import admin_api
    from app.admin.cli import channel_cli
    from app.desk.views import desk
    from app.errors import register_error_handlers
    from app.health import health
    from app.inbound.views import inbound

    settings = Settings.from_env(overrides=overrides)
    app = Flask(__name__, instance_path=str(settings.instance_path), static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.extensions["deskbridge"] = Services(
        settings=settings,
        db=Database(settings.database_url),
        keyring=Keyring(settings.secret_key),
        connectors=ConnectorFactory(allow_private=settings.allow_private_outbound),
    )
    register_error_handlers(app)
    for blueprint in (health, desk, inbound, admin_api):
        app.register_blueprint(blueprint)
    app.cli.add_command(channel_cli)
    return app
