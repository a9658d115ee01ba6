"""One integration's aliases and conferences: tinydb snapshot + journal, in-memory indexes, archive.

Layout under the integration's directory:
  store.json          tinydb database (table `aliases`): the snapshot, rewritten atomically
  journal.<gen>.log   writes since the snapshot, one checksummed JSON line each
  archive.json        tinydb database (table `archive`): finished, cancelled and expired aliases

Every journal entry is a whole-record upsert or an archive move, so replaying a journal onto a
snapshot that already contains it changes nothing: a crash at any point of a compaction loads
correctly. Writes become durable at `commit()` (one fsync for the whole group); callers must not
acknowledge anything before it returns. Not thread-safe: only the integration's AliasAllocator
actor uses a Store.
"""

from __future__ import annotations

import fcntl
import gc
import logging
import os
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

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
from vmrsched.meetings import Action, AliasRecord, MeetingState, Status

log = logging.getLogger("vmrsched.store")

Record = dict[str, Any]
Clock = Callable[[], datetime]

SNAPSHOT = "store.json"
ARCHIVE = "archive.json"
JOURNAL_RE = re.compile(r"^journal\.(\d+)\.log$")
# Archive finished conferences this long after their last window closes: late updates to a
# just-finished meeting still find it without a trip to the archive file.
ARCHIVE_GRACE = timedelta(days=7)
MAX_ANSWERS = 16


class StoreInUseError(RuntimeError):
    """Another process (a running service, most likely) has the store open."""


class StoreCorruptError(CorruptError):
    """The store's files hold damage a crash cannot explain; the store refuses to open and
    changes nothing, so `vmrsched store repair` can salvage every valid record."""


class StoreBrokenError(RuntimeError):
    """A write could not be made durable (an I/O error): memory may be ahead of disk, so this
    Store refuses further use; reopening it reloads what is on disk."""


class StorageFullError(RuntimeError):
    """The disk refused a write for want of space (ENOSPC, EDQUOT). Every write since the last
    commit is taken back, in memory and in the journal, as if never asked for; the store goes
    on, and the next commit tries the disk again."""


