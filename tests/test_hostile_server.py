"""SPEC B8 and C1.5 over real HTTP: hostile input at every endpoint of gunicorn as deployed
(tests/live_server.py) gets an answer below 500 in the JSON error shape, and leaves the
server serving, its log free of tracebacks and the database free of half-written rows.

One server per backend for the module, with a real channel whose outbound URL is a
receiver answering 200, so that pushes which pass validation are delivered. Requests are
signed (inbound) or carry valid credentials (pull, push, admin) so that the body parsers
are reached. Ordinary requests go through a keep-alive requests.Session; raw sockets are
used only where the framing, the bytes of a header or the request target must be exact.
tests/test_hostile_input.py fuzzes the same parsers through Flask's test client; this
module adds what only the deployed server sees: framing, headers, query strings, paths.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import itertools
import json
import random
import re
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

import pytest
import requests
from sqlalchemy import Engine, bindparam, create_engine, text

from tests.conftest import ADMIN_TOKEN
from tests.live_server import LiveServer, running_server
from tests.receiver import Receiver, running_receiver

LIMIT = 65536  # the server's MAX_BODY_BYTES
SEED = 20261130
ORG = "4242"
CONTEXT = "ctx-hostile-0"
PULL = f"/desk/pull?orgId={ORG}&securityContext={CONTEXT}"
PUSH = f"/desk/push?orgId={ORG}&securityContext={CONTEXT}"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
JSON_TYPE = {"Content-Type": "application/json"}
TIMEOUT = 15
SENTINEL = "@@hostile-value@@"
BAD_LOG_LINES = ("Traceback", "Error handling request")

# Values put in place of one field at a time, as the raw JSON text that is sent, so that
# escapes the JSON encoder of a client would never write (a lone surrogate) reach the server.
ODD_VALUES: list[tuple[str, str]] = [
    ("null", "null"),
    ("true", "true"),
    ("false", "false"),
    ("zero", "0"),
    ("negative", "-1"),
    ("int64-overflow", "9223372036854775808"),
    ("uint64-overflow", "18446744073709551616"),
    ("400-digit-int", "1" + "0" * 400),
    ("float", "1.5"),
    ("max-float", "1.7976931348623157e308"),
    ("negative-zero", "-0.0"),
    ("tiny-float", "5e-324"),
    ("empty-string", '""'),
    ("whitespace", '" \\t\\r\\n\\u00a0\\u2028 "'),
    ("nul", '"\\u0000"'),
    ("nul-inside", '"ch_\\u0000x"'),
    ("lone-high-surrogate", '"\\ud800"'),
    ("lone-low-surrogate", '"x\\udfff"'),
    ("reversed-surrogates", '"\\udc00\\ud800"'),
    ("surrogate-pair", '"\\ud83d\\udcac"'),
    ("control-characters", '"\\u0001\\u001b[31m\\u007f"'),
    ("markup", json.dumps("<script>alert(1)</script><img src=x onerror=alert(1)>")),
    ("number-as-string", '"12345"'),
    ("iso-time", '"2026-01-02T03:04:05Z"'),
    ("time-after-year-9999-in-utc", '"9999-12-31T23:30:00-01:00"'),
    ("time-before-year-1-in-utc", '"0001-01-01T00:30:00+01:00"'),
    ("url", '"https://example.com/x"'),
    ("javascript-url", '"javascript:alert(1)"'),
    ("255-characters", json.dumps("x" * 255)),
    ("256-characters", json.dumps("x" * 256)),
    ("255-two-byte-characters", json.dumps("é" * 255, ensure_ascii=False)),
    ("2049-character-url", json.dumps("https://example.com/" + "a" * 2029)),
    ("long-string", json.dumps("x" * 20_000)),
    ("long-unicode", json.dumps("é💬" * 2000, ensure_ascii=False)),
    ("empty-array", "[]"),
    ("array-of-null", "[null]"),
    ("array-of-strings", '["a", "b"]'),
    ("empty-object", "{}"),
    ("nested-object", '{"a": {"b": {"c": []}}}'),
    ("object-with-nul-key", '{"\\u0000": "\\u0000"}'),
    ("object-with-extreme-numbers", '{"n": 18446744073709551615, "f": 1e308, "z": -0.0}'),
    ("deep-arrays-1000", "[" * 1000 + "]" * 1000),
    ("deep-objects-1000", '{"a":' * 1000 + "1" + "}" * 1000),
    ("deep-arrays-10000", "[" * 10_000 + "]" * 10_000),
]

FieldPath = tuple[str | int, ...]


# --- Answers and findings -----------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """One HTTP answer, from requests or parsed off a socket."""

    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes

    @classmethod
    def of(cls, response: requests.Response) -> Answer:
        return cls(response.status_code, {k.lower(): v for k, v in response.headers.items()}, response.content)

    def json(self) -> Any:
        return json.loads(self.body)


def parse_answers(raw: bytes, head: bool = False) -> tuple[list[Answer], bytes]:
    """Every final answer in the bytes a connection delivered (1xx skipped), and what is left over."""
    answers: list[Answer] = []
    while raw:
        end = raw.find(b"\r\n\r\n")
        match = re.match(rb"HTTP/1\.[01] (\d{3})[^\r\n]*", raw)
        if end < 0 or match is None:
            break
        lines = raw[:end].decode("latin-1").split("\r\n")[1:]
        headers: dict[str, str] = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        status = int(match.group(1))
        rest = raw[end + 4 :]
        if status < 200:
            raw = rest
            continue
        length = 0 if head else int(headers.get("content-length", len(rest)))
        answers.append(Answer(status, headers, rest[:length]))
        raw = rest[length:]
    return answers, raw


def shape_problems(answer: Answer, head: bool = False) -> list[str]:
    """What is wrong with an answer under SPEC B8: a 5xx, a type other than JSON, a body that is
    not JSON, an error without string `error` and `message`."""
    problems = []
    if answer.status >= 500:
        problems.append(f"status {answer.status}")
    content_type = answer.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json":
        problems.append(f"Content-Type {answer.headers.get('content-type')!r}")
        return problems
    if head:
        return problems
    try:
        body = answer.json()
    except ValueError:
        return [*problems, "body is not JSON"]
    if answer.status >= 400 and not (
        isinstance(body, dict) and isinstance(body.get("error"), str) and isinstance(body.get("message"), str)
    ):
        problems.append("error body without string error and message")
    return problems


class Findings:
    """Collects what is wrong with the answers of one test, and fails it once, naming each request."""

    def __init__(self, live: Live) -> None:
        self.live = live
        self.mark = live.server.log_mark()
        self.items: list[str] = []
        self.checked = 0
        self.statuses: set[int] = set()

    def check(self, what: str, answer: Answer, expect: Iterable[int] | None = None, head: bool = False) -> Answer:
        self.checked += 1
        self.statuses.add(answer.status)
        problems = shape_problems(answer, head)
        allowed = set(expect) if expect is not None else None
        if allowed is not None and answer.status not in allowed:
            problems.append(f"status {answer.status}, expected one of {sorted(allowed)}")
        if problems:
            self.items.append(f"{what}: {'; '.join(problems)}; got {answer.status} {answer.body[:160]!r}")
        return answer

    def check_raw(
        self, what: str, received: bytes, expect: Iterable[int] | None = None, head: bool = False
    ) -> Answer | None:
        """Check every answer a raw exchange got; `expect` applies to the first."""
        answers, left = parse_answers(received, head)
        if not answers:
            self.checked += 1
            self.items.append(f"{what}: no HTTP answer; got {received[:160]!r}")
            return None
        for index, answer in enumerate(answers):
            self.check(what if index == 0 else f"{what} (answer {index + 1})", answer, expect if index == 0 else None,
                       head)
        if left:
            self.items.append(f"{what}: bytes after the last answer: {left[:160]!r}")
        return answers[0]

    def verify(self, reached: Iterable[int] = ()) -> None:
        """Fail with every finding and every traceback the server logged meanwhile; `reached`
        are statuses some answer must have had (the parser was reached: some accepted, some refused)."""
        missing = set(reached) - self.statuses
        if missing:
            self.items.append(f"no answer had status {sorted(missing)}: the requests did not reach the parser")
        settle(self.live)
        logged = [line for line in self.live.server.log_lines()[self.mark :] if any(b in line for b in BAD_LOG_LINES)]
        assert self.checked > 0
        report = self.items[:40] + [f"... and {len(self.items) - 40} more"] * (len(self.items) > 40)
        excerpts = [line[:3000] for line in logged[:5]]
        assert not self.items and not logged, (
            f"{len(self.items)} of {self.checked} answers are wrong:\n" + "\n".join(report)
            + "\nserver log:\n" + "\n".join(excerpts)
        )


# --- The server, its channel and its receiver -----------------------------------------------


@dataclass
class Live:
    """The module's server, with a channel delivering to a receiver, and what the tests sent."""

    server: LiveServer
    receiver: Receiver
    session: requests.Session
    channel: dict[str, Any]
    engine: Engine
    baseline_channels: set[str]
    numbers: Iterator[int] = field(default_factory=itertools.count)
    accepted_messages: set[str] = field(default_factory=set)  # inbound ids answered as accepted
    refused_messages: set[str] = field(default_factory=set)  # ids of valid messages in refused requests
    sent_replies: set[str] = field(default_factory=set)  # Desk reply ids answered 200
    refused_replies: set[str] = field(default_factory=set)  # Desk reply ids of pushes refused as invalid

    def next(self) -> int:
        return next(self.numbers)

    @property
    def credentials(self) -> dict[str, str]:
        return dict(self.channel["desk"])

    def post(self, target: str, body: bytes, headers: dict[str, str] | None = None) -> Answer:
        response = self.session.post(
            self.server.url + target, data=body, headers={**JSON_TYPE, **(headers or {})}, timeout=TIMEOUT
        )
        return Answer.of(response)

    def request(self, method: str, target: str, **kwargs: Any) -> Answer:
        return Answer.of(self.session.request(method, self.server.url + target, timeout=TIMEOUT, **kwargs))

    def exchange(self, data: bytes, half_close: bool = False) -> bytes:
        """Send bytes as they are and read until the server closes; half_close ends our side
        after sending (a body cut short)."""
        with socket.create_connection(("127.0.0.1", self.server.port), timeout=TIMEOUT) as sock:
            with suppress(BrokenPipeError, ConnectionResetError):
                sock.sendall(data)
                if half_close:
                    sock.shutdown(socket.SHUT_WR)
            received = bytearray()
            with suppress(ConnectionResetError):
                while chunk := sock.recv(65536):
                    received += chunk
            return bytes(received)


