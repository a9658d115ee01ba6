"""The spool inbox's order: oldest first by the time an item was first seen waiting (never by
an mtime a file kept from elsewhere), across restarts too, without a stat of the whole backlog
on every poll, an item replaced under its name read afresh, and a long
backlog drained from one listing (listed again after relist_seconds or near its end), and an
idle inbox not listed again while its timestamps say nothing changed; the calendar folder made
with the first accepted meeting."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests import spoolkit
from vmrsched.mailbox import itip
from vmrsched.mailbox.base import GatewayError
from vmrsched.mailbox.spool import TRUST_UNCHANGED_SECONDS, SpoolMailbox, outbox_name
from vmrsched.outgoing import Outgoing

YEAR_2000 = 946_684_800 * 10**9


def _put(inbox: Path, name: str, mtime_ns: int, uid: str) -> None:
    """Write elsewhere with the given mtime, then rename in (as `mv` does, keeping the mtime);
    returns once a later arrival would get a later change time (ctime), which the rename set."""
    data, _ = spoolkit.request(uid=uid, body="<p>PXPS:-x#</p>")
    tmp = inbox / f".{name}"
    tmp.write_bytes(data)
    os.utime(tmp, ns=(mtime_ns, mtime_ns))
    os.replace(tmp, inbox / name)
    arrived = (inbox / name).stat().st_ctime_ns
    probe = inbox.parent / ".probe"
    while True:  # a coarse file system clock: wait for its next tick
        probe.write_bytes(b"")
        if probe.stat().st_ctime_ns > arrived:
            break
        time.sleep(0.001)


def test_oldest_first_by_first_sight_whatever_the_mtime(tmp_path: Path) -> None:
    """The order is when the service first saw a file waiting: the files of one listing by the
    time they arrived (their change time, which the rename into the inbox set; an mtime `mv`
    kept from elsewhere says nothing), then anything a later listing finds, after them."""
    spool = SpoolMailbox(tmp_path, "room")
    base = 1_700_000_000 * 10**9
    for i, name in enumerate(["c.ics", "a.ics", "b.ics"]):
        _put(spool.inbox, name, base + (2 - i) * 10**9, f"uid-{name}")  # newest mtime first
    assert [item.id for item in spool.fetch(2)] == ["c.ics", "a.ics"]

    spool.mark_handled("c.ics", replied=False)
    _put(spool.inbox, "d.ics", YEAR_2000, "uid-d")  # arrives later, with an ancient mtime
    assert [item.id for item in spool.fetch(3)] == ["a.ics", "b.ics", "d.ics"]
    # replaced under its name (a new file): it arrived last, and its new content is read
    _put(spool.inbox, "a.ics", YEAR_2000, "uid-a2")
    items = spool.fetch(3)
    assert [item.id for item in items] == ["b.ics", "d.ics", "a.ics"]
    assert items[2].meetings[0].uid == "uid-a2"


def test_an_item_was_received_when_it_arrived_not_at_its_old_mtime(tmp_path: Path) -> None:
    """What the mailbox lag metric (and its alert after 5 minutes) is measured from: a file
    moved in with an mtime of 2000 arrived now."""
    spool = SpoolMailbox(tmp_path, "room")
    before = datetime.now(UTC) - timedelta(seconds=5)
    _put(spool.inbox, "old.ics", YEAR_2000, "uid-old")
    (item,) = spool.fetch(1)
    assert before <= item.received <= datetime.now(UTC) + timedelta(seconds=5)


def test_the_order_holds_across_restarts(tmp_path: Path) -> None:
    """A restart keeps the order: the files waiting at start are ordered by the time they
    arrived, which the file system keeps (a file renamed in late, with an old mtime, stays
    behind the ones that waited longer), and a second restart gives the same order again."""
    spool = SpoolMailbox(tmp_path, "room", exclusive=True)
    base = 1_700_000_000 * 10**9
    for i in range(3):
        _put(spool.inbox, f"early-{i}.ics", base + i * 10**9, f"uid-{i}")
    assert [item.id for item in spool.fetch(1)] == ["early-0.ics"]
    _put(spool.inbox, "0-late.ics", YEAR_2000, "uid-late")  # sorts first by name and by mtime
    assert [item.id for item in spool.fetch(10)][-1] == "0-late.ics"
    spool.close()
    expected = ["early-0.ics", "early-1.ics", "early-2.ics", "0-late.ics"]
    for _ in range(2):
        again = SpoolMailbox(tmp_path, "room", exclusive=True)
        assert [item.id for item in again.fetch(10)] == expected
        again.close()


def test_a_backlog_is_drained_from_its_listing_and_listed_again_in_time(tmp_path: Path) -> None:
    now = [0.0]
    spool = SpoolMailbox(tmp_path, "room", relist_seconds=1.0, monotonic=lambda: now[0])
    base = 1_700_000_000 * 10**9
    for i in range(10):
        _put(spool.inbox, f"{i:02d}.ics", base + i * 10**9, f"uid-{i}")
    assert [item.id for item in spool.fetch(2)] == ["00.ics", "01.ics"]
    spool.mark_handled("00.ics")
    spool.quarantine("01.ics", "test")

    # more than two batches left: the next batch comes from the listing, not a new one
    _put(spool.inbox, "new.ics", base - 10**9, "uid-new")  # older mtime, arrived later
    (spool.inbox / "03.ics").unlink()  # taken away by hand since it was listed
    items = spool.fetch(2)
    assert [item.id for item in items] == ["02.ics", "04.ics"]
    assert items[0].meetings[0].uid == "uid-2"
    for item in items:
        spool.mark_handled(item.id)

    now[0] = 1.0  # time to look again: the newcomer is seen, behind those that waited longer
    assert [item.id for item in spool.fetch(2)] == ["05.ics", "06.ics"]
    assert [item.id for item in spool.fetch(10)][-1] == "new.ics"


def test_a_short_backlog_is_listed_on_every_fetch(tmp_path: Path) -> None:
    spool = SpoolMailbox(tmp_path, "room", relist_seconds=3600, monotonic=lambda: 0.0)
    base = 1_700_000_000 * 10**9
    for i in range(3):
        _put(spool.inbox, f"{i}.ics", base + i * 10**9, f"uid-{i}")
    assert [item.id for item in spool.fetch(2)] == ["0.ics", "1.ics"]
    spool.mark_handled("0.ics")
    _put(spool.inbox, "new.ics", base - 10**9, "uid-new")
    assert [item.id for item in spool.fetch(3)] == ["1.ics", "2.ics", "new.ics"]


class _CountedEntry:
    """An os.DirEntry whose stat calls are counted."""

    def __init__(self, entry: os.DirEntry[str], stats: list[str]) -> None:
        self._entry, self._stats, self.name = entry, stats, entry.name

    def inode(self) -> int:
        return self._entry.inode()

    def stat(self, *, follow_symlinks: bool = True) -> os.stat_result:
        self._stats.append(self.name)
        return self._entry.stat(follow_symlinks=follow_symlinks)


def test_a_listing_looks_closer_only_at_the_files_new_to_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Listing a long backlog again stats only what came since (a stat per waiting file on
    every listing cost a large inbox dearly), and keeps the order of what it saw before."""
    now = [0.0]
    spool = SpoolMailbox(tmp_path, "room", relist_seconds=1.0, monotonic=lambda: now[0])
    for i in range(2_000):
        (spool.inbox / f"{i:04d}.ics").write_bytes(b"")
    stats: list[str] = []
    scandir = os.scandir

    def counting(path: Any) -> list[_CountedEntry]:
        with scandir(path) as entries:
            return [_CountedEntry(entry, stats) for entry in entries]

    monkeypatch.setattr(os, "scandir", counting)
    first = [item.id for item in spool.fetch(2)]
    assert len(stats) == 2_000
    stats.clear()
    _put(spool.inbox, "new.ics", YEAR_2000, "uid-new")
    now[0] = 1.0
    assert [item.id for item in spool.fetch(2)] == first
    assert stats == ["new.ics"]


