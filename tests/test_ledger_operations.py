"""SPEC B10 reply ledger operations through the CLI and the admin API: list with filters and
cursor pages, show with the attempts history, delete, export, summary; bad input is a JSON 4xx."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import func, select

from app.store.models import Reply, ReplyAttempt
from tests.conftest import ADMIN_TOKEN
from tests.receiver import Answer, Receiver
from tests.support import desk_push_body, services

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
DAY = datetime(2026, 11, 2, tzinfo=UTC)


def cli_json(app: Flask, *args: str) -> Any:
    result = app.test_cli_runner().invoke(args=["replies", *args])
    assert result.exit_code == 0, (result.output, result.stderr)
    return json.loads(result.output)


def add_replies(app: Flask, channel_id: str, count: int, *, status: str = "failed", start: datetime = DAY,
                step: timedelta = timedelta(minutes=30), sent_after: timedelta = timedelta(seconds=2)) -> list[int]:
    """Ledger entries as pushes would have left them, created `step` apart from `start`."""
    rows = []
    with services(app).db.session(write=True) as session:
        for n in range(count):
            created = start + n * step
            row = Reply(
                channel_id=channel_id, desk_reply_id=f"d-{channel_id[-4:]}-{status}-{n}", status=status,
                attempts=1, last_error="HTTP 500" if status == "failed" else None,
                external_id=f"ext-{n}" if status == "sent" else None, conversation_ext_id="c1", in_reply_to=None,
                content="secret customer words", content_type="text/plain", author=None, attachments=[],
                created_at=created, attempt_started_at=created, updated_at=created,
                sent_at=created + sent_after if status == "sent" else None,
            )
            session.add(row)
            rows.append(row)
        session.commit()
        return [row.id for row in rows]


def test_list_pages_newest_first_with_a_cursor_on_the_api_and_the_cli(app, client, channel) -> None:
    ids = add_replies(app, channel["id"], 7)

    first = client.get("/api/replies?limit=3", headers=AUTH).json
    second = client.get(f"/api/replies?limit=3&cursor={first['next_cursor']}", headers=AUTH).json
    third = cli_json(app, "list", "--limit", "3", "--cursor", second["next_cursor"])

    assert [item["id"] for item in first["items"] + second["items"] + third["items"]] == ids[::-1]
    assert third["next_cursor"] is None
    assert cli_json(app, "list", "--limit", "3") == first
    item = first["items"][0]
    assert set(item) == {"id", "channel_id", "desk_reply_id", "status", "attempts", "last_error", "external_id",
                         "delivery_status", "delivery_error", "created_at", "updated_at", "sent_at"}
    assert "secret customer words" not in json.dumps(first)


def test_list_filters_by_channel_status_and_time(app, client, new_channel) -> None:
    one, two = new_channel(), new_channel()
    add_replies(app, one["id"], 2, status="failed")
    sent = add_replies(app, one["id"], 2, status="sent", start=DAY + timedelta(days=1))
    add_replies(app, two["id"], 3, status="failed")

    by_channel = client.get(f"/api/replies?channel={one['id']}", headers=AUTH).json["items"]
    by_status = client.get("/api/replies?status=sent", headers=AUTH).json["items"]
    by_time = client.get("/api/replies?since=2026-11-03T00:00:00Z&until=2026-11-04T00:00:00", headers=AUTH).json

    assert len(by_channel) == 4 and {i["channel_id"] for i in by_channel} == {one["id"]}
    assert [i["id"] for i in by_status] == sent[::-1]
    assert [i["id"] for i in by_time["items"]] == sent[::-1]


@pytest.mark.parametrize(
    ("query", "field"),
    [("limit=251", "limit"), ("limit=0", "limit"), ("limit=x", "limit"), ("since=yesterday", "since"),
     ("until=2026-13-01", "until"), ("status=lost", "status"), ("cursor=nope", "cursor"), ("colour=red", "colour")],
)
def test_list_refuses_bad_filters_naming_the_field(client, query, field) -> None:
    answer = client.get(f"/api/replies?{query}", headers=AUTH)
    assert answer.status_code == 422, answer.json
    assert field in answer.json["fields"]


def test_show_has_the_attempts_history_oldest_first(app, client, hooked, receiver: Receiver) -> None:
    receiver.script(Answer(503, {"message": "busy"}), Answer(200, {"id": "ext-9"}))
    assert client.post("/desk/push?orgId=1", json=desk_push_body(hooked)).status_code == 200
    (listed,) = client.get("/api/replies", headers=AUTH).json["items"]

    shown = client.get(f"/api/replies/{listed['id']}", headers=AUTH).json

    assert shown == cli_json(app, "show", str(listed["id"]))
    assert (shown["status"], shown["external_id"], shown["attempts"]) == ("sent", "ext-9", 2)
    history = shown["attempts_history"]
    assert [(a["outcome"], a["http_status"]) for a in history] == [("transient", 503), ("sent", 200)]
    assert "busy" in history[0]["error"] and history[1]["error"] is None
    assert all(set(a) == {"started_at", "duration_ms", "outcome", "http_status", "error"} for a in history)


@pytest.mark.parametrize("ledger_id", ["987654", "abc", "-1", "99999999999999999999999"])
def test_show_of_an_unknown_id_is_404(client, ledger_id) -> None:
    answer = client.get(f"/api/replies/{ledger_id}", headers=AUTH)
    assert (answer.status_code, answer.json["error"]) == (404, "unknown_reply")


def ledger_size(app: Flask) -> tuple[int, int]:
    with services(app).db.session() as session:
        return (session.scalar(select(func.count()).select_from(Reply)),
                session.scalar(select(func.count()).select_from(ReplyAttempt)))


def test_delete_removes_the_entries_named_and_their_history(app, client, hooked, receiver: Receiver) -> None:
    receiver.script(Answer(400, {"message": "no"}))
    client.post("/desk/push?orgId=1", json=desk_push_body(hooked))
    kept = add_replies(app, hooked["id"], 2)
    (pushed,) = [i["id"] for i in client.get("/api/replies", headers=AUTH).json["items"] if i["id"] not in kept]

    answer = client.post("/api/replies/delete", headers=AUTH, json={"ids": [pushed, kept[0], 424242]})

    assert answer.status_code == 200 and answer.json == {"deleted": 2}
    assert ledger_size(app) == (1, 0)


def test_cli_delete_needs_yes(app, channel) -> None:
    ids = add_replies(app, channel["id"], 1)
    refused = app.test_cli_runner().invoke(args=["replies", "delete", str(ids[0])])
    assert refused.exit_code == 1 and "confirmation_required" in refused.stderr
    assert cli_json(app, "delete", str(ids[0]), "--yes") == {"deleted": 1}


@pytest.mark.parametrize(
    ("body", "field"),
    [({"ids": list(range(1, 302))}, "ids"), ({"ids": []}, "ids"), ({"ids": ["1"]}, "ids"), ({}, "ids"),
     ({"ids": [1], "all": True}, "all")],
)
def test_delete_refuses_more_than_300_ids_and_odd_bodies(app, client, channel, body, field) -> None:
    add_replies(app, channel["id"], 1)
    answer = client.post("/api/replies/delete", headers=AUTH, json=body)
    assert answer.status_code == 422 and field in answer.json["fields"]
    assert ledger_size(app)[0] == 1


def test_export_streams_csv_and_json_lines_with_the_filters_of_list(app, client, new_channel) -> None:
    one, two = new_channel(), new_channel()
    ids = add_replies(app, one["id"], 3)
    add_replies(app, two["id"], 2)

    answer = client.get(f"/api/replies/export?format=csv&channel={one['id']}", headers=AUTH)
    assert answer.status_code == 200 and answer.mimetype == "text/csv"
    rows = list(csv.DictReader(io.StringIO(answer.get_data(as_text=True))))
    assert [int(row["id"]) for row in rows] == ids
    assert rows[0]["status"] == "failed" and rows[0]["last_error"] == "HTTP 500"

    jsonl = client.get("/api/replies/export?format=jsonl", headers=AUTH)
    assert jsonl.mimetype == "application/x-ndjson"
    lines = [json.loads(line) for line in jsonl.get_data(as_text=True).splitlines()]
    assert len(lines) == 5
    over_cli = app.test_cli_runner().invoke(args=["replies", "export", "--format", "jsonl"])
    assert [json.loads(line) for line in over_cli.output.splitlines()] == lines


@pytest.mark.parametrize("query", ["format=xml", "format=csv&since=x"])
def test_export_refuses_bad_queries_before_streaming(client, query) -> None:
    answer = client.get(f"/api/replies/export?{query}", headers=AUTH)
    assert answer.status_code == 422 and answer.is_json


def test_summary_counts_rates_and_delivery_times_per_day_and_channel(app, client, new_channel) -> None:
    one, two = new_channel(), new_channel()
    add_replies(app, one["id"], 3, status="sent", sent_after=timedelta(milliseconds=1500), step=timedelta(hours=1))
    add_replies(app, one["id"], 1, status="failed")
    add_replies(app, two["id"], 2, status="pending", start=DAY + timedelta(days=1))

    summary = client.get("/api/replies/summary", headers=AUTH).json

    assert summary == cli_json(app, "summary")
    first, second = summary["intervals"]
    assert first == {"start": "2026-11-02T00:00:00.000Z", "channel_id": one["id"],
                     "counts": {"pending": 0, "sent": 3, "failed": 1}, "success_rate": 0.75,
                     "p50_ms": 1500, "p95_ms": 1500}
    assert (second["channel_id"], second["counts"]["pending"], second["success_rate"]) == (two["id"], 2, None)
    hourly = client.get(f"/api/replies/summary?interval=hour&channel={one['id']}", headers=AUTH).json
    assert [i["counts"]["sent"] + i["counts"]["failed"] for i in hourly["intervals"]] == [2, 1, 1]
    assert all("channel_id" not in i for i in hourly["intervals"])


def test_summary_refuses_an_unknown_interval(client) -> None:
    answer = client.get("/api/replies/summary?interval=week", headers=AUTH)
    assert answer.status_code == 422 and "interval" in answer.json["fields"]


# --- retry: queued for the background worker -------------------------------------------------------


def run_queued_jobs(app: Flask) -> int:
    """Run every due job once, as a worker would; how many ran."""
    from app.jobs.worker import Worker

    worker = Worker(services(app), recurring=())
    ran = 0
    while worker.work_one():
        ran += 1
    return ran


def test_a_reply_that_failed_while_the_receiver_was_down_is_retried_by_an_operator_and_arrives_once(
    make_app, new_channel, receiver: Receiver
) -> None:
    app = make_app(PUSH_DEADLINE_SECONDS="1")  # room for exactly two attempts (at once, then after ~0.5 s)
    client = app.test_client()
    hooked = new_channel(outbound_url=receiver.url)
    receiver.secret = hooked["outbound"]["secret"]
    receiver.script(*[Answer(503, {"message": "down"})] * 2)
    assert client.post("/desk/push?orgId=1", json=desk_push_body(hooked)).status_code == 502
    (failed,) = client.get("/api/replies?status=failed", headers=AUTH).json["items"]
    down_attempts = len(receiver.received)

    receiver.script(Answer(200, {"id": "ext-back"}))  # the receiver is back
    answer = client.post("/api/replies/retry", headers=AUTH, json={"ids": [failed["id"]]})

    assert answer.status_code == 202, answer.json
    assert answer.json == {"queued": [failed["id"]], "skipped": []}
    assert client.get(f"/api/replies/{failed['id']}", headers=AUTH).json["status"] == "pending"
    assert run_queued_jobs(app) == 1
    delivered = receiver.received[down_attempts:]
    assert len(delivered) == 1
    assert delivered[0].webhook_id == receiver.received[0].webhook_id == "reply_287189379819"
    shown = client.get(f"/api/replies/{failed['id']}", headers=AUTH).json
    assert (shown["status"], shown["external_id"]) == ("sent", "ext-back")
    # Retrying it again is skipped: a sent reply is never delivered again.
    again = cli_json(app, "retry", str(failed["id"]))
    assert again == {"queued": [], "skipped": [{"id": failed["id"], "reason": "already sent"}]}
    assert run_queued_jobs(app) == 0
    assert len(receiver.received) == down_attempts + 1


def test_retry_skips_unknown_and_in_flight_entries_and_queues_each_failed_one_once(app, client, channel) -> None:
    failed = add_replies(app, channel["id"], 2)
    in_flight = add_replies(app, channel["id"], 1, status="pending", start=datetime.now(UTC))

    answer = client.post("/api/replies/retry", headers=AUTH, json={"ids": [failed[0], failed[0], 999999, in_flight[0]]})

    assert answer.status_code == 202
    assert answer.json == {"queued": [failed[0]], "skipped": [
        {"id": 999999, "reason": "not found"}, {"id": in_flight[0], "reason": "being delivered right now"}]}


def test_retry_by_filter_queues_every_failed_entry_of_a_channel(app, client, new_channel) -> None:
    one, two = new_channel(), new_channel()
    mine = add_replies(app, one["id"], 3)
    add_replies(app, two["id"], 2)
    add_replies(app, one["id"], 1, status="sent", start=DAY + timedelta(days=3))

    over_cli = cli_json(app, "retry", "--all-failed", "--channel", one["id"])

    assert over_cli == {"queued": mine, "skipped": []}


@pytest.mark.parametrize(
    ("body", "field"),
    [({"ids": list(range(1, 101))}, "ids"), ({"ids": []}, "ids"), ({"status": "sent"}, "status"), ({}, "status"),
     ({"ids": [1], "channel": "ch_x"}, "ids"), ({"ids": [1], "extra": 1}, "extra"),
     ({"status": "failed", "since": "monday"}, "since")],
)
def test_retry_refuses_more_than_99_ids_and_odd_requests(client, body, field) -> None:
    answer = client.post("/api/replies/retry", headers=AUTH, json=body)
    assert answer.status_code == 422, answer.json
    assert field in answer.json["fields"]
