"""An owner paused in the middle of a fenced write (SIGSTOP, a frozen VM) does not keep its
integration from being taken over (docs/high-availability.md, "How long a takeover takes"), on a
real PostgreSQL.

A fenced write holds a share lock on the lease row until it commits, so that no takeover lands
in between; a process paused inside one would hold it until it resumes, and the instance taking
the lease over would wait as long. The service's connections are ended by the database once
idle inside a transaction for a lease: the lock goes with the session, and the takeover waits
about a lease, as after a kill. The paused owner, once it resumes, finds its session gone and
writes nothing."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import psycopg
import pytest

from tests.sharedkit import one_integration
from vmrsched.postgres import migrations
from vmrsched.postgres.leases import Lease, Leases, fence
from vmrsched.service.runtime import database

LEASE = 2.0  # one_integration's


def test_a_write_paused_inside_its_transaction_lets_the_lease_go_after_a_lease(
    tmp_path: Path, dsn: str
) -> None:
    connect = database(one_integration(tmp_path, dsn), service=True)
    with connect() as conn:
        migrations.migrate(conn)
    lease = Leases(connect, "paused", LEASE).acquire("alpha")
    assert lease is not None
    paused = connect()
    paused.execute("BEGIN")
    with paused.cursor() as cur:
        fence(cur, lease)  # the share lock of a fenced write, and then nothing: paused
    taken: list[Lease | None] = []
    started = time.monotonic()
    taker = threading.Thread(
        target=lambda: taken.append(Leases(connect, "other", LEASE).acquire("alpha")),
        daemon=True,
    )
    time.sleep(LEASE + 0.1)  # the lease has run out: the next acquire takes it, once it may
    taker.start()
    taker.join(4 * LEASE)
    assert taken and taken[0] is not None and taken[0].owner == "other"
    assert time.monotonic() - started < 2 * LEASE + 1
    with pytest.raises(psycopg.Error):  # it resumes: its session was ended
        paused.execute("INSERT INTO vmrsched_decisions (integration, entry) VALUES ('a', '{}')")
    paused.close()
