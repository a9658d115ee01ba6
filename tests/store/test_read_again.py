"""What the store keeps after a later message lets the rules know a request read again for the
older one, on both backends and after the alias moved to the archive (a request whose reply
waits, kept in the room's inbox, may be read again after the hourly sweep archived it)."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest

from tests.store.test_store import NOW, Clock, Opener
from vmrsched.rules.meetings import Decision, Meeting, decide
from vmrsched.rules.recurrence import occurrence_of
from vmrsched.store import StoreWrites, decode_schedule

PLACEHOLDER = "TOK:-00000000-0000-4000-8000-0000000000aa#"


def handle(store: StoreWrites, message: Meeting) -> Decision:
    """As the allocator does: the store's view, the decision, its action applied, durable."""
    state = store.state_for(message.token, message.uid, ("vmr", 6, "video.example.com"))
    decision = decide(message, state, NOW)
    if decision.action.kind != "none":
        store.apply(decision.action, {"name": "Planning"})
    store.commit()
    return decision


def placeholder_request(**kw: object) -> Meeting:
    start = NOW + timedelta(days=1)
    base = Meeting(
        uid="uid-1",
        method="REQUEST",
        start=start,
        end=start + timedelta(hours=1),
        organizer_email="olga@example.com",
        html_body=f"<p>{PLACEHOLDER}</p>",
        correlation_id="cid",
    )
    return replace(base, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("cancel_sequence", [1, 0])
def test_a_request_read_again_after_its_cancellation_stays_answered_once(
    make: Opener, cancel_sequence: int
) -> None:
    store = make()
    request = placeholder_request()
    cancel = replace(request, method="CANCEL", sequence=cancel_sequence)
    assert handle(store, request).reason == "new_single"
    assert handle(store, cancel).action.kind == "cancel"
    # read again (the crash came before the two items were marked handled), in their order
    again = handle(store, request)
    assert (again.outcome, again.reason, again.replies) == ("ignored", "outdated", False)
    assert handle(store, cancel).action.kind == "none"  # nothing left to cancel


def test_a_request_older_than_its_cancellation_is_outdated_after_archiving_and_a_restart(
    make: Opener,
) -> None:
    clock = Clock()
    store = make(clock)
    request = placeholder_request()
    handle(store, request)
    handle(store, replace(request, method="CANCEL", sequence=1))
    assert store.sweep() == 1  # the cancelled alias moves to the archive
    store.close()
    again = make(clock)
    d = handle(again, request)
    assert (d.reason, d.replies) == ("outdated", False)
    assert handle(again, replace(request, sequence=2)).reason == "alias_deleted"


def test_a_series_read_again_after_an_occurrence_was_cancelled_keeps_that_occurrence_cancelled(
    make: Opener,
) -> None:
    store = make()
    series = placeholder_request(rrule="FREQ=DAILY;COUNT=5")
    rid = series.start + timedelta(days=2)
    occurrence = replace(
        series,
        method="CANCEL",
        sequence=1,
        rrule=None,
        recurrence_id=rid,
        start=rid,
        end=rid + timedelta(hours=1),
    )
    first = handle(store, series)
    assert (first.reason, first.organizer_update) == ("new_recurring", True)
    assert handle(store, occurrence).action.kind == "cancel_occurrence"
    again = handle(store, series)
    assert (again.outcome, again.reason, again.organizer_update) == (
        "accepted",
        "new_recurring",
        True,
    )  # the same answer: the same reply and update ids, queued once
    record = store.by_meeting_uid("uid-1")
    assert record is not None
    assert occurrence_of(decode_schedule(record["schedule"]), rid) is None  # still cancelled
