"""The spool's inbox side: what waits in `inbox/`, in the order the service first saw it, read
as items, and moved out to `processed/` or `failed/` once handled.

What lies in the inbox under a name other writers give a file while they write it (`is_temp`) is
never read, moved or counted: they rename it to its `.ics` or `.eml` name when it is whole.

A handled file the file system refuses to move (a folder made read-only or immutable, EACCES or
EPERM) stays where it is: `_move` raises GatewayError and remembers it, by inode, so that while
it waits its item keeps the arrival time it had (the poller knows it by that, as decided and
answered already, and only tries the move again), and so that a file put under the same name
later is taken as the new arrival it is, and never moved in the old one's place."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from stat import S_ISLNK, S_ISREG

from vmrsched.mailbox import itip
from vmrsched.mailbox.base import GatewayError, InboxItem
from vmrsched.store.journal import atomic_write

INBOX = "inbox"
SUFFIXES = (".ics", ".eml")
MAX_ITEM_BYTES = 10 * 1024 * 1024
NAME_MAX = 255  # bytes in one file name (Linux)
# An inbox whose last change is older than this cannot get a later change with the same
# timestamp (FAT keeps 2 s; ext4 and XFS the kernel's tick), so an unchanged timestamp then
# means an unchanged inbox.
SETTLED_NS = 3 * 10**9
TRUST_UNCHANGED_SECONDS = 10.0  # listed at least this often all the same (odd file systems)

# The endings common writers give a file until it is whole, then rename it: `cp`-like scripts
# and mail tools (.tmp, .temp), downloads (.part, .partial, Chrome's .crdownload, WinSCP's
# .filepart), vim's swap file (.swp). Compared without case.
TEMP_SUFFIXES = (".tmp", ".temp", ".part", ".partial", ".filepart", ".crdownload", ".swp")


def is_temp(name: str) -> bool:
    """Whether `name` is another writer's file in the making, left alone in the inbox: a dot
    name (hidden: rsync's `.<name>.XXXXXX`, Emacs's lock `.#<name>`, our own `deliver`), an
    editor's backup (`<name>~`) or autosave (`#<name>#`), or a name ending in one of
    TEMP_SUFFIXES (`invite.ics.tmp`, `invite.ics.part`)."""
    if name.startswith(".") or name.endswith("~"):
        return True
    if len(name) > 1 and name.startswith("#") and name.endswith("#"):
        return True
    return name.lower().endswith(TEMP_SUFFIXES)


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


@dataclass(frozen=True)
class _Stuck:
    """A handled inbox file the file system refused to move out: which file (its inode), the
    arrival time its item was read with (kept while it waits), and, for one set aside, the
    name in failed/ its error note was written for."""

    inode: int
    received_ns: int
    target: str | None = None


class SpoolInbox:
    """The inbox half of the spool mailbox (SpoolMailbox adds the outbox and the calendar).

    All of its state (the listing, the backlog in arrival order, the files that could not be
    moved) is the poller's: only fetch, mark_handled and quarantine touch it."""

    def __init__(
        self,
        root: Path,
        name: str,
        default_timezone: str,
        relist_seconds: float,
        monotonic: Callable[[], float],
        wall_ns: Callable[[], int],
    ) -> None:
        self.name = name
        self.root = root
        self.default_timezone = default_timezone
        self.inbox = root / INBOX
        self._inbox_path = str(self.inbox)  # joined with a name for every item read
        self.processed = root / "processed"
        self.failed = root / "failed"
        for folder in (self.inbox, self.processed, self.failed):
            folder.mkdir(parents=True, exist_ok=True)
        # the names of the last listing less those handled since, in the order first seen
        # waiting, each with its inode (a file replaced under its name is a new arrival): a
        # listing looks closer (a stat) only at what is new to it, never at the whole backlog
        self._backlog: dict[str, int] = {}
        # handled files the file system would not let out of the inbox, by name
        self._stuck: dict[str, _Stuck] = {}
        self.relist_seconds = relist_seconds
        self._monotonic = monotonic
        self._relist_at = monotonic()
        self._wall_ns = wall_ns
        # the inbox's (inode, device, mtime, ctime) when last listed, if its last change was
        # settled by then; until it differs (or the trust runs out) a listing would be the same
        self._listed_as: tuple[int, int, int, int] | None = None
        self._trusted_until = 0.0

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
        A listing stats only its newcomers and sorts only them; other writers' files in the
        making (`is_temp`) are passed over."""
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
            if is_temp(name):
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
        # arrived when its rename set its ctime (not at an mtime `mv` kept): what lag reads;
        # a file that could not be moved out keeps the time it was handled with
        received_ns = stat.st_ctime_ns
        stuck = self._stuck.get(name)
        if stuck is not None and stuck.inode == stat.st_ino:
            received_ns = stuck.received_ns
        elif stuck is not None:
            del self._stuck[name]  # gone, and another file came under its name: a new arrival
        received = datetime.fromtimestamp(received_ns / 1e9, UTC)
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

    def _waiting(self, item_id: str, action: str) -> os.stat_result | None:
        """The inbox file `item_id` still to move, or None when there is nothing to move: it
        was moved already (reprocessing after a crash), or the file that could not be moved
        before is gone and another lies under its name (a new arrival, read as one)."""
        stuck = self._stuck.get(item_id)
        try:
            stat = os.lstat(os.path.join(self._inbox_path, item_id))
        except FileNotFoundError:
            self._stuck.pop(item_id, None)
            return None
        except OSError as exc:
            raise GatewayError(f"cannot {action} {item_id}: {exc}") from exc
        if stuck is not None and stuck.inode != stat.st_ino:
            del self._stuck[item_id]
            return None
        return stat

    def _refused(
        self, item_id: str, stat: os.stat_result, target: str | None, what: str, exc: OSError
    ) -> GatewayError:
        """Remember a handled file the file system would not let go; the error to raise."""
        earlier = self._stuck.get(item_id)
        received_ns = earlier.received_ns if earlier is not None else stat.st_ctime_ns
        self._stuck[item_id] = _Stuck(stat.st_ino, received_ns, target)
        reason = exc.strerror or str(exc)
        return GatewayError(f"cannot {what}: [Errno {exc.errno}] {reason}")

    def _move(self, item_id: str, folder: Path, target: str | None = None) -> None:
        """Move an inbox item into `folder` as `target` (default: a name free there, see
        `_free_name`): a file that is there already is never replaced."""
        self._forget(item_id)
        stat = self._waiting(item_id, "move")
        if stat is None:
            return
        try:
            if target is None:
                target = _free_name(folder, item_id)
            os.replace(os.path.join(self._inbox_path, item_id), folder / target)
        except FileNotFoundError:
            self._stuck.pop(item_id, None)
            return  # already moved (reprocessing after a crash)
        except OSError as exc:
            kept = target if folder == self.failed else None
            what = f"move {item_id} from inbox/ to {folder.name}/"
            raise self._refused(item_id, stat, kept, what, exc) from exc
        self._stuck.pop(item_id, None)

    def mark_handled(self, item_id: str, replied: bool = False, refused: bool = False) -> None:
        self._move(item_id, self.processed)

    def quarantine(self, item_id: str, reason: str) -> None:
        """Move the item to failed/ with `<name>.error.txt` beside it, under a name free there
        (both the file's and its note's: a second file of the same name keeps the first and
        its note). A name too long for the suffix gets a shortened error file name, which the
        file itself names. A file whose move was refused after its note was written is moved
        under the name its note has, without a second note."""
        stat = self._waiting(item_id, "quarantine")
        if stat is None:
            self._forget(item_id)
            return
        stuck = self._stuck.get(item_id)
        try:
            if (
                stuck is not None
                and stuck.target is not None
                and os.path.lexists(self.failed / _note_name(stuck.target))
                and not os.path.lexists(self.failed / stuck.target)
            ):
                self._move(item_id, self.failed, stuck.target)
                return
            target = _free_name(self.failed, item_id, with_note=True)
        except OSError as exc:
            raise GatewayError(f"cannot quarantine {item_id}: {exc}") from exc
        note = _note_name(target)
        if note != f"{target}.error.txt":
            reason = f"{reason}\nitem: {target}"
        try:
            atomic_write(self.failed / note, (reason + "\n").encode())
        except OSError as exc:
            raise self._refused(item_id, stat, None, f"write {note} in {self.failed}", exc) from exc
        self._move(item_id, self.failed, target)
