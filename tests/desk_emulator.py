"""A Zoho Desk emulator: a real HTTP server on 127.0.0.1 that takes imports and makes pulls.

It is one Desk installation of the channel (SPEC A1-A6, B3, B14) with one store of tickets
and threads by `extId`, fed two ways, as the real Desk is:

- **Import** (SPEC A5, A6, B14): `POST /api/v1/invoke?orgId=<org>`, form-encoded fields
  `securityContext`, `requestURL`, `requestType`, `postBody`, `headers`, `queryParams`,
  `connectionLinkName`, and a `HASH` header. The HASH is checked here, independently of the
  app: lowercase hex HMAC-SHA256 keyed with the extension secret over
  `requestURL=..&requestType=..&queryParams=..&postBody=..&headers=..&connectionLinkName=..`
  (raw values in that order, absent or empty fields skipped, `securityContext` left out).
  `{{installationId}}` in `requestURL` is replaced by this installation's id; the only target
  served is `POST <base_url>/api/v1/channels/<installation_id>/import` (anything else: inner 404).
  The answer is HTTP 200 `{"response": "<json string>"}` holding `statusCode` and
  `statusMessage`, the target's answer (SPEC A6); a refused securityContext is such an inner
  401 `{"errorCode": "INVALID_OAUTH"}`.
- **Pull** (SPEC A2, B3): `pull()` posts `/desk/pull` to a deskbridge and keeps the answer's
  `channelState` only when the answer was accepted (200 and a sync object).

A bad or missing HASH is refused before the target is reached, so it is the Invoke API's own
answer, not an inner one. Zoho documents neither form; Zoho's REST errors are HTTP 4xx with an
`errorCode`, so by default it is HTTP 401 `{"errorCode": "INVALID_HASH"}`;
`DeskEmulator(..., hash_refusal="inner")` answers HTTP 200 with an inner 401 instead.

A sync object is applied as Desk does (SPEC A1, A3): tickets first, then threads; a known
`extId` updates, a new one creates (`creations`/`updates` count both, per kind); a thread
whose ticket is not stored yet is not stored, and is recorded in `errors` (C1.2); a present
`channelState` overwrites the stored one, an absent one leaves it.

Faults, for the next request(s) to the Invoke API (`fail(fault, times=1)`) or until `heal()`
(`fail(fault, times=None)`): see `FAULTS`. `refuse_context()` refuses every securityContext,
or one value, until `accept_context()`.

No pytest is needed by the emulator itself; the `desk_emulator` fixture is defined only when
pytest is importable.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import http.client
import json
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal
from urllib.parse import parse_qs, urlencode, urlsplit

EXTENSION_SECRET = "test-extension-secret"  # the fixture's secret (the manifest `secret`)
INVOKE_PATH = "/api/v1/invoke"
HASHED_FIELDS = ("requestURL", "requestType", "queryParams", "postBody", "headers", "connectionLinkName")
FORM_FIELDS = ("securityContext", *HASHED_FIELDS)

# Faults (names are the values of `fail`'s first argument).
AFTER_APPLY_DROP = "after_apply_drop"  # apply the import, then close the connection without an answer
BEFORE_APPLY_DROP = "before_apply_drop"  # answer as if applied (HTTP 200, inner 200), apply nothing
CLOSE_UNAPPLIED = "close_unapplied"  # apply nothing and close without an answer (the request was lost)
HTTP_500 = "http_500"  # HTTP 500, nothing applied
HTTP_503 = "http_503"  # HTTP 503, nothing applied
HTTP_429 = "http_429"  # HTTP 429 with Retry-After: 1, nothing applied
INNER_500 = "inner_500"  # HTTP 200 with an inner statusCode 500, nothing applied
INNER_429 = "inner_429"  # HTTP 200 with an inner statusCode 429, nothing applied
HANG = "hang"  # hold the request until `release()` (then serve it normally) or `close()` (then drop it)
REFUSE_CONTEXT = "refuse_context"  # inner 401 INVALID_OAUTH, whatever the securityContext
FAULTS = frozenset({
    AFTER_APPLY_DROP, BEFORE_APPLY_DROP, CLOSE_UNAPPLIED, HTTP_500, HTTP_503, HTTP_429, INNER_500, INNER_429, HANG,
    REFUSE_CONTEXT,
})
_HTTP_FAULTS = {HTTP_500: 500, HTTP_503: 503, HTTP_429: 429}
_INNER_FAULTS = {INNER_500: 500, INNER_429: 429}
INVALID_OAUTH = {"errorCode": "INVALID_OAUTH", "message": "The securityContext is invalid or has expired."}


def invoke_hash(secret: str, fields: dict[str, str]) -> str:
    """The Invoke API's HASH of a request's form fields (SPEC A6)."""
    message = "&".join(f"{name}={fields[name]}" for name in HASHED_FIELDS if fields.get(name))
    return hmac.new(secret.encode(), message.encode(), hashlib.sha256).hexdigest()


@dataclass
class InvokeRequest:
    """One request to the Invoke API as received, and what became of it."""

    path: str
    query: dict[str, str]
    form: dict[str, str]
    headers: dict[str, str]  # lower-case names
    received_at: float  # time.monotonic() on arrival
    hash_valid: bool
    fault: str | None
    outcome: str = "pending"  # e.g. applied, bad_hash, refused_context, not_found, dropped_after_apply, http_503

    @property
    def post_body(self) -> Any:
        """The parsed `postBody` (None if it is not JSON)."""
        try:
            return json.loads(self.form.get("postBody", ""))
        except ValueError:
            return None


@dataclass
class PullResult:
    """One pull as Desk made it: the state sent, the answer, and whether Desk accepted it."""

    sent_state: str | None
    status: int
    body: Any
    accepted: bool

    @property
    def thread_ids(self) -> list[str]:
        return [item["extId"] for item in self.body["data"]["threads"]] if self.accepted else []


@dataclass
class _Fault:
    name: str
    remaining: int | None  # None: until heal()


class DeskEmulator:
    """One Desk installation of the channel: an Invoke API server, a puller and a store."""

    def __init__(
        self, secret: str, *, installation_id: str = "inst-1", hash_refusal: Literal["http", "inner"] = "http"
    ) -> None:
        self.secret = secret
        self.installation_id = installation_id
        self.hash_refusal = hash_refusal
        self.tickets: dict[str, dict[str, Any]] = {}
        self.threads: dict[str, dict[str, Any]] = {}
        self.creations: dict[str, Counter[str]] = {"ticket": Counter(), "thread": Counter()}
        self.updates: dict[str, Counter[str]] = {"ticket": Counter(), "thread": Counter()}
        self.thread_arrivals: dict[str, float] = {}  # extId → time.monotonic() of its creation
        self.channel_state: str | None = None
        self.errors: list[str] = []
        self.pulls: list[PullResult] = []
        self._requests: list[InvokeRequest] = []
        self._faults: list[_Fault] = []
        self._refused_contexts: set[str] = set()
        self._refuse_every_context = False
        self._hanging = 0
        self._release = threading.Event()
        self._changed = threading.Condition()
        self.closing = threading.Event()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.desk = self
        self.port: int = self._server.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.invoke_url = f"{self.base_url}{INVOKE_PATH}"
        self.import_url = f"{self.base_url}/api/v1/channels/{{{{installationId}}}}/import"  # as a backend sends it
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="desk-emulator", daemon=True
        )

    # Life cycle

    def start(self) -> DeskEmulator:
        self._thread.start()
        return self

    def close(self) -> None:
        """Drop every hanging request, stop serving and wait for the handler threads."""
        self.closing.set()
        self._release.set()
        self._server.shutdown()
        self._server.server_close()  # joins the handler threads
        self._thread.join()

    # Faults

    def fail(self, fault: str, times: int | None = 1) -> None:
        """Apply `fault` to the next `times` Invoke API requests, or to all of them until heal() (None)."""
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; one of {sorted(FAULTS)}")
        with self._changed:
            if fault == HANG:
                self._release.clear()
            self._faults.append(_Fault(fault, times))

    def heal(self) -> None:
        """Forget every fault still queued or persistent (hanging requests stay held until release())."""
        with self._changed:
            self._faults.clear()

    def release(self) -> None:
        """Let every hanging request go on (it is then served normally)."""
        self._release.set()

    def refuse_context(self, value: str | None = None) -> None:
        """Refuse every securityContext (None) or this one, with an inner 401, until accept_context()."""
        with self._changed:
            if value is None:
                self._refuse_every_context = True
            else:
                self._refused_contexts.add(value)

    def accept_context(self, value: str | None = None) -> None:
        """Accept every securityContext again (None) or this one."""
        with self._changed:
            if value is None:
                self._refuse_every_context = False
                self._refused_contexts.clear()
            else:
                self._refused_contexts.discard(value)

    # Records

    @property
    def requests(self) -> list[InvokeRequest]:
        """Every Invoke API request so far, in arrival order."""
        with self._changed:
            return list(self._requests)

    def wait_for_requests(self, count: int, timeout: float = 5.0) -> list[InvokeRequest]:
        """Block until at least `count` Invoke API requests have arrived."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self._requests) >= count, timeout):
                raise TimeoutError(f"expected {count} Invoke API requests, got {len(self._requests)}")
            return list(self._requests)

    def wait_for_hanging(self, count: int = 1, timeout: float = 5.0) -> None:
        """Block until at least `count` requests are being held by HANG."""
        with self._changed:
            if not self._changed.wait_for(lambda: self._hanging >= count, timeout):
                raise TimeoutError(f"expected {count} hanging requests, got {self._hanging}")

    def wait_for_threads(self, ext_ids: Iterable[str], timeout: float = 10.0) -> dict[str, float]:
        """Block until every thread in `ext_ids` is stored; the monotonic time each was created."""
        wanted = list(ext_ids)
        with self._changed:
            if not self._changed.wait_for(lambda: all(ext_id in self.threads for ext_id in wanted), timeout):
                missing = [ext_id for ext_id in wanted if ext_id not in self.threads]
                raise TimeoutError(f"threads never reached Desk within {timeout} s: {missing}")
            return {ext_id: self.thread_arrivals[ext_id] for ext_id in wanted}

    def created_twice(self) -> dict[str, int]:
        """Every ticket or thread created more than once ("ticket:<extId>", "thread:<extId>"); C1.7 wants none."""
        with self._changed:
            return {
                f"{kind}:{ext_id}": count
                for kind, counter in self.creations.items()
                for ext_id, count in counter.items()
                if count > 1
            }

    # The store

    def apply(self, sync: Any, source: str = "import") -> tuple[int, dict[str, Any]]:
        """Apply a sync object as Desk does; the target's status and answer."""
        if not _is_sync(sync):
            with self._changed:
                self.errors.append(f"{source}: not a sync object: {sync!r:.200}")
            return 400, {"errorCode": "INVALID_DATA", "message": "Not a sync object."}
        now = time.monotonic()
        result: dict[str, list[dict[str, Any]]] = {"tickets": [], "threads": []}
        with self._changed:
            for ticket in sync["data"].get("tickets", []):
                ext_id = ticket.get("extId") if isinstance(ticket, dict) else None
                if not isinstance(ext_id, str) or not ext_id:
                    self.errors.append(f"{source}: a ticket without an extId: {ticket!r:.200}")
                    continue
                result["tickets"].append(self._store("ticket", self.tickets, ext_id, ticket))
            for thread in sync["data"].get("threads", []):
                ext_id = thread.get("extId") if isinstance(thread, dict) else None
                if not isinstance(ext_id, str) or not ext_id:
                    self.errors.append(f"{source}: a thread without an extId: {thread!r:.200}")
                    continue
                parent = thread.get("extParentId")
                if parent not in self.tickets:
                    self.errors.append(f"{source}: thread {ext_id} arrived before its ticket {parent}")
                    continue
                stored = self._store("thread", self.threads, ext_id, thread)
                if stored["created"]:
                    self.thread_arrivals[ext_id] = now
                result["threads"].append(stored)
            if "channelState" in sync:
                if isinstance(sync["channelState"], str):
                    self.channel_state = sync["channelState"]
                else:
                    self.errors.append(f"{source}: channelState is not a string: {sync['channelState']!r:.200}")
            self._changed.notify_all()
        return 200, {"data": result}

    def _store(self, kind: str, items: dict[str, dict[str, Any]], ext_id: str, item: dict[str, Any]) -> dict[str, Any]:
        created = ext_id not in items
        (self.creations if created else self.updates)[kind][ext_id] += 1
        items[ext_id] = item
        return {"extId": ext_id, "created": created}

    # Pull

    def pull(
        self,
        target: Any,
        channel: dict[str, Any],
        *,
        org_id: str = "42",
        security_context: str = "emulator-context",
        answer_lost: bool = False,
        state_lost: bool = False,
    ) -> PullResult:
        """Poll `target`'s /desk/pull with the stored state, as Desk does, and apply an accepted answer.

        `target` is a deskbridge base URL, a Flask app or a Flask test client. `answer_lost`: the
        answer never reached Desk (nothing applied); `state_lost`: it was applied but its
        channelState was not kept (so the next pull carries the old one).
        """
        with self._changed:
            sent_state = self.channel_state
        credentials = channel.get("desk", channel)
        body: dict[str, Any] = {"channelId": credentials["channelId"], "channelToken": credentials["channelToken"]}
        if sent_state is not None:
            body["channelState"] = sent_state
        path = f"/desk/pull?{urlencode({'orgId': org_id, 'securityContext': security_context})}"
        status, answer = _post_json(target, path, json.dumps(body).encode())
        accepted = status == 200 and _is_sync(answer) and not answer_lost
        if accepted:
            kept = {key: value for key, value in answer.items() if key != "channelState"} if state_lost else answer
            self.apply(kept, source="pull")
        result = PullResult(sent_state, status, answer, accepted)
        with self._changed:
            self.pulls.append(result)
        return result

    # Serving the Invoke API (called from the handler threads)

    def _arrive(self, request: InvokeRequest) -> None:
        """Record a request and give it the fault it is due."""
        with self._changed:
            if self._faults:
                fault = self._faults[0]
                request.fault = fault.name
                if fault.remaining is not None:
                    fault.remaining -= 1
                    if fault.remaining <= 0:
                        self._faults.pop(0)
            self._requests.append(request)
            self._changed.notify_all()

    def _hang(self) -> bool:
        """Hold a request until release() or close(); whether it may go on."""
        with self._changed:
            self._hanging += 1
            self._changed.notify_all()
        self._release.wait()
        with self._changed:
            self._hanging -= 1
        return not self.closing.is_set()

    def _context_refused(self, context: str) -> bool:
        with self._changed:
            return not context or self._refuse_every_context or context in self._refused_contexts

    def _set_outcome(self, request: InvokeRequest, outcome: str) -> None:
        with self._changed:
            request.outcome = outcome
            self._changed.notify_all()


