"""Read a request body whole, refusing it when it is too large or its framing is broken.

Werkzeug's `request.get_data()` is not enough for SPEC B8: with a chunked body it stops
at MAX_CONTENT_LENGTH and returns what it has (a body cut short, then accepted), and a
broken chunk raises gunicorn's own exception out of it (a 500). `read_body` reads the
WSGI input itself and turns both into domain errors the web layer answers 413 and 400.
"""

from __future__ import annotations

from typing import IO

from flask import request
from werkzeug.wsgi import get_content_length

from app.domain.errors import MalformedRequest, TooLarge

TOO_LARGE_MESSAGE = "The request body is larger than this server accepts."


def _read_errors() -> tuple[type[Exception], ...]:
    """What a server's body reader raises on broken framing or a client that went away.

    gunicorn raises its ParseException family (InvalidChunkSize, ChunkMissingTerminator,
    InvalidChunkExtension; LimitRequestHeaders and InvalidHeader for trailers) and
    NoMoreData, an OSError. Werkzeug's servers raise OSError or ValueError. gunicorn may be
    absent where the app runs under Werkzeug's dev server or test client.
    """
    try:
        from gunicorn.http.errors import ParseException
    except ImportError:
        return (OSError, ValueError)
    return (ParseException, OSError, ValueError)


READ_ERRORS = _read_errors()

# Short reasons for the message, by exception class name: the exceptions' own text
# repeats request bytes, which do not belong in an answer or a log line.
_REASONS = {
    "InvalidChunkSize": "a chunk size is not a hexadecimal number",
    "ChunkMissingTerminator": "a chunk does not end with CRLF",
    "InvalidChunkExtension": "a chunk extension is malformed",
    "InvalidHeader": "a trailer field is malformed",
    "InvalidHeaderName": "a trailer field name is malformed",
    "LimitRequestHeaders": "the trailer section is too large",
    "NoMoreData": "the body ended before its last chunk",
}


def read_body(max_bytes: int) -> bytes:
    """The current request's body, at most max_bytes long.

    Raises TooLarge when the body is longer (announced by Content-Length: refused
    before reading; chunked: after reading max_bytes + 1 bytes), MalformedRequest when
    the server cannot read it (broken chunked framing, a body shorter than its
    Content-Length). A request with neither Content-Length nor a server that ends the
    stream for us (`wsgi.input_terminated`) has no body we can read safely: b"" (as
    Werkzeug's own fallback does).
    """
    environ = request.environ
    length = get_content_length(environ)
    if length is not None and length > max_bytes:
        raise TooLarge("request_entity_too_large", TOO_LARGE_MESSAGE)
    if length is None and not environ.get("wsgi.input_terminated"):
        return b""
    want = max_bytes + 1 if length is None else length
    try:
        body = _read_up_to(environ["wsgi.input"], want)
    except READ_ERRORS as exc:
        reason = _REASONS.get(type(exc).__name__, "its framing is broken or the client stopped sending")
        raise MalformedRequest("malformed_body", f"The request body could not be read: {reason}.") from None
    if len(body) > max_bytes:
        raise TooLarge("request_entity_too_large", TOO_LARGE_MESSAGE)
    if length is not None and len(body) < length:
        raise MalformedRequest(
            "malformed_body", "The request body could not be read: it is shorter than its Content-Length."
        )
    return body


def _read_up_to(stream: IO[bytes], size: int) -> bytes:
    """Read size bytes, or up to the end of the stream if it ends first.

    gunicorn's input returns everything asked for in one read; raw streams (Werkzeug's
    dev server) may return less per read, hence the loop.
    """
    if size == 0:
        return b""
    first = stream.read(size)
    if len(first) == size or not first:
        return first
    parts = [first]
    missing = size - len(first)
    while missing > 0:
        data = stream.read(missing)
        if not data:
            break
        parts.append(data)
        missing -= len(data)
    return b"".join(parts)
