"""Every accepted message reaches Desk exactly once, tickets before threads (SPEC C1.1, C1.2).

A `DeskSimulator` polls the pull endpoint as Desk does, losing answers, pulling
concurrently and racing with inbound writes; it checks what Desk would end up with.
"""

from __future__ import annotations

import random
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask
from werkzeug.serving import make_server

from tests.desk_simulator import DeskSimulator, ExternalService, FlaskTransport, HttpTransport, Transport, message

Channel = dict[str, Any]


@pytest.fixture
def live_transport(make_app: Callable[..., Flask]) -> Iterator[Callable[[Flask], Transport]]:
    """Serve an app over real HTTP on 127.0.0.1 (threaded, like a worker pool); a transport to it."""
    servers: list[tuple[Any, threading.Thread]] = []

    def serve(app: Flask) -> Transport:
        server = make_server("127.0.0.1", 0, app, threaded=True)
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        servers.append((server, thread))
        return HttpTransport(f"http://127.0.0.1:{server.server_port}")

    yield serve
    for server, thread in servers:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def send_in_rounds(service: ExternalService, rng: random.Random, total: int, conversations: int,
                   prefix: str = "m") -> list[list[str]]:
    """Send `total` messages in batches of random size over some conversations; the ids per batch."""
    rounds: list[list[str]] = []
    sent = 0
    while sent < total:
        size = min(rng.randint(1, 9), total - sent)
        batch = [message(f"{prefix}{sent + n}", f"c{rng.randrange(conversations)}") for n in range(size)]
        assert service.send_ok({"messages": batch})["accepted"] == [m["id"] for m in batch]
        rounds.append([m["id"] for m in batch])
        sent += size
    return rounds


def test_every_message_reaches_desk_once_over_many_pulls(
    make_app: Callable[..., Flask], channel: Channel
) -> None:
    app = make_app(PULL_BATCH_LIMIT="7")
    service, desk = ExternalService(FlaskTransport(app), channel), DeskSimulator(FlaskTransport(app), channel)
    rng = random.Random(1)
    sent: list[str] = []

    for _ in range(12):
        for ids in send_in_rounds(service, rng, rng.randint(0, 15), 6, prefix=f"m{len(sent)}-"):
            sent.extend(ids)
        for _ in range(rng.randint(0, 3)):
            desk.pull()
    desk.drain()

    assert len(sent) > 50
    desk.assert_exactly_once(sent)
    pulled_in_order = [ext_id for answer in desk.answers for ext_id in answer.thread_ids]
    assert pulled_in_order == sent


def test_lost_pull_response_resends_same_batch(make_app: Callable[..., Flask], channel: Channel) -> None:
    app = make_app(PULL_BATCH_LIMIT="3")
    ExternalService(FlaskTransport(app), channel).send_ok(
        {"messages": [message(f"m{n}", f"c{n % 2}") for n in range(1, 8)]}
    )
    desk = DeskSimulator(FlaskTransport(app), channel)

    first = desk.pull()
    lost = desk.pull(drop=True)
    resent = desk.pull()
    desk.drain()

    assert first.thread_ids == ["m1", "m2", "m3"]
    assert lost.thread_ids == ["m4", "m5", "m6"]
    assert (resent.sent_state, resent.body) == (lost.sent_state, lost.body)
    desk.assert_exactly_once([f"m{n}" for n in range(1, 8)])


def test_lost_response_that_opened_a_ticket_resends_the_ticket(
    make_app: Callable[..., Flask], channel: Channel
) -> None:
    app = make_app(PULL_BATCH_LIMIT="2")
    service = ExternalService(FlaskTransport(app), channel)
    desk = DeskSimulator(FlaskTransport(app), channel)
    service.send_ok({"messages": [message("a1", "cA"), message("b1", "cB"), message("a2", "cA")]})

    lost = desk.pull(drop=True)
    service.send_ok(message("b2", "cB"))
    kept = desk.pull()
    desk.drain()

    assert lost.ticket_ids == kept.ticket_ids == ["cA", "cB"]
    assert set(desk.tickets) == {"cA", "cB"}
    desk.assert_exactly_once(["a1", "b1", "a2", "b2"])


@pytest.mark.parametrize("seed", [7, 8])
def test_randomly_lost_responses_lose_no_message(
    make_app: Callable[..., Flask], channel: Channel, seed: int
) -> None:
    app = make_app(PULL_BATCH_LIMIT="4")
    service, desk = ExternalService(FlaskTransport(app), channel), DeskSimulator(FlaskTransport(app), channel)
    rng = random.Random(seed)
    sent: list[str] = []

    for step in range(30):
        for ids in send_in_rounds(service, rng, rng.randint(0, 6), 5, prefix=f"s{step}-"):
            sent.extend(ids)
        for _ in range(rng.randint(1, 3)):
            desk.pull(drop=rng.random() < 0.4)
    desk.drain()

    assert sum(answer.dropped and bool(answer.threads) for answer in desk.answers) >= 5
    desk.assert_exactly_once(sent)


