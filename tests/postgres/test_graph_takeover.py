"""The Graph backend's state in the shared database (issue 30): the instance that takes an
integration over continues the subscription and the delta link its last owner kept (no second
subscription, Graph's notifications for it accepted with the same clientState), and the old
owner, once the lease is gone, keeps nothing more. Against the fake Graph over real HTTP."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from aiohttp import web

from tests.fakes.threaded import ThreadedServer
from tests.graphkit import SECRET, GraphWorld, graph_world
from tests.sharedkit import holder
from vmrsched import config
from vmrsched.mailbox.graph import GraphMailbox
from vmrsched.postgres import migrations
from vmrsched.postgres.leases import Lease, LeaseLost, Leases
from vmrsched.postgres.pool import Pool
from vmrsched.postgres.tokens import DatabaseGraphState
from vmrsched.telemetry import Metrics

Connect = Callable[[], psycopg.Connection[Any]]


def validating() -> web.Application:
    """Our notification URL as Graph's validation handshake sees it."""

    async def answer(request: web.Request) -> web.Response:
        return web.Response(
            text=request.query.get("validationToken", ""), content_type="text/plain"
        )

    app = web.Application()
    app.router.add_post("/graph/notifications/online", answer)
    return app


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[GraphWorld, str]]:
    endpoint = ThreadedServer(validating()).start()
    try:
        with graph_world(tmp_path) as running:
            yield running, endpoint.url
    finally:
        endpoint.stop()


def test_the_next_owner_continues_the_subscription_and_the_delta_link(
    world: tuple[GraphWorld, str], tmp_path: Path, connect: Connect
) -> None:
    graph_fakes, notification_url = world
    with connect() as conn:
        migrations.migrate(conn)
    doc = {
        "server": {"data_dir": str(tmp_path / "data")},
        "integrations": [graph_fakes.integration(notification_url=notification_url)],
    }
    integ = config.parse(doc, tmp_path, {"GRAPH_SECRET": SECRET}).integrations[0]
    pool = Pool(connect)
    held_a: dict[str, Lease] = {}
    held_b: dict[str, Lease] = {}
    lease = Leases(connect, "instance-a", 30).acquire("online")
    assert lease is not None
    held_a["online"] = lease
    first = GraphMailbox(integ, Metrics(), DatabaseGraphState(pool, "online", holder(held_a)))
    second: GraphMailbox | None = None
    try:
        assert first.watch.should_list(False)  # subscribes, then lists what came meanwhile
        assert len(graph_fakes.fake.subscriptions) == 1
        first.watch._caught_up()  # the catch-up keeps a delta link
        kept = DatabaseGraphState(pool, "online", None).load()
        assert "$deltatoken=" in str(kept["delta_link"])
        assert kept["subscription"]["client_state"] == first.watch.client_state
        [subscription] = graph_fakes.fake.subscriptions.values()

        # the owner is paused past its lease; another instance takes the integration over
        with connect() as conn:
            conn.execute("UPDATE vmrsched_leases SET expires = clock_timestamp()")
        taken = Leases(connect, "instance-b", 30).acquire("online")
        assert taken is not None
        held_b["online"] = taken
        with pytest.raises(LeaseLost):
            first.watch._caught_up()  # what the old owner learns is kept nowhere
        assert DatabaseGraphState(pool, "online", None).load() == kept

        second = GraphMailbox(integ, Metrics(), DatabaseGraphState(pool, "online", holder(held_b)))
        assert second.watch.should_list(False)  # catches up on what came during the takeover
        assert len(graph_fakes.fake.subscriptions) == 1  # the same subscription, renewed
        notification = {
            "subscriptionId": subscription["id"],
            "clientState": subscription["clientState"],
            "changeType": "created",
        }
        assert second.watch.notified([notification]) == (1, 0)
        assert second.watch.client_state == first.watch.client_state
    finally:
        first.close()
        if second is not None:
            second.close()
        pool.close()
