"""The provisioner against a Management Node (the fake, over real HTTP) that misbehaves or was
edited by hand: an answer that is not the JSON Pexip documents is an outage with backoff, never
a crash of the actor; a Retry-After longer than the longest wait is cut to it; a conference
someone changed on Pexip (an alias dropped or added, the theme cleared, the name or the
description changed) is put back in line with the store on the next full read."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests

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


def test_a_hand_edit_on_pexip_is_put_back_on_the_next_full_read(
    tmp_path: Path, pexip: tuple[FakePexip, ThreadedServer]
) -> None:
    fake, server = pexip
    theme = fake.add_theme("Corporate")
    clock = Clock()
    env = Env(fake, server, clock, start(tmp_path, server, clock, theme="Corporate"), tmp_path)
    try:
        alias_id, _ = env.book(datetime.now(UTC) + timedelta(minutes=20))
        spoolkit.wait_for(lambda: alias_id in env.conferences())
        made = env.conferences()[alias_id]
        wanted = {k: made[k] for k in ("name", "description", "ivr_theme", "service_type")}
        assert wanted["ivr_theme"] == theme
        aliases = [a["alias"] for a in made["aliases"]]
        assert len(aliases) == 2  # the alias and the numeric alias (the phone route)
        env.running.svc.stop()

        # someone edits it on the Management Node: the numeric alias dropped and another
        # added, the theme cleared, the name and the description changed
        edit = {
            "name": "Renamed by hand",
            "description": "edited by hand",
            "ivr_theme": None,
            "aliases": [{"alias": aliases[0]}, {"alias": "by-hand@example.com"}],
        }
        url = f"{server.url}{made['resource_uri']}"
        answer = requests.patch(url, json=edit, auth=("admin", PASSWORD), timeout=5)
        assert answer.status_code == 202
        assert {a["alias"] for a in env.conferences()[alias_id]["aliases"]} == {
            aliases[0],
            "by-hand@example.com",
        }

        env.running = start(tmp_path, server, clock, theme="Corporate")  # a full read

        def restored() -> bool:
            now = env.conferences().get(alias_id, {})
            held = sorted(a["alias"] for a in now.get("aliases", []))
            return held == sorted(aliases) and all(now.get(k) == v for k, v in wanted.items())

        spoolkit.wait_for(restored, timeout=15)
        assert len(env.conferences()) == 1  # the same conference, put back: not a new one
        assert env.conferences()[alias_id]["resource_uri"] == made["resource_uri"]
        assert "pexip_refused" not in env.alarms()
    finally:
        env.running.svc.stop()


def test_an_alias_taken_meanwhile_is_refused_for_that_room_only(
    tmp_path: Path, pexip: tuple[FakePexip, ThreadedServer]
) -> None:
    """The numeric alias dropped by hand and given to another conference: putting it back is
    refused (pexip_refused, logged), and the other rooms go on."""
    fake, server = pexip
    clock = Clock()
    env = Env(fake, server, clock, start(tmp_path, server, clock), tmp_path)
    try:
        alias_id, _ = env.book(datetime.now(UTC) + timedelta(minutes=20))
        spoolkit.wait_for(lambda: alias_id in env.conferences())
        made = env.conferences()[alias_id]
        alias, numeric = (a["alias"] for a in made["aliases"])
        env.running.svc.stop()
        with fake.lock:
            fake.conferences[made["id"]]["aliases"] = made["aliases"][:1]
        fake.add_conference("Squatter", [numeric])
        env.running = start(tmp_path, server, clock)
        spoolkit.wait_for(lambda: "pexip_refused" in env.alarms())
        other, _ = env.book(datetime.now(UTC) + timedelta(minutes=25))
        spoolkit.wait_for(lambda: other in env.conferences())
        assert [a["alias"] for a in env.conferences()[alias_id]["aliases"]] == [alias]
        assert env.running.svc.ctx.status.snapshot()["alpha"]["restarts"] == 0
    finally:
        env.running.svc.stop()
