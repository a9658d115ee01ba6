"""One connection owned by one actor thread, for the records and the queue of one integration.

A failed call drops the connection and the next call opens a new one, so a database that
restarted, or failed over to a new primary the DSN also names, is found again without a
restart; a connection that cannot be made is `DatabaseUnavailable` (a StorageUnavailableError:
the caller takes its writes back and tries later)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import psycopg

from vmrsched.store import StorageUnavailableError

Connect = Callable[[], psycopg.Connection[Any]]


class DatabaseUnavailable(StorageUnavailableError):
    """The database could not be reached or failed the call: nothing of it was written."""


class OwnConnection:
    def __init__(self, connect: Connect) -> None:
        self.connect = connect
        self._conn: psycopg.Connection[Any] | None = None

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
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
