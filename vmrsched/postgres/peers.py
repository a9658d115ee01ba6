"""The other instances as one instance reaches them: who runs an integration now and where it
serves (its advertised URL, written by its heartbeat), and the key the instances share to prove
to one another that a request they pass on comes from one of them.

The key lives in the database only (`vmrsched_secrets`): whoever can read it can already change
every booking, and nothing outside the instances and the database ever sees it. The first
instance that needs it makes it; a second one racing it keeps the first one's (ON CONFLICT DO
NOTHING, then read back). Every call here blocks: it runs in a worker thread
(`asyncio.to_thread`), never on the event loop."""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from vmrsched.postgres.connection import Connect

FORWARDING_KEY = "forwarding"  # the key's name in vmrsched_secrets
KEY_BYTES = 32


@dataclass(frozen=True)
class Owner:
    """Who holds an integration's lease now, and the URL it advertised (empty: none)."""

    instance: str
    url: str


def owner_of(connect: Connect, integration: str) -> Owner | None:
    """The instance holding the integration's unexpired lease, with its URL; None while no
    instance holds it (never taken, released, expired: a takeover under way)."""
    with connect() as conn, conn.cursor() as cur:
        cur.execute(
            """
            SELECT l.owner, coalesce(i.url, '') FROM vmrsched_leases l
              LEFT JOIN vmrsched_instances i ON i.instance = l.owner
             WHERE l.integration = %s AND l.expires > clock_timestamp()
            """,
            (integration,),
        )
        row = cur.fetchone()
    return None if row is None else Owner(str(row[0]), str(row[1]))


def shared_key(connect: Connect, name: str = FORWARDING_KEY) -> bytes:
    """The instances' shared key `name`: made (32 random bytes) by the first instance that asks,
    read back by every one, so all of them hold the same."""
    with connect() as conn, conn.transaction(), conn.cursor() as cur:
        cur.execute(
            """
            INSERT INTO vmrsched_secrets (name, value) VALUES (%s, %s)
            ON CONFLICT (name) DO NOTHING
            """,
            (name, secrets.token_bytes(KEY_BYTES)),
        )
        cur.execute("SELECT value FROM vmrsched_secrets WHERE name = %s", (name,))
        row = cur.fetchone()
    if row is None:  # pragma: no cover - the row was just made or already there
        raise LookupError(f"no shared secret {name!r}")
    return bytes(row[0])


class Peers:
    """`owner_of` and `shared_key` with what they found kept a little while: an integration's
    owner for `ttl` seconds (it changes only at a takeover, and a stale answer costs one 503
    that the caller drops with `forget`), the key for the process's life (it never changes)."""

    def __init__(
        self, connect: Connect, ttl: float = 1.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.connect = connect
        self.ttl = ttl
        self.clock = clock
        self._owners: dict[str, tuple[float, Owner | None]] = {}
        self._key: bytes | None = None
        self._lock = threading.Lock()

    def owner(self, integration: str) -> Owner | None:
        now = self.clock()
        with self._lock:
            cached = self._owners.get(integration)
        if cached is not None and cached[0] > now:
            return cached[1]
        found = owner_of(self.connect, integration)
        with self._lock:
            self._owners[integration] = (now + self.ttl, found)
        return found

    def forget(self, integration: str) -> None:
        """The owner found was wrong (it did not answer, or no longer runs the integration):
        ask the database again next time."""
        with self._lock:
            self._owners.pop(integration, None)

    def key(self) -> bytes:
        with self._lock:
            key = self._key
        if key is None:
            key = shared_key(self.connect)
            with self._lock:
                self._key = key
        return key
