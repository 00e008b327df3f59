"""GET /metrics (SPEC B17): what it counts, its token, its labels, the gauges read from the
database, and totals that hold under several gunicorn workers."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Column, Integer, MetaData, String, Table, create_engine, insert, update
from werkzeug.test import TestResponse

from app import metrics
from app.store.models import Channel, InboxMessage, Reply, UtcDateTime
from app.usecases.channels import set_enabled
from app.usecases.clock import utcnow
from app.web.metrics import init_metrics
from tests.conftest import ADMIN_TOKEN
from tests.live_server import running_server
from tests.receiver import Answer, Receiver
from tests.support import desk_pull_body, desk_push_body, services, signed_headers

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]

REQUESTS = "deskbridge_http_requests_total"
INBOUND = "deskbridge_inbound_messages_total"
PUSHES = "deskbridge_pushes_total"
ATTEMPTS = "deskbridge_delivery_attempts_total"
ORG_ID = "7000123"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture
def app(make_app: Callable[..., Flask]) -> Flask:
    """The application with /metrics (init_metrics is idempotent: a no-op once create_app calls it)."""
    built = make_app()
    init_metrics(built)
    return built


def parse(text: str) -> Samples:
    """Every sample of a Prometheus text exposition, read with prometheus_client's own parser."""
    found: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value; 0 when the series does not exist (yet)."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def scrape(client: FlaskClient, **headers: str) -> Samples:
    answer = client.get("/metrics", headers=headers)
    assert answer.status_code == 200, answer.get_data(as_text=True)
    return parse(answer.get_data(as_text=True))


