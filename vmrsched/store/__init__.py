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

The package: `records.py` (the record and its schedule), `files.py` (file names, the directory
lock, the errors), `index.py` (the indexes and queries), `archive.py` (the archive file) and
`writes.py` (what every write does, whatever keeps it), `journaled.py` (Store, the file
backend: loading, commits, compaction) and `database.py` (DatabaseStore, a shared database
through a Backend). Import from here.

Beside the store, what else the service keeps, each as its own module: `journal.py` (the
checksummed journal file, atomic writes and setting damaged files aside, which every one of
them is written with), `outqueue.py` (the outgoing messages, durable until delivered),
`decisions.py` (the log of every decision) and `repair.py` (the offline check and repair).
"""

from vmrsched.store.archive import ARCHIVE_GRACE
from vmrsched.store.database import Backend, DatabaseStore
from vmrsched.store.files import (
    ARCHIVE,
    JOURNAL_RE,
    SNAPSHOT,
    OwnershipLostError,
    StorageFullError,
    StorageUnavailableError,
    StoreBrokenError,
    StoreCorruptError,
    StoreInUseError,
    lock_directory,
)
from vmrsched.store.journaled import MAX_ANSWERS, Store
from vmrsched.store.records import (
    ArchivedInfo,
    Clock,
    Record,
    RecordStatus,
    StoredRecord,
    StoreStats,
    decode_schedule,
    encode_schedule,
    to_alias_record,
    utc_now,
)
from vmrsched.store.writes import StoreWrites

__all__ = [
    "ARCHIVE",
    "ARCHIVE_GRACE",
    "JOURNAL_RE",
    "MAX_ANSWERS",
    "SNAPSHOT",
    "ArchivedInfo",
    "Backend",
    "Clock",
    "DatabaseStore",
    "OwnershipLostError",
    "Record",
    "RecordStatus",
    "StorageFullError",
    "StorageUnavailableError",
    "Store",
    "StoreBrokenError",
    "StoreCorruptError",
    "StoreInUseError",
    "StoreStats",
    "StoreWrites",
    "StoredRecord",
    "decode_schedule",
    "encode_schedule",
    "lock_directory",
    "to_alias_record",
    "utc_now",
]
