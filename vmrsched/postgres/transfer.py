"""Moving an integration's records between the file store and PostgreSQL (`vmrsched store
migrate --to postgresql|file`), and proving every record arrived.

Both sides are tallied the same way: how many live and archived records, and a SHA-256 over
every record's canonical JSON (sorted keys) in alias-id order. Into PostgreSQL the copy and the
read-back happen in one transaction, committed only when the tallies agree; into files the
snapshot and archive are written, the new store opened as the service would open it, and the
tallies compared. The service must be stopped: the file store's directory lock says when it is
not."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import psycopg
from psycopg.types.json import Jsonb

from vmrsched.postgres.connection import Connect
from vmrsched.store import SNAPSHOT, Store, archive
from vmrsched.store.journal import AtomicJSONStorage


class TransferError(RuntimeError):
    """The records cannot be moved as asked, or did not all arrive (nothing was kept)."""


@dataclass(frozen=True)
class Tally:
    live: int
    archived: int
    checksum: str

    def __str__(self) -> str:
        return f"{self.live} live, {self.archived} archived, sha256 {self.checksum[:16]}"


@dataclass(frozen=True)
class Moved:
    integration: str
    source: Tally
    arrived: Tally


def _canonical(record: Mapping[str, Any]) -> bytes:
    return orjson.dumps(record, option=orjson.OPT_SORT_KEYS)


def tally(live: Iterable[Mapping[str, Any]], archived: Iterable[Mapping[str, Any]]) -> Tally:
    digest = hashlib.sha256()
    counts = []
    for kind, records in ((b"L", live), (b"A", archived)):
        ordered = sorted(records, key=lambda r: str(r["alias_id"]))
        counts.append(len(ordered))
        for record in ordered:
            digest.update(kind + _canonical(record) + b"\n")
    return Tally(counts[0], counts[1], digest.hexdigest())


def read_files(directory: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The live and archived records of a file store (opened, so damage is refused as the
    service refuses it, and a running service's lock is respected). An alias archived and
    brought back counts once, as live; one archived twice (a crash while archiving) once."""
    store = Store(directory)
    try:
        live = [dict(r) for r in store.records()]
    finally:
        store.close(compact=False)
    active = {r["alias_id"] for r in live}
    archived: dict[str, dict[str, Any]] = {}
    for record in archive.read(directory):
        if record["alias_id"] not in active:
            archived.setdefault(record["alias_id"], dict(record))
    return live, list(archived.values())


def _rows(
    conn: psycopg.Connection[Any], integration: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    live: list[dict[str, Any]] = []
    archived: list[dict[str, Any]] = []
    for is_archived, record in conn.execute(
        "SELECT archived, record FROM vmrsched_records WHERE integration = %s", (integration,)
    ):
        (archived if is_archived else live).append(record)
    return live, archived


def to_postgresql(
    connect: Connect, integration: str, directory: Path, replace: bool = False
) -> Moved:
    """Copy a file store into the database, in one transaction committed only when what the
    database then holds tallies with the files. TransferError when the database already holds
    records of the integration (unless `replace`) or the tallies differ."""
    live, archived = read_files(directory)
    source = tally(live, archived)
    rows = [
        (
            integration,
            r["alias_id"],
            r["alias"],
            r["numeric_alias"],
            flag,
            Jsonb(r, dumps=lambda v: orjson.dumps(v).decode()),
        )
        for flag, records in ((False, live), (True, archived))
        for r in records
    ]
    with connect() as conn, conn.transaction():
        held = conn.execute(
            "SELECT count(*) FROM vmrsched_records WHERE integration = %s", (integration,)
        ).fetchone()
        if held and held[0]:
            if not replace:
                raise TransferError(
                    f"{integration}: the database already holds {held[0]} records of this "
                    "integration; --replace overwrites them"
                )
            conn.execute("DELETE FROM vmrsched_records WHERE integration = %s", (integration,))
        with conn.cursor() as cur:
            try:
                cur.executemany(
                    "INSERT INTO vmrsched_records (integration, alias_id, alias, numeric_alias,"
                    " archived, record, written) VALUES (%s, %s, %s, %s, %s, %s, 0)",
                    rows,
                )
            except psycopg.errors.UniqueViolation as exc:
                raise TransferError(
                    f"{integration}: an alias is already held by another integration in the "
                    f"database: {exc.diag.message_detail or exc}"
                ) from exc
        arrived = tally(*_rows(conn, integration))
        if arrived != source:
            raise TransferError(f"{integration}: files hold {source}, the database {arrived}")
    return Moved(integration, source, arrived)


def to_files(connect: Connect, integration: str, directory: Path) -> Moved:
    """Write the database's records of an integration as a new file store (the directory
    must hold no store), then open it and compare. TransferError otherwise."""
    if (directory / SNAPSHOT).exists() or any(directory.glob("journal.*.log")):
        raise TransferError(f"{integration}: {directory} already holds a store; move it away")
    with connect() as conn, conn.transaction():
        live, archived = _rows(conn, integration)
    source = tally(live, archived)
    directory.mkdir(parents=True, exist_ok=True)
    AtomicJSONStorage(directory / SNAPSHOT).write(
        {"aliases": {str(i): r for i, r in enumerate(live, 1)}}
    )
    if archived:
        archive.append(directory, archived)  # type: ignore[arg-type]  # records it wrote
    arrived = tally(*read_files(directory))
    if arrived != source:
        raise TransferError(f"{integration}: the database holds {source}, the files {arrived}")
    return Moved(integration, source, arrived)