def change(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def send(client: FlaskClient, channel: dict[str, Any], *ids: str, secret: str | None = None) -> TestResponse:
    """POST messages to the channel's webhook, signed with its inbound secret (or another)."""
    raw = json.dumps({"messages": [{"id": each, "conversation_id": "c1", "text": f"text {each}"} for each in ids]})
    headers = signed_headers(secret or channel["inbound"]["secret"], raw, msg_id=f"evt_{ids[0]}")
    return client.post(channel["inbound"]["path"], data=raw, headers=headers)


WRONG_SECRET = "whsec_" + "A" * 43 + "="


# --- counters through the app ---------------------------------------------------------------------


def test_requests_are_counted_by_url_rule_method_and_status_with_their_durations(
    client: FlaskClient, channel: dict[str, Any]
) -> None:
    before = scrape(client)

    for _ in range(3):
        assert client.get("/healthz").status_code == 200
    for _ in range(2):
        assert send(client, channel, "m1", secret=WRONG_SECRET).status_code == 401
    assert client.get("/no/such/page").status_code == 404
    assert client.open("/healthz", method="BREW").status_code == 405
    after = scrape(client)

    assert change(before, after, REQUESTS, endpoint="/healthz", method="GET", status="200") == 3
    assert change(before, after, REQUESTS, endpoint="/inbound/<channel_id>", method="POST", status="401") == 2
    assert change(before, after, REQUESTS, endpoint="unmatched", method="GET", status="404") == 1
    # Any token is a method: unknown ones share one label value (bounded cardinality).
    assert change(before, after, REQUESTS, endpoint="unmatched", method="other", status="405") == 1
    assert change(before, after, REQUESTS, endpoint="/metrics", method="GET", status="200") == 1  # the first scrape
    assert change(before, after, "deskbridge_http_request_duration_seconds_count", endpoint="/healthz") == 3
    assert change(before, after, "deskbridge_http_request_duration_seconds_bucket", endpoint="/healthz", le="+Inf") == 3
    assert change(before, after, "deskbridge_http_request_duration_seconds_sum", endpoint="/healthz") > 0


def test_inbound_messages_are_counted_by_connector_and_result(client: FlaskClient, channel: dict[str, Any]) -> None:
    before = scrape(client)

    assert send(client, channel, "m1", "m2").status_code == 200
    assert send(client, channel, "m1", "m2", "m3").status_code == 200
    assert send(client, channel, "m4", secret=WRONG_SECRET).status_code == 401
    after = scrape(client)

    assert change(before, after, INBOUND, connector="webhook", result="accepted") == 3
    assert change(before, after, INBOUND, connector="webhook", result="duplicate") == 2
    # A refused webhook counts once: its messages cannot be counted (nor trusted).
    assert change(before, after, INBOUND, connector="webhook", result="rejected") == 1


def test_push_outcomes_delivery_attempts_and_push_durations_are_counted(
    app: Flask, client: FlaskClient, hooked: dict[str, Any], receiver: Receiver
) -> None:
    receiver.script(
        Answer(200, {"id": "msg-1"}), Answer(400, {"error": "no"}), Answer(503, headers={"Retry-After": "60"})
    )
    push_url = f"/desk/push?orgId={ORG_ID}"
    write_pending_reply(app, hooked["id"], "r-busy")
    before = scrape(client)

    assert client.post(push_url, json=desk_push_body(hooked, id="r-sent")).status_code == 200
    assert client.post(push_url, json=desk_push_body(hooked, id="r-sent")).status_code == 200
    assert client.post(push_url, json=desk_push_body(hooked, id="r-refused")).status_code == 422
    # Asked to wait past the deadline: no second attempt.
    assert client.post(push_url, json=desk_push_body(hooked, id="r-unavailable")).status_code == 502
    assert client.post(push_url, json=desk_push_body(hooked, id="r-busy")).status_code == 409
    after = scrape(client)

    expected = {"sent": 1, "already_sent": 1, "rejected": 1, "failed": 1, "conflict": 1}
    assert {outcome: change(before, after, PUSHES, outcome=outcome) for outcome in expected} == expected
    assert {outcome: change(before, after, ATTEMPTS, outcome=outcome) for outcome in ("sent", "permanent", "transient")
            } == {"sent": 1, "permanent": 1, "transient": 1}
    assert len(receiver.received) == 3
    # One duration per delivery made; none for the answers that needed no delivery.
    assert change(before, after, "deskbridge_push_duration_seconds_count") == 3


def write_pending_reply(app: Flask, channel_id: str, reply_id: str) -> None:
    """A ledger entry whose delivery started a moment ago, as a concurrent push leaves it."""
    now = utcnow()
    with services(app).db.session(write=True) as session:
        session.add(Reply(
            channel_id=channel_id, desk_reply_id=reply_id, status="pending", attempts=0, conversation_ext_id="c1",
            content="in flight", content_type="text/plain", created_at=now, attempt_started_at=now, updated_at=now,
        ))
        session.commit()


def test_every_family_is_exposed_from_the_start_and_parses(client: FlaskClient) -> None:
    text = client.get("/metrics").get_data(as_text=True)

    names = {family.name for family in text_string_to_metric_families(text)}
    assert {
        "deskbridge_http_requests", "deskbridge_http_request_duration_seconds", "deskbridge_inbound_messages",
        "deskbridge_pushes", "deskbridge_delivery_attempts", "deskbridge_push_duration_seconds",
        "deskbridge_imports", "deskbridge_jobs", "deskbridge_oldest_queued_job_age_seconds", "deskbridge_channels",
        "deskbridge_build_info",
    } <= names
    samples = parse(text)
    assert value(samples, "deskbridge_build_info", version=metrics.build_version()) == 1
    for outcome in metrics.PUSH_OUTCOMES:
        assert (PUSHES, (("outcome", outcome),)) in samples


def test_jobs_and_imports_recorded_by_other_modules_show_on_metrics(client: FlaskClient) -> None:
    before = scrape(client)

    metrics.job_finished("replies.sweep", "done")
    metrics.job_finished("replies.sweep", "done")
    metrics.job_finished("events.deliver", "failed")
    metrics.import_finished("imported")
    after = scrape(client)

    assert change(before, after, "deskbridge_jobs_total", kind="replies.sweep", status="done") == 2
    assert change(before, after, "deskbridge_jobs_total", kind="events.deliver", status="failed") == 1
    assert change(before, after, "deskbridge_imports_total", outcome="imported") == 1


# --- the token ------------------------------------------------------------------------------------


def test_metrics_token_when_set_is_required_as_a_bearer_token(make_app: Callable[..., Flask]) -> None:
    app = make_app(METRICS_TOKEN="metrics-token-0123456789")
    init_metrics(app)
    client = app.test_client()

    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic metrics-token-0123456789"},
                    {"Authorization": f"Bearer {ADMIN_TOKEN}"}):
        answer = client.get("/metrics", headers=headers)
        assert answer.status_code == 401, headers
        assert answer.mimetype == "application/json"
        assert answer.json["error"] == "unauthorized" and answer.json["message"]
        assert set(answer.json) == {"error", "message"}
    answer = client.get("/metrics", headers={"Authorization": "Bearer metrics-token-0123456789"})
    assert answer.status_code == 200
    assert parse(answer.get_data(as_text=True))


