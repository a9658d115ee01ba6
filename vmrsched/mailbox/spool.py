"""The spool mailbox: a directory per integration standing in for the equipment mailbox.

inbox/      meeting requests dropped in (.ics or iMIP .eml; write elsewhere, or here under a
            temp name, then rename in): the inbox side is spool_inbox.SpoolInbox
outbox/     one RFC 5322 .eml per reply or organizer update, named by its stable message id
processed/  handled inbox files
failed/     unreadable inbox files, each with <name>.error.txt saying why
calendar/   accepted meetings (the resource calendar the recovery tool reads): accepted.jsonl,
            a checksummed JSON line per acceptance (lines written before checksums still read)

What lies outside the gateway and touches the spool (`vmrsched invite`, the demo pane) goes
through `deliver` (into the inbox) and `read_outbox` (the answers), so the folders stay this
module's business.
"""

from __future__ import annotations

import contextlib
import email
import email.policy
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from vmrsched import libc
from vmrsched.mailbox import compose
from vmrsched.mailbox.base import (
    CalendarEntry,
    Check,
    GatewayError,
    Mailbox,
    Outgoing,
)
from vmrsched.mailbox.spool_inbox import (
    INBOX,
    MAX_ITEM_BYTES,
    NAME_MAX,
    SUFFIXES,
    TRUST_UNCHANGED_SECONDS,
    SpoolInbox,
    _read_regular,
    is_temp,
)
from vmrsched.rules.meetings import Meeting
from vmrsched.rules.stored_meetings import meeting_from_json, meeting_to_json
from vmrsched.store import lock_directory
from vmrsched.store.journal import announce, atomic_write, encode_entry, fsync_dir, scan, settle
from vmrsched.telemetry import MAILBOX_UNREACHABLE

if TYPE_CHECKING:
    from vmrsched.config import IntegrationConfig

log = logging.getLogger("vmrsched.spool")

OUTBOX = "outbox"
CALENDAR_FILE = "accepted.jsonl"
__all__ = [  # the inbox side's names, as the spool's users have known them
    "INBOX",
    "MAX_ITEM_BYTES",
    "NAME_MAX",
    "SUFFIXES",
    "TRUST_UNCHANGED_SECONDS",
    "SpoolMailbox",
    "_read_regular",
    "deliver",
    "is_temp",
    "outbox_name",
    "read_outbox",
]


_OUT_ID = re.compile(r"-([0-9a-f]{32})\.eml$")
_SLUG = re.compile(r"[^A-Za-z0-9]+")