def _is_sync(body: Any) -> bool:
    """Whether body has the shape of a sync object (SPEC A2)."""
    if not isinstance(body, dict) or not isinstance(body.get("data"), dict):
        return False
    data = body["data"]
    return isinstance(data.get("tickets", []), list) and isinstance(data.get("threads", []), list)


def _post_json(target: Any, path: str, raw: bytes) -> tuple[int, Any]:
    """POST raw JSON to path on a base URL, a Flask app or a Flask test client; status and parsed body."""
    if isinstance(target, str):
        parts = urlsplit(target)
        conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80, timeout=60)
        try:
            conn.request("POST", parts.path.rstrip("/") + path, body=raw, headers={"Content-Type": "application/json"})
            answer = conn.getresponse()
            status, payload = answer.status, answer.read()
        finally:
            conn.close()
    else:
        client = target.test_client() if hasattr(target, "test_client") else target
        response = client.post(path, data=raw, content_type="application/json")
        status, payload = response.status_code, response.get_data()
    try:
        return status, json.loads(payload)
    except ValueError:
        return status, None


class _Server(ThreadingHTTPServer):
    daemon_threads = False  # so that server_close() joins every handler thread
    block_on_close = True
    desk: DeskEmulator


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """Keep the test output quiet."""

    def do_POST(self) -> None:
        received_at = time.monotonic()
        desk = self.server.desk
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        url = urlsplit(self.path)
        fields = parse_qs(raw.decode(errors="replace"), keep_blank_values=True)
        form = {name: values[0] for name, values in fields.items()}
        query = {name: values[0] for name, values in parse_qs(url.query, keep_blank_values=True).items()}
        presented = self.headers.get("HASH") or ""
        hash_valid = bool(presented) and hmac.compare_digest(presented, invoke_hash(desk.secret, form))
        headers = {name.lower(): value for name, value in self.headers.items()}
        request = InvokeRequest(url.path, query, form, headers, received_at, hash_valid, None)
        desk._arrive(request)
        with contextlib.suppress(OSError):  # the client gave up on us: expected with hangs and drops
            self._serve(desk, request)

    def _serve(self, desk: DeskEmulator, request: InvokeRequest) -> None:
        fault = request.fault
        if request.path != INVOKE_PATH:
            desk._set_outcome(request, "unknown_path")
            self._json(404, {"errorCode": "URL_NOT_FOUND", "message": f"No such API: {request.path}"})
            return
        if fault == HANG and not desk._hang():
            desk._set_outcome(request, "dropped_on_close")
            self.close_connection = True
            return
        if fault in _HTTP_FAULTS:
            desk._set_outcome(request, fault)
            extra = {"Retry-After": "1"} if fault == HTTP_429 else {}
            self._json(_HTTP_FAULTS[fault], {"errorCode": "SERVICE_UNAVAILABLE", "message": fault}, extra)
            return
        if not request.hash_valid:
            desk._set_outcome(request, "bad_hash")
            refusal = {"errorCode": "INVALID_HASH", "message": "The HASH header does not match the request."}
            if desk.hash_refusal == "inner":
                self._inner(401, refusal)
            else:
                self._json(401, refusal)
            return
        if not request.query.get("orgId"):
            desk._set_outcome(request, "no_org")
            self._json(400, {"errorCode": "INVALID_DATA", "message": "orgId is required."})
            return
        if fault == REFUSE_CONTEXT or desk._context_refused(request.form.get("securityContext", "")):
            desk._set_outcome(request, "refused_context")
            self._inner(401, INVALID_OAUTH)
            return
        if fault == CLOSE_UNAPPLIED:
            desk._set_outcome(request, "dropped_unapplied")
            self.close_connection = True
            return
        target = request.form.get("requestURL", "").replace("{{installationId}}", desk.installation_id)
        own_import = f"{desk.base_url}/api/v1/channels/{desk.installation_id}/import"
        if target != own_import or request.form.get("requestType", "").upper() != "POST":
            desk._set_outcome(request, "not_found")
            self._inner(404, {"errorCode": "URL_NOT_FOUND", "message": f"No such target: {target}"})
            return
        if fault in _INNER_FAULTS:
            desk._set_outcome(request, fault)
            self._inner(_INNER_FAULTS[fault], {"errorCode": "INTERNAL_SERVER_ERROR", "message": fault})
            return
        if fault == BEFORE_APPLY_DROP:
            desk._set_outcome(request, "answered_unapplied")
            self._inner(200, {"data": {"tickets": [], "threads": []}})
            return
        status, message = desk.apply(request.post_body, source="import")
        if fault == AFTER_APPLY_DROP:
            desk._set_outcome(request, "dropped_after_apply")
            self.close_connection = True
            return
        desk._set_outcome(request, "applied" if status == 200 else f"rejected_{status}")
        self._inner(status, message)

    def _inner(self, status: int, message: Any) -> None:
        """HTTP 200 with the target's answer inside, as the Invoke API gives it."""
        self._json(200, {"response": json.dumps({"statusCode": status, "statusMessage": message})})

    def _json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)


@contextmanager
def running_desk(secret: str, *, installation_id: str = "inst-1", **options: Any) -> Iterator[DeskEmulator]:
    """A started Desk emulator, closed (every hanging request dropped) on exit."""
    desk = DeskEmulator(secret, installation_id=installation_id, **options).start()
    try:
        yield desk
    finally:
        desk.close()


try:
    import pytest
except ImportError:  # the benchmark runs without pytest
    pytest = None  # type: ignore[assignment]

if pytest is not None:

    @pytest.fixture
    def desk_emulator() -> Iterator[DeskEmulator]:
        """A running Desk emulator keyed with EXTENSION_SECRET, installation "inst-1"."""
        with running_desk(EXTENSION_SECRET) as desk:
            yield desk