@pytest.fixture(scope="module")
def live(backend_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    engine = create_engine(backend_url)
    with engine.connect() as conn:
        baseline = set(conn.execute(text("SELECT id FROM channels")).scalars())
    settings = {"MAX_BODY_BYTES": str(LIMIT), "PUSH_DEADLINE_SECONDS": "2", "ALLOW_PRIVATE_OUTBOUND": "true"}
    try:
        with (
            running_receiver() as receiver,
            running_server(backend_url, tmp_path_factory.mktemp("hostile"), **settings) as server,
            requests.Session() as session,
        ):
            created = session.post(
                server.url + "/api/channels",
                json={"connector": "webhook", "outbound_url": receiver.url, "name": "hostile input"},
                headers=ADMIN,
                timeout=60,  # the worker may still be booting
            )
            assert created.status_code == 201, created.text
            channel = created.json()
            receiver.secret = channel["outbound"]["secret"]
            yield Live(server, receiver, session, channel, engine, baseline)
    finally:
        engine.dispose()


def settle(live: Live) -> None:
    """Return once the server has logged everything it did for the requests answered so far:
    one worker writes its log lines in order, so the access line of a later request marks that."""
    marker = f"settle-{live.next()}-{SEED}"
    mark = live.server.log_mark()
    # A connection of its own: a pooled one may have been closed by the server meanwhile.
    answers, _ = parse_answers(live.exchange(wire("GET", "/healthz", [f"X-Request-Id: {marker}"])))
    assert [answer.status for answer in answers] == [200], answers
    live.server.wait_for_log(marker, since=mark)


# --- Bodies --------------------------------------------------------------------------------


def with_value(template: Any, path: FieldPath, raw: str) -> bytes:
    """The JSON text of template with the value at path replaced by raw JSON text."""
    document = copy.deepcopy(template)
    if not path:
        return raw.encode()
    parent = document
    for step in path[:-1]:
        parent = parent[step]
    parent[path[-1]] = SENTINEL
    encoded = json.dumps(document)
    assert encoded.count(json.dumps(SENTINEL)) == 1
    return encoded.replace(json.dumps(SENTINEL), raw).encode()


def signed(secret: str, body: bytes, msg_id: str = "msg_hostile") -> dict[str, str]:
    """Standard Webhooks headers for raw body bytes (which need not be UTF-8)."""
    timestamp = str(int(time.time()))
    key = base64.b64decode(secret.removeprefix("whsec_"))
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": timestamp,
        "webhook-signature": "v1," + base64.b64encode(mac).decode(),
    }


def message(n: int) -> dict[str, Any]:
    """An inbound message with every field of SPEC B5 set."""
    return {
        "id": f"hostile-m{n}",
        "conversation_id": f"hostile-c{n}",
        "text": "Hello\nthere",
        "html": "<p>Hello <b>there</b></p>",
        "created_at": "2026-01-02T03:04:05Z",
        "subject": "A subject",
        "direction": "in",
        "author": {
            "id": "u1",
            "name": "Ann",
            "email": "ann@example.com",
            "phone": "+15550100",
            "avatar_url": "https://example.com/a.png",
        },
        "attachments": [
            {"url": "https://example.com/f.pdf", "name": "f.pdf", "content_type": "application/pdf", "size": 10}
        ],
        "can_reply": True,
        "permalink": "https://example.com/m",
    }


MESSAGE_FIELDS: list[FieldPath] = [
    ("id",),
    ("conversation_id",),
    ("text",),
    ("html",),
    ("created_at",),
    ("subject",),
    ("direction",),
    ("author",),
    ("author", "id"),
    ("author", "name"),
    ("author", "email"),
    ("author", "phone"),
    ("author", "avatar_url"),
    ("attachments",),
    ("attachments", 0),
    ("attachments", 0, "url"),
    ("attachments", 0, "name"),
    ("attachments", 0, "content_type"),
    ("attachments", 0, "size"),
    ("can_reply",),
    ("permalink",),
]


