"""$batch with dependsOn: the fake Graph runs a chained batch one part after another and answers
424 Failed Dependency after a failed part, as Graph documents; the client packs many calls into
few chained batches (up to 20 calls each, one in flight per chain, never more than 4 at once)
and gives each call the answer it would have had alone."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.graphkit import ROOM, SECRET, GraphWorld, graph_world, meeting
from vmrsched import config
from vmrsched.mailbox.graph import GraphMailbox
from vmrsched.mailbox.graph_batch import Answer, settle, split
from vmrsched.telemetry import Metrics


@pytest.fixture
def world(tmp_path: Path) -> Iterator[GraphWorld]:
    with graph_world(tmp_path) as world:
        yield world


@pytest.fixture
def gateway(world: GraphWorld, tmp_path: Path) -> Iterator[GraphMailbox]:
    doc = {"server": {"data_dir": str(tmp_path / "data")}, "integrations": [world.integration()]}
    integ = config.parse(doc, tmp_path, {"GRAPH_SECRET": SECRET}).integrations[0]
    with ExitStack() as stack:
        mailbox = GraphMailbox(integ, Metrics(), tmp_path / "graph-state")
        stack.callback(mailbox.close)
        yield mailbox


def _post_batch(world: GraphWorld, gateway: GraphMailbox, parts: list[dict[str, Any]]) -> Any:
    response = requests.post(
        f"{world.graph_server.url}/v1.0/$batch",
        json={"requests": parts},
        headers={"Authorization": f"Bearer {gateway.tokens.get()}"},
        timeout=10,
    )
    return response.status_code, response.json()


def test_the_fake_runs_a_chained_batch_in_order_and_fails_what_depends_on_a_failure(
    world: GraphWorld, gateway: GraphMailbox
) -> None:
    first = world.fake.deliver(ROOM, meeting("one", "<p>x</p>"))
    second = world.fake.deliver(ROOM, meeting("two", "<p>x</p>"))
    user = f"/users/{ROOM}"
    parts = [
        {"id": "a", "method": "DELETE", "url": f"{user}/messages/{first.id}"},
        {"id": "b", "method": "DELETE", "url": f"{user}/messages/nope", "dependsOn": ["a"]},
        {"id": "c", "method": "DELETE", "url": f"{user}/messages/{second.id}", "dependsOn": ["b"]},
    ]
    status, body = _post_batch(world, gateway, parts)
    assert status == 200
    answers = {r["id"]: r["status"] for r in body["responses"]}
    assert answers == {"a": 204, "b": 404, "c": 424}
    inbox = world.fake.mailbox(ROOM).inbox
    assert first.id not in inbox and second.id in inbox  # "c" was not run

    # fully parallel or fully sequential, and dependencies only on parts before
    mixed = [dict(parts[0]), {**parts[1], "dependsOn": ["a"]}, {**parts[2], "dependsOn": []}]
    assert _post_batch(world, gateway, mixed)[0] == 400
    forward = [{**parts[0], "dependsOn": ["c"]}, parts[1], parts[2]]
    assert _post_batch(world, gateway, forward)[0] == 400
    many = [{"id": str(i), "method": "GET", "url": f"{user}/mailFolders/inbox"} for i in range(21)]
    assert _post_batch(world, gateway, many)[0] == 400


def test_many_calls_go_in_few_chained_batches_never_over_the_mailboxs_limit(
    world: GraphWorld, gateway: GraphMailbox
) -> None:
    messages = [world.fake.deliver(ROOM, meeting(f"m{i}", "<p>x</p>")) for i in range(70)]
    before = len(world.fake.requests)
    answers = gateway.batch(
        [("GET", f"{gateway.base}/messages/{m.id}/$value", None) for m in messages], "get_mime"
    )
    assert [a.status for a in answers] == [200] * 70
    assert [_decoded(a) for a in answers] == [m.mime for m in messages]  # in the calls' order
    assert len(world.fake.requests) - before == 4  # 70 calls: 4 batches of 17-18
    assert world.fake.max_concurrent <= 4 and world.fake.over_limit == 0


def test_a_refused_call_costs_the_rest_of_its_chain_nothing(
    world: GraphWorld, gateway: GraphMailbox
) -> None:
    messages = [world.fake.deliver(ROOM, meeting(f"r{i}", "<p>x</p>")) for i in range(6)]
    urls = [f"{gateway.base}/messages/{m.id}" for m in messages]
    urls.insert(2, f"{gateway.base}/messages/gone-already")
    answers = gateway.batch([("DELETE", url, None) for url in urls], "delete")
    assert [a.status for a in answers] == [204, 204, 404, 204, 204, 204, 204]
    assert not world.fake.mailbox(ROOM).inbox  # the calls after the refusal went out again


def test_a_throttled_part_stops_its_chain_and_the_rest_wait_as_long(
    world: GraphWorld, gateway: GraphMailbox
) -> None:
    messages = [world.fake.deliver(ROOM, meeting(f"t{i}", "<p>x</p>")) for i in range(4)]
    world.fake.throttle("DELETE", f"/messages/{messages[2].id}$")
    answers = gateway.batch(
        [("DELETE", f"{gateway.base}/messages/{m.id}", None) for m in messages], "delete"
    )
    assert [a.status for a in answers] == [204, 204, 429, 429]
    assert answers[3].headers.get("Retry-After") == "1"  # not run: waits like the throttled one
    error = gateway._part_error(answers[3], "DELETE")
    assert error.retry_after == 1.0 and not error.permanent
    assert [m.id for m in world.fake.mailbox(ROOM).inbox.values()] == [
        messages[2].id,
        messages[3].id,
    ]


def test_a_failed_batch_request_is_each_of_its_calls_outcome() -> None:
    final: dict[int, Answer] = {}
    busy = Answer(503, {"error": {"code": "ServiceUnavailable"}}, {"Retry-After": "7"})
    failed = Answer(424, None)
    assert settle([0, 1, 2], [Answer(202, None), busy, failed], final) == []
    assert final[2] is busy
    assert settle([3, 4, 5], [Answer(404, None), failed, failed], final) == [4, 5]
    assert split(list(range(41))) == [list(range(14)), list(range(14, 28)), list(range(28, 41))]


def _decoded(answer: Answer) -> bytes:
    return base64.b64decode(answer.body)
