"""The spool mailbox: a directory per integration standing in for the equipment mailbox.

inbox/      meeting requests dropped in (.ics or iMIP .eml; write elsewhere, then rename in)
outbox/     one RFC 5322 .eml per reply or organizer update, named by its stable message id
processed/  handled inbox files
failed/     unreadable inbox files, each with <name>.error.txt saying why
calendar/   accepted meetings (the resource calendar the recovery tool reads)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from vmrsched.journal import fsync_dir
from vmrsched.mailbox import compose, itip
from vmrsched.mailbox.base import CalendarEntry, GatewayError, InboxItem, Outgoing
from vmrsched.meetings import Meeting

SUFFIXES = (".ics", ".eml")
MAX_ITEM_BYTES = 10 * 1024 * 1024


def _write_durably(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


class SpoolMailbox:
    def __init__(self, directory: Path, name: str = "", default_timezone: str = "UTC") -> None:
        self.name = name
        self.root = Path(directory)
        self.default_timezone = default_timezone
        self.inbox = self.root / "inbox"
        self.outbox = self.root / "outbox"
        self.processed = self.root / "processed"
        self.failed = self.root / "failed"
        self.calendar_dir = self.root / "calendar"
        for folder in (self.inbox, self.outbox, self.processed, self.failed, self.calendar_dir):
            folder.mkdir(parents=True, exist_ok=True)

    def fetch(self, limit: int) -> Sequence[InboxItem]:
        try:
            entries = [
                e for e in os.scandir(self.inbox) if e.is_file() and not e.name.startswith(".")
            ]
        except OSError as exc:
            raise GatewayError(f"cannot list {self.inbox}: {exc}") from exc
        entries.sort(key=lambda e: (e.stat().st_mtime_ns, e.name))
        items: list[InboxItem] = []
        for entry in entries[:limit]:
            items.append(self._read(entry))
        return items

    def _read(self, entry: os.DirEntry[str]) -> InboxItem:
        stat = entry.stat()
        received = datetime.fromtimestamp(stat.st_mtime, UTC)
        if not entry.name.lower().endswith(SUFFIXES):
            return InboxItem(entry.name, received, error="not a .ics or .eml file")
        if stat.st_size > MAX_ITEM_BYTES:
            return InboxItem(entry.name, received, error=f"larger than {MAX_ITEM_BYTES} bytes")
        try:
            data = Path(entry.path).read_bytes()
        except OSError as exc:
            return InboxItem(entry.name, received, error=f"cannot read: {exc.strerror}")
        try:
            parsed = itip.parse_file(entry.name, data, self.default_timezone)
        except itip.ParseError as exc:
            return InboxItem(
                entry.name,
                received,
                error=exc.reason,
                sender_email=exc.organizer_email,
                sender_name=exc.organizer_name,
                subject=exc.subject,
                uid=exc.uid,
            )
        return InboxItem(entry.name, received, meetings=parsed.meetings)

    def _move(self, item_id: str, folder: Path) -> None:
        source = self.inbox / item_id
        try:
            os.replace(source, folder / item_id)
        except FileNotFoundError:
            return  # already moved (reprocessing after a crash)
        except OSError as exc:
            raise GatewayError(f"cannot move {item_id}: {exc}") from exc

    def mark_handled(self, item_id: str) -> None:
        self._move(item_id, self.processed)

    def quarantine(self, item_id: str, reason: str) -> None:
        _write_durably(self.failed / f"{item_id}.error.txt", (reason + "\n").encode())
        self._move(item_id, self.failed)

    def send(self, message: Outgoing) -> None:
        try:
            _write_durably(self.outbox / f"{message.id}.eml", compose.to_eml(message))
        except OSError as exc:
            raise GatewayError(f"cannot write to {self.outbox}: {exc}") from exc

    def sync(self) -> None:
        """Make renames in the spool durable (one directory fsync per batch)."""
        for folder in (self.outbox, self.processed, self.failed, self.inbox):
            fsync_dir(folder)

    def record_accepted(self, meeting: Meeting) -> None:
        key = compose.message_id(self.name, meeting, "calendar", "accepted")
        body = compose.update_calendar(meeting, meeting.html_body, meeting.subject)
        _write_durably(self.calendar_dir / f"{key}.ics", body.encode())

    def calendar(self, start: datetime, end: datetime) -> Sequence[CalendarEntry]:
        entries: list[CalendarEntry] = []
        for path in sorted(self.calendar_dir.glob("*.ics")):
            try:
                parsed = itip.parse_calendar(path.read_bytes(), self.default_timezone)
            except itip.ParseError:
                continue
            for meeting in parsed.meetings:
                if (meeting.end >= start and meeting.start <= end) or meeting.is_series:
                    entries.append(CalendarEntry(meeting, path.name))
        return entries

    def close(self) -> None:
        pass
