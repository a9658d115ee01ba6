"""Durable, crash-safe files: atomic whole-file writes and an append-only checksummed journal.

tinydb rewrites its whole file on every write, which costs hundreds of milliseconds once a store
holds 100,000 conferences. Writes therefore go to a journal (one fsync for every group of writes
that arrive together) and the tinydb file is rewritten only when the journal is compacted.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import orjson
from tinydb.storages import Storage


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes) -> None:
    """Replace `path` with `data` so that a crash leaves either the old or the new file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


class AtomicJSONStorage(Storage):
    """tinydb storage whose writes are atomic (temp file, fsync, rename): a crash never leaves a
    half-written database. The file format is tinydb's own JSON."""

    def __init__(self, path: str | Path, **_: Any) -> None:
        self.path = Path(path)

    def read(self) -> dict[str, dict[str, Any]] | None:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        if not raw.strip():
            return None
        data = orjson.loads(raw)
        if not isinstance(data, dict):
            raise ValueError(f"{self.path} is not a tinydb database")
        return data

    def write(self, data: dict[str, dict[str, Any]]) -> None:
        atomic_write(self.path, orjson.dumps(data))

    def close(self) -> None:
        pass


def encode_entry(entry: dict[str, Any]) -> bytes:
    body = orjson.dumps(entry)
    return b"%08x " % zlib.crc32(body) + body + b"\n"


def read_entries(path: Path) -> Iterator[dict[str, Any]]:
    """Entries of one journal file, stopping at the first torn or corrupt line (a crash can only
    tear the tail, and nothing after a torn line was ever acknowledged)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return
    for line in data.split(b"\n")[:-1]:  # the last piece lacks its newline: incomplete
        if len(line) < 10 or line[8:9] != b" ":
            return
        body = line[9:]
        try:
            if int(line[:8], 16) != zlib.crc32(body):
                return
            entry = orjson.loads(body)
        except (ValueError, orjson.JSONDecodeError):
            return
        yield entry


class Journal:
    """An open journal file: `append` buffers, `sync` makes everything appended so far durable."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: BinaryIO = open(path, "ab")  # noqa: SIM115 - lives as long as the journal
        fsync_dir(path.parent)
        self.pending = 0
        self.entries = 0

    def append(self, entry: dict[str, Any]) -> None:
        self._file.write(encode_entry(entry))
        self.pending += 1
        self.entries += 1

    def sync(self) -> None:
        if self.pending:
            self._file.flush()
            os.fsync(self._file.fileno())
            self.pending = 0

    def close(self) -> None:
        self.sync()
        self._file.close()