def push_body(live: Live, n: int) -> dict[str, Any]:
    """A push as Desk sends it, with our config params and every resource field set."""
    return {
        "configParams": {**live.credentials, "myConfigParam1": "v"},
        "resource": {
            "id": f"hostile-r{n}",
            "extParentId": f"hostile-c{n}",
            "replyToExtId": f"hostile-m{n}",
            "content": "Hi customer, thanks for writing to us",
            "summary": "Hi customer",
            "contentType": "text/plain",
            "hasAttach": True,
            "attachments": [{"name": "a.txt", "href": "https://example.com/a.txt", "size": 3}],
            "author": {
                "name": "John Snow",
                "email": "john.snow@example.com",
                "type": "AGENT",
                "photoURL": "https://example.com/photo",
            },
        },
    }


RESOURCE_FIELDS: list[FieldPath] = [
    ("resource",),
    ("resource", "id"),
    ("resource", "extParentId"),
    ("resource", "replyToExtId"),
    ("resource", "content"),
    ("resource", "summary"),
    ("resource", "contentType"),
    ("resource", "hasAttach"),
    ("resource", "attachments"),
    ("resource", "attachments", 0),
    ("resource", "author"),
    ("resource", "author", "name"),
    ("resource", "author", "email"),
    ("resource", "author", "type"),
    ("resource", "author", "photoURL"),
]


def pull_body(live: Live, state: str = "") -> dict[str, Any]:
    return {**live.credentials, "channelState": state, "myConfigParam1": "v"}


def admin_body(live: Live) -> dict[str, Any]:
    return {"connector": "webhook", "outbound_url": live.receiver.url, "name": "hostile", "org_id": None}


@dataclass(frozen=True)
class Endpoint:
    """A POST endpoint: where it is, a fresh valid body, and the headers that body needs."""

    name: str
    target: str
    body: Callable[[], bytes]
    headers: Callable[[bytes], dict[str, str]]
    ok: int


def endpoint(live: Live, name: str) -> Endpoint:
    secret = live.channel["inbound"]["secret"]
    if name == "pull":
        return Endpoint(name, PULL, lambda: json.dumps(pull_body(live)).encode(), lambda _: {}, 200)
    if name == "push":
        return Endpoint(name, PUSH, lambda: json.dumps(push_body(live, live.next())).encode(), lambda _: {}, 200)
    if name == "inbound":
        return Endpoint(
            name,
            live.channel["inbound"]["path"],
            lambda: json.dumps(message(live.next())).encode(),
            lambda body: signed(secret, body),
            200,
        )
    assert name == "admin"
    return Endpoint(name, "/api/channels", lambda: json.dumps(admin_body(live)).encode(), lambda _: ADMIN, 201)


ENDPOINTS = ["pull", "push", "inbound", "admin"]


def record_inbound(live: Live, answer: Answer, sent_ids: list[str]) -> None:
    """Remember what an inbound answer says was stored, or that nothing of the request was."""
    if answer.status == 200:
        body = answer.json()
        if isinstance(body, dict):
            live.accepted_messages.update(body.get("accepted") or [])
    elif answer.status < 500:
        live.refused_messages.update(sent_ids)


def record_push(live: Live, answer: Answer, reply_id: str | None) -> None:
    if reply_id is None:
        return
    if answer.status == 200:
        live.sent_replies.add(reply_id)
    elif answer.status in (400, 422):
        live.refused_replies.add(reply_id)


# --- Wrong JSON types at every field --------------------------------------------------------


@pytest.mark.parametrize("shape", ["single", "batch"])
def test_inbound_fields_of_any_type_are_answered_200_or_json_4xx_and_a_refused_batch_stores_nothing(
    live: Live, shape: str
) -> None:
    findings = Findings(live)
    secret = live.channel["inbound"]["secret"]
    target = live.channel["inbound"]["path"]
    fields: list[FieldPath] = MESSAGE_FIELDS if shape == "single" else [(), ("messages",), *MESSAGE_FIELDS]
    for path, (label, raw) in itertools.product(fields, ODD_VALUES):
        n = live.next()
        if shape == "single":
            template: Any = message(n)
            sent = [] if path == ("id",) else [template["id"]]
            body = with_value(template, path, raw)
        else:
            before, odd, after = message(n), message(live.next()), message(live.next())
            template = {"messages": [before, odd, after]}
            sent = [before["id"], after["id"]]
            where: FieldPath = ("messages",) if path == ("messages",) else ("messages", 1, *path)
            body = with_value(template, where, raw)
        answer = live.post(target, body, signed(secret, body, f"msg_{n}"))
        # Signed: the signature check passes and the body parser decides.
        findings.check(f"POST {target} {shape} {'.'.join(map(str, path)) or 'message'}={label}", answer,
                       expect={200, 400, 422})
        if answer.status == 200:
            assert set(answer.json()) == {"accepted", "duplicates"}, answer
        record_inbound(live, answer, sent)
    findings.verify(reached={200, 422})


def test_push_resource_fields_of_any_type_are_delivered_or_refused_as_json_4xx_before_any_ledger_entry(
    live: Live,
) -> None:
    findings = Findings(live)
    for path, (label, raw) in itertools.product(RESOURCE_FIELDS, ODD_VALUES):
        n = live.next()
        body = with_value(push_body(live, n), path, raw)
        answer = live.post(PUSH, body)
        findings.check(f"POST {PUSH} {'.'.join(map(str, path))}={label}", answer, expect={200, 400, 422})
        if answer.status == 200:
            assert answer.json()["direction"] == "out", answer
        record_push(live, answer, None if path in (("resource",), ("resource", "id")) else f"hostile-r{n}")
    findings.verify(reached={200, 422})


def test_push_config_params_of_any_type_are_refused_as_json_401_unless_the_credentials_survive(live: Live) -> None:
    findings = Findings(live)
    credentials = live.credentials
    as_list = [{"name": "channelId", "value": credentials["channelId"]},
               {"name": "channelToken", "value": credentials["channelToken"]}]
    cases: list[tuple[Callable[[int], dict[str, Any]], FieldPath]] = [
        (lambda n: push_body(live, n), ("configParams",)),
        (lambda n: push_body(live, n), ("configParams", "channelId")),
        (lambda n: push_body(live, n), ("configParams", "channelToken")),
        (lambda n: push_body(live, n), ("configParams", "myConfigParam1")),
        (lambda n: {**push_body(live, n), "configParams": copy.deepcopy(as_list)}, ("configParams", 0)),
        (lambda n: {**push_body(live, n), "configParams": copy.deepcopy(as_list)}, ("configParams", 0, "name")),
        (lambda n: {**push_body(live, n), "configParams": copy.deepcopy(as_list)}, ("configParams", 1, "value")),
    ]
    for (make, path), (label, raw) in itertools.product(cases, ODD_VALUES):
        n = live.next()
        answer = live.post(PUSH, with_value(make(n), path, raw))
        findings.check(f"POST {PUSH} {'.'.join(map(str, path))}={label}", answer, expect={200, 400, 401})
        record_push(live, answer, f"hostile-r{n}")
    findings.verify(reached={200, 401})


