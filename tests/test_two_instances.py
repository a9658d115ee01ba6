"""Two `vmrsched serve` processes on one PostgreSQL, as two machines would run them: one spool
directory per integration shared by both (as a mail server would be), each instance its own
data directory. The integrations spread over the instances by leases; a burst of meetings is
answered exactly once whatever happens to the owner: SIGKILL mid-burst (the other takes over
within the lease), SIGSTOP past its lease and SIGCONT (the old owner writes nothing and steps
down). Aliases are unique by the database's constraint; none acknowledged is lost."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import psycopg
import pytest

from tests import serving, spoolkit
from tests.pgcluster import Cluster
from tests.sharedkit import write_config

pytestmark = pytest.mark.slow
LEASE = 2.0
NAMES = ("alpha", "beta")


def write(tmp: Path, instance: str, port: int) -> Path:
    return write_config(tmp, instance, port, LEASE, NAMES)


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
    made = burst(tmp_path, 200)
    time.sleep(0.5)  # mid-burst
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
    with psycopg.connect(dsn) as conn:
        bound = conn.execute(
            "SELECT count(*) FROM vmrsched_records WHERE record->>'status' = 'bound'"
        ).fetchone()
    assert bound is not None and bound[0] == len(made)  # every meeting's alias kept


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