def test_metrics_without_a_token_configured_are_open_in_the_text_format(client: FlaskClient) -> None:
    answer = client.get("/metrics")

    assert answer.status_code == 200
    assert answer.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"


# --- labels ---------------------------------------------------------------------------------------


def test_no_label_value_names_a_channel_an_org_or_a_message(
    client: FlaskClient, new_channel: Callable[..., dict[str, Any]], receiver: Receiver
) -> None:
    hooked = new_channel(outbound_url=receiver.url, org_id=ORG_ID)
    other = new_channel(org_id="7000456")
    assert send(client, hooked, "msg-label-1").status_code == 200
    assert send(client, other, "msg-label-2", secret=WRONG_SECRET).status_code == 401
    assert client.post(f"/desk/pull?orgId={ORG_ID}", json=desk_pull_body(hooked, state="")).status_code == 200
    assert client.post(f"/desk/push?orgId={ORG_ID}", json=desk_push_body(hooked, id="reply-label-1")).status_code == 200
    assert client.get(f"/api/channels/{hooked['id']}", headers=ADMIN).status_code == 200
    assert client.post(f"/inbound/{other['id']}x", data="{}").status_code == 404

    label_values = {label_value for _, labels in scrape(client) for _, label_value in labels}
    for secret_id in (hooked["id"], other["id"], ORG_ID, "7000456", "msg-label-1", "reply-label-1"):
        assert not [found for found in label_values if secret_id in found], secret_id
    assert "/inbound/<channel_id>" in label_values


# --- gauges read from the database ----------------------------------------------------------------


def test_channel_gauges_count_ok_stalled_and_disabled_channels_as_their_health_says(
    app: Flask, client: FlaskClient, new_channel: Callable[..., dict[str, Any]]
) -> None:
    quiet = new_channel(name="nothing received")
    fresh = new_channel(name="messages just received")
    stalled = new_channel(name="messages waiting 20 minutes, never pulled")
    pulled = new_channel(name="messages waiting 20 minutes, pulled a minute ago")
    disabled = new_channel(name="disabled, messages waiting 20 minutes")
    for waiting in (fresh, stalled, pulled, disabled):
        assert send(client, waiting, f"{waiting['id']}-1", f"{waiting['id']}-2").status_code == 200
    for old in (stalled, pulled, disabled):
        age_inbox(app, old["id"], minutes=20)
    # acked_seq moved a minute ago, yet one message still waits: not stalled (yet).
    acknowledge(app, pulled["id"], acked_seq=1, minutes_ago=1)
    set_enabled(services(app).db, disabled["id"], False)

    samples = scrape(client)

    gauges = {status: value(samples, "deskbridge_channels", status=status) for status in ("ok", "stalled", "disabled")}
    assert gauges == {"ok": 3, "stalled": 1, "disabled": 1}
    # The same as each channel's own health (SPEC B10), whichever way it is computed.
    shown = Counter(
        client.get(f"/api/channels/{each['id']}", headers=ADMIN).json["status"]
        for each in (quiet, fresh, stalled, pulled, disabled)
    )
    assert gauges == {status: shown[status] for status in gauges}