def drain(live: Live, state: str = "") -> tuple[list[dict[str, Any]], str]:
    """Pull until nothing is new; the threads received and the last channelState."""
    threads: list[dict[str, Any]] = []
    for _ in range(100):
        answer = live.post(PULL, json.dumps(pull_body(live, state)).encode())
        assert answer.status == 200, answer
        sync = answer.json()
        threads += sync["data"]["threads"]
        if not sync["data"]["threads"] and not sync["data"]["tickets"]:
            return threads, sync.get("channelState", state)
        state = sync["channelState"]
    pytest.fail("the pulls did not reach the end of the inbox")


def test_pull_channel_state_of_any_type_or_content_is_healed_with_200(live: Live) -> None:
    findings = Findings(live)
    first = json.dumps(message(live.next())).encode()
    stored = live.post(live.channel["inbound"]["path"], first, signed(live.channel["inbound"]["secret"], first))
    assert stored.status == 200, stored
    _, state = drain(live)  # a real state at the head: healed pulls resume there and stay small
    inner = json.loads(state)
    assert set(inner) == {"v", "seq", "mac"}
    for label, raw in ODD_VALUES:
        answer = live.post(PULL, with_value(pull_body(live, state), ("channelState",), raw))
        # A value the JSON parser refuses makes the whole body invalid (400); any other is healed.
        findings.check(f"POST {PULL} channelState={label}", answer, expect={200, 400})
        for key in ("v", "seq", "mac"):
            state_text = with_value(inner, (key,), raw).decode()
            answer = live.post(PULL, json.dumps(pull_body(live, state_text)).encode())
            findings.check(f"POST {PULL} channelState.{key}={label}", answer, expect={200})
        answer = live.post(PULL, json.dumps(pull_body(live, raw)).encode())
        findings.check(f"POST {PULL} channelState=<the JSON text {label} as a string>", answer, expect={200})
    findings.verify(reached={200})


def test_pull_credentials_and_params_of_any_type_are_answered_json_never_5xx(live: Live) -> None:
    findings = Findings(live)
    for key, (label, raw) in itertools.product(["channelId", "channelToken", "myConfigParam1"], ODD_VALUES):
        answer = live.post(PULL, with_value(pull_body(live), (key,), raw))
        expect = {200, 400} if key == "myConfigParam1" else {400, 401}
        findings.check(f"POST {PULL} {key}={label}", answer, expect=expect)
    findings.verify(reached={200, 401})


def test_admin_channel_fields_of_any_type_are_created_or_refused_as_json_4xx(live: Live) -> None:
    findings = Findings(live)
    for key, (label, raw) in itertools.product(["connector", "outbound_url", "name", "org_id", "extra"], ODD_VALUES):
        body = with_value({**admin_body(live), key: None}, (key,), raw)
        answer = live.post("/api/channels", body, ADMIN)
        findings.check(f"POST /api/channels {key}={label}", answer, expect={201, 400, 422})
    findings.verify(reached={201, 422})


# --- Odd JSON documents --------------------------------------------------------------------


def odd_documents(valid: bytes) -> list[tuple[str, bytes]]:
    """Bodies that are not one JSON object, or not quite (valid is a JSON object's text)."""
    text_ = valid.decode()
    first_key = re.match(r'\{"([^"]+)"', text_)
    assert first_key is not None
    key = first_key.group(1)
    return [
        ("empty", b""),
        ("whitespace", b" \r\n\t "),
        ("not-json", b"channelId=1&channelToken=2"),
        ("null", b"null"),
        ("true", b"true"),
        ("number", b"42"),
        ("infinite-number", b"1e400"),
        ("string", b'"{}"'),
        ("array", b"[]"),
        ("array-of-the-object", b"[" + valid + b"]"),
        ("deep-arrays-10000", b"[" * 10_000 + b"]" * 10_000),
        ("deep-objects-10000", b'{"a":' * 10_000 + b"1" + b"}" * 10_000),
        ("duplicate-key-last-null", valid[:-1] + f', "{key}": null}}'.encode()),
        ("duplicate-key-first-null", f'{{"{key}": null, '.encode() + valid[1:]),
        ("bom-prefix", b"\xef\xbb\xbf" + valid),
        ("utf-16", ("\ufeff" + text_).encode("utf-16-le")),
        ("invalid-utf8-byte", valid[:-1] + b', "x": "\xff"}'),
        ("lone-continuation-byte", valid[:-1] + b', "x": "\x80"}'),
        ("overlong-encoding", valid[:-1] + b', "x": "\xc0\xaf"}'),
        ("utf8-encoded-surrogate", valid[:-1] + b', "x": "\xed\xa0\x80"}'),
        ("truncated-utf8", valid[:-1] + b', "x": "\xe2\x82"}'),
        ("raw-nul-bytes", b"\x00" * 16),
        ("raw-nul-after", valid + b"\x00"),
        ("lone-surrogate-escape-in-extra-key", valid[:-1] + b', "\\ud800": 1}'),
        ("trailing-garbage", valid + b" trailing"),
        ("trailing-brace", valid + b"}"),
        ("two-objects", valid + valid),
        ("truncated", valid[:-1]),
        ("single-quotes", text_.replace('"', "'").encode()),
        ("trailing-comma", valid[:-1] + b",}"),
        ("comment", b"/* hi */" + valid),
        ("nan", valid[:-1] + b', "x": NaN}'),
        ("3000-keys", valid[:-1] + b"".join(b', "k%d": %d' % (i, i) for i in range(3000)) + b"}"),
    ]


@pytest.mark.parametrize("name", ENDPOINTS)
def test_odd_json_documents_are_answered_json_never_5xx(live: Live, name: str) -> None:
    findings = Findings(live)
    point = endpoint(live, name)
    for label, body in odd_documents(point.body()):
        answer = live.post(point.target, body, point.headers(body))
        # Not an object, or the object with one more or one fewer key: parsed, refused or accepted.
        findings.check(f"POST {point.target} body={label}", answer, expect={point.ok, 400, 401, 422})
    findings.verify(reached={point.ok, 400})


# --- Framing: chunked, Content-Length, Transfer-Encoding --------------------------------------


def wire(
    method: str, target: str | bytes, lines: Iterable[bytes | str], body: bytes = b"", close: bool = True
) -> bytes:
    """A request as it goes over the wire; lines are header lines without their CRLF."""
    start = target.encode() if isinstance(target, str) else target
    head = [method.encode() + b" " + start + b" HTTP/1.1", b"Host: 127.0.0.1"]
    head += [line.encode("latin-1") if isinstance(line, str) else line for line in lines]
    if close and not any(line.lower().startswith(b"connection:") for line in head):
        head.append(b"Connection: close")
    return b"\r\n".join(head) + b"\r\n\r\n" + body


def header_lines(headers: dict[str, str]) -> list[str]:
    return [f"{name}: {value}" for name, value in headers.items()]


