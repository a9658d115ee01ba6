"""The decisions log of one integration: every answer the service gave a meeting (time, subject,
organizer, sender, outcome, reason, correlation id, alias), for admins asking "why was my meeting
declined?". Written by the poller once per batch, durable before the batch's items count as
handled, bounded to the newest `keep` entries; readers (the admin API, the organizer page, the
CLI) only read, newest first.

Where it is kept is one port, `Decisions` (a writer per integration, a reader for any): in files
(`FileDecisions`, below: the default) or in the shared database
(`vmrsched.postgres.decisions.DatabaseDecisions`, fenced by the integration's lease), chosen once
where the service is wired.

In files: one JSON line per decision in `<data_dir>/decisions/<integration>.jsonl`, one fsync per
batch; when it holds twice `keep` entries it is rewritten (atomically) with the newest `keep`.

A last line without its newline is a batch a crash cut short (never fsynced, so decided again):
the writer cuts it off before appending. Any other line that does not read is damage: readers
skip it and raise state_damaged, and `vmrsched store check` lists it; the line stays in the
file as it is."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from vmrsched.config import DataLayout
from vmrsched.store.journal import atomic_write
from vmrsched.telemetry import report_damaged

KEEP = 20_000
# what a search looks in; `sender` is who sent the message (a mail's Sender or From, else SENT-BY
# or ORGANIZER): for a not_organizer refusal, the one who tried to change someone else's meeting
FIELDS = (
    "subject",
    "organizer",
    "sender",
    "outcome",
    "reason",
    "correlation_id",
    "alias",
    "meeting_uid",
)


EMPTY: dict[str, Any] = dict.fromkeys(("time", *FIELDS), "")


def log_path(data_dir: Path, integration: str) -> Path:
    return DataLayout(data_dir).decisions(integration)


def encode(entry: Mapping[str, Any]) -> str:
    """One decision as JSON, as every backend keeps it (what JSON cannot hold, as text)."""
    return json.dumps(dict(entry), ensure_ascii=False, default=str)


class DecisionWriter(Protocol):
    """One integration's log as its poller writes it."""

    def append(self, entries: Iterable[Mapping[str, Any]]) -> None:
        """Write a batch, durable when this returns; the oldest beyond `keep` may go."""
        ...

    def close(self) -> None: ...


class Decisions(Protocol):
    """Every integration's decisions log: written by the integration's poller, read by anyone."""

    def writer(self, integration: str) -> DecisionWriter: ...

    def read(self, integration: str) -> Iterator[dict[str, Any]]:
        """The integration's decisions, newest first (a generator: stop when you have enough)."""
        ...


class FileDecisions:
    """The decisions logs in files under the data directory (DataLayout.decisions)."""

    def __init__(self, data_dir: Path, keep: int = KEEP) -> None:
        self.layout = DataLayout(data_dir)
        self.keep = keep
        self._writers: dict[str, DecisionLog] = {}
        self._lock = threading.Lock()

    def writer(self, integration: str) -> DecisionLog:
        """The one writer of the integration's file: the poller's decisions and an admin's
        deletions go through the same lock, so neither can take a line the other is still
        writing for a torn one and cut it off."""
        with self._lock:
            log = self._writers.get(integration)
            if log is None:
                log = DecisionLog(self.layout.decisions(integration), self.keep)
                self._writers[integration] = log
            return log

    def read(self, integration: str) -> Iterator[dict[str, Any]]:
        return read(self.layout.decisions(integration))


def search(
    path: Path,
    query: str = "",
    limit: int = 100,
    view: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """`search_entries` over the log file at `path`."""
    return search_entries(read(path), query, limit, view)


class DecisionLog:
    def __init__(self, path: Path, keep: int = KEEP) -> None:
        self.path = Path(path)
        self.keep = keep
        self._lock = threading.Lock()
        # Counted at the first append, not here: a full log is 40,000 lines (about 15 MB),
        # and reading every integration's at start-up delayed the service by 10 ms each.
        self._lines: int | None = None
        # opened at the first append: an integration that decides nothing creates no file
        self._handle: BinaryIO | None = None

    def _open(self) -> BinaryIO:
        """The log, appended to; opened for reading too, for its last line only."""
        if self._handle is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            handle = open(self.path, "a+b")  # noqa: SIM115 (kept open; closed in close())
            fd = handle.fileno()
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                # a crash mid-write left a torn last line: cut it off, so that no entry is
                # glued to it and no line that does not read is anything but damage
                os.ftruncate(fd, _last_line_end(fd, size))
                os.fsync(fd)
            self._handle = handle
        return self._handle

    def append(self, entries: Iterable[Mapping[str, Any]]) -> None:
        """Write a batch and make it durable (one fsync)."""
        data = b"".join(encode(entry).encode() + b"\n" for entry in entries)
        if not data:
            return
        with self._lock:
            handle = self._open()
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
            if self._lines is None:
                self._lines = _count_lines(self.path)
            else:
                self._lines += data.count(b"\n")
            if self._lines >= 2 * self.keep:
                self._trim()

    def _trim(self) -> None:
        newest = self.path.read_bytes().splitlines(keepends=True)[-self.keep :]
        self._close_file()
        atomic_write(self.path, b"".join(newest))
        self._lines = len(newest)

    def close(self) -> None:
        with self._lock:
            self._close_file()

    def _close_file(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def _last_line_end(fd: int, size: int) -> int:
    """Where the last complete line of a file ends (0: there is none)."""
    end = size
    while end > 0:
        start = max(0, end - 65536)
        newline = os.pread(fd, end - start, start).rfind(b"\n")
        if newline >= 0:
            return start + newline + 1
        end = start
    return 0


def _count_lines(path: Path) -> int:
    count = 0
    with open(path, "rb", buffering=0) as handle:
        while chunk := handle.read(1 << 20):
            count += chunk.count(b"\n")
    return count


def read(path: Path) -> Iterator[dict[str, Any]]:
    """Newest first. A torn last line (a crash mid-write) is skipped; any other line that does
    not read is damage: skipped too, and reported (state_damaged). A line may lack fields
    (written by an older version, or by hand): readers fill them in (`EMPTY`)."""
    try:
        lines = Path(path).read_bytes().split(b"\n")
    except FileNotFoundError:
        return
    last = len(lines) - 1  # the piece after the last newline: empty, or a torn line
    reported = False
    for number in range(last, -1, -1):
        line = lines[number]
        try:
            entry = json.loads(line) if line else None
        except ValueError:
            entry = None
        if isinstance(entry, dict):
            yield entry
        elif number < last and not reported and (line or entry is not None):
            reported = True
            report_damaged(
                Path(path).name.removesuffix(".jsonl"),
                path,
                f"line {number + 1} does not read (searches skip it)",
            )


def search_entries(
    entries: Iterable[dict[str, Any]],
    query: str = "",
    limit: int = 100,
    view: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """The first `limit` of `entries` (newest first, as `read` gives them) whose subject,
    organizer, sender, outcome, reason, correlation id, alias or meeting UID contains every
    word of `query` (case-insensitive). `view` makes each entry what the reader sees (the
    admins: the conference subject as the subject), and the search looks in that."""
    words = query.lower().split()
    found: list[dict[str, Any]] = []
    for raw in entries:
        entry = view(raw) if view is not None else raw
        text = " ".join(str(entry.get(key, "")) for key in FIELDS).lower()
        if all(word in text for word in words):
            found.append(entry)
            if len(found) >= limit:
                break
    return found
