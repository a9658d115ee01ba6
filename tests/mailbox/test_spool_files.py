"""The spool's folders lose nothing: a second file of a name already handled keeps the first (in
processed/ and in failed/, each with its own error note), and what a crash left half-written of
the gateway's own writes is removed on the next start, its message written again exactly once,
while anything another writer may still be writing is left alone."""

from __future__ import annotations

import errno
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests import spoolkit
from vmrsched.mailbox import spool as spool_module
from vmrsched.mailbox.base import GatewayError
from vmrsched.mailbox.spool import SpoolMailbox, outbox_name
from vmrsched.outgoing import Outgoing


def handle_all(spool: SpoolMailbox) -> None:
    """What the poller does with each item: handled when readable, else quarantined."""
    for item in spool.fetch(10):
        if item.error is None:
            spool.mark_handled(item.id)
        else:
            spool.quarantine(item.id, f"unreadable: {item.error}")


def test_a_second_file_of_a_handled_name_keeps_the_first_in_processed(tmp_path: Path) -> None:
    spool = SpoolMailbox(tmp_path, "room")
    first, _ = spoolkit.request("first")
    second, _ = spoolkit.request("second")
    spoolkit.drop(spool.inbox, first, name="invite.ics")
    handle_all(spool)
    spoolkit.drop(spool.inbox, second, name="invite.ics")
    handle_all(spool)
    spoolkit.drop(spool.inbox, second + b"\r\n", name="invite.ics")
    handle_all(spool)
    kept = {p.name: p.read_bytes() for p in spool.processed.iterdir()}
    assert kept == {"invite.ics": first, "invite.2.ics": second, "invite.3.ics": second + b"\r\n"}


EMPTY = b"BEGIN:VCALENDAR\r\nVERSION:2.0\r\nMETHOD:REQUEST\r\nEND:VCALENDAR\r\n"


def test_a_second_file_of_a_quarantined_name_keeps_the_first_and_its_note(
    tmp_path: Path,
) -> None:
    spool = SpoolMailbox(tmp_path, "room")
    spoolkit.drop(spool.inbox, b"first garbage", name="bad.ics")
    handle_all(spool)
    spoolkit.drop(spool.inbox, EMPTY, name="bad.ics")
    handle_all(spool)
    failed = spool.failed
    assert sorted(p.name for p in failed.iterdir()) == [
        "bad.2.ics",
        "bad.2.ics.error.txt",
        "bad.ics",
        "bad.ics.error.txt",
    ]
    assert (failed / "bad.ics").read_bytes() == b"first garbage"
    assert (failed / "bad.2.ics").read_bytes() == EMPTY
    assert "no VEVENT" not in (failed / "bad.ics.error.txt").read_text()
    assert "no VEVENT" in (failed / "bad.2.ics.error.txt").read_text()


def test_a_file_named_like_a_note_never_replaces_one(tmp_path: Path) -> None:
    """`x.ics.error.txt` dropped in is quarantined (not .ics or .eml) beside x.ics's own note,
    and a later x.ics gets a note of its own rather than overwriting that file."""
    spool = SpoolMailbox(tmp_path, "room")
    spoolkit.drop(spool.inbox, b"a file, not a note", name="x.ics.error.txt")
    handle_all(spool)
    spoolkit.drop(spool.inbox, b"garbage", name="x.ics")
    handle_all(spool)
    assert (spool.failed / "x.ics.error.txt").read_bytes() == b"a file, not a note"
    assert (spool.failed / "x.2.ics").read_bytes() == b"garbage"
    assert (spool.failed / "x.2.ics.error.txt").exists()


def test_a_long_name_is_kept_twice_within_the_name_limit(tmp_path: Path) -> None:
    spool = SpoolMailbox(tmp_path, "room")
    name = "n" * 246 + ".ics"  # 250 bytes: the drop helper adds ".tmp" and a dot
    for data in (b"one", b"two"):
        spoolkit.drop(spool.inbox, data, name=name)
        handle_all(spool)
    items = [p for p in spool.failed.iterdir() if not p.name.endswith(".error.txt")]
    assert sorted(p.read_bytes() for p in items) == [b"one", b"two"]
    assert all(len(p.name.encode()) <= 255 for p in spool.failed.iterdir())
    assert len([p for p in spool.failed.iterdir() if p.name.endswith(".error.txt")]) == 2


