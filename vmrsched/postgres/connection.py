"""One connection owned by one actor thread, for the records and the queue of one integration;
whether a connection kept idle may still be used; and what a failed attempt to connect means.

A failed call drops the connection and the next call opens a new one, so a database that
restarted, or failed over to a new primary the DSN also names, is found again without a
restart; a connection that cannot be made is `DatabaseUnavailable` (a StorageUnavailableError:
the caller takes its writes back and tries later). A connection the database ended while it sat
idle (a restart, a failover, an admin ending sessions) is noticed before anything is sent on it
(`usable`) and replaced, so that no call fails for it."""

from __future__ import annotations

import contextlib
import re
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


# --- why a database cannot be used, in one line and without its secrets ----------------------

# what libpq says when the server refused this client, rather than not answering
_REFUSED = re.compile(
    r"authentication failed|no pg_hba\.conf entry|password is required|no password supplied|"
    r"(role|database) \"[^\"]*\" does not exist|permission denied for database|"
    r"not permitted to log in",
    re.IGNORECASE,
)
# what libpq says of a connection string it cannot read
_MALFORMED = re.compile(r"connection option|connection info string|URI|invalid .*value")
_QUOTED = re.compile(r'"([^"]*)"')


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _masked(message: str, dsn: str) -> str:
    """libpq's words about a connection string it cannot read, with every quoted part of the
    string it echoes left out ("…") unless the string names it as a key (`hostx=`, `?hostx=`)
    or it is the one character of syntax libpq looked for: such an echo may be the password,
    or the whole URL that holds it."""

    def keep(found: re.Match[str]) -> str:
        fragment = found.group(1)
        if len(fragment) == 1 and not fragment.isalnum():
            return found.group(0)  # the syntax libpq expected: "=", "]"
        key = re.compile(rf"(^|[\s?&]){re.escape(fragment)}\s*=")
        return found.group(0) if fragment and key.search(dsn) else '"…"'

    return _QUOTED.sub(keep, message)


def _password(dsn: str) -> str:
    try:
        return str(psycopg.conninfo.conninfo_to_dict(dsn).get("password") or "")
    except psycopg.Error:
        return ""


def why_not(exc: psycopg.Error, dsn: str) -> str:
    """What a failed attempt to connect (or a first call) means, in one line for an admin:
    the connection string is malformed, the database refused this instance (its credentials,
    or the database or role it names), or the database did not answer. Never the password:
    libpq's words about a malformed string keep only the keys it names, and the password the
    string holds is masked wherever else it might appear."""
    text = (
        _one_line(str(exc)).removeprefix("connection failed: ").removeprefix("connection is bad: ")
    )
    if isinstance(exc, psycopg.ProgrammingError) or _MALFORMED.search(text):
        what = (
            "the database's connection string ([storage] dsn_env or dsn_file) is malformed: "
            f"{_masked(text, dsn)}"
        )
    elif _REFUSED.search(text):
        what = f"the database refused this instance: {text}"
    else:
        what = f"the database did not answer: {text}"
    secret = _password(dsn)
    if not secret:
        return what
    alone = rf"(?<![A-Za-z0-9]){re.escape(secret)}(?![A-Za-z0-9])"  # not inside another word
    return re.sub(alone, "…", what)
