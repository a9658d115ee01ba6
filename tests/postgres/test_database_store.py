"""The database backend's own promises, on a real PostgreSQL (the behaviour both backends share
is in tests/store/test_store.py): a commit lands whole or not at all; a database that cannot take it
takes the group back and the next commit works once it is back; an owner whose lease is lost
writes nothing more; aliases are unique across integrations by constraint, and a reservation
whose alias another instance's integration drew at the same moment gets another one, unseen by
whoever asked for it; a commit is one statement that still fences, lands whole and numbers every
change."""

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
from vmrsched.postgres.records import AliasConflict, Records
from vmrsched.rules.meetings import Action
from vmrsched.rules.recurrence import Schedule
from vmrsched.store import DatabaseStore, OwnershipLostError, StorageUnavailableError, StoredRecord
from vmrsched.store.database import ALIAS_RETRIES

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


def test_a_database_restart_costs_no_commit_and_one_it_did_not_take_is_taken_back(
    connect: Connect, cluster: Cluster
) -> None:
    store = open_store(connect)
    kept = store.reserve("81", 6, "d")
    store.commit()
    cluster.restart()  # the store's idle connection is ended: seen before the next commit
    after = store.reserve("81", 6, "d")
    store.commit()  # on a new connection
    cluster.stop()
    try:
        lost = store.reserve("81", 6, "d")
        with pytest.raises(StorageUnavailableError):
            store.commit()
    finally:
        cluster.start()
    assert store.get(lost["alias_id"]) is None  # taken back: memory is what the database has
    assert store.get(kept["alias_id"]) == kept
    assert store.has_room()  # the database answers again (a new connection)
    later = store.reserve("81", 6, "d")
    store.commit()
    again = open_store(connect)
    assert {r["alias_id"] for r in again.records()} == {
        kept["alias_id"],
        after["alias_id"],
        later["alias_id"],
    }


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


class CountingRecords(Records):
    """Records that count the commits tried (each one statement to the database)."""

    def __init__(self, connect: Connect, integration: str) -> None:
        super().__init__(connect, integration)
        self.commits = 0

    def commit(self, puts: list[StoredRecord], archived: list[str]) -> None:
        self.commits += 1
        super().commit(puts, archived)


def stored(connect: Connect, integration: str) -> dict[str, dict[str, Any]]:
    """The records of one integration as the database holds them, by alias id."""
    with connect() as conn:
        found = conn.execute(
            "SELECT alias_id, record FROM vmrsched_records WHERE integration = %s",
            (integration,),
        ).fetchall()
    return {str(alias_id): record for alias_id, record in found}


def test_a_reservation_whose_alias_another_integration_drew_gets_another_and_lands(
    connect: Connect,
) -> None:
    """Two instances, each running one integration with its own view of the aliases, draw the
    same alias at the same moment: both commits land, the later one with another alias, in
    the very record its caller holds (the allocator answers with it after the commit)."""
    alpha = open_store(connect, "alpha", seed=5)
    leases = Leases(connect, "beta-instance", 60)
    lease = leases.acquire("beta")
    assert lease is not None
    records = CountingRecords(connect, "beta")
    records.lease = lease  # fenced, as the service's allocator is
    beta = DatabaseStore(records, clock=lambda: NOW, rng=random.Random(5))
    first = alpha.reserve("81", 6, "video.example.com", user="ann@example.com")
    mine = beta.reserve("81", 6, "video.example.com", user="bob@example.com")
    other = beta.reserve("82", 6, "video.example.com")
    drawn = mine["numeric_alias"]
    assert drawn == first["numeric_alias"]  # forced: the same random source
    alpha.commit()
    beta.commit()  # no error: nothing for the allocator to answer 503 or raise an alarm for

    assert records.commits == 2
    assert mine["numeric_alias"] != drawn and mine["numeric_alias"].startswith("81")
    assert mine["alias"] == mine["numeric_alias"] + "@video.example.com"
    assert stored(connect, "beta") == {mine["alias_id"]: mine, other["alias_id"]: other}
    assert stored(connect, "alpha") == {first["alias_id"]: first}
    # the store's index follows: found by the new alias, not by the old; the quota counts it
    assert beta.by_alias(mine["alias"]) is mine and beta.by_alias(drawn) is None
    assert beta.open_reservations("bob@example.com") == 1
    assert beta.take_changes() == [mine, other]  # what the allocator publishes
    # the alias the database refused is never drawn again
    assert beta.numeric_taken(drawn)
    again = open_store(connect, "beta")
    assert again.get(mine["alias_id"]) == mine


def test_redrawn_aliases_come_back_whole_after_a_reopen(connect: Connect) -> None:
    alpha = open_store(connect, "alpha", seed=9)
    taken = [alpha.reserve("81", 6, "d") for _ in range(5)]
    alpha.commit()
    records = CountingRecords(connect, "beta")
    beta = DatabaseStore(records, clock=lambda: NOW, rng=random.Random(9))
    made = [beta.reserve("81", 6, "d") for _ in range(5)]
    beta.commit()
    assert records.commits == 2  # every one collided, every one drawn again at once
    assert not {r["numeric_alias"] for r in made} & {r["numeric_alias"] for r in taken}
    assert len({r["numeric_alias"] for r in made}) == 5
    assert {r["alias_id"]: r for r in open_store(connect, "beta").records()} == {
        r["alias_id"]: r for r in made
    }


