"""Two `vmrsched serve` processes on one PostgreSQL, as two machines would run them: one spool
directory per integration shared by both (as a mail server would be), each instance its own
data directory. The integrations spread over the instances by leases; a burst of meetings is
answered exactly once whatever happens to the owner: SIGKILL mid-burst (the other takes over
within the lease), SIGSTOP past its lease and SIGCONT (the old owner writes nothing and steps
down). Aliases are unique by the database's constraint; none acknowledged is lost. The add-in
books rooms on both instances all along (each passes on what the other runs, issue 30): no room
handed out twice, none handed out and then lost, and the survivor books for both after a
takeover."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests import serving, spoolkit
from tests.pgcluster import Cluster
from tests.sharedkit import write_config

pytestmark = pytest.mark.slow
LEASE = 2.0
NAMES = ("alpha", "beta")


def write(tmp: Path, instance: str, port: int) -> Path:
    # the add-in's test user books far more than a person would
    return write_config(tmp, instance, port, LEASE, NAMES, "rate_limit_per_minute = 100000")


def reserve(port: int, name: str) -> tuple[int, dict[str, Any]]:
    """The add-in's reservation on one instance: (status, JSON answer); (0, {}) when the
    instance cannot be reached."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/addin/v1/{name}/single-use-vmrs", data=b"{}", method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=40) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())
    except OSError:
        return 0, {}