def test_batch_limit_splitting_conversations_never_sends_a_thread_before_its_ticket(
    make_app: Callable[..., Flask], channel: Channel
) -> None:
    app = make_app(PULL_BATCH_LIMIT="2")
    service, desk = ExternalService(FlaskTransport(app), channel), DeskSimulator(FlaskTransport(app), channel)
    rng = random.Random(3)
    # Long conversations interleaved, so most conversations span several batches.
    order = [f"c{rng.randrange(4)}" for _ in range(40)]
    service.send_ok({"messages": [message(f"m{n}", conversation) for n, conversation in enumerate(order)]})

    while desk.pull(drop=rng.random() < 0.3).threads or desk.answers[-1].dropped:
        pass

    desk.assert_exactly_once([f"m{n}" for n in range(40)])
    assert set(desk.tickets) == set(order)
    spans = Counter(thread["extParentId"] for answer in desk.answers if not answer.dropped
                    for thread in answer.threads)
    assert all(spans[c] > 2 for c in set(order))  # each conversation did span batches


@pytest.mark.parametrize("pullers", [2, 4])
def test_concurrent_pulls_with_the_same_state_deliver_every_message(
    make_app: Callable[..., Flask], channel: Channel, live_transport: Callable[[Flask], Transport], pullers: int
) -> None:
    app = make_app(PULL_BATCH_LIMIT="5")
    transport = live_transport(app)
    sent = [f"m{n}" for n in range(37)]
    ExternalService(transport, channel).send_ok({"messages": [message(m, f"c{n % 6}") for n, m in enumerate(sent)]})
    desk = DeskSimulator(transport, channel)

    rounds = 0
    while True:
        rounds += 1
        answers = desk.pull_together(pullers, drop=[0] if rounds % 3 == 0 else [])
        assert all((a.status, a.body) == (answers[0].status, answers[0].body) for a in answers), answers
        if not answers[0].threads:
            break
        assert rounds < 50

    desk.assert_exactly_once(sent, resends_allowed=True)
    assert rounds == 9  # 37 messages by 5, then the empty answer: no batch was skipped or repeated


def test_concurrent_pulls_racing_new_messages_lose_none(
    make_app: Callable[..., Flask], channel: Channel, live_transport: Callable[[Flask], Transport]
) -> None:
    app = make_app(PULL_BATCH_LIMIT="3")
    transport = live_transport(app)
    service, desk = ExternalService(transport, channel), DeskSimulator(transport, channel)
    rng = random.Random(5)
    sent: list[str] = []

    for step in range(12):
        for ids in send_in_rounds(service, rng, rng.randint(1, 5), 4, prefix=f"r{step}-"):
            sent.extend(ids)
        desk.pull_together(3, drop=[1] if step % 2 else [])
    desk.drain()

    desk.assert_exactly_once(sent, resends_allowed=True)


@pytest.mark.parametrize("limit", ["1000", "4"])
def test_inbound_writes_racing_pulls_leave_no_gap(
    make_app: Callable[..., Flask], channel: Channel, live_transport: Callable[[Flask], Transport], limit: str
) -> None:
    app = make_app(PULL_BATCH_LIMIT=limit)
    transport = live_transport(app)
    service, desk = ExternalService(transport, channel), DeskSimulator(transport, channel)
    writers, requests_each, batch, pullers = 6, 8, 4, 3
    start = threading.Barrier(writers + pullers)
    writing_done = threading.Event()
    answers: list[dict[str, list[str]]] = []
    failures: list[BaseException] = []
    answers_lock = threading.Lock()

    def write(writer: int) -> None:
        try:
            start.wait(timeout=30)
            for k in range(requests_each):
                # Each request also carries a message every writer sends: a racing duplicate.
                own = [message(f"w{writer}-{k}-{j}", f"c{(writer + j) % 5}") for j in range(batch)]
                shared = message(f"shared-{k}", f"c{k % 5}")
                answer = service.send_ok({"messages": [*own[:2], shared, *own[2:]]})
                with answers_lock:
                    answers.append(answer)
        except BaseException as exc:
            failures.append(exc)

    def pull() -> None:
        try:
            start.wait(timeout=30)
            while not writing_done.is_set():
                desk.pull()
        except BaseException as exc:
            failures.append(exc)

    write_threads = [threading.Thread(target=write, args=(n,)) for n in range(writers)]
    pull_threads = [threading.Thread(target=pull) for _ in range(pullers)]
    for thread in write_threads + pull_threads:
        thread.start()
    for thread in write_threads:
        thread.join(timeout=60)
    pulled_while_writing = [answer for answer in list(desk.answers) if answer.threads]
    writing_done.set()
    for thread in pull_threads:
        thread.join(timeout=60)
    assert not failures, failures
    desk.drain()

    accepted = Counter(ext_id for answer in answers for ext_id in answer["accepted"])
    expected = {f"w{w}-{k}-{j}" for w in range(writers) for k in range(requests_each) for j in range(batch)}
    expected |= {f"shared-{k}" for k in range(requests_each)}
    assert set(accepted) == expected
    assert set(accepted.values()) == {1}, "a racing duplicate was accepted twice"
    assert sum(len(answer["duplicates"]) for answer in answers) == (writers - 1) * requests_each
    assert len(pulled_while_writing) >= 2, "the pulls did not overlap the writes"
    desk.assert_exactly_once(expected, resends_allowed=True)