def chunked(body: bytes, size: int = 7, extension: bytes = b"") -> bytes:
    pieces = [body[at : at + size] for at in range(0, len(body), size)]
    return b"".join(b"%x%s\r\n%s\r\n" % (len(piece), extension, piece) for piece in pieces) + b"0\r\n\r\n"


def padded(body: bytes, size: int) -> bytes:
    """A JSON body with spaces after it up to size bytes."""
    assert len(body) <= size
    return body + b" " * (size - len(body))


CHUNKED = "Transfer-Encoding: chunked"
OK = 0  # in an expected set: the endpoint's own success status
NO_LENGTH = "NO-LENGTH"  # a framing line meaning: send neither Content-Length nor Transfer-Encoding


def upper_hex_chunk(body: bytes) -> bytes:
    return b"%X\r\n%s\r\n0\r\n\r\n" % (len(body), body)


# (label, framing header lines, the wire body made from a valid body, half-close after sending,
# the statuses the first answer may have: empty means any below 500)
FRAMINGS: list[tuple[str, list[str], Callable[[bytes], bytes], bool, set[int]]] = [
    ("chunked", [CHUNKED], chunked, False, {OK}),
    ("chunked-one-byte-chunks", [CHUNKED], lambda b: chunked(b, 1), False, {OK}),
    ("chunked-with-extensions", [CHUNKED], lambda b: chunked(b, 50, b";name=value;x"), False, {OK}),
    ("chunked-with-trailer", [CHUNKED], lambda b: chunked(b)[:-2] + b"X-Trailer: 1\r\n\r\n", False, {OK}),
    ("chunked-upper-case-hex", [CHUNKED], upper_hex_chunk, False, {OK}),
    ("chunked-exactly-the-limit", [CHUNKED], lambda b: chunked(padded(b, LIMIT), 4096), False, {OK}),
    ("chunked-one-over-the-limit", [CHUNKED], lambda b: chunked(padded(b, LIMIT + 1), 4096), False, {413}),
    ("chunked-far-over-the-limit", [CHUNKED], lambda b: chunked(padded(b, 4 * LIMIT), 65536), False, {413}),
    ("chunked-one-huge-chunk-then-close", [CHUNKED], lambda b: b"%x\r\n" % (10 * LIMIT) + b, True, {400, 413}),
    ("chunked-size-not-hex", [CHUNKED], lambda b: b"zz\r\n" + b + b"\r\n0\r\n\r\n", False, {400}),
    ("chunked-negative-size", [CHUNKED], lambda b: b"-5\r\n" + b + b"\r\n0\r\n\r\n", False, {400}),
    ("chunked-size-overflow", [CHUNKED], lambda b: b"f" * 40 + b"\r\n" + b + b"\r\n0\r\n\r\n", True, {400, 413}),
    ("chunked-size-with-space", [CHUNKED], lambda b: b" %x\r\n%s\r\n0\r\n\r\n" % (len(b), b), True, set()),
    ("chunked-missing-terminator", [CHUNKED], lambda b: b"%x\r\n%sXX0\r\n\r\n" % (len(b), b), False, {400}),
    ("chunked-no-last-chunk-then-close", [CHUNKED], lambda b: b"%x\r\n%s\r\n" % (len(b), b), True, {400}),
    ("chunked-cut-mid-chunk-then-close", [CHUNKED], lambda b: b"%x\r\n%s" % (len(b) + 10, b), True, {400}),
    ("chunked-only-the-last-chunk", [CHUNKED], lambda b: b"0\r\n\r\n", False, {400, 401}),
    ("chunked-bare-lf", [CHUNKED], lambda b: b"%x\n%s\n0\n\n" % (len(b), b), True, {400}),
    ("content-length-exactly-the-limit", [], lambda b: padded(b, LIMIT), False, {OK}),
    ("content-length-one-over-the-limit", [], lambda b: padded(b, LIMIT + 1), False, {413}),
    ("content-length-longer-than-the-body-then-close", ["Content-Length: {longer}"], lambda b: b, True, {400}),
    ("content-length-shorter-than-the-body", ["Content-Length: {shorter}"], lambda b: b, False, {400, 401}),
    ("content-length-zero", ["Content-Length: 0"], lambda b: b, False, {400, 401}),
    ("content-length-huge-then-close", ["Content-Length: 99999999999999999999"], lambda b: b, True, {400, 413}),
    ("content-length-negative", ["Content-Length: -1"], lambda b: b, False, {400}),
    ("content-length-not-a-number", ["Content-Length: abc"], lambda b: b, False, {400}),
    ("content-length-with-plus", ["Content-Length: +{length}"], lambda b: b, False, {400}),
    ("content-length-twice-differing", ["Content-Length: {length}", "Content-Length: 1"], lambda b: b, False, {400}),
    ("content-length-twice-same", ["Content-Length: {length}", "Content-Length: {length}"], lambda b: b, False,
     {400, OK}),
    ("content-length-list", ["Content-Length: {length}, {length}"], lambda b: b, False, {400, OK}),
    ("content-length-and-chunked", ["Content-Length: {length}", CHUNKED], chunked, False, {400}),
    ("chunked-twice", [CHUNKED, CHUNKED], chunked, False, {400, 501}),
    ("chunked-listed-twice", ["Transfer-Encoding: chunked, chunked"], chunked, False, {400, 501}),
    ("gzip-then-chunked", ["Transfer-Encoding: gzip, chunked"], chunked, False, {400, 501, OK}),
    ("identity-transfer-encoding", ["Transfer-Encoding: identity"], lambda b: b, False, {400, 501}),
    ("no-length-no-transfer-encoding", [NO_LENGTH], lambda b: b, False, {400, 401}),
    ("expect-100-continue", ["Expect: 100-continue"], lambda b: b, False, {OK}),
    ("expect-100-continue-over-the-limit", ["Expect: 100-continue", "Content-Length: 10000000"], lambda b: b"",
     True, {413}),
]


@pytest.mark.parametrize("name", ENDPOINTS)
def test_odd_framing_is_answered_json_never_5xx_and_bodies_over_the_limit_are_413(live: Live, name: str) -> None:
    findings = Findings(live)
    point = endpoint(live, name)
    for label, lines, frame, half_close, expected in FRAMINGS:
        body = point.body()
        framed = frame(body)
        values = {"length": len(body), "longer": len(body) + 10, "shorter": len(body) - 1}
        framing = [line.format(**values) for line in lines if line != NO_LENGTH]
        framed_already = any(line.lower().startswith(("content-length", "transfer-")) for line in lines)
        if NO_LENGTH not in lines and not framed_already:
            framing.append(f"Content-Length: {len(framed)}")
        # The signature covers the body the server should end up with: what the framing carries.
        signed_body = padded(body, LIMIT) if "exactly-the-limit" in label else body
        headers = header_lines({**JSON_TYPE, **point.headers(signed_body)})
        received = live.exchange(wire("POST", point.target, headers + framing, framed), half_close)
        expect = {point.ok if status == OK else status for status in expected} or set(range(100, 500))
        findings.check_raw(f"POST {point.target} framing={label}", received, expect)
    # Two requests on one connection: the second must be read after the first's chunked body.
    body = point.body()
    first = wire("POST", point.target, [*header_lines({**JSON_TYPE, **point.headers(body)}), CHUNKED],
                 chunked(body), close=False)
    answers, left = parse_answers(live.exchange(first + wire("GET", "/healthz", [])))
    assert [answer.status for answer in answers] == [point.ok, 200] and not left, (answers, left)
    for answer in answers:
        findings.check(f"POST {point.target} pipelined", answer)
    findings.verify(reached={point.ok, 400, 413})