def age_inbox(app: Flask, channel_id: str, minutes: int) -> None:
    with services(app).db.session(write=True) as session:
        session.execute(update(InboxMessage).where(InboxMessage.channel_id == channel_id)
                        .values(received_at=utcnow() - timedelta(minutes=minutes)))
        session.commit()


def acknowledge(app: Flask, channel_id: str, acked_seq: int, minutes_ago: int) -> None:
    with services(app).db.session(write=True) as session:
        session.execute(update(Channel).where(Channel.id == channel_id)
                        .values(acked_seq=acked_seq, acked_at=utcnow() - timedelta(minutes=minutes_ago)))
        session.commit()


def test_channel_gauges_follow_stall_minutes(make_app: Callable[..., Flask], new_channel: Callable[..., Any]) -> None:
    app = make_app(STALL_MINUTES="30")
    init_metrics(app)
    client = app.test_client()
    channel = new_channel()
    assert send(client, channel, "m1").status_code == 200
    age_inbox(app, channel["id"], minutes=20)

    samples = scrape(client)

    assert (value(samples, "deskbridge_channels", status="ok"), value(samples, "deskbridge_channels", status="stalled")
            ) == (1, 0)


def test_oldest_queued_job_age_is_zero_when_no_job_waits(client: FlaskClient) -> None:
    assert value(scrape(client), "deskbridge_oldest_queued_job_age_seconds") == 0


def test_oldest_queued_job_age_counts_from_the_oldest_due_queued_job_only(database_url: str) -> None:
    engine = create_engine(database_url)
    # A temporary table of that name hides the real one (if any) for this connection only.
    jobs = Table(
        "jobs", MetaData(), Column("id", Integer, primary_key=True), Column("status", String(8)),
        Column("run_at", UtcDateTime()), prefixes=["TEMPORARY"],
    )
    now = utcnow()
    try:
        with engine.connect() as conn:
            jobs.create(conn)
            conn.execute(insert(jobs), [
                {"status": "queued", "run_at": now - timedelta(seconds=90)},
                {"status": "queued", "run_at": now - timedelta(seconds=30)},
                {"status": "queued", "run_at": now + timedelta(seconds=300)},  # not due yet
                {"status": "running", "run_at": now - timedelta(seconds=600)},
                {"status": "failed", "run_at": now - timedelta(seconds=900)},
            ])
            assert metrics.read_database_gauges(conn, now, 15).oldest_queued_job_age_seconds == 90
            conn.execute(update(jobs).where(jobs.c.status == "queued").values(status="done"))
            assert metrics.read_database_gauges(conn, now, 15).oldest_queued_job_age_seconds == 0
            jobs.drop(conn)
    finally:
        engine.dispose()


def test_database_gauges_are_left_out_while_the_database_does_not_answer(
    make_app: Callable[..., Flask], tmp_path: Path
) -> None:
    app = make_app(DATABASE_URL=f"sqlite:///{tmp_path / 'missing' / 'nowhere.sqlite3'}")
    init_metrics(app)

    answer = app.test_client().get("/metrics")

    assert answer.status_code == 200
    names = {family.name for family in text_string_to_metric_families(answer.get_data(as_text=True))}
    assert "deskbridge_http_requests" in names and "deskbridge_build_info" in names
    assert "deskbridge_channels" not in names


# --- the server's side of multiprocess mode -------------------------------------------------------


