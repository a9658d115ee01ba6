"""The spool mailbox: a directory per integration standing in for the equipment mailbox.

inbox/      meeting requests dropped in (.ics or iMIP .eml; write elsewhere, then rename in)
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
import hashlib
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from stat import S_ISLNK, S_ISREG
from typing import TYPE_CHECKING, BinaryIO

from vmrsched import libc
from vmrsched.mailbox import compose, itip
from vmrsched.mailbox.base import (
    CalendarEntry,
    Check,
    GatewayError,
    InboxItem,
    Mailbox,
    Outgoing,
)
from vmrsched.rules.meetings import Meeting
from vmrsched.rules.stored_meetings import meeting_from_json, meeting_to_json
from vmrsched.store import lock_directory
from vmrsched.store.journal import atomic_write, encode_entry, fsync_dir, scan, settle
from vmrsched.telemetry import MAILBOX_UNREACHABLE, report_damaged

if TYPE_CHECKING:
    from vmrsched.config import IntegrationConfig

log = logging.getLogger("vmrsched.spool")

INBOX = "inbox"
OUTBOX = "outbox"
SUFFIXES = (".ics", ".eml")
CALENDAR_FILE = "accepted.jsonl"
MAX_ITEM_BYTES = 10 * 1024 * 1024
NAME_MAX = 255  # bytes in one file name (Linux)
# An inbox whose last change is older than this cannot get a later change with the same
# timestamp (FAT keeps 2 s; ext4 and XFS the kernel's tick), so an unchanged timestamp then
# means an unchanged inbox.
SETTLED_NS = 3 * 10**9
TRUST_UNCHANGED_SECONDS = 10.0  # listed at least this often all the same (odd file systems)


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
    spool contract asks: written next to it under a dot name the gateway skips, then renamed in,
    so the gateway never reads half a file. Returns where it now lies."""
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