@pytest.mark.parametrize("name", ENDPOINTS)
def test_a_413_for_a_body_left_unread_announces_connection_close_or_answers_the_next_request(
    live: Live, name: str
) -> None:
    """A keep-alive client sends the next request on the same connection: after a 413 the
    server must say `Connection: close`, or read past the body and answer that request."""
    point = endpoint(live, name)
    body = padded(point.body(), LIMIT + 10_000)
    first = wire("POST", point.target, [*header_lines({**JSON_TYPE, **point.headers(body)}),
                                        f"Content-Length: {len(body)}"], body, close=False)
    answers, left = parse_answers(live.exchange(first + wire("GET", "/healthz", [])))
    assert answers and answers[0].status == 413, (answers, left)
    assert shape_problems(answers[0]) == []
    announced_close = answers[0].headers.get("connection", "").lower() == "close"
    assert announced_close or [answer.status for answer in answers] == [413, 200], (
        f"413 sent with Connection: {answers[0].headers.get('connection')!r}, then the next request on the"
        f" connection got {[answer.status for answer in answers[1:]]} (the server closed it)"
    )


# --- Odd headers ----------------------------------------------------------------------------

HEADER_CASES: list[tuple[str, list[bytes | str], bool]] = [
    # (label, extra header lines, whether the request stays valid: the endpoint's own answer expected)
    ("no-content-type", ["DROP-CONTENT-TYPE"], True),
    ("text-plain", ["DROP-CONTENT-TYPE", "Content-Type: text/plain"], True),
    ("form-urlencoded", ["DROP-CONTENT-TYPE", "Content-Type: application/x-www-form-urlencoded"], True),
    ("multipart", ["DROP-CONTENT-TYPE", "Content-Type: multipart/form-data; boundary=zzz"], True),
    ("charset-utf-16", ["DROP-CONTENT-TYPE", "Content-Type: application/json; charset=utf-16"], True),
    ("odd-content-type", ["DROP-CONTENT-TYPE", "Content-Type: ;;;/;=="], True),
    ("long-content-type", ["DROP-CONTENT-TYPE", "Content-Type: application/json; x=" + "a" * 8000], True),
    ("content-type-twice", ["Content-Type: text/html"], False),
    ("content-encoding-gzip", ["Content-Encoding: gzip"], True),
    ("accept-html", ["Accept: text/html"], True),
    ("request-id-garbage", ["X-Request-Id: }{\"\\'<script>%00%ff"], True),
    ("request-id-empty", ["X-Request-Id:"], True),
    ("request-id-64", ["X-Request-Id: " + "r" * 64], True),
    ("request-id-65", ["X-Request-Id: " + "r" * 65], True),
    ("request-id-long", ["X-Request-Id: " + "r" * 8000], True),
    ("request-id-latin1-bytes", [b"X-Request-Id: \xe9\xff\xfe"], True),
    ("request-id-utf8-bytes", [b"X-Request-Id: \xf0\x9f\x92\xac"], True),
    ("request-id-invalid-utf8", [b"X-Request-Id: \xc3\x28\x80"], True),
    ("request-id-with-tab", ["X-Request-Id: a\tb"], True),
    ("request-id-twice", ["X-Request-Id: one", "X-Request-Id: two"], True),
    ("request-id-del-byte", [b"X-Request-Id: a\x7fb"], False),
    ("long-header-value", ["X-Pad: " + "p" * 8100], True),
    ("85-headers", [f"X-Many-{i}: {i}" for i in range(85)], True),
    ("too-many-headers", [f"X-Many-{i}: {i}" for i in range(120)], False),
    ("non-ascii-header-value", [b"X-Odd: caf\xc3\xa9 \xff\x80"], True),
    ("non-ascii-header-name", [b"X-\xc3\xa9: 1"], False),
    ("space-in-header-name", ["X Odd: 1"], False),
    ("header-without-colon", ["X-No-Colon"], False),
    ("obsolete-line-folding", ["X-Folded: a", " b"], False),
    ("empty-header-name", [": value"], False),
    ("host-twice", ["Host: example.com"], False),
    ("upgrade-websocket", ["Connection: close", "Connection: Upgrade", "Upgrade: websocket"], False),
    (
        "upgrade-h2c",
        [
            "Connection: close",
            "Connection: Upgrade, HTTP2-Settings",
            "Upgrade: h2c",
            "HTTP2-Settings: AAMAAABkAAQAAP__",
        ],
        False,
    ),
    ("forwarded-headers", ["X-Forwarded-For: 1.2.3.4, ::1, garbage", "X-Forwarded-Proto: gopher", "Forwarded: x"],
     True),
    ("authorization-garbage", [b"Authorization: Bearer \xff\xfe" + b"a" * 100], True),
    ("authorization-twice", ["Authorization: Bearer wrong", f"Authorization: Bearer {ADMIN_TOKEN}"], True),
    ("webhook-signature-twice", ["webhook-signature: v1,AAAA"], True),
    ("webhook-timestamp-huge", ["REPLACE webhook-timestamp: " + "9" * 400], True),
    ("webhook-timestamp-nan", ["REPLACE webhook-timestamp: nan"], True),
    ("webhook-timestamp-inf", ["REPLACE webhook-timestamp: -inf"], True),
    ("webhook-timestamp-latin1-digit", [b"REPLACE webhook-timestamp: \xb2"], True),
    ("webhook-id-non-ascii", [b"REPLACE webhook-id: \xe9\xff"], True),
    ("webhook-signature-garbage", ["REPLACE webhook-signature: v1, v1,,, v2,x v1,!!!! ,"], True),
    ("webhook-signature-long", ["REPLACE webhook-signature: " + " ".join(["v1,AAAA"] * 900)], True),
]


def apply_header_case(base: dict[str, str], lines: list[bytes | str]) -> list[bytes | str]:
    """The base headers changed by one case: DROP-CONTENT-TYPE removes it, REPLACE overrides one."""
    headers: dict[str, str] = dict(base)
    extra: list[bytes | str] = []
    for line in lines:
        raw = line if isinstance(line, bytes) else line.encode("latin-1")
        if raw == b"DROP-CONTENT-TYPE":
            headers.pop("Content-Type", None)
        elif raw.startswith(b"REPLACE "):
            rest = raw.removeprefix(b"REPLACE ")
            headers.pop(rest.split(b":")[0].decode().strip(), None)
            extra.append(rest)
        else:
            extra.append(raw)
    return [*header_lines(headers), *extra]


