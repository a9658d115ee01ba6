"""The notifier's durable queue across restarts: an id once queued is never queued again, what
is pending or failed survives, and a restart with nothing to send writes nothing (its journal
starts at the first change, carrying the state over, never appended to an old one).

What the queue promises is tested on both backends (`reopen`: the journal, and PostgreSQL when
its server binaries are installed); the journal's own file format, damage and full disk below
them. PostgreSQL's own promises (takeover, restarts) are in tests/postgres/test_outqueue_pg.py."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.filestate import snapshot
from vmrsched.outgoing import Outgoing
from vmrsched.postgres import migrations
from vmrsched.postgres import outqueue as pg_outqueue
from vmrsched.store import journal, outqueue
from vmrsched.store.outqueue import SEEN_DAYS, MessageQueue, OutQueue, read_failed
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
    history(opened(directory))


def history(queue: MessageQueue) -> None:
    queue.add([message("sent"), message("waiting"), message("refused")])
    queue.done(["sent"])
    queue.fail("refused", "ErrorInvalidRecipients", replacement=message("notice"))
    queue.close()


def state(queue: MessageQueue) -> tuple[list[str], list[tuple[str, str]], bool]:
    return (
        sorted(m.id for m in queue.pending()),
        [(f.message.id, f.reason) for f in queue.failed()],
        queue.seen("sent"),
    )


# --- what the queue promises, on both backends ---------------------------------------------

Opener = Callable[..., MessageQueue]


@pytest.fixture(params=["journal", "postgresql"])
def reopen(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    """Opens integration alpha's queue (again: as after a restart), on one backend; the
    clock is NOW unless given."""
    made: list[MessageQueue] = []
    if request.param == "journal":

        def make(clock: Callable[[], float] = lambda: NOW) -> MessageQueue:
            return OutQueue(tmp_path / "queue" / "alpha", clock=clock)

    else:
        connect = request.getfixturevalue("connect")  # skipped without the server binaries
        with connect() as conn:
            migrations.migrate(conn)

        def make(clock: Callable[[], float] = lambda: NOW) -> MessageQueue:
            return pg_outqueue.DatabaseOutQueue(connect, "alpha", clock=clock)

    def opener(*args: Any, **kwargs: Any) -> MessageQueue:
        queue = make(*args, **kwargs)
        made.append(queue)
        return queue

    yield opener
    for queue in made:
        queue.close()


def test_an_id_once_queued_is_never_queued_again(reopen: Opener) -> None:
    queue = reopen()
    assert len(queue) == 0 and not queue.seen("a")
    assert queue.add([message("a"), message("b")]) == {"a", "b"}
    assert queue.add([message("a")]) == {"a"}  # pending still, for the same item
    assert [m.id for m in queue.pending()] == ["a", "b"] and len(queue) == 2
    queue.done(["a"])
    assert queue.add([message("a")]) == set()  # delivered: seen, never queued again
    assert queue.seen("a") and queue.seen("b")
    queue.close()
    again = reopen()
    assert again.add([message("a"), message("b"), message("c")]) == {"b", "c"}
    assert [m.id for m in again.pending()] == ["b", "c"]
    assert again.seen("a")


def test_add_names_only_what_is_pending_for_the_same_item(reopen: Opener) -> None:
    """The poller marks an item handled only when the reply pending is the one for it."""
    queue = reopen()
    assert queue.add([message("x", item="item-1")]) == {"x"}
    assert queue.add([message("x", item="item-2")]) == set()
    assert [m.extra["item_id"] for m in queue.pending()] == ["item-1"]
    # one id twice in one call: the first copy is queued, the second names it when its item
    # is the same
    assert queue.add([message("y", item="one"), message("y", item="two")]) == {"y"}
    assert [m.extra["item_id"] for m in queue.pending() if m.id == "y"] == ["one"]
    assert queue.add([]) == set()


def test_pending_failed_and_seen_survive_a_restart(reopen: Opener) -> None:
    history(reopen())
    again = reopen()
    assert state(again) == (["notice", "waiting"], [("refused", "ErrorInvalidRecipients")], True)
    assert [m.id for m in again.pending()] == ["waiting", "notice"]  # in queue order
    [failed] = again.failed()
    assert failed.message == message("refused") and failed.at == NOW
    assert again.add([message("sent"), message("refused"), message("new")]) == {"new"}
    assert again.pending() == [message("waiting"), message("notice"), message("new")]


def test_a_failure_keeps_the_message_and_queues_its_replacement_once(reopen: Opener) -> None:
    queue = reopen()
    queue.add([message("a"), message("b"), message("old-notice")])
    queue.fail("nothing", "no such message")  # not queued: nothing happens
    queue.fail("a", "refused", replacement=message("notice"))
    assert [(f.message.id, f.reason) for f in queue.failed()] == [("a", "refused")]
    assert [m.id for m in queue.pending()] == ["b", "old-notice", "notice"]
    queue.done(["old-notice"])
    queue.fail("b", "refused too", replacement=message("old-notice"))  # seen: not again
    assert [m.id for m in queue.pending()] == ["notice"]
    queue.fail("a", "twice")  # failed already, not pending: nothing happens
    assert [(f.message.id, f.reason) for f in queue.failed()] == [
        ("a", "refused"),
        ("b", "refused too"),
    ]
    queue.close()
    assert [(f.message.id, f.reason) for f in reopen().failed()] == [
        ("a", "refused"),
        ("b", "refused too"),
    ]


def test_an_admin_retries_and_discards(reopen: Opener) -> None:
    now = [NOW]
    queue = reopen(clock=lambda: now[0])
    queue.add([message("a"), message("b"), message("c")])
    queue.fail("a", "refused")
    now[0] += 60
    assert not queue.retry("b")  # pending, not failed
    assert not queue.retry("nothing") and not queue.discard("nothing")
    assert queue.retry("a")
    assert queue.failed() == [] and [m.id for m in queue.pending()] == ["b", "c", "a"]
    queued, failed = queue.contents()
    assert [(q.message.id, q.at) for q in queued] == [("b", NOW), ("c", NOW), ("a", NOW + 60)]
    assert failed == []
    queue.fail("c", "refused")
    assert queue.discard("c")  # a failed one
    assert queue.discard("b")  # a queued one
    assert not queue.discard("b")
    assert queue.add([message("b"), message("c")]) == set()  # dropped for good: still seen
    queue.close()
    again = reopen(clock=lambda: now[0])
    assert [m.id for m in again.pending()] == ["a"] and again.failed() == []
    assert again.seen("b") and again.seen("c")


def test_contents_lists_the_queue_oldest_first(reopen: Opener) -> None:
    now = [NOW]
    queue = reopen(clock=lambda: now[0])
    for name in ("first", "second", "third"):
        queue.add([message(name)])
        now[0] += 1
    queue.fail("first", "refused")
    queue.retry("first")  # back in the queue: queued again, now
    queued, failed = queue.contents()
    assert [(q.message.id, q.at) for q in queued] == [
        ("second", NOW + 1),
        ("third", NOW + 2),
        ("first", NOW + 3),
    ]
    assert failed == [] and queued[0].message == message("second")


def test_seen_ids_are_forgotten_after_seen_days(reopen: Opener) -> None:
    now = [NOW]
    queue = reopen(clock=lambda: now[0])
    queue.add([message("old")])
    queue.done(["old"])
    queue.close()
    now[0] += (SEEN_DAYS + 1) * 86400
    later = reopen(clock=lambda: now[0])
    later.add([message("new")])
    assert not later.seen("old") and later.seen("new")
    assert later.add([message("old")]) == {"old"}  # a month on, the same id is a new message


def test_failures_beyond_failed_max_forget_the_oldest(
    reopen: Opener, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(outqueue, "FAILED_MAX", 2)
    monkeypatch.setattr(pg_outqueue, "FAILED_MAX", 2)
    queue = reopen()
    queue.add([message(name) for name in "abcd"])
    for name in "abc":
        queue.fail(name, f"refused {name}")
    assert [f.message.id for f in queue.failed()] == ["b", "c"]
    assert queue.seen("a")
    queue.close()
    assert [f.message.id for f in reopen().failed()] == ["b", "c"]


def test_done_forgets_only_what_is_queued(reopen: Opener) -> None:
    queue = reopen()
    queue.add([message("a"), message("b")])
    queue.fail("b", "refused")
    queue.done(i for i in ["a", "b", "nothing", "a"])  # any iterable; once each
    assert queue.pending() == [] and [f.message.id for f in queue.failed()] == ["b"]
    queue.done([])
    queue.close()
    again = reopen()
    assert again.pending() == [] and len(again) == 0 and again.seen("a")


# --- the journal's own files ------------------------------------------------------------------


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
