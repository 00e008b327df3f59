"""`flask --app wsgi extension ...`: build the Zoho Desk extension of this deployment, and check one (SPEC B11)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import NoReturn

import click
import orjson
from flask.cli import AppGroup

from app.desk import extension
from app.domain.errors import DomainError, NotFound
from app.services import services

extension_cli = AppGroup("extension", help="Build and check the Zoho Desk extension of this deployment.")


@extension_cli.command("build")
@click.option("--base-url", default=None,
              help="The public https://host[:port] of this deployment (default: PUBLIC_BASE_URL).")
@click.option("--out", type=click.Path(path_type=Path), default=Path("deskbridge-extension"), show_default=True,
              help="The project folder to write; it must not exist or be empty.")
@click.option("--name", default=extension.DEFAULT_NAME, show_default=True,
              help="The extension's widget and channel resource name.")
@click.option("--accept-attachments", is_flag=True, help="Let agents attach files to replies on this channel.")
@click.option("--force", is_flag=True,
              help="Replace an earlier build in --out (its app/, dist/, plugin-manifest.json, resources.json).")
def build(base_url: str | None, out: Path, name: str, accept_attachments: bool, force: bool) -> None:
    """Write the extension project that Zoho's toolkit (zet) validates and packs as it is.

    With DESK_EXTENSION_SECRET set, the manifest also declares the platform callbacks and the
    secret (written to plugin-manifest.json only, never printed)."""
    settings = services().settings
    raw_base_url = base_url if base_url is not None else settings.public_base_url
    if not raw_base_url:
        _fail(DomainError("invalid_base_url", "give --base-url https://host[:port] (or set PUBLIC_BASE_URL)"))
    try:
        built = extension.build_project(
            out,
            raw_base_url,
            name=name,
            accept_attachments=accept_attachments,
            secret=settings.desk_extension_secret,
            force=force,
        )
    except DomainError as exc:
        _fail(exc)
    if built.base_url.warning:
        click.echo(orjson.dumps({"warning": "plain_http", "message": built.base_url.warning}).decode(), err=True)
    click.echo(orjson.dumps(
        {"out": str(built.out), "base_url": built.base_url.url, "files": list(built.files),
         "callbacks": built.callbacks},
        option=orjson.OPT_INDENT_2,
    ).decode())


@extension_cli.command("validate")
@click.argument("directory", type=click.Path(path_type=Path))
def validate(directory: Path) -> None:
    """Check a project against the rules Zoho's toolkit applies before packing; one line per violation."""
    if not directory.is_dir():
        _fail(NotFound("not_found", f"{directory} is not a directory"))
    violations = extension.validate_project(directory)
    for violation in violations:
        click.echo(str(violation))
    if violations:
        sys.exit(1)
    click.echo(f"OK: {directory} follows the rules of Zoho's extension toolkit")


def _fail(exc: DomainError) -> NoReturn:
    """One JSON line on stderr and exit 1, as the other command groups do."""
    click.echo(orjson.dumps({"error": exc.code, "message": exc.message}).decode(), err=True)
    sys.exit(1)
