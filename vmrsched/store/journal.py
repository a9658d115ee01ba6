"""Durable, crash-safe files: atomic whole-file writes and an append-only checksummed journal.

tinydb rewrites its whole file on every write, which costs hundreds of milliseconds once a store
holds 100,000 conferences. Writes therefore go to a journal (one fsync for every group of writes
that arrive together) and the tinydb file is rewritten only when the journal is compacted.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import json
import logging
import os
import re
import time
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from tinydb.storages import Storage

from vmrsched.telemetry import report_damaged


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes) -> None:
    """Replace `path` with `data` so that a crash leaves either the old or the new file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk keeps no half-written copy
        raise
    fsync_dir(path.parent)


def disk_full(exc: BaseException) -> bool:
    """Whether a write failed for want of space (the disk or the user's quota)."""
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


DAMAGED_SUFFIX = re.compile(r"\.damaged-\d{8}T\d{6}Z(?:-\d+)?$")


def _aside_name(path: Path, now: float | None) -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    target = path.with_name(f"{path.name}.damaged-{stamp}")
    number = 1
    while target.exists():
        number += 1
        target = path.with_name(f"{path.name}.damaged-{stamp}-{number}")
    return target


def set_aside(path: Path, now: float | None = None) -> Path:
    """Move a damaged file out of its owner's way, every byte kept, as `<name>.damaged-<UTC
    time>` beside it (`vmrsched store check` lists such files). Returns where it went."""
    target = _aside_name(path, now)
    os.rename(path, target)
    fsync_dir(path.parent)
    return target


def copy_aside(path: Path, now: float | None = None) -> Path:
    """Keep a copy of a damaged file beside it, every byte, named as `set_aside` names it,
    while the file stays where it is until its owner replaces it (atomic_write): there is no
    moment without it. A hard link where the file system has them, else a copy."""
    target = _aside_name(path, now)
    try:
        os.link(path, target)
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
            raise
        atomic_write(target, path.read_bytes())
    fsync_dir(path.parent)
    return target


_MEMBER_START = re.compile(r'"((?:[^"\\]|\\.)+)":\s*(?=\{)')


def salvage_members(raw: bytes) -> dict[str, dict[str, Any]]:
    """From a JSON object of objects that no longer parses as a whole (cut short, a damaged
    byte): each member whose object still reads on its own, in order."""
    text = raw.decode("utf-8", errors="replace")
    decoder = json.JSONDecoder()
    found: dict[str, dict[str, Any]] = {}
    position = 0
    for match in _MEMBER_START.finditer(text):
        if match.start() < position:
            continue  # inside a member already read
        try:
            value, position = decoder.raw_decode(text, match.end())
            name = json.loads(f'"{match.group(1)}"')
        except ValueError:
            continue
        if isinstance(value, dict):
            found[name] = value
    return found


CRC_TABLE = "_crc"  # table -> document id -> crc32 of the document as written
TABLE_KEY = "*"  # in a table's checksums: the crc32 of the whole table


def document_crc(document: Any) -> int:
    return zlib.crc32(orjson.dumps(document))