def lock_directory(directory: Path, what: str = "") -> int:
    """An exclusive advisory lock on the directory itself (flock on an open descriptor of it),
    held until the descriptor is closed. Deleting or recreating any file inside cannot break it,
    and it goes away with the process, crash or not. Returns the descriptor."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        os.close(fd)
        raise StoreInUseError(f"{what or directory} is in use by another process") from exc
    return fd


def utc_now() -> datetime:
    return datetime.now(UTC)


def normalise_alias(alias: str) -> str:
    """Dialled aliases arrive as `sip:VMR123@Example.com` or `h323:…`; compare without the scheme
    and case-insensitively."""
    text = alias.strip()
    if ":" in text.split("@", 1)[0]:
        text = text.split(":", 1)[1]
    return text.lower()


@dataclass(frozen=True)
class ArchivedInfo:
    status: str
    meeting_uid: str | None
    reason: str
    alias: str = ""
    numeric_alias: str = ""
    organizer: str = ""  # of a bound meeting: who may still move it back into the future


@dataclass
class StoreStats:
    active: int
    bound: int
    reserved: int
    archived: int
    journal_entries: int


class _GcPause:
    """The cyclic GC off while any store loads. Stores of many integrations load at once in
    their own threads, and the collector's switch is one for the process: each load turning it
    off and back on by itself could leave it off for good (one thread reads "off" from
    another's load, then turns it off after that one turned it back on)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loading = 0
        self._was_enabled = False

    def enter(self) -> None:
        with self._lock:
            if self._loading == 0:
                self._was_enabled = gc.isenabled()
                gc.disable()
            self._loading += 1

    def leave(self) -> None:
        with self._lock:
            self._loading -= 1
            if self._loading == 0 and self._was_enabled:
                gc.enable()


_GC_PAUSE = _GcPause()


class Store:
    def __init__(
        self,
        directory: Path,
        clock: Clock = utc_now,
        rng: RandomSource | None = None,
        reservation_ttl: timedelta = timedelta(days=30),
        compact_after: int = 200_000,
        horizon: timedelta = recurrence.DEFAULT_HORIZON,
    ) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.clock = clock
        self.rng = rng
        self.reservation_ttl = reservation_ttl
        self.compact_after = compact_after
        self.horizon = horizon
        self._records: dict[str, Record] = {}
        self._by_numeric: dict[str, str] = {}
        self._by_alias: dict[str, str] = {}
        self._by_uid: dict[str, str] = {}
        self._by_placeholder: dict[str, str] = {}
        self._names: dict[str, str] = {}
        self._archived: dict[str, ArchivedInfo] = {}
        self._archived_numeric: set[str] = set()
        # numeric aliases both active and archived (an archived alias brought back): so that
        # aliases_taken counts each once without building the union
        self._taken_twice = 0
        # per user, how many reservations they hold that are in no meeting yet (the quota)
        self._open_by_user: dict[str, int] = {}
        # records changed since take_changes (archived ones with status "archived"): what the
        # allocator publishes to the policy index after a commit
        self._changed: dict[str, Record] = {}
        self._loaded = False
        self._archived_placeholder: dict[str, str] = {}
        # aliases drawn for a decision and not stored yet (by alias id; forgotten at commit)
        self._drawn: dict[str, aliases.Alias] = {}
        self._compactor: threading.Thread | None = None
        self._broken: BaseException | None = None
        # what the writes since the last commit replaced, to take them back when the disk
        # refuses them: alias id -> its record before (None: there was none), and archived
        # aliases brought back
        self._undo: dict[str, Record | None] = {}
        self._unarchived: dict[str, ArchivedInfo] = {}
        self._lock_fd = lock_directory(self.directory)
        _GC_PAUSE.enter()  # loading creates millions of objects and no cycles: skip GC passes
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
            _GC_PAUSE.leave()

    # --- loading ------------------------------------------------------------------------------

    def _journal_path(self, generation: int) -> Path:
        return self.directory / f"journal.{generation}.log"

    def _journal_generations(self) -> list[int]:
        gens = []
        for path in self.directory.iterdir():
            match = JOURNAL_RE.match(path.name)
            if match:
                gens.append(int(match.group(1)))
        return sorted(gens)

    def _load(self) -> None:
        """Load snapshot, archive and journals, or refuse (StoreCorruptError) without changing
        a byte when any of them holds damage a crash cannot explain."""
        hint = f"run `vmrsched store check` and `vmrsched store repair` on {self.directory}"
        try:
            snapshot = AtomicJSONStorage(self.directory / SNAPSHOT).read() or {}
            archive = AtomicJSONStorage(self.directory / ARCHIVE).read() or {}
        except CorruptError as exc:
            raise StoreCorruptError(f"{exc}; {hint}") from exc
        scans = [(gen, scan(self._journal_path(gen))) for gen in self._journal_generations()]
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
        for record in archive.get("archive", {}).values():
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

    def _note_archived(self, record: Record) -> None:
        self._unindex(record["alias_id"])
        self._archived[record["alias_id"]] = ArchivedInfo(
            record.get("status", "deleted"),
            record.get("meeting_uid"),
            record.get("reason", ""),
            record.get("alias", ""),
            record.get("numeric_alias", ""),
            record.get("organizer_email", "") if record.get("status") == "bound" else "",
        )
        if self._loaded:
            self._changed[record["alias_id"]] = {**record, "status": "archived"}
        self._archived_numeric.add(record["numeric_alias"].lower())
        if record.get("placeholder_id"):
            self._archived_placeholder[record["placeholder_id"]] = record["alias_id"]

    def _index(self, record: Record) -> None:
        alias_id = record["alias_id"]
        old = self._records.get(alias_id)
        if old is not None:
            self._drop_secondary(old)
        self._records[alias_id] = record
        if self._loaded:
            self._changed[alias_id] = record
        numeric = record["numeric_alias"].lower()
        if numeric not in self._by_numeric and numeric in self._archived_numeric:
            self._taken_twice += 1
        self._by_numeric[numeric] = alias_id
        self._count_open(record, 1)
        self._by_alias[record["alias"].lower()] = alias_id
        if record.get("meeting_uid") and record["status"] == "bound":
            self._by_uid[record["meeting_uid"]] = alias_id
        if record.get("placeholder_id"):
            self._by_placeholder[record["placeholder_id"]] = alias_id
        if record.get("name"):
            self._names[record["name"].lower()] = alias_id

    def _count_open(self, record: Record, step: int) -> None:
        """Keep the per-user count of open reservations with each record that enters or
        leaves the index (a record is replaced whole when it is bound or deleted)."""
        user = record.get("user")
        if not user or record["status"] != "reserved":
            return
        held = self._open_by_user.get(user, 0) + step
        if held > 0:
            self._open_by_user[user] = held
        else:
            self._open_by_user.pop(user, None)

    def _drop_secondary(self, record: Record) -> None:
        self._count_open(record, -1)
        alias_id = record["alias_id"]
        uid = record.get("meeting_uid")
        if uid and self._by_uid.get(uid) == alias_id:
            del self._by_uid[uid]
        name = (record.get("name") or "").lower()
        if name and self._names.get(name) == alias_id:
            del self._names[name]

    def _unindex(self, alias_id: str) -> None:
        record = self._records.pop(alias_id, None)
        if record is None:
            return
        self._drop_secondary(record)
        numeric = record["numeric_alias"].lower()
        if self._by_numeric.pop(numeric, None) is not None and numeric in self._archived_numeric:
            self._taken_twice -= 1
        self._by_alias.pop(record["alias"].lower(), None)
        if record.get("placeholder_id"):
            self._by_placeholder.pop(record["placeholder_id"], None)

    # --- queries ------------------------------------------------------------------------------

    def get(self, alias_id: str) -> Record | None:
        return self._records.get(alias_id)

    def by_meeting_uid(self, uid: str) -> Record | None:
        alias_id = self._by_uid.get(uid)
        return self._records.get(alias_id) if alias_id else None

    def by_alias(self, alias: str) -> Record | None:
        key = normalise_alias(alias)
        alias_id = self._by_alias.get(key) or self._by_numeric.get(key)
        return self._records.get(alias_id) if alias_id else None

    def by_placeholder(self, placeholder_id: str) -> Record | None:
        alias_id = self._by_placeholder.get(placeholder_id)
        return self._records.get(alias_id) if alias_id else None

    def archived(self, alias_id: str) -> ArchivedInfo | None:
        return self._archived.get(alias_id)

    def take_changes(self) -> list[Record]:
        """The records changed since the last call (once committed: what may be published)."""
        changed, self._changed = self._changed, {}
        return list(changed.values())

    def archived_aliases(self) -> Iterator[tuple[str, ArchivedInfo]]:
        return iter(list(self._archived.items()))

    def numeric_taken(self, numeric_alias: str) -> bool:
        key = numeric_alias.lower()
        return key in self._by_numeric or key in self._archived_numeric

    def open_reservations(self, user: str) -> int:
        """How many reservations `user` holds that are in no meeting yet (expired ones count
        until the sweep deletes them). O(1): the add-in API asks it on every reservation."""
        return self._open_by_user.get(user, 0)

    def aliases_taken(self) -> int:
        """How many numeric aliases can no longer be drawn: every active one and every
        archived one (never handed out again). O(1)."""
        return len(self._by_numeric) + len(self._archived_numeric) - self._taken_twice

    def records(self) -> Iterator[Record]:
        return iter(list(self._records.values()))

    def stats(self) -> StoreStats:
        bound = sum(1 for r in self._records.values() if r["status"] == "bound")
        reserved = sum(1 for r in self._records.values() if r["status"] == "reserved")
        return StoreStats(
            len(self._records), bound, reserved, len(self._archived), self._journal.entries
        )

    def __len__(self) -> int:
        return len(self._records)

    def alias_record(self, alias_id: str | None) -> AliasRecord | None:
        """The decision view of an alias, active or archived."""
        if alias_id is None:
            return None
        record = self._records.get(alias_id)
        if record is not None:
            return to_alias_record(record)
        info = self._archived.get(alias_id)
        if info is None:
            return None
        status: Status = "bound" if info.status == "bound" else "deleted"
        return AliasRecord(
            alias_id, "", "", status, meeting_uid=info.meeting_uid, organizer=info.organizer
        )

    def state_for(
        self,
        token: aliases.Token | None,
        meeting_uid: str,
        spec: tuple[str, int, str] | None = None,
    ) -> MeetingState:
        """The decision view of one meeting. With `spec` (prefix, suffix length, domain), a
        placeholder that has no alias yet gets one drawn (`fresh`), so the decision and its
        answer are made before anything is written."""
        token_record: AliasRecord | None = None
        fresh: AliasRecord | None = None
        if token is not None:
            if token.kind == "PXPS":
                token_record = self.alias_record(token.id)
            else:
                alias_id = self._by_placeholder.get(token.id) or self._archived_placeholder.get(
                    token.id
                )
                token_record = self.alias_record(alias_id)
                if token_record is None and spec is not None:
                    fresh = self.draw(*spec)
        uid_record = self.alias_record(self._by_uid.get(meeting_uid))
        return MeetingState(token_record, uid_record, fresh)

    def draw(self, prefix: str, suffix_length: int, domain: str) -> AliasRecord:
        """A new alias, unique among stored and drawn ones, not stored: an action `bind_new`
        naming it stores it (until the next commit)."""
        alias = aliases.generate_alias(prefix, suffix_length, domain, self._drawn_taken, self.rng)
        self._drawn[alias.alias_id] = alias
        return AliasRecord(alias.alias_id, alias.alias, alias.numeric_alias, "reserved")

    def _drawn_taken(self, numeric_alias: str) -> bool:
        key = numeric_alias.lower()
        return self.numeric_taken(key) or any(
            a.numeric_alias.lower() == key for a in self._drawn.values()
        )

    # --- writes (durable only after commit) ----------------------------------------------------

    def _put(self, record: Record) -> Record:
        self._check()
        record = {k: v for k, v in record.items() if v is not None and v != {}}
        # journal first: a record that cannot be written (say, a value JSON cannot hold) must
        # not change what this process believes
        try:
            self._journal.append({"op": "put", "r": record})
        except OSError as exc:  # the journal's file could not be created
            if disk_full(exc):
                self._take_back()
                raise StorageFullError(f"{self.directory}: the disk is full: {exc}") from exc
            raise
        alias_id = record["alias_id"]
        if alias_id not in self._undo:
            self._undo[alias_id] = self._records.get(alias_id)
        self._index(record)
        return record

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

    def reserve(self, prefix: str, suffix_length: int, domain: str, **extra: Any) -> Record:
        """A new alias in state `reserved`, expiring after the reservation TTL unless bound.
        `user=` (who reserved it) counts it in `open_reservations` until then."""
        alias = aliases.generate_alias(prefix, suffix_length, domain, self.numeric_taken, self.rng)
        now = self.clock()
        record = _reserved(alias, now)
        record["expires"] = _ts(now + self.reservation_ttl)
        record.update(extra)
        return self._put(record)

    def unique_name(self, base: str) -> str:
        """`base`, or `base` plus a random number when another conference has that name."""
        name = base.strip() or "Meeting"
        while name.lower() in self._names:
            name = f"{base.strip() or 'Meeting'} {aliases.random_digits(6, self.rng)}"
        return name

    def apply(self, action: Action, fields: Mapping[str, Any] | None = None) -> Record | None:
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

    def _store_drawn(self, action: Action) -> Record:
        alias = self._drawn.pop(action.alias_id or "", None)
        if alias is None:
            raise KeyError(f"alias {action.alias_id} was not drawn by this store")
        if self.numeric_taken(alias.numeric_alias):
            raise ValueError(f"drawn alias {alias.numeric_alias} was taken since")
        record = _reserved(alias, self.clock())
        if action.placeholder_id:
            record["placeholder_id"] = action.placeholder_id
        return self._put(record)

    def _bind(self, record: Record, action: Action, extra: Mapping[str, Any]) -> Record:
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
        new = dict(record)
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
            valid_until=_ts(last) if last is not None else None,
            expires=None,
        )
        return self._put(new)

    def delete(self, alias_id: str, reason: str, sequence: int | None = None) -> Record | None:
        record = self._records.get(alias_id)
        if record is None:
            return None
        new = dict(record, status="deleted", reason=reason, deleted=_ts(self.clock()))
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

    @property
    def broken(self) -> bool:
        return self._broken is not None

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
        now_ts = _ts(now)
        grace_ts = _ts(now - ARCHIVE_GRACE - join_after)
        for record in list(self._records.values()):
            if (
                record["status"] == "reserved"
                and record.get("expires")
                and (record["expires"] <= now_ts)
            ):
                self.delete(record["alias_id"], "expired")
        self.commit()
        moving = [
            r
            for r in self._records.values()
            if r["status"] == "deleted"
            or (r["status"] == "bound" and r.get("valid_until") and r["valid_until"] < grace_ts)
        ]
        if not moving:
            return 0
        storage = AtomicJSONStorage(self.directory / ARCHIVE)
        data = storage.read() or {}
        table = data.setdefault("archive", {})
        next_id = max((int(k) for k in table), default=0) + 1
        for offset, record in enumerate(moving):
            table[str(next_id + offset)] = record
        try:
            # archive first: a crash before the journal entry only duplicates
            storage.write(data)
        except OSError as exc:
            if disk_full(exc):
                raise StorageFullError(f"{self.directory}: the disk is full: {exc}") from exc
            raise
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
        data = AtomicJSONStorage(self.directory / ARCHIVE).read() or {}
        for record in data.get("archive", {}).values():
            if record["alias_id"] == alias_id:
                info = self._archived.pop(alias_id)
                try:
                    self._put(dict(record))
                except BaseException:
                    self._archived[alias_id] = info
                    raise
                self._unarchived[alias_id] = info
                return

    def compact(self, background: bool = False) -> None:
        """Write the snapshot and drop the journals it covers. With `background`, the snapshot is
        serialised in a thread while writes go on into a fresh journal."""
        self.wait_for_compaction()
        self._journal.close()
        # until the snapshot replaces it, the closed journal may be needed: seal it (one never
        # created needs no seal, and its generation is taken again)
        created = self._journal.created
        seal = [{"op": "seal", "gen": self._generation, "entries": self._journal.entries}]
        covered = self._journal_generations()
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
            tables = {"aliases": {str(i): r for i, r in enumerate(snapshot, 1)}}
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


