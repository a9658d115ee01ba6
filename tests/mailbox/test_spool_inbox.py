"""The spool's inbox side (mailbox/spool_inbox.py): what other writers are still writing is
never read, whatever temp name they give it; a handled file the file system will not move out
is remembered as the same item (its arrival time kept) until it goes, while a file put under
its name later is a new arrival, never moved in its place; an unreadable file whose move
was refused after its note was written gets no second note; and a sync the disk refuses is
the mailbox's outage (GatewayError), not an OSError that crashes the poller."""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import spoolkit
from vmrsched.mailbox import spool_inbox
from vmrsched.mailbox.base import GatewayError
from vmrsched.mailbox.spool import SpoolMailbox

TEMP_NAMES = [
    "invite.ics.tmp",
    "invite.ics.TMP",
    "invite.ics.temp",
    "invite.ics.part",
    "invite.ics.partial",
    "invite.ics.filepart",
    "invite.ics.crdownload",
    "invite.ics.swp",
    "invite.ics~",
    ".#invite.ics",
    "#invite.ics#",
    ".invite.ics.tmp",
    ".invite.ics.Xy12Ab",
]
NOT_TEMP = ["invite.ics", "invite.eml", "tmp.ics", "part.eml", "invite.tmp.ics", "#", "notes.txt"]


def test_the_temp_name_rule() -> None:
    assert [name for name in TEMP_NAMES if not spool_inbox.is_temp(name)] == []
    assert [name for name in NOT_TEMP if spool_inbox.is_temp(name)] == []


def test_files_under_temp_names_are_never_read_or_moved(tmp_path: Path) -> None:
    spool = SpoolMailbox(tmp_path, "room")
    data, _ = spoolkit.request()
    for name in TEMP_NAMES:
        (spool.inbox / name).write_bytes(data[:40])  # half-written
    spoolkit.drop(spool.inbox, data, name="whole.ics")
    assert [item.id for item in spool.fetch(100)] == ["whole.ics"]
    spool.mark_handled("whole.ics")
    assert spool.fetch(100) == []
    assert sorted(os.listdir(spool.inbox)) == sorted(TEMP_NAMES)
    assert os.listdir(spool.failed) == []
    spool.close()


@pytest.fixture
def refusing(monkeypatch: pytest.MonkeyPatch) -> Iterator[set[Path]]:
    """Folders no inbox file can be moved into: each rename fails as the kernel fails that of
    an immutable file (chattr +i), EPERM; the spool's own writes there (an error note) work."""
    folders: set[Path] = set()
    replace = os.replace

    def rename(source: Any, target: Any, **kwargs: Any) -> None:
        if Path(source).parent.name == "inbox" and Path(target).parent in folders:
            raise PermissionError(errno.EPERM, os.strerror(errno.EPERM), str(target))
        replace(source, target, **kwargs)

    monkeypatch.setattr(spool_inbox.os, "replace", rename)
    yield folders


def test_a_file_that_cannot_be_moved_stays_the_same_item_until_it_goes(
    tmp_path: Path, refusing: set[Path]
) -> None:
    spool = SpoolMailbox(tmp_path, "room")
    data, _ = spoolkit.request()
    spoolkit.drop(spool.inbox, data, name="invite.ics")
    [item] = spool.fetch(10)
    refusing.add(spool.processed)
    with pytest.raises(GatewayError, match=r"invite\.ics.*processed/.*Errno 1"):
        spool.mark_handled(item.id)
    os.chmod(spool.inbox / "invite.ics", 0o600)  # a new change time: still the same file
    [again] = spool.fetch(10)
    assert (again.id, again.received) == (item.id, item.received)
    refusing.clear()
    spool.mark_handled(item.id)
    assert os.listdir(spool.processed) == ["invite.ics"] and spool.fetch(10) == []
    spool.close()


def test_a_file_put_under_a_held_name_is_a_new_arrival_never_moved_in_its_place(
    tmp_path: Path, refusing: set[Path]
) -> None:
    spool = SpoolMailbox(tmp_path, "room")
    first, _ = spoolkit.request("first")
    second, _ = spoolkit.request("second")
    spoolkit.drop(spool.inbox, first, name="invite.ics")
    [item] = spool.fetch(10)
    refusing.add(spool.processed)
    with pytest.raises(GatewayError):
        spool.mark_handled(item.id)
    spoolkit.drop(spool.inbox, second, name="invite.ics")  # replaces the held file
    refusing.clear()
    spool.mark_handled(item.id)  # the held one's move tried again: it is gone
    assert os.listdir(spool.processed) == []
    [new] = spool.fetch(10)
    assert new.id == "invite.ics" and new.meetings[0].uid == "second"
    spool.mark_handled(new.id)
    assert (spool.processed / "invite.ics").read_bytes() == second
    spool.close()


def test_an_unreadable_file_held_after_its_note_gets_no_second_note(
    tmp_path: Path, refusing: set[Path]
) -> None:
    spool = SpoolMailbox(tmp_path, "room")
    spoolkit.drop(spool.inbox, b"garbage", name="bad.ics")
    [item] = spool.fetch(10)
    refusing.add(spool.failed)
    for _ in range(3):
        with pytest.raises(GatewayError):
            spool.quarantine(item.id, "unreadable")
    refusing.clear()
    spool.quarantine(item.id, "unreadable")
    assert sorted(os.listdir(spool.failed)) == ["bad.ics", "bad.ics.error.txt"]
    assert (spool.failed / "bad.ics.error.txt").read_text() == "unreadable\n"
    spool.close()


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_a_sync_the_disk_refuses_is_an_outage_of_the_mailbox_not_a_crash(tmp_path: Path) -> None:
    """The calendar's lines wait in its buffer; the poller backs off on GatewayError."""
    from tests.mailbox.test_spool_calendar import meeting

    spool = SpoolMailbox(tmp_path, "room")
    spool._calendar = open("/dev/full", "ab")  # noqa: SIM115 (every write: ENOSPC)
    spool.record_accepted(meeting("uid-1"))
    with pytest.raises(GatewayError, match="No space left"):
        spool.sync()
    with contextlib.suppress(OSError):  # what it holds cannot be written: closed all the same
        spool._calendar.close()
    spool._calendar = None
    spool.close()
