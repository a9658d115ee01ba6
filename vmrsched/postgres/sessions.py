"""The sign-ins' state in the shared database, so that any instance serves any sign-in: the
user sign-in's sessions (personal VMRs and the organizer page) and its key, the admins'
console sessions and their CSRF key, and the attempts in progress between the redirect to the
identity provider and its callback.

None of it belongs to one integration's owner: any instance opens, checks and ends sessions, so
nothing here is fenced by a lease. Sessions and attempts are kept by the SHA-256 of their token
or state, never the value a browser presents. The keys are made once, by whichever instance
needs one first, from the operating system's random source (`secrets.token_bytes`), with
`ON CONFLICT DO NOTHING`: instances racing for it all read the one that won.

Cleaned up as they go: an admin session past its expiry, an attempt past PENDING_SECONDS, and a
user session not used for SESSION_IDLE_DAYS (its refresh token is dead by then: Entra ID ends a
refresh token unused for 90 days) are deleted by the writes that come after."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import secrets
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from vmrsched.errors import Unavailable
from vmrsched.postgres.pool import Pool
from vmrsched.signin import oidc
from vmrsched.store import StorageUnavailableError

log = logging.getLogger("vmrsched.sign_in")

USER_KEY = "user-sign-in-key"  # vmrsched_secrets: the Fernet key of the refresh tokens
ADMIN_KEY = "admin-csrf-key"  # vmrsched_secrets: what the console's CSRF tokens are made with
SESSION_IDLE_DAYS = 90
ADMIN_SESSION_SECONDS = 8 * 3600  # as signin.admins.SESSION_SECONDS
CLEAN_EVERY = 3600.0  # seconds between the clean-ups a writer makes on its way
# an attempt not found at its callback is looked for once more after this long (seconds): the
# instance that started it may still be writing it (it does so after answering the redirect)
TAKE_GRACE = 0.5
MAX_WRITING = 1000  # attempts waiting to be written while the database is slow


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _when(at: float) -> datetime:
    return datetime.fromtimestamp(at, UTC)


def secret(pool: Pool, name: str, size: int = 32) -> bytes:
    """The service-wide secret `name`, made at the first need (`size` random bytes)."""
    with pool.transaction("the shared secrets") as conn, conn.cursor() as cur:
        cur.execute(
            "INSERT INTO vmrsched_secrets (name, value) VALUES (%s, %s)"
            " ON CONFLICT (name) DO NOTHING",
            (name, secrets.token_bytes(size)),
        )
        cur.execute("SELECT value FROM vmrsched_secrets WHERE name = %s", (name,))
        row = cur.fetchone()
    if row is None:  # pragma: no cover - inserted or found in the same transaction
        raise StorageUnavailableError(f"the secret {name} cannot be read")
    return bytes(row[0])


def fernet_key(raw: bytes) -> str:
    """A Fernet key (what `signin.users` encrypts with) from 32 random bytes."""
    return base64.urlsafe_b64encode(raw).decode()


def raw_key(key: str) -> bytes:
    """The 32 bytes of a Fernet key (a file backend's key file, moved into the database)."""
    return base64.urlsafe_b64decode(key.strip().encode())


class DatabaseSessions:
    """`signin.users.SessionStore` in the database."""

    def __init__(self, pool: Pool, clock: Callable[[], float] = time.time) -> None:
        self.pool = pool
        self.clock = clock
        self._cleaned_at: float | None = None
        self._key: str | None = None

    def get(self, integration: str, digest: str) -> dict[str, Any] | None:
        with self.pool.reading("the sign-in sessions") as cur:
            cur.execute(
                "SELECT entry FROM vmrsched_user_sessions WHERE integration = %s AND digest = %s",
                (integration, digest),
            )
            row = cur.fetchone()
        return dict(row[0]) if row is not None else None

    def put(self, integration: str, digest: str, entry: dict[str, Any]) -> None:
        now = self.clock()
        clean = self._cleaned_at is None or now - self._cleaned_at >= CLEAN_EVERY
        with self.pool.transaction("the sign-in sessions") as conn:
            conn.execute(
                "INSERT INTO vmrsched_user_sessions (integration, digest, entry, touched)"
                " VALUES (%s, %s, %s, %s) ON CONFLICT (integration, digest)"
                " DO UPDATE SET entry = EXCLUDED.entry, touched = EXCLUDED.touched",
                (integration, digest, Jsonb(entry), _when(now)),
            )
            if clean:  # sessions unused for SESSION_IDLE_DAYS, of every integration
                conn.execute(
                    "DELETE FROM vmrsched_user_sessions WHERE touched < %s",
                    (_when(now - SESSION_IDLE_DAYS * 86400),),
                )
        if clean:
            self._cleaned_at = now

    def delete(self, integration: str, digest: str) -> None:
        with self.pool.transaction("the sign-in sessions") as conn:
            conn.execute(
                "DELETE FROM vmrsched_user_sessions WHERE integration = %s AND digest = %s",
                (integration, digest),
            )

    def key(self) -> str:
        if self._key is None:
            self._key = fernet_key(secret(self.pool, USER_KEY))
        return self._key


class DatabaseAdminSessions:
    """`signin.admins.AdminSessions` in the database. Expiry is judged by the injected clock
    (the wall clock: every instance's must agree within seconds, as a lease's does not need)."""

    def __init__(self, pool: Pool, clock: Callable[[], float] = time.time) -> None:
        self.pool = pool
        self.clock = clock
        self._key: bytes | None = None

    def create(self, who: str) -> str:
        now = self.clock()
        sid = secrets.token_urlsafe(32)
        with self.pool.transaction("the admin sessions") as conn:
            conn.execute("DELETE FROM vmrsched_admin_sessions WHERE expires <= %s", (_when(now),))
            conn.execute(
                "INSERT INTO vmrsched_admin_sessions (digest, who, expires) VALUES (%s, %s, %s)",
                (_digest(sid), who, _when(now + ADMIN_SESSION_SECONDS)),
            )
        return sid

    def who(self, sid: str) -> str | None:
        if not sid:
            return None
        with self.pool.reading("the admin sessions") as cur:
            cur.execute(
                "SELECT who FROM vmrsched_admin_sessions WHERE digest = %s AND expires > %s",
                (_digest(sid), _when(self.clock())),
            )
            row = cur.fetchone()
        return str(row[0]) if row is not None else None

    def end(self, sid: str) -> None:
        with self.pool.transaction("the admin sessions") as conn:
            conn.execute("DELETE FROM vmrsched_admin_sessions WHERE digest = %s", (_digest(sid),))

    def csrf(self, sid: str) -> str:
        if self._key is None:
            self._key = secret(self.pool, ADMIN_KEY)
        return hmac.new(self._key, sid.encode(), "sha256").hexdigest()


class DatabaseAttempts:
    """`oidc.AttemptStore` in the database.

    `put` is called by the front end on its event loop (the redirect to the provider), which
    must not wait for a database: there the row is written by a thread of its own and `put`
    returns at once (elsewhere it is written before `put` returns). The callback comes back
    only after the user went through the provider's pages; `take` (in a worker thread) first
    waits for this instance's own writes still on their way, and looks once more after
    TAKE_GRACE for one another instance may still be writing, so an attempt is found wherever
    its callback lands. An attempt whose write failed (the database down) is refused at its
    callback, as after a restart: the user starts again.

    Bounded as the memory's are: at most `cap` attempts are kept, the oldest deleted first
    (anyone can start sign-ins, from any number of addresses), and while the database is slow
    at most MAX_WRITING wait to be written; beyond that a start is refused as busy."""

    def __init__(
        self, pool: Pool, clock: Callable[[], float] = time.time, cap: int = oidc.MAX_PENDING
    ) -> None:
        self.pool = pool
        self.clock = clock
        self.cap = cap
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="vmrsched-sign-in-attempts")
        self._writing: dict[str, Future[None]] = {}
        self._lock = threading.Lock()

    def put(self, state: str, attempt: oidc.Attempt) -> None:
        digest = _digest(state)
        if not _on_event_loop():  # a worker thread may wait: written when this returns
            self._insert(digest, attempt)
            return
        with self._lock:
            if len(self._writing) >= MAX_WRITING:
                raise Unavailable(
                    "too many sign-ins are starting while the database is slow: try again"
                )
            written = self._writer.submit(self._insert, digest, attempt)
            self._writing[digest] = written
        written.add_done_callback(lambda _: self._done(digest))

    def _done(self, digest: str) -> None:
        with self._lock:
            self._writing.pop(digest, None)

    def _insert(self, digest: str, attempt: oidc.Attempt) -> None:
        try:
            with self.pool.transaction("the sign-in attempts") as conn:
                conn.execute(
                    "DELETE FROM vmrsched_sign_in_attempts WHERE expires < %s",
                    (_when(self.clock()),),
                )
                conn.execute(
                    "INSERT INTO vmrsched_sign_in_attempts (digest, context, attempt, expires)"
                    " VALUES (%s, %s, %s, %s) ON CONFLICT (digest) DO NOTHING",
                    (
                        digest,
                        attempt.context,
                        Jsonb(oidc.attempt_to_json(attempt)),
                        _when(attempt.created + oidc.PENDING_SECONDS),
                    ),
                )
                conn.execute(
                    "DELETE FROM vmrsched_sign_in_attempts WHERE digest IN (SELECT digest FROM"
                    " vmrsched_sign_in_attempts ORDER BY expires DESC, digest OFFSET %s)",
                    (self.cap,),
                )
        except (StorageUnavailableError, psycopg.Error) as exc:
            log.error("a sign-in attempt could not be kept (it will be refused): %s", exc)

    def take(self, state: str) -> oidc.Attempt | None:
        digest = _digest(state)
        with self._lock:
            writing = self._writing.get(digest)
        if writing is not None:
            writing.result()  # never raises: _insert logs its failure
        row = self._delete(digest)
        if row is None:  # maybe still on its way from the instance that started it
            time.sleep(TAKE_GRACE)
            row = self._delete(digest)
        if row is None:
            return None
        attempt = oidc.attempt_from_json(row[0])
        if self.clock() - attempt.created > oidc.PENDING_SECONDS:
            return None
        return attempt

    def context(self, state: str) -> str | None:
        digest = _digest(state)
        with self._lock:
            writing = self._writing.get(digest)
        if writing is not None:
            writing.result()
        with self.pool.reading("the sign-in attempts") as cur:
            cur.execute(
                "SELECT context FROM vmrsched_sign_in_attempts WHERE digest = %s AND expires > %s",
                (digest, _when(self.clock())),
            )
            row = cur.fetchone()
        return str(row[0]) if row is not None else None

    def _delete(self, digest: str) -> Any:
        with self.pool.transaction("the sign-in attempts") as conn:
            return conn.execute(
                "DELETE FROM vmrsched_sign_in_attempts WHERE digest = %s RETURNING attempt",
                (digest,),
            ).fetchone()

    def close(self) -> None:
        self._writer.shutdown(wait=True)


def _on_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True
