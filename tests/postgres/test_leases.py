"""Leases on a real PostgreSQL: one owner per integration at a time, the fencing token grows at
each change of owner, an owner that lost its lease can neither renew nor write, a takeover
waits for a write under the old lease to finish, and instances share the integrations."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from vmrsched.postgres import migrations
from vmrsched.postgres.leases import LeaseLost, Leases, fair_share, fence

Connect = Callable[[], psycopg.Connection[Any]]
LEASE = 0.5  # seconds


@pytest.fixture
def instances(connect: Connect) -> tuple[Leases, Leases]:
    with connect() as conn:
        migrations.migrate(conn)
    return Leases(connect, "one", LEASE), Leases(connect, "two", LEASE)


def write(connect: Connect, lease: Any, value: str) -> None:
    """A write as every write of an owner is made: fenced, in one transaction."""
    with connect() as conn, conn.transaction(), conn.cursor() as cur:
        fence(cur, lease)
        cur.execute(
            "INSERT INTO vmrsched_records (integration, alias_id, alias, numeric_alias, record,"
            " written) VALUES (%s, %s, %s, %s, '{}', %s)",
            (lease.integration, value, f"{value}@x", value, lease.token),
        )


def written(connect: Connect) -> list[tuple[str, int]]:
    with connect() as conn:
        rows = conn.execute("SELECT alias_id, written FROM vmrsched_records ORDER BY 1").fetchall()
    return [(str(a), int(w)) for a, w in rows]


def test_one_owner_at_a_time_and_the_token_grows(instances: tuple[Leases, Leases]) -> None:
    one, two = instances
    first = one.acquire("alpha")
    assert first is not None and first.token == 1
    assert two.acquire("alpha") is None  # held
    renewed = one.renew(first)
    assert renewed.token == 1 and renewed.expires > first.expires
    time.sleep(LEASE * 1.5)  # one stops renewing (paused, cut off)
    second = two.acquire("alpha")
    assert second is not None and second.token == 2
    with pytest.raises(LeaseLost):
        one.renew(renewed)
    assert set(one.holders()) == {"alpha"} and one.holders()["alpha"].owner == "two"


def test_an_owner_that_lost_its_lease_writes_nothing(
    instances: tuple[Leases, Leases], connect: Connect
) -> None:
    one, two = instances
    old = one.acquire("alpha")
    assert old is not None
    write(connect, old, "10000001")
    time.sleep(LEASE * 1.5)
    with pytest.raises(LeaseLost):  # expired, nobody took it yet: still refused
        write(connect, old, "10000002")
    new = two.acquire("alpha")
    assert new is not None
    with pytest.raises(LeaseLost):
        write(connect, old, "10000003")
    write(connect, new, "10000004")
    assert written(connect) == [("10000001", 1), ("10000004", 2)]


def test_a_takeover_waits_for_a_write_under_the_old_lease(
    instances: tuple[Leases, Leases], connect: Connect
) -> None:
    """The old owner fenced while its lease held, then stalled inside its transaction past the
    expiry: the new owner's takeover waits for that transaction, so the write lands before
    the takeover and never after it."""
    one, two = instances
    old = one.acquire("alpha")
    assert old is not None
    fenced, taken = threading.Event(), threading.Event()

    def slow_write() -> None:
        with connect() as conn, conn.transaction(), conn.cursor() as cur:
            fence(cur, old)
            fenced.set()
            time.sleep(LEASE * 2)  # past the expiry, inside the transaction
            assert not taken.is_set()  # the takeover is still waiting
            cur.execute(
                "INSERT INTO vmrsched_records (integration, alias_id, alias, numeric_alias,"
                " record, written) VALUES ('alpha', 'late', 'late@x', '1', '{}', %s)",
                (old.token,),
            )

    writer = threading.Thread(target=slow_write)
    writer.start()
    assert fenced.wait(5)
    time.sleep(LEASE * 1.2)  # expired on the database's clock
    new = None
    while new is None:
        new = two.acquire("alpha")
        time.sleep(0.01)
    taken.set()
    writer.join(10)
    assert new.token == old.token + 1
    assert written(connect) == [("late", 1)]


def test_a_released_lease_is_taken_at_once(instances: tuple[Leases, Leases]) -> None:
    one, two = instances
    lease = one.acquire("alpha")
    assert lease is not None
    one.release(lease)
    taken = two.acquire("alpha")
    assert taken is not None and taken.token == 2


def test_live_instances_share_the_integrations(instances: tuple[Leases, Leases]) -> None:
    one, two = instances
    assert one.heartbeat() == 1
    assert two.heartbeat() == 2
    assert fair_share(5, 2) == 3 and fair_share(4, 2) == 2 and fair_share(3, 0) == 3
    time.sleep(LEASE * 1.5)
    assert two.heartbeat() == 1  # one stopped saying it is alive
