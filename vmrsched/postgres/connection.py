"""One connection owned by one actor thread, for the records and the queue of one integration,
and whether a connection kept idle may still be used.

A failed call drops the connection and the next call opens a new one, so a database that
restarted, or failed over to a new primary the DSN also names, is found again without a
restart; a connection that cannot be made is `DatabaseUnavailable` (a StorageUnavailableError:
the caller takes its writes back and tries later). A connection the database ended while it sat
idle (a restart, a failover, an admin ending sessions) is noticed before anything is sent on it
(`usable`) and replaced, so that no call fails for it."""

from __future__ import annotations

import contextlib
import select
from collections.abc import Callable
from typing import Any

import psycopg

from vmrsched.store import StorageUnavailableError

Connect = Callable[[], psycopg.Connection[Any]]


class DatabaseUnavailable(StorageUnavailableError):
    """The database could not be reached or failed the call: nothing of it was written."""


def usable(conn: psycopg.Connection[Any]) -> bool:
    """Whether a connection kept idle may be lent for the next call: open, and with nothing to
    read. PostgreSQL sends an idle session nothing unasked (nothing here LISTENs): what waits
    there is its last word as it ended the session (FATAL: terminating connection, the
    database shutting down) or the end of the stream. Such a connection is given up before
    anything is sent on it, so nothing of the next call can have reached the database on it."""
    if conn.closed or conn.broken:
        return False
    try:
        poll = select.poll()
        poll.register(conn.fileno(), select.POLLIN | select.POLLPRI)
        waiting = poll.poll(0)
    except (OSError, ValueError, psycopg.Error):
        return False
    return not waiting


class OwnConnection:
    def __init__(self, connect: Connect) -> None:
        self.connect = connect
        self._conn: psycopg.Connection[Any] | None = None

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is not None and not usable(self._conn):
            self._drop()  # ended by the database while idle: nothing was sent on it
        if self._conn is None:
            try:
                self._conn = self.connect()
            except psycopg.Error as exc:
                raise DatabaseUnavailable(f"the database cannot be reached: {exc}") from exc
        return self._conn

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                conn.close()

    def close(self) -> None:
        self._drop()
