"""The notifier's durable queue across restarts: an id once queued is never queued again, what
is pending or failed survives, and a restart with nothing to send writes nothing (its journal
starts at the first change, carrying the state over, never appended to an old one)."""

from __future__ import annotations

from pathlib import Path

from tests.filestate import snapshot
from vmrsched.outgoing import Outgoing
from vmrsched.outqueue import OutQueue

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
