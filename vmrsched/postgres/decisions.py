"""Every integration's decisions log in the shared database (`decisions.Decisions` on
PostgreSQL): a decision the owner of an integration logged on one instance is listed by the
admin API and the organizer page of any other.

A batch is one transaction fenced by the integration's lease, so an instance that lost it logs
nothing more (LeaseLost, nothing written); `seq` keeps the order they were written in. The log
is bounded as the file's is: once it holds twice `keep` entries, the same transaction deletes
all but the newest `keep`. Readers page through it newest first, a page per short transaction,
so a long search never holds a connection or a snapshot open between its pages."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from vmrsched.postgres.pool import LeaseOf, Pool
from vmrsched.store.decisions import KEEP, encode

PAGE = 500  # entries read per round trip while a reader walks back through the log


class DatabaseDecisions:
    """`decisions.Decisions` in the database."""

    def __init__(self, pool: Pool, lease_of: LeaseOf | None, keep: int = KEEP) -> None:
        self.pool = pool
        self.lease_of = lease_of  # None: unfenced (the offline tools, every instance stopped)
        self.keep = keep

    def writer(self, integration: str) -> DatabaseDecisionLog:
        return DatabaseDecisionLog(self, integration)

    def read(self, integration: str) -> Iterator[dict[str, Any]]:
        before: int | None = None
        while True:
            with self.pool.reading(f"{integration}: the decisions log") as cur:
                cur.execute(
                    "SELECT seq, entry FROM vmrsched_decisions WHERE integration = %s"
                    " AND (%s::bigint IS NULL OR seq < %s) ORDER BY seq DESC LIMIT %s",
                    (integration, before, before, PAGE),
                )
                rows = cur.fetchall()
            for seq, entry in rows:
                before = int(seq)
                if isinstance(entry, dict):
                    yield entry
            if len(rows) < PAGE:
                return


class DatabaseDecisionLog:
    """One integration's log as its poller writes it (the poller's thread only)."""

    def __init__(self, owner: DatabaseDecisions, integration: str) -> None:
        self.owner = owner
        self.integration = integration
        self._entries: int | None = None  # counted at the first append, then kept up to date

    def append(self, entries: Iterable[Mapping[str, Any]]) -> None:
        rows = [(self.integration, encode(entry)) for entry in entries]
        if not rows:
            return
        keep = self.owner.keep
        what = f"{self.integration}: the decisions log"
        with self.owner.pool.fenced(self.integration, self.owner.lease_of, what) as cur:
            cur.executemany(
                "INSERT INTO vmrsched_decisions (integration, entry) VALUES (%s, %s::jsonb)",
                rows,
            )
            count = self._entries
            if count is None:
                cur.execute(
                    "SELECT count(*) FROM vmrsched_decisions WHERE integration = %s",
                    (self.integration,),
                )
                found = cur.fetchone()
                count = int(found[0]) if found else len(rows)
            else:
                count += len(rows)
            if count >= 2 * keep:
                cur.execute(
                    """
                    DELETE FROM vmrsched_decisions
                     WHERE integration = %(i)s
                       AND seq <= (SELECT seq FROM vmrsched_decisions WHERE integration = %(i)s
                                    ORDER BY seq DESC OFFSET %(keep)s LIMIT 1)
                    """,
                    {"i": self.integration, "keep": keep},
                )
                count = keep
        self._entries = count  # only once committed

    def close(self) -> None:
        """Nothing is held between batches (the pool's connections are the service's)."""
