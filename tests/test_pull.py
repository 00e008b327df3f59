"""Desk's pull, POST /desk/pull: the cursor, the batch and the mapping (SPEC A2, A3, B3)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from html.parser import HTMLParser
from typing import Any

import orjson
import pytest
from flask import Flask
from flask.testing import FlaskClient

from app.desk.state import encode_state
from app.keyring import Keyring
from app.usecases.channels import list_channels
from tests.desk_simulator import DESK_TIME, ExternalService, FlaskTransport, message
from tests.support import desk_pull_body, fixture, services, statements

Channel = dict[str, Any]
EMPTY = {"data": {"tickets": [], "threads": []}}


def post_pull(client: FlaskClient, channel: Channel, state: Any = None, **extra: Any) -> dict[str, Any]:
    """One pull as Desk sends it; insists on 200 and returns the sync object."""
    body = desk_pull_body(channel)
    if state is not None:
        body["channelState"] = state
    body.update(extra)
    answer = client.post("/desk/pull?orgId=42&securityContext=ctx", json=body)
    assert answer.status_code == 200, answer.get_data(as_text=True)
    assert answer.mimetype == "application/json"
    return answer.json


def thread_ids(answer: dict[str, Any]) -> list[str]:
    return [item["extId"] for item in answer["data"]["threads"]]


def ticket_ids(answer: dict[str, Any]) -> list[str]:
    return [item["extId"] for item in answer["data"]["tickets"]]


def sync_figures(app: Flask, channel: Channel) -> dict[str, Any]:
    """The channel's line in the operator's list."""
    (summary,) = [c for c in list_channels(services(app).db) if c["id"] == channel["id"]]
    return summary


@pytest.fixture
def service(app: Flask, channel: Channel) -> ExternalService:
    """The external service, sending to the test channel."""
    return ExternalService(FlaskTransport(app), channel)


def only_ticket_and_thread(client: FlaskClient, channel: Channel) -> tuple[dict[str, Any], dict[str, Any]]:
    answer = post_pull(client, channel)
    (ticket,) = answer["data"]["tickets"]
    (thread,) = answer["data"]["threads"]
    return ticket, thread


# --- mapping -----------------------------------------------------------------------------


FULL_AUTHOR = {
    "id": "user-7", "name": "Ann Example", "email": "ann@example.com", "phone": "+1 555 0100",
    "avatar_url": "https://cdn.example.com/ann.png",
}
FULL_ACTOR = {
    "extId": "user-7", "name": "Ann Example", "displayName": "Ann Example", "email": "ann@example.com",
    "phone": "+1 555 0100", "photoURL": "https://cdn.example.com/ann.png",
}


def test_thread_and_ticket_carry_every_field_of_the_message(
    client: FlaskClient, channel: Channel, service: ExternalService
) -> None:
    service.send_ok({
        "id": "m1", "conversation_id": "conv-1", "text": "Where is my order?", "subject": "Order 1234",
        "created_at": "2024-05-06T09:08:07.010+02:00", "direction": "out", "can_reply": False,
        "author": FULL_AUTHOR, "permalink": "https://chat.example.com/m/1",
    })

    ticket, thread = only_ticket_and_thread(client, channel)

    assert ticket == {
        "extId": "conv-1", "subject": "Order 1234", "createdTime": "2024-05-06T07:08:07.010Z", "actor": FULL_ACTOR,
    }
    assert thread == {
        "extId": "m1", "extParentId": "conv-1", "content": "Where is my order?", "contentType": "text/plain",
        "createdTime": "2024-05-06T07:08:07.010Z", "direction": "out", "canReply": False, "actor": FULL_ACTOR,
    }


def test_thread_defaults_to_incoming_and_replyable(
    client: FlaskClient, channel: Channel, service: ExternalService
) -> None:
    service.send_ok(message("m1"))

    _, thread = only_ticket_and_thread(client, channel)

    assert thread["direction"] == "in"
    assert thread["canReply"] is True


CONVERSATION_ACTOR = {"extId": "c1", "name": "c1", "displayName": "c1"}


def test_message_without_author_gets_the_conversation_id_as_actor_on_ticket_and_thread(
    client: FlaskClient, channel: Channel, service: ExternalService
) -> None:
    service.send_ok(message("m1"))

    ticket, thread = only_ticket_and_thread(client, channel)

    assert thread["actor"] == ticket["actor"] == CONVERSATION_ACTOR


def test_html_message_is_a_html_thread(client: FlaskClient, channel: Channel, service: ExternalService) -> None:
    service.send_ok(message("m1", html="<p>Hi <i>there</i></p>"))

    _, thread = only_ticket_and_thread(client, channel)

    assert (thread["content"], thread["contentType"]) == ("<p>Hi <i>there</i></p>", "text/html")


@pytest.mark.parametrize(
    ("author", "actor"),
    [
        ({"id": "u1"}, {"extId": "u1"}),
        ({"name": "Ann"}, {"extId": "c1", "name": "Ann", "displayName": "Ann"}),
        ({"email": "a@example.com", "phone": "+44 20"},
         {"extId": "c1", "name": "c1", "displayName": "c1", "email": "a@example.com", "phone": "+44 20"}),
        ({"avatar_url": "https://example.com/a.png"},
         {"extId": "c1", "name": "c1", "displayName": "c1", "photoURL": "https://example.com/a.png"}),
        ({"id": "", "name": None, "email": "a@example.com"},
         {"extId": "c1", "name": "c1", "displayName": "c1", "email": "a@example.com"}),
        ({"id": None, "name": ""}, CONVERSATION_ACTOR),
        ({}, CONVERSATION_ACTOR),
        (None, CONVERSATION_ACTOR),
    ],
)
def test_actor_has_the_known_fields_and_always_an_ext_id(
    client: FlaskClient, channel: Channel, service: ExternalService, author: Any, actor: Any
) -> None:
    service.send_ok(message("m1", author=author))

    ticket, thread = only_ticket_and_thread(client, channel)

    assert thread["actor"] == actor
    assert ticket["actor"] == actor


def test_ticket_subject_is_the_conversation_subject(
    client: FlaskClient, channel: Channel, service: ExternalService
) -> None:
    service.send_ok(message("m1", subject="Broken screen", text="My screen\nis broken"))

    ticket, _ = only_ticket_and_thread(client, channel)

    assert ticket["subject"] == "Broken screen"


def test_long_conversation_subject_is_cut_to_255(
    client: FlaskClient, channel: Channel, service: ExternalService
) -> None:
    service.send_ok(message("m1", subject="S" * 300))

    ticket, _ = only_ticket_and_thread(client, channel)

    assert ticket["subject"] == "S" * 255


def test_ticket_subject_without_one_is_the_first_line_of_the_first_message(
    client: FlaskClient, channel: Channel, service: ExternalService
) -> None:
    service.send_ok({"messages": [message("m1", text="Hello there\nsecond line"), message("m2", text="Other")]})
    service.send_ok(message("m3", text="Later"))

    answer = post_pull(client, channel)

    assert [t["subject"] for t in answer["data"]["tickets"]] == ["Hello there"]


def test_ticket_subject_from_a_long_first_line_is_cut_to_255(
    client: FlaskClient, channel: Channel, service: ExternalService
) -> None:
    service.send_ok(message("m1", text="é" * 300 + "\nrest"))

    ticket, thread = only_ticket_and_thread(client, channel)

    assert ticket["subject"] == "é" * 255
    assert thread["content"] == "é" * 300 + "\nrest"


def test_ticket_subject_of_a_html_message_is_the_first_line_of_its_text(
    client: FlaskClient, channel: Channel, service: ExternalService
) -> None:
    service.send_ok(message("m1", html="<div><p>Hello <b>big</b> &amp; <i>bold</i> world</p><p>Second</p></div>"))

    ticket, _ = only_ticket_and_thread(client, channel)

    assert ticket["subject"] == "Hello big & bold world"


def test_ticket_time_and_actor_are_those_of_the_first_message(
    client: FlaskClient, channel: Channel, service: ExternalService
) -> None:
    # The second message claims an earlier time: "first" means first received (lowest seq).
    service.send_ok({"messages": [
        message("m1", created_at="2024-01-02T10:00:00Z", author={"id": "first"}),
        message("m2", created_at="2024-01-01T10:00:00Z", author={"id": "second"}),
    ]})

    answer = post_pull(client, channel)

    (ticket,) = answer["data"]["tickets"]
    assert ticket["createdTime"] == "2024-01-02T10:00:00.000Z"
    assert ticket["actor"] == {"extId": "first"}
    assert [t["createdTime"] for t in answer["data"]["threads"]] == [
        "2024-01-02T10:00:00.000Z", "2024-01-01T10:00:00.000Z",
    ]


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[tuple[str | None, str]] = []
        self._href: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self._href = dict(attrs).get("href")
            self.links.append((self._href, ""))

    def handle_data(self, data: str) -> None:
        if self._href is not None:
            href, text = self.links[-1]
            self.links[-1] = (href, text + data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "a":
            self._href = None


ATTACHMENTS = [
    {"url": "https://files.example.com/a.png?x=1&y=2", "name": "<photo> & more.png", "content_type": "image/png"},
    {"url": "https://files.example.com/b.pdf", "size": 1024},
]


def test_attachments_are_appended_to_text_as_names_and_urls(
    client: FlaskClient, channel: Channel, service: ExternalService
) -> None:
    service.send_ok(message("m1", text="See the files", attachments=ATTACHMENTS))

    _, thread = only_ticket_and_thread(client, channel)

    assert thread["contentType"] == "text/plain"
    content = thread["content"]
    assert content.startswith("See the files\n")
    first = content.index("<photo> & more.png")
    assert first < content.index(ATTACHMENTS[0]["url"]) < content.index(ATTACHMENTS[1]["url"])


def test_attachments_are_appended_to_html_as_links(
    client: FlaskClient, channel: Channel, service: ExternalService
) -> None:
    service.send_ok(message("m1", html="<p>See the files</p>", attachments=ATTACHMENTS))

    _, thread = only_ticket_and_thread(client, channel)

    assert thread["contentType"] == "text/html"
    assert thread["content"].startswith("<p>See the files</p>")
    parser = _Links()
    parser.feed(thread["content"])
    assert parser.links[0] == (ATTACHMENTS[0]["url"], "<photo> & more.png")
    assert [href for href, _ in parser.links] == [a["url"] for a in ATTACHMENTS]
    assert "<photo>" not in thread["content"]  # the name is escaped, not markup


def test_attachments_only_message_gets_a_subject_and_links(
    client: FlaskClient, channel: Channel, service: ExternalService
) -> None:
    service.send_ok({"id": "m1", "conversation_id": "c1", "attachments": ATTACHMENTS[1:]})

    ticket, thread = only_ticket_and_thread(client, channel)

    assert ATTACHMENTS[1]["url"] in thread["content"]
    assert ticket["subject"].strip()
    assert len(ticket["subject"]) <= 255


def test_times_are_utc_with_milliseconds(client: FlaskClient, channel: Channel, service: ExternalService) -> None:
    service.send_ok({"messages": [
        message("m1", created_at="2023-12-31T23:59:59.999999-01:30"),
        message("m2", created_at="2024-06-01T00:00:00+14:00"),
        message("m3"),
    ]})

    answer = post_pull(client, channel)

    times = [t["createdTime"] for t in answer["data"]["threads"]]
    assert times[:2] == ["2024-01-01T01:29:59.999Z", "2024-05-31T10:00:00.000Z"]
    assert all(DESK_TIME.match(t) for t in times)


# --- the documented request, the batch, the empty answer -----------------------------------


def test_documented_pull_body_with_foreign_state_gets_a_fresh_state(
    client: FlaskClient, channel: Channel, service: ExternalService
) -> None:
    service.send_ok(message("m1"))
    body = fixture("pull-request-body.json")
    foreign_state = body["channelState"]
    body.update(channelId=channel["desk"]["channelId"], channelToken=channel["desk"]["channelToken"])

    answer = client.post("/desk/pull?orgId=42&securityContext=ctx", json=body)

    assert answer.status_code == 200
    assert thread_ids(answer.json) == ["m1"]
    fresh = answer.json["channelState"]
    assert isinstance(fresh, str) and fresh != foreign_state
    assert post_pull(client, channel, fresh) == EMPTY


def test_pull_returns_at_most_the_batch_limit_in_seq_order(
    make_app: Callable[..., Flask], channel: Channel
) -> None:
    app = make_app(PULL_BATCH_LIMIT="3")
    client = app.test_client()
    ExternalService(FlaskTransport(app), channel).send_ok({"messages": [message(f"m{n}") for n in range(1, 8)]})

    first = post_pull(client, channel)
    second = post_pull(client, channel, first["channelState"])
    third = post_pull(client, channel, second["channelState"])
    last = post_pull(client, channel, third["channelState"])

    assert [thread_ids(a) for a in (first, second, third)] == [["m1", "m2", "m3"], ["m4", "m5", "m6"], ["m7"]]
    assert last == EMPTY


def test_default_batch_limit_is_1000(client: FlaskClient, channel: Channel, service: ExternalService) -> None:
    for batch in range(11):
        service.send_ok({"messages": [message(f"m{batch}-{n}", f"c{batch}-{n % 3}") for n in range(100)]})

    first = post_pull(client, channel)
    second = post_pull(client, channel, first["channelState"])

    assert len(first["data"]["threads"]) == 1000
    assert len(first["data"]["tickets"]) == 30
    assert thread_ids(second) == [f"m10-{n}" for n in range(100)]
    assert len(second["data"]["tickets"]) == 3


@pytest.mark.parametrize("state", [None, ""], ids=["absent", "empty"])
def test_pull_with_nothing_in_the_inbox_answers_empty_without_state(
    client: FlaskClient, channel: Channel, state: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        assert post_pull(client, channel, state) == EMPTY
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_pull_with_nothing_new_answers_empty_without_state(
    client: FlaskClient, channel: Channel, service: ExternalService
) -> None:
    service.send_ok(message("m1"))
    state = post_pull(client, channel)["channelState"]

    assert post_pull(client, channel, state) == EMPTY
    assert post_pull(client, channel, state) == EMPTY


@pytest.mark.parametrize("state", [None, ""], ids=["absent", "empty"])
def test_absent_or_empty_state_starts_from_the_beginning(
    client: FlaskClient, channel: Channel, service: ExternalService, state: str | None
) -> None:
    service.send_ok({"messages": [message("m1"), message("m2")]})
    post_pull(client, channel, post_pull(client, channel)["channelState"])

    assert thread_ids(post_pull(client, channel, state)) == ["m1", "m2"]


def test_state_of_a_batch_carries_its_last_message(
    client: FlaskClient, channel: Channel, service: ExternalService
) -> None:
    service.send_ok(message("m1"))
    first = post_pull(client, channel)
    service.send_ok({"messages": [message("m2"), message("m3")]})

    second = post_pull(client, channel, first["channelState"])

    assert thread_ids(second) == ["m2", "m3"]
    assert orjson.loads(second["channelState"])["seq"] == 3


# --- damaged channelState ----------------------------------------------------------------


def _state_with(state: str, **changes: Any) -> str:
    return orjson.dumps({**orjson.loads(state), **changes}).decode()


def _without(state: str, key: str) -> str:
    decoded = orjson.loads(state)
    decoded.pop(key)
    return orjson.dumps(decoded).decode()


DamagedStateMaker = Callable[[dict[str, Any]], Any]
DAMAGED_STATES: dict[str, DamagedStateMaker] = {
    "not JSON": lambda ctx: "{{not json",
    "Desk's documented foreign state": lambda ctx: '{"my_last_fetch_time":"Jan 11"}',
    "JSON array": lambda ctx: "[4]",
    "JSON number": lambda ctx: "4",
    "JSON null": lambda ctx: "null",
    "other version": lambda ctx: _state_with(ctx["state"], v=2),
    "tampered seq": lambda ctx: _state_with(ctx["state"], seq=3),
    "wrong MAC": lambda ctx: _state_with(ctx["state"], mac=orjson.loads(ctx["other_channel_state"])["mac"]),
    "MAC under another SECRET_KEY": lambda ctx: encode_state(Keyring("another-secret-key"), ctx["channel_id"], 4),
    "another channel's valid state": lambda ctx: ctx["other_channel_state"],
    "cursor ahead of the inbox": lambda ctx: encode_state(ctx["keyring"], ctx["channel_id"], 6),
    "negative seq": lambda ctx: encode_state(ctx["keyring"], ctx["channel_id"], -1),
    "bool seq": lambda ctx: _state_with(encode_state(ctx["keyring"], ctx["channel_id"], 1), seq=True),
    "float seq": lambda ctx: _state_with(ctx["state"], seq=4.0),
    "string seq": lambda ctx: _state_with(ctx["state"], seq="4"),
    "huge seq": lambda ctx: _state_with(ctx["state"], seq=2**63 - 1),
    "no seq": lambda ctx: _without(ctx["state"], "seq"),
    "no MAC": lambda ctx: _without(ctx["state"], "mac"),
    "MAC not a string": lambda ctx: _state_with(ctx["state"], mac=4),
    "state a number": lambda ctx: 4,
    "state an object": lambda ctx: orjson.loads(ctx["state"]),
    "state a list": lambda ctx: [ctx["state"]],
    "state true": lambda ctx: True,
}


def test_damaged_state_resumes_from_acked_seq_with_a_fresh_state(
    make_app: Callable[..., Flask],
    new_channel: Callable[..., Channel],
    caplog: pytest.LogCaptureFixture,
    subtests: pytest.Subtests,
) -> None:
    app = make_app(PULL_BATCH_LIMIT="2")
    client, keyring = app.test_client(), services(app).keyring
    other = new_channel(name="other")
    ExternalService(FlaskTransport(app), other).send_ok({"messages": [message(f"o{n}") for n in range(1, 5)]})
    other_state = post_pull(client, other, post_pull(client, other)["channelState"])["channelState"]

    for name, make_state in DAMAGED_STATES.items():
        with subtests.test(name):
            # Five messages; Desk has acknowledged seq 2 and holds the state of seq 4.
            channel = new_channel(name=name)
            ExternalService(FlaskTransport(app), channel).send_ok({"messages": [
                message("m1", "c1"), message("m2", "c1"), message("m3", "c2"), message("m4", "c3"),
                message("m5", "c2"),
            ]})
            second = post_pull(client, channel, post_pull(client, channel)["channelState"])
            assert thread_ids(second) == ["m3", "m4"]
            assert sync_figures(app, channel)["acked_seq"] == 2
            ctx = {"state": second["channelState"], "other_channel_state": other_state,
                   "keyring": keyring, "channel_id": channel["id"]}
            damaged = make_state(ctx)
            caplog.clear()

            with caplog.at_level(logging.WARNING, logger="app"):
                answer = post_pull(client, channel, damaged)
            acked_after_damaged = sync_figures(app, channel)["acked_seq"]

            assert thread_ids(answer) == ["m3", "m4"]
            assert ticket_ids(answer) == ["c2", "c3"]
            fresh = answer["channelState"]
            assert isinstance(fresh, str) and fresh != damaged
            assert thread_ids(post_pull(client, channel, fresh)) == ["m5"]
            warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
            assert warnings and "channelState" in warnings[0].getMessage()
            assert channel["desk"]["channelToken"] not in caplog.text
            assert acked_after_damaged == 2  # a damaged state acknowledges nothing


def test_damaged_state_with_nothing_new_still_gets_a_fresh_state(
    client: FlaskClient, channel: Channel, service: ExternalService, caplog: pytest.LogCaptureFixture
) -> None:
    service.send_ok({"messages": [message("m1"), message("m2")]})
    state = post_pull(client, channel)["channelState"]
    assert post_pull(client, channel, state) == EMPTY  # Desk acknowledges seq 2

    with caplog.at_level(logging.WARNING, logger="app"):
        answer = post_pull(client, channel, "garbage")

    assert answer["data"] == EMPTY["data"]
    assert isinstance(answer.get("channelState"), str)
    assert post_pull(client, channel, answer["channelState"]) == EMPTY
    assert any(r.levelno == logging.WARNING for r in caplog.records)


def test_valid_state_logs_no_warning(
    client: FlaskClient, channel: Channel, service: ExternalService, caplog: pytest.LogCaptureFixture
) -> None:
    service.send_ok(message("m1"))
    state = post_pull(client, channel)["channelState"]
    service.send_ok(message("m2"))

    with caplog.at_level(logging.WARNING):
        assert thread_ids(post_pull(client, channel, state)) == ["m2"]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


# --- acknowledgement ---------------------------------------------------------------------


def test_cursor_sent_back_is_recorded_as_acked_seq(make_app: Callable[..., Flask], channel: Channel) -> None:
    app = make_app(PULL_BATCH_LIMIT="2")
    client = app.test_client()
    ExternalService(FlaskTransport(app), channel).send_ok({"messages": [message(f"m{n}") for n in range(1, 6)]})
    assert sync_figures(app, channel)["last_pull_at"] is None

    s2 = post_pull(client, channel)["channelState"]
    after_first = sync_figures(app, channel)
    s4 = post_pull(client, channel, s2)["channelState"]
    after_second = sync_figures(app, channel)
    post_pull(client, channel, s4)
    after_third = sync_figures(app, channel)
    resent = post_pull(client, channel, s2)  # an older state: Desk lost an answer
    after_old = sync_figures(app, channel)

    assert [f["acked_seq"] for f in (after_first, after_second, after_third, after_old)] == [0, 2, 4, 4]
    assert after_third["last_seq"] == 5
    assert thread_ids(resent) == ["m3", "m4"]
    assert DESK_TIME.match(after_first["last_pull_at"])


# --- tickets and batches -----------------------------------------------------------------


def test_ticket_comes_with_first_thread_when_the_batch_limit_splits_conversations(
    make_app: Callable[..., Flask], channel: Channel
) -> None:
    app = make_app(PULL_BATCH_LIMIT="3")
    client = app.test_client()
    service = ExternalService(FlaskTransport(app), channel)
    service.send_ok({"messages": [
        message("a1", "cA"), message("b1", "cB"), message("a2", "cA"),
        message("c1", "cC"), message("a3", "cA"), message("b2", "cB"),
        message("d1", "cD"),
    ]})

    first = post_pull(client, channel)
    second = post_pull(client, channel, first["channelState"])
    third = post_pull(client, channel, second["channelState"])
    service.send_ok({"messages": [message("a4", "cA"), message("e1", "cE")]})
    fourth = post_pull(client, channel, third["channelState"])

    assert [(thread_ids(a), ticket_ids(a)) for a in (first, second, third, fourth)] == [
        (["a1", "b1", "a2"], ["cA", "cB"]),
        (["c1", "a3", "b2"], ["cC"]),
        (["d1"], ["cD"]),
        (["a4", "e1"], ["cE"]),
    ]


def test_conversation_spread_over_requests_has_one_ticket(
    client: FlaskClient, channel: Channel, service: ExternalService
) -> None:
    service.send_ok(message("m1", "c1", subject="First subject"))
    service.send_ok(message("m2", "c1", subject="Another subject"))

    answer = post_pull(client, channel)

    assert thread_ids(answer) == ["m1", "m2"]
    assert [(t["extId"], t["subject"]) for t in answer["data"]["tickets"]] == [("c1", "First subject")]


# --- cost --------------------------------------------------------------------------------


def counted_queries(app: Flask) -> Any:
    """The SQL statements the app's engine runs inside the block."""
    return statements(app)


def test_pull_runs_a_bounded_number_of_queries(
    app: Flask, client: FlaskClient, channel: Channel, service: ExternalService
) -> None:
    service.send_ok(message("m0", "c0"))
    with counted_queries(app) as one_message:
        state = post_pull(client, channel)["channelState"]
    for batch in range(3):
        service.send_ok({"messages": [message(f"m{batch}-{n}", f"c{batch}-{n // 2}") for n in range(100)]})
    with counted_queries(app) as many_messages:
        answer = post_pull(client, channel, state)
    with counted_queries(app) as nothing_new:
        post_pull(client, channel, answer["channelState"])

    assert len(answer["data"]["threads"]) == 300
    assert len(answer["data"]["tickets"]) == 150
    # The pull that moves Desk's cursor also looks for subscribers of message.synced (SPEC B16).
    assert len(many_messages) == len(one_message) + 1, many_messages
    assert len(nothing_new) <= len(one_message)
    assert len(many_messages) <= 10, many_messages
