"""SPEC B8 at the HTTP server: broken chunked framing, bodies over MAX_BODY_BYTES (chunked or
not) and the requests gunicorn itself refuses are all answered with the JSON error shape,
never with HTML, a 500 or a body cut short and accepted. Over raw sockets against gunicorn
as deployed (tests/live_server.py), plus read_body and the worker's error writer alone."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from io import BytesIO
from ssl import SSLError
from types import SimpleNamespace
from typing import Any

import pytest
from flask import Flask
from gunicorn.config import Config
from gunicorn.http import errors as gunicorn_errors
from gunicorn.http.body import Body, ChunkedReader
from gunicorn.http.unreader import IterUnreader
from gunicorn.workers.base import Worker

from app.domain.errors import MalformedRequest, TooLarge
from app.web.body import read_body
from app.web.server import JsonErrorWorker
from tests.conftest import ADMIN_TOKEN
from tests.live_server import LiveServer, parse_answer, running_server
from tests.support import desk_pull_body, desk_push_body

LIMIT = 4096  # the servers' MAX_BODY_BYTES
PADDING = b" " * (100 * 1024)
SECRET = "s3cr3t-ctx-7f3a9"  # stands for Desk's securityContext: never in an answer or a log line
ENDPOINTS = ["desk-pull", "desk-push", "inbound", "admin-channels"]


@pytest.fixture(scope="module")
def server(backend_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """One server per backend for the module, refusing bodies over LIMIT bytes."""
    with running_server(backend_url, tmp_path_factory.mktemp("live"), MAX_BODY_BYTES=str(LIMIT)) as live:
        yield live


def endpoint(name: str, channel: dict[str, Any]) -> tuple[str, bytes, dict[str, Any]]:
    """(target, extra header lines, a JSON body for it: valid, if not always accepted) for one POST endpoint."""
    if name == "desk-pull":
        return f"/desk/pull?orgId=1&securityContext={SECRET}", b"", desk_pull_body(channel)
    if name == "desk-push":
        return f"/desk/push?orgId=1&securityContext={SECRET}", b"", desk_push_body(channel)
    if name == "inbound":
        return f"/inbound/{channel['id']}", b"", {"messages": []}
    assert name == "admin-channels"
    authorization = f"Authorization: Bearer {ADMIN_TOKEN}\r\n".encode()
    return "/api/channels", authorization, {"connector": "webhook", "outbound_url": "http://127.0.0.1:9/unused"}


def post(target: str, headers: bytes, framing: bytes, body: bytes) -> bytes:
    """A POST as sent over the wire; framing is the Content-Length or Transfer-Encoding line."""
    start = f"POST {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nConnection: close\r\n"
    return start.encode() + headers + framing + b"\r\n" + body


def chunked(body: bytes, size: int = 16 * 1024) -> bytes:
    """body in well-formed chunks of at most size bytes, then the last chunk."""
    pieces = [body[at : at + size] for at in range(0, len(body), size)]
    return b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces) + b"0\r\n\r\n"


CHUNKED = b"Transfer-Encoding: chunked\r\n"


def assert_json_error(raw: bytes, status: int, code: str) -> dict[str, Any]:
    """The answer is `status` with the JSON error shape and the given code."""
    answer = parse_answer(raw)
    assert answer.status == status, raw[:400]
    assert answer.headers.get("content-type", "").split(";")[0].strip() == "application/json", answer.headers
    assert int(answer.headers["content-length"]) == len(answer.body)
    body = json.loads(answer.body.decode("utf-8"))
    assert isinstance(body, dict), body
    assert isinstance(body.get("error"), str) and isinstance(body.get("message"), str) and body["message"], body
    assert body["error"] == code, body
    return body


# --- Each POST endpoint, through gunicorn -------------------------------------------------


@pytest.mark.parametrize("name", ENDPOINTS)
def test_a_bad_chunk_size_is_a_json_400(server: LiveServer, channel: dict[str, Any], name: str) -> None:
    target, headers, _ = endpoint(name, channel)
    raw = server.raw(post(target, headers, CHUNKED, b"zz\r\n{}\r\n0\r\n\r\n"))
    assert_json_error(raw, 400, "malformed_body")


@pytest.mark.parametrize("name", ENDPOINTS)
def test_a_chunk_missing_its_terminator_is_a_json_400(server: LiveServer, channel: dict[str, Any], name: str) -> None:
    target, headers, _ = endpoint(name, channel)
    # A 5-byte chunk followed by "XX" where its CRLF belongs.
    raw = server.raw(post(target, headers, CHUNKED, b"5\r\n{}   XX0\r\n\r\n"))
    assert_json_error(raw, 400, "malformed_body")


@pytest.mark.parametrize("name", ENDPOINTS)
def test_a_chunked_body_over_the_limit_is_a_json_413_not_cut_short_and_accepted(
    server: LiveServer, channel: dict[str, Any], name: str
) -> None:
    target, headers, body = endpoint(name, channel)
    raw = server.raw(post(target, headers, CHUNKED, chunked(json.dumps(body).encode() + PADDING)))
    assert_json_error(raw, 413, "request_entity_too_large")


@pytest.mark.parametrize("name", ENDPOINTS)
def test_a_content_length_body_over_the_limit_is_a_json_413(
    server: LiveServer, channel: dict[str, Any], name: str
) -> None:
    target, headers, body = endpoint(name, channel)
    data = json.dumps(body).encode() + PADDING
    raw = server.raw(post(target, headers, b"Content-Length: %d\r\n" % len(data), data))
    assert_json_error(raw, 413, "request_entity_too_large")


def padded_pull(channel: dict[str, Any], size: int) -> bytes:
    """A valid pull body, padded with spaces to exactly size bytes."""
    body = json.dumps(desk_pull_body(channel)).encode()
    assert len(body) <= size
    return body + b" " * (size - len(body))


def test_a_chunked_body_of_exactly_the_limit_is_read_whole_and_accepted(
    server: LiveServer, channel: dict[str, Any]
) -> None:
    target, headers, _ = endpoint("desk-pull", channel)
    raw = server.raw(post(target, headers, CHUNKED, chunked(padded_pull(channel, LIMIT), size=1000)))
    answer = parse_answer(raw)
    assert answer.status == 200, answer.body[:300]
    assert "data" in answer.json()


def test_a_chunked_body_one_byte_over_the_limit_is_a_json_413(server: LiveServer, channel: dict[str, Any]) -> None:
    target, headers, _ = endpoint("desk-pull", channel)
    raw = server.raw(post(target, headers, CHUNKED, chunked(padded_pull(channel, LIMIT + 1), size=1000)))
    assert_json_error(raw, 413, "request_entity_too_large")


# --- Requests gunicorn refuses before the application sees them ---------------------------

HOST = b"Host: 127.0.0.1\r\n"
QUERY = f"securityContext={SECRET}".encode()
REFUSED = [
    pytest.param(
        b"GET /healthz?" + QUERY + b" HTTP/1.1\r\n" + HOST + b"X-A: b\x01c\r\n\r\n",
        400,
        "bad_request",
        id="control-byte-in-a-header-value",
    ),
    pytest.param(
        b"GET /healthz?" + QUERY + b" HTTP/1.1\r\n" + HOST + b"X-A: " + b"a" * 9000 + b"\r\n\r\n",
        431,
        "request_header_fields_too_large",
        id="header-line-over-8190-bytes",
    ),
    pytest.param(
        b"GET /healthz?" + QUERY + b"&pad=" + b"a" * 5000 + b" HTTP/1.1\r\n" + HOST + b"\r\n",
        414,
        "request_uri_too_long",
        id="request-line-over-4094-bytes",
    ),
    pytest.param(
        b"GET /desk/\xff\xfe?" + QUERY + b" HTTP/1.1\r\n" + HOST + b"\r\n",
        400,
        "bad_request",
        id="raw-non-ascii-bytes-in-the-target",
    ),
    pytest.param(
        b"\x16\x03\x01 hello " + QUERY + b"\r\n" + HOST + b"\r\n", 400, "bad_request", id="garbage-request-line"
    ),
    pytest.param(
        b"GET /healthz?" + QUERY + b" HTTP/7.1\r\n" + HOST + b"\r\n", 400, "bad_request", id="unknown-http-version"
    ),
    pytest.param(
        b"POST /desk/pull?" + QUERY + b" HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: br\r\n\r\n",
        501,
        "not_implemented",
        id="unsupported-transfer-coding",
    ),
    pytest.param(
        b"POST /desk/pull?" + QUERY + b" HTTP/1.1\r\n" + HOST + b"Expect: 200-ok\r\nContent-Length: 2\r\n\r\n{}",
        417,
        "expectation_failed",
        id="unsupported-expectation",
    ),
]


@pytest.mark.parametrize(("request_bytes", "status", "code"), REFUSED)
def test_a_request_the_server_refuses_gets_a_json_answer_that_echoes_nothing(
    server: LiveServer, request_bytes: bytes, status: int, code: str
) -> None:
    mark = server.log_mark()
    raw = server.raw(request_bytes)
    assert_json_error(raw, status, code)
    answer = parse_answer(raw)
    assert answer.headers.get("connection") == "close"
    assert answer.body.isascii()
    assert SECRET.encode() not in raw
    # The log says what was refused, and nothing of the request itself.
    server.wait_for_log(f"Invalid request: {status} ", since=mark)
    assert SECRET not in "".join(server.log_lines()[mark:])


def test_the_server_keeps_serving_after_malformed_requests(server: LiveServer, channel: dict[str, Any]) -> None:
    boots = sum("Booting worker" in line for line in server.log_lines())
    for request_bytes, _, _ in (param.values for param in REFUSED):
        assert parse_answer(server.raw(request_bytes)).status >= 400
    target, headers, _ = endpoint("desk-pull", channel)
    parse_answer(server.raw(post(target, headers, CHUNKED, b"zz\r\n{}\r\n0\r\n\r\n")))
    parse_answer(server.raw(post(target, headers, CHUNKED, chunked(b"{}" + PADDING))))
    answer = parse_answer(server.raw(b"GET /healthz HTTP/1.1\r\n" + HOST + b"Connection: close\r\n\r\n"))
    assert (answer.status, answer.json()) == (200, {"status": "ok"})
    assert sum("Booting worker" in line for line in server.log_lines()) == boots  # no worker was replaced


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET /healthz HTTP/1.1\r\n" + HOST + CHUNKED + b"\r\nzz\r\n\r\n", 200),
        (b"POST /api/channels HTTP/1.1\r\n" + HOST + CHUNKED + b"\r\nzz\r\n\r\n", 401),
    ],
    ids=["get-with-a-body", "post-refused-before-its-body-is-read"],
)
def test_a_broken_body_the_application_did_not_read_gets_no_second_answer(
    server: LiveServer, request_bytes: bytes, status: int
) -> None:
    # Kept alive, so gunicorn drains the unread body after answering, and finds it broken.
    answer = parse_answer(server.raw(request_bytes, until_close=True))
    assert answer.status == status
    assert len(answer.body) == int(answer.headers["content-length"]), answer.body  # nothing after the answer


# --- The worker's error writer alone: the 500 path and gunicorn's own mapping -------------


class RecordingLog:
    """Stands in for gunicorn's logger: keeps each line as it would be written."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def _record(self, message: str, *args: Any, **_: Any) -> None:
        self.lines.append(message % args if args else message)

    debug = info = warning = error = critical = exception = _record

    def access(self, *args: Any) -> None:
        pass


