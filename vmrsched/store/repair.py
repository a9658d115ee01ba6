"""`vmrsched store check|repair`: what a damaged store still holds, and a new store made of every
valid record in it.

A store refuses to open when its files hold damage a crash cannot explain (store_corrupt), a
journal that is gone though another file says it existed included. Check reads every file
without changing any, and names the missing ones; repair (with the service stopped: it takes
the store's lock) moves the damaged files aside into `damaged-<time>/`, keeping every byte, and
writes a fresh snapshot (saying it holds every journal the old files named) and archive from
every record that can be read: the snapshot's documents that pass their checksum (or, when it
no longer parses, each document that still decodes on its own), then every valid journal entry
in order, including entries found behind junk on a damaged line.

Check also reads every other file the service keeps (queue journals, decisions logs, sign-in key
and sessions, token caches, the spool's calendars) and lists the ones that are damaged, and the
damaged files the service set aside (`<name>.damaged-<time>`) once it had kept what they still
held.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from cryptography.fernet import Fernet

from vmrsched.config import DataLayout
from vmrsched.store import ARCHIVE, JOURNAL_RE, SNAPSHOT, lock_directory
from vmrsched.store.files import SPOOL_CALENDAR, covered_through, covers, missing_journals
from vmrsched.store.journal import (
    CRC_TABLE,
    DAMAGED_SUFFIX,
    AtomicJSONStorage,
    Scan,
    damaged_documents,
    document_crc,
    fsync_dir,
    salvage_members,
    scan,
    sealed_lengths,
    set_aside,
)
from vmrsched.telemetry import report_damaged

log = logging.getLogger("vmrsched.storage")

_RECORD_START = re.compile(r'\{"alias_id":')
_DOCUMENT_KEY = re.compile(r'"((?:[^"\\]|\\.){1,40})":\s*$')
# the spool's calendar under its directory (vmrsched/mailbox/spool.py writes it)
_NAMING_FIELD = re.compile(r'"(alias|alias_id|meeting_uid|status)":\s*"((?:[^"\\]|\\.){0,300})"')


@dataclass(frozen=True)
class Named:
    """What a damaged document or journal line still says about a record it held (read from
    text that failed its checksum: probably, not surely), and whether another copy of that
    record reads (then only this version is lost)."""

    where: str  # "document 7", "line 30"
    fields: tuple[tuple[str, str], ...]  # (alias|alias_id|meeting_uid|status, value) as read
    kept: bool = False

    @property
    def alias_id(self) -> str:
        return dict(self.fields).get("alias_id", "")

    def line(self) -> str:
        """The report's line for it: the admin learns which booking to look after."""
        said = dict(self.fields)
        parts = [f"alias id {said['alias_id']}"] if said.get("alias_id") else []
        parts += [f"meeting {said['meeting_uid']}"] if said.get("meeting_uid") else []
        parts += [said["status"]] if said.get("status") else []
        what = f"probably alias {said['alias']}" if said.get("alias") else "probably a record"
        what += f" ({', '.join(parts)})" if parts else ""
        if not said:
            what = "nothing in it still names a record"
        if self.kept:
            return f"damaged: {self.where}, {what}: another copy of it reads and is kept"
        return f"lost: {self.where}, {what}"


@dataclass
class FileReport:
    name: str
    records: int = 0  # records or entries read
    problems: list[str] = field(default_factory=list)
    lost: int = 0  # records or lines that could not be read
    named: list[Named] = field(default_factory=list)  # what the damaged parts held


@dataclass
class Report:
    directory: Path
    files: list[FileReport] = field(default_factory=list)
    active: int = 0
    archived: int = 0
    generation: int = 0  # the newest journal generation the files name (or the snapshot holds)

    @property
    def damaged(self) -> bool:
        return any(f.problems for f in self.files)

    def lines(self) -> list[str]:
        out = [f"{self.directory}: {'DAMAGED' if self.damaged else 'ok'}"]
        for f in self.files:
            status = "; ".join(f.problems) if f.problems else "ok"
            lost = f", {f.lost} unreadable" if f.lost else ""
            out.append(f"  {f.name}: {f.records} readable{lost}: {status}")
            out.extend(f"    {named.line()}" for named in f.named)
        out.append(f"  readable now: {self.active} active and {self.archived} archived aliases")
        return out


