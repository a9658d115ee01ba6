"""One instance name, one live process (docs/high-availability.md, "Readiness" and "The
instance's name"), on a real PostgreSQL.

The database holds, per instance name, the URL where the other instances reach its owner: two
live processes under one name would have requests passed on to the wrong one. So:

- a second process under a name a live instance holds is refused at its start, with one line
  naming where that one serves and when it was last heard from, and writes nothing: the row
  still points at the live one;
- a restart after a crash, under the same name and within the lease (the old run is silent,
  not gone from the table), starts: it waits until the old run's last heartbeat is a lease
  old, and no longer;
- a process that was paused past its lease while a new one took its name never takes it back
  while the new one lives: it runs nothing, says so in /readyz, and the row keeps the new
  one's URL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests import serving, spoolkit
from tests.sharedkit import write_config
from vmrsched.errors import Conflict
from vmrsched.postgres import migrations
from vmrsched.postgres.leases import Leases, NameInUse
from vmrsched.postgres.peers import owner_of
from vmrsched.service.storage import take_name

Connect = Callable[[], psycopg.Connection[Any]]
LEASE = 2.0
NAMES = ("alpha", "beta")


@pytest.fixture
def migrated(connect: Connect) -> Connect:
    with connect() as conn:
        migrations.migrate(conn)
    return connect


def test_a_second_run_under_a_live_name_is_refused_and_changes_nothing(migrated: Connect) -> None:
    live = Leases(migrated, "inst-a", LEASE, url="http://10.0.0.1:8080")
    live.heartbeat()
    assert live.acquire("alpha") is not None
    impostor = Leases(migrated, "inst-a", LEASE, url="http://10.0.0.9:8080")
    with pytest.raises(NameInUse) as refused:
        impostor.heartbeat()
    assert refused.value.url == "http://10.0.0.1:8080" and refused.value.age < LEASE
    assert owner_of(migrated, "alpha") is not None
    assert owner_of(migrated, "alpha").url == "http://10.0.0.1:8080"  # type: ignore[union-attr]
    live.heartbeat()  # the live one goes on as before


def test_a_name_silent_for_a_lease_goes_to_a_new_run_and_never_back_while_it_lives(
    migrated: Connect,
) -> None:
    old = Leases(migrated, "inst-a", LEASE, url="http://10.0.0.1:8080")
    old.heartbeat()
    time.sleep(LEASE + 0.2)  # paused, cut off or dead: not heard from for a lease
    new = Leases(migrated, "inst-a", LEASE, url="http://10.0.0.9:8080")
    new.heartbeat()
    with pytest.raises(NameInUse) as refused:
        old.heartbeat()  # back, too late: the name is the new run's
    assert refused.value.url == "http://10.0.0.9:8080"
    new.heartbeat()
    with migrated() as conn:
        row = conn.execute("SELECT url FROM vmrsched_instances WHERE instance = 'inst-a'")
        assert row.fetchone() == ("http://10.0.0.9:8080",)


class Beating(threading.Thread):
    """An instance's heartbeats, every third of a lease, until stopped."""

    def __init__(self, leases: Leases) -> None:
        super().__init__(daemon=True)
        self.leases = leases
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(LEASE / 3):
            self.leases.heartbeat()


def test_a_start_under_a_live_name_is_refused_and_after_a_crash_it_waits_out_the_lease(
    migrated: Connect,
) -> None:
    live = Leases(migrated, "inst-a", LEASE, url="http://10.0.0.1:8080")
    live.heartbeat()
    beating = Beating(live)
    beating.start()
    started = time.monotonic()
    with pytest.raises(Conflict, match=r"in use by another running instance, at http://10\.0\."):
        take_name(Leases(migrated, "inst-a", LEASE, url="http://10.0.0.9:8080"))
    assert time.monotonic() - started < LEASE  # as soon as it heartbeats again
    beating.done.set()
    beating.join()
    live.heartbeat()  # its last word before it crashed
    crashed = time.monotonic()
    again = Leases(migrated, "inst-a", LEASE, url="http://10.0.0.1:8080")
    take_name(again)  # the same name, restarted within the lease: it waits, then starts
    assert LEASE - 0.5 < time.monotonic() - crashed < LEASE + 1.5
    assert again.run is not None and again.heartbeat() >= 1


# --- as admins run it: `vmrsched serve` processes -----------------------------------------------


def readyz(port: int) -> dict[str, Any]:
    try:
        _, body = serving.get(port, "/readyz")
    except OSError:
        return {}
    found: dict[str, Any] = json.loads(body)
    return found


def url_of(dsn: str, instance: str) -> str:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT url FROM vmrsched_instances WHERE instance = %s", (instance,)
        ).fetchone()
    return "" if row is None else str(row[0])


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    try:
        yield started
    finally:
        for proc in started:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGCONT)
                proc.kill()
                proc.wait(30)


@pytest.mark.slow
def test_serve_refuses_a_live_name_starts_after_a_crash_and_a_paused_one_stands_down(
    tmp_path: Path, dsn: str, processes: list[subprocess.Popen[bytes]]
) -> None:
    env = {"VMRSCHED_DSN": dsn}

    def config(run: str, port: int) -> Path:
        (tmp_path / run).mkdir()
        return write_config(tmp_path / run, "inst-a", port, LEASE, NAMES)

    first_port = serving.free_port()
    processes.append(serving.start(config("first", first_port), env))
    spoolkit.wait_for(lambda: readyz(first_port).get("owned") == list(NAMES), timeout=40)

    # a second process under the same name while the first runs: refused, in one line
    duplicate = serving.command(config("duplicate", serving.free_port()), "serve", env=env)
    output = duplicate.stdout + duplicate.stderr
    assert duplicate.returncode == 1, output
    [line] = [line for line in output.splitlines() if "cannot start:" in line]
    assert f"at http://127.0.0.1:{first_port} (its last heartbeat " in line
    assert "Traceback" not in output
    assert url_of(dsn, "inst-a") == f"http://127.0.0.1:{first_port}"

    # the first crashes; its restart under the same name, within the lease, starts
    processes[0].kill()
    processes[0].wait(10)
    second_port = serving.free_port()
    processes.append(serving.start(config("second", second_port), env))
    spoolkit.wait_for(lambda: readyz(second_port).get("owned") == list(NAMES), timeout=40)
    assert url_of(dsn, "inst-a") == f"http://127.0.0.1:{second_port}"

    # paused past its lease, a process finds its name taken by a new run, and stands down
    os.kill(processes[1].pid, signal.SIGSTOP)
    third_port = serving.free_port()
    processes.append(serving.start(config("third", third_port), env))
    spoolkit.wait_for(lambda: readyz(third_port).get("owned") == list(NAMES), timeout=40)
    os.kill(processes[1].pid, signal.SIGCONT)
    spoolkit.wait_for(lambda: "in use" in readyz(second_port).get("error", ""), timeout=20)
    paused = readyz(second_port)
    assert paused["status"] == "not_ready" and paused["owned"] == []
    assert "instance_name_taken" in paused["alarms"]  # the admin's pager says so too
    time.sleep(2 * LEASE)  # and it stays so while the new run lives
    assert readyz(second_port)["owned"] == [] and readyz(third_port)["owned"] == list(NAMES)
    assert url_of(dsn, "inst-a") == f"http://127.0.0.1:{third_port}"

    # the new run gone for a lease, the paused one holds its name again: the alarm is cleared
    processes[2].kill()
    processes[2].wait()
    spoolkit.wait_for(lambda: readyz(second_port).get("owned") == list(NAMES), timeout=40)
    assert "instance_name_taken" not in readyz(second_port)["alarms"]
