"""Domain errors: what went wrong, in the service's terms. The web layer maps each kind
to an HTTP status in one table (app/web/errors.py); the CLI maps them to exit codes."""

from __future__ import annotations

from typing import Any


class DomainError(Exception):
    """A failure a caller can understand: a stable code and a readable message."""

    def __init__(self, code: str, message: str, fields: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.fields = fields


class MalformedRequest(DomainError):
    """The request cannot be read: not JSON, broken framing, a required parameter missing."""


class TooLarge(DomainError):
    """The request body is larger than the service accepts."""


class Unauthenticated(DomainError):
    """Credentials or a signature are missing or wrong."""


class Forbidden(DomainError):
    """The caller is known but may not do this (another org, a disabled channel)."""


class NotFound(DomainError):
    """The thing named does not exist."""


class Invalid(DomainError):
    """The input is well-formed but not valid; `fields` says where."""


class Conflict(DomainError):
    """The request collides with work in progress; asking again later may succeed."""


class ConfirmationRequired(DomainError):
    """A destructive operation was asked for without its confirmation."""


class DeliveryRejected(DomainError):
    """The external service refused a reply (or policy forbids its destination)."""


class DeliveryFailed(DomainError):
    """The external service failed or did not answer in time."""


class Unavailable(DomainError):
    """A dependency of ours (the database) does not answer; `retry_after` in seconds."""

    def __init__(self, code: str, message: str, retry_after: int = 5) -> None:
        super().__init__(code, message)
        self.retry_after = retry_after


class ProviderFailed(DomainError):
    """A provider's API failed a request made on a client's behalf (the media proxy, SPEC B15)."""
