"""The inbound message format of SPEC B5 (the webhook connector's body); unknown fields are ignored."""

from __future__ import annotations

from typing import Any

from marshmallow import (
    EXCLUDE,
    Schema,
    ValidationError,
    fields,
    post_load,
    validate,
    validates_schema,
)

from app.domain.errors import Invalid
from app.validation import IsoTimeInUtc, Text, str_keys

MAX_BATCH = 100


def _not_blank(value: str) -> None:
    if not value.strip():
        raise ValidationError("Must not be blank.")


_ID = [validate.Length(min=1, max=255), _not_blank]
_URL = [validate.URL(schemes={"http", "https"}, require_tld=False), validate.Length(max=2048)]


class StrictBoolean(fields.Boolean):
    """true or false, not the strings and numbers marshmallow takes for them."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> bool:
        if not isinstance(value, bool):
            raise self.make_error("invalid", input=value)
        return value


class AuthorSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    id = Text(validate=validate.Length(max=255), allow_none=True)
    name = Text(validate=validate.Length(max=255), allow_none=True)
    display_name = Text(validate=validate.Length(max=255), allow_none=True)  # a handle, shown in Desk
    email = Text(validate=validate.Length(max=255), allow_none=True)
    phone = Text(validate=validate.Length(max=64), allow_none=True)
    avatar_url = Text(validate=_URL, allow_none=True)


class AttachmentSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    url = Text(required=True, validate=_URL)
    name = Text(validate=validate.Length(max=255), allow_none=True)
    content_type = Text(validate=validate.Length(max=255), allow_none=True)
    size = fields.Integer(strict=True, validate=validate.Range(min=0), allow_none=True)


class MessageSchema(Schema):
    """One message from the external service."""

    class Meta:
        unknown = EXCLUDE

    id = Text(required=True, validate=_ID)
    conversation_id = Text(required=True, validate=_ID)
    text = Text(allow_none=True)
    html = Text(allow_none=True)
    created_at = IsoTimeInUtc(format="iso", allow_none=True)
    subject = Text(allow_none=True)
    direction = Text(load_default="in", validate=validate.OneOf(("in", "out")))
    author = fields.Nested(AuthorSchema, allow_none=True)
    attachments = fields.List(fields.Nested(AttachmentSchema), validate=validate.Length(max=100), allow_none=True)
    can_reply = StrictBoolean(load_default=True)
    permalink = Text(validate=_URL, allow_none=True)

    @validates_schema
    def _needs_body(self, data: dict[str, Any], **_: Any) -> None:
        if not data.get("text") and not data.get("html") and not data.get("attachments"):
            raise ValidationError("A message needs text, html or attachments.", "text")

    @post_load
    def _normalise(self, data: dict[str, Any], **_: Any) -> dict[str, Any]:
        if data.get("author"):
            data["author"] = {key: value for key, value in data["author"].items() if value}
        return data


_MESSAGE = MessageSchema()


def load_messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The messages of an inbound body (one, or a batch); 422 with field errors otherwise."""
    if "messages" not in body:
        try:
            return [_MESSAGE.load(body)]
        except ValidationError as exc:
            raise _invalid(exc.messages) from None
    items = body["messages"]
    if not isinstance(items, list) or not 1 <= len(items) <= MAX_BATCH:
        raise _invalid({"messages": [f"Must be a list of 1 to {MAX_BATCH} messages."]})
    loaded: list[dict[str, Any]] = []
    errors: dict[str, Any] = {}
    for index, item in enumerate(items):
        try:
            loaded.append(_MESSAGE.load(item))
        except ValidationError as exc:
            errors[str(index)] = exc.messages
    if errors:
        raise _invalid({"messages": errors})
    return loaded


def _invalid(fields_: Any) -> Invalid:
    return Invalid("validation_error", "The message is not valid; nothing was stored.", fields=str_keys(fields_))