class Booker(threading.Thread):
    """Books rooms for both integrations on both instances in turn until stopped: what each
    request got, as (port, integration, status, answer)."""

    def __init__(self, ports: list[int]) -> None:
        super().__init__(daemon=True)
        self.ports = ports
        self.done = threading.Event()
        self.got: list[tuple[int, str, int, dict[str, Any]]] = []

    def run(self) -> None:
        n = 0
        while not self.done.is_set():
            port, name = self.ports[n % 2], NAMES[(n // 2) % 2]
            self.got.append((port, name, *reserve(port, name)))
            n += 1
            time.sleep(0.005)

    def stop(self) -> list[tuple[int, str, int, dict[str, Any]]]:
        self.done.set()
        self.join(60)
        return self.got


def owned(port: int) -> list[str]:
    """What the instance on `port` says it runs (nothing while it is not answering yet)."""
    try:
        status, body = serving.get(port, "/readyz")
    except OSError:
        return []
    if status not in (200, 503):
        return []
    found: list[str] = json.loads(body).get("owned", [])
    return found


def wait_for(check: object, timeout: float = 20.0) -> None:
    spoolkit.wait_for(check, timeout=timeout)  # type: ignore[arg-type]


def burst(tmp: Path, count: int) -> list[tuple[str, str]]:
    """`count` meetings booked offline (a placeholder token: the service draws the alias)
    dropped into the shared spools: (integration, meeting uid)."""
    made = []
    for n in range(count):
        name = NAMES[n % len(NAMES)]
        data, uid = spoolkit.request(body=f"<p>TOK:-{n:08d}-0000-4000-8000-000000000000#</p>")
        spoolkit.drop(tmp / "spool" / name / "inbox", data)
        made.append((name, uid))
    return made


def answered(tmp: Path, made: list[tuple[str, str]]) -> Counter[str]:
    """How many answers (replies to the organizer) each meeting got, across both instances."""
    counts: Counter[str] = Counter()
    for name in NAMES:
        for mail in spoolkit.outbox(tmp / "spool" / name):
            uid = mail.headers.get("X-Vmrsched-Meeting-Uid", "")
            if mail.headers.get("X-Vmrsched-Outcome") in ("accepted", "declined"):
                counts[uid] += 1
    return Counter({uid: counts[uid] for _, uid in made})


@pytest.fixture
def pair(tmp_path: Path, dsn: str) -> tuple[dict[str, object], ...]:
    env = {"VMRSCHED_DSN": dsn}
    started = []
    for instance in ("one", "two"):
        port = serving.free_port()
        config = write(tmp_path, instance, port)
        started.append({"port": port, "config": config, "proc": serving.start(config, env)})
        if instance == "one":  # one takes both before two starts: then they spread
            wait_for(lambda first=port: owned(first) == list(NAMES))
    yield tuple(started)
    for item in started:
        proc: subprocess.Popen[bytes] = item["proc"]  # type: ignore[assignment]
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
            proc.terminate()
            proc.wait(30)


def test_the_integrations_spread_and_a_killed_owner_is_taken_over_exactly_once(
    tmp_path: Path, dsn: str, pair: tuple[dict[str, object], ...]
) -> None:
    one, two = pair
    wait_for(lambda: len(owned(one["port"])) == 1 and len(owned(two["port"])) == 1)  # type: ignore[arg-type]
    booker = Booker([one["port"], two["port"]])  # type: ignore[list-item]
    booker.start()
    made = burst(tmp_path, 200)
    time.sleep(0.5)  # mid-burst
    # both instances have booked for both integrations: each passed the other's on
    wait_for(lambda: len({(p, n) for p, n, status, _ in booker.got if status == 201}) == 4)
    proc: subprocess.Popen[bytes] = one["proc"]  # type: ignore[assignment]
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    killed = time.monotonic()
    wait_for(lambda: owned(two["port"]) == list(NAMES), timeout=4 * LEASE)  # type: ignore[arg-type]
    takeover = time.monotonic() - killed
    assert takeover <= 2 * LEASE + 1.0
    wait_for(
        lambda: (
            len(answered(tmp_path, made)) == len(made)
            and all(n >= 1 for n in answered(tmp_path, made).values())
        ),
        timeout=60,
    )
    counts = answered(tmp_path, made)
    assert set(counts.values()) == {1}, [uid for uid, n in counts.items() if n != 1][:5]
    got = booker.stop()
    # the survivor books for both integrations once it runs them
    after = [reserve(two["port"], name) for name in NAMES for _ in range(10)]  # type: ignore[arg-type]
    assert [status for status, _ in after] == [201] * 20, after
    with psycopg.connect(dsn) as conn:
        bound = conn.execute(
            "SELECT count(*) FROM vmrsched_records WHERE record->>'status' = 'bound'"
        ).fetchone()
        kept = {
            (name, alias, f"PXPS:-{alias_id}#")
            for name, alias, alias_id in conn.execute(
                "SELECT integration, record->>'alias', record->>'alias_id' FROM vmrsched_records"
            ).fetchall()
        }
    assert bound is not None and bound[0] == len(made)  # every meeting's alias kept
    # meanwhile only rooms, or 503 (an owner gone, a takeover) and the killed instance silent
    assert {status for _, _, status, _ in got} <= {201, 503, 0}
    assert all(port == one["port"] for port, _, status, _ in got if status == 0)
    booked = [(name, a["alias"], a["alias_id"]) for _, name, status, a in got if status == 201]
    booked += [
        (name, a["alias"], a["alias_id"])
        for name, (_, a) in zip([n for n in NAMES for _ in range(10)], after, strict=True)
    ]
    assert len(booked) > 40
    assert len({alias for _, alias, _ in booked}) == len(booked)  # none handed out twice
    assert set(booked) <= kept  # none handed out and lost


def test_an_owner_paused_past_its_lease_writes_nothing_and_steps_down(
    tmp_path: Path, dsn: str, pair: tuple[dict[str, object], ...], cluster: Cluster
) -> None:
    one, two = pair
    wait_for(lambda: len(owned(one["port"])) == 1 and len(owned(two["port"])) == 1)  # type: ignore[arg-type]
    mine = owned(one["port"])  # type: ignore[arg-type]
    proc: subprocess.Popen[bytes] = one["proc"]  # type: ignore[assignment]
    proc.send_signal(signal.SIGSTOP)
    wait_for(lambda: owned(two["port"]) == list(NAMES), timeout=4 * LEASE)  # type: ignore[arg-type]
    made = burst(tmp_path, 40)
    with psycopg.connect(dsn) as conn:
        token = conn.execute(
            "SELECT token FROM vmrsched_leases WHERE integration = %s", (mine[0],)
        ).fetchone()
    proc.send_signal(signal.SIGCONT)
    wait_for(lambda: owned(one["port"]) != mine, timeout=4 * LEASE)  # type: ignore[arg-type]
    wait_for(
        lambda: (
            all(n >= 1 for n in answered(tmp_path, made).values())
            and len(answered(tmp_path, made)) == len(made)
        ),
        timeout=60,
    )
    assert set(answered(tmp_path, made).values()) == {1}
    with psycopg.connect(dsn) as conn:
        stale = conn.execute(
            "SELECT count(*) FROM vmrsched_records WHERE integration = %s AND written < %s"
            " AND record->>'status' = 'bound'",
            (mine[0], token[0] if token else 0),
        ).fetchone()
    assert stale is not None and stale[0] == 0  # nothing of the burst under the old lease


def test_a_database_restart_mid_burst_loses_nothing_and_both_recover(
    tmp_path: Path, dsn: str, pair: tuple[dict[str, object], ...], cluster: Cluster
) -> None:
    one, two = pair
    wait_for(lambda: len(owned(one["port"])) == 1 and len(owned(two["port"])) == 1)  # type: ignore[arg-type]
    made = burst(tmp_path, 200)
    time.sleep(0.3)  # mid-burst
    cluster.restart()
    wait_for(
        lambda: (
            len(answered(tmp_path, made)) == len(made)
            and all(n >= 1 for n in answered(tmp_path, made).values())
        ),
        timeout=90,
    )
    assert set(answered(tmp_path, made).values()) == {1}
    both = lambda: sorted(owned(one["port"]) + owned(two["port"]))  # type: ignore[arg-type]  # noqa: E731
    wait_for(lambda: both() == list(NAMES), timeout=6 * LEASE)
    for item in (one, two):
        status, _ = serving.get(item["port"], "/readyz")  # type: ignore[arg-type]
        assert status == 200
