"""A connection the database dropped while it sat idle is never the reason a call fails
(docs/high-availability.md, "During a database outage"), on a real PostgreSQL.

After a restart of the database (or a failover, or an admin ending sessions) every connection an
instance kept open is dead, and the instance learns it only when it uses one. Where that is
proven before anything of the call reached the database, the call goes on over a new
connection, once:

- an idle connection that has something to read (the server's last word as it ended the
  session, or the end of the stream) is given up before anything is sent on it: the pool's, and
  the one connection of an integration's records;
- a unit of work of the pool whose BEGIN finds the connection broken (nothing of the work was
  sent) runs on a new connection, once;
- a unit of work whose connection broke later (its statements, or its COMMIT, sent) is never
  run again: whether it landed is unknown, and the caller is told so (DatabaseUnavailable)."""

from __future__ import annotations

import contextlib
import random
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from tests.pgcluster import Cluster
from vmrsched.postgres import migrations
from vmrsched.postgres.connection import DatabaseUnavailable
from vmrsched.postgres.pool import Pool
from vmrsched.postgres.records import Records
from vmrsched.postgres.sessions import DatabaseAdminSessions
from vmrsched.store import DatabaseStore

Connect = Callable[[], psycopg.Connection[Any]]


@pytest.fixture
def migrated(connect: Connect) -> Connect:
    with connect() as conn:
        migrations.migrate(conn)
    return connect


def end_every_other_session(connect: Connect) -> int:
    """What a database restart, a failover or `pg_terminate_backend` does to the sessions an
    instance keeps: each is ended by the server (FATAL: terminating connection due to
    administrator command) while it sits idle. How many were ended."""
    with connect() as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchall()
    return len(rows)


def test_an_admin_session_opened_after_the_database_ended_every_connection_is_opened(
    migrated: Connect,
) -> None:
    pool = Pool(migrated)
    sessions = DatabaseAdminSessions(pool)
    first = sessions.create("ada")  # the pool keeps the connection it used
    assert end_every_other_session(migrated) >= 1
    second = sessions.create("ada")  # not DatabaseUnavailable: the dead connection is left
    assert sessions.who(first) == sessions.who(second) == "ada"
    pool.close()


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_an_admin_session_opened_after_a_database_restart_is_opened(
    migrated: Connect, cluster: Cluster, mode: str
) -> None:
    pool = Pool(migrated)
    sessions = DatabaseAdminSessions(pool)
    first = sessions.create("ada")
    cluster.stop(mode)  # pg_ctl stop -m fast|immediate, then start: the audit's restart
    cluster.start()
    second = sessions.create("ada")
    assert sessions.who(first) == sessions.who(second) == "ada"
    pool.close()


def test_an_integrations_commit_after_the_database_ended_its_connection_lands(
    migrated: Connect,
) -> None:
    store = DatabaseStore(Records(migrated, "alpha"), rng=random.Random(3))
    kept = store.reserve("81", 6, "video.example.com")
    store.commit()  # the store's one connection, open and idle now
    assert end_every_other_session(migrated) >= 1
    later = store.reserve("81", 6, "video.example.com")
    store.commit()  # not StorageUnavailableError: the group lands
    again = DatabaseStore(Records(migrated, "alpha"))
    assert {r["alias_id"] for r in again.records()} == {kept["alias_id"], later["alias_id"]}


class Cutter:
    """A TCP relay between the clients and PostgreSQL that, once armed, ends a client's
    connection (both sides) on the first bytes the client sends that hold `armed`, without
    passing them on: as a database that vanished just as the client spoke."""

    def __init__(self, port: int) -> None:
        self.upstream = ("127.0.0.1", port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.armed: bytes | None = None
        self.cuts = 0
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def dsn(self, dbname: str) -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={dbname}"

    def arm(self, pattern: bytes) -> None:
        with self.lock:
            self.armed = pattern

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, from_client: bool) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                if from_client:
                    with self.lock:
                        cut = self.armed is not None and self.armed in data
                        if cut:
                            self.armed = None
                            self.cuts += 1
                    if cut:
                        break
                sink.sendall(data)
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def cutter(migrated: Connect, dsn: str) -> Iterator[tuple[Cutter, Connect]]:
    """The relay, and connections to the test's database through it."""
    port = int(dsn.split("port=")[1].split()[0])
    dbname = dsn.split("dbname=")[1].split()[0]
    relay = Cutter(port)

    def through() -> psycopg.Connection[Any]:
        return psycopg.connect(relay.dsn(dbname), autocommit=True)

    try:
        yield relay, through
    finally:
        relay.close()


def rows(connect: Connect) -> list[str]:
    with connect() as conn:
        found = conn.execute("SELECT who FROM vmrsched_admin_sessions ORDER BY who").fetchall()
    return [str(row[0]) for row in found]


def test_a_unit_of_work_whose_begin_never_reached_the_database_runs_on_a_new_connection(
    cutter: tuple[Cutter, Connect], migrated: Connect
) -> None:
    relay, through = cutter
    pool = Pool(through)
    DatabaseAdminSessions(pool).create("before")  # a connection of the pool, idle now
    relay.arm(b"BEGIN")  # its next BEGIN never arrives: the connection just ends
    runs = 0
    with pool.transaction("the test") as conn:
        runs += 1
        conn.execute(
            "INSERT INTO vmrsched_admin_sessions (digest, who, expires)"
            " VALUES ('d', 'after', now() + interval '1 hour')"
        )
    assert relay.cuts == 1 and runs == 1
    assert rows(migrated) == ["after", "before"]
    pool.close()


def test_a_unit_of_work_whose_commit_got_no_answer_is_never_run_again(
    cutter: tuple[Cutter, Connect], migrated: Connect
) -> None:
    relay, through = cutter
    pool = Pool(through)
    DatabaseAdminSessions(pool).create("before")
    relay.arm(b"COMMIT")  # the statements arrive, the COMMIT does not: its outcome unknown
    runs = 0
    with pytest.raises(DatabaseUnavailable), pool.transaction("the test") as conn:
        runs += 1
        conn.execute(
            "INSERT INTO vmrsched_admin_sessions (digest, who, expires)"
            " VALUES ('d', 'after', now() + interval '1 hour')"
        )
    assert relay.cuts == 1 and runs == 1
    assert rows(migrated) == ["before"]  # not made a second time behind the caller's back
    # and the pool goes on with a connection of its own
    DatabaseAdminSessions(pool).create("later")
    assert rows(migrated) == ["before", "later"]
    pool.close()
