"""A message read again (after a crash, before its inbox item was marked handled; or kept in
the room's inbox while its reply waits) gets no answer that contradicts the one it got: RFC
5546 orders one meeting's messages by SEQUENCE, then DTSTAMP, and what the store kept of the
meeting after a later message (a cancellation, an occurrence changed) says the request is the
older one (docs/guarantees.md: "decided again, produces the same ids, and nothing new is
sent")."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from vmrsched.rules.meetings import (
    AliasRecord,
    Meeting,
    MeetingState,
    answer_key,
    decide,
    occurrence_key,
)

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
AID = "1b4e28ba-2fa1-41d2-883f-0016d3cca427"
PLACEHOLDER = "00000000-0000-4000-8000-000000000001"


def request(sequence: int = 0, **kw: object) -> Meeting:
    base = Meeting(
        uid="uid-1",
        method="REQUEST",
        start=NOW + timedelta(days=1),
        end=NOW + timedelta(days=1, hours=1),
        sequence=sequence,
        organizer_email="olga@example.com",
        subject="Planning",
        html_body=f"<p>TOK:-{PLACEHOLDER}#</p>",
        correlation_id="cid-1",
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def cancelled_at(sequence: int, answered_at: int = 0, reason: str = "cancelled") -> AliasRecord:
    """The alias the placeholder request at SEQUENCE `answered_at` was given (accepted, with
    the organizer update), deleted since by a cancellation of SEQUENCE `sequence` (or as
    `reason` says)."""
    return AliasRecord(
        AID,
        "vmr123456@video.example.com",
        "vmr123456",
        "deleted",
        meeting_uid="uid-1",
        sequence=sequence,
        schedule=request().schedule,
        placeholder_id=PLACEHOLDER,
        organizer="olga@example.com",
        answered={answer_key(request(answered_at)): "new_single+update"},
        reason=reason,
    )


@pytest.mark.parametrize("cancel_sequence", [1, 0], ids=["cancel-bumped", "cancel-same-seq"])
def test_a_request_read_again_after_its_cancellation_is_outdated_not_declined(
    cancel_sequence: int,
) -> None:
    """The audit's crash: a request and its CANCEL in one batch, both decided (accepted, then
    cancelled), SIGKILL before the items were marked handled. Read again, the request is older
    than the cancellation already applied: no reply (it was answered "Accepted" before; a
    "Declined: alias_deleted" now would contradict it), nothing changes."""
    d = decide(request(0), MeetingState(token_record=cancelled_at(cancel_sequence)), NOW)
    assert (d.outcome, d.reason) == ("ignored", "outdated")
    assert not d.replies and not d.organizer_update
    assert d.action.kind == "none"
    assert "cancelled" in d.detail


def test_a_request_older_than_a_cancellation_is_outdated_whether_or_not_it_was_answered() -> None:
    """SEQUENCE alone orders them (what the store keeps of an archived alias has no answers):
    a request of SEQUENCE 1 is older than the cancellation of SEQUENCE 2."""
    record = replace(cancelled_at(2), answered={})
    d = decide(request(1), MeetingState(token_record=record), NOW)
    assert (d.reason, d.replies, d.action.kind) == ("outdated", False, "none")


def test_a_newer_request_of_a_cancelled_meeting_is_still_declined_alias_deleted() -> None:
    """A request of a higher SEQUENCE than the cancellation's is news: the rules table's row
    for a deleted alias answers it."""
    d = decide(request(2), MeetingState(token_record=cancelled_at(1)), NOW)
    assert (d.outcome, d.reason) == ("declined", "alias_deleted")


def test_another_meeting_with_the_cancelled_meetings_token_is_declined_alias_deleted() -> None:
    d = decide(request(0, uid="uid-2"), MeetingState(token_record=cancelled_at(1)), NOW)
    assert (d.outcome, d.reason) == ("declined", "alias_deleted")


def test_a_request_read_again_after_an_admin_deleted_its_alias_gets_no_second_answer() -> None:
    """The admin's deletion sends its own notice; the request answered before is not answered
    again with a decline. An update of a higher SEQUENCE is told the alias is gone."""
    record = cancelled_at(0, reason="deleted by admin@example.com")
    again = decide(request(0), MeetingState(token_record=record), NOW)
    assert (again.reason, again.replies) == ("outdated", False)
    assert "deleted by admin@example.com" in again.detail
    later = decide(request(1), MeetingState(token_record=record), NOW)
    assert later.reason == "alias_deleted"


def test_an_occurrence_request_is_compared_with_the_series_cancellation() -> None:
    rid = NOW + timedelta(days=3)
    moved = request(1, recurrence_id=rid, start=rid, end=rid + timedelta(hours=1))
    d = decide(moved, MeetingState(token_record=cancelled_at(2)), NOW)
    assert d.reason == "outdated"


# --- a series read again after one of its occurrences changed ---------------------------------


def series_bound(occurrence_sequence: int) -> tuple[AliasRecord, datetime]:
    """A series accepted at SEQUENCE 0 (placeholder, organizer updated), then one occurrence
    cancelled at `occurrence_sequence`."""
    series = request(0, rrule="FREQ=DAILY;COUNT=5")
    rid = series.start + timedelta(days=2)
    record = AliasRecord(
        AID,
        "vmr123456@video.example.com",
        "vmr123456",
        "bound",
        meeting_uid="uid-1",
        sequence=0,
        occurrence_sequences={occurrence_key(rid): occurrence_sequence},
        schedule=series.schedule.with_exdate(rid),
        placeholder_id=PLACEHOLDER,
        organizer="olga@example.com",
        answered={answer_key(series): "new_recurring+update"},
    )
    return record, rid


@pytest.mark.parametrize("occurrence_sequence", [1, 0])
def test_a_series_read_again_after_an_occurrence_was_cancelled_keeps_it_cancelled(
    occurrence_sequence: int,
) -> None:
    """The same answer as the first time (the same reply and update ids, so nothing new goes
    out), and no store action: binding the series' own schedule again would bring the
    cancelled occurrence back, its window open on Pexip."""
    record, rid = series_bound(occurrence_sequence)
    d = decide(request(0, rrule="FREQ=DAILY;COUNT=5"), MeetingState(record, record), NOW)
    assert (d.outcome, d.reason) == ("accepted", "new_recurring")
    assert d.organizer_update  # the same update as the first time: queued once, by its id
    assert d.action.kind == "none"
    assert occurrence_key(rid) in d.detail


def test_a_newer_series_request_after_an_occurrence_was_cancelled_is_applied() -> None:
    record, _ = series_bound(1)
    later = request(2, rrule="FREQ=DAILY;COUNT=5", start=NOW + timedelta(days=1, hours=2))
    d = decide(
        replace(later, end=later.start + timedelta(hours=1)), MeetingState(record, record), NOW
    )
    assert (d.reason, d.action.kind) == ("edited_recurring", "bind")