def test_items_of_every_size_are_read_whole(tmp_path: Path) -> None:
    from vmrsched.mailbox.spool import MAX_ITEM_BYTES, _read_regular

    for size in (0, 1, 4095, 4096, 65537, 3 * (1 << 20) + 7, MAX_ITEM_BYTES):
        path = tmp_path / f"{size}.ics"
        data = os.urandom(size)
        path.write_bytes(data)
        assert _read_regular(str(path)) == data
    path.write_bytes(b"x" * (MAX_ITEM_BYTES + 100))  # grew past the limit: bounded
    assert len(_read_regular(str(path))) == MAX_ITEM_BYTES + 1


@pytest.fixture
def listings(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The directories listed (os.scandir calls) during the test."""
    seen: list[str] = []
    scandir = os.scandir

    def counting(path: Any) -> Any:
        seen.append(str(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", counting)
    yield seen


def test_an_unchanged_inbox_is_not_listed_again_until_it_changes(
    tmp_path: Path, listings: list[str]
) -> None:
    now = [0.0]
    later = time.time_ns() + 3600 * 10**9  # an hour on: every change so far has settled
    spool = SpoolMailbox(tmp_path, "room", monotonic=lambda: now[0], wall_ns=lambda: later)
    assert spool.fetch(10) == []
    assert spool.fetch(10) == []
    assert len(listings) == 1

    _put(spool.inbox, "a.ics", 1_700_000_000 * 10**9, "uid-a")  # older time, arrived now
    assert [item.id for item in spool.fetch(10)] == ["a.ics"]
    assert len(listings) == 2
    spool.mark_handled("a.ics")  # the inbox changes by our own move, too
    assert spool.fetch(10) == []
    assert spool.fetch(10) == []
    assert len(listings) == 3

    now[0] = TRUST_UNCHANGED_SECONDS  # listed now and then all the same
    assert spool.fetch(10) == []
    assert len(listings) == 4


def test_an_inbox_changed_within_the_settling_time_is_listed_on_every_fetch(
    tmp_path: Path, listings: list[str]
) -> None:
    """Its timestamp could stay the same through a later change in the same tick."""
    spool = SpoolMailbox(tmp_path, "room", monotonic=lambda: 0.0)  # created just now
    for _ in range(3):
        assert spool.fetch(10) == []
    assert len(listings) == 3


def test_the_calendar_folder_is_made_with_the_first_accepted_meeting(tmp_path: Path) -> None:
    spool = SpoolMailbox(tmp_path, "room")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["failed", "inbox", "outbox", "processed"]
    assert all(ok for ok, _ in spool.probe())  # the calendar's place is writable
    start = datetime(2026, 12, 1, 9, tzinfo=UTC)
    day = (start - timedelta(hours=1), start + timedelta(days=1))
    assert spool.calendar(*day) == []
    data, uid = spoolkit.request(body="<p>PXPS:-x#</p>", start=start)
    spool.record_accepted(itip.parse_calendar(data, correlation_id="c").meetings[0])
    spool.sync()
    spool.close()
    again = SpoolMailbox(tmp_path, "room")
    assert [entry.meeting.uid for entry in again.calendar(*day)] == [uid]
    assert all(ok for ok, _ in again.probe())
    again.close()


def _accepted(message_id: str) -> Outgoing:
    """The room's acceptance of olga's "Weekly sync", under the given id."""
    return Outgoing(
        id=message_id,
        kind="reply",
        sender="vmr@example.com",
        sender_name="Room",
        recipients=("olga@example.com",),
        subject="Accepted: Weekly sync",
        html_body="<p>Join</p>",
        outcome="accepted",
        reason="new_single",
        correlation_id="c",
        meeting_uid="u",
    )


def test_an_outbox_name_says_the_outcome_once() -> None:
    message = _accepted("0" * 32)
    name = outbox_name(message, datetime(2026, 12, 6, 9, 28, tzinfo=UTC))
    assert name == f"20261206T092800.000000Z-accepted-weekly-sync-{'0' * 32}.eml"


def _as_unprivileged(monkeypatch: pytest.MonkeyPatch, listing: str) -> None:
    """`os.<listing>` refuses a directory of mode 000 as the kernel does for anyone but root
    (the tests run as root)."""
    lists = getattr(os, listing)

    def refusing(path: Any) -> Any:
        if os.stat(path).st_mode & 0o777 == 0:
            raise PermissionError(13, "Permission denied", str(path))
        return lists(path)

    monkeypatch.setattr(os, listing, refusing)


def test_an_inbox_that_cannot_be_listed_fails_every_fetch_until_it_can(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`chmod 000` on the inbox (the service runs unprivileged): every fetch fails, so the
    mailbox_unreachable alarm stays raised for as long as it lasts; never taken for an
    unchanged, empty inbox by the listing's timestamps (which the failed listing must not
    trust). The kernel's refusal for a non-root user is stood in for: tests run as root,
    whom a mode of 000 does not stop."""
    _as_unprivileged(monkeypatch, "scandir")
    now = [0.0]
    later = time.time_ns() + 3600 * 10**9  # an hour on: every change so far has settled
    spool = SpoolMailbox(tmp_path, "room", monotonic=lambda: now[0], wall_ns=lambda: later)
    assert spool.fetch(10) == []
    os.chmod(spool.inbox, 0)
    try:
        for _ in range(3):
            with pytest.raises(GatewayError, match="Permission denied"):
                spool.fetch(10)
            now[0] += 1.0
    finally:
        os.chmod(spool.inbox, 0o700)
    _put(spool.inbox, "a.ics", YEAR_2000, "uid-a")
    assert [item.id for item in spool.fetch(10)] == ["a.ics"]


def test_an_outbox_that_cannot_be_listed_is_an_outage_not_a_refusal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`chmod 000` on the outbox: sending fails as the mailbox being out of reach (the notifier
    waits and sends again by itself), never as a refusal of the message (failed for good,
    waiting for an admin's retry). As above, the kernel's refusal for a non-root user is stood
    in for."""
    _as_unprivileged(monkeypatch, "listdir")
    spool = SpoolMailbox(tmp_path, "room")
    message = _accepted("1" * 32)
    os.chmod(spool.outbox, 0)
    try:
        with pytest.raises(GatewayError, match="Permission denied") as raised:
            spool.send(message)
        assert not raised.value.permanent
        with pytest.raises(GatewayError) as asked:
            spool.delivered(message)
        assert not asked.value.permanent
    finally:
        os.chmod(spool.outbox, 0o700)
    spool.send(message)
    assert spool.delivered(message)
    assert len(list(spool.outbox.glob(f"*{'1' * 32}.eml"))) == 1