def outbox_name(message: Outgoing, now: datetime) -> str:
    """`20261130T091503.123456Z-accepted-weekly-sync-<id>.eml`: sorts by time, says what it is;
    the id at the end makes a resend recognisable."""
    slug = _SLUG.sub("-", message.subject).strip("-").lower()
    slug = slug.removeprefix(f"{message.outcome}-")  # "Accepted: Weekly sync" says it once
    slug = slug[:40].strip("-") or "meeting"
    stamp = now.astimezone(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    return f"{stamp}-{message.outcome}-{slug}-{message.id}.eml"


def deliver(spool_dir: Path, name: str, data: bytes) -> Path:
    """Put a meeting request (`name`: a .ics or .eml file name) into the spool's inbox as the
    spool contract asks: written next to it under a temp name the gateway skips (`is_temp`),
    then renamed in, so the gateway never reads half a file. Returns where it now lies."""
    inbox = Path(spool_dir) / INBOX
    inbox.mkdir(parents=True, exist_ok=True)
    tmp = inbox / f".{name}.tmp"
    tmp.write_bytes(data)
    os.replace(tmp, inbox / name)
    return inbox / name


def read_outbox(spool_dir: Path, meeting_uid: str) -> list[dict[str, str]]:
    """The mails the spool sent about one meeting (replies, updates), oldest first: subject,
    from, to, outcome, reason, correlation_id and the HTML body of each."""
    found = []
    outbox = Path(spool_dir) / OUTBOX
    # the header as compose writes it: mails about other meetings are passed over unparsed
    written = compose.whole_header(compose.UID_HEADER, meeting_uid).encode("ascii")
    for path in sorted(outbox.glob("*.eml"), key=lambda p: p.stat().st_mtime_ns):
        raw = path.read_bytes()
        if written not in raw:
            continue
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        if msg.get(compose.UID_HEADER) != meeting_uid:
            continue
        body = msg.get_body(("html",))
        found.append(
            {
                "subject": str(msg.get("Subject", "")),
                "from": str(msg.get("From", "")),
                "to": str(msg.get("To", "")),
                "outcome": str(msg.get("X-Vmrsched-Outcome", "")),
                "reason": str(msg.get("X-Vmrsched-Reason", "")),
                "correlation_id": str(msg.get("X-Vmrsched-Correlation-Id", "")),
                "html": str(body.get_content()) if body is not None else "",
            }
        )
    return found


# What a crash leaves of the gateway's own writes: the temp file of an outbox mail (written,
# then renamed to its name; atomic_write's adds the writer's pid) and of an error note. Each is
# named for this module's own files only, so nothing another writer made matches.
_OUTBOX_TEMP = re.compile(
    r"^\.\d{8}T\d{6}\.\d{6}Z-[a-z_]+-[a-z0-9-]*-[0-9a-f]{32}\.eml(\.\d+)?\.tmp$"
)
_NOTE_TEMP = re.compile(r"^\..+\.error\.txt\.\d+\.tmp$")
_CALENDAR_TEMP = re.compile(r"^\.accepted\.jsonl(\.damaged-[0-9TZ-]+)?\.\d+\.tmp$")  # its rewrite


# Linux syncfs(2): one call makes every write on the file system durable, which lets a batch
# of outbox files share one flush instead of paying an fsync each
_SYNCFS: Callable[[int], int] | None = libc.function("syncfs")


class SpoolMailbox(SpoolInbox, Mailbox):
    """The spool directory as the equipment mailbox.

    Threads: the poller's state (the inbox listing, the backlog in arrival order, the handled
    files that could not be moved out: SpoolInbox) is touched only by fetch, mark_handled and
    quarantine, which only the poller calls; the notifier's (the ids
    in the outbox) only by send and delivered. What both reach is the file system, whose
    renames are atomic, and the calendar file and spool directory descriptor that `sync` (both
    threads) and record_accepted use: they are opened once, under a lock."""

    alarm = MAILBOX_UNREACHABLE
    # a message written again under its id replaces nothing and sends nothing twice
    idempotent_send = True

    def __init__(
        self,
        directory: Path,
        name: str = "",
        default_timezone: str = "UTC",
        exclusive: bool = False,
        relist_seconds: float = 1.0,
        monotonic: Callable[[], float] = time.monotonic,
        wall_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        super().__init__(
            Path(directory), name, default_timezone, relist_seconds, monotonic, wall_ns
        )
        self.outbox = self.root / OUTBOX
        self.calendar_dir = self.root / "calendar"
        # calendar/ is made with its file, at the first answer: one directory fewer to create
        # for each integration that has answered nothing yet
        self.outbox.mkdir(parents=True, exist_ok=True)
        self._calendar: BinaryIO | None = None
        self._settled = False  # the calendar file checked, ready for appends (_settle_calendar)
        self._fd: int | None = None
        self._opening = threading.Lock()  # the calendar file and self._fd: opened once
        self._sent_ids: set[str] | None = None
        # the service owns its spool alone: a second process reading the same inbox would
        # answer its meetings twice (tools that only look, like check-config, do not lock)
        self._lock_fd = lock_directory(self.root, f"the spool {self.root}") if exclusive else None
        if self._lock_fd is not None:
            self._remove_leftovers()
            try:
                self._settle_calendar()  # at the start, so that damage is said at once
            except OSError as exc:  # tried again before the first append
                log.error(
                    "cannot check %s: %s", self.calendar_dir, exc, extra={"integration": name}
                )

    def _remove_leftovers(self) -> None:
        """Delete the temp files a crash (SIGKILL, power loss) left of this gateway's own
        writes: an outbox mail it was writing, an error note, the calendar file it was
        rewriting after damage (with its copy). Only under the spool's lock, so
        no other process can be writing them; only in the folders the gateway alone writes
        (never the inbox, where others write their own temp files); only names of its own
        making. A mail's temp file never counted as sent (only `<name>.eml` does), so the
        notifier, which had not marked that message delivered, writes it again: once."""
        for folder, pattern in (
            (self.outbox, _OUTBOX_TEMP),
            (self.failed, _NOTE_TEMP),
            (self.calendar_dir, _CALENDAR_TEMP),
        ):
            if not folder.is_dir():
                continue  # calendar/ before the first acceptance
            for entry in os.scandir(folder):
                if pattern.match(entry.name) and entry.is_file(follow_symlinks=False):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)
                    log.warning(
                        "removed %s, a file half-written before a crash",
                        entry.path,
                        extra={"integration": self.name},
                    )

    def poll_interval(self, integ: IntegrationConfig) -> float:
        return integ.spool.poll_interval_seconds

    def send(self, message: Outgoing) -> None:
        """Write the mail (temp file, rename) as `<time>-<outcome>-<subject>-<id>.eml`, names
        that sort by time and say what they are. Where syncfs exists it becomes durable at the
        next `sync`, which the notifier calls before it forgets the message; elsewhere each
        file is fsynced as it is written. A message id already in the outbox is not written
        again (a resend after a restart)."""
        sent = self._sent()
        if message.id in sent:
            return
        try:
            data = compose.to_eml(message)
        except Exception as exc:  # a message that cannot be composed never will be
            raise GatewayError(f"cannot compose the mail: {exc}", permanent=True) from exc
        path = self.outbox / outbox_name(message, datetime.now(UTC))
        try:
            if _SYNCFS is None:
                atomic_write(path, data)
            else:
                tmp = path.with_name(f".{path.name}.tmp")
                try:
                    tmp.write_bytes(data)
                    os.replace(tmp, path)
                except BaseException:
                    tmp.unlink(missing_ok=True)  # a full disk keeps no half-written copy
                    raise
        except OSError as exc:
            raise GatewayError(f"cannot write to {self.outbox}: {exc}") from exc
        sent.add(message.id)

    def _sent(self) -> set[str]:
        """Ids of the messages in the outbox (listed once, then kept up to date)."""
        if self._sent_ids is None:
            try:
                names = os.listdir(self.outbox)
            except OSError as exc:  # an outage of the mailbox (chmod 000), never one message's
                raise GatewayError(f"cannot list {self.outbox}: {exc}") from exc
            self._sent_ids = {m.group(1) for name in names if (m := _OUT_ID.search(name))}
        return self._sent_ids

    def delivered(self, message: Outgoing) -> bool:
        """Whether a message queued before a restart was already written to the outbox."""
        return message.id in self._sent()

    def sync(self) -> None:
        """Make every write and rename in the spool durable: one syncfs(2) where Linux has it,
        else the calendar file and the directory entries. A file system that refuses (a full
        disk: the calendar's last lines stay buffered, written by the next sync that finds
        room) is the mailbox's outage, GatewayError, never a crash of the caller."""
        try:
            calendar = self._calendar_file()
            calendar.flush()
            if _SYNCFS is not None and _SYNCFS(self._root_fd()) == 0:
                return
            os.fsync(calendar.fileno())
            for folder in (self.outbox, self.processed, self.failed, self.inbox):
                fsync_dir(folder)
        except OSError as exc:
            raise GatewayError(f"cannot make the spool {self.root} durable: {exc}") from exc

    def _root_fd(self) -> int:
        fd = self._fd
        if fd is None:
            with self._opening:  # sync runs on both actor threads: one descriptor
                if self._fd is None:
                    self._fd = os.open(self.root, os.O_RDONLY)
                fd = self._fd
        return fd

    def _calendar_file(self) -> BinaryIO:
        calendar = self._calendar
        if calendar is None:
            with self._opening:  # one file object, whichever thread comes first
                if self._calendar is None:
                    if not self._settled:
                        self._settle_calendar()
                    self.calendar_dir.mkdir(exist_ok=True)
                    self._calendar = open(self.calendar_dir / CALENDAR_FILE, "ab")  # noqa: SIM115
                calendar = self._calendar
        return calendar

    def _settle_calendar(self) -> None:
        """Make the calendar file ready for appends, as every file the service keeps: a torn
        last line (a crash mid-write) cut off and logged; damage (a complete line failing
        its checksum, or an old line that does not parse) copied aside as
        `accepted.jsonl.damaged-<time>`, every readable line kept in the file, logged, and
        state_damaged raised (`vmrsched store check` lists both). Once: at the service's
        start, or before the first append of a gateway that is not the service's."""
        path = self.calendar_dir / CALENDAR_FILE
        settled = settle(path, plain=True)
        self._settled = True
        announce(settled, path, self.name, "an acceptance a crash cut short", log)

    def record_accepted(self, meeting: Meeting) -> None:
        """Keep the accepted meeting in the resource calendar: a checksummed JSON line per
        acceptance, the latest line for a UID and occurrence wins. Durable with the next
        `sync`."""
        self._calendar_file().write(encode_entry(meeting_to_json(meeting)))

    def calendar(self, start: datetime, end: datetime) -> Sequence[CalendarEntry]:
        """The accepted meetings from every line that reads (a damaged file not yet set
        right by the service's start, too: the damage is logged, the rest read)."""
        latest: dict[tuple[str, str], Meeting] = {}
        path = self.calendar_dir / CALENDAR_FILE
        if self._calendar is not None:
            self._calendar.flush()
        result = scan(path, plain=True)
        extra = {"integration": self.name}
        if result.corrupt or result.torn_tail:
            log.warning("%s: %s; every other line is read", path, result.damage(), extra=extra)
        for number, raw in enumerate(result.ordered, 1):
            try:
                meeting = meeting_from_json(raw)
            except (ValueError, KeyError, TypeError, AssertionError):
                log.warning("%s: entry %d is not a meeting", path, number, extra=extra)
                continue
            rid = meeting.recurrence_id.isoformat() if meeting.recurrence_id else ""
            latest[(meeting.uid, rid)] = meeting
        entries: list[CalendarEntry] = []
        for (uid, rid), meeting in latest.items():
            if meeting.is_series or (meeting.end >= start and meeting.start <= end):
                entries.append(CalendarEntry(meeting, f"{uid}#{rid}"))
        return entries

    def probe(self, organizer: str = "", outside: str = "") -> list[Check]:
        """What works and what does not, for `check-config --online` (a spool has no scope:
        `organizer` and `outside` are not checked)."""
        results: list[Check] = []
        # calendar/ may not be made yet: then the spool's own directory must take it
        calendar = self.calendar_dir if self.calendar_dir.exists() else self.root
        for folder in (self.inbox, self.outbox, self.processed, self.failed, calendar):
            ok = os.access(folder, os.W_OK)
            results.append((ok, f"{folder} is {'writable' if ok else 'not writable'}"))
        return results

    def close(self) -> None:
        try:
            if self._calendar is not None:
                self._calendar.close()
                self._calendar = None
        finally:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None
