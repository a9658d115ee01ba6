"""The decisions log of one integration: every answer the service gave a meeting (time, subject,
organizer, sender, outcome, reason, correlation id, alias), for admins asking "why was my meeting
declined?". Written by the poller once per batch, durable before the batch's items count as
handled, bounded to the newest `keep` entries; readers (the admin API, the organizer page, the
CLI) only read, newest first.

Where it is kept is one port, `Decisions` (a writer per integration, a reader for any): in files
(`FileDecisions`, below: the default) or in the shared database
(`vmrsched.postgres.decisions.DatabaseDecisions`, fenced by the integration's lease), chosen once
where the service is wired.

In files: one line per decision in `<data_dir>/decisions/<integration>.jsonl`, its JSON behind
its checksum as a journal line (journal.py; lines written before lines carried one, plain JSON,
still read), one fsync per batch; when it holds twice `keep` entries it is rewritten (atomically)
with the newest `keep`.

A last line without its newline is a batch a crash cut short (never fsynced, so decided again):
it is cut off before the next append. Any other line that does not read or fails its checksum
(a decline edited into an acceptance, say) is damage, and is never read as a decision. It is
found when the service starts, as every file the service keeps: each log is checked when its
writer is first handed out (`FileDecisions.writer`, at the poller's start), in a thread of its
own so that a start with many full logs does not wait for them (`_Checks`); then it follows the
queue journals' rule, with the mechanism the spool's calendar uses (journal.py, `settle`): the
file is copied aside as `<name>.damaged-<time>` (every byte kept), rewritten with every line
that reads, the log says so and state_damaged names the copy. A reader that meets damage later
skips it and raises state_damaged; `vmrsched store check` lists the damaged log and the copies
set aside."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from vmrsched.config import DataLayout
from vmrsched.store.journal import announce, atomic_write, decode_line, encode_line
from vmrsched.store.journal import settle as settle_file
from vmrsched.telemetry import report_damaged

log = logging.getLogger("vmrsched.store.decisions")

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


def line(entry: Mapping[str, Any]) -> bytes:
    """One decision as a line of the log's file: its JSON behind its checksum."""
    return encode_line(encode(entry).encode())


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
        self._checks = _Checks()

    def writer(self, integration: str) -> DecisionLog:
        """The one writer of the integration's file: the poller's decisions and an admin's
        deletions go through the same lock, so neither can take a line the other is still
        writing for a torn one and cut it off. The first time (at the poller's start), the
        file is checked for damage, in the background (`DecisionLog.settle`)."""
        with self._lock:
            writer = self._writers.get(integration)
            if writer is None:
                writer = DecisionLog(self.layout.decisions(integration), self.keep)
                self._writers[integration] = writer
        writer.handed_out()
        self._checks.add(writer)
        return writer

    def checked(self, timeout: float | None = None) -> None:
        """Wait until the logs handed out so far are checked (or `timeout` passes)."""
        self._checks.wait(timeout)

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
        self._settled = False  # checked for damage (`settle`)
        self._closed = False  # closed by its owner since it was handed out: no check waits

    @property
    def settled(self) -> bool:
        return self._settled

    def handed_out(self) -> None:
        """Its owner (a poller starting) takes it: a check still to be made is made."""
        with self._lock:
            self._closed = False

    def settle_if_absent(self) -> bool:
        """Settled at once when there is no file yet (nothing to check, nothing to read): an
        integration that never decided anything costs its start no thread hand-over (with
        1,000 such integrations, the checks' thread, started and ended once per log, took
        a tenth of the start). Returns whether it is settled now."""
        with self._lock:
            if not self._settled and self._handle is None and not self.path.exists():
                self._settled = True
                self._lines = 0
            return self._settled

    def settle(self, *, unless_closed: bool = False) -> bool:
        """Check the file for damage, once (`unless_closed`: not after its owner closed it: a
        check waiting when the service stops is made at the next start). A torn last line (a
        crash mid-write) is cut off; damaged lines (no crash does that) copy the file aside as
        `<name>.damaged-<time>` (every byte kept) and leave it holding every line that reads,
        and state_damaged names the copy. Returns whether it checked now."""
        with self._lock:
            if self._settled or (unless_closed and self._closed):
                return False
            self._close_file()  # it may be rewritten: the next append opens the new file
            settled = settle_file(self.path, plain=True)
            self._settled = True
            self._lines = len(settled.scan.ordered)
        announce(
            settled,
            self.path,
            self.path.name.removesuffix(".jsonl"),
            "a batch a crash cut short, never durable, so decided again",
            log,
        )
        return True

    def _open(self) -> BinaryIO:
        """The log, appended to; opened for reading too, for its last line only."""
        if self._handle is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # unbuffered: a batch is on its way to the disk whole or taken back whole (append),
            # never left in a buffer to come out with a later batch, or half
            handle = open(self.path, "a+b", buffering=0)  # noqa: SIM115 (closed in close())
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
        data = b"".join(map(line, entries))
        if not data:
            return
        with self._lock:
            fd = self._open().fileno()
            size = os.fstat(fd).st_size
            try:
                written = 0
                while written < len(data):
                    written += os.write(fd, data[written:])
                os.fsync(fd)
            except BaseException:
                # a full disk or an I/O error: the batch is taken back whole (best effort), so
                # that the caller's "not logged" is exact and no later line is glued to a part
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, size)
                raise
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
            self._closed = True
            self._close_file()

    def _close_file(self) -> None:
        # forgotten first: a close that fails (a flush on a full disk) still closes the file,
        # and the next append must open it again rather than write to a closed one
        handle, self._handle = self._handle, None
        if handle is not None:
            handle.close()


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
    not read or fails its checksum is damage: skipped too (never read as a decision), and
    reported (state_damaged). A line may lack fields (written by an older version, or by
    hand): readers fill them in (`EMPTY`)."""
    try:
        lines = Path(path).read_bytes().split(b"\n")
    except FileNotFoundError:
        return
    last = len(lines) - 1  # the piece after the last newline: empty, or a torn line
    reported = False
    for number in range(last, -1, -1):
        entry = decode_line(lines[number], plain=True)
        if entry is not None:
            yield entry
        elif number < last and not reported:
            reported = True
            report_damaged(
                Path(path).name.removesuffix(".jsonl"),
                path,
                f"line {number + 1} does not read or fails its checksum (searches skip it)",
            )


class _Checks:
    """Logs waiting for their check at the start, checked one at a time in a thread that runs
    while any wait: a full log is 40,000 lines (about 15 MB), and reading each one before its
    integration runs once took a restart with 1,000 full logs from 5 s to 85-129 s."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting: list[DecisionLog] = []
        self._thread: threading.Thread | None = None

    def add(self, writer: DecisionLog) -> None:
        if writer.settle_if_absent():
            return
        with self._lock:
            if writer.settled or writer in self._waiting:
                return
            self._waiting.append(writer)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="decisions-check", daemon=True
                )
                self._thread.start()

    def _run(self) -> None:
        while True:
            with self._lock:
                if not self._waiting:
                    self._thread = None
                    return
                writer = self._waiting.pop(0)
            try:
                writer.settle(unless_closed=True)
            except Exception:  # the next start checks again; the others go on meanwhile
                log.exception("%s: could not be checked for damage", writer.path)

    def wait(self, timeout: float | None = None) -> None:
        with self._lock:
            thread = self._thread
        if thread is not None:
            thread.join(timeout)


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
