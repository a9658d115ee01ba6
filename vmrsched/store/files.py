"""The store's files and what can go wrong with them: their names, the directory lock that keeps
a second process out, the errors a store raises, which journals must be there (a journal that is
gone is told from one a compaction removed), and the garbage collector paused while stores
load."""

from __future__ import annotations

import fcntl
import gc
import os
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vmrsched.config.layout import DataLayout
from vmrsched.store.journal import DAMAGED_SUFFIX, CorruptError, Scan

SNAPSHOT = "store.json"
ARCHIVE = "archive.json"
JOURNAL_RE = re.compile(r"^journal\.(\d+)\.log$")
SPOOL_CALENDAR = Path("calendar", "accepted.jsonl")  # in a spool directory: what it accepted
# the snapshot's table saying which journals it holds: {"1": {"through": G}}, every entry of
# every journal up to generation G (written with the snapshot, checksummed like its records)
COVERS = "journals"


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


def covers(through: int) -> dict[str, dict[str, Any]]:
    """The snapshot's table saying it holds every journal up to generation `through`."""
    return {COVERS: {"1": {"through": through}}}


def covered_through(snapshot: Mapping[str, Any] | None) -> int | None:
    """The newest journal generation a snapshot holds whole: 0 when there is no snapshot
    (None given), None when the snapshot does not say (written before snapshots said so: then
    a journal that is gone cannot be told from one a compaction removed)."""
    if snapshot is None:
        return 0
    table = snapshot.get(COVERS)
    document = table.get("1") if isinstance(table, dict) else None
    through = document.get("through") if isinstance(document, dict) else None
    return through if isinstance(through, int) and not isinstance(through, bool) else None


@dataclass(frozen=True)
class MissingJournals:
    """Journals (generations `first` to `last`) that the store's other files say existed and
    that no file holds now: removed by hand, not by a compaction."""

    first: int
    last: int
    said: str  # what says they existed
    # the entries their seals give them, or None when a seal is gone too (then how many they
    # held is not known: a count of some of them would read as the whole loss)
    entries: int | None

    @property
    def name(self) -> str:
        first, last = journal_name(self.first), journal_name(self.last)
        return first if self.first == self.last else f"{first} to {last}"


def journal_name(generation: int) -> str:
    return f"journal.{generation}.log"


def missing_journals(
    scans: Sequence[tuple[int, Scan]], through: int | None, snapshot: bool
) -> list[MissingJournals]:
    """The journals that must be in the directory and are not. Generations only grow, a new
    journal is born with the seals of the ones before it, and a compaction removes journals
    only once the snapshot it wrote says it holds them (`through`, the snapshot's COVERS): so
    every generation after `through` up to the newest journal present must be there, unless a
    seal says it held nothing. No snapshot: `through` is 0, and journals that only a snapshot
    could hold now are missing (with store.json, maybe). `through` None (a snapshot written
    before it said what it holds): nothing can be told, nothing is missing."""
    if through is None or not scans:
        return []
    present = {gen for gen, _ in scans}
    sealed: dict[int, tuple[int, int]] = {}  # generation -> (entries, the journal sealing it)
    for gen, result in scans:
        for entry in result.entries:
            if entry.get("op") == "seal":
                sealed.setdefault(int(entry["gen"]), (int(entry["entries"]), gen))
    gone = [
        gen
        for gen in range(through + 1, max(present))
        if gen not in present and sealed.get(gen, (1, 0))[0] > 0
    ]
    runs: list[list[int]] = []
    for gen in gone:
        if runs and runs[-1][-1] == gen - 1:
            runs[-1].append(gen)
        else:
            runs.append([gen])
    cover = (
        f"{SNAPSHOT} holds the journals up to generation {through} only"
        if snapshot
        else f"there is no {SNAPSHOT} to hold {{them}}"
    )
    found = []
    for run in runs:
        them = "it" if len(run) == 1 else "them"
        seals = [(gen, *sealed[gen]) for gen in run if gen in sealed]
        said = [
            f"{journal_name(by)} seals {journal_name(gen)} with {entries} entries"
            for gen, entries, by in seals[:3]
        ] or [f"{journal_name(min(g for g in present if g > run[-1]))} comes after {them}"]
        found.append(
            MissingJournals(
                run[0],
                run[-1],
                "; ".join(said) + ", and " + cover.format(them=them),
                sum(entries for _, entries, _ in seals) if len(seals) == len(run) else None,
            )
        )
    return found


def kept_aside(
    data_dir: Path, integrations: Sequence[str], calendars: Mapping[str, Path]
) -> list[tuple[str, Path]]:
    """The damaged files set aside (`<name>.damaged-<time>`) that are still there, each with
    the integration it belongs to ("service" for the sign-in key): a start finds them again,
    so that state_damaged does not go away with a restart before anyone looked. Directory
    listings only (the files are not read): the queue folder of each integration in
    `integrations`, the decisions, sign-in and token-cache folders, and the folders of the
    spool calendars `calendars` names (integration -> the calendar file)."""
    layout = DataLayout(data_dir)
    found: list[tuple[str, Path]] = []

    def listed(folder: Path) -> list[Path]:
        try:
            return sorted(p for p in folder.iterdir() if DAMAGED_SUFFIX.search(p.name))
        except OSError:
            return []

    for name in integrations:
        found.extend((name, path) for path in listed(layout.queue(name)))
    for folder in (layout.decisions_dir, layout.sign_in, layout.oauth_dir):
        for path in listed(folder):
            owner = DAMAGED_SUFFIX.sub("", path.name).split(".")[0]
            found.append(("service" if owner == "key" else owner, path))
    for name, calendar in calendars.items():
        found.extend(
            (name, path)
            for path in listed(calendar.parent)
            if path.name.startswith(f"{calendar.name}.")
        )
    return found


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
