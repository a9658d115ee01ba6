"""What an integration's mailbox gateway keeps between runs, in the shared database: the EWS
service account's delegated token cache (`ews_auth.TokenCacheStore`) and the Graph backend's
state, its subscription and delta link (`graph_notifications.GraphStateStore`).

Both belong to the integration's owner: every write is one transaction fenced by its lease, so
an instance that lost the integration writes nothing more (LeaseLost; OwnershipLostError where
it never held it) and the new owner starts from what the last one kept: the same refresh
token, the same subscription, the same delta link. Reads are not fenced (the admin's sign-in
page of another instance may read a cache; only the owner uses it)."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from psycopg.types.json import Jsonb

from vmrsched.postgres.pool import LeaseOf, Pool


def _now(clock: Callable[[], float]) -> datetime:
    return datetime.fromtimestamp(clock(), UTC)


class _IntegrationRow:
    """One integration's row of a table only its owner writes (fenced by its lease)."""

    def __init__(
        self,
        pool: Pool,
        integration: str,
        lease_of: LeaseOf | None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.pool = pool
        self.name = integration
        self.lease_of = lease_of  # None: unfenced (the offline tools, every instance stopped)
        self.clock = clock


class DatabaseTokenCache(_IntegrationRow):
    """One integration's delegated token cache (`ews_auth.TokenCacheStore`)."""

    def load(self) -> tuple[str | None, dict[str, str] | None]:
        with self.pool.reading(f"{self.name}: the token cache") as cur:
            cur.execute(
                "SELECT cache, identity FROM vmrsched_token_caches WHERE integration = %s",
                (self.name,),
            )
            row = cur.fetchone()
        if row is None:
            return None, None
        identity = row[1]
        recorded = (
            {str(k): str(v) for k, v in identity.items()} if isinstance(identity, dict) else None
        )
        return str(row[0]), recorded

    def save(self, cache: str, identity: dict[str, str]) -> None:
        with self.pool.fenced(self.name, self.lease_of, f"{self.name}: the token cache") as cur:
            cur.execute(
                "INSERT INTO vmrsched_token_caches (integration, cache, identity, written)"
                " VALUES (%s, %s, %s, %s) ON CONFLICT (integration) DO UPDATE"
                " SET cache = EXCLUDED.cache, identity = EXCLUDED.identity,"
                " written = EXCLUDED.written",
                (self.name, cache, Jsonb(identity), _now(self.clock)),
            )

    def drop(self) -> None:
        with self.pool.fenced(self.name, self.lease_of, f"{self.name}: the token cache") as cur:
            cur.execute("DELETE FROM vmrsched_token_caches WHERE integration = %s", (self.name,))


class DatabaseGraphState(_IntegrationRow):
    """One integration's Graph state (`graph_notifications.GraphStateStore`)."""

    def load(self) -> dict[str, Any]:
        with self.pool.reading(f"{self.name}: the Graph state") as cur:
            cur.execute(
                "SELECT state FROM vmrsched_graph_state WHERE integration = %s", (self.name,)
            )
            row = cur.fetchone()
        return dict(row[0]) if row is not None and isinstance(row[0], dict) else {}

    def save(self, state: dict[str, Any]) -> None:
        with self.pool.fenced(self.name, self.lease_of, f"{self.name}: the Graph state") as cur:
            cur.execute(
                "INSERT INTO vmrsched_graph_state (integration, state, written)"
                " VALUES (%s, %s, %s) ON CONFLICT (integration) DO UPDATE"
                " SET state = EXCLUDED.state, written = EXCLUDED.written",
                (self.name, Jsonb(state), _now(self.clock)),
            )