def _salvage_documents(
    raw: bytes, table: str, named: list[Named] | None = None
) -> tuple[dict[str, Any], list[str]]:
    """Documents of one table from a file that no longer parses as a whole: each document that
    still decodes on its own (and passes its checksum, when the checksums are readable). What
    the others still say is added to `named`."""
    text = raw.decode("utf-8", errors="replace")
    decoder = json.JSONDecoder()
    found: dict[str, Any] = {}
    keys: dict[str, str] = {}  # our number of a found document -> its key in the file
    lost = named if named is not None else []
    problems: list[str] = []
    position = 0
    for start, after in _record_spans(text):
        if start < position:
            continue
        key = _document_key(text, start)
        try:
            doc, end = decoder.raw_decode(text, start)
        except ValueError:
            lost.append(Named(f"document {key}", _fields_in(text[start:after])))
            continue
        position = end
        if isinstance(doc, dict) and "alias_id" in doc:
            keys[str(len(found) + 1)] = key
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
        lost.extend(
            Named(f"document {keys[k]}", _fields_of(doc))
            for k, doc in found.items()
            if k not in kept
        )
        found = kept
    return found, problems


def _document_key(text: str, start: int) -> str:
    """The key a document at `start` stands under in its table ("?" where it does not read)."""
    key = _DOCUMENT_KEY.search(text, max(0, start - 48), start)
    return key.group(1) if key is not None else "?"


def _fields_of(record: Any) -> tuple[tuple[str, str], ...]:
    """The naming fields of a record read whole (from text that failed its checksum)."""
    if not isinstance(record, dict):
        return ()
    return tuple(
        (name, str(record[name]))
        for name in ("alias", "alias_id", "meeting_uid", "status")
        if record.get(name)
    )


def _fields_in(text: str) -> tuple[tuple[str, str], ...]:
    """The naming fields still legible in the text of a record that does not decode: the
    first value of each, as written."""
    said: dict[str, str] = {}
    for match in _NAMING_FIELD.finditer(text):
        said.setdefault(match.group(1), match.group(2))
    return tuple(
        (name, said[name])
        for name in ("alias", "alias_id", "meeting_uid", "status")
        if said.get(name)
    )


def _records_on_line(
    line: bytes, entry: dict[str, Any] | None
) -> list[tuple[tuple[str, str], ...]]:
    """What one damaged journal line held: the records of its entry where its text still
    parses, else whatever each record's text still names."""
    if entry is not None:
        if entry.get("op") == "put":
            return [_fields_of(entry.get("r"))]
        if entry.get("op") == "archive" and isinstance(entry.get("records"), list):
            return [_fields_of(record) for record in entry["records"]]
        return []
    text = line.decode("utf-8", errors="replace")
    pieces = [text[start:after] for start, after in _record_spans(text)]
    return [_fields_in(piece) for piece in pieces] or [_fields_in(text)]


def _record_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of the text of each record in `text`: from where one starts to where the
    next does (or the text ends)."""
    starts = [match.start() for match in _RECORD_START.finditer(text)]
    return list(zip(starts, [*starts[1:], len(text)][: len(starts)], strict=True))


def _read_table(
    directory: Path, name: str, table: str, report: Report
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The documents of `table` that read, and the file as parsed (None when there is no
    such file, {} when it does not parse)."""
    path = directory / name
    entry = FileReport(name)
    report.files.append(entry)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return {}, None
    try:
        data = orjson.loads(raw)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
    except ValueError:
        docs, problems = _salvage_documents(raw, table, entry.named)
        entry.problems.append("empty or not JSON" if not raw.strip() else "does not parse")
        entry.problems.extend(problems)
        entry.records = len(docs)
        return docs, {}
    bad = damaged_documents(data)
    docs = dict(data.get(table, {}))
    if bad:
        entry.problems.append(
            f"{len(bad)} document(s) fail their checksum ({', '.join(d for _, d in bad[:5])})"
        )
        # read the documents one by one from the text, not from the parsed table: a damaged
        # key can make two documents share one, and parsing keeps only the later of them
        docs, problems = _salvage_documents(raw, table, entry.named)
        entry.problems.extend(problems)
        crcs = data.get(CRC_TABLE, {}).get(table, {})
        entry.lost = max(0, len([k for k in crcs if k != "*"]) - len(docs))
    entry.records = len(docs)
    return docs, data


def _analyse(directory: Path) -> tuple[Report, dict[str, Any], dict[str, Any]]:
    report = Report(directory)
    active: dict[str, Any] = {}
    archived: dict[str, Any] = {}
    docs, stored = _read_table(directory, SNAPSHOT, "aliases", report)
    snapshot = report.files[-1]
    for doc in docs.values():
        active[doc["alias_id"]] = doc
    for doc in _read_table(directory, ARCHIVE, "archive", report)[0].values():
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
            entry.named.extend(_named_lines(directory / name, result))
        for item in result.ordered:
            if item.get("op") == "put":
                record = item["r"]
                active[record["alias_id"]] = record
                archived.pop(record["alias_id"], None)
            elif item.get("op") == "archive":
                for record in item["records"]:
                    active.pop(record["alias_id"], None)
                    archived[record["alias_id"]] = record
    through = covered_through(stored)
    missing = missing_journals(scans, through, stored is not None)
    for gone in missing:
        unknown = "" if gone.entries is not None else " (how many entries: not known)"
        report.files.append(
            FileReport(
                gone.name, problems=[f"missing: {gone.said}{unknown}"], lost=gone.entries or 0
            )
        )
    if missing and stored is None:
        snapshot.problems.append(
            "missing, or the journals named below are: a compaction writes it before it "
            "removes the journals it holds"
        )
    report.generation = max([*gens, *sealed, through or 0])
    report.active = len(active)
    report.archived = len(archived)
    for entry in report.files:
        entry.named = [
            Named(n.where, n.fields, kept=n.alias_id in active or n.alias_id in archived)
            for n in entry.named
        ]
    return report, active, archived


