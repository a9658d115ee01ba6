"""The notifier's durable queue across restarts: an id once queued is never queued again, what
is pending or failed survives, and a restart with nothing to send writes nothing (its journal
starts at the first change, carrying the state over, never appended to an old one)."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.filestate import snapshot
from vmrsched import journal
from vmrsched.outgoing import Outgoing
from vmrsched.outqueue import OutQueue, read_failed
from vmrsched.telemetry import STATE_DAMAGED, Alarms, Metrics

NOW = 1_800_000_000.0


def message(message_id: str, item: str = "item-1") -> Outgoing:
    return Outgoing(
        id=message_id,
        kind="reply",
        sender="room@example.com",
        sender_name="Video Room",
        recipients=("alice@example.com",),
        subject=f"Accepted: {message_id}",
        html_body="<p>Booked</p>",
        outcome="accepted",
        reason="new_meeting",
        correlation_id=f"c-{message_id}",
        meeting_uid=f"uid-{message_id}",
        extra={"item_id": item},
    )


def opened(directory: Path) -> OutQueue:
    return OutQueue(directory, clock=lambda: NOW)


def queue_with_history(directory: Path) -> None:
    """Delivered "sent", pending "waiting", failed "refused" (with a replacement pending)."""
    queue = opened(directory)
    queue.add([message("sent"), message("waiting"), message("refused")])
    queue.done(["sent"])
    queue.fail("refused", "ErrorInvalidRecipients", replacement=message("notice"))
    queue.close()


def state(queue: OutQueue) -> tuple[list[str], list[tuple[str, str]], bool]:
    return (
        sorted(m.id for m in queue.pending()),
        [(f.message.id, f.reason) for f in queue.failed()],
        queue.seen("sent"),
    )


def test_a_queue_that_never_queued_anything_creates_nothing(tmp_path: Path) -> None:
    directory = tmp_path / "queue" / "alpha"
    queue = opened(directory)
    queue.done(["nothing"])
    queue.fail("nothing", "no such message")
    queue.close()
    assert not directory.exists()
    queue = opened(directory)
    assert queue.add([message("first")]) == {"first"}
    queue.close()
    assert [m.id for m in opened(directory).pending()] == ["first"]


def test_a_restart_with_nothing_to_send_leaves_the_files_as_they_were(tmp_path: Path) -> None:
    queue_with_history(tmp_path)
    before = snapshot(tmp_path)
    for _ in range(3):
        queue = opened(tmp_path)
        assert state(queue) == (
            ["notice", "waiting"],
            [("refused", "ErrorInvalidRecipients")],
            True,
        )
        queue.add([message("sent")])  # seen before: not queued again, nothing to write
        queue.close()
    assert snapshot(tmp_path) == before


def test_the_first_change_after_a_restart_carries_everything_over(tmp_path: Path) -> None:
    queue_with_history(tmp_path)
    [old] = snapshot(tmp_path)
    queue = opened(tmp_path)
    assert queue.add([message("new")]) == {"new"}
    [new] = snapshot(tmp_path)
    assert new != old  # a journal of its own; the old one dropped once this one was durable
    queue.close()
    again = opened(tmp_path)
    assert state(again) == (
        ["new", "notice", "waiting"],
        [("refused", "ErrorInvalidRecipients")],
        True,
    )
    assert again.add([message("sent"), message("new")]) == {"new"}  # never queued twice
    again.close()


def test_an_old_journal_torn_by_a_crash_is_never_appended_to(tmp_path: Path) -> None:
    queue_with_history(tmp_path)
    [old] = snapshot(tmp_path)
    with open(tmp_path / old, "ab") as handle:
        handle.write(b'1234abcd {"op":"add","m":{"id":"to')  # a crash mid-write
    queue = opened(tmp_path)
    queue.done(["waiting"])
    queue.close()
    assert old not in snapshot(tmp_path)
    again = opened(tmp_path)
    assert state(again) == (["notice"], [("refused", "ErrorInvalidRecipients")], True)
    again.close()


# --- damage (DESIGN "Storage": kept aside, alarm, nothing readable lost) ----------------------


def damaged(directory: Path, needle: bytes, change: Callable[[bytes], bytes]) -> Path:
    """The queue's journal with the line holding `needle` changed by `change`."""
    [journal] = directory.glob("outgoing.*.log")
    lines = journal.read_bytes().split(b"\n")
    [index] = [i for i, line in enumerate(lines) if needle in line]
    lines[index] = change(lines[index])
    journal.write_bytes(b"\n".join(lines))
    return journal


