"""Pages of the operators' lists (SPEC B10): `{"items", "next_cursor"}`, `cursor` and `limit`."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

from marshmallow import RAISE, Schema, fields, validate

from app.domain.errors import Invalid
from app.validation import Text

DEFAULT_LIMIT = 50
MAX_LIMIT = 250


@dataclass(frozen=True)
class Page:
    """One page of a list, newest first, and the cursor of the next (None on the last)."""

    items: list[dict[str, Any]]
    next_cursor: str | None


class PageQuery(Schema):
    """`cursor` and `limit` (default 50, above 250 is 422); our own API refuses unknown fields."""

    class Meta:
        unknown = RAISE

    cursor = Text(validate=validate.Length(max=200))
    limit = fields.Integer(load_default=DEFAULT_LIMIT, validate=validate.Range(min=1, max=MAX_LIMIT))


def encode_cursor(kind: str, position: str) -> str:
    """An opaque cursor for a position in one kind of list."""
    return base64.urlsafe_b64encode(f"{kind}{position}".encode()).decode().rstrip("=")


def decode_cursor(kind: str, cursor: str) -> str:
    """The position a cursor of this kind of list names; Invalid naming `cursor` otherwise."""
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (ValueError, UnicodeDecodeError):
        text = ""
    if not text.startswith(kind) or len(text) == len(kind):
        raise not_a_cursor()
    return text[len(kind):]


def not_a_cursor() -> Invalid:
    """The error for a cursor this API did not give."""
    return Invalid("validation_error", "The query is not valid.", fields={"cursor": ["Not a cursor this API gave."]})
