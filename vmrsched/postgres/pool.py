"""A few connections shared by the threads that keep the service's state beside the records
(the decisions logs, sign-ins, token caches, the Graph state), and the fenced transaction
their owner-only writes run in.

The records and the out-queue hold one connection per owner (connection.py): each has one
thread. These stores are reached from many (every worker thread of the front end, every
poller), each call short, so they share a small pool instead: a connection is taken for one
unit of work and given back; one that failed is closed, never given back, so a database that
restarted or failed over is found again at the next call. Every call blocks: actor threads and
`asyncio.to_thread` only, never the event loop."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

import psycopg

from vmrsched.postgres.connection import Connect, DatabaseUnavailable
from vmrsched.postgres.leases import Lease, LeaseLost, fence

IDLE_MAX = 8  # connections kept open between calls; more are opened while the threads need them

# The lease an integration's writes are fenced by, looked up at every write: the one this
# instance holds now (a renewal changes its expiry), OwnershipLostError when it holds none.
LeaseOf = Callable[[str], Lease]


class Pool:
    def __init__(self, connect: Connect, idle_max: int = IDLE_MAX) -> None:
        self.connect = connect
        self.idle_max = idle_max
        self._idle: list[psycopg.Connection[Any]] = []
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def connection(self, what: str = "the database") -> Iterator[psycopg.Connection[Any]]:
        """A connection (autocommit: the caller opens its transaction) for one unit of work.
        DatabaseUnavailable when the database cannot be reached or fails the work."""
        with self._lock:
            conn = self._idle.pop() if self._idle else None
        if conn is None or conn.closed:
            try:
                conn = self.connect()
            except psycopg.Error as exc:
                raise DatabaseUnavailable(f"{what}: the database cannot be reached: {exc}") from exc
        try:
            yield conn
        except psycopg.Error as exc:
            with contextlib.suppress(psycopg.Error):
                conn.close()
            raise DatabaseUnavailable(f"{what}: the database failed the call: {exc}") from exc
        except BaseException:
            with contextlib.suppress(psycopg.Error):
                conn.close()  # a transaction may still be open on it: never lend it again
            raise
        with self._lock:
            if len(self._idle) < self.idle_max and not conn.closed:
                self._idle.append(conn)
                conn = None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                conn.close()

    @contextlib.contextmanager
    def reading(self, what: str = "the database") -> Iterator[psycopg.Cursor[Any]]:
        """One read-only unit of work in a transaction of its own."""
        with self.connection(what) as conn, conn.transaction(), conn.cursor() as cur:
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
        with self.connection(what) as conn, conn.transaction(), conn.cursor() as cur:
            if lease is not None:
                fence(cur, lease)
            yield cur

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            with contextlib.suppress(psycopg.Error):
                conn.close()


__all__ = ["LeaseLost", "LeaseOf", "Pool"]