def test_the_retry_is_bounded(connect: Connect) -> None:
    """Each retry's new alias is refused again (the other integration holds every alias this
    random source gives next): after ALIAS_RETRIES retries the group is taken back and the
    error is the one a database that refuses a commit always gave."""
    alpha = open_store(connect, "alpha", seed=5)
    for _ in range(ALIAS_RETRIES + 1):
        alpha.reserve("81", 6, "d")
    alpha.commit()
    records = CountingRecords(connect, "beta")
    beta = DatabaseStore(records, clock=lambda: NOW, rng=random.Random(5))
    made = beta.reserve("81", 6, "d")
    with pytest.raises(AliasConflict, match="already exists"):
        beta.commit()
    assert records.commits == 1 + ALIAS_RETRIES
    assert beta.get(made["alias_id"]) is None and stored(connect, "beta") == {}
    # what is known now stays known: the next reservation draws none of them, and lands
    later = beta.reserve("81", 6, "d")
    beta.commit()
    assert later["numeric_alias"] not in {r["numeric_alias"] for r in alpha.records()}
    assert records.commits == 2 + ALIAS_RETRIES


def test_within_the_bound_the_last_retry_lands(connect: Connect) -> None:
    alpha = open_store(connect, "alpha", seed=5)
    for _ in range(ALIAS_RETRIES):
        alpha.reserve("81", 6, "d")
    alpha.commit()
    records = CountingRecords(connect, "beta")
    beta = DatabaseStore(records, clock=lambda: NOW, rng=random.Random(5))
    made = beta.reserve("81", 6, "d")
    beta.commit()
    assert records.commits == 1 + ALIAS_RETRIES
    assert stored(connect, "beta") == {made["alias_id"]: made}


def test_an_alias_a_meeting_was_answered_with_is_refused_whole(connect: Connect) -> None:
    """A meeting's new alias (bind_new) is in the answer rendered before the commit: the store
    may not change it, so its conflict stays the error it was (the group taken back, the
    allocator answers later); the alias is known as taken, so the meeting's next try draws
    another."""
    alpha, beta = open_store(connect, "alpha", seed=5), open_store(connect, "beta", seed=5)
    taken = alpha.reserve("81", 6, "d")
    alpha.commit()
    drawn = beta.draw("81", 6, "d")  # the same draw: beta does not know alpha's aliases
    assert drawn.numeric_alias == taken["numeric_alias"]
    fine = beta.reserve("82", 6, "d")
    when = datetime(2026, 12, 1, 9, tzinfo=UTC)
    beta.apply(
        Action(
            "bind_new",
            alias_id=drawn.alias_id,
            meeting_uid="uid-1",
            sequence=0,
            schedule=Schedule(when, when.replace(hour=10)),
        )
    )
    with pytest.raises(StorageUnavailableError, match="already exists"):
        beta.commit()
    assert beta.get(fine["alias_id"]) is None and beta.get(drawn.alias_id) is None
    assert rows(connect) == 1
    assert beta.numeric_taken(taken["numeric_alias"])
    assert beta.draw("81", 6, "d").numeric_alias != taken["numeric_alias"]


def test_a_reservation_changed_since_it_was_made_is_not_drawn_again(connect: Connect) -> None:
    """Deleted in the same group (the caller may have been told of it in between): not a
    reservation nobody knows, so its conflict is an error."""
    alpha, beta = open_store(connect, "alpha", seed=5), open_store(connect, "beta", seed=5)
    alpha.reserve("81", 6, "d")
    alpha.commit()
    made = beta.reserve("81", 6, "d")
    beta.delete(made["alias_id"], "deleted by admin")
    with pytest.raises(StorageUnavailableError, match="already exists"):
        beta.commit()
    assert stored(connect, "beta") == {}


def test_every_write_takes_the_next_change_number(connect: Connect) -> None:
    """What the Follower of another instance reads (migration 3): a new record, a record
    written again, and one moved to the archive each take a higher number."""

    def changed(alias_id: str) -> tuple[int, bool]:
        with connect() as conn:
            found = conn.execute(
                "SELECT changed, archived FROM vmrsched_records WHERE alias_id = %s",
                (alias_id,),
            ).fetchone()
        assert found is not None
        return int(found[0]), bool(found[1])

    store = open_store(connect)
    made = store.reserve("81", 6, "d")
    store.commit()
    first, _ = changed(made["alias_id"])
    store.delete(made["alias_id"], "cancelled")
    store.commit()
    second, _ = changed(made["alias_id"])
    store.sweep()  # a deleted alias moves to the archive
    third, archived = changed(made["alias_id"])
    assert first < second < third and archived


def test_a_record_written_and_archived_in_one_group_lands_archived(connect: Connect) -> None:
    records = Records(connect, "alpha")
    record: StoredRecord = {
        "alias_id": "a1",
        "alias": "81000001@d",
        "numeric_alias": "81000001",
        "status": "deleted",
    }
    records.commit([record], ["a1", "a1"])
    live, archived = records.load()
    assert (live, archived) == ([], [record])