def written_by(handle_error: Any, exc: BaseException, req: Any = None) -> tuple[bytes, RecordingLog]:
    """What a worker's handle_error sends on a connection, and what it logs."""
    log = RecordingLog()
    worker = SimpleNamespace(cfg=Config(), log=log)
    ours, theirs = socket.socketpair()
    with ours, theirs:
        handle_error(worker, req, ours, ("127.0.0.1", 40000), exc)
        ours.close()
        theirs.settimeout(5)
        received = b""
        while chunk := theirs.recv(65536):
            received += chunk
    return received, log


def raised(exc: BaseException) -> BaseException:
    """exc with a traceback, as the worker gets it."""
    try:
        raise exc
    except BaseException as caught:
        return caught


def test_an_application_failure_outside_flask_is_a_json_500_and_logs_no_request_data() -> None:
    req = SimpleNamespace(method="GET", uri=f"/desk/pull?securityContext={SECRET}")
    raw, log = written_by(JsonErrorWorker.handle_error, raised(RuntimeError(f"failed on {SECRET}")), req)
    assert_json_error(raw, 500, "internal_error")
    assert parse_answer(raw).headers.get("connection") == "close"
    logged = "\n".join(log.lines)
    assert "500 RuntimeError" in logged and ", in raised" in logged  # the status, the class, where
    assert SECRET not in logged


