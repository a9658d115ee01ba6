"""The spool's folders lose nothing: a second file of a name already handled keeps the first (in
processed/ and in failed/, each with its own error note)."""

from __future__ import annotations

from pathlib import Path

from tests import spoolkit
from vmrsched.mailbox.spool import SpoolMailbox


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
