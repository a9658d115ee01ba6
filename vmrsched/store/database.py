"""The database backend: one integration's records in a database that two or more instances
share (PostgreSQL: vmrsched.postgres.records provides the `Backend`).

Memory works as with the file backend (the same indexes, the same writes in writes.py); what
changes is where a group of writes goes at `commit()`: one transaction, fenced by the
integration's lease, that lands whole or not at all. A database that cannot take it is a
`StorageUnavailableError` (the group is taken back, as when a disk is full, and the next commit
tries again); a lost lease is an `OwnershipLostError` (the store refuses every further write).

Aliases are unique service-wide, and another instance's integration may draw the alias this one
drew at the same moment (neither knows the other's): the database's constraint refuses the
second commit (`AliasesTaken`). The alias is then taken here for good (never drawn again), and
when each refused record is a reservation of this group that nobody was told about yet, it gets
another alias, in place (the caller holds that very record, and answers with it after the
commit), and the commit is tried again, at most `ALIAS_RETRIES` times. Any other refused record
(a meeting's alias, whose answer already names it) leaves the error as it was."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Collection
from datetime import timedelta
from typing import Any, Protocol

from vmrsched.rules import aliases, recurrence
from vmrsched.rules.aliases import RandomSource
from vmrsched.store.files import OwnershipLostError, StorageUnavailableError, StoreBrokenError
from vmrsched.store.records import Clock, StoredRecord, StoreStats, utc_now
from vmrsched.store.writes import StoreWrites

log = logging.getLogger("vmrsched.store")

# how many times one commit is tried again after the database refused aliases it drew anew
ALIAS_RETRIES = 3


class AliasesTaken(StorageUnavailableError):
    """The database refused aliases or numeric aliases other records hold (of another
    integration, or of another instance's view of this one): nothing of the commit was written.
    `alias_ids`: the records of the group holding one (empty: not known)."""

    def __init__(self, message: str, alias_ids: Collection[str] = ()) -> None:
        super().__init__(message)
        self.alias_ids = tuple(alias_ids)


class Backend(Protocol):
    """Where a DatabaseStore keeps its records. Each method raises StorageUnavailableError
    when the database cannot answer, `commit` OwnershipLostError when the lease is lost."""

    @property
    def where(self) -> str: ...

    def load(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Every record of the integration: (live, archived)."""
        ...

    def commit(self, puts: list[StoredRecord], archived: list[str]) -> None:
        """Upsert `puts` and flag `archived` in one transaction; AliasesTaken when a
        constraint refuses an alias of `puts`."""
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
        # the reservations of this group (by alias id): the record `reserve` returned, and
        # what it was drawn from, so that it can be drawn again when the database refuses it
        self._fresh: dict[str, tuple[StoredRecord, tuple[str, int, str]]] = {}
        # numeric aliases (case-folded) the database said other records hold
        self._taken_elsewhere: set[str] = set()
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
        self._fresh = {}

    def numeric_taken(self, numeric_alias: str) -> bool:
        return (
            super().numeric_taken(numeric_alias)
            or numeric_alias.casefold() in self._taken_elsewhere
        )

    def reserve(self, prefix: str, suffix_length: int, domain: str, **extra: Any) -> StoredRecord:
        record = super().reserve(prefix, suffix_length, domain, **extra)
        self._fresh[record["alias_id"]] = (record, (prefix, suffix_length, domain))
        return record

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
        retries = 0
        while self._pending or self._pending_archived:
            try:
                self.backend.commit(list(self._pending.values()), self._pending_archived)
            except AliasesTaken as exc:
                self._note_taken(exc.alias_ids)
                if retries < ALIAS_RETRIES and self._draw_again(exc.alias_ids):
                    retries += 1
                    continue
                self._take_back()
                raise
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
            break
        self._fresh = {}
        self._committed()

    def _note_taken(self, alias_ids: Collection[str]) -> None:
        """The aliases of these records are held elsewhere: never draw them again."""
        for alias_id in alias_ids:
            record = self._pending.get(alias_id)
            if record is not None:
                self._taken_elsewhere.add(record["numeric_alias"].casefold())

    def _draw_again(self, alias_ids: Collection[str]) -> bool:
        """A new alias, in place, for each of these records, when every one is a reservation
        of this group as `reserve` returned it (unchanged since, so nobody was told about it);
        False, changing nothing, otherwise."""
        if not alias_ids:
            return False
        redraw: list[tuple[StoredRecord, tuple[str, int, str]]] = []
        for alias_id in alias_ids:
            fresh = self._fresh.get(alias_id)
            if fresh is None:
                return False
            record, spec = fresh
            if (
                self._pending.get(alias_id) is not record
                or self._records.get(alias_id) is not record
                or record["status"] != "reserved"
            ):
                return False
            redraw.append((record, spec))
        drawn: list[aliases.Alias] = []
        new_numeric: set[str] = set()

        def taken(numeric: str) -> bool:
            return self.numeric_taken(numeric) or numeric.casefold() in new_numeric

        try:
            for _, (prefix, suffix_length, domain) in redraw:
                alias = aliases.generate_alias(prefix, suffix_length, domain, taken, self.rng)
                new_numeric.add(alias.numeric_alias.casefold())
                drawn.append(alias)
        except aliases.AliasExhaustedError:
            return False
        for (record, _), alias in zip(redraw, drawn, strict=True):
            log.warning(
                "%s: alias %s is held by another record (another instance's integration drew "
                "it too): reserved %s in its stead",
                self.where,
                record["alias"],
                alias.alias,
            )
            self._unindex(record["alias_id"])
            record["alias"] = alias.alias
            record["numeric_alias"] = alias.numeric_alias
            self._index(record)
        return True

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