def test_a_bad_header_the_application_sends_is_a_json_500_not_the_clients_fault() -> None:
    raw, _ = written_by(JsonErrorWorker.handle_error, gunicorn_errors.InvalidResponseHeader("X-Bad"))
    assert_json_error(raw, 500, "internal_error")


# Every exception gunicorn's mapping names (InvalidProxyHeader, a 500 there, is deliberately a 400 here).
GUNICORN_ERRORS = [
    gunicorn_errors.InvalidRequestLine("x"),
    gunicorn_errors.InvalidRequestMethod("x"),
    gunicorn_errors.InvalidHTTPVersion("x"),
    gunicorn_errors.InvalidHeader("x"),
    gunicorn_errors.InvalidHeaderName("x"),
    gunicorn_errors.InvalidResponseHeader("x"),
    gunicorn_errors.InvalidResponseHeaderName("x"),
    gunicorn_errors.ObsoleteFolding("x"),
    gunicorn_errors.LimitRequestLine(5000, 4094),
    gunicorn_errors.LimitRequestHeaders("x"),
    gunicorn_errors.ExpectationFailed("x"),
    gunicorn_errors.UnsupportedTransferCoding("x"),
    gunicorn_errors.ConfigurationProblem("x"),
    gunicorn_errors.InvalidProxyLine("x"),
    gunicorn_errors.ForbiddenProxyRequest("x"),
    gunicorn_errors.InvalidSchemeHeaders(),
    gunicorn_errors.InvalidChunkSize(b"x"),
    gunicorn_errors.ChunkMissingTerminator(b"x"),
    gunicorn_errors.InvalidChunkExtension("x"),
    gunicorn_errors.InvalidH2CPreface(b"x"),
    SSLError(),
    RuntimeError("x"),
]