def message(n: int = 1) -> Outgoing:
    return Outgoing(
        id=f"{n:032x}",
        kind="reply",
        sender="vmr@example.com",
        sender_name="Room",
        recipients=("olga@example.com",),
        subject="Accepted: Weekly sync",
        html_body="<p>Welcome</p>",
        outcome="accepted",
        reason="new_single",
        correlation_id="c",
        meeting_uid="u",
    )


def crash_leftovers(root: Path) -> dict[str, Path]:
    """The temp files SIGKILL leaves mid-write: an outbox mail (the syncfs path's and
    atomic_write's form), an error note, the calendar's rewrite after damage and its copy;
    and files of the same shape that are not ours."""
    outbox, failed, inbox = root / "outbox", root / "failed", root / "inbox"
    calendar = root / "calendar"
    for folder in (outbox, failed, inbox, calendar):
        folder.mkdir(parents=True, exist_ok=True)
    name = outbox_name(message(1), datetime(2026, 12, 6, 21, 5, 13, 428731, tzinfo=UTC))
    other = outbox_name(message(2), datetime(2026, 12, 6, 21, 5, 14, tzinfo=UTC))
    files = {
        "mail": outbox / f".{name}.tmp",
        "mail_pid": outbox / f".{other}.4242.tmp",
        "note": failed / ".bad.ics.error.txt.4242.tmp",
        "calendar": calendar / ".accepted.jsonl.4242.tmp",
        "calendar_copy": calendar / ".accepted.jsonl.damaged-20261206T210513Z-2.4242.tmp",
        "calendar_foreign": calendar / ".notes.4242.tmp",
        # not ours: someone's own temp file in the outbox, and any writer's in the inbox
        "foreign": outbox / ".notes.eml.tmp",
        "inbox": inbox / f".{name}.tmp",
    }
    for path in files.values():
        path.write_bytes(b"From: Video Room <vmr@example.com>\r\nSubj")  # cut short
    return files


def test_a_start_removes_what_a_crash_left_half_written_and_only_that(tmp_path: Path) -> None:
    files = crash_leftovers(tmp_path)
    spool = SpoolMailbox(tmp_path, "room", exclusive=True)
    try:
        gone = {key for key, path in files.items() if not path.exists()}
        assert gone == {"mail", "mail_pid", "note", "calendar", "calendar_copy"}
    finally:
        spool.close()


def test_a_tool_that_does_not_hold_the_spool_removes_nothing(tmp_path: Path) -> None:
    """check-config and the like open the spool without its lock: the running service may be
    writing those very files."""
    files = crash_leftovers(tmp_path)
    SpoolMailbox(tmp_path, "room").close()
    assert all(path.exists() for path in files.values())


def test_the_message_of_a_half_written_mail_is_written_again_exactly_once(
    tmp_path: Path,
) -> None:
    """The temp file never counted as sent: after the restart the notifier asks, hears "not
    delivered", and sends; the outbox then holds that message once, and a resend adds none."""
    crash_leftovers(tmp_path)
    spool = SpoolMailbox(tmp_path, "room", exclusive=True)
    try:
        assert spool.delivered(message(1)) is False
        spool.send(message(1))
        spool.send(message(1))
        assert spool.delivered(message(1)) is True
        [mail] = [p for p in spool.outbox.iterdir() if message(1).id in p.name]
        assert mail.name.endswith(f"-{message(1).id}.eml")
        assert "Welcome" in spoolkit.read_mail(mail).html
    finally:
        spool.close()


@pytest.mark.skipif(spool_module._SYNCFS is None, reason="the syncfs path writes its own temp file")
def test_a_write_that_fails_keeps_no_half_written_mail(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = SpoolMailbox(tmp_path, "room")

    def full(*_: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(spool_module.os, "replace", full)
    with pytest.raises(GatewayError):
        spool.send(message(3))
    monkeypatch.undo()
    assert os.listdir(spool.outbox) == []
    spool.close()
