"""The notifier's durable queue of outgoing messages: a journal of adds, deliveries and failures.

Exactly-once rests on three facts kept here:
- a message id is stable for one (meeting, occurrence, sequence, kind, outcome), and an id the
  queue has seen (pending, delivered or failed) is never queued again, so re-reading an item
  after a crash, or the room's own organizer update coming back, cannot send a second answer;
- `add` returns only after fsync, and the poller marks an inbox item handled only after that;
- `done` and `fail` are fsynced before the notifier goes on, so a restart never resends what
  was delivered (the one window left is a crash between the mailbox accepting a message and
  that fsync; backends make that resend harmless where they can).
Seen ids are kept for SEEN_DAYS (and at most SEEN_MAX of them) across journal rotations.

A damaged journal (a complete line failing its checksum: no crash does that) loses nothing
readable: every whole entry before and after the damage is kept, the journal is set aside as
`<name>.damaged-<time>` (never deleted) once a fresh one holds what it held, and state_damaged
is raised. A message whose line is damaged but still reads is kept as failed (`vmrsched failed`
lists it with the reason): what it says may have been changed, so it is not sent as it is.

An admin may put a failed message back in the queue (`retry`) or drop a failed or queued one
(`discard`); both are journalled like the rest. The notifier's proxy reaches the queue
(`pykka_traversable`), so these run in the notifier's thread, never beside it.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from vmrsched.outgoing import Outgoing
from vmrsched.store.journal import Journal, Scan, fsync_dir, scan, set_aside
from vmrsched.telemetry import report_damaged

log = logging.getLogger("vmrsched.store.outqueue")
_NAME = re.compile(r"^outgoing\.(\d+)\.log$")
SEEN_DAYS = 30
SEEN_MAX = 200_000
FAILED_MAX = 1_000
ROTATE_AFTER = 10_000


@dataclass(frozen=True)
class Failed:
    """A message that could not be delivered and will not be retried."""

    message: Outgoing
    reason: str
    at: float  # unix time


@dataclass(frozen=True)
class Queued:
    """A message waiting to be delivered, and since when."""

    message: Outgoing
    at: float  # unix time it was queued (or put back by an admin)


class MessageQueue(Protocol):
    """What the notifier asks of its durable queue, whichever backend keeps it: this file's
    journal (`OutQueue`) or the shared database (`postgres.outqueue.DatabaseOutQueue`). Both
    keep the promises above (an id seen is never queued again; every change durable when it
    returns), so the notifier holds either."""

    def add(self, messages: Iterable[Outgoing]) -> set[str]: ...

    def seen(self, message_id: str) -> bool: ...

    def done(self, ids: Iterable[str]) -> None: ...

    def fail(self, message_id: str, reason: str, replacement: Outgoing | None = None) -> None: ...

    def retry(self, message_id: str) -> bool: ...

    def discard(self, message_id: str) -> bool: ...

    def contents(self) -> tuple[list[Queued], list[Failed]]: ...

    def pending(self) -> list[Outgoing]: ...

    def failed(self) -> list[Failed]: ...

    def __len__(self) -> int: ...

    def close(self) -> None: ...


class OutQueue(MessageQueue):
    # the notifier's proxy may call the queue's methods (in the notifier's thread): the admin
    # pages list, retry and discard through it
    pykka_traversable = True

    def __init__(
        self,
        directory: Path,
        clock: Callable[[], float] = time.time,
        *,
        read_only: bool = False,
    ) -> None:
        """`read_only`: read the queue beside the service that owns it (`vmrsched failed`):
        nothing is written, moved or reported."""
        self.directory = Path(directory)
        self.clock = clock
        self._pending: dict[str, Outgoing] = {}
        self._seen: dict[str, float] = {}  # id -> when first queued (insertion ordered)
        self._failed: dict[str, Failed] = {}
        self._suspect: set[str] = set()  # failed only because their line is damaged
        self._damaged: dict[int, str] = {}  # generation -> what is wrong with it
        gens = _generations(self.directory)
        for gen in gens:
            self._read(gen, scan(self._path(gen)))
        self._suspect.clear()
        self._old = gens
        self._gen = (gens[-1] if gens else 0) + 1
        self._prune()
        # Started at the first change, never appended to an old one (its tail may be torn): a
        # restart with nothing to send creates no file and leaves the old journals as they are.
        self._journal: Journal | None = None
        if self._damaged and not read_only:
            self._keep_aside()

    def _read(self, gen: int, result: Scan) -> None:
        if not result.unverified:
            for entry in result.ordered:
                self._replay(entry)
        else:
            self._read_with_damage(gen, result)
        if result.corrupt:
            lines = ", ".join(map(str, result.bad_lines[:10]))
            lost = len(result.unreadable) - len(result.unverified)
            self._damaged[gen] = f"damaged line(s) {lines}" + (
                f", {lost} unreadable" if lost else ""
            )

    def _read_with_damage(self, gen: int, result: Scan) -> None:
        """The entries in order, with those of damaged lines that still read in their place."""
        unverified = iter(result.unverified)
        waiting = next(unverified, None)
        for position, entry in enumerate([*result.ordered, None]):
            while waiting is not None and waiting[1] == position:
                self._read_damaged(gen, *waiting[::2])
                waiting = next(unverified, None)
            if entry is not None:
                self._replay(entry)

    def _read_damaged(self, gen: int, line: int, entry: dict[str, object]) -> None:
        """A line that fails its checksum but still reads: a message in it is kept as failed
        (not sent: what it says may have been changed); anything else is read as it is."""
        if entry.get("op") != "add" or not isinstance(entry.get("m"), dict):
            self._replay(entry)
            return
        try:
            message = Outgoing.from_json(entry["m"])  # type: ignore[arg-type]
        except (KeyError, TypeError, ValueError):
            return
        if message.id in self._pending:
            return
        at = float(str(entry.get("t", 0) or 0))
        self._seen.setdefault(message.id, at)
        self._suspect.add(message.id)
        self._failed[message.id] = Failed(
            message,
            f"its line ({line}) in {self._path(gen).name} is damaged: not sent, as what it "
            "says may have been changed; check it and send it by hand",
            at,
        )

    def _keep_aside(self) -> None:
        """Write what the damaged journals still hold into a fresh one, then set them aside
        (the alarm names where); on a full disk that waits for the first change, and the
        damaged journals stay where they are until then."""
        try:
            self._writable()
        except OSError as exc:
            log.error("%s: cannot write a fresh journal yet: %s", self.directory, exc)
            for gen, what in self._damaged.items():
                report_damaged(self.directory.name, self._path(gen), what)

    def _replay(self, entry: dict[str, object]) -> None:
        op = entry.get("op")
        if op == "add":
            raw_add = entry["m"]
            assert isinstance(raw_add, dict)
            added = Outgoing.from_json(raw_add)
            self._pending[added.id] = added
            self._seen.setdefault(added.id, float(str(entry.get("t", self.clock()))))
        elif op == "seen":
            self._seen.setdefault(str(entry["id"]), float(str(entry["t"])))
        elif op == "done":
            message_id = str(entry["id"])
            self._pending.pop(message_id, None)
            if message_id in self._suspect:  # delivered after all
                self._suspect.discard(message_id)
                self._failed.pop(message_id, None)
        elif op == "retry":
            message_id = str(entry["id"])
            raw_retry = entry.get("m")
            failed = self._failed.pop(message_id, None)
            self._suspect.discard(message_id)
            retried = Outgoing.from_json(raw_retry) if isinstance(raw_retry, dict) else None
            retried = retried or (failed.message if failed is not None else None)
            if retried is not None:
                self._pending[message_id] = retried
                self._seen[message_id] = float(str(entry.get("t", self.clock())))
        elif op == "discard":
            message_id = str(entry["id"])
            self._failed.pop(message_id, None)
            self._pending.pop(message_id, None)
            self._suspect.discard(message_id)
        elif op == "fail":
            message_id = str(entry["id"])
            self._suspect.discard(message_id)
            message: Outgoing | None = self._pending.pop(message_id, None)
            raw = entry.get("m")
            if message is None and isinstance(raw, dict):
                message = Outgoing.from_json(raw)
            if message is not None:
                at = float(str(entry.get("t", 0)))
                self._failed[message_id] = Failed(message, str(entry.get("reason", "")), at)

    def _prune(self) -> None:
        """Forget seen ids past SEEN_DAYS or beyond SEEN_MAX, and failures beyond FAILED_MAX."""
        horizon = self.clock() - SEEN_DAYS * 86400
        self._seen = dict([(i, t) for i, t in self._seen.items() if t >= horizon][-SEEN_MAX:])
        self._failed = {f.message.id: f for f in list(self._failed.values())[-FAILED_MAX:]}

    def _writable(self) -> Journal:
        """This run's journal, started (before the first change is made) with what must
        outlive the old journals, which then go."""
        if self._journal is None:
            if not self.directory.is_dir():
                self.directory.mkdir(parents=True)
                fsync_dir(self.directory.parent)
            self._start_journal()
        assert self._journal is not None
        return self._journal

    def _start_journal(self) -> None:
        self._prune()
        journal = self._journal = Journal(self._path(self._gen))
        for message_id, at in self._seen.items():
            if message_id not in self._pending:
                journal.append({"op": "seen", "id": message_id, "t": at})
        for message in self._pending.values():
            journal.append(
                {"op": "add", "m": message.to_json(), "t": self._seen.get(message.id, 0)}
            )
        for item in self._failed.values():
            journal.append(
                {
                    "op": "fail",
                    "id": item.message.id,
                    "m": item.message.to_json(),
                    "reason": item.reason,
                    "t": item.at,
                }
            )
        journal.sync()
        self._drop_old()

    def _path(self, gen: int) -> Path:
        return self.directory / f"outgoing.{gen}.log"

    def _drop_old(self) -> None:
        """The journals this one replaces go; damaged ones are set aside, never deleted."""
        for gen in self._old:
            what = self._damaged.pop(gen, None)
            if what is None:
                self._path(gen).unlink(missing_ok=True)
                continue
            aside = set_aside(self._path(gen), self.clock())
            log.error(
                "%s: %s; every readable entry is kept in %s, the damaged journal as %s",
                self._path(gen),
                what,
                self._path(self._gen).name,
                aside.name,
                extra={"integration": self.directory.name},
            )
            report_damaged(self.directory.name, aside, what)
        self._old = []

    def add(self, messages: Iterable[Outgoing]) -> set[str]:
        """Queue durably (returns after fsync) the messages whose id was never seen. Returns the
        ids of the given messages that are pending now, each with the same inbox item as the
        pending copy (so the caller knows which items a queued reply will answer)."""
        now = self.clock()
        pending: set[str] = set()
        for message in messages:
            if message.id not in self._seen:
                journal = self._writable()
                self._seen[message.id] = now
                self._pending[message.id] = message
                journal.append({"op": "add", "m": message.to_json(), "t": now})
            queued = self._pending.get(message.id)
            if queued is not None and queued.extra.get("item_id") == message.extra.get("item_id"):
                pending.add(message.id)
        if self._journal is not None:
            self._journal.sync()
        if len(self._seen) > SEEN_MAX + SEEN_MAX // 10:
            self._rotate()
        return pending

    def seen(self, message_id: str) -> bool:
        return message_id in self._seen

    def done(self, ids: Iterable[str]) -> None:
        """Forget delivered messages, durably (one fsync for all of them)."""
        delivered = [i for i in ids if i in self._pending]
        if not delivered:
            return
        journal = self._writable()
        for message_id in delivered:
            if self._pending.pop(message_id, None) is not None:
                journal.append({"op": "done", "id": message_id})
        journal.sync()
        if not self._pending and journal.entries > ROTATE_AFTER:
            self._rotate()

    def fail(self, message_id: str, reason: str, replacement: Outgoing | None = None) -> None:
        """Give up on a message for good, keeping it with its reason; `replacement` (say, the
        joining instructions by mail when the organizer's meeting cannot be updated) is queued
        in the same fsync."""
        if message_id not in self._pending:
            return
        journal = self._writable()
        message = self._pending.pop(message_id)
        now = self.clock()
        self._failed[message_id] = Failed(message, reason, now)
        while len(self._failed) > FAILED_MAX:
            del self._failed[next(iter(self._failed))]
        journal.append(
            {"op": "fail", "id": message_id, "m": message.to_json(), "reason": reason, "t": now}
        )
        if replacement is not None and replacement.id not in self._seen:
            self._seen[replacement.id] = now
            self._pending[replacement.id] = replacement
            journal.append({"op": "add", "m": replacement.to_json(), "t": now})
        journal.sync()

    def retry(self, message_id: str) -> bool:
        """An admin's retry: a failed message goes back in the queue, durably (False when no
        failed message has that id)."""
        item = self._failed.get(message_id)
        if item is None:
            return False
        journal = self._writable()
        now = self.clock()
        del self._failed[message_id]
        self._pending[message_id] = item.message
        self._seen[message_id] = now
        journal.append({"op": "retry", "id": message_id, "m": item.message.to_json(), "t": now})
        journal.sync()
        return True

    def discard(self, message_id: str) -> bool:
        """An admin's discard: a failed or queued message is dropped for good, durably (its id
        stays seen, so it is never queued again). False when there is no such message."""
        if message_id not in self._failed and message_id not in self._pending:
            return False
        journal = self._writable()
        self._failed.pop(message_id, None)
        self._pending.pop(message_id, None)
        journal.append({"op": "discard", "id": message_id, "t": self.clock()})
        journal.sync()
        return True

    def contents(self) -> tuple[list[Queued], list[Failed]]:
        """What is queued (oldest first, with since when) and what failed: for the admin pages."""
        queued = [Queued(m, self._seen.get(m.id, 0.0)) for m in self._pending.values()]
        return sorted(queued, key=lambda q: q.at), list(self._failed.values())

    def _rotate(self) -> None:
        self._writable().close()
        self._old = [self._gen]
        self._gen += 1
        self._start_journal()

    def pending(self) -> list[Outgoing]:
        return list(self._pending.values())

    def failed(self) -> list[Failed]:
        return list(self._failed.values())

    def __len__(self) -> int:
        return len(self._pending)

    def close(self) -> None:
        if self._journal is not None:
            self._journal.close()


def read_contents(directory: Path) -> tuple[list[Queued], list[Failed]]:
    """`contents` of a queue directory read without opening the queue for writing (the admin
    pages of an integration that is not running)."""
    return OutQueue(directory, read_only=True).contents()


def read_failed(directory: Path) -> list[Failed]:
    """Failed messages of a queue directory, read without opening the queue for writing (for
    `vmrsched failed` beside a running service)."""
    return OutQueue(directory, read_only=True).failed()


def read_state(directory: Path) -> tuple[dict[str, float], list[Queued], list[Failed]]:
    """Everything a queue directory holds, read without writing (moving it to another
    backend): the seen ids with when, the queued messages in queue order, the failed ones in
    the order they failed."""
    queue = OutQueue(directory, read_only=True)
    queued = [Queued(m, queue._seen.get(m.id, 0.0)) for m in queue._pending.values()]
    return dict(queue._seen), queued, list(queue._failed.values())


def write_state(
    directory: Path, seen: dict[str, float], queued: list[Queued], failed: list[Failed]
) -> None:
    """A queue directory holding exactly these (what `read_state` reads back), as a journal
    written the way a rotation starts one. FileExistsError when it holds a journal already."""
    if _generations(directory):
        raise FileExistsError(f"{directory} already holds a queue")
    directory.mkdir(parents=True, exist_ok=True)
    pending = {q.message.id for q in queued}
    journal = Journal(directory / "outgoing.1.log")
    try:
        for message_id, at in seen.items():
            if message_id not in pending:
                journal.append({"op": "seen", "id": message_id, "t": at})
        for item in queued:
            journal.append({"op": "add", "m": item.message.to_json(), "t": item.at})
        for gone in failed:
            journal.append(
                {
                    "op": "fail",
                    "id": gone.message.id,
                    "m": gone.message.to_json(),
                    "reason": gone.reason,
                    "t": gone.at,
                }
            )
        journal.sync()
    finally:
        journal.close()
    fsync_dir(directory)


def _generations(directory: Path) -> list[int]:
    """The journal generations in a queue directory, oldest first (none before its first)."""
    try:
        names = os.listdir(directory)
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(int(m.group(1)) for name in names if (m := _NAME.match(name)))
