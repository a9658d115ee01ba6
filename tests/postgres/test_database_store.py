"""The database backend's own promises, on a real PostgreSQL (the behaviour both backends share
is in tests/test_store.py): a commit lands whole or not at all; a database that cannot take it
takes the group back and the next commit works once it is back; an owner whose lease is lost
writes nothing more; aliases are unique across integrations by constraint."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest

from tests.pgcluster import Cluster
from vmrsched.postgres import migrations
from vmrsched.postgres.leases import Leases
from vmrsched.postgres.records import Records
from vmrsched.store import DatabaseStore, OwnershipLostError, StorageUnavailableError

Connect = Callable[[], psycopg.Connection[Any]]
NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


@pytest.fixture
def connect(connect: Connect) -> Connect:
    with connect() as conn:
        migrations.migrate(conn)
    return connect


def open_store(connect: Connect, integration: str = "alpha", seed: int = 3) -> DatabaseStore:
    return DatabaseStore(Records(connect, integration), clock=lambda: NOW, rng=random.Random(seed))


def rows(connect: Connect) -> int:
    with connect() as conn:
        found = conn.execute("SELECT count(*) FROM vmrsched_records").fetchone()
    return int(found[0]) if found else 0


def test_a_group_lands_whole_in_one_commit(connect: Connect) -> None:
    store = open_store(connect)
    made = [store.reserve("81", 6, "video.example.com") for _ in range(50)]
    assert rows(connect) == 0  # nothing before the commit
    store.commit()
    assert rows(connect) == 50
    again = open_store(connect)
    assert [again.get(r["alias_id"]) for r in made] == made


def test_a_database_restart_takes_the_group_back_and_the_next_commit_works(
    connect: Connect, cluster: Cluster
) -> None:
    store = open_store(connect)
    kept = store.reserve("81", 6, "d")
    store.commit()
    cluster.restart()  # the store's connection is cut
    lost = store.reserve("81", 6, "d")
    with pytest.raises(StorageUnavailableError):
        store.commit()
    assert store.get(lost["alias_id"]) is None  # taken back: memory is what the database has
    assert store.get(kept["alias_id"]) == kept
    assert store.has_room()  # the database answers again (a new connection)
    later = store.reserve("81", 6, "d")
    store.commit()
    again = open_store(connect)
    assert {r["alias_id"] for r in again.records()} == {kept["alias_id"], later["alias_id"]}


def test_an_unreachable_database_is_reported_not_ready(connect: Connect, cluster: Cluster) -> None:
    store = open_store(connect)
    store.reserve("81", 6, "d")
    cluster.stop()
    try:
        with pytest.raises(StorageUnavailableError):
            store.commit()
        assert not store.has_room()
    finally:
        cluster.start()
    assert store.has_room()


def test_an_owner_whose_lease_was_taken_writes_nothing_more(connect: Connect) -> None:
    one, two = Leases(connect, "one", 0.3), Leases(connect, "two", 0.3)
    lease = one.acquire("alpha")
    assert lease is not None
    records = Records(connect, "alpha")
    records.lease = lease
    store = DatabaseStore(records, clock=lambda: NOW, rng=random.Random(3))
    store.reserve("81", 6, "d")
    store.commit()
    time.sleep(0.5)
    assert two.acquire("alpha") is not None
    store.reserve("81", 6, "d")
    with pytest.raises(OwnershipLostError):
        store.commit()
    with pytest.raises(OwnershipLostError):  # and refuses every further write
        store.reserve("81", 6, "d")
    assert rows(connect) == 1


def test_an_alias_another_integration_holds_is_refused_whole(connect: Connect) -> None:
    """check-config keeps two integrations' ranges apart; the constraint is the last guard:
    a group holding one taken alias is refused whole and taken back."""
    alpha, beta = open_store(connect, "alpha", seed=5), open_store(connect, "beta", seed=5)
    taken = alpha.reserve("81", 6, "d")
    alpha.commit()
    same = beta.reserve("81", 6, "d")  # the same draw: beta does not know alpha's aliases
    fine = beta.reserve("82", 6, "d")
    assert same["numeric_alias"] == taken["numeric_alias"]
    with pytest.raises(StorageUnavailableError, match="already exists"):
        beta.commit()
    assert beta.get(fine["alias_id"]) is None and beta.get(same["alias_id"]) is None
    assert rows(connect) == 1