def _read_regular(path: str) -> bytes:
    """The file's bytes, refusing to follow a link swapped in since it was listed; plain
    read(2)s, without a buffered file object around them (it cost more than the reads)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_NONBLOCK", 0))
    try:
        stat = os.fstat(fd)
        if not S_ISREG(stat.st_mode):
            raise OSError(0, "not a regular file")
        chunks: list[bytes] = []
        limit = left = MAX_ITEM_BYTES + 1  # bounded even if the file grew
        while left > 0:
            wanted = min(left, stat.st_size + 1 if not chunks else 1 << 20)
            chunk = os.read(fd, wanted)
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
            if limit - left >= stat.st_size and len(chunk) < wanted:
                break  # all it held and nothing more waiting: no read(2) just to see the end
        return b"".join(chunks)  # one chunk is returned as it is, not copied
    finally:
        os.close(fd)


def _note_name(name: str) -> str:
    """The error note of a file in failed/: `<name>.error.txt`, or for a name too long to take
    the suffix, a shortened one made unique by a digest of the name."""
    note = f"{name}.error.txt"
    if len(note.encode()) > NAME_MAX:
        digest = hashlib.sha256(name.encode()).hexdigest()[:16]
        note = f"{name.encode()[:100].decode(errors='ignore')}-{digest}.error.txt"
    return note


def _free_name(folder: Path, name: str, with_note: bool = False) -> str:
    """`name`, or when something in `folder` holds it already (a file of the same name handled
    before), `<stem>.<n><suffix>` for the first n from 2 that is free (`with_note`: its error
    note too), so nothing there is replaced. Only the poller's thread moves files into the
    spool's folders, and no other process while the gateway holds the spool's lock."""

    def taken(candidate: str) -> bool:
        if os.path.lexists(folder / candidate):
            return True
        return with_note and os.path.lexists(folder / _note_name(candidate))

    if not taken(name):
        return name
    stem, suffix = os.path.splitext(name)
    if len(suffix) > 16:  # not a suffix, a name with a dot in it
        stem, suffix = name, ""
    number = 2
    while True:
        tail = f".{number}{suffix}"
        room = NAME_MAX - len(tail.encode())
        candidate = stem.encode()[:room].decode(errors="ignore") + tail
        if not taken(candidate):
            return candidate
        number += 1


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


class SpoolMailbox(Mailbox):
    """The spool directory as the equipment mailbox.

    Threads: the poller's state (the inbox listing, the backlog in arrival order) is touched only
    by fetch, mark_handled and quarantine, which only the poller calls; the notifier's (the ids
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
        self.name = name
        self.root = Path(directory)
        self.default_timezone = default_timezone
        self.inbox = self.root / INBOX
        self._inbox_path = str(self.inbox)  # joined with a name for every item read
        self.outbox = self.root / OUTBOX
        self.processed = self.root / "processed"
        self.failed = self.root / "failed"
        self.calendar_dir = self.root / "calendar"
        # calendar/ is made with its file, at the first answer: one directory fewer to create
        # for each integration that has answered nothing yet
        for folder in (self.inbox, self.outbox, self.processed, self.failed):
            folder.mkdir(parents=True, exist_ok=True)
        self._calendar: BinaryIO | None = None
        self._settled = False  # the calendar file checked, ready for appends (_settle_calendar)
        self._fd: int | None = None
        self._opening = threading.Lock()  # the calendar file and self._fd: opened once
        self._sent_ids: set[str] | None = None
        # the names of the last listing less those handled since, in the order first seen
        # waiting, each with its inode (a file replaced under its name is a new arrival): a
        # listing looks closer (a stat) only at what is new to it, never at the whole backlog
        self._backlog: dict[str, int] = {}
        self.relist_seconds = relist_seconds
        self._monotonic = monotonic
        self._relist_at = monotonic()
        self._wall_ns = wall_ns
        # the inbox's (inode, device, mtime, ctime) when last listed, if its last change was
        # settled by then; until it differs (or the trust runs out) a listing would be the same
        self._listed_as: tuple[int, int, int, int] | None = None
        self._trusted_until = 0.0
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

    def fetch(self, limit: int) -> Sequence[InboxItem]:
        """The `limit` items first seen waiting (`_relist` says the order). A backlog of n
        files is listed again only when fewer than two batches of it are left or
        `relist_seconds` have passed: listing it for every batch cost n/limit listings of up
        to n entries each (5,000 waiting: 50 listings, 125,000 entries)."""
        try:
            if len(self._backlog) < 2 * limit or self._monotonic() >= self._relist_at:
                self._relist()
            taken: list[tuple[str, os.stat_result]] = []
            gone: list[str] = []
            for name in self._backlog:  # from the oldest; no copy of the whole backlog
                if len(taken) >= limit:
                    break
                try:
                    path = os.path.join(self._inbox_path, name)
                    taken.append((name, os.stat(path, follow_symlinks=False)))
                except FileNotFoundError:  # moved away by hand since it was listed
                    gone.append(name)
            for name in gone:
                self._forget(name)
        except OSError as exc:
            raise GatewayError(f"cannot list {self.inbox}: {exc}") from exc
        return [self._read(name, stat) for name, stat in taken]

    def _relist(self) -> None:
        """List the inbox again, unless its timestamps say nothing came or went since the
        last listing: then one stat(2) does instead of open, two getdents and close, which
        was most of what 1,000 idle integrations cost (and a quarter of their start-up).

        The order is when the service first saw each file: what a listing finds new goes
        after everything already waiting; among themselves, the newcomers of one listing
        (all the files waiting at start, too) by the time they arrived, their change time
        (ctime: the rename into the inbox sets it, and nothing sets it back, unlike the mtime
        that `mv` keeps from elsewhere), then by name. So a restart keeps the order the files
        had, on file systems whose rename sets the change time (ext4, XFS, Btrfs, tmpfs).
        A listing stats only its newcomers and sorts only them."""
        now = self._monotonic()
        inbox = os.stat(self._inbox_path)
        listed_as = (inbox.st_ino, inbox.st_dev, inbox.st_mtime_ns, inbox.st_ctime_ns)
        if listed_as == self._listed_as and now < self._trusted_until:
            self._relist_at = now + self.relist_seconds
            return
        # stat before listing: a change during the listing shows as a new timestamp next time;
        # trusted only once the listing worked (an inbox that cannot be listed now, chmod 000,
        # must fail every fetch, not be taken as unchanged and empty)
        settled = self._wall_ns() - max(inbox.st_mtime_ns, inbox.st_ctime_ns) > SETTLED_NS
        self._listed_as = None
        known = self._backlog
        still: set[str] = set()
        new: list[tuple[int, str, int]] = []
        for entry in os.scandir(self.inbox):
            name = entry.name
            if name.startswith("."):
                continue
            inode = entry.inode()
            if known.get(name) == inode:
                still.add(name)
                continue
            try:  # new, or replaced under its name
                changed = entry.stat(follow_symlinks=False).st_ctime_ns
            except FileNotFoundError:
                continue  # gone between listing and stat
            new.append((changed, name, inode))
        backlog = {name: inode for name, inode in known.items() if name in still}
        new.sort()
        backlog.update((name, inode) for _, name, inode in new)
        self._backlog = backlog
        self._relist_at = now + self.relist_seconds
        if settled:  # else a change later in the same tick would keep this timestamp
            self._listed_as, self._trusted_until = listed_as, now + TRUST_UNCHANGED_SECONDS

    def _forget(self, name: str) -> None:
        self._backlog.pop(name, None)

    def _read(self, name: str, stat: os.stat_result) -> InboxItem:
        """One inbox file as an item. An .eml carries its sender (the From and Sender headers),
        which must be the organizer or their delegate for an update or cancellation to count;
        a bare .ics has no sender, so there only ORGANIZER (and its SENT-BY) says who sent it
        (meetings.from_organizer)."""
        # arrived when its rename set its ctime (not at an mtime `mv` kept): what lag reads
        received = datetime.fromtimestamp(stat.st_ctime_ns / 1e9, UTC)
        if not S_ISREG(stat.st_mode):
            # never followed: a link could point at secrets (/proc/self/environ) or loop
            kind = "a symbolic link" if S_ISLNK(stat.st_mode) else "not a regular file"
            return InboxItem(name, received, error=f"{kind}: not read")
        if not name.lower().endswith(SUFFIXES):
            return InboxItem(name, received, error="not a .ics or .eml file")
        if stat.st_size > MAX_ITEM_BYTES:
            return InboxItem(name, received, error=f"larger than {MAX_ITEM_BYTES} bytes")
        try:
            data = _read_regular(os.path.join(self._inbox_path, name))
        except OSError as exc:
            return InboxItem(name, received, error=f"cannot read: {exc.strerror}")
        try:
            parsed = itip.parse_file(name, data, self.default_timezone)
        except itip.ParseError as exc:
            return InboxItem(
                name,
                received,
                error=exc.reason,
                sender_email=exc.organizer_email,
                sender_name=exc.organizer_name,
                subject=exc.subject,
                uid=exc.uid,
                sequence=exc.sequence,
                not_meeting=exc.not_meeting,
                auto_submitted=exc.auto_submitted,
            )
        return InboxItem(
            name, received, meetings=parsed.meetings, auto_submitted=parsed.auto_submitted
        )

    def _move(self, item_id: str, folder: Path, target: str | None = None) -> None:
        """Move an inbox item into `folder` as `target` (default: a name free there, see
        `_free_name`): a file that is there already is never replaced."""
        self._forget(item_id)
        source = self.inbox / item_id
        try:
            if target is None:
                if not os.path.lexists(source):
                    return  # already moved (reprocessing after a crash)
                target = _free_name(folder, item_id)
            os.replace(source, folder / target)
        except FileNotFoundError:
            return  # already moved (reprocessing after a crash)
        except OSError as exc:
            raise GatewayError(f"cannot move {item_id}: {exc}") from exc

    def mark_handled(self, item_id: str, replied: bool = False, refused: bool = False) -> None:
        self._move(item_id, self.processed)

    def quarantine(self, item_id: str, reason: str) -> None:
        """Move the item to failed/ with `<name>.error.txt` beside it, under a name free there
        (both the file's and its note's: a second file of the same name keeps the first and
        its note). A name too long for the suffix gets a shortened error file name, which the
        file itself names."""
        try:
            if not os.path.lexists(self.inbox / item_id):
                self._forget(item_id)
                return  # already moved (reprocessing after a crash)
            target = _free_name(self.failed, item_id, with_note=True)
        except OSError as exc:
            raise GatewayError(f"cannot quarantine {item_id}: {exc}") from exc
        note = _note_name(target)
        if note != f"{target}.error.txt":
            reason = f"{reason}\nitem: {target}"
        try:
            atomic_write(self.failed / note, (reason + "\n").encode())
        except OSError as exc:
            raise GatewayError(f"cannot write {note} in {self.failed}: {exc}") from exc
        self._move(item_id, self.failed, target)

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
        else the calendar file and the directory entries."""
        calendar = self._calendar_file()
        calendar.flush()
        if _SYNCFS is not None and _SYNCFS(self._root_fd()) == 0:
            return
        os.fsync(calendar.fileno())
        for folder in (self.outbox, self.processed, self.failed, self.inbox):
            fsync_dir(folder)

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
        extra = {"integration": self.name}
        if settled.dropped:
            log.warning(
                "%s: dropped a torn last line (%d bytes: an acceptance a crash cut short)",
                path,
                settled.dropped,
                extra=extra,
            )
        if settled.aside is not None:
            what = settled.scan.damage()
            log.error(
                "%s: %s; every readable line (%d) is kept in it, the damaged file as %s",
                path,
                what,
                len(settled.scan.ordered),
                settled.aside.name,
                extra=extra,
            )
            report_damaged(self.name, settled.aside, what)

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
