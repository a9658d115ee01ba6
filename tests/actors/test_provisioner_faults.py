"""The provisioner against a Management Node (the fake, over real HTTP) that misbehaves: an
answer that is not the JSON Pexip documents is an outage with backoff, never a
crash of the actor; a Retry-After longer than the longest wait is cut to it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests import spoolkit
from tests.actors.test_provisioner import PASSWORD, Clock, Env, make_config
from tests.configs import Running
from tests.fakes.pexip_server import API, FakePexip
from tests.fakes.threaded import ThreadedServer
from vmrsched import service
from vmrsched.actors.supervision import RestartPolicy


def start(
    tmp: Path, server: ThreadedServer, clock: Clock, policy: RestartPolicy | None = None, **su: Any
) -> Running:
    cfg = make_config(tmp, server.url, **su)
    extra = {"policy": policy} if policy is not None else {}
    svc = service.start(cfg, clock=clock, provision_interval=0.1, **extra)
    spoolkit.wait_for(lambda: svc.ctx.status.state("alpha") == "running")
    return Running(svc, cfg)


@pytest.fixture
def pexip() -> Iterator[tuple[FakePexip, ThreadedServer]]:
    fake = FakePexip(password=PASSWORD)
    server = ThreadedServer(fake.app()).start()
    yield fake, server
    server.stop()


ENVELOPE = '{"meta": {"limit": 500, "next": null, "offset": 0, "total_count": 1}, "objects": '


@pytest.mark.parametrize(
    ("kind", "body"),
    [
        ("text/html", "<html><body>Maintenance</body></html>"),
        ("application/json", ENVELOPE + '[{"name": "Cut'),
        (
            "application/json",
            ENVELOPE + '[{"name": "A", "tag": "vmrsched/alpha/x", "aliases": "a@x",'
            ' "resource_uri": "/api/admin/configuration/v1/conference/1/"}]}',
        ),
    ],
    ids=["html", "cut off", "aliases of another shape"],
)
def test_an_answer_that_is_not_pexips_json_is_an_outage_not_a_crash(
    tmp_path: Path, pexip: tuple[FakePexip, ThreadedServer], kind: str, body: str
) -> None:
    fake, server = pexip
    fake.list_body = (kind, body)  # 200, but not the list Pexip documents
    running = start(tmp_path, server, Clock())
    env = Env(fake, server, Clock(), running, tmp_path)
    try:
        alias_id, _ = env.book(datetime.now(UTC) + timedelta(minutes=20))
        spoolkit.wait_for(lambda: "pexip_unreachable" in env.alarms(), timeout=30)
        time.sleep(2.5)  # the first retries (backoff from 2 s): each was a restart before
        snapshot = running.svc.ctx.status.snapshot()["alpha"]
        assert snapshot["state"] == "running" and snapshot["restarts"] == 0
        lists = [r for r in fake.requests if r == ("GET", API + "conference/")]
        assert 1 <= len(lists) <= 3  # backing off, not a restart every 0.1 s
        fake.list_body = None
        spoolkit.wait_for(lambda: alias_id in env.conferences(), timeout=30)
        spoolkit.wait_for(lambda: "pexip_unreachable" not in env.alarms())
    finally:
        env.running.svc.stop()


def test_a_retry_after_longer_than_the_longest_wait_is_cut_to_it(
    tmp_path: Path, pexip: tuple[FakePexip, ThreadedServer]
) -> None:
    """One 503 with Retry-After: 3600 (a load balancer's word) waits the longest wait (here
    shortened to 1 s), not an hour: a booking made meanwhile gets its conference once Pexip
    is back."""
    fake, server = pexip
    fake.down, fake.retry_after = True, "3600"
    running = start(tmp_path, server, Clock(), RestartPolicy(mailbox_max=1.0))
    env = Env(fake, server, Clock(), running, tmp_path)
    try:
        spoolkit.wait_for(lambda: "pexip_unreachable" in env.alarms())
        fake.down = False
        alias_id, _ = env.book(datetime.now(UTC) + timedelta(minutes=20))
        spoolkit.wait_for(lambda: alias_id in env.conferences(), timeout=10)
    finally:
        env.running.svc.stop()

