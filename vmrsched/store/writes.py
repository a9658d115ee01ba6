"""The store's writes, whatever keeps them: reserve, apply a decision's action, delete, expire and
archive, and taking a group of writes back when it could not be made durable.

Both backends share this: `Store` (journaled.py) keeps the records in files under data_dir, and
`DatabaseStore` (database.py) in a database shared by several instances. Each says how one write
is kept until the commit (`_keep`), how it is forgotten (`_discard`), how records move to the
archive (`_archive`) and how an archived one is read back (`_find_archived`); `commit` is theirs.
The rules of what a write does to a record are here once, so both backends hold the same
records after the same acts."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from datetime import timedelta
from typing import Any, cast

from vmrsched.rules import aliases, recurrence
from vmrsched.rules.aliases import RandomSource
from vmrsched.rules.meetings import Action
from vmrsched.store import archive
from vmrsched.store.files import OwnershipLostError, StoreBrokenError
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

MAX_ANSWERS = 16


class StoreWrites(StoreIndex, ABC):
    def __init__(
        self,
        clock: Clock = utc_now,
        rng: RandomSource | None = None,
        reservation_ttl: timedelta = timedelta(days=30),
        horizon: timedelta = recurrence.DEFAULT_HORIZON,
    ) -> None:
        super().__init__(rng)
        self.clock = clock
        self.reservation_ttl = reservation_ttl
        self.horizon = horizon
        self._broken: BaseException | None = None
        # what the writes since the last commit replaced, to take them back when they cannot
        # be made durable: alias id -> its record before (None: there was none), and archived
        # aliases brought back
        self._undo: dict[str, StoredRecord | None] = {}
        self._unarchived: dict[str, ArchivedInfo] = {}

    # --- what each backend provides -----------------------------------------------------------

    @property
    @abstractmethod
    def where(self) -> str:
        """Where the records are kept, for messages (a directory, a database)."""

    @abstractmethod
    def _keep(self, record: StoredRecord) -> None:
        """Keep one whole record until the commit (or raise, and nothing changed)."""

    @abstractmethod
    def _discard(self) -> None:
        """Forget what `_keep` and `_archive` kept since the last commit."""

    @abstractmethod
    def _archive(self, moving: list[StoredRecord]) -> None:
        """Move `moving` to the archive (durable at the next commit at the latest)."""

    @abstractmethod
    def _find_archived(self, alias_id: str) -> StoredRecord | None:
        """The archived record of `alias_id` as the backend keeps it (None: not archived)."""

    @abstractmethod
    def commit(self) -> None:
        """Make every write so far durable; acknowledge nothing before this returns."""

    @abstractmethod
    def has_room(self, size: int = 65536) -> bool:
        """Whether a commit could work again after one could not be made durable."""

    @abstractmethod
    def stats(self) -> StoreStats:
        """How many records of each kind the store holds, for the status and the gauges."""

    @abstractmethod
    def close(self, compact: bool = True) -> None:
        """Make what is kept durable and let go of the files or the database."""

    # --- writes (durable only after commit) ----------------------------------------------------

    def _put(self, record: Mapping[str, Any]) -> StoredRecord:
        """Keep and index a whole record; keys whose value is None or {} are left out."""
        self._check()
        stored = cast(StoredRecord, {k: v for k, v in record.items() if v is not None and v != {}})
        # kept first: a record that cannot be written (say, a value JSON cannot hold) must not
        # change what this process believes
        self._keep(stored)
        alias_id = stored["alias_id"]
        if alias_id not in self._undo:
            self._undo[alias_id] = self._records.get(alias_id)
        self._index(stored)
        return stored

    def _take_back(self) -> None:
        """Forget every write since the last commit, where it was kept and in memory: a group
        of writes that could not be made durable is as if never asked for."""
        self._discard()
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

    def _committed(self) -> None:
        """The writes so far are durable: nothing to take back any more."""
        self._drawn.clear()
        if self._undo:
            self._undo = {}
        self._unarchived = {}

    def _check(self) -> None:
        if isinstance(self._broken, OwnershipLostError):
            raise OwnershipLostError(f"{self.where}: {self._broken}; another instance owns it")
        if self._broken is not None:
            raise StoreBrokenError(
                f"{self.where}: a write failed earlier ({self._broken}); reopen the store"
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

    # --- housekeeping -------------------------------------------------------------------------

    def sweep(self, join_after: timedelta = timedelta(0)) -> int:
        """Expire old reservations and move deleted and finished aliases to the archive.
        Returns how many records moved. Commits (a StorageFullError or StorageUnavailableError
        takes the expiries back)."""
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
        self._archive(moving)
        self.commit()
        return len(moving)

    def _restore(self, alias_id: str) -> None:
        """Bring an archived alias back (a finished meeting moved into the future)."""
        if alias_id in self._records or alias_id not in self._archived:
            return
        record = self._find_archived(alias_id)
        if record is None:
            return
        info = self._archived.pop(alias_id)
        try:
            self._put(dict(record))
        except BaseException:
            self._archived[alias_id] = info
            raise
        self._unarchived[alias_id] = info
