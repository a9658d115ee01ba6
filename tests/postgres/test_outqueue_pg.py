"""The out-queue in PostgreSQL, its own promises on a real server (what both backends promise is
in tests/store/test_outqueue.py): when another instance takes an integration over, the old owner's
writes land nothing and the new owner's queue holds exactly what the old one committed, so a
delivered message is never sent again; a database that restarts loses nothing and duplicates
nothing; the schema itself refuses a second queuing of an id."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import psycopg
import pytest

from tests.pgcluster import Cluster
from tests.store.test_outqueue import NOW, message
from vmrsched.postgres import migrations
from vmrsched.postgres import outqueue as pg_outqueue
from vmrsched.postgres.connection import DatabaseUnavailable
from vmrsched.postgres.leases import Lease, LeaseLost, Leases
from vmrsched.postgres.outqueue import DatabaseOutQueue, read_contents, read_failed
from vmrsched.store.outqueue import SEEN_DAYS

Connect = Callable[[], psycopg.Connection[Any]]
LEASE = 0.5  # seconds


@pytest.fixture
def connect(connect: Connect) -> Connect:
    with connect() as conn:
        migrations.migrate(conn)
    return connect


@pytest.fixture
def opened(connect: Connect) -> Iterator[Callable[..., DatabaseOutQueue]]:
    """DatabaseOutQueue on integration alpha (unless named), closed at the end."""
    made: list[DatabaseOutQueue] = []

    def make(integration: str = "alpha", **kwargs: Any) -> DatabaseOutQueue:
        kwargs.setdefault("clock", lambda: NOW)
        queue = DatabaseOutQueue(connect, integration, **kwargs)
        made.append(queue)
        return queue

    yield make
    for queue in made:
        queue.close()


def rows(connect: Connect) -> dict[str, list[str]]:
    """What the database holds, table by table: the ids, in order."""
    found: dict[str, list[str]] = {}
    with connect() as conn:
        for table, order in (
            ("vmrsched_outqueue", "seq"),
            ("vmrsched_outqueue_failed", "seq"),
            ("vmrsched_outqueue_seen", "id"),
        ):
            found[table] = [
                str(row[0])
                for row in conn.execute(f"SELECT id FROM {table} ORDER BY {order}").fetchall()
            ]
    return found


def _after_expiry(leases: Leases) -> Lease:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        taken = leases.acquire("alpha")
        if taken is not None:
            return taken
        time.sleep(0.05)
    raise AssertionError("the lease was never free")


def test_a_takeover_keeps_what_one_committed_and_nothing_after(
    connect: Connect, opened: Callable[..., DatabaseOutQueue]
) -> None:
    one, two = Leases(connect, "one", LEASE), Leases(connect, "two", LEASE)
    first = one.acquire("alpha")
    assert first is not None
    old = opened(lease=first)
    assert old.add([message("sent"), message("waiting"), message("refused")]) == {
        "sent",
        "waiting",
        "refused",
    }
    old.done(["sent"])  # delivered under one's lease
    old.fail("refused", "ErrorInvalidRecipients", replacement=message("notice"))
    committed = rows(connect)
    second = _after_expiry(two)
    assert second.token == first.token + 1

    # one goes on as if it still owned alpha: every write is refused and lands nothing
    with pytest.raises(LeaseLost):
        old.add([message("late")])
    with pytest.raises(LeaseLost):
        old.done(["waiting"])
    with pytest.raises(LeaseLost):
        old.fail("waiting", "late")
    with pytest.raises(LeaseLost):
        old.retry("refused")
    with pytest.raises(LeaseLost):
        old.discard("notice")
    assert rows(connect) == committed
    with pytest.raises(LeaseLost):  # nor can it open the queue again under that lease
        opened(lease=first)

    new = opened(lease=second)
    assert [m.id for m in new.pending()] == ["waiting", "notice"]
    assert [(f.message.id, f.reason) for f in new.failed()] == [
        ("refused", "ErrorInvalidRecipients")
    ]
    assert new.seen("sent")  # delivered by one: never sent again by two
    assert new.add([message("sent"), message("refused"), message("late")]) == {"late"}
    new.done(["waiting"])
    assert [m.id for m in new.pending()] == ["notice", "late"]


def test_an_owner_that_gets_the_integration_back_reads_the_queue_again(
    connect: Connect, opened: Callable[..., DatabaseOutQueue]
) -> None:
    first = Leases(connect, "one", LEASE).acquire("alpha")
    assert first is not None
    old = opened(lease=first)
    old_view = old.pending()
    second = _after_expiry(Leases(connect, "two", LEASE))
    new = opened(lease=second)
    new.add([message("meanwhile")])
    Leases(connect, "two", LEASE).release(second)
    again = Leases(connect, "one", LEASE).acquire("alpha")
    assert again is not None and again.token == second.token + 1
    old.lease = again  # another tenure: what two did in between is read before it is used
    assert old_view == [] and [m.id for m in old.pending()] == ["meanwhile"]
    assert old.add([message("meanwhile")]) == {"meanwhile"}
    assert rows(connect)["vmrsched_outqueue"] == ["meanwhile"]


def test_a_database_restart_between_calls_loses_and_duplicates_nothing(
    connect: Connect, cluster: Cluster, opened: Callable[..., DatabaseOutQueue]
) -> None:
    queue = opened()
    assert queue.add([message("a"), message("b")]) == {"a", "b"}
    cluster.restart()  # the queue's idle connection is ended: seen before the next call
    assert queue.add([message("c")]) == {"c"}  # on a new connection
    assert queue.add([message("a"), message("c")]) == {"a", "c"}  # queued once each
    cluster.restart()
    queue.done(["a"])
    queue.done(["a"])  # the same call again changes nothing
    assert [m.id for m in queue.pending()] == ["b", "c"]
    assert rows(connect) == {
        "vmrsched_outqueue": ["b", "c"],
        "vmrsched_outqueue_failed": [],
        "vmrsched_outqueue_seen": ["a", "b", "c"],
    }
    assert [m.id for m in opened().pending()] == ["b", "c"]


def test_a_database_down_is_reported_and_the_queue_works_once_it_is_back(
    cluster: Cluster, opened: Callable[..., DatabaseOutQueue]
) -> None:
    queue = opened()
    queue.add([message("a")])
    cluster.stop()
    try:
        with pytest.raises(DatabaseUnavailable):
            queue.fail("a", "refused")
        with pytest.raises(DatabaseUnavailable):  # the view must be read again first
            queue.pending()
        with pytest.raises(DatabaseUnavailable):
            opened()
    finally:
        cluster.start()
    queue.fail("a", "refused")
    assert queue.pending() == [] and [f.message.id for f in queue.failed()] == ["a"]


def test_a_change_whose_commit_answer_was_lost_is_read_back_not_redone(
    connect: Connect, cluster: Cluster, opened: Callable[..., DatabaseOutQueue]
) -> None:
    """The connection can be lost after the database committed and before it said so: the
    queue cannot tell, so it reads the database again before the next call, and a delivery
    that did land is not sent again."""
    queue = opened()
    queue.add([message("a"), message("b")])
    cluster.stop()
    try:
        with pytest.raises(DatabaseUnavailable):
            queue.done(["a"])
    finally:
        cluster.start()
    with connect() as conn:  # what the lost answer would have said: it was committed
        conn.execute("DELETE FROM vmrsched_outqueue WHERE id = 'a'")
    assert [m.id for m in queue.pending()] == ["b"]


def test_the_schema_refuses_an_id_queued_twice_or_unseen(connect: Connect) -> None:
    document = psycopg.types.json.Jsonb(message("a").to_json())
    with connect() as conn:
        queue = "INSERT INTO vmrsched_outqueue (integration, id, message, queued)"
        queue += " VALUES ('alpha', 'a', %s, now())"
        with pytest.raises(psycopg.errors.ForeignKeyViolation):  # never seen
            conn.execute(queue, (document,))
        seen = "INSERT INTO vmrsched_outqueue_seen (integration, id, seen)"
        seen += " VALUES ('alpha', 'a', now())"
        conn.execute(seen)
        conn.execute(queue, (document,))
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute(seen)
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute(queue, (document,))
        with pytest.raises(psycopg.errors.ForeignKeyViolation):  # queued: stays seen
            conn.execute("DELETE FROM vmrsched_outqueue_seen WHERE id = 'a'")
        with pytest.raises(psycopg.errors.CheckViolation):  # the id is the message's
            conn.execute(
                "INSERT INTO vmrsched_outqueue_seen (integration, id, seen)"
                " VALUES ('alpha', 'b', now())"
            )
            conn.execute(
                "INSERT INTO vmrsched_outqueue (integration, id, message, queued)"
                " VALUES ('alpha', 'b', %s, now())",
                (document,),
            )


def test_a_message_reads_back_as_the_journal_writes_it(
    connect: Connect, opened: Callable[..., DatabaseOutQueue]
) -> None:
    sent = replace(message("a"), calendar="BEGIN:VCALENDAR", extra={"item_id": "i", "n": [1]})
    opened().add([sent])
    with connect() as conn:
        row = conn.execute("SELECT message FROM vmrsched_outqueue").fetchone()
    assert row is not None and row[0] == sent.to_json()
    assert opened().pending() == [sent]


def test_integrations_keep_queues_of_their_own(opened: Callable[..., DatabaseOutQueue]) -> None:
    alpha, beta = opened("alpha"), opened("beta")
    alpha.add([message("a")])
    assert not beta.seen("a")
    assert beta.add([message("a")]) == {"a"}
    alpha.done(["a"])
    assert [m.id for m in beta.pending()] == ["a"]


def test_a_message_still_queued_or_failed_stays_seen_past_seen_days(
    connect: Connect, opened: Callable[..., DatabaseOutQueue]
) -> None:
    now = [NOW]
    queue = opened(clock=lambda: now[0])
    queue.add([message("stuck"), message("refused"), message("sent")])
    queue.fail("refused", "refused")
    queue.done(["sent"])
    now[0] += (SEEN_DAYS + 1) * 86400
    later = opened(clock=lambda: now[0])
    # "sent" was delivered a month ago: a new message now; the others are still there
    assert later.add([message("stuck"), message("refused"), message("sent")]) == {"stuck", "sent"}
    assert rows(connect)["vmrsched_outqueue"] == ["stuck", "sent"]


def test_seen_ids_beyond_seen_max_are_forgotten_oldest_first(
    connect: Connect, opened: Callable[..., DatabaseOutQueue], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pg_outqueue, "SEEN_MAX", 3)
    now = [NOW]
    queue = opened(clock=lambda: now[0])
    for name in "abcdef":
        queue.add([message(name)])
        queue.done([name])
        now[0] += 1
    assert rows(connect)["vmrsched_outqueue_seen"] == ["d", "e", "f"]


def test_the_admin_pages_read_a_queue_they_do_not_own(
    connect: Connect, opened: Callable[..., DatabaseOutQueue]
) -> None:
    """No lease is needed to read (the admin pages of an integration another instance runs)."""
    owner = opened()
    owner.add([message("a"), message("b")])
    owner.fail("b", "refused")
    queued, failed = read_contents(connect, "alpha")
    assert [q.message.id for q in queued] == ["a"] and [f.message.id for f in failed] == ["b"]
    assert [f.reason for f in read_failed(connect, "alpha")] == ["refused"]
