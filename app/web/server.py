"""The gunicorn worker: gthread, with the HTTP server's own error answers in the JSON shape.

gunicorn answers requests it cannot parse (and applications that fail outside Flask's
handlers) itself, in HTML, and logs the offending request line or header. SPEC B8 wants
every answer as {"error", "message"}, and query strings carry Desk's securityContext, so
this worker answers in JSON and logs only the status and the exception's class.
"""

from __future__ import annotations

import json
import traceback
from ssl import SSLError
from typing import Any

from gunicorn import util
from gunicorn.http.errors import (
    ChunkMissingTerminator,
    ConfigurationProblem,
    ExpectationFailed,
    ForbiddenProxyRequest,
    InvalidChunkExtension,
    InvalidChunkSize,
    InvalidH2CPreface,
    InvalidHeader,
    InvalidHeaderName,
    InvalidHTTPVersion,
    InvalidProxyHeader,
    InvalidProxyLine,
    InvalidRequestLine,
    InvalidRequestMethod,
    InvalidResponseHeader,
    InvalidResponseHeaderName,
    InvalidSchemeHeaders,
    LimitRequestHeaders,
    LimitRequestLine,
    ObsoleteFolding,
    ParseException,
    UnsupportedTransferCoding,
)
from gunicorn.workers.gthread import ThreadWorker

Answer = tuple[int, str, str, str]  # status, reason phrase, error code, message (a str.format template)

# The answer to anything that is not the client's fault (logged as an error, with frames).
INTERNAL: Answer = (500, "Internal Server Error", "internal_error", "Unexpected server error.")


def _bad_request(message: str) -> Answer:
    return (400, "Bad Request", "bad_request", message)


# gunicorn 27's Worker.handle_error (gunicorn/workers/base.py) maps exceptions to statuses;
# this is that table (the response-header errors come first: they subclass InvalidHeader but
# are the application's fault, a 500), with its reason phrases fixed (it sends "501 Bad
# Request" and "500 Bad Request") and its messages replaced: they repeat request bytes.
# One deliberate difference: a malformed PROXY v2 header (InvalidProxyHeader, missing from
# gunicorn's list, hence a 500 there) is a 400 like a malformed PROXY v1 line.
# Codes follow Werkzeug's names for the status, as the app's own HTTP errors do.
ANSWERS: tuple[tuple[type[BaseException] | tuple[type[BaseException], ...], Answer], ...] = (
    ((InvalidResponseHeader, InvalidResponseHeaderName), INTERNAL),
    (
        InvalidRequestLine,
        _bad_request(
            "The request line is not valid HTTP/1.1: expected 'METHOD /path HTTP/1.1' in ASCII,"
            " with any other byte of the path or query percent-encoded."
        ),
    ),
    (InvalidRequestMethod, _bad_request("The request method is not a valid HTTP method.")),
    (InvalidHTTPVersion, _bad_request("The HTTP version is not supported: use HTTP/1.0 or HTTP/1.1.")),
    (
        UnsupportedTransferCoding,
        (501, "Not Implemented", "not_implemented", "The only supported Transfer-Encoding is chunked."),
    ),
    (ConfigurationProblem, (500, "Internal Server Error", "internal_error", "The server is misconfigured.")),
    (ObsoleteFolding, _bad_request("A request header is folded over several lines, which HTTP/1.1 forbids.")),
    (
        (InvalidHeader, InvalidHeaderName),
        _bad_request(
            "A request header is malformed: a name that is not a token, a value with control characters,"
            " or a Content-Length or Transfer-Encoding that is invalid or contradicts another."
        ),
    ),
    (
        LimitRequestLine,
        (
            414,
            "URI Too Long",
            "request_uri_too_long",
            "The request line is longer than this server accepts ({limit_request_line} bytes): shorten the URL.",
        ),
    ),
    (
        ExpectationFailed,
        (
            417,
            "Expectation Failed",
            "expectation_failed",
            "The only Expect header this server supports is 100-continue.",
        ),
    ),
    (
        LimitRequestHeaders,
        (
            431,
            "Request Header Fields Too Large",
            "request_header_fields_too_large",
            "The request headers are larger than this server accepts: at most {limit_request_fields} fields"
            " of at most {limit_request_field_size} bytes each.",
        ),
    ),
    ((InvalidProxyLine, InvalidProxyHeader), _bad_request("The PROXY protocol header is malformed.")),
    (
        ForbiddenProxyRequest,
        (403, "Forbidden", "forbidden", "PROXY protocol requests are not accepted from this peer."),
    ),
    (InvalidSchemeHeaders, _bad_request("The request's forwarded-scheme headers contradict each other.")),
    (
        (InvalidChunkSize, ChunkMissingTerminator, InvalidChunkExtension),
        _bad_request("The request body's chunked encoding is malformed."),
    ),
    (InvalidH2CPreface, _bad_request("Expected the HTTP/2 connection preface.")),
    (SSLError, (403, "Forbidden", "forbidden", "The TLS handshake or record was rejected.")),
)