def encode_schedule(schedule: recurrence.Schedule) -> str:
    """Schedules are kept as one compact JSON string per record: a reload then creates one string
    instead of a dozen nested objects per conference (reload time is dominated by object
    creation), and a schedule is decoded only when a decision needs it."""
    raw = orjson.dumps(recurrence.to_json(schedule)).decode()
    _RECENT.put(raw, schedule)
    return raw


def decode_schedule(raw: str | dict[str, Any]) -> recurrence.Schedule:
    if not isinstance(raw, str):
        return recurrence.from_json(raw)
    schedule = _RECENT.get(raw)
    return schedule if schedule is not None else recurrence.from_json(orjson.loads(raw))


class _RecentSchedules:
    """The schedules last encoded, by their JSON: a meeting just bound is published to the
    policy index at once, and decoding what was just encoded cost as much as the rest of
    binding it (schedules are frozen, so sharing one is safe; they come from calendars, in
    whole seconds and named zones, which is all the JSON keeps). Decoding adds nothing here,
    so publishing a whole store at start-up does not churn it."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: dict[str, recurrence.Schedule] = {}
        self._lock = threading.Lock()

    def get(self, raw: str) -> recurrence.Schedule | None:
        return self._items.get(raw)

    def put(self, raw: str, schedule: recurrence.Schedule) -> None:
        with self._lock:
            self._items[raw] = schedule
            if len(self._items) > self.size:
                del self._items[next(iter(self._items))]  # the oldest (dicts keep order)


_RECENT = _RecentSchedules(4096)


def _reserved(alias: aliases.Alias, now: datetime) -> Record:
    return {
        "alias_id": alias.alias_id,
        "alias": alias.alias,
        "numeric_alias": alias.numeric_alias,
        "status": "reserved",
        "created": _ts(now),
    }


def _ts(value: datetime) -> float:
    return round(value.timestamp(), 3)


def to_alias_record(record: Mapping[str, Any]) -> AliasRecord:
    schedule = record.get("schedule")
    return AliasRecord(
        alias_id=record["alias_id"],
        alias=record["alias"],
        numeric_alias=record["numeric_alias"],
        status=record["status"],
        meeting_uid=record.get("meeting_uid"),
        sequence=record.get("sequence", -1),
        occurrence_sequences=record.get("occ_seq") or {},
        schedule=decode_schedule(schedule) if schedule else None,
        placeholder_id=record.get("placeholder_id"),
        organizer=record.get("organizer_email", ""),
        answered=record.get("answered") or {},
    )
