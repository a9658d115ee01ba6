"""One integration's records in PostgreSQL: what the store loads at start, and the group of
writes a commit makes durable in one transaction.

A record is kept whole as JSON beside the columns the constraints need (alias, numeric alias:
unique service-wide) and a flag saying it moved to the archive. A commit is one transaction:
the lease is checked first (`leases.fence`), then every record written since the last commit is
upserted and every archived one flagged. It lands whole or not at all: a lost lease, a
constraint that refuses an alias, or a database that cannot be reached leave the database as it
was, and the store takes the group back as it does when a disk is full."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import orjson
import psycopg
from psycopg.types.json import Jsonb

from vmrsched.postgres.connection import Connect, DatabaseUnavailable, OwnConnection
from vmrsched.postgres.leases import Lease, LeaseLost, fence
from vmrsched.store import StorageUnavailableError, StoredRecord


class AliasConflict(StorageUnavailableError):
    """The database refused an alias or numeric alias another record holds (of this or of
    another integration): nothing of the commit was written."""


def _dumps(record: Mapping[str, Any]) -> Jsonb:
    return Jsonb(record, dumps=lambda value: orjson.dumps(value).decode())


class Records(OwnConnection):
    """One integration's records, through one connection of its own (the allocator's thread is
    the only user). A failed call drops the connection; the next call opens a new one, so a
    database that restarted or failed over to a new primary is found again."""

    def __init__(self, connect: Connect, integration: str) -> None:
        super().__init__(connect)
        self.integration = integration
        self.lease: Lease | None = None  # set by the lease's holder; None: no leases in use

    @property
    def where(self) -> str:
        return f"the database (integration {self.integration})"

    def reachable(self) -> bool:
        try:
            conn = self._connection()
            conn.execute("SELECT 1")
        except psycopg.Error:
            self._drop()
            return False
        except DatabaseUnavailable:
            return False
        return True

    def load(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Every record of the integration: (live, archived)."""
        live: list[dict[str, Any]] = []
        archived: list[dict[str, Any]] = []
        try:
            conn = self._connection()
            with conn.transaction(), conn.cursor() as cur:
                cur.execute(
                    "SELECT archived, record FROM vmrsched_records WHERE integration = %s",
                    (self.integration,),
                )
                for is_archived, record in cur:
                    (archived if is_archived else live).append(record)
        except psycopg.Error as exc:
            self._drop()
            raise DatabaseUnavailable(f"the database cannot be read: {exc}") from exc
        return live, archived

    def find_archived(self, alias_id: str) -> dict[str, Any] | None:
        try:
            conn = self._connection()
            with conn.transaction(), conn.cursor() as cur:
                cur.execute(
                    "SELECT record FROM vmrsched_records"
                    " WHERE integration = %s AND alias_id = %s AND archived",
                    (self.integration, alias_id),
                )
                row = cur.fetchone()
        except psycopg.Error as exc:
            self._drop()
            raise DatabaseUnavailable(f"the database cannot be read: {exc}") from exc
        return dict(row[0]) if row else None

    def commit(self, puts: list[StoredRecord], archived: list[str]) -> None:
        """Write a group in one transaction, fenced by the lease when one is in use. LeaseLost,
        AliasConflict or DatabaseUnavailable: nothing of it landed."""
        lease = self.lease
        rows = [
            (
                self.integration,
                record["alias_id"],
                record["alias"],
                record["numeric_alias"],
                _dumps(record),
                lease.token if lease is not None else 0,
            )
            for record in puts
        ]
        moved = [(self.integration, alias_id) for alias_id in archived]
        if not rows and not moved:
            return
        try:
            conn = self._connection()
            with conn.transaction(), conn.cursor() as cur:
                if lease is not None:
                    fence(cur, lease)
                if rows:
                    cur.executemany(
                        """
                        INSERT INTO vmrsched_records
                               (integration, alias_id, alias, numeric_alias, record, written)
                        VALUES (%s, %s, %s, %s, %s, %s)
                        ON CONFLICT (integration, alias_id) DO UPDATE
                           SET record = EXCLUDED.record, written = EXCLUDED.written,
                               archived = false
                        """,
                        rows,
                    )
                if moved:
                    cur.executemany(
                        "UPDATE vmrsched_records SET archived = true"
                        " WHERE integration = %s AND alias_id = %s",
                        moved,
                    )
        except LeaseLost:
            raise
        except psycopg.errors.UniqueViolation as exc:
            detail = exc.diag.message_detail or str(exc)
            raise AliasConflict(f"{self.integration}: {detail}") from exc
        except psycopg.Error as exc:
            self._drop()
            raise DatabaseUnavailable(
                f"{self.integration}: the database did not take the commit: {exc}"
            ) from exc


def counts(connect: Connect) -> Iterator[tuple[str, int, int]]:
    """(integration, live, archived) for every integration the database holds."""
    with connect() as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT integration, count(*) FILTER (WHERE NOT archived),"
            " count(*) FILTER (WHERE archived) FROM vmrsched_records GROUP BY integration"
        )
        for integration, live, archived in cur.fetchall():
            yield str(integration), int(live), int(archived)
