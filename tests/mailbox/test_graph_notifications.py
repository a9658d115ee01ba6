"""Change notifications for the Graph backend: the subscription is created against our own
server (Graph's validation handshake, answered with the token as text/plain), new mail is
notified and answered without polling Graph, a notification with a foreign clientState is
ignored, and the lifecycle events (subscriptionRemoved, reauthorizationRequired, missed) and
renewal before expiry keep notifications flowing. All over real HTTP(S) against the fakes."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tests import spoolkit
from tests.configs import reserve_alias
from tests.fakes.graph_server import FakeGraph
from tests.fakes.threaded import ThreadedServer
from tests.graphkit import ROOM, SECRET, graph_world, meeting, pxps
from tests.serving import free_port
from vmrsched import config, service
from vmrsched.actors.supervision import RestartPolicy
from vmrsched.http.app import create_app
from vmrsched.mailbox import graph_notifications


@dataclass
class Env:
    fake: FakeGraph
    svc: service.Service
    url: str  # our notification endpoint

    def listings(self) -> int:
        return sum(1 for m, p in self.fake.requests if m == "GET" and p.endswith("/messages"))

    def metric(self, result: str) -> float:
        value = self.svc.ctx.metrics.registry.get_sample_value(
            "vmrsched_graph_notifications_total", {"integration": "online", "result": result}
        )
        return value or 0.0


def start(tmp_path: Path, minutes: float) -> Iterator[Env]:
    with graph_world(tmp_path) as world:
        world.fake.subscription_minutes = minutes
        port = free_port()
        graph = world.integration(
            poll_interval_seconds=0.05, notification_url=f"http://127.0.0.1:{port}"
        )
        doc = {
            "server": {"data_dir": str(tmp_path / "data"), "listen": f"127.0.0.1:{port}"},
            "integrations": [graph],
        }
        cfg = config.parse(doc, tmp_path, {"GRAPH_SECRET": SECRET})
        svc = service.start(cfg, policy=RestartPolicy(mailbox_max=1.0))
        ours = ThreadedServer(create_app(svc), port=port).start()
        try:
            yield Env(world.fake, svc, f"http://127.0.0.1:{port}/graph/notifications/online")
        finally:
            svc.stop()
            ours.stop()


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Env]:
    # our server may start after the poller
    monkeypatch.setattr(graph_notifications, "SUBSCRIBE_RETRY", 0.2)
    yield from start(tmp_path, minutes=4230)


def reserve(env: Env) -> dict[str, object]:
    spoolkit.wait_for(lambda: env.svc.ctx.status.state("online") == "running")
    record: dict[str, object] = reserve_alias(env.svc.ctx.registry.get("online", "allocator"))
    return record


def test_notified_mail_is_answered_without_polling_graph(env: Env) -> None:
    spoolkit.wait_for(lambda: len(env.fake.subscriptions) == 1)
    [subscription] = env.fake.subscriptions.values()
    assert subscription["notificationUrl"] == env.url and env.url in env.fake.validations
    assert subscription["changeType"] == "created" and subscription["clientState"]
    spoolkit.wait_for(lambda: not env.fake.mailbox(ROOM).inbox)
    idle = env.listings()
    time.sleep(0.8)  # poll_interval is 0.05 s: 16 polls, none of which may list the inbox
    assert env.listings() == idle

    record = reserve(env)
    env.fake.deliver(ROOM, meeting("notified", pxps(record)))
    spoolkit.wait_for(lambda: len(env.fake.responses_for("notified")) == 1, timeout=10)
    assert env.listings() == idle + 1  # one listing, for the notification
    assert env.metric("accepted") >= 1
    assert (env.url, 202) in env.fake.notified


def test_a_foreign_client_state_is_ignored(env: Env) -> None:
    spoolkit.wait_for(lambda: len(env.fake.subscriptions) == 1)
    spoolkit.wait_for(lambda: not env.fake.mailbox(ROOM).inbox)
    time.sleep(0.3)
    before = env.listings()
    forged = {"value": [{"subscriptionId": "x", "clientState": "guess", "changeType": "created"}]}
    answer = requests.post(env.url, json=forged, timeout=5)
    assert answer.status_code == 202  # Graph's contract: accept, then discard
    time.sleep(0.5)
    assert env.listings() == before and env.metric("refused") == 1
    assert requests.post(env.url, data=b"not json", timeout=5).status_code == 400
    deep = requests.post(env.url, data=b"[" * 30_000 + b"]" * 30_000, timeout=5)
    assert deep.status_code == 400 and deep.json()["error"]["code"] == "bad_request"
    other = env.url.replace("/online", "/nobody")
    assert requests.post(other, params={"validationToken": "t"}, timeout=5).status_code == 404


def test_lifecycle_events_keep_notifications_flowing(env: Env) -> None:
    spoolkit.wait_for(lambda: len(env.fake.subscriptions) == 1)
    [first] = list(env.fake.subscriptions)
    env.fake.lifecycle("reauthorizationRequired")
    spoolkit.wait_for(lambda: getattr(env.fake, "renewals", 0) >= 1)
    env.fake.lifecycle("subscriptionRemoved")
    spoolkit.wait_for(lambda: bool(env.fake.subscriptions) and first not in env.fake.subscriptions)
    before = env.listings()
    env.fake.lifecycle("missed")
    spoolkit.wait_for(lambda: env.listings() > before)  # caught up at once
    record = reserve(env)
    env.fake.deliver(ROOM, meeting("after-lifecycle", pxps(record)))
    spoolkit.wait_for(lambda: len(env.fake.responses_for("after-lifecycle")) == 1, timeout=10)


def test_a_subscription_is_renewed_before_it_expires(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(graph_notifications, "SUBSCRIBE_RETRY", 0.2)
    for env in start(tmp_path, minutes=0.05):  # Graph grants 3 s
        spoolkit.wait_for(lambda env=env: len(env.fake.subscriptions) == 1)
        spoolkit.wait_for(lambda env=env: getattr(env.fake, "renewals", 0) >= 2, timeout=10)
        assert len(env.fake.subscriptions) == 1


def test_the_catch_up_is_a_delta_query_kept_across_restarts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(graph_notifications, "SUBSCRIBE_RETRY", 0.2)
    monkeypatch.setattr(graph_notifications, "CATCH_UP_SECONDS", 0.3)
    for env in start(tmp_path, minutes=4230):
        spoolkit.wait_for(lambda env=env: len(env.fake.subscriptions) == 1)
        spoolkit.wait_for(lambda env=env: env.fake.delta_calls >= 2)
        state = tmp_path / "data" / "graph" / "online" / "inbox-delta.json"
        assert "$deltatoken=" in state.read_text()  # kept on disk
        listings, deltas = env.listings(), env.fake.delta_calls
        time.sleep(1.0)  # idle: catch-ups ask for the delta only, and list nothing
        assert env.listings() == listings and env.fake.delta_calls > deltas

        env.fake.silent = True  # this notification gets lost: the catch-up finds the mail
        record = reserve(env)
        env.fake.deliver(ROOM, meeting("unnotified", pxps(record)))
        spoolkit.wait_for(lambda env=env: len(env.fake.responses_for("unnotified")) == 1)

        env.fake.expire_delta_tokens()  # a dead delta token: a full resync
        record = reserve(env)
        env.fake.deliver(ROOM, meeting("after-resync", pxps(record)))
        spoolkit.wait_for(lambda env=env: len(env.fake.responses_for("after-resync")) == 1)
        spoolkit.wait_for(lambda state=state: "$deltatoken=2." in state.read_text())
