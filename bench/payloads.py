"""What the benchmark sends: inbound messages, signed webhook requests, Desk pull and push bodies."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from standardwebhooks.webhooks import Webhook

ORG_ID = "60001234"
# Desk sends its securityContext with every pull and push; deskbridge records it (SPEC B3).
SECURITY_CONTEXT = "eyJ0eXAiOiJKV1QiLCJhbGciOiJIUzI1NiJ9.eyJvcmdJZCI6IjYwMDAxMjM0In0.c2lnbmF0dXJl"
DESK_QUERY = f"orgId={ORG_ID}&securityContext={SECURITY_CONTEXT}"
EPOCH = datetime(2026, 1, 1, tzinfo=UTC)
# Desk's documented pull body carries every non-secure config param (SPEC A2).
DESK_CONFIG_PARAMS = {
    "myConfigParam1": "My value for configParam",
    "myConfigParam2": "My value for configParam2",
    "myConfigParam3": "My value for configParam3",
}


def message(prefix: str, n: int) -> dict[str, Any]:
    """The n-th inbound message of a series, as the external service would send it.

    Every message opens its own conversation (the worst case for ingest: one
    conversation row per message, and a full pull of N threads has N tickets).
    The mix: a subject on every 4th, HTML without a subject on every 20th (so its
    subject is derived from the HTML), an attachment on every 10th, a permalink on
    every 3rd.
    """
    item: dict[str, Any] = {
        "id": f"{prefix}-m{n}",
        "conversation_id": f"{prefix}-c{n}",
        "created_at": (EPOCH + timedelta(seconds=n)).isoformat().replace("+00:00", "Z"),
        "author": {"id": f"cust-{n % 5000}", "name": f"Customer {n % 5000}",
                   "email": f"customer{n % 5000}@example.com"},
    }
    if n % 20 == 10:
        item["html"] = (f"<p>Hello,</p><p>order <b>#{n}</b> has not arrived yet. Could you check the "
                        f"<a href=\"https://shop.example.com/orders/{n}\">delivery status</a>?</p>")
    else:
        item["text"] = (f"Hello, order #{n} has not arrived yet.\nCould you check the delivery status? "
                        f"I ordered it {n % 30} days ago and the tracking page shows nothing.")
    if n % 4 == 0:
        item["subject"] = f"Order #{n}: where is my parcel?"
    if n % 10 == 0:
        item["attachments"] = [{"url": f"https://files.example.com/{n}/photo.jpg", "name": "photo.jpg",
                                "content_type": "image/jpeg", "size": 204800}]
    if n % 3 == 0:
        item["permalink"] = f"https://chat.example.com/m/{n}"
    return item


def loaded_message(raw: dict[str, Any]) -> dict[str, Any]:
    """A message as the inbound schema loads it (defaults filled, created_at parsed)."""
    item = dict(raw)
    item["created_at"] = datetime.fromisoformat(raw["created_at"])
    item.setdefault("direction", "in")
    item.setdefault("can_reply", True)
    return item


def signed_headers(signer: Webhook, webhook_id: str, body: bytes, now: datetime | None = None) -> dict[str, str]:
    """Standard Webhooks headers for a body, signed at `now`."""
    now = now or datetime.now(UTC)
    return {"Content-Type": "application/json", "webhook-id": webhook_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": signer.sign(webhook_id, now, body.decode())}


def signed_lines(path: str, secret: str, bodies: Iterable[tuple[str, bytes]]) -> Iterator[str]:
    """Replay-file lines (see lua/replay.lua) of webhook requests signed now with `secret`."""
    signer = Webhook(secret)
    now = datetime.now(UTC)
    for webhook_id, body in bodies:
        headers = signed_headers(signer, webhook_id, body, now)
        yield "\t".join((path, *(part for pair in headers.items() for part in pair), body.decode()))


def write_replay_file(target: Path, lines: Iterable[str]) -> int:
    """Write replay lines to a file; the number of lines written."""
    count = 0
    with target.open("w") as handle:
        for line in lines:
            if "\n" in line:
                raise ValueError("a replay line must not contain a newline")
            handle.write(line)
            handle.write("\n")
            count += 1
    return count


def single_bodies(prefix: str, start: int, count: int) -> Iterator[tuple[str, bytes]]:
    """(webhook id, body) of one-message requests start .. start+count-1."""
    for n in range(start, start + count):
        yield f"wh-{prefix}-{n}", orjson.dumps(message(prefix, n))


def batch_body(prefix: str, numbers: Iterable[int]) -> bytes:
    """The body of one batch request with the given messages."""
    return orjson.dumps({"messages": [message(prefix, n) for n in numbers]})


def batch_bodies(prefix: str, start_batch: int, batches: int, size: int) -> Iterator[tuple[str, bytes]]:
    """(webhook id, body) of batch requests of `size` messages each."""
    for b in range(start_batch, start_batch + batches):
        yield f"wh-{prefix}-b{b}", batch_body(prefix, range(b * size, (b + 1) * size))


def pull_body(channel: dict[str, Any], state: str | None) -> dict[str, Any]:
    """Desk's pull body with our two config params and a channelState."""
    body: dict[str, Any] = {**DESK_CONFIG_PARAMS, "channelId": channel["desk"]["channelId"],
                            "channelToken": channel["desk"]["channelToken"]}
    if state is not None:
        body["channelState"] = state
    return body


def push_body(channel: dict[str, Any], reply_id: str) -> dict[str, Any]:
    """Desk's documented push body (SPEC A4) for a new reply id."""
    return {
        "configParams": {**DESK_CONFIG_PARAMS, "channelId": channel["desk"]["channelId"],
                         "channelToken": channel["desk"]["channelToken"]},
        "resource": {
            "extParentId": "bench-c1",
            "replyToExtId": "bench-m1",
            "id": reply_id,
            "content": "Hi customer, thanks for writing to us",
            "summary": "Hi customer, thanks for writing to us",
            "contentType": "text/plain",
            "hasAttach": False,
            "attachments": [],
            "author": {"name": "John Snow", "email": "john.snow@example.com", "type": "AGENT",
                       "photoURL": "https://desk.zoho.com/api/v1/agents/387829/photo?orgId=28732"},
        },
    }


def static_line(path: str, body: bytes, content_type: str = "application/json") -> str:
    """A replay-file line for one fixed request."""
    return "\t".join((path, "Content-Type", content_type, body.decode()))
