"""The archive: deleted aliases, and bound ones whose last window closed a while ago, moved out
of the store's memory and journal into archive.json (tinydb table `archive`). An archived
alias is never handed out again; a finished meeting moved back into the future brings its
record back."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from vmrsched.store.files import ARCHIVE, StorageFullError
from vmrsched.store.journal import AtomicJSONStorage, disk_full
from vmrsched.store.records import StoredRecord, ts

# Archive finished conferences this long after their last window closes: late updates to a
# just-finished meeting still find it without a trip to the archive file.
ARCHIVE_GRACE = timedelta(days=7)


def due(
    records: Iterable[StoredRecord], now: datetime, join_after: timedelta
) -> list[StoredRecord]:
    """The records that move: every deleted one, and every bound one whose last window
    (widened by `join_after`) closed ARCHIVE_GRACE ago."""
    grace_ts = ts(now - ARCHIVE_GRACE - join_after)
    return [
        r
        for r in records
        if r["status"] == "deleted"
        or (r["status"] == "bound" and r.get("valid_until") and r["valid_until"] < grace_ts)
    ]


def _table(directory: Path) -> dict[str, Any]:
    data: dict[str, Any] = AtomicJSONStorage(directory / ARCHIVE).read() or {}
    return data


def read(directory: Path) -> Iterator[StoredRecord]:
    """Every archived record (CorruptError when the file holds damage)."""
    table: dict[str, StoredRecord] = _table(directory).get("archive", {})
    return iter(table.values())


def append(directory: Path, records: list[StoredRecord]) -> None:
    """Add `records` to the archive file (rewritten atomically); StorageFullError when the
    disk has no room for it, and the file is as it was."""
    storage = AtomicJSONStorage(directory / ARCHIVE)
    data = storage.read() or {}
    table = data.setdefault("archive", {})
    next_id = max((int(k) for k in table), default=0) + 1
    for offset, record in enumerate(records):
        table[str(next_id + offset)] = record
    try:
        storage.write(data)
    except OSError as exc:
        if disk_full(exc):
            raise StorageFullError(f"{directory}: the disk is full: {exc}") from exc
        raise


def find(directory: Path, alias_id: str) -> StoredRecord | None:
    """An archived record by its alias ID (the first the file holds), or None."""
    for record in read(directory):
        if record["alias_id"] == alias_id:
            return record
    return None