def error_answer(exc: BaseException) -> Answer:
    """(status, reason, code, message template) for an exception gunicorn hands its worker."""
    for kinds, answer in ANSWERS:
        if isinstance(exc, kinds):
            return answer
    return INTERNAL


def render_error(status: int, reason: str, code: str, message: str) -> bytes:
    """A complete HTTP/1.1 answer with the JSON error shape; the connection closes after it."""
    body = json.dumps({"error": code, "message": message}).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\n"
        "Connection: close\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        "\r\n"
    )
    return head.encode("ascii") + body


def closing_when_asked(app: Any) -> Any:
    """Let the application close the connection with `Connection: close` in its answer.

    gunicorn drops hop-by-hop headers from an application's answer and announces keep-alive;
    after a 413 it then gives up draining the unread body and closes the connection anyway,
    so a client sending its next request on it gets no answer. Asking gunicorn's response to
    close makes the answer say so.
    """

    def wrapped(environ: dict[str, Any], start_response: Any) -> Any:
        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            if any(name.lower() == "connection" and value.strip().lower() == "close" for name, value in headers):
                force_close = getattr(getattr(start_response, "__self__", None), "force_close", None)
                if force_close is not None:
                    force_close()
            return start_response(status, headers, exc_info)

        return app(environ, start)

    return wrapped


class JsonErrorWorker(ThreadWorker):
    """gunicorn's threaded worker whose own error answers are JSON and whose logs hold no request data."""

    def load_wsgi(self):  # gunicorn's
        super().load_wsgi()
        self.wsgi = closing_when_asked(self.wsgi)

    def handle_error(self, req, client, addr, exc):  # gunicorn's signature
        answer = error_answer(exc)
        status, reason, code, template = answer
        message = template.format(
            limit_request_line=self.cfg.limit_request_line,
            limit_request_fields=self.cfg.limit_request_fields,
            limit_request_field_size=self.cfg.limit_request_field_size,
        )
        name = type(exc).__name__
        if answer is not INTERNAL:  # the client's fault, as gunicorn classes it
            self.log.warning("Invalid request: %d %s", status, name)
        else:
            # The frames say where it failed; the exception's text and the request's
            # line may hold secrets, so neither is logged. (The access log, which
            # gunicorn's handler also writes, is off: accesslog = None.)
            frames = "".join(traceback.format_tb(exc.__traceback__))
            self.log.error("Error handling request: %d %s\n%s", status, name, frames.rstrip())
        try:
            util.write_nonblock(client, render_error(status, reason, code, message))
        except Exception:
            self.log.debug("Failed to send error message.")

    def _keepalive_after(self, conn, keepalive):  # gthread's (27.0.1), run after the answer is sent
        # It drains a body the application did not read (a GET's, or a POST refused before
        # reading it); broken chunking found there went to handle_error, which wrote a second,
        # unrequested answer after the first. The answer is out: close the connection instead.
        try:
            return super()._keepalive_after(conn, keepalive)
        except ParseException as exc:
            self.log.warning("Invalid request body, left unread: %s; connection closed", type(exc).__name__)
            return False