@pytest.mark.parametrize("exc", GUNICORN_ERRORS, ids=lambda exc: type(exc).__name__)
def test_the_json_answer_has_the_status_gunicorn_itself_gives(exc: BaseException) -> None:
    theirs, _ = written_by(Worker.handle_error, exc)
    ours, _ = written_by(JsonErrorWorker.handle_error, exc)
    assert parse_answer(ours).status == parse_answer(theirs).status
    assert parse_answer(ours).json()["error"]


# --- read_body alone, under Flask's test request context -----------------------------------

body_app = Flask(__name__)


class Failing(BytesIO):
    """An input stream whose reads raise exc."""

    def __init__(self, exc: BaseException) -> None:
        super().__init__()
        self.exc = exc

    def read(self, size: int | None = -1) -> bytes:
        raise self.exc


def streamed(stream: Any) -> dict[str, Any]:
    """test_request_context arguments for a body without Content-Length that the server ends
    (as gunicorn does for chunked bodies)."""
    return {
        "method": "POST",
        "headers": {"Transfer-Encoding": "chunked"},
        "environ_overrides": {"wsgi.input": stream, "wsgi.input_terminated": True},
    }


def gunicorn_chunked(wire: bytes) -> Body:
    """gunicorn's own reader over a chunked body as it came over the wire."""
    return Body(ChunkedReader(SimpleNamespace(), IterUnreader([wire])))