@pytest.mark.parametrize("name", ENDPOINTS)
def test_odd_headers_are_answered_json_never_5xx(live: Live, name: str) -> None:
    findings = Findings(live)
    point = endpoint(live, name)
    for label, lines, stays_valid in HEADER_CASES:
        body = point.body()
        lines_ = apply_header_case({**JSON_TYPE, **point.headers(body)}, lines)
        received = live.exchange(wire("POST", point.target, [*lines_, f"Content-Length: {len(body)}"], body))
        # Headers the endpoint does not read leave it valid; those it reads may make it a 4xx.
        expect = {point.ok} if stays_valid and not label.startswith(("webhook-", "authorization-")) else None
        findings.check_raw(f"POST {point.target} headers={label}", received, expect)
    findings.verify(reached={point.ok})


# --- Odd query strings ----------------------------------------------------------------------

QUERIES: list[tuple[str, set[int]]] = [
    ("", {400}),
    ("?", {400}),
    ("?orgId=", {400}),
    ("?orgId", {400}),
    ("?orgid=1", {400}),
    ("?orgId=1&orgId=2", {200}),
    ("?orgId=&orgId=2", {200, 400}),
    ("?orgId=%00", {200, 400}),
    ("?orgId=a%00b", {200, 400}),
    ("?orgId=%zz", {200, 400}),
    ("?orgId=%", {200, 400}),
    ("?orgId=%f", {200, 400}),
    ("?orgId=%ff%fe", {200, 400}),
    ("?orgId=%ed%a0%80", {200, 400}),
    ("?orgId=%C3%A9%F0%9F%92%AC", {200, 400}),
    ("?orgId=+", {200, 400}),
    ("?orgId=%2B%26%3D", {200, 400}),
    ("?orgId=1;securityContext=x", {200, 400}),
    ("?orgId[]=1", {400}),
    ("?orgId=1&&&&", {200}),
    ("?&&orgId=1", {200}),
    ("?=1&orgId=1", {200}),
    ("?orgId=1#fragment", {200, 400}),
    ("?orgId=" + "9" * 3500, {200, 400}),
    ("?orgId=1&securityContext=" + "s" * 3500, {200}),
    ("?orgId=1&securityContext=%00", {200}),
    ("?orgId=1&securityContext=", {200}),
    ("?orgId=1&securityContext=a&securityContext=b", {200}),
    ("?orgId=1&securityContext=%ff%fe%00%ed%a0%80", {200}),
    ("?orgId=1&securityContext=" + "%00" * 1000, {200}),
    ("?orgId=1&pad=" + "a" * 5000, {414}),
]


@pytest.mark.parametrize("path", ["/desk/pull", "/desk/push"])
def test_odd_query_strings_are_answered_json_never_5xx(live: Live, path: str) -> None:
    findings = Findings(live)
    for query, expect in QUERIES:
        n = live.next()
        body = json.dumps(pull_body(live) if path == "/desk/pull" else push_body(live, n)).encode()
        request = wire("POST", path + query, [*header_lines(JSON_TYPE), f"Content-Length: {len(body)}"], body)
        answer = findings.check_raw(f"POST {path}{query[:80]}", live.exchange(request), expect)
        if path == "/desk/push" and answer is not None:
            record_push(live, answer, f"hostile-r{n}")
    findings.verify(reached={200, 400})


# --- Methods, unknown paths, odd path segments ----------------------------------------------


def known_paths(live: Live) -> list[str]:
    channel_id = live.channel["id"]
    return ["/desk/pull", "/desk/push", f"/inbound/{channel_id}", "/api/channels",
            f"/api/channels/{channel_id}/disable", "/healthz", "/readyz"]


def test_wrong_methods_are_json_405_and_head_is_json_without_a_body(live: Live) -> None:
    findings = Findings(live)
    for path, method in itertools.product(known_paths(live), ["GET", "PUT", "PATCH", "DELETE", "TRACE", "FOO"]):
        headers = ADMIN if path.startswith("/api/") else {}
        answer = live.request(method, path, headers=headers, data=b"{}")
        findings.check(f"{method} {path}", answer, expect={200, 401, 404, 405})
    for path in known_paths(live):
        received = live.exchange(wire("HEAD", path, header_lines(ADMIN)))
        findings.check_raw(f"HEAD {path}", received, expect={200, 405}, head=True)
    findings.verify()


def test_options_requests_are_answered_json(live: Live) -> None:
    findings = Findings(live)
    for path in [*known_paths(live), "/no/such/path"]:
        findings.check(f"OPTIONS {path}", live.request("OPTIONS", path), expect={200, 204, 401, 404, 405})
    findings.check_raw("OPTIONS *", live.exchange(wire("OPTIONS", "*", [])), expect={200, 204, 400, 404, 405})
    findings.verify()


UNKNOWN_TARGETS = [
    "/",
    "/desk",
    "/desk/",
    "/desk/pull/",
    "/desk/pull/extra",
    "/desk/PULL",
    "/DESK/pull",
    "//desk//pull",
    "/desk/./pull",
    "/desk/../desk/pull",
    "/api",
    "/api/",
    "/api/channels/",
    "/inbound",
    "/inbound/",
    "/inbound//",
    "/healthz/",
    "/static/app.js",
    "/favicon.ico",
    "/%00",
    "/%2e%2e/%2e%2e/etc/passwd",
    "/..%2f..%2fetc%2fpasswd",
    "/" + "a" * 3500,
    "/%F0%9F%92%AC",
    "/%ff%fe",
    "/;jsessionid=1",
    "/?" + "&".join(["x"] * 1000),
    "http://127.0.0.1/healthz",
    "http://evil.example/healthz",
]


def test_unknown_paths_are_json_404_for_every_method(live: Live) -> None:
    findings = Findings(live)
    for target, method in itertools.product(UNKNOWN_TARGETS, ["GET", "POST"]):
        body = b"{}" if method == "POST" else b""
        framing = [f"Content-Length: {len(body)}"] if method == "POST" else []
        received = live.exchange(wire(method, target, [*header_lines({**JSON_TYPE, **ADMIN}), *framing], body))
        # A few spell a known endpoint after all (absolute form, dot segments): they answer as it does.
        findings.check_raw(f"{method} {target[:80]}", received, expect={200, 400, 401, 404, 405})
    findings.verify()


def odd_segments(channel_id: str) -> list[str]:
    return [
        "%00",
        "ch_%00x",
        f"{channel_id}%00",
        "..",
        "%2e%2e",
        ".",
        "%20",
        "ch_a%20b",
        "a%2Fb",
        f"{channel_id}%2F..",
        "ch_x%3Fy",
        "ch_x;param",
        "%F0%9F%92%AC",
        "ch_%C3%A9",
        "%ff",
        "ch_%ed%a0%80",
        "ch_" + "a" * 61,
        "ch_" + "a" * 62,
        "ch_" + "a" * 3500,
        "x" * 3500,
        "%25",
        "%",
        "%zz",
        "ch_" + "%00" * 500,
    ]


