"""Test-side stand-ins for the two parties deskbridge talks to.

`DeskSimulator` polls POST /desk/pull as Zoho Desk does (SPEC A1, A2, B3): it keeps the
`channelState` of 200 answers only, stores tickets and threads by `extId`, can be told
that an answer was lost, and records every protocol violation it sees (a thread before
its ticket, a changed resend, a malformed answer) in `problems`.

`ExternalService` is the messaging service: it sends signed inbound webhooks (SPEC B5).
Both talk to the app through a `Transport`: the Flask test client, or real HTTP.
"""

from __future__ import annotations

import http.client
import re
import threading
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

import orjson
from flask import Flask

from tests.support import desk_pull_body, signed_headers

DESK_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
DESK_LIMIT = 1000  # Desk takes at most this many tickets and threads per answer (SPEC A2)
_UNSET: Any = object()


class Transport(Protocol):
    def __call__(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, Any]:
        """POST body to path; the answer's status and parsed JSON body (None if not JSON)."""
        ...


def _parse(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None


class FlaskTransport:
    """Requests through the Flask test client; a fresh client per call, so threads may share it."""

    def __init__(self, app: Flask) -> None:
        self.app = app

    def __call__(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, Any]:
        answer = self.app.test_client().post(path, data=body, headers=headers)
        return answer.status_code, _parse(answer.get_data())


class HttpTransport:
    """Requests over real HTTP to a server on 127.0.0.1, one connection per call."""

    def __init__(self, base_url: str) -> None:
        parts = urlsplit(base_url)
        assert parts.hostname == "127.0.0.1" and parts.port
        self.host, self.port = parts.hostname, parts.port

    def __call__(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, Any]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
        try:
            conn.request("POST", path, body=body, headers={"Content-Type": "application/json", **headers})
            answer = conn.getresponse()
            return answer.status, _parse(answer.read())
        finally:
            conn.close()


@dataclass
class PullAnswer:
    """One answer to a pull, as Desk received it."""

    sent_state: str | None
    status: int
    body: Any
    dropped: bool

    @property
    def threads(self) -> list[dict[str, Any]]:
        return self.body["data"]["threads"]

    @property
    def tickets(self) -> list[dict[str, Any]]:
        return self.body["data"]["tickets"]

    @property
    def thread_ids(self) -> list[str]:
        return [item["extId"] for item in self.threads]

    @property
    def ticket_ids(self) -> list[str]:
        return [item["extId"] for item in self.tickets]

    @property
    def state(self) -> str | None:
        return self.body.get("channelState")


@dataclass
class DeskSimulator:
    """Zoho Desk's side of pull, for one installation of the channel."""

    transport: Transport
    channel: dict[str, Any]
    org_id: str = "42"
    state: str | None = None
    check_span: bool = True  # turn off when feeding it damaged states on purpose
    tickets: dict[str, dict[str, Any]] = field(default_factory=dict)
    threads: dict[str, dict[str, Any]] = field(default_factory=dict)
    deliveries: Counter[str] = field(default_factory=Counter)  # in accepted answers, resends included
    new_deliveries: Counter[str] = field(default_factory=Counter)  # arrivals of an extId not yet stored
    answers: list[PullAnswer] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    _thread_parents: set[str] = field(default_factory=set, repr=False)  # extParentIds of stored threads
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def pull(self, *, drop: bool = False, state: str | None = _UNSET) -> PullAnswer:
        """Poll once with the stored state (or `state`); with drop, the answer is lost on its way."""
        with self._lock:
            sent_state = self.state if state is _UNSET else state
        body = desk_pull_body(self.channel, state=sent_state)
        status, answer_body = self.transport(
            f"/desk/pull?orgId={self.org_id}&securityContext=sim", orjson.dumps(body), {}
        )
        answer = PullAnswer(sent_state, status, answer_body, drop)
        with self._lock:
            self.answers.append(answer)
            if self._well_formed(answer) and not drop:
                self._accept(answer)
        return answer

    def pull_together(self, count: int, *, drop: Iterable[int] = ()) -> list[PullAnswer]:
        """Run `count` pulls at the same moment, all carrying the currently stored state."""
        dropped = set(drop)
        with self._lock:
            sent_state = self.state
        barrier = threading.Barrier(count)
        results: list[PullAnswer | BaseException | None] = [None] * count

        def one(index: int) -> None:
            try:
                barrier.wait(timeout=30)
                results[index] = self.pull(drop=index in dropped, state=sent_state)
            except BaseException as exc:  # surfaced below, in the test's thread
                results[index] = exc

        workers = [threading.Thread(target=one, args=(index,)) for index in range(count)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=60)
        answers = [result for result in results if isinstance(result, PullAnswer)]
        if len(answers) != count:
            raise AssertionError(f"a concurrent pull failed: {results!r}")
        return answers

    def drain(self, max_pulls: int = 1000) -> int:
        """Pull until an answer brings no thread; the number of pulls made."""
        for count in range(1, max_pulls + 1):
            answer = self.pull()
            if answer.status != 200 or not answer.threads:
                return count
        raise AssertionError(f"still receiving threads after {max_pulls} pulls")

    def assert_exactly_once(self, expected_ids: Iterable[str], *, resends_allowed: bool = False) -> None:
        """Every expected message arrived as a thread once, nothing else arrived, no violation."""
        expected = set(expected_ids)
        assert not self.problems, self.problems
        missing = expected - set(self.threads)
        extra = set(self.threads) - expected
        assert not missing, f"never delivered to Desk: {sorted(missing)}"
        assert not extra, f"delivered but never accepted inbound: {sorted(extra)}"
        repeated = {ext_id: count for ext_id, count in self.new_deliveries.items() if count != 1}
        assert not repeated, f"created more than once in Desk: {repeated}"
        if not resends_allowed:
            resent = {ext_id: count for ext_id, count in self.deliveries.items() if count != 1}
            assert not resent, f"delivered again after Desk had accepted them: {resent}"

    def _well_formed(self, answer: PullAnswer) -> bool:
        """Check an answer's shape against SPEC A2/A3; record what is wrong."""
        if answer.status != 200:
            self.problems.append(f"pull answered {answer.status}: {answer.body}")
            return False
        body = answer.body
        if not isinstance(body, dict) or set(body) - {"channelState", "data"} or not isinstance(body.get("data"), dict):
            self.problems.append(f"not a sync object: {body!r}")
            return False
        data = body["data"]
        if set(data) != {"tickets", "threads"} or not all(isinstance(data[key], list) for key in data):
            self.problems.append(f"data is not {{tickets, threads}}: {data!r}")
            return False
        if len(data["tickets"]) > DESK_LIMIT or len(data["threads"]) > DESK_LIMIT:
            self.problems.append("more than 1000 tickets or threads in one answer")
        if "channelState" in body and not isinstance(body["channelState"], str):
            self.problems.append(f"channelState is not a string: {body['channelState']!r}")
        for item in data["tickets"] + data["threads"]:
            created = item.get("createdTime")
            if not DESK_TIME.match(str(created)):
                self.problems.append(f"{item.get('extId')}: createdTime {created!r} is not in Desk's format")
        ids = [item.get("extId") for item in data["threads"]]
        if len(ids) != len(set(ids)):
            self.problems.append(f"the same thread twice in one answer: {ids}")
        if self.check_span:
            self._check_span(answer)
        return True

    def _check_span(self, answer: PullAnswer) -> None:
        """A batch from cursor N to cursor M holds exactly M - N threads: no seq skipped.

        This reads `seq` from the state, in the format SPEC B3 gives ({"v", "seq", "mac"});
        states that do not parse (damaged ones) are not checked.
        """
        before, after = _cursor(answer.sent_state), _cursor(answer.state)
        if answer.state is None:
            if answer.threads:
                self.problems.append(f"threads {answer.thread_ids} without a new channelState")
        elif before is not None and after is not None and len(answer.threads) != after - before:
            self.problems.append(
                f"gap: the batch from seq {before} to {after} has {len(answer.threads)} threads"
            )

    def _accept(self, answer: PullAnswer) -> None:
        """Store an answer as Desk does: tickets, then threads, then the new state."""
        tickets_here = {item["extId"]: item for item in answer.tickets}
        for ext_id, ticket in tickets_here.items():
            known = self.tickets.get(ext_id)
            if known is None:
                if ext_id in self._thread_parents:
                    self.problems.append(f"ticket {ext_id} arrived after one of its threads")
                self.tickets[ext_id] = ticket
            elif known != ticket:
                self.problems.append(f"ticket {ext_id} changed on resend: {known} then {ticket}")
        for thread in answer.threads:
            ext_id = thread["extId"]
            if thread["extParentId"] not in self.tickets:
                self.problems.append(f"thread {ext_id} arrived before its ticket {thread['extParentId']}")
            self.deliveries[ext_id] += 1
            known = self.threads.get(ext_id)
            if known is None:
                self.new_deliveries[ext_id] += 1
                self.threads[ext_id] = thread
                self._thread_parents.add(thread["extParentId"])
            elif known != thread:
                self.problems.append(f"thread {ext_id} changed on resend: {known} then {thread}")
        if answer.state is not None:
            self.state = answer.state


def _cursor(state: str | None) -> int | None:
    """The seq a channelState carries; 0 for none; None when it is not readable."""
    if not state:
        return 0
    try:
        seq = orjson.loads(state).get("seq")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return seq if isinstance(seq, int) and not isinstance(seq, bool) else None


@dataclass
class ExternalService:
    """The messaging service: signs and sends messages to the inbound webhook."""

    transport: Transport
    channel: dict[str, Any]
    _count: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def send(self, payload: Any) -> tuple[int, Any]:
        """POST one message or a {"messages": [...]} batch, signed; status and answer."""
        raw = orjson.dumps(payload)
        with self._lock:
            self._count += 1
            webhook_id = f"evt_{self._count}"
        headers = signed_headers(self.channel["inbound"]["secret"], raw, msg_id=webhook_id)
        return self.transport(self.channel["inbound"]["path"], raw, headers)

    def send_ok(self, payload: Any) -> dict[str, list[str]]:
        """Send and insist on 200; the {accepted, duplicates} answer."""
        status, body = self.send(payload)
        assert status == 200, (status, body)
        return body


def message(ext_id: str, conversation_id: str = "c1", **fields: Any) -> dict[str, Any]:
    """An inbound message with a text body unless told otherwise."""
    if not {"text", "html", "attachments"} & set(fields):
        fields["text"] = f"text of {ext_id}"
    return {"id": ext_id, "conversation_id": conversation_id, **fields}
