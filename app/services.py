"""What a request needs from its application, assembled once by create_app()."""

from __future__ import annotations

from dataclasses import dataclass

from flask import current_app

from app.config import Settings
from app.connectors import Connectors
from app.keyring import Keyring
from app.store.database import Database


@dataclass(frozen=True)
class Services:
    settings: Settings
    db: Database
    keyring: Keyring
    connectors: Connectors


def services() -> Services:
    """The services of the current application."""
    return current_app.extensions["deskbridge"]