class AtomicJSONStorage(Storage):
    """tinydb storage whose writes are atomic (temp file, fsync, rename): a crash never leaves a
    half-written database. The file format is tinydb's own JSON, plus a table `_crc` with a
    checksum per document, so that damage to one record is found and named, never read as
    data (files written before it existed are read without the check)."""

    def __init__(self, path: str | Path, **_: Any) -> None:
        self.path = Path(path)

    def read(self) -> dict[str, dict[str, Any]] | None:
        """The database, or None when the file does not exist. An existing file that is empty
        or does not parse is never read as an empty database: writes are atomic, so such a file
        is damage, and trusting it would lose every record in it."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise CorruptError(f"{self.path} is empty or not JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise CorruptError(f"{self.path} is not a tinydb database")
        bad = damaged_documents(data)
        if bad:
            raise CorruptError(
                f"{self.path}: {len(bad)} document(s) fail their checksum: "
                + ", ".join(f"{table} #{doc_id}" for table, doc_id in bad[:5])
            )
        data.pop(CRC_TABLE, None)
        return data

    def write(self, data: dict[str, dict[str, Any]]) -> None:
        crcs: dict[str, dict[str, int]] = {}
        for name, table in data.items():
            if not name.startswith("_"):
                crcs[name] = {doc_id: document_crc(doc) for doc_id, doc in table.items()}
                crcs[name][TABLE_KEY] = document_crc(table)
        atomic_write(self.path, orjson.dumps({**data, CRC_TABLE: crcs}))

    def close(self) -> None:
        pass


def damaged_documents(data: dict[str, Any]) -> list[tuple[str, str]]:
    """(table, document id) of every document whose checksum does not match ("*" when the
    table as a whole does not, say because documents were added)."""
    crcs = data.get(CRC_TABLE)
    if not isinstance(crcs, dict):
        return []  # written before checksums were kept
    bad: list[tuple[str, str]] = []
    for name, table in data.items():
        if name == CRC_TABLE or not isinstance(table, dict):
            continue
        expected = crcs.get(name)
        if not isinstance(expected, dict):
            bad.append((name, "*"))
            continue
        if expected.get(TABLE_KEY) == document_crc(table):
            continue  # one pass over the whole table; documents only when it fails
        found = [d for d, doc in table.items() if expected.get(d) != document_crc(doc)]
        found += sorted(expected.keys() - table.keys() - {TABLE_KEY})
        bad.extend((name, d) for d in found or ["*"])
    return bad


def encode_entry(entry: dict[str, Any]) -> bytes:
    return encode_line(orjson.dumps(entry))


def encode_line(body: bytes) -> bytes:
    """A journal line: the checksum of `body` (a JSON object, however it was encoded), the
    body, a newline."""
    return b"%08x " % zlib.crc32(body) + body + b"\n"


def decode_line(line: bytes, *, plain: bool = False) -> dict[str, Any] | None:
    """The entry on one complete journal line, None when it does not pass its checksum
    (`plain`: a JSON object without a checksum reads too, as `scan` reads it)."""
    entry = _decode(line)
    if entry is None and plain:
        entry = _plain(line)
    return entry


class CorruptError(RuntimeError):
    """A file that must not be trusted: damage that a crash cannot cause (a bad line with good
    lines after it, an empty or unparsable snapshot). Nothing is dropped or rewritten; the admin
    runs `vmrsched store check|repair`."""


@dataclass
class Scan:
    """One journal file read line by line: the good entries, and what was wrong."""

    entries: list[dict[str, Any]] = field(default_factory=list)
    bad_lines: list[int] = field(default_factory=list)  # 1-based numbers of damaged lines
    torn_tail: bool = False  # the last line is incomplete or damaged: a crash mid-write
    # entries found whole inside damaged lines: behind junk, glued to the next one by a
    # damaged newline, or behind a checksum with one damaged character
    salvaged: list[dict[str, Any]] = field(default_factory=list)
    ordered: list[dict[str, Any]] = field(default_factory=list)  # good and salvaged, in order
    # damaged lines with nothing whole in them (1-based)
    unreadable: list[int] = field(default_factory=list)
    # of those, the ones whose text still parses though it fails its checksum: (line, where it
    # would stand in `ordered`, entry). Not data: what it says may have been changed.
    unverified: list[tuple[int, int, dict[str, Any]]] = field(default_factory=list)

    @property
    def corrupt(self) -> bool:
        return bool(self.bad_lines)

    def damage(self) -> str:
        """What is wrong with the file, in a few words ("" when nothing is)."""
        said = []
        if self.bad_lines:
            lines = ", ".join(map(str, self.bad_lines[:10]))
            lost = len(self.unreadable) - len(self.unverified)
            notes = [f"{lost} with nothing whole left in it"] if lost else []
            if self.unverified:
                notes.append(f"{len(self.unverified)} that parses but fails its checksum")
            said.append(f"damaged line(s) {lines}" + (f" ({', '.join(notes)})" if notes else ""))
        if self.torn_tail:
            said.append("a torn last line (a crash mid-write)")
        return "; ".join(said)


def _decode(line: bytes) -> dict[str, Any] | None:
    if len(line) < 10 or line[8:9] != b" ":
        return None
    body = line[9:]
    try:
        if int(line[:8], 16) != zlib.crc32(body):
            return None
        entry = orjson.loads(body)
    except (ValueError, orjson.JSONDecodeError):
        return None
    return entry if isinstance(entry, dict) else None


def _decode_near(line: bytes) -> dict[str, Any] | None:
    """A line whose checksum (or the space after it) differs from its text's in one character
    only: the damage hit the checksum, the text is whole (a damaged text would change the
    checksum in about every character)."""
    if len(line) < 10:
        return None
    body = line[9:]
    expected = b"%08x" % zlib.crc32(body)
    differing = sum(a != b for a, b in zip(line[:8], expected, strict=True)) + (line[8] != 32)
    if differing > 1:
        return None
    try:
        entry = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return entry if isinstance(entry, dict) else None


def _whole(piece: bytes) -> dict[str, Any] | None:
    """An entry from a piece of a damaged line, which may carry one damaged byte at its end
    (a newline that was damaged) or in its checksum."""
    return _decode(piece) or _decode(piece[:-1]) or _decode_near(piece) or _decode_near(piece[:-1])


def _unverified(line: bytes) -> dict[str, Any] | None:
    try:
        entry = orjson.loads(line[9:])
    except orjson.JSONDecodeError:
        return None
    return entry if isinstance(entry, dict) else None


def _recover(line: bytes) -> list[dict[str, Any]]:
    """The whole entries in a damaged line, in order."""
    entry = _decode_near(line)
    if entry is not None:
        return [entry]
    starts = [0, *(m.start() for m in _ENTRY_START.finditer(line, 1)), len(line)]
    found = []
    for start, end in itertools.pairwise(starts):
        entry = _whole(line[start:end])
        if entry is None and start:
            entry = _decode(line[start:])  # junk that merely looks like an entry's start
        if entry is not None:
            found.append(entry)
    return found


_ENTRY_START = re.compile(rb"[0-9a-f]{8} [{]")


def _plain(line: bytes) -> dict[str, Any] | None:
    """A line that is a JSON object without a checksum (written before lines carried one)."""
    if line[:1] != b"{":
        return None
    try:
        entry = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    return entry if isinstance(entry, dict) else None


def scan(path: Path, *, plain: bool = False) -> Scan:
    """Read a journal, telling a torn tail (an incomplete last line: what a crash in the middle
    of a write leaves, never acknowledged) from corruption (a complete line that fails its
    checksum: no crash does that, so the file cannot be trusted to be whole). `plain`: a
    line that is a JSON object without a checksum is an entry too (a file whose older lines
    were written before lines carried checksums; damage to such a line is found only where
    it no longer parses)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return Scan()
    return scan_bytes(data, plain=plain)