@pytest.mark.parametrize("route", ["/inbound/{}", "/api/channels/{}/disable", "/api/channels/{}/enable"])
def test_odd_channel_id_segments_are_json_404_never_5xx(live: Live, route: str) -> None:
    findings = Findings(live)
    secret = live.channel["inbound"]["secret"]
    for segment in odd_segments(live.channel["id"]):
        target = route.format(segment)
        body = json.dumps(message(live.next())).encode()
        headers = {**JSON_TYPE, **signed(secret, body)} if route.startswith("/inbound") else {**JSON_TYPE, **ADMIN}
        request = wire("POST", target, [*header_lines(headers), f"Content-Length: {len(body)}"], body)
        findings.check_raw(f"POST {target[:100]}", live.exchange(request), expect={400, 404, 405})
    findings.verify()


def test_admin_requests_with_odd_credentials_or_queries_are_json_401_or_answered(live: Live) -> None:
    findings = Findings(live)
    rng = random.Random(SEED)
    authorizations = ["", "Bearer", "Bearer ", "bearer " + ADMIN_TOKEN, "Basic " + ADMIN_TOKEN, ADMIN_TOKEN,
                      "Bearer " + ADMIN_TOKEN + " extra", "Bearer " + ADMIN_TOKEN[:-1], "Bearer " + "x" * 8000,
                      "Bearer " + ADMIN_TOKEN + "\t"]
    for authorization in authorizations:
        answer = live.request("GET", "/api/channels", headers={"Authorization": authorization})
        findings.check(f"GET /api/channels Authorization={authorization[:40]!r}", answer, expect={200, 401})
    for _ in range(20):
        query = "&".join(f"{rng.choice(['limit', 'cursor', 'status', 'x'])}={rng.choice(['-1', '%00', 'a' * 300, ''])}"
                         for _ in range(rng.randint(1, 4)))
        answer = live.request("GET", f"/api/channels?{query}", headers=ADMIN)
        findings.check(f"GET /api/channels?{query[:80]}", answer, expect={200, 400, 422})
    # Disable and enable a channel of its own, with bodies of any shape: they are not read.
    spare = live.post("/api/channels", json.dumps(admin_body(live)).encode(), ADMIN)
    assert spare.status == 201, spare
    for action, (label, raw) in itertools.product(["disable", "enable"], rng.sample(ODD_VALUES, 10)):
        answer = live.post(f"/api/channels/{spare.json()['id']}/{action}", raw.encode(), ADMIN)
        findings.check(f"POST /api/channels/<id>/{action} body={label}", answer, expect={200})
    findings.verify()


# --- Afterwards ---------------------------------------------------------------------------


def test_after_the_hostile_input_the_server_serves_logged_no_traceback_and_left_nothing_half_written(
    live: Live,
) -> None:
    problems: list[str] = []

    def expect(condition: bool, problem: str) -> None:
        if not condition:
            problems.append(problem)

    answer = live.request("GET", "/healthz")
    expect((answer.status, answer.json()) == (200, {"status": "ok"}), f"/healthz answered {answer}")
    answer = live.request("GET", "/readyz")
    expect(answer.status == 200, f"/readyz answered {answer}")
    settle(live)
    lines = live.server.log_lines()
    bad = [line[:1500] for line in lines if any(needle in line for needle in BAD_LOG_LINES)]
    expect(not bad, f"{len(bad)} log lines with a traceback or a failed request, e.g.:\n" + "\n".join(bad[:3]))
    expect(sum("Booting worker" in line for line in lines) == 1, "the worker was replaced")

    # Everything stored can be pulled: the inbox from the start, in batches, all 200.
    try:
        threads, _ = drain(live)
    except AssertionError as exc:
        problems.append(f"the inbox could not be pulled: {exc}")
        threads = []
    pulled = {thread["extId"] for thread in threads}

    # Only what this module's server wrote: other modules' tests may leave rows of their own.
    def query(sql: str, **params: Any) -> list[Any]:
        statement = text(sql)
        if ":old" in sql:
            statement = statement.bindparams(bindparam("old", expanding=True))
            params["old"] = sorted(live.baseline_channels) or [""]
        with live.engine.connect() as conn:
            return list(conn.execute(statement, params).all())

    mine = {"id": live.channel["id"]}
    pending = query("SELECT desk_reply_id FROM replies WHERE status = 'pending' AND channel_id NOT IN :old")
    expect(not pending, f"replies left pending: {[row[0][:40] for row in pending]}")
    unfinished = query(
        "SELECT desk_reply_id, status FROM replies WHERE channel_id NOT IN :old AND NOT ("
        " (status = 'sent' AND external_id IS NOT NULL AND sent_at IS NOT NULL AND attempts > 0)"
        " OR (status = 'failed' AND last_error IS NOT NULL) OR status = 'pending')"
    )
    expect(not unfinished, f"ledger entries without the details of their outcome: {unfinished[:5]}")
    orphans = query(
        "SELECT m.ext_id FROM inbox_messages m LEFT JOIN conversations c"
        " ON c.channel_id = m.channel_id AND c.ext_id = m.conversation_ext_id"
        " WHERE c.id IS NULL AND m.channel_id NOT IN :old"
    )
    expect(not orphans, f"inbox messages without their conversation: {orphans[:5]}")
    empty_conversations = query(
        "SELECT c.ext_id FROM conversations c LEFT JOIN inbox_messages m"
        " ON m.channel_id = c.channel_id AND m.seq = c.first_seq AND m.conversation_ext_id = c.ext_id"
        " WHERE m.id IS NULL AND c.channel_id NOT IN :old"
    )
    expect(not empty_conversations, f"conversations without their first message: {empty_conversations[:5]}")
    channels = query("SELECT id, last_seq, settings, secrets, desk_token_hash FROM channels WHERE id NOT IN :old")
    last_seq = {row.id: row.last_seq for row in channels}
    for channel_id, count, low, high in query(
        "SELECT channel_id, count(*), min(seq), max(seq) FROM inbox_messages WHERE channel_id NOT IN :old"
        " GROUP BY channel_id"
    ):
        expect((count, low, high) == (last_seq[channel_id], 1, last_seq[channel_id]), f"seq gaps in {channel_id}")
    for row in channels:  # every channel created whole
        settings, secrets = (json.loads(v) if isinstance(v, str) else v for v in (row.settings, row.secrets))
        whole = bool(settings.get("outbound_url")) and set(secrets) == {"inbound_secret", "outbound_secret"}
        expect(whole and len(row.desk_token_hash) == 64, f"channel {row.id} is incomplete")

    stored = {row[0] for row in query("SELECT ext_id FROM inbox_messages WHERE channel_id = :id", **mine)}
    expect(live.accepted_messages <= stored, f"accepted but not stored: {sorted(live.accepted_messages - stored)[:5]}")
    expect(live.refused_messages.isdisjoint(stored), "messages of refused inbound requests were stored")
    expect(pulled == stored, f"pulled {len(pulled)} messages, stored {len(stored)}")
    replies = dict(query("SELECT desk_reply_id, status FROM replies WHERE channel_id = :id", **mine))
    unsent = sorted(reply_id for reply_id in live.sent_replies if replies.get(reply_id) != "sent")
    expect(not unsent, f"pushes answered 200 without a sent ledger entry: {unsent[:5]}")
    expect(live.refused_replies.isdisjoint(replies), "pushes refused as invalid left ledger entries")
    expect(len(live.receiver.received) >= len(live.sent_replies), "fewer deliveries than pushes answered 200")
    assert not problems, "\n".join(problems)
