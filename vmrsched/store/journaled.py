"""Store: the index (index.py) kept on disk. Loading reads the snapshot, the archive and the
journals since; every write goes to the journal before the index; `commit()` makes a group of
them durable with one fsync, or takes the whole group back when the disk is full; compaction
writes a new snapshot and drops the journals it covers; the sweep moves what is over to the
archive (archive.py)."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

from vmrsched import aliases, recurrence
from vmrsched.aliases import RandomSource
from vmrsched.journal import (
    AtomicJSONStorage,
    CorruptError,
    Journal,
    disk_full,
    scan,
    sealed_lengths,
)
from vmrsched.meetings import Action
from vmrsched.store import archive
from vmrsched.store.files import (
    GC_PAUSE,
    SNAPSHOT,
    StorageFullError,
    StoreBrokenError,
    StoreCorruptError,
    journal_generations,
    journal_path,
    lock_directory,
)
from vmrsched.store.index import StoreIndex
from vmrsched.store.records import (
    ArchivedInfo,
    Clock,
    StoredRecord,
    StoreStats,
    encode_schedule,
    reserved_record,
    ts,
    utc_now,
)

log = logging.getLogger("vmrsched.store")

MAX_ANSWERS = 16


class Store(StoreIndex):
    def __init__(
        self,
        directory: Path,
        clock: Clock = utc_now,
        rng: RandomSource | None = None,
        reservation_ttl: timedelta = timedelta(days=30),
        compact_after: int = 200_000,
        horizon: timedelta = recurrence.DEFAULT_HORIZON,
    ) -> None:
        super().__init__(rng)
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.clock = clock
        self.reservation_ttl = reservation_ttl
        self.compact_after = compact_after
        self.horizon = horizon
        self._compactor: threading.Thread | None = None
        self._broken: BaseException | None = None
        # what the writes since the last commit replaced, to take them back when the disk
        # refuses them: alias id -> its record before (None: there was none), and archived
        # aliases brought back
        self._undo: dict[str, StoredRecord | None] = {}
        self._unarchived: dict[str, ArchivedInfo] = {}
        self._lock_fd = lock_directory(self.directory)
        GC_PAUSE.enter()  # loading creates millions of objects and no cycles: skip GC passes
        try:
            self._load()
            self._loaded = True  # from here on changes are noted for publishing
            self._generation = (self._seals[-1][0] if self._seals else 0) + 1
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
        a byte when any of them holds damage a crash cannot explain."""
        hint = f"run `vmrsched store check` and `vmrsched store repair` on {self.directory}"
        try:
            snapshot = AtomicJSONStorage(self.directory / SNAPSHOT).read() or {}
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

    def _put(self, record: Mapping[str, Any]) -> StoredRecord:
        """Journal and index a whole record; keys whose value is None or {} are left out."""
        self._check()
        stored = cast(StoredRecord, {k: v for k, v in record.items() if v is not None and v != {}})
        # journal first: a record that cannot be written (say, a value JSON cannot hold) must
        # not change what this process believes
        try:
            self._journal.append({"op": "put", "r": stored})
        except OSError as exc:  # the journal's file could not be created
            if disk_full(exc):
                self._take_back()
                raise StorageFullError(f"{self.directory}: the disk is full: {exc}") from exc
            raise
        alias_id = stored["alias_id"]
        if alias_id not in self._undo:
            self._undo[alias_id] = self._records.get(alias_id)
        self._index(stored)
        return stored

    def _take_back(self) -> None:
        """Forget every write since the last commit, in the journal and in memory: a group of
        writes the disk refused is as if never asked for."""
        self._journal.rollback()
        undo, self._undo = self._undo, {}
        for alias_id, before in undo.items():
            if before is None:
                self._unindex(alias_id)
                self._changed.pop(alias_id, None)
            else:
                self._index(before)
        for alias_id, info in self._unarchived.items():
            self._archived[alias_id] = info
        self._unarchived = {}
        self._drawn.clear()

    def _check(self) -> None:
        if self._broken is not None:
            raise StoreBrokenError(
                f"{self.directory}: a write failed earlier ({self._broken}); reopen the store"
            )

    def reserve(self, prefix: str, suffix_length: int, domain: str, **extra: Any) -> StoredRecord:
        """A new alias in state `reserved`, expiring after the reservation TTL unless bound.
        `user=` (who reserved it) counts it in `open_reservations` until then."""
        alias = aliases.generate_alias(prefix, suffix_length, domain, self.numeric_taken, self.rng)
        now = self.clock()
        record = reserved_record(alias, now)
        record["expires"] = ts(now + self.reservation_ttl)
        record.update(extra)
        return self._put(record)

    def apply(self, action: Action, fields: Mapping[str, Any] | None = None) -> StoredRecord | None:
        """Carry out a decision's action; returns the record the meeting is now bound to."""
        extra = dict(fields or {})
        if action.kind == "none":
            return None
        if action.kind in ("cancel", "cancel_occurrence", "bind") and action.alias_id:
            self._restore(action.alias_id)
        if action.kind == "cancel":
            assert action.alias_id is not None
            return self.delete(action.alias_id, "cancelled", sequence=action.sequence)
        if action.kind == "bind_new":
            return self._bind(self._store_drawn(action), action, extra)
        if action.alias_id is None:
            raise ValueError(f"{action.kind} needs an alias id")
        record = self._records.get(action.alias_id)
        if record is None:
            raise KeyError(f"alias {action.alias_id} is not in the store")
        if action.kind == "cancel_occurrence":
            return self._bind(record, action, {})
        if action.release_alias_id and action.release_alias_id in self._records:
            self.delete(action.release_alias_id, "replaced")
        return self._bind(record, action, extra)

    def _store_drawn(self, action: Action) -> StoredRecord:
        alias = self._drawn.pop(action.alias_id or "", None)
        if alias is None:
            raise KeyError(f"alias {action.alias_id} was not drawn by this store")
        if self.numeric_taken(alias.numeric_alias):
            raise ValueError(f"drawn alias {alias.numeric_alias} was taken since")
        record = reserved_record(alias, self.clock())
        if action.placeholder_id:
            record["placeholder_id"] = action.placeholder_id
        return self._put(record)

    def _bind(self, record: StoredRecord, action: Action, extra: Mapping[str, Any]) -> StoredRecord:
        assert action.schedule is not None
        occ_seq = dict(record.get("occ_seq") or {})
        sequence = record.get("sequence", -1)
        if action.occurrence_key is not None:
            occ_seq[action.occurrence_key] = max(
                action.sequence, occ_seq.get(action.occurrence_key, -1)
            )
        else:
            sequence = max(sequence, action.sequence)
        answered = dict(record.get("answered") or {})
        if action.answer is not None:
            answered[action.answer[0]] = action.answer[1]
            while len(answered) > MAX_ANSWERS:  # keep the most recent
                del answered[next(iter(answered))]
        last = recurrence.last_end(action.schedule, self.clock(), self.horizon)
        new: dict[str, Any] = dict(record)
        new.update(extra)
        wanted = extra.get("name")
        if wanted:  # a conference keeps its first (unique) name across meeting edits
            new["name"] = record.get("name") or self.unique_name(wanted)
        new.update(
            status="bound",
            meeting_uid=action.meeting_uid,
            sequence=sequence,
            occ_seq=occ_seq,
            answered=answered,
            schedule=encode_schedule(action.schedule),
            valid_until=ts(last) if last is not None else None,
            expires=None,
        )
        return self._put(new)

    def delete(
        self, alias_id: str, reason: str, sequence: int | None = None
    ) -> StoredRecord | None:
        record = self._records.get(alias_id)
        if record is None:
            return None
        new: dict[str, Any] = dict(
            record, status="deleted", reason=reason, deleted=ts(self.clock())
        )
        if sequence is not None:
            new["sequence"] = max(record.get("sequence", -1), sequence)
        return self._put(new)

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
        if self._undo:
            self._undo = {}
        self._unarchived = {}
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

    def sweep(self, join_after: timedelta = timedelta(0)) -> int:
        """Expire old reservations and move deleted and finished aliases to the archive.
        Returns how many records moved. Commits (StorageFullError when the disk is full:
        the expiries are then taken back, and what moved to the archive file stays moved)."""
        now = self.clock()
        now_ts = ts(now)
        for record in list(self._records.values()):
            if (
                record["status"] == "reserved"
                and record.get("expires")
                and (record["expires"] <= now_ts)
            ):
                self.delete(record["alias_id"], "expired")
        self.commit()
        moving = archive.due(self._records.values(), now, join_after)
        if not moving:
            return 0
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
        self.commit()
        return len(moving)

    def _restore(self, alias_id: str) -> None:
        """Bring an archived alias back (a finished meeting moved into the future)."""
        if alias_id in self._records or alias_id not in self._archived:
            return
        record = archive.find(self.directory, alias_id)
        if record is None:
            return
        info = self._archived.pop(alias_id)
        try:
            self._put(dict(record))
        except BaseException:
            self._archived[alias_id] = info
            raise
        self._unarchived[alias_id] = info

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
        self._generation = (covered[-1] if covered else self._generation - 1) + 1
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
                "aliases": {str(i): r for i, r in enumerate(snapshot, 1)}
            }
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