def scan_bytes(data: bytes, *, plain: bool = False) -> Scan:
    """`scan` of a journal's bytes."""
    result = Scan()
    lines = data.split(b"\n")
    complete, last = lines[:-1], lines[-1]
    bad: list[int] = []
    for number, line in enumerate(complete, 1):
        entry = _decode(line)
        if entry is None and plain:
            entry = _plain(line)
        if entry is not None:
            result.entries.append(entry)
            result.ordered.append(entry)
            continue
        # a complete line (its newline was written after it) that fails its checksum: no
        # crash does that, so it is damage, wherever it is
        bad.append(number)
        recovered = _recover(line)
        result.salvaged.extend(recovered)
        result.ordered.extend(recovered)
        if not recovered:
            result.unreadable.append(number)
            unverified = _unverified(line)
            if unverified is not None:
                result.unverified.append((number, len(result.ordered), unverified))
    if last:
        # no newline at the end: the last write did not finish (a crash mid-write), unless
        # the piece is a whole entry (only its newline missing or damaged): then keep it
        entry = _decode(last) or _decode(last[:-1]) or (_plain(last) if plain else None)
        if entry is not None:
            result.entries.append(entry)
            result.ordered.append(entry)
        else:
            result.torn_tail = True
    result.bad_lines = bad
    return result


@dataclass
class Settled:
    """What `settle` found in a file, and did to it."""

    scan: Scan
    dropped: int = 0  # bytes of a torn last line cut off
    aside: Path | None = None  # where a copy of the damaged file was kept


def announce(
    settled: Settled, path: Path, integration: str, torn: str, logger: logging.Logger
) -> None:
    """Say what `settle` did to `path`, one integration's file: a torn last line cut off (a
    warning saying what such a line held, `torn`), damage kept aside (an error, and the alarm
    state_damaged naming the copy)."""
    extra = {"integration": integration}
    if settled.dropped:
        logger.warning(
            "%s: dropped a torn last line (%d bytes: %s)", path, settled.dropped, torn, extra=extra
        )
    if settled.aside is not None:
        what = settled.scan.damage()
        logger.error(
            "%s: %s; every readable line (%d) is kept in it, the damaged file as %s",
            path,
            what,
            len(settled.scan.ordered),
            settled.aside.name,
            extra=extra,
        )
        report_damaged(integration, settled.aside, what)


