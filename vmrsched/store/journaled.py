"""Store: the index (index.py) kept on disk. Loading reads the snapshot, the archive and the
journals since, and refuses when a journal they say existed is gone; every write goes to the
journal before the index; `commit()` makes a group of them durable with one fsync, or takes the
whole group back when the disk is full; compaction writes a new snapshot, saying which journals
it holds, and drops them; the sweep moves what is over to the archive (archive.py)."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

from vmrsched.rules import recurrence
from vmrsched.rules.aliases import RandomSource
from vmrsched.store import archive
from vmrsched.store.files import (
    GC_PAUSE,
    SNAPSHOT,
    StorageFullError,
    StoreBrokenError,
    StoreCorruptError,
    covered_through,
    covers,
    journal_generations,
    journal_path,
    lock_directory,
    missing_journals,
)
from vmrsched.store.journal import (
    AtomicJSONStorage,
    CorruptError,
    Journal,
    disk_full,
    scan,
    sealed_lengths,
)
from vmrsched.store.records import Clock, StoredRecord, StoreStats, utc_now
from vmrsched.store.writes import MAX_ANSWERS, StoreWrites

log = logging.getLogger("vmrsched.store")

__all__ = ["MAX_ANSWERS", "Store"]


class Store(StoreWrites):
    """The file backend: the records of one integration under its own directory."""

    def __init__(
        self,
        directory: Path,
        clock: Clock = utc_now,
        rng: RandomSource | None = None,
        reservation_ttl: timedelta = timedelta(days=30),
        compact_after: int = 200_000,
        horizon: timedelta = recurrence.DEFAULT_HORIZON,
    ) -> None:
        super().__init__(clock, rng, reservation_ttl, horizon)
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.compact_after = compact_after
        self._compactor: threading.Thread | None = None
        self._lock_fd = lock_directory(self.directory)
        GC_PAUSE.enter()  # loading creates millions of objects and no cycles: skip GC passes
        try:
            self._load()
            self._loaded = True  # from here on changes are noted for publishing
            # generations only grow, past those the snapshot holds too: a journal is never
            # taken for one the snapshot holds (when it is gone, that is noticed)
            newest = self._seals[-1][0] if self._seals else 0
            self._generation = max(newest, self._through or 0) + 1
            # what each earlier journal holds, so that cutting one short later is noticed;
            # journals holding nothing but seals (as a clean close leaves them) have nothing
            # to protect, so the next one waits for the first write
            seals = [{"op": "seal", "gen": gen, "entries": e} for gen, e in self._seals]
            path = self._journal_path(self._generation)
            try:
                self._journal = Journal(path, seals, lazy=not self._unfolded)
            except OSError as exc:
                if not disk_full(exc):
                    raise
                # open anyway: reading needs no space, and the first write says it is full
                log.warning("%s: the disk is full (%s); writes wait for space", path, exc)
                self._journal = Journal(path, seals, lazy=True)
        except BaseException:
            os.close(self._lock_fd)
            raise
        finally:
            GC_PAUSE.leave()

    # --- loading ------------------------------------------------------------------------------

    def _journal_path(self, generation: int) -> Path:
        return journal_path(self.directory, generation)

    def _load(self) -> None:
        """Load snapshot, archive and journals, or refuse (StoreCorruptError) without changing
        a byte when any of them holds damage a crash cannot explain: a damaged line, a journal
        cut short, or one that is gone though another file says it existed (files.py,
        `missing_journals`)."""
        hint = f"run `vmrsched store check` and `vmrsched store repair` on {self.directory}"
        try:
            stored = AtomicJSONStorage(self.directory / SNAPSHOT).read()
            archived = archive.read(self.directory)
        except CorruptError as exc:
            raise StoreCorruptError(f"{exc}; {hint}") from exc
        scans = [
            (gen, scan(self._journal_path(gen))) for gen in journal_generations(self.directory)
        ]
        sealed = sealed_lengths(result for _, result in scans)
        for gen, result in scans:
            if result.corrupt:
                raise StoreCorruptError(
                    f"{self._journal_path(gen)}: damaged line(s) "
                    f"{', '.join(map(str, result.bad_lines[:5]))}; {hint}"
                )
            if len(result.entries) < sealed.get(gen, 0):
                raise StoreCorruptError(
                    f"{self._journal_path(gen)} holds {len(result.entries)} entries but had "
                    f"{sealed[gen]} when it was closed: it was cut short; {hint}"
                )
        snapshot = stored or {}
        self._through: int | None = covered_through(stored)
        for missing in missing_journals(scans, self._through, stored is not None):
            are = "is" if missing.first == missing.last else "are"
            raise StoreCorruptError(
                f"{self.directory / missing.name} {are} missing: {missing.said}; {hint}"
            )
        self._seals = [(gen, len(result.entries)) for gen, result in scans]
        # whether the journals hold anything the snapshot does not (or a torn write): then
        # the next journal seals them at once, and closing compacts them
        self._unfolded = any(
            result.torn_tail or any(entry.get("op") != "seal" for entry in result.entries)
            for _, result in scans
        )
        for record in snapshot.get("aliases", {}).values():
            self._index(record)
        for record in archived:
            self._note_archived(record)
        for gen, result in scans:
            if result.torn_tail:
                log.warning(
                    "%s: dropped an incomplete last write (a crash in the middle of it; it was "
                    "never acknowledged)",
                    self._journal_path(gen),
                )
            for entry in result.entries:
                self._replay(entry)

    def _replay(self, entry: Mapping[str, Any]) -> None:
        op = entry.get("op")
        if op == "put":
            self._index(entry["r"])
        elif op == "archive":
            for record in entry["records"]:
                self._note_archived(record)

    def stats(self) -> StoreStats:
        bound = sum(1 for r in self._records.values() if r["status"] == "bound")
        reserved = sum(1 for r in self._records.values() if r["status"] == "reserved")
        return StoreStats(
            len(self._records), bound, reserved, len(self._archived), self._journal.entries
        )

    # --- writes (durable only after commit) ----------------------------------------------------

    @property
    def where(self) -> str:
        return str(self.directory)

    def _keep(self, record: StoredRecord) -> None:
        try:
            self._journal.append({"op": "put", "r": record})
        except OSError as exc:  # the journal's file could not be created
            if disk_full(exc):
                self._take_back()
                raise StorageFullError(f"{self.directory}: the disk is full: {exc}") from exc
            raise

    def _discard(self) -> None:
        self._journal.rollback()

    def _find_archived(self, alias_id: str) -> StoredRecord | None:
        return archive.find(self.directory, alias_id)

    def _archive(self, moving: list[StoredRecord]) -> None:
        # archive first: a crash before the journal entry only duplicates
        archive.append(self.directory, moving)
        for record in moving:
            self._note_archived(record)
        try:
            self._journal.append({"op": "archive", "records": moving})
        except OSError as exc:
            if disk_full(exc):
                raise StorageFullError(f"{self.directory}: the disk is full: {exc}") from exc
            raise

    def commit(self) -> None:
        """Make every write so far durable (one fsync). Acknowledge only after this returns.
        A failure leaves memory ahead of disk: the store then refuses every further use."""
        self._check()
        self._drawn.clear()
        try:
            self._journal.sync()
        except BaseException as exc:
            if disk_full(exc) and self._journal.usable:  # the journal took its part back
                self._take_back()
                raise StorageFullError(f"{self.directory}: the disk is full: {exc}") from exc
            self._broken = exc
            raise StoreBrokenError(f"{self.directory}: cannot write the journal: {exc}") from exc
        self._committed()
        if self._journal.entries >= self.compact_after:
            self.compact(background=True)

    def has_room(self, size: int = 65536) -> bool:
        """Whether the store's disk takes `size` more bytes now (a probe file written, synced
        and removed): after a StorageFullError, whether writes may work again."""
        probe = self.directory / ".space-probe"
        try:
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                view = memoryview(bytes(size))
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError:
            return False
        finally:
            probe.unlink(missing_ok=True)
        return True

    # --- housekeeping -------------------------------------------------------------------------

    def compact(self, background: bool = False) -> None:
        """Write the snapshot and drop the journals it covers. With `background`, the snapshot is
        serialised in a thread while writes go on into a fresh journal."""
        self.wait_for_compaction()
        self._journal.close()
        # until the snapshot replaces it, the closed journal may be needed: seal it (one never
        # created needs no seal, and its generation is taken again)
        created = self._journal.created
        seal = [{"op": "seal", "gen": self._generation, "entries": self._journal.entries}]
        covered = journal_generations(self.directory)
        # the next generation (this one again when it was never created); the snapshot holds
        # every journal before it, and says so
        self._generation = max([*covered, self._generation - 1]) + 1
        through = self._generation - 1
        path = self._journal_path(self._generation)
        try:
            self._journal = Journal(path, seal if created else [], lazy=not created)
        except OSError as exc:
            if not disk_full(exc):
                raise
            self._journal = Journal(path, seal if created else [], lazy=True)  # sealed later
        snapshot = list(self._records.values())  # records are replaced, never mutated

        def write() -> None:
            tables: dict[str, dict[str, Any]] = {
                "aliases": {str(i): r for i, r in enumerate(snapshot, 1)},
                **covers(through),
            }
            # written before the journals it holds go: a crash between the two leaves them
            # replayed onto it (harmless), never missing
            AtomicJSONStorage(self.directory / SNAPSHOT).write(tables)
            for gen in covered:
                self._journal_path(gen).unlink(missing_ok=True)

        if background:
            self._compactor = threading.Thread(target=write, name="store-compact", daemon=True)
            self._compactor.start()
        else:
            write()

    def _compact_if_room(self) -> None:
        try:
            self.compact()
        except OSError as exc:
            if not disk_full(exc):
                raise
            # the journals stay as they are: the next open reads them
            log.warning("%s: not compacted, the disk is full (%s)", self.directory, exc)

    def wait_for_compaction(self) -> None:
        if self._compactor is not None:
            self._compactor.join()
            self._compactor = None

    def close(self, compact: bool = True) -> None:
        """Sync, compact (unless the store is broken) and release the lock, which is released
        whatever fails on the way."""
        try:
            if self._broken is None:
                self._journal.sync()
                # nothing written since a clean open: the files already say it all
                if compact and (self._unfolded or self._journal.created):
                    self._compact_if_room()
            self.wait_for_compaction()
        finally:
            try:
                self._journal.close_quietly()
            finally:
                if self._lock_fd >= 0:
                    os.close(self._lock_fd)  # releases the lock
                    self._lock_fd = -1
