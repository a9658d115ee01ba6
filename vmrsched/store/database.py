"""The database backend: one integration's records in a database that two or more instances
share (PostgreSQL: vmrsched.postgres.records provides the `Backend`).

Memory works as with the file backend (the same indexes, the same writes in writes.py); what
changes is where a group of writes goes at `commit()`: one transaction, fenced by the
integration's lease, that lands whole or not at all. A database that cannot take it is a
`StorageUnavailableError` (the group is taken back, as when a disk is full, and the next commit
tries again); a lost lease is an `OwnershipLostError` (the store refuses every further write)."""

from __future__ import annotations

import contextlib
from datetime import timedelta
from typing import Any, Protocol

from vmrsched import recurrence
from vmrsched.aliases import RandomSource
from vmrsched.store.files import OwnershipLostError, StorageUnavailableError, StoreBrokenError
from vmrsched.store.records import Clock, StoredRecord, StoreStats, utc_now
from vmrsched.store.writes import StoreWrites


class Backend(Protocol):
    """Where a DatabaseStore keeps its records. Each method raises StorageUnavailableError
    when the database cannot answer, `commit` OwnershipLostError when the lease is lost."""

    @property
    def where(self) -> str: ...

    def load(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Every record of the integration: (live, archived)."""
        ...

    def commit(self, puts: list[StoredRecord], archived: list[str]) -> None:
        """Upsert `puts` and flag `archived` in one transaction."""
        ...

    def find_archived(self, alias_id: str) -> dict[str, Any] | None: ...

    def reachable(self) -> bool:
        """Whether a commit could work now (after a StorageUnavailableError)."""
        ...

    def close(self) -> None: ...


class DatabaseStore(StoreWrites):
    def __init__(
        self,
        backend: Backend,
        clock: Clock = utc_now,
        rng: RandomSource | None = None,
        reservation_ttl: timedelta = timedelta(days=30),
        horizon: timedelta = recurrence.DEFAULT_HORIZON,
    ) -> None:
        super().__init__(clock, rng, reservation_ttl, horizon)
        self.backend = backend
        self._pending: dict[str, StoredRecord] = {}
        self._pending_archived: list[str] = []
        live, archived = backend.load()
        for record in live:
            self._index(record)  # type: ignore[arg-type]  # written by this store
        for record in archived:
            self._note_archived(record)  # type: ignore[arg-type]
        self._loaded = True

    @property
    def where(self) -> str:
        return self.backend.where

    def _keep(self, record: StoredRecord) -> None:
        self._pending[record["alias_id"]] = record

    def _discard(self) -> None:
        for alias_id in self._pending_archived:
            self._archived.pop(alias_id, None)  # the record itself comes back from _undo
        self._pending = {}
        self._pending_archived = []

    def _archive(self, moving: list[StoredRecord]) -> None:
        for record in moving:
            alias_id = record["alias_id"]
            if alias_id not in self._undo:
                self._undo[alias_id] = record
            self._note_archived(record)
            self._pending_archived.append(alias_id)

    def _find_archived(self, alias_id: str) -> StoredRecord | None:
        found = self.backend.find_archived(alias_id)
        return found  # type: ignore[return-value]  # written by this store

    def commit(self) -> None:
        """Make every write so far durable in one transaction. Acknowledge only after this
        returns."""
        self._check()
        self._drawn.clear()
        if self._pending or self._pending_archived:
            try:
                self.backend.commit(list(self._pending.values()), self._pending_archived)
            except StorageUnavailableError:
                self._take_back()
                raise
            except OwnershipLostError as exc:
                self._broken = exc
                raise
            except BaseException as exc:
                self._broken = exc
                raise StoreBrokenError(f"{self.where}: the commit failed: {exc}") from exc
            self._pending = {}
            self._pending_archived = []
        self._committed()

    def has_room(self, size: int = 65536) -> bool:
        """Whether a commit could work again (the database answers)."""
        return self.backend.reachable()

    def stats(self) -> StoreStats:
        bound = sum(1 for r in self._records.values() if r["status"] == "bound")
        reserved = sum(1 for r in self._records.values() if r["status"] == "reserved")
        return StoreStats(
            len(self._records), bound, reserved, len(self._archived), len(self._pending)
        )

    def compact(self, background: bool = False) -> None:
        """Nothing to do: the database keeps its own files."""

    def wait_for_compaction(self) -> None:
        """Nothing to wait for."""

    def close(self, compact: bool = True) -> None:
        """Commit what is kept (as the file backend syncs its journal), then let go of the
        database; a commit that fails loses only writes nobody was told about."""
        try:
            if self._broken is None and (self._pending or self._pending_archived):
                with contextlib.suppress(StorageUnavailableError, StoreBrokenError):
                    self.commit()
        finally:
            self.backend.close()