def test_server_start_without_a_directory_makes_a_private_one_and_removes_it_at_exit() -> None:
    environ: dict[str, str] = {}

    directory = metrics.configure_multiprocess(environ)

    assert environ[metrics.MULTIPROC_VARIABLE] == str(directory)
    assert directory.is_dir() and not list(directory.glob("*.db"))
    metrics.remove_multiprocess_dir(environ)
    assert not directory.exists()


def test_server_start_empties_the_configured_directory_and_keeps_it_at_exit(tmp_path: Path) -> None:
    directory = tmp_path / "prometheus"
    directory.mkdir()
    (directory / "counter_4242.db").write_bytes(b"a previous run")
    environ = {metrics.MULTIPROC_VARIABLE: str(directory)}

    assert metrics.configure_multiprocess(environ) == directory

    assert not list(directory.iterdir())
    metrics.remove_multiprocess_dir(environ)
    assert directory.is_dir()


def test_gunicorn_started_by_make_run_keeps_the_directory_that_make_run_prepared(tmp_path: Path) -> None:
    environ = {metrics.MULTIPROC_VARIABLE: str(tmp_path)}
    metrics.configure_multiprocess(environ)  # make run, for the web server and the background worker
    (tmp_path / "counter_4242.db").write_bytes(b"the background worker's counts")

    metrics.configure_multiprocess(dict(environ))  # gunicorn's master, a child of make run

    assert (tmp_path / "counter_4242.db").exists()


# --- under gunicorn with several workers ----------------------------------------------------------

BATCH = 40
MAX_BATCHES = 25


def test_totals_are_the_same_whichever_gunicorn_worker_answers(
    make_app: Callable[..., Flask], database_url: str, tmp_path: Path
) -> None:
    if "metrics" not in make_app().blueprints:
        pytest.skip("create_app() does not call app.web.metrics.init_metrics yet")
    directory = tmp_path / "prometheus"
    directory.mkdir()
    environment = {"WEB_CONCURRENCY": "2", "THREADS": "2", "PROMETHEUS_MULTIPROC_DIR": str(directory)}
    with running_server(database_url, tmp_path / "instance-live", **environment) as server:
        made = requests_spread_over_workers(server.url, directory)

        for scrapes_before in range(6):
            answer = requests.get(f"{server.url}/metrics", timeout=30)
            assert answer.status_code == 200
            assert answer.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
            samples = parse(answer.text)
            assert value(samples, REQUESTS, endpoint="/healthz", method="GET", status="200") == made
            assert value(samples, "deskbridge_http_request_duration_seconds_count", endpoint="/healthz") == made
            assert value(samples, REQUESTS, endpoint="/metrics", method="GET", status="200") == scrapes_before
            assert value(samples, "deskbridge_channels", status="ok") == 0


def requests_spread_over_workers(url: str, directory: Path) -> int:
    """GET /healthz in concurrent batches, each on a new connection, until both workers have
    answered some (their files say so); how many were made."""

    def healthz(_: int) -> int:
        return requests.get(f"{url}/healthz", timeout=30).status_code

    made = 0
    with ThreadPoolExecutor(max_workers=8) as pool:
        for _ in range(MAX_BATCHES):
            assert set(pool.map(healthz, range(BATCH))) == {200}
            made += BATCH
            if len([count for count in healthz_counts_by_process(directory) if count]) >= 2:
                break
        else:
            pytest.fail(f"one worker answered all {made} requests; the test needs both to answer some")
    assert sum(healthz_counts_by_process(directory)) == made
    return made


def healthz_counts_by_process(directory: Path) -> list[float]:
    """GET /healthz answers counted by each worker process, read from its own file."""
    counts = []
    for path in directory.glob("counter_*.db"):
        counts.append(sum(
            sample.value
            for family in MultiProcessCollector.merge([str(path)], accumulate=False)
            for sample in family.samples
            if sample.name == REQUESTS and sample.labels.get("endpoint") == "/healthz"
        ))
    return counts
