"""A few connections shared by the threads that keep the service's state beside the records
(the decisions logs, sign-ins, token caches, the Graph state), and the fenced transaction
their owner-only writes run in.

The records and the out-queue hold one connection per owner (connection.py): each has one
thread. These stores are reached from many (every worker thread of the front end, every
poller), each call short, so they share a small pool instead: a connection is taken for one
unit of work and given back; one that failed is closed, never given back, so a database that
restarted or failed over is found again at the next call. Every call blocks: actor threads and
`asyncio.to_thread` only, never the event loop.

A connection kept idle may have been ended by the database meanwhile (a restart, a failover,
an admin ending sessions): a call never fails for that alone. One that shows it before anything
is sent on it is given up unused (`connection.usable`); one whose BEGIN, the first thing a unit
of work sends, finds it broken is replaced by a new connection and the unit of work runs there,
once: nothing of it reached the database. A failure after that (a statement, the COMMIT) is
never run again here: whether it landed is unknown, and the caller hears DatabaseUnavailable."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

import psycopg

from vmrsched.postgres.connection import Connect, DatabaseUnavailable, usable
from vmrsched.postgres.leases import Lease, LeaseLost, fence

IDLE_MAX = 8  # connections kept open between calls; more are opened while the threads need them

# The lease an integration's writes are fenced by, looked up at every write: the one this
# instance holds now (a renewal changes its expiry), OwnershipLostError when it holds none.
LeaseOf = Callable[[str], Lease]


def _close(conn: psycopg.Connection[Any]) -> None:
    with contextlib.suppress(psycopg.Error):
        conn.close()


class Pool:
    def __init__(self, connect: Connect, idle_max: int = IDLE_MAX) -> None:
        self.connect = connect
        self.idle_max = idle_max
        self._idle: list[psycopg.Connection[Any]] = []
        self._lock = threading.Lock()

    def _open(self, what: str) -> psycopg.Connection[Any]:
        try:
            return self.connect()
        except psycopg.Error as exc:
            raise DatabaseUnavailable(f"{what}: the database cannot be reached: {exc}") from exc

    def _take(self, what: str) -> tuple[psycopg.Connection[Any], bool]:
        """A connection for one unit of work, and whether it was kept idle (else: new). Idle
        ones the database ended meanwhile are closed on the way, unused."""
        while True:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            if conn is None:
                return self._open(what), False
            if usable(conn):
                return conn, True
            _close(conn)

    def _forget_idle(self) -> None:
        """Close every idle connection: one of them was found dead, and the others are as old."""
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            _close(conn)

    def _give_back(self, conn: psycopg.Connection[Any]) -> None:
        with self._lock:
            if len(self._idle) < self.idle_max and not conn.closed:
                self._idle.append(conn)
                return
        _close(conn)

    def _begin(
        self, what: str
    ) -> tuple[psycopg.Connection[Any], contextlib.AbstractContextManager[Any]]:
        """A connection with a transaction begun on it. A kept connection whose BEGIN finds it
        broken (nothing of the unit of work was sent) is replaced by a new one, once."""
        conn, kept = self._take(what)
        while True:
            transaction = conn.transaction()
            try:
                transaction.__enter__()  # BEGIN: the first thing sent for this unit of work
            except psycopg.Error as exc:
                broken = conn.broken  # the connection, not the statement: BEGIN cannot fail
                _close(conn)
                if kept and broken:
                    self._forget_idle()
                    conn, kept = self._open(what), False
                    continue
                raise DatabaseUnavailable(f"{what}: the database failed the call: {exc}") from exc
            return conn, transaction

    @contextlib.contextmanager
    def transaction(self, what: str = "the database") -> Iterator[psycopg.Connection[Any]]:
        """A connection for one unit of work, in a transaction of its own, committed when the
        block ends (rolled back when it raises). DatabaseUnavailable when the database cannot
        be reached or fails the work: a failure after the BEGIN may have landed or not (a
        COMMIT whose answer was lost), and is never tried again here."""
        conn, transaction = self._begin(what)
        try:
            with contextlib.ExitStack() as begun:
                begun.push(transaction)  # COMMIT when the block ends, ROLLBACK if it raises
                yield conn
        except psycopg.Error as exc:
            _close(conn)
            raise DatabaseUnavailable(f"{what}: the database failed the call: {exc}") from exc
        except BaseException:
            _close(conn)  # a transaction may still be open on it: never lend it again
            raise
        self._give_back(conn)

    @contextlib.contextmanager
    def reading(self, what: str = "the database") -> Iterator[psycopg.Cursor[Any]]:
        """One read-only unit of work in a transaction of its own."""
        with self.transaction(what) as conn, conn.cursor() as cur:
            yield cur

    @contextlib.contextmanager
    def fenced(
        self, integration: str, lease_of: LeaseOf | None, what: str = "the database"
    ) -> Iterator[psycopg.Cursor[Any]]:
        """One write transaction of an integration's owner: its lease checked first (and held
        against a takeover until the commit), committed when the block ends. An instance that
        holds no lease, or lost it, writes nothing (OwnershipLostError, LeaseLost).
        `lease_of` None: no leases in use (the offline tools, the service stopped)."""
        lease = lease_of(integration) if lease_of is not None else None
        with self.transaction(what) as conn, conn.cursor() as cur:
            if lease is not None:
                fence(cur, lease)
            yield cur

    def close(self) -> None:
        self._forget_idle()


__all__ = ["LeaseLost", "LeaseOf", "Pool"]
