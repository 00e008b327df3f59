"""deskbridge: a Zoho Desk channel integration backend."""

from __future__ import annotations

from collections.abc import Mapping

from flask import Flask

from app.config import Settings
from app.connectors import Connectors, KindOrFactory
from app.connectors.media import MediaLinks
from app.keyring import Keyring
from app.logging import configure_logging, init_request_logging
from app.services import Services
from app.store.database import Database


def create_app(
    overrides: Mapping[str, str] | None = None, *, connectors: Mapping[str, KindOrFactory] | None = None
) -> Flask:
    """Assemble the application; `overrides` take precedence over the environment, and
    `connectors` replace or add connector kinds by name (tests inject fakes here)."""
    from app.cli import channel_cli, installation_cli, replies_cli
    from app.cli_extension import extension_cli
    from app.cli_webhooks import webhooks_cli
    from app.jobs.cli import worker_cli
    from app.web.admin import admin_api
    from app.web.capture import init_capture
    from app.web.desk import desk
    from app.web.errors import register_error_handlers
    from app.web.health import health
    from app.web.inbound import inbound
    from app.web.media import media
    from app.web.metrics import init_metrics

    settings = Settings.from_env(overrides=overrides)
    configure_logging(settings.log_format)
    app = Flask(__name__, instance_path=str(settings.instance_path), static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    # Every answer is JSON (SPEC B8): no automatic OPTIONS answers (an empty HTML 200), and
    # no HTML redirect from //desk//pull to /desk/pull: such paths are a JSON 404.
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = False
    app.url_map.merge_slashes = False
    keyring = Keyring(settings.secret_key)
    app.extensions["deskbridge"] = Services(
        settings=settings,
        db=Database(settings.database_url, busy_timeout=settings.sqlite_busy_timeout_seconds),
        keyring=keyring,
        connectors=Connectors(
            allow_private=settings.allow_private_outbound,
            overrides=connectors,
            public_base_url=settings.public_base_url,
            media=MediaLinks(keyring.media_key, settings.public_base_url),
            telegram_api_base=settings.telegram_api_base,
            twilio_api_base=settings.twilio_api_base,
            secret_overlap_seconds=settings.secret_overlap_seconds,
        ),
    )
    init_request_logging(app)
    register_error_handlers(app)
    for blueprint in (health, desk, inbound, media, admin_api):
        app.register_blueprint(blueprint)
    init_metrics(app)
    init_capture(app, settings)
    app.cli.add_command(channel_cli)
    app.cli.add_command(worker_cli)
    app.cli.add_command(replies_cli)
    app.cli.add_command(installation_cli)
    app.cli.add_command(extension_cli)
    app.cli.add_command(webhooks_cli)
    return app