def flip(position: int) -> Callable[[bytes], bytes]:
    def change(line: bytes) -> bytes:
        where = position if position >= 0 else len(line) + position
        return line[:where] + bytes([line[where] ^ 0x01]) + line[where + 1 :]

    return change


@pytest.fixture
def alarms() -> Alarms:
    return Alarms(Metrics())


def damage_alarm(alarms: Alarms) -> str:
    [alarm] = [a for a in alarms.active() if a.name == STATE_DAMAGED]
    return alarm.message


def test_one_damaged_byte_in_a_checksum_loses_nothing_and_is_kept_aside(
    tmp_path: Path, alarms: Alarms
) -> None:
    directory = tmp_path / "queue" / "alpha"
    queue_with_history(directory)
    journal = damaged(directory, b'"id":"waiting"', flip(2))  # in the line's checksum
    original = journal.read_bytes()
    queue = opened(directory)
    assert state(queue) == (
        ["notice", "waiting"],
        [("refused", "ErrorInvalidRecipients")],
        True,
    )
    queue.close()
    # the damaged journal is kept aside, byte for byte, and a fresh one holds what it held
    [aside] = directory.glob("outgoing.*.log.damaged-*")
    assert aside.read_bytes() == original and not journal.exists()
    assert alarms.active() and str(aside) in damage_alarm(alarms)
    again = opened(directory)
    assert state(again)[0] == ["notice", "waiting"]
    again.close()
    assert list(directory.glob("outgoing.*.log.damaged-*")) == [aside]  # nothing new


def test_a_pending_reply_on_a_damaged_line_is_never_dropped(tmp_path: Path, alarms: Alarms) -> None:
    """A damaged byte in the message itself: it cannot be trusted to go out as it is, so it
    is kept as failed (`vmrsched failed` lists it, with the reason) instead of vanishing."""
    directory = tmp_path / "queue" / "alpha"
    queue_with_history(directory)
    damaged(directory, b'"id":"waiting"', lambda line: line.replace(b"Booked", b"Bocked"))
    assert sorted(f.message.id for f in read_failed(directory)) == ["refused", "waiting"]
    queue = opened(directory)
    pending, failed, _ = state(queue)
    assert pending == ["notice"]
    reasons = dict(failed)
    assert sorted(reasons) == ["refused", "waiting"]
    assert "damaged" in reasons["waiting"] and "not sent" in reasons["waiting"]
    assert queue.seen("waiting")  # the same reply is not queued again behind the admin's back
    queue.close()
    assert sorted(f.message.id for f in read_failed(directory)) == ["refused", "waiting"]
    assert damage_alarm(alarms)


def test_a_damaged_newline_joins_two_entries_and_both_are_read(tmp_path: Path) -> None:
    directory = tmp_path / "queue" / "alpha"
    queue = opened(directory)
    queue.add([message("one"), message("two"), message("three")])
    queue.close()
    [journal] = directory.glob("outgoing.*.log")
    data = journal.read_bytes()
    first = data.index(b"\n")
    journal.write_bytes(data[:first] + b"x" + data[first + 1 :])
    queue = opened(directory)
    assert sorted(m.id for m in queue.pending()) == ["one", "three", "two"]
    queue.close()


def test_an_unreadable_line_is_said_plainly_and_the_rest_is_kept(
    tmp_path: Path, alarms: Alarms
) -> None:
    directory = tmp_path / "queue" / "alpha"
    queue_with_history(directory)
    journal = damaged(directory, b'"id":"waiting"', lambda line: line.replace(b'{"op"', b'["op"'))
    original = journal.read_bytes()
    queue = opened(directory)
    assert state(queue) == (["notice"], [("refused", "ErrorInvalidRecipients")], True)
    queue.close()
    [aside] = directory.glob("outgoing.*.log.damaged-*")
    assert aside.read_bytes() == original  # the admin can still read what the line held
    message_ = damage_alarm(alarms)
    assert str(aside) in message_ and "1 unreadable" in message_


def test_a_full_disk_loses_no_queued_reply(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`add` fails while the disk is full (the poller then leaves the item unhandled and reads
    it again); once there is room the same `add` makes the reply durable."""
    write = os.write
    full = [True]

    def refusing(fd: int, data: bytes) -> int:
        if full[0]:
            raise OSError(errno.ENOSPC, "No space left on device")
        return write(fd, data)

    queue = opened(tmp_path)
    queue.add([message("before")])
    monkeypatch.setattr(journal.os, "write", refusing)
    with pytest.raises(OSError):
        queue.add([message("reply")])
    full[0] = False
    assert queue.add([message("reply")]) == {"reply"}
    queue.close()
    assert sorted(m.id for m in opened(tmp_path).pending()) == ["before", "reply"]
