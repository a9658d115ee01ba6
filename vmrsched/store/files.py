"""The store's files and what can go wrong with them: their names, the directory lock that keeps
a second process out, the errors a store raises, and the garbage collector paused while stores
load."""

from __future__ import annotations

import fcntl
import gc
import os
import re
import threading
from pathlib import Path

from vmrsched.store.journal import CorruptError

SNAPSHOT = "store.json"
ARCHIVE = "archive.json"
JOURNAL_RE = re.compile(r"^journal\.(\d+)\.log$")


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


class StorageUnavailableError(StorageFullError):
    """The database did not take a commit (unreachable, restarting, failing over to a new
    primary, or refusing an alias another record holds): as with a full disk, every write since
    the last commit is taken back and the next commit tries again."""


class OwnershipLostError(StoreBrokenError):
    """Another instance owns the integration now (this one's lease expired or was taken): the
    store refuses every further write, and the integration stops here."""


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


def journal_path(directory: Path, generation: int) -> Path:
    return directory / f"journal.{generation}.log"


def journal_generations(directory: Path) -> list[int]:
    gens = []
    for path in directory.iterdir():
        match = JOURNAL_RE.match(path.name)
        if match:
            gens.append(int(match.group(1)))
    return sorted(gens)


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


GC_PAUSE = _GcPause()
