"""The decisions log of one integration: every answer the service gave a meeting (time, subject,
organizer, sender, outcome, reason, correlation id, alias), for admins asking "why was my meeting
declined?". One JSON line per decision in `<data_dir>/decisions/<integration>.jsonl`, written by
the poller once per batch with one fsync, bounded: when it holds twice `keep` entries it is
rewritten (atomically) with the newest `keep`. Readers (the admin API, the CLI) only read."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO

from vmrsched.journal import atomic_write

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
    return Path(data_dir) / "decisions" / f"{integration}.jsonl"


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
        self._torn = False

    def _open(self) -> BinaryIO:
        """The log, appended to; opened for reading too, for its last byte only."""
        if self._handle is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            handle = open(self.path, "a+b")  # noqa: SIM115 (kept open; closed in close())
            # a crash mid-write leaves a torn last line; the next entry must not be glued to it
            fd = handle.fileno()
            size = os.fstat(fd).st_size
            self._torn = size > 0 and os.pread(fd, 1, size - 1) != b"\n"
            self._handle = handle
        return self._handle

    def append(self, entries: Iterable[Mapping[str, Any]]) -> None:
        """Write a batch and make it durable (one fsync)."""
        data = b"".join(
            json.dumps(dict(entry), ensure_ascii=False, default=str).encode() + b"\n"
            for entry in entries
        )
        if not data:
            return
        with self._lock:
            handle = self._open()
            if self._torn:
                data = b"\n" + data
                self._torn = False
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


def _count_lines(path: Path) -> int:
    count = 0
    with open(path, "rb", buffering=0) as handle:
        while chunk := handle.read(1 << 20):
            count += chunk.count(b"\n")
    return count


def read(path: Path) -> Iterator[dict[str, Any]]:
    """Newest first. A torn last line (a crash mid-write) is skipped. A line may lack fields
    (written by an older version, or by hand): readers fill them in (`EMPTY`)."""
    try:
        lines = Path(path).read_bytes().splitlines()
    except FileNotFoundError:
        return
    for line in reversed(lines):
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict):
            yield entry


def search(
    path: Path,
    query: str = "",
    limit: int = 100,
    view: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """The newest `limit` decisions whose subject, organizer, sender, outcome, reason,
    correlation id, alias or meeting UID contains every word of `query` (case-insensitive).
    `view` makes each entry what the reader sees (the admins: the conference subject as the
    subject), and the search looks in that."""
    words = query.lower().split()
    found: list[dict[str, Any]] = []
    for raw in read(path):
        entry = view(raw) if view is not None else raw
        text = " ".join(str(entry.get(key, "")) for key in FIELDS).lower()
        if all(word in text for word in words):
            found.append(entry)
            if len(found) >= limit:
                break
    return found