def settle(path: Path, *, plain: bool = False, now: float | None = None) -> Settled:
    """Make a file of checksummed lines, only ever appended to, ready for its next append
    (`plain`: as `scan`). A torn last line (a crash mid-write: never durable) is cut off, so
    that the next line does not land on it; a whole last line lacking only its newline gets
    it. A file with damaged lines (no crash does that) is copied aside (`copy_aside`), then
    rewritten with every entry that still reads, in order, each line with its checksum. The
    caller says so (log, alarm) from what is returned. No file: nothing to do."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return Settled(Scan())
    result = scan_bytes(data, plain=plain)
    tail = len(data) - (data.rfind(b"\n") + 1)
    dropped = tail if result.torn_tail else 0
    if result.corrupt:
        aside = copy_aside(path, now)
        atomic_write(path, b"".join(encode_entry(entry) for entry in result.ordered))
        return Settled(result, dropped, aside)
    if tail:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        try:
            if dropped:
                os.ftruncate(fd, len(data) - tail)
            else:
                os.write(fd, b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
    return Settled(result, dropped)


def sealed_lengths(scans: Iterable[Scan]) -> dict[int, int]:
    """Journal generation -> how many entries it held when closed, from the seal entries a
    later journal carries (a journal shorter than that was cut short, not torn by a crash)."""
    return {
        int(entry["gen"]): int(entry["entries"])
        for result in scans
        for entry in result.entries
        if entry.get("op") == "seal"
    }


class Journal:
    """An open journal file: `append` buffers, `sync` makes everything appended so far durable.
    Nothing reaches the file before `sync`, and a `sync` that fails takes back what it wrote
    (the file is cut back to its last durable length): a full disk leaves no half entry, and
    the journal can be written again, with the entries still buffered or (`rollback`) not."""

    def __init__(
        self, path: Path, header: Sequence[dict[str, Any]] = (), *, lazy: bool = False
    ) -> None:
        """`header`: the first entries of a new journal (the seals of the journals before it),
        written with the file itself: a journal never exists without them, so a crash between
        creating it and sealing the previous one cannot leave that one unsealed (and a later
        cut of it undetectable). `lazy`: the file is created at the first append, so that
        opening and closing with nothing written leaves the directory as it was (a restart
        then creates no file and syncs no directory)."""
        self.path = path
        self._header = list(header)
        self._fd = -1
        self._made = False  # the file was created (it stays so once closed)
        self._closed = False
        self._buffer: list[bytes] = []
        self._durable = 0  # the file's length after the last sync
        self._usable = True  # false once a failed sync could not be taken back
        self.pending = 0
        self.entries = 0
        if not lazy:
            self._create()

    @property
    def created(self) -> bool:
        """Whether this journal's file was created (false while a lazy one is unwritten)."""
        return self._made

    def _create(self) -> None:
        header, path = self._header, self.path
        fresh = bool(header) and not path.exists()
        if fresh:
            temporary = path.with_name(path.name + ".new")
            try:
                with open(temporary, "wb") as out:
                    out.write(b"".join(encode_entry(entry) for entry in header))
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(temporary, path)
            except BaseException:
                temporary.unlink(missing_ok=True)
                raise
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o666)
        try:
            fsync_dir(path.parent)
            self._durable = os.fstat(fd).st_size
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self._made = True
        self.entries = len(header) if fresh else 0
        if header and not fresh:
            for entry in header:
                self.append(entry)
            self.sync()

    def append(self, entry: dict[str, Any]) -> None:
        if self._closed:
            raise ValueError(f"{self.path}: the journal is closed")
        if self._fd < 0:
            self._create()
        if not self._usable:
            raise OSError(errno.EIO, f"{self.path}: a failed write could not be taken back")
        self._buffer.append(encode_entry(entry))
        self.pending += 1
        self.entries += 1

    def sync(self) -> None:
        """Make everything appended so far durable. When that fails, the file is cut back to
        its last durable length (no half entry stays in it) and the entries stay buffered: the
        next sync tries them again, unless `rollback` drops them."""
        if not self.pending or self._fd < 0:
            return
        if not self._usable:
            raise OSError(errno.EIO, f"{self.path}: a failed write could not be taken back")
        data = b"".join(self._buffer)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]
            os.fsync(self._fd)
        except BaseException:
            self._cut_back()
            raise
        self._durable += len(data)
        self._buffer.clear()
        self.pending = 0

    def rollback(self) -> None:
        """Forget what was appended since the last sync, in the file too (a sync that failed
        may have written part of it)."""
        self.entries -= self.pending
        self.pending = 0
        self._buffer.clear()
        self._cut_back()

    def _cut_back(self) -> None:
        if self._fd < 0:
            return
        try:
            os.ftruncate(self._fd, self._durable)
        except OSError:
            self._usable = False  # appending behind what is left would read as damage

    @property
    def usable(self) -> bool:
        """False when a failed sync left bytes that could not be taken back."""
        return self._usable

    def close(self) -> None:
        self._closed = True
        if self._fd < 0:
            return
        try:
            self.sync()
        finally:
            self._close_fd()

    def close_quietly(self) -> None:
        """Close without raising (after a failed write, on the way out)."""
        self._closed = True
        with contextlib.suppress(OSError):
            self._close_fd()

    def _close_fd(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)
