"""The other instances as one instance finds them (vmrsched/postgres/peers.py), on a real
PostgreSQL: an integration's owner and the URL its heartbeat advertised while its lease holds,
nobody once it ran out; one key for every instance, however many make it at once; what was
found kept for a moment and asked again when told it was wrong."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from vmrsched.postgres import migrations
from vmrsched.postgres.leases import Leases
from vmrsched.postgres.peers import KEY_BYTES, Owner, Peers, owner_of, shared_key

Connect = Callable[[], psycopg.Connection[Any]]
LEASE = 0.5


@pytest.fixture
def migrated(connect: Connect) -> Connect:
    with connect() as conn:
        migrations.migrate(conn)
    return connect


def test_the_owner_is_the_lease_holder_at_the_url_its_heartbeat_advertised(
    migrated: Connect,
) -> None:
    one = Leases(migrated, "one", LEASE, url="http://10.0.0.1:8080")
    assert owner_of(migrated, "alpha") is None  # never taken
    one.heartbeat()
    lease = one.acquire("alpha")
    assert lease is not None
    assert owner_of(migrated, "alpha") == Owner("one", "http://10.0.0.1:8080")
    one.release(lease)
    assert owner_of(migrated, "alpha") is None  # released: a takeover under way
    time.sleep(LEASE + 0.1)  # one stopped (or died); a restart elsewhere under the same name
    moved = Leases(migrated, "one", LEASE, url="http://10.0.0.9:8080")
    moved.heartbeat()
    assert moved.acquire("alpha") is not None
    assert owner_of(migrated, "alpha") == Owner("one", "http://10.0.0.9:8080")  # it follows


def test_an_owner_that_never_said_where_it_serves_has_no_url(migrated: Connect) -> None:
    silent = Leases(migrated, "old", LEASE)
    assert silent.acquire("alpha") is not None  # no heartbeat row at all
    assert owner_of(migrated, "alpha") == Owner("old", "")
    time.sleep(LEASE + 0.1)
    assert owner_of(migrated, "alpha") is None  # expired


def test_every_instance_gets_the_same_key_however_many_make_it_at_once(
    migrated: Connect,
) -> None:
    found: list[bytes] = []
    start = threading.Barrier(8)

    def make() -> None:
        start.wait()
        found.append(shared_key(migrated))

    threads = [threading.Thread(target=make) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(found) == 8 and len(set(found)) == 1 and len(found[0]) == KEY_BYTES
    assert shared_key(migrated) == found[0]
    assert shared_key(migrated, "another") != found[0]


def test_what_was_found_is_kept_for_a_moment_and_asked_again_when_wrong(
    migrated: Connect,
) -> None:
    now = [0.0]
    peers = Peers(migrated, ttl=1.0, clock=lambda: now[0])
    one = Leases(migrated, "one", 30, url="http://one:8080")
    one.heartbeat()
    lease = one.acquire("alpha")
    assert lease is not None
    assert peers.owner("alpha") == Owner("one", "http://one:8080")
    one.release(lease)
    assert peers.owner("alpha") == Owner("one", "http://one:8080")  # kept
    now[0] = 1.5
    assert peers.owner("alpha") is None  # asked again
    two = Leases(migrated, "two", 30, url="http://two:8080")
    two.heartbeat()
    assert two.acquire("alpha") is not None
    assert peers.owner("alpha") is None  # kept
    peers.forget("alpha")
    assert peers.owner("alpha") == Owner("two", "http://two:8080")
    assert peers.key() == shared_key(migrated)
