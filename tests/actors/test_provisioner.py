"""Mode "management_api": the provisioner keeps the conferences on a Pexip Management Node (the fake
in tests/fakes/pexip_server.py, over real HTTP) in line with the store: created before the first
window, deleted after the last, removed on cancellation; stray tagged conferences deleted and
foreign ones left alone on start; a duplicate name gets a number; an outage raises
`pexip_unreachable` and loses nothing. The service's clock is injected to move through windows."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests import spoolkit
from tests.configs import Running, pxps, spool_toml, stored_record
from tests.fakes.pexip_server import FakePexip
from tests.fakes.threaded import ThreadedServer
from vmrsched import config, service
from vmrsched.rules import aliases

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
    env = Env(fake, server, clock, start(tmp_path, fake, server, clock), tmp_path)
    try:
        yield env
    finally:
        env.running.svc.stop()  # the one running now: a test may have restarted it
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


# --- issue 27: joinability per occurrence, restarts, strays, limits, outages, names ---------


def test_each_occurrence_is_joinable_from_its_lead_until_its_window_closes(env: Env) -> None:
    """A daily series of three, the second moved by an hour and the third cancelled: the
    conference exists lead + join_before ahead of each window until end + join_after, and not
    between occurrences."""
    first = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=2)
    record = env.running.reserve()
    series, uid = spoolkit.request(
        body=pxps(record), start=first, minutes=60, rrule="FREQ=DAILY;COUNT=3"
    )
    env.running.send(series)
    moved, _ = spoolkit.request(
        uid,
        body=pxps(record),
        start=first + timedelta(days=1, hours=1),
        minutes=60,
        sequence=1,
        recurrence_id=first + timedelta(days=1),
    )
    env.running.send(moved)
    cancelled, _ = spoolkit.request(
        uid,
        method="CANCEL",
        start=first + timedelta(days=2),
        minutes=60,
        sequence=2,
        recurrence_id=first + timedelta(days=2),
    )
    env.running.send(cancelled)
    alias_id = record["alias_id"]
    lead = timedelta(minutes=10 + 30)  # provision_lead + join_before

    def exists_at(offset: timedelta) -> bool:
        env.clock.offset = offset
        time_now = datetime.now(UTC)
        spoolkit.wait_for(lambda: env.running.svc.ctx.clock() >= time_now + offset)
        before = len(env.fake.requests)
        spoolkit.wait_for(lambda: len(env.fake.requests) > before or True)
        import time as _time

        _time.sleep(0.6)  # a few passes
        return alias_id in env.conferences()

    base = first - datetime.now(UTC)
    assert not exists_at(base - lead - timedelta(minutes=2))
    assert exists_at(base - lead + timedelta(minutes=2))
    assert exists_at(base + timedelta(minutes=60 + 59))  # join_after
    assert not exists_at(base + timedelta(minutes=60 + 62))  # closed
    assert not exists_at(base + timedelta(hours=12))  # between occurrences
    moved_start = base + timedelta(days=1, hours=1)
    assert not exists_at(moved_start - lead - timedelta(minutes=2))
    assert exists_at(moved_start - lead + timedelta(minutes=2))
    assert not exists_at(moved_start + timedelta(minutes=60 + 62))
    assert not exists_at(base + timedelta(days=2, minutes=10))  # the cancelled occurrence


def test_participant_authentication_reaches_pexip(tmp_path: Path) -> None:
    fake = FakePexip(password=PASSWORD)
    group = fake.add_group("Staff")
    server = ThreadedServer(fake.app()).start()
    clock = Clock()
    running = start(
        tmp_path,
        fake,
        server,
        clock,
        identity_provider_group="Staff",
        other_participants="allow_if_trusted",
    )
    try:
        env = Env(fake, server, clock, running, tmp_path)
        alias_id, _ = env.book(datetime.now(UTC) + timedelta(minutes=20))
        spoolkit.wait_for(lambda: alias_id in env.conferences())
        conference = env.conferences()[alias_id]
        assert conference["host_identity_provider_group"] == group
        assert conference["non_idp_participants"] == "allow_if_trusted"
    finally:
        running.svc.stop()
        server.stop()


def test_names_of_pexip_services_are_not_handed_out_and_one_name_is_served(
    tmp_path: Path,
) -> None:
    fake = FakePexip(password=PASSWORD)
    fake.add_conference("Board meeting", ["board@example.com"])
    server = ThreadedServer(fake.app()).start()
    clock = Clock()
    running = start(tmp_path, fake, server, clock, conference_name_template="Board meeting")
    try:
        env = Env(fake, server, clock, running, tmp_path)
        index = running.svc.ctx.alias_index
        spoolkit.wait_for(lambda: index.name_taken("Board meeting", "alpha"))
        alias_id, _ = env.book(datetime.now(UTC) + timedelta(days=2))  # not provisioned yet
        allocator = running.svc.ctx.registry.get("alpha", "allocator")
        stored = stored_record(allocator, alias_id)["name"]
        assert stored.startswith("Board meeting ") and stored != "Board meeting"
        # a name Pexip got since the last read: Pexip's copy gets a number, and the policy
        # answer names the conference as Pexip does
        fake.add_conference("Board meeting 2", ["board2@example.com"])
        later, _ = env.book(datetime.now(UTC) + timedelta(minutes=20))
        spoolkit.wait_for(lambda: later in env.conferences())
        held = env.conferences()[later]["name"]
        alias = env.conferences()[later]["aliases"][0]["alias"]
        assert running.svc.policy_answer(alias)[1]["result"]["name"] == held
    finally:
        running.svc.stop()
        server.stop()


def test_a_restart_never_cuts_off_live_meetings(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    live = [env.book(datetime.now(UTC) + timedelta(minutes=5 + n))[0] for n in range(3)]
    spoolkit.wait_for(lambda: set(live) <= set(env.conferences()))
    env.running.svc.stop()
    from vmrsched.actors import allocator

    slow_publish = allocator.AliasAllocator._publish_all

    def slowly(self: Any) -> None:  # a big store: the provisioner's first pass comes first
        import time as _time

        _time.sleep(1.5)
        slow_publish(self)

    monkeypatch.setattr(allocator.AliasAllocator, "_publish_all", slowly)
    env.fake.requests.clear()
    env.running = start(env.tmp, env.fake, env.server, env.clock)
    spoolkit.wait_for(
        lambda: ("GET", "/api/admin/configuration/v1/conference/") in env.fake.requests
    )
    import time as _time

    _time.sleep(1.0)
    assert not [r for r in env.fake.requests if r[0] == "DELETE"]
    assert set(live) <= set(env.conferences())


def test_a_second_conference_with_a_live_tag_is_removed_and_cancelling_unroutes(
    tmp_path: Path,
) -> None:
    fake = FakePexip(password=PASSWORD)
    server = ThreadedServer(fake.app()).start()
    clock = Clock()
    running = start(tmp_path, fake, server, clock)
    env = Env(fake, server, clock, running, tmp_path)
    try:
        start_at = datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=20)
        alias_id, uid = env.book(start_at)
        spoolkit.wait_for(lambda: alias_id in env.conferences())
        running.svc.stop()
        # while stopped, someone copies it by hand (another alias, the same tag)
        fake.add_conference("Copy", ["copy-of-it@example.com"], tag=TAG + alias_id)
        env.running = running = start(tmp_path, fake, server, clock)
        spoolkit.wait_for(lambda: "Copy" not in {c["name"] for c in fake.conferences.values()})
        assert alias_id in env.conferences()
        cancel, _ = spoolkit.request(uid, method="CANCEL", sequence=1, start=start_at, minutes=60)
        env.running.send(cancel)
        spoolkit.wait_for(lambda: not fake.by_tag(TAG))
    finally:
        env.running.svc.stop()
        server.stop()


def test_a_long_name_is_shortened_to_pexips_limit(tmp_path: Path) -> None:
    fake = FakePexip(password=PASSWORD)
    server = ThreadedServer(fake.app()).start()
    clock = Clock()
    running = start(tmp_path, fake, server, clock, conference_name_template="x" * 300)
    try:
        env = Env(fake, server, clock, running, tmp_path)
        alias_id, _ = env.book(datetime.now(UTC) + timedelta(minutes=20))
        spoolkit.wait_for(lambda: alias_id in env.conferences())
        name = env.conferences()[alias_id]["name"]
        assert 0 < len(name) <= 250
        alias = env.conferences()[alias_id]["aliases"][0]["alias"]
        assert running.svc.policy_answer(alias)[1]["result"]["name"] == name
    finally:
        running.svc.stop()
        server.stop()


def test_a_refusal_is_logged_per_alias_and_not_retried_in_a_loop(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    env.fake.refuse = {"name": ["Enter a valid value."]}
    alias_id, _ = env.book(datetime.now(UTC) + timedelta(minutes=20))
    spoolkit.wait_for(lambda: "pexip_refused" in env.alarms())
    import time as _time

    _time.sleep(1.5)  # fifteen passes
    posts = [
        r for r in env.fake.requests if r == ("POST", "/api/admin/configuration/v1/conference/")
    ]
    assert len(posts) == 1
    alias = env.running.svc.ctx.alias_index.rooms("alpha")[0].alias
    assert any(alias in r.getMessage() and r.levelname == "ERROR" for r in caplog.records)
    assert alias_id not in env.conferences()


def test_a_refused_list_never_takes_the_integration_down(env: Env) -> None:
    env.running.svc.stop()
    env.fake.fail_lists = 400  # a proxy's error page in front of the Management Node
    env.running = start(env.tmp, env.fake, env.server, env.clock)
    alias_id, _ = env.book(datetime.now(UTC) + timedelta(minutes=20))
    spoolkit.wait_for(lambda: "pexip_unreachable" in env.alarms(), timeout=30)
    import time as _time

    _time.sleep(2.5)  # several failed passes: each was a restart before
    snapshot = env.running.svc.ctx.status.snapshot()["alpha"]
    assert snapshot["state"] == "running" and snapshot["restarts"] == 0
    assert env.running.reserve()["alias"]  # bookings go on
    env.fake.fail_lists = 0
    spoolkit.wait_for(lambda: alias_id in env.conferences(), timeout=60)


def test_after_an_outage_pexip_is_read_back_once(env: Env) -> None:
    env.fake.down = True
    booked = []
    for n in range(6):  # changes made during the outage, each a poke
        booked.append(env.book(datetime.now(UTC) + timedelta(minutes=20 + n))[0])
        spoolkit.wait_for(lambda: "pexip_unreachable" in env.alarms())
    import time as _time

    _time.sleep(3.0)
    env.fake.down = False
    env.fake.requests.clear()
    spoolkit.wait_for(lambda: set(booked) <= set(env.conferences()), timeout=60)
    _time.sleep(8.0)  # the retries an outage used to leave behind
    lists = [
        r for r in env.fake.requests if r == ("GET", "/api/admin/configuration/v1/conference/")
    ]
    assert len(lists) == 1


def test_an_alias_a_registered_device_holds_is_not_handed_out(tmp_path: Path) -> None:
    """A device registered to Pexip owns its alias (a call to it rings the device): the draw
    that would give a room that alias draws another."""
    first = "81" + aliases.random_digits(6, random.Random(7))

    def first_reservation(tmp: Path, device: bool) -> str:
        fake = FakePexip(password=PASSWORD)
        if device:
            fake.add_device(f"{first}@video.example.com")
        server = ThreadedServer(fake.app()).start()
        cfg = make_config(tmp, server.url)
        svc = service.start(cfg, clock=Clock(), provision_interval=0.1, rng=random.Random(7))
        try:
            index = svc.ctx.alias_index
            spoolkit.wait_for(lambda: svc.ctx.status.state("alpha") == "running")
            if device:
                spoolkit.wait_for(lambda: index.alias_taken(first))
            else:
                read = ("GET", "/api/admin/configuration/v1/device/")
                spoolkit.wait_for(lambda: read in fake.requests)
            return str(Running(svc, cfg).reserve()["numeric_alias"])
        finally:
            svc.stop()
            server.stop()

    assert first_reservation(tmp_path / "without", device=False) == first  # the draw is known
    assert first_reservation(tmp_path / "with", device=True) != first
