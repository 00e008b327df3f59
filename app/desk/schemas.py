"""Shape of Desk's push body (SPEC A4, B4); unknown fields are Desk's business."""

from __future__ import annotations

from typing import Any

from marshmallow import (
    EXCLUDE,
    Schema,
    ValidationError,
    fields,
    pre_load,
    validate,
    validates_schema,
)

from app.domain.errors import Invalid
from app.domain.replies import ReplyIn
from app.validation import Identifier, Text, load, max_depth

CONTENT_TYPES = ("text/plain", "text/html")
MAX_REPLY_ID = 200  # Desk's ids are numbers of about 18 digits


class AuthorSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    name = Text(allow_none=True)
    email = Text(allow_none=True)
    type = Text(allow_none=True)
    photoURL = Text(allow_none=True)


class ReplyResourceSchema(Schema):
    """The `resource` of a push: the agent's reply."""

    class Meta:
        unknown = EXCLUDE

    # The id becomes the delivery's webhook-id header (reply_<id>: visible ASCII only) and,
    # without an id from the external service, the reply's extId (desk-reply-<id>, a column of 255).
    id = Identifier(required=True, validate=[
        validate.Regexp(r"^[!-~]+$", error="Must be visible ASCII characters."),
        validate.Length(max=MAX_REPLY_ID, error=f"Must be at most {MAX_REPLY_ID} characters."),
    ])
    extParentId = Identifier(required=True)
    replyToExtId = Identifier(allow_none=True, load_default=None)
    content = Text(allow_none=True)
    summary = Text(allow_none=True)
    contentType = Text(load_default="text/plain", validate=validate.OneOf(CONTENT_TYPES))
    hasAttach = fields.Boolean(allow_none=True)
    attachments = fields.List(
        fields.Dict(validate=max_depth(8)), allow_none=True, load_default=list, validate=validate.Length(max=100)
    )
    author = fields.Nested(AuthorSchema, allow_none=True, load_default=None)

    @pre_load
    def _blank_reply_to_is_none(self, data: Any, **_: Any) -> Any:
        # The thread answered is optional; an empty one means "none", not an invalid reply.
        if isinstance(data, dict) and isinstance(data.get("replyToExtId"), str) and not data["replyToExtId"].strip():
            return {**data, "replyToExtId": None}
        return data

    @validates_schema
    def _needs_content(self, data: dict[str, Any], **_: Any) -> None:
        if not data.get("content") and not data.get("summary"):
            raise ValidationError("content or summary is required.", "content")


_RESOURCE = ReplyResourceSchema()


def load_reply(resource: Any) -> ReplyIn:
    """A push's `resource` as a reply, or Invalid naming the fields at fault."""
    if not isinstance(resource, dict):
        problem = "Missing data for required field." if resource is None else "Must be an object."
        raise Invalid("validation_error", "The reply is not valid.", fields={"resource": [problem]})
    loaded = load(_RESOURCE, resource, "The reply is not valid.")
    return ReplyIn(
        desk_reply_id=loaded["id"],
        conversation_id=loaded["extParentId"],
        in_reply_to=loaded.get("replyToExtId"),
        content=loaded.get("content") or loaded.get("summary") or "",
        content_type=loaded["contentType"],
        author=loaded.get("author"),
        attachments=loaded.get("attachments") or [],
    )
