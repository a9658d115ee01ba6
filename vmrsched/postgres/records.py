"""One integration's records in PostgreSQL: what the store loads at start, and the group of
writes a commit makes durable in one statement.

A record is kept whole as JSON beside the columns the constraints need (alias, numeric alias:
unique service-wide) and a flag saying it moved to the archive. A commit is one statement, so
one round trip and one transaction of its own: the lease row is read `FOR SHARE` first (the
fence of `leases.fence`, folded in), and every record written since the last commit is upserted
and every archived one flagged only when that read found the lease still held. It lands whole
or not at all: a lost lease, a constraint that refuses an alias, or a database that cannot be
reached leave the database as it was, and the store takes the group back as it does when a disk
is full. An alias the constraints refuse is named (`AliasConflict.alias_ids`), so that the store
can draw another for a reservation nobody was told about and commit again."""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from typing import Any

import orjson
import psycopg
from psycopg.types.json import Jsonb

from vmrsched.postgres.connection import Connect, DatabaseUnavailable, OwnConnection
from vmrsched.postgres.leases import Lease, LeaseLost
from vmrsched.store import StoredRecord
from vmrsched.store.database import AliasesTaken


class AliasConflict(AliasesTaken):
    """The database refused an alias or numeric alias another record holds (of this or of
    another integration): nothing of the commit was written."""


@functools.cache
def _commit_sql(fenced: bool, puts: bool, moved: bool) -> str:
    """The one statement of a commit (a constant text per shape, so that the connection
    prepares each once). Its CTEs see one snapshot: the lease is read, and locked, once; the
    writes happen only when it was found; the result says whether it was. Records put and
    records moved are apart (a record in both is put with its flag set), since one statement
    may not change a row twice. The upsert is an UPDATE of an existing row, so the trigger of
    migration 3 gives it the next change number as before; a new row takes it by default."""
    lease = (
        "SELECT 1 FROM vmrsched_leases"
        " WHERE integration = %(integration)s AND owner = %(owner)s AND token = %(token)s"
        " AND expires > clock_timestamp() FOR SHARE"
        if fenced
        else "SELECT 1"
    )
    parts = [f"WITH lease AS MATERIALIZED ({lease})"]
    if puts:
        parts.append(
            """
            put AS (
                INSERT INTO vmrsched_records
                       (integration, alias_id, alias, numeric_alias, record, written, archived)
                SELECT %(integration)s, r ->> 'alias_id', r ->> 'alias', r ->> 'numeric_alias',
                       r, %(token)s, (r ->> 'alias_id') = ANY(%(archived)s::text[])
                  FROM jsonb_array_elements(%(puts)s) AS r
                 WHERE EXISTS (SELECT FROM lease)
                ON CONFLICT (integration, alias_id) DO UPDATE
                   SET record = EXCLUDED.record, written = EXCLUDED.written,
                       archived = EXCLUDED.archived
            )"""
        )
    if moved:
        parts.append(
            """
            moved AS (
                UPDATE vmrsched_records SET archived = true
                 WHERE integration = %(integration)s AND alias_id = ANY(%(moved)s::text[])
                   AND EXISTS (SELECT FROM lease)
            )"""
        )
    return ",".join(parts) + "\nSELECT EXISTS (SELECT FROM lease)"


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
        """Write a group in one statement (one round trip), fenced by the lease when one is in
        use. LeaseLost, AliasConflict or DatabaseUnavailable: nothing of it landed."""
        if not puts and not archived:
            return
        lease = self.lease
        put_ids = {record["alias_id"] for record in puts}
        moved = [alias_id for alias_id in dict.fromkeys(archived) if alias_id not in put_ids]
        params: dict[str, Any] = {
            "integration": self.integration,
            "token": lease.token if lease is not None else 0,
            "puts": Jsonb(puts, dumps=orjson.dumps),
            "archived": [alias_id for alias_id in archived if alias_id in put_ids],
            "moved": moved,
        }
        if lease is not None:
            params["owner"] = lease.owner
        sql = _commit_sql(lease is not None, bool(puts), bool(moved))
        try:
            conn = self._connection()
            if conn.autocommit:  # the statement is its own transaction
                row = conn.execute(sql, params).fetchone()
            else:
                with conn.transaction():
                    row = conn.execute(sql, params).fetchone()
        except psycopg.errors.UniqueViolation as exc:
            detail = exc.diag.message_detail or str(exc)
            taken = self._taken_by_others(puts)
            raise AliasConflict(f"{self.integration}: {detail}", taken) from exc
        except psycopg.Error as exc:
            self._drop()
            raise DatabaseUnavailable(
                f"{self.integration}: the database did not take the commit: {exc}"
            ) from exc
        if lease is not None and (row is None or not row[0]):
            raise LeaseLost(f"{lease.integration}: lease {lease.token} of {lease.owner} is lost")

    def _taken_by_others(self, puts: Sequence[StoredRecord]) -> list[str]:
        """Which of `puts` hold an alias or numeric alias that another record of the database
        holds (of another integration, or another alias id): asked after the constraint
        refused the commit, so the record that refused it is committed and seen. Empty when
        that cannot be asked now (the commit's error stands)."""
        try:
            conn = self._connection()
            rows = conn.execute(
                "SELECT integration, alias_id, lower(alias), numeric_alias FROM vmrsched_records"
                " WHERE numeric_alias = ANY(%s::text[]) OR lower(alias) = ANY(%s::text[])",
                (
                    [record["numeric_alias"] for record in puts],
                    [record["alias"].lower() for record in puts],
                ),
            ).fetchall()
        except psycopg.Error:
            self._drop()
            return []
        except DatabaseUnavailable:
            return []
        held_alias: dict[str, set[tuple[str, str]]] = {}
        held_numeric: dict[str, set[tuple[str, str]]] = {}
        for integration, alias_id, alias, numeric in rows:
            held_alias.setdefault(alias, set()).add((integration, alias_id))
            held_numeric.setdefault(numeric, set()).add((integration, alias_id))
        taken = []
        for record in puts:
            mine = {(self.integration, record["alias_id"])}
            holders = held_alias.get(record["alias"].lower(), set()) | held_numeric.get(
                record["numeric_alias"], set()
            )
            if holders - mine:
                taken.append(record["alias_id"])
        return taken


def counts(connect: Connect) -> Iterator[tuple[str, int, int]]:
    """(integration, live, archived) for every integration the database holds."""
    with connect() as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT integration, count(*) FILTER (WHERE NOT archived),"
            " count(*) FILTER (WHERE archived) FROM vmrsched_records GROUP BY integration"
        )
        for integration, live, archived in cur.fetchall():
            yield str(integration), int(live), int(archived)
