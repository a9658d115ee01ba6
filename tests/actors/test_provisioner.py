"""Mode "management_api": the provisioner keeps the conferences on a Pexip Management Node (the fake
in tests/fakes/pexip_server.py, over real HTTP) in line with the store: created before the first
window, deleted after the last, removed on cancellation; stray tagged conferences deleted and
foreign ones left alone on start; a duplicate name gets a number; an outage raises
`pexip_unreachable` and loses nothing. The service's clock is injected to move through windows."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests import spoolkit
from tests.configs import Running, pxps, spool_toml
from tests.fakes.pexip_server import FakePexip
from tests.fakes.threaded import ThreadedServer
from vmrsched import config, service

PASSWORD = "pexip-secret"
TAG = "vmrsched/alpha/"


@dataclass
class Clock:
    offset: timedelta = field(default_factory=timedelta)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset


@dataclass
class Env:
    fake: FakePexip
    server: ThreadedServer
    clock: Clock
    running: Running
    tmp: Path

    def book(self, start: datetime, uid: str | None = None) -> tuple[str, str]:
        """Reserve an alias, send the room a meeting carrying it; (alias id, meeting uid)."""
        record = self.running.reserve()
        data, uid = spoolkit.request(uid, body=pxps(record), start=start, minutes=60)
        self.running.send(data)
        return record["alias_id"], uid

    def conferences(self) -> dict[str, dict[str, Any]]:
        return {tag[len(TAG) :]: c for tag, c in self.fake.by_tag(TAG).items()}

    def alarms(self) -> set[str]:
        return {a.name for a in self.running.svc.ctx.alarms.active("alpha")}


def make_config(tmp: Path, url: str, **single_use: Any) -> config.Config:
    doc = {
        "server": {"data_dir": str(tmp / "data")},
        "integrations": [
            {
                "name": "alpha",
                "exchange": {"mailbox_name": "Video Room", "mailbox_email": "vmr@example.com"},
                "addin": {"token_validation": "none", "server_fqdn": "vc.example.com"},
                "spool": {"poll_interval_seconds": 0.05},
                "single_use": {"alias_prefix": "81", **single_use},
                "pexip": {
                    "mode": "management_api",
                    "management_url": url,
                    "management_username": "admin",
                    "management_password_env": "PEXIP_PW",
                    "provision_lead_minutes": 10,
                },
            }
        ],
    }
    return config.parse(doc, tmp, {"PEXIP_PW": PASSWORD})


def start(
    env_tmp: Path, fake: FakePexip, server: ThreadedServer, clock: Clock, **su: Any
) -> Running:
    cfg = make_config(env_tmp, server.url, **su)
    svc = service.start(cfg, clock=clock, provision_interval=0.1)
    spoolkit.wait_for(lambda: svc.ctx.status.state("alpha") == "running")
    return Running(svc, cfg)


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    fake = FakePexip(password=PASSWORD)
    server = ThreadedServer(fake.app()).start()
    clock = Clock()
    running = start(tmp_path, fake, server, clock)
    try:
        yield Env(fake, server, clock, running, tmp_path)
    finally:
        running.svc.stop()
        server.stop()


def test_conferences_exist_from_before_the_first_window_to_after_the_last(env: Env) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    soon, _ = env.book(now + timedelta(minutes=30))
    later, later_uid = env.book(now + timedelta(days=3))
    spoolkit.wait_for(lambda: soon in env.conferences())
    conference = env.conferences()[soon]
    record = env.running.svc.ctx.alias_index.lookup(conference["aliases"][0]["alias"])
    assert record is not None and record.alias_id == soon
    assert {a["alias"] for a in conference["aliases"]} == {record.alias, record.numeric_alias}
    assert conference["service_type"] == "conference" and conference["name"] == record.name
    assert later not in env.conferences()  # days away: not yet

    # past the end of the first meeting's window (end + join_after 60 min): deleted
    env.clock.offset = timedelta(hours=3)
    spoolkit.wait_for(lambda: soon not in env.conferences())
    # within lead + join_before of the second one: created
    env.clock.offset = timedelta(days=3) - timedelta(minutes=35)
    spoolkit.wait_for(lambda: later in env.conferences())
    # the organizer cancels: removed
    cancel, _ = spoolkit.request(
        later_uid, method="CANCEL", sequence=1, start=now + timedelta(days=3), minutes=60
    )
    env.running.send(cancel)
    spoolkit.wait_for(lambda: later not in env.conferences())


def test_start_up_deletes_stray_tagged_conferences_and_never_touches_others(
    tmp_path: Path,
) -> None:
    fake = FakePexip(password=PASSWORD)
    fake.add_conference("Left over", ["81000001@video.example.com"], tag=TAG + "gone-alias-id")
    fake.add_conference("The CEO's room", ["ceo@example.com"])
    fake.add_conference("Another service", ["x@example.com"], tag="vmrsched/beta/abc")
    server = ThreadedServer(fake.app()).start()
    clock = Clock()
    running = start(tmp_path, fake, server, clock)
    try:
        spoolkit.wait_for(lambda: "Left over" not in {c["name"] for c in fake.conferences.values()})
        env = Env(fake, server, clock, running, tmp_path)
        alias_id, _ = env.book(datetime.now(UTC) + timedelta(minutes=20))
        spoolkit.wait_for(lambda: alias_id in env.conferences())
        # several passes later, the conferences that are not ours are all still there
        names = {c["name"] for c in fake.conferences.values()}
        assert {"The CEO's room", "Another service"} <= names
    finally:
        running.svc.stop()
    # lost on Pexip while the service was down: recreated on the next start
    with fake.lock:
        fake.conferences.clear()
    running = start(tmp_path, fake, server, clock)
    try:
        spoolkit.wait_for(lambda: alias_id in {t[len(TAG) :] for t in fake.by_tag(TAG)})
    finally:
        running.svc.stop()
        server.stop()


def test_a_duplicate_name_gets_a_number_appended(tmp_path: Path) -> None:
    fake = FakePexip(password=PASSWORD)
    fake.add_conference("Board meeting", ["board@example.com"])
    server = ThreadedServer(fake.app()).start()
    clock = Clock()
    running = start(tmp_path, fake, server, clock, conference_name_template="Board meeting")
    try:
        env = Env(fake, server, clock, running, tmp_path)
        alias_id, _ = env.book(datetime.now(UTC) + timedelta(minutes=20))
        spoolkit.wait_for(lambda: alias_id in env.conferences())
        name = env.conferences()[alias_id]["name"]
        assert name.startswith("Board meeting ") and name[len("Board meeting ") :].isdigit()
    finally:
        running.svc.stop()
        server.stop()


def test_an_outage_raises_the_alarm_and_loses_nothing(env: Env) -> None:
    env.fake.down = True
    alias_id, _ = env.book(datetime.now(UTC) + timedelta(minutes=20))
    spoolkit.wait_for(lambda: "pexip_unreachable" in env.alarms())
    assert alias_id not in env.conferences()
    assert env.running.svc.ctx.status.state("alpha") == "running"  # backing off, not crashing
    env.fake.down = False
    spoolkit.wait_for(lambda: alias_id in env.conferences(), timeout=30)
    spoolkit.wait_for(lambda: "pexip_unreachable" not in env.alarms())


def test_a_refused_conference_raises_pexip_refused_and_the_rest_go_on(env: Env) -> None:
    env.fake.add_conference("Squatter", [])
    first, _ = env.book(datetime.now(UTC) + timedelta(minutes=20))
    spoolkit.wait_for(lambda: first in env.conferences())
    taken = env.conferences()[first]["aliases"][0]["alias"]
    # someone configures our next alias by hand on Pexip: that conference is refused
    record = env.running.reserve()
    env.fake.add_conference("By hand", [record["alias"]])
    data, _ = spoolkit.request(body=pxps(record), start=datetime.now(UTC) + timedelta(minutes=25))
    env.running.send(data)
    spoolkit.wait_for(lambda: "pexip_refused" in env.alarms())
    third, _ = env.book(datetime.now(UTC) + timedelta(minutes=30))
    spoolkit.wait_for(lambda: third in env.conferences())
    assert record["alias_id"] not in env.conferences() and taken


@pytest.mark.parametrize("password", [PASSWORD, "wrong"])
def test_check_config_online_tries_the_management_api(tmp_path: Path, password: str) -> None:
    fake = FakePexip(password=PASSWORD)
    server = ThreadedServer(fake.app()).start()
    try:
        path = tmp_path / "vmrsched.toml"
        path.write_text(
            spool_toml(
                tmp_path / "data",
                integration=(
                    '[integrations.pexip]\nmode = "management_api"\n'
                    f'management_url = "{server.url}"\nmanagement_username = "admin"\n'
                    'management_password_env = "PEXIP_PW"\n'
                ),
            )
        )
        out = subprocess.run(
            [sys.executable, "-m", "vmrsched", "check-config", "--online", "--config", str(path)],
            capture_output=True,
            text=True,
            env={**os.environ, "PEXIP_PW": password},
            timeout=60,
        )
    finally:
        server.stop()
    if password == PASSWORD:
        assert out.returncode == 0, out.stdout + out.stderr
        assert "ok    Pexip management API" in out.stdout
    else:
        assert out.returncode == 1
        assert "FAIL  Pexip management API" in out.stdout and "401" in out.stdout