def test_read_body_returns_a_content_length_body_within_the_limit() -> None:
    with body_app.test_request_context(method="POST", data=b'{"a": 1}'):
        assert read_body(1024) == b'{"a": 1}'


def test_read_body_refuses_a_content_length_over_the_limit_without_reading_it() -> None:
    stream = Failing(AssertionError("the body was read"))
    overrides = {"wsgi.input": stream, "CONTENT_LENGTH": "1025"}
    with body_app.test_request_context(method="POST", environ_overrides=overrides), pytest.raises(TooLarge) as caught:
        read_body(1024)
    assert caught.value.code == "request_entity_too_large"


def test_read_body_returns_a_chunked_body_of_exactly_the_limit() -> None:
    body = b"x" * 1024
    with body_app.test_request_context(**streamed(gunicorn_chunked(chunked(body, size=100)))):
        assert read_body(1024) == body


def test_read_body_refuses_a_chunked_body_over_the_limit_instead_of_cutting_it() -> None:
    context = body_app.test_request_context(**streamed(gunicorn_chunked(chunked(b"x" * 1025))))
    with context, pytest.raises(TooLarge) as caught:
        read_body(1024)
    assert caught.value.code == "request_entity_too_large"


@pytest.mark.parametrize(
    ("wire", "reason"),
    [
        (b"zz\r\n{}\r\n0\r\n\r\n", "chunk size"),
        (b"5\r\n{}   XX0\r\n\r\n", "CRLF"),
        (b"5\r\n{}", "ended"),
    ],
    ids=["bad-chunk-size", "chunk-missing-its-terminator", "body-ends-mid-chunk"],
)
def test_read_body_turns_broken_chunked_framing_into_malformed_request(wire: bytes, reason: str) -> None:
    with body_app.test_request_context(**streamed(gunicorn_chunked(wire))), pytest.raises(MalformedRequest) as caught:
        read_body(1024)
    assert caught.value.code == "malformed_body"
    assert caught.value.message.startswith("The request body could not be read: ")
    assert reason in caught.value.message


@pytest.mark.parametrize(
    "exc", [OSError("reset"), ValueError("closed"), TimeoutError()], ids=lambda e: type(e).__name__
)
def test_read_body_turns_a_failing_stream_into_malformed_request(exc: Exception) -> None:
    with body_app.test_request_context(**streamed(Failing(exc))), pytest.raises(MalformedRequest):
        read_body(1024)


def test_read_body_refuses_a_body_shorter_than_its_content_length() -> None:
    overrides = {"wsgi.input": BytesIO(b"{}"), "CONTENT_LENGTH": "10"}
    context = body_app.test_request_context(method="POST", environ_overrides=overrides)
    with context, pytest.raises(MalformedRequest):
        read_body(1024)


def test_read_body_reads_nothing_from_a_stream_no_one_ends() -> None:
    # Neither Content-Length nor wsgi.input_terminated: reading could wait forever (Werkzeug's rule too).
    overrides = {"wsgi.input": Failing(AssertionError("the stream was read"))}
    with body_app.test_request_context(
        method="POST", headers={"Transfer-Encoding": "chunked"}, environ_overrides=overrides
    ):
        assert read_body(1024) == b""
