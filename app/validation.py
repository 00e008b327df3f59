"""Shared input checks: JSON bodies, safe text fields, schema errors as domain errors."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import orjson
from marshmallow import Schema, ValidationError, fields

from app.domain.errors import Invalid, MalformedRequest


class Text(fields.String):
    """A string that the databases can store: no NUL characters."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        text = super()._deserialize(value, attr, data, **kwargs)
        if "\x00" in text:
            raise ValidationError("Must not contain NUL characters.")
        return text


class Identifier(fields.Field):
    """An id given as a string or a whole number; loaded as non-empty text."""

    default_error_messages = {"invalid": "Must be a non-empty string or a whole number of at most 255 characters."}

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise self.make_error("invalid")
        text = str(value)
        if not text.strip() or len(text) > 255 or "\x00" in text:
            raise self.make_error("invalid")
        return text


def max_depth(limit: int) -> Callable[[Any], None]:
    """A validator refusing JSON values nested deeper than `limit` levels."""

    def check(value: Any) -> None:
        stack = [(value, 1)]
        while stack:
            item, depth = stack.pop()
            if depth > limit:
                raise ValidationError(f"Must not be nested deeper than {limit} levels.")
            children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
            stack.extend((child, depth + 1) for child in children)

    return check


def load(schema: Schema, data: Any, message: str = "The request is not valid.") -> dict[str, Any]:
    """Load data with a schema, or raise Invalid with the field errors."""
    try:
        return schema.load(data)
    except ValidationError as exc:
        raise Invalid("validation_error", message, fields=str_keys(exc.messages)) from None


def str_keys(messages: Any) -> Any:
    """Field errors with string keys: marshmallow numbers list items, JSON keys are text."""
    if isinstance(messages, dict):
        return {str(key): str_keys(value) for key, value in messages.items()}
    return messages


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """A request body that must be a JSON object, or MalformedRequest."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise MalformedRequest("invalid_json", "The request body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise MalformedRequest("invalid_json", "The request body must be a JSON object.")
    return body


DEFAULT_DESK_DOMAIN = "desk.zoho.com"
_HOST = re.compile(r"(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}", re.IGNORECASE)


class DeskDomain(Text):
    """Zoho Desk's data centre for a channel (SPEC B14): a host name (`desk.zoho.eu`, https
    implied) or a base URL `https://host[:port]`; `http://` is for a local emulator and needs
    ALLOW_PRIVATE_OUTBOUND (checked by the use case, which knows the setting)."""

    default_error_messages = {
        "desk_domain": "Must be a host name such as desk.zoho.eu, or a base URL https://host[:port].",
    }

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        text = super()._deserialize(value, attr, data, **kwargs).strip().rstrip("/")
        if _HOST.fullmatch(text):
            return text.lower()
        try:
            parts = urlsplit(text)
            parts.port  # noqa: B018 (raises on a malformed port)
        except ValueError:
            raise self.make_error("desk_domain") from None
        if parts.scheme not in ("https", "http") or not parts.hostname or parts.path or parts.query \
                or parts.fragment or parts.username or parts.password:
            raise self.make_error("desk_domain")
        return f"{parts.scheme}://{parts.netloc.lower()}"


class IsoTimeInUtc(fields.DateTime):
    """An ISO-8601 time loaded as UTC; a time without a zone is taken as UTC."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> datetime:
        moment = super()._deserialize(value, attr, data, **kwargs)
        if moment.tzinfo is None:
            return moment.replace(tzinfo=UTC)
        try:
            return moment.astimezone(UTC)
        except OverflowError:
            # e.g. 0001-01-01T00:30+01:00: no such time in UTC.
            raise self.make_error("invalid", input=value, obj_type=self.OBJ_TYPE) from None
