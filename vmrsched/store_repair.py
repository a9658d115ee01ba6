"""`vmrsched store check|repair`: what a damaged store still holds, and a new store made of every
valid record in it.

A store refuses to open when its files hold damage a crash cannot explain (store_corrupt). Check
reads every file without changing any; repair (with the service stopped: it takes the store's
lock) moves the damaged files aside into `damaged-<time>/`, keeping every byte, and writes a fresh
snapshot and archive from every record that can be read: the snapshot's documents that pass their
checksum (or, when it no longer parses, each document that still decodes on its own), then every
valid journal entry in order, including entries found behind junk on a damaged line.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from vmrsched.journal import (
    CRC_TABLE,
    AtomicJSONStorage,
    damaged_documents,
    document_crc,
    fsync_dir,
    scan,
    sealed_lengths,
)
from vmrsched.store import ARCHIVE, JOURNAL_RE, SNAPSHOT, lock_directory

_RECORD_START = re.compile(r'\{"alias_id":')


@dataclass
class FileReport:
    name: str
    records: int = 0  # records or entries read
    problems: list[str] = field(default_factory=list)
    lost: int = 0  # records or lines that could not be read


@dataclass
class Report:
    directory: Path
    files: list[FileReport] = field(default_factory=list)
    active: int = 0
    archived: int = 0

    @property
    def damaged(self) -> bool:
        return any(f.problems for f in self.files)

    def lines(self) -> list[str]:
        out = [f"{self.directory}: {'DAMAGED' if self.damaged else 'ok'}"]
        for f in self.files:
            status = "; ".join(f.problems) if f.problems else "ok"
            lost = f", {f.lost} unreadable" if f.lost else ""
            out.append(f"  {f.name}: {f.records} readable{lost}: {status}")
        out.append(f"  readable now: {self.active} active and {self.archived} archived aliases")
        return out


def _salvage_documents(raw: bytes, table: str) -> tuple[dict[str, Any], list[str]]:
    """Documents of one table from a file that no longer parses as a whole: each document that
    still decodes on its own (and passes its checksum, when the checksums are readable)."""
    text = raw.decode("utf-8", errors="replace")
    decoder = json.JSONDecoder()
    found: dict[str, Any] = {}
    problems: list[str] = []
    position = 0
    for match in _RECORD_START.finditer(text):
        if match.start() < position:
            continue
        try:
            doc, end = decoder.raw_decode(text, match.start())
        except ValueError:
            continue
        position = end
        if isinstance(doc, dict) and "alias_id" in doc:
            found[str(len(found) + 1)] = doc
    crcs: dict[str, int] = {}
    tail = text.rfind(f'"{CRC_TABLE}":')
    if tail >= 0:
        try:
            crcs_all, _ = decoder.raw_decode(text, tail + len(CRC_TABLE) + 3)
            crcs = dict(crcs_all.get(table, {}))
        except (ValueError, AttributeError):
            crcs = {}
    if crcs:
        valid = {crc for doc_id, crc in crcs.items() if doc_id != "*"}
        kept = {k: v for k, v in found.items() if document_crc(v) in valid}
        if len(kept) != len(found):
            problems.append(f"{len(found) - len(kept)} decodable document(s) fail their checksum")
        found = kept
    return found, problems


def _read_table(directory: Path, name: str, table: str, report: Report) -> dict[str, Any]:
    path = directory / name
    entry = FileReport(name)
    report.files.append(entry)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return {}
    try:
        data = orjson.loads(raw)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
    except ValueError:
        docs, problems = _salvage_documents(raw, table)
        entry.problems.append("empty or not JSON" if not raw.strip() else "does not parse")
        entry.problems.extend(problems)
        entry.records = len(docs)
        return docs
    bad = damaged_documents(data)
    docs = dict(data.get(table, {}))
    if bad:
        entry.problems.append(
            f"{len(bad)} document(s) fail their checksum ({', '.join(d for _, d in bad[:5])})"
        )
        # read the documents one by one from the text, not from the parsed table: a damaged
        # key can make two documents share one, and parsing keeps only the later of them
        docs, problems = _salvage_documents(raw, table)
        entry.problems.extend(problems)
        crcs = data.get(CRC_TABLE, {}).get(table, {})
        entry.lost = max(0, len([k for k in crcs if k != "*"]) - len(docs))
    entry.records = len(docs)
    return docs


def _analyse(directory: Path) -> tuple[Report, dict[str, Any], dict[str, Any]]:
    report = Report(directory)
    active: dict[str, Any] = {}
    archived: dict[str, Any] = {}
    for doc in _read_table(directory, SNAPSHOT, "aliases", report).values():
        active[doc["alias_id"]] = doc
    for doc in _read_table(directory, ARCHIVE, "archive", report).values():
        archived[doc["alias_id"]] = doc
    gens = sorted(int(m.group(1)) for p in directory.iterdir() if (m := JOURNAL_RE.match(p.name)))
    scans = [(gen, scan(directory / f"journal.{gen}.log")) for gen in gens]
    sealed = sealed_lengths(result for _, result in scans)
    for gen, result in scans:
        name = f"journal.{gen}.log"
        entry = FileReport(name, records=len(result.entries) + len(result.salvaged))
        report.files.append(entry)
        if len(result.entries) < sealed.get(gen, 0):
            entry.problems.append(
                f"cut short: holds {len(result.entries)} of the {sealed[gen]} entries it had"
            )
            entry.lost = sealed[gen] - len(result.entries)
        if result.bad_lines:
            entry.problems.append(
                f"damaged line(s) {', '.join(map(str, result.bad_lines[:10]))}"
                + (
                    f"; {len(result.salvaged)} entr(y/ies) recovered from them"
                    if result.salvaged
                    else ""
                )
            )
            entry.lost = len(result.bad_lines) - len(result.salvaged)
        for item in result.ordered:
            if item.get("op") == "put":
                record = item["r"]
                active[record["alias_id"]] = record
                archived.pop(record["alias_id"], None)
            elif item.get("op") == "archive":
                for record in item["records"]:
                    active.pop(record["alias_id"], None)
                    archived[record["alias_id"]] = record
    report.active = len(active)
    report.archived = len(archived)
    return report, active, archived


def check(directory: Path) -> Report:
    """Read everything, change nothing (safe beside a running service)."""
    return _analyse(Path(directory))[0]


def repair(directory: Path, now: datetime | None = None) -> Report:
    """Rebuild the store from every valid record; the old files move to damaged-<time>/."""
    directory = Path(directory)
    fd = lock_directory(directory, f"the store {directory}")
    try:
        report, active, archived = _analyse(directory)
        if not report.damaged:
            return report  # nothing to repair; nothing is touched
        stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
        aside = directory / f"damaged-{stamp}"
        suffix = 1
        while aside.exists():
            suffix += 1
            aside = directory / f"damaged-{stamp}-{suffix}"
        aside.mkdir()
        for path in list(directory.iterdir()):
            if path.is_file() and (path.name in (SNAPSHOT, ARCHIVE) or JOURNAL_RE.match(path.name)):
                shutil.move(str(path), aside / path.name)
        fsync_dir(aside)
        AtomicJSONStorage(directory / ARCHIVE).write(
            {"archive": {str(i): r for i, r in enumerate(archived.values(), 1)}}
        )
        AtomicJSONStorage(directory / SNAPSHOT).write(
            {"aliases": {str(i): r for i, r in enumerate(active.values(), 1)}}
        )
        fsync_dir(directory)
        return report
    finally:
        os.close(fd)