def _named_lines(path: Path, result: Scan) -> list[Named]:
    """What each damaged journal line with nothing whole in it still names."""
    parsed = {number: entry for number, _, entry in result.unverified}
    lines = path.read_bytes().split(b"\n")
    return [
        Named(f"line {number}", fields)
        for number in result.unreadable
        for fields in _records_on_line(lines[number - 1], parsed.get(number))
    ]


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
        # holding every journal the old files named: the next one comes after them all
        AtomicJSONStorage(directory / SNAPSHOT).write(
            {
                "aliases": {str(i): r for i, r in enumerate(active.values(), 1)},
                **covers(report.generation),
            }
        )
        fsync_dir(directory)
        return report
    finally:
        os.close(fd)


# --- the other files the service keeps ------------------------------------------------------


@dataclass(frozen=True)
class StateFile:
    """One file of the service's state other than a store: `path` relative to the data
    directory; `damaged` when it needs the admin (damaged, or set aside damaged)."""

    path: str
    detail: str
    damaged: bool = False


def read_or_set_aside(
    path: Path, check: Callable[[bytes], object], integration: str, loss: str
) -> bytes | None:
    """A state file's bytes, when `check` accepts them (it raises ValueError when not); None
    when there is no such file. A file `check` refuses is damage (state files are written
    atomically): it is set aside (every byte kept), logged with `loss` (what going on without
    it means), state_damaged is raised, and None returned: the owner starts afresh."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        check(raw)
    except ValueError as exc:
        aside = set_aside(path)
        log.error("%s is damaged (%s), kept as %s: %s", path, exc, aside.name, loss)
        report_damaged(integration, aside, f"{exc}; {loss}")
        return None
    return raw


def usable_key(text: str) -> bool:
    """Whether `text` is a sign-in key (a Fernet key: 32 url-safe base64-encoded bytes)."""
    try:
        Fernet(text.encode())
    except ValueError:
        return False
    return True


def check_state(
    data_dir: Path, integration: str | None = None, spools: Mapping[str, Path] | None = None
) -> list[StateFile]:
    """Every queue journal, decisions log, sign-in sessions file, token cache, spool calendar
    and the sign-in key under `data_dir` (those of `integration` and the shared key, when
    named), and every damaged file set aside beside them. `spools`: the spool directories by
    integration that the config keeps elsewhere than under `data_dir`. Reads only (safe
    beside a running service)."""
    data_dir = Path(data_dir)
    found: list[StateFile] = []

    def mine(name: str) -> bool:
        return integration is None or name == integration

    layout = DataLayout(data_dir)
    queues = layout.queues
    for folder in sorted(p for p in _entries(queues) if p.is_dir() and mine(p.name)):
        for path in sorted(_entries(folder), key=_generation):
            if path.name.startswith("outgoing."):
                found.append(_journal_state(data_dir, path))
    for path in sorted(_entries(layout.decisions_dir)):
        if path.name.endswith(".jsonl") and mine(path.name[: -len(".jsonl")]):
            found.append(_decisions_state(data_dir, path))
    for path in sorted(_entries(layout.sign_in)):
        if path.name == "key":
            found.append(_key_state(data_dir, path))
        elif path.name.endswith(".json") and mine(path.stem):
            found.append(_sessions_state(data_dir, path))
    for path in sorted(_entries(layout.oauth_dir)):
        if path.name.endswith(".json") and mine(path.stem):
            found.append(_cache_state(data_dir, path))
    for folder in (layout.sign_in, layout.oauth_dir, layout.decisions_dir):
        for path in sorted(_entries(folder)):
            owner = DAMAGED_SUFFIX.sub("", path.name).split(".")[0]
            if DAMAGED_SUFFIX.search(path.name) and (owner == "key" or mine(owner)):
                found.append(_aside(data_dir, path))
    directories = {p.name: p for p in _entries(layout.root / "spool") if p.is_dir()}
    directories.update(spools or {})
    for name, spool in sorted(directories.items()):
        calendar = spool / SPOOL_CALENDAR
        for path in sorted(_entries(calendar.parent)) if mine(name) else []:
            if path.name == calendar.name or (
                path.name.startswith(f"{calendar.name}.") and DAMAGED_SUFFIX.search(path.name)
            ):
                found.append(_calendar_state(data_dir, path))
    return found


def _entries(folder: Path) -> list[Path]:
    try:
        return list(folder.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []


def _generation(path: Path) -> tuple[int, str]:
    parts = path.name.split(".")
    return (int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0, path.name)


def _shown(data_dir: Path, path: Path) -> str:
    """`path` relative to the data directory, or whole when it lies elsewhere."""
    return str(path.relative_to(data_dir)) if path.is_relative_to(data_dir) else str(path)


def _aside(data_dir: Path, path: Path) -> StateFile:
    return StateFile(
        _shown(data_dir, path),
        "kept aside, damaged (what it still held was kept): look at it, then delete it",
        damaged=True,
    )


def _journal_state(data_dir: Path, path: Path) -> StateFile:
    if DAMAGED_SUFFIX.search(path.name):
        return _aside(data_dir, path)
    result = scan(path)
    name = str(path.relative_to(data_dir))
    readable = len(result.entries) + len(result.salvaged)
    if result.corrupt:
        lines = ", ".join(map(str, result.bad_lines[:10]))
        return StateFile(
            name,
            f"damaged line(s) {lines}: {readable} entries readable, "
            f"{len(result.unreadable)} line(s) unreadable (the service keeps what reads and "
            "sets the journal aside when it opens it)",
            damaged=True,
        )
    torn = "; a torn last line (a crash mid-write: never acknowledged)" if result.torn_tail else ""
    return StateFile(name, f"ok: {readable} entries{torn}")


def _calendar_state(data_dir: Path, path: Path) -> StateFile:
    if DAMAGED_SUFFIX.search(path.name):
        return _aside(data_dir, path)
    result = scan(path, plain=True)
    name = _shown(data_dir, path)
    if result.corrupt:
        lines = ", ".join(map(str, result.bad_lines[:10]))
        return StateFile(
            name,
            f"damaged line(s) {lines}: {len(result.ordered)} entries readable, "
            f"{len(result.unreadable)} line(s) unreadable (the service keeps what reads and "
            "copies the file aside when it starts; `vmrsched recover` reads what reads)",
            damaged=True,
        )
    torn = (
        "; a torn last line (a crash mid-write: the service drops it)" if result.torn_tail else ""
    )
    return StateFile(name, f"ok: {len(result.ordered)} entries{torn}")


def _decisions_state(data_dir: Path, path: Path) -> StateFile:
    name = str(path.relative_to(data_dir))
    result = scan(path, plain=True)  # its lines are journal lines (older ones plain JSON)
    torn = "; a torn last line (a crash mid-write)" if result.torn_tail else ""
    if result.corrupt:
        lines = ", ".join(map(str, result.bad_lines[:10]))
        unverified = (
            f", {len(result.unverified)} of them still parsing but failing the checksum (not "
            "trusted)"
            if result.unverified
            else ""
        )
        return StateFile(
            name,
            f"unreadable line(s) {lines}{unverified}: {len(result.ordered)} decisions readable "
            "(the service keeps them and copies the log aside when it starts; searches skip "
            "the others)",
            damaged=True,
        )
    return StateFile(name, f"ok: {len(result.ordered)} decisions{torn}")


def _sessions_state(data_dir: Path, path: Path) -> StateFile:
    name = str(path.relative_to(data_dir))
    raw = path.read_bytes()
    try:
        data = json.loads(raw)
        if isinstance(data, dict) and all(isinstance(v, dict) for v in data.values()):
            return StateFile(name, f"ok: {len(data)} session(s)")
    except ValueError:
        pass
    readable = salvage_members(raw)
    return StateFile(
        name,
        f"does not parse: {len(readable)} readable session(s) (the service keeps them and sets "
        "the file aside when it reads it; the others sign in again)",
        damaged=True,
    )


def _key_state(data_dir: Path, path: Path) -> StateFile:
    text = path.read_bytes().decode("ascii", errors="replace").strip()
    if usable_key(text):
        return StateFile(str(path.relative_to(data_dir)), "ok")
    return StateFile(
        str(path.relative_to(data_dir)),
        "not a usable key (the service sets it aside and makes a new one; personal-VMR "
        "sign-ins made before sign in again)",
        damaged=True,
    )


def _cache_state(data_dir: Path, path: Path) -> StateFile:
    name = str(path.relative_to(data_dir))
    try:
        if isinstance(json.loads(path.read_bytes()), dict):
            return StateFile(name, "ok")
    except ValueError:
        pass
    return StateFile(
        name,
        "does not parse (the service account must sign in again: /admin/integrations/<name>/"
        "sign-in)",
        damaged=True,
    )
