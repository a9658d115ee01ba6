"""Every row of the rules table in DESIGN.md, with its edges."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from vmrsched.rules import recurrence
from vmrsched.rules.meetings import (
    TEMPLATE_FOR_REASON,
    AliasRecord,
    Meeting,
    MeetingState,
    answer_key,
    decide,
    is_address,
    occurrence_key,
    recovered,
)
from vmrsched.rules.recurrence import Schedule

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
AID = "1b4e28ba-2fa1-41d2-883f-0016d3cca427"
OTHER = "6fa459ea-ee8a-4ca4-894e-db77e160355e"
TOK = "00000000-0000-4000-8000-000000000001"


def meeting(**kw: object) -> Meeting:
    base = Meeting(
        uid="uid-1",
        method="REQUEST",
        start=NOW + timedelta(days=1),
        end=NOW + timedelta(days=1, hours=1),
        sequence=0,
        organizer_name="Olga Organizer",
        organizer_email="olga@example.com",
        subject="Planning",
        html_body=f"<p>Join</p><p>PXPS:-{AID}#</p>",
        correlation_id="cid-1",
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def reserved(alias_id: str = AID) -> AliasRecord:
    return AliasRecord(alias_id, "vmr123456@video.example.com", "vmr123456", "reserved")


def bound(uid: str = "uid-1", sequence: int = 0, schedule: Schedule | None = None) -> AliasRecord:
    return AliasRecord(
        AID,
        "vmr123456@video.example.com",
        "vmr123456",
        "bound",
        meeting_uid=uid,
        sequence=sequence,
        schedule=schedule or meeting().schedule,
    )


def test_every_reason_has_the_template_named_in_the_table() -> None:
    assert TEMPLATE_FOR_REASON["invalid_alias_id"] == "reject_invalid_alias_id_text"
    assert TEMPLATE_FOR_REASON["alias_conflict"] == "reject_alias_conflict_template"
    assert TEMPLATE_FOR_REASON["cancelled"] is None and TEMPLATE_FOR_REASON["outdated"] is None


# --- declines --------------------------------------------------------------------------------


def test_no_token_is_declined_invalid_alias_id() -> None:
    d = decide(meeting(html_body="<p>no token here</p>"), MeetingState(), NOW)
    assert (d.outcome, d.reason) == ("declined", "invalid_alias_id")
    assert d.template == "reject_invalid_alias_id_text"
    assert d.action.kind == "none"


def test_unknown_pxps_id_is_declined_invalid_alias_id() -> None:
    d = decide(meeting(), MeetingState(token_record=None), NOW)
    assert (d.outcome, d.reason) == ("declined", "invalid_alias_id")


def test_deleted_alias_is_declined_alias_deleted() -> None:
    rec = replace(reserved(), status="deleted")
    d = decide(meeting(), MeetingState(token_record=rec), NOW)
    assert (d.outcome, d.reason) == ("declined", "alias_deleted")
    assert d.template == "reject_alias_deleted_text"


def test_token_pasted_into_a_second_meeting_is_alias_conflict() -> None:
    rec = bound(uid="first-meeting")
    d = decide(meeting(uid="second-meeting"), MeetingState(token_record=rec), NOW)
    assert (d.outcome, d.reason) == ("declined", "alias_conflict")
    assert d.record is rec  # the reply names the alias: {{alias}}


def test_single_meeting_in_the_past_is_declined() -> None:
    m = meeting(start=NOW - timedelta(hours=2), end=NOW - timedelta(hours=1))
    d = decide(m, MeetingState(token_record=reserved()), NOW)
    assert (d.outcome, d.reason) == ("declined", "single_in_past")


def test_meeting_ending_exactly_now_has_ended() -> None:
    m = meeting(start=NOW - timedelta(hours=1), end=NOW)
    d = decide(m, MeetingState(token_record=reserved()), NOW)
    assert d.reason == "single_in_past"


def test_meeting_ending_one_second_from_now_is_accepted() -> None:
    m = meeting(start=NOW - timedelta(hours=1), end=NOW + timedelta(seconds=1))
    d = decide(m, MeetingState(token_record=reserved()), NOW)
    assert (d.outcome, d.reason) == ("accepted", "new_single")


def test_series_entirely_in_the_past_is_declined() -> None:
    m = meeting(
        start=NOW - timedelta(days=10),
        end=NOW - timedelta(days=10) + timedelta(hours=1),
        rrule="FREQ=DAILY;COUNT=3",
    )
    d = decide(m, MeetingState(token_record=reserved()), NOW)
    assert (d.outcome, d.reason) == ("declined", "recurring_in_past")
    assert d.template == "reject_recurring_series_in_past_text"


def test_series_whose_only_future_occurrences_are_exdated_is_in_the_past() -> None:
    start = NOW - timedelta(days=1)
    m = meeting(
        start=start,
        end=start + timedelta(hours=1),
        rrule="FREQ=DAILY;COUNT=4",
        exdates=(start + timedelta(days=1), start + timedelta(days=2), start + timedelta(days=3)),
    )
    d = decide(m, MeetingState(token_record=reserved()), NOW)
    assert d.reason == "recurring_in_past"


def test_series_with_one_future_occurrence_left_is_accepted_and_reply_names_it() -> None:
    start = NOW - timedelta(days=1)
    m = meeting(
        start=start,
        end=start + timedelta(hours=1),
        rrule="FREQ=DAILY;COUNT=4",
        exdates=(start + timedelta(days=1), start + timedelta(days=2)),
    )
    d = decide(m, MeetingState(token_record=reserved()), NOW)
    assert (d.outcome, d.reason) == ("accepted", "new_recurring")
    assert d.occurrence is not None and d.occurrence.start == start + timedelta(days=3)


def test_series_with_no_end_started_years_ago_is_accepted() -> None:
    start = datetime(2001, 1, 1, 9, 0, tzinfo=ZoneInfo("Europe/London"))
    m = meeting(start=start, end=start + timedelta(minutes=30), rrule="FREQ=WEEKLY;BYDAY=MO")
    d = decide(m, MeetingState(token_record=reserved()), NOW)
    assert (d.outcome, d.reason) == ("accepted", "new_recurring")
    assert d.occurrence is not None
    assert d.occurrence.start.weekday() == 0 and d.occurrence.start.hour == 9
    assert d.occurrence.end > NOW
    assert d.action.schedule is not None and d.action.schedule.rrule


def test_anything_unexpected_is_general_error_with_correlation_id() -> None:
    # A bound record whose stored schedule has an RRULE nobody can read.
    broken = Schedule(NOW, NOW + timedelta(hours=1), rrule="FREQ=SOMETIMES")
    m = meeting(
        rrule="FREQ=SOMETIMES",
        correlation_id="corr-42",
    )
    d = decide(m, MeetingState(token_record=bound(schedule=broken)), NOW)
    assert (d.outcome, d.reason) == ("declined", "general_error")
    assert d.correlation_id == "corr-42"
    assert d.template == "reject_general_error_template"
    assert "RRULE" in d.detail


# --- accepts ---------------------------------------------------------------------------------


def test_new_single_meeting_binds_the_reserved_alias() -> None:
    d = decide(meeting(), MeetingState(token_record=reserved()), NOW)
    assert (d.outcome, d.reason) == ("accepted", "new_single")
    assert d.template == "accept_new_single_meeting_template"
    assert d.action.kind == "bind" and d.action.alias_id == AID
    assert d.action.meeting_uid == "uid-1" and d.action.sequence == 0
    assert not d.organizer_update


def test_new_recurring_series() -> None:
    m = meeting(rrule="FREQ=WEEKLY;COUNT=10")
    d = decide(m, MeetingState(token_record=reserved()), NOW)
    assert (d.outcome, d.reason) == ("accepted", "new_recurring")
    assert d.template == "accept_new_recurring_meeting_template"


def test_rdate_only_series_counts_as_recurring() -> None:
    m = meeting(rdates=(NOW + timedelta(days=3),))
    d = decide(m, MeetingState(token_record=reserved()), NOW)
    assert d.reason == "new_recurring"


def test_update_of_a_bound_single_meeting() -> None:
    rec = bound(sequence=0)
    m = meeting(sequence=1, start=NOW + timedelta(days=2), end=NOW + timedelta(days=2, hours=1))
    d = decide(m, MeetingState(token_record=rec, uid_record=rec), NOW)
    assert (d.outcome, d.reason) == ("accepted", "edited_single")
    assert d.template == "accept_edited_single_meeting_template"
    assert d.action.kind == "bind" and d.action.sequence == 1


def test_same_sequence_again_is_reprocessed_idempotently() -> None:
    """A message the store remembers answering gets the same answer again (same message ids,
    which the notifier's queue sends once); without that memory it changes nothing."""
    m = meeting(sequence=3)
    rec = replace(bound(sequence=3), answered={answer_key(m): "edited_single"})
    first = decide(m, MeetingState(rec, rec), NOW)
    second = decide(m, MeetingState(rec, rec), NOW)
    assert first == second and (first.outcome, first.reason) == ("accepted", "edited_single")
    forgotten = decide(m, MeetingState(bound(sequence=3), bound(sequence=3)), NOW)
    assert (forgotten.outcome, forgotten.reason) == ("ignored", "unchanged")


def test_update_of_a_bound_series() -> None:
    series = meeting(rrule="FREQ=DAILY;COUNT=5").schedule
    rec = bound(schedule=series)
    m = meeting(rrule="FREQ=DAILY;COUNT=8", sequence=2)
    d = decide(m, MeetingState(rec, rec), NOW)
    assert (d.outcome, d.reason) == ("accepted", "edited_recurring")


def test_update_of_one_occurrence() -> None:
    series = meeting(rrule="FREQ=DAILY;COUNT=5").schedule
    rec = bound(schedule=series)
    rid = series.start + timedelta(days=2)
    m = meeting(
        recurrence_id=rid,
        start=rid + timedelta(hours=3),
        end=rid + timedelta(hours=4),
        sequence=1,
    )
    d = decide(m, MeetingState(rec, rec), NOW)
    assert (d.outcome, d.reason) == ("accepted", "edited_occurrence")
    assert d.template == "accept_edited_occurrence_template"
    assert d.action.occurrence_key == occurrence_key(rid)
    assert d.action.schedule is not None
    assert d.action.schedule.overrides == (
        (rid, rid + timedelta(hours=3), rid + timedelta(hours=4)),
    )
    assert d.occurrence is not None and d.occurrence.start == rid + timedelta(hours=3)


def test_occurrence_moved_into_the_past_is_single_in_past() -> None:
    series = meeting(rrule="FREQ=DAILY;COUNT=5").schedule
    rec = bound(schedule=series)
    rid = series.start + timedelta(days=2)
    m = meeting(recurrence_id=rid, start=NOW - timedelta(hours=2), end=NOW - timedelta(hours=1))
    d = decide(m, MeetingState(rec, rec), NOW)
    assert d.reason == "single_in_past"


def test_lower_sequence_is_outdated_and_not_answered() -> None:
    rec = bound(sequence=5)
    d = decide(meeting(sequence=4), MeetingState(rec, rec), NOW)
    assert (d.outcome, d.reason) == ("ignored", "outdated")
    assert not d.replies and d.action.kind == "none"


def test_an_unchanged_update_is_remembered_so_an_older_request_after_it_is_outdated() -> None:
    """The rules table: a lower SEQUENCE than one already processed is `outdated`, also when
    that one changed nothing. Left unremembered, a stale SEQUENCE 0 copy read after an
    informational SEQUENCE 1 would move the booking back to its old times."""
    rec = replace(bound(sequence=0), answered={answer_key(meeting()): "new_single"})
    informational = meeting(sequence=1, html_body=f"<p>Agenda</p><p>PXPS:-{AID}#</p>")
    d = decide(informational, MeetingState(rec, rec), NOW)
    assert (d.outcome, d.reason, d.replies) == ("ignored", "unchanged", False)
    assert d.action.kind == "bind" and d.action.sequence == 1
    assert d.action.schedule == rec.schedule  # nothing about the meeting changes
    assert d.action.answer == (answer_key(informational), "unchanged")
    applied = replace(rec, sequence=1, answered={**rec.answered, "series@1": "unchanged"})
    stale = meeting(sequence=0, start=NOW + timedelta(hours=20), end=NOW + timedelta(hours=21))
    assert decide(stale, MeetingState(applied, applied), NOW).reason == "outdated"
    again = decide(informational, MeetingState(applied, applied), NOW)
    assert (again.outcome, again.reason, again.action.kind) == ("ignored", "unchanged", "none")


def test_times_moved_at_a_sequence_already_answered_are_an_edit_answered_no_second_time() -> None:
    """Not a redelivery: the stored schedule moves and the log says edited_single; the answer
    for that SEQUENCE and outcome went out once and is not sent again (same message id)."""
    first = meeting(sequence=0)
    rec = replace(bound(sequence=0), answered={answer_key(first): "new_single"})
    moved = meeting(sequence=0, start=NOW + timedelta(days=3), end=NOW + timedelta(days=3, hours=1))
    d = decide(moved, MeetingState(rec, rec), NOW)
    assert (d.outcome, d.reason) == ("accepted", "edited_single")
    assert d.action.kind == "bind" and d.action.schedule == moved.schedule


def test_a_cancelled_occurrence_requested_again_is_back_in_the_schedule() -> None:
    """RFC 5546: a REQUEST for an occurrence the organizer cancelled re-instates it; an accept
    must mean the conference is scheduled for it again."""
    series = meeting(rrule="FREQ=DAILY;COUNT=5").schedule
    rid = series.start + timedelta(days=2)
    cancelled = replace(
        bound(schedule=series.with_exdate(rid)), occurrence_sequences={occurrence_key(rid): 1}
    )
    again = meeting(recurrence_id=rid, start=rid, end=rid + timedelta(hours=1), sequence=2)
    d = decide(again, MeetingState(cancelled, cancelled), NOW)
    assert (d.outcome, d.reason) == ("accepted", "edited_occurrence")
    assert d.action.schedule is not None and rid not in d.action.schedule.exdates
    assert recurrence.occurrence_of(d.action.schedule, rid) is not None
    assert recurrence.occurrence_of(cancelled.schedule or series, rid) is None


def test_outdated_occurrence_edit_compares_with_that_occurrence() -> None:
    series = meeting(rrule="FREQ=DAILY;COUNT=5").schedule
    rid = series.start + timedelta(days=1)
    rec = replace(bound(schedule=series, sequence=1), occurrence_sequences={occurrence_key(rid): 4})
    old = meeting(recurrence_id=rid, start=rid, end=rid + timedelta(hours=1), sequence=3)
    assert decide(old, MeetingState(rec, rec), NOW).reason == "outdated"
    newer = replace(old, sequence=4, start=rid + timedelta(hours=1), end=rid + timedelta(hours=2))
    assert decide(newer, MeetingState(rec, rec), NOW).reason == "edited_occurrence"
    assert decide(replace(old, sequence=4), MeetingState(rec, rec), NOW).reason == "unchanged"


# --- the TOK placeholder path -----------------------------------------------------------------


def test_placeholder_token_not_yet_bound_binds_the_drawn_alias_and_updates_the_organizer() -> None:
    m = meeting(html_body=f"<p>Details will follow</p><p>TOK:-{TOK}#</p>")
    fresh = reserved()
    d = decide(m, MeetingState(fresh=fresh), NOW)
    assert (d.outcome, d.reason) == ("accepted", "new_single")
    assert d.organizer_update and d.replies and d.record == fresh
    assert d.action.kind == "bind_new" and d.action.placeholder_id == TOK
    assert d.action.alias_id == fresh.alias_id


def test_placeholder_token_without_a_drawn_alias_is_a_general_error() -> None:
    m = meeting(html_body=f"TOK:-{TOK}#")
    d = decide(m, MeetingState(), NOW)
    assert (d.outcome, d.reason, d.action.kind) == ("declined", "general_error", "none")


def test_placeholder_token_on_a_series() -> None:
    m = meeting(html_body=f"TOK:-{TOK}#", rrule="FREQ=WEEKLY")
    d = decide(m, MeetingState(fresh=reserved()), NOW)
    assert d.reason == "new_recurring" and d.organizer_update


def test_recovery_binds_the_drawn_alias_without_a_reply() -> None:
    fresh = reserved()
    d = recovered(meeting(), MeetingState(fresh=fresh), NOW)
    assert (d.outcome, d.reason, d.action.kind) == ("accepted", "new_single", "bind_new")
    assert d.organizer_update and not d.replies and d.action.alias_id == fresh.alias_id
    past = meeting(start=NOW - timedelta(days=2), end=NOW - timedelta(days=2, hours=-1))
    assert recovered(past, MeetingState(fresh=fresh), NOW).action.kind == "none"
    assert recovered(meeting(), MeetingState(), NOW).reason == "general_error"


def test_placeholder_already_bound_to_this_meeting_is_an_edit() -> None:
    rec = replace(bound(sequence=0), placeholder_id=TOK)
    later = NOW + timedelta(days=2)
    m = meeting(html_body=f"TOK:-{TOK}#", sequence=1, start=later, end=later + timedelta(hours=1))
    d = decide(m, MeetingState(rec, rec), NOW)
    assert (d.outcome, d.reason) == ("accepted", "edited_single")
    assert not d.organizer_update


def test_placeholder_bound_to_another_meeting_is_a_conflict() -> None:
    rec = replace(bound(uid="other"), placeholder_id=TOK)
    d = decide(meeting(html_body=f"TOK:-{TOK}#"), MeetingState(token_record=rec), NOW)
    assert d.reason == "alias_conflict"


def test_placeholder_in_the_past_is_declined() -> None:
    m = meeting(html_body=f"TOK:-{TOK}#", start=NOW - timedelta(hours=3), end=NOW)
    assert decide(m, MeetingState(), NOW).reason == "single_in_past"


# --- cancellations ---------------------------------------------------------------------------


def test_cancel_of_a_bound_meeting_deletes_the_conference_without_reply() -> None:
    rec = bound(sequence=0)
    d = decide(meeting(method="CANCEL", sequence=1), MeetingState(uid_record=rec), NOW)
    assert (d.outcome, d.reason) == ("ignored", "cancelled")
    assert not d.replies
    assert d.action.kind == "cancel" and d.action.alias_id == AID


def test_cancel_of_one_occurrence_removes_only_that_occurrence() -> None:
    series = meeting(rrule="FREQ=DAILY;COUNT=5").schedule
    rec = bound(schedule=series)
    rid = series.start + timedelta(days=1)
    m = meeting(method="CANCEL", recurrence_id=rid, start=rid, end=rid + timedelta(hours=1))
    d = decide(m, MeetingState(uid_record=rec), NOW)
    assert d.action.kind == "cancel_occurrence"
    assert d.action.schedule is not None and rid in d.action.schedule.exdates


def test_cancel_of_an_unknown_meeting_does_nothing() -> None:
    d = decide(meeting(method="CANCEL"), MeetingState(), NOW)
    assert (d.outcome, d.reason, d.action.kind) == ("ignored", "cancelled", "none")


def test_older_cancel_is_outdated() -> None:
    rec = bound(sequence=4)
    d = decide(meeting(method="CANCEL", sequence=2), MeetingState(uid_record=rec), NOW)
    assert d.reason == "outdated" and d.action.kind == "none"


def test_cancel_then_reuse_of_the_token_is_alias_deleted() -> None:
    rec = bound(sequence=0)
    cancel = decide(meeting(method="CANCEL", sequence=1), MeetingState(uid_record=rec), NOW)
    assert cancel.action.kind == "cancel"
    after = replace(rec, status="deleted")
    reuse = decide(meeting(uid="new-meeting"), MeetingState(token_record=after), NOW)
    assert reuse.reason == "alias_deleted"


# --- binding a different alias to an already bound meeting ------------------------------------


def test_new_token_in_a_bound_meeting_rebinds_and_releases_the_old_alias() -> None:
    old = bound()
    new = reserved(OTHER)
    m = meeting(html_body=f"PXPS:-{OTHER}#", sequence=1)
    d = decide(m, MeetingState(token_record=new, uid_record=old), NOW)
    assert (d.outcome, d.reason) == ("accepted", "edited_single")
    assert d.action.alias_id == OTHER and d.action.release_alias_id == AID


@pytest.mark.parametrize(
    "body",
    [
        f"PXPS:-{AID}#",
        f"<p>PXPS:-<span>{AID}</span>#</p>",
        f"PXPS:-{AID.upper()}#",
        f"text before PXPS:-{AID}# and TOK:-{TOK}# after",
    ],
)
def test_token_found_in_varied_bodies(body: str) -> None:
    d = decide(meeting(html_body=body), MeetingState(token_record=reserved()), NOW)
    assert d.reason == "new_single" and d.action.alias_id == AID


def test_occurrence_edit_ending_exactly_now_has_ended() -> None:
    series = meeting(rrule="FREQ=DAILY;COUNT=5").schedule
    rec = bound(schedule=series)
    rid = series.start + timedelta(days=2)
    m = meeting(recurrence_id=rid, start=NOW - timedelta(hours=1), end=NOW, sequence=1)
    assert decide(m, MeetingState(rec, rec), NOW).reason == "single_in_past"


# --- a booking belongs to its organizer --------------------------------------------------------

OLGA = "olga@example.com"
MALLORY = "mallory@evil.example"
DELEGATE = "dan.delegate@example.com"


def owned(**kw: object) -> MeetingState:
    """Olga's bound meeting, as the store shows it to a message with its UID and token."""
    rec = replace(bound(), **{"organizer": OLGA, **kw})  # type: ignore[arg-type]
    return MeetingState(token_record=rec, uid_record=rec)


def moved(**kw: object) -> Meeting:
    """An update of Olga's meeting (a day later), with `kw` saying who sent it."""
    return meeting(
        sequence=1, start=NOW + timedelta(days=2), end=NOW + timedelta(days=2, hours=1), **kw
    )


def test_not_organizer_has_no_template_and_no_reply() -> None:
    assert TEMPLATE_FOR_REASON["not_organizer"] is None
    d = decide(moved(organizer_email=MALLORY), owned(), NOW)
    assert (d.outcome, d.reason, d.replies) == ("ignored", "not_organizer", False)
    assert d.action.kind == "none"


def test_a_cancellation_from_someone_else_changes_nothing_and_names_both() -> None:
    d = decide(meeting(method="CANCEL", sequence=1, organizer_email=MALLORY), owned(), NOW)
    assert (d.reason, d.action.kind, d.replies) == ("not_organizer", "none", False)
    assert MALLORY in d.detail and OLGA in d.detail


def test_an_update_from_someone_else_changes_nothing() -> None:
    d = decide(moved(organizer_email=MALLORY, organizer_name="Olga Organizer"), owned(), NOW)
    assert (d.reason, d.action.kind) == ("not_organizer", "none")


def test_someone_else_is_refused_before_being_outdated_or_unchanged() -> None:
    state = owned(sequence=5)
    assert decide(meeting(organizer_email=MALLORY), state, NOW).reason == "not_organizer"
    assert decide(meeting(organizer_email=OLGA), state, NOW).reason == "outdated"


def test_the_organizer_compares_without_case() -> None:
    d = decide(
        moved(organizer_email="Olga@EXAMPLE.com", mail_from="OLGA@example.com"), owned(), NOW
    )
    assert (d.outcome, d.reason) == ("accepted", "edited_single")


def test_a_delegate_acting_for_the_organizer_may_update_and_cancel() -> None:
    by_delegate = {"organizer_sent_by": DELEGATE, "mail_from": OLGA, "mail_sender": DELEGATE}
    assert decide(moved(**by_delegate), owned(), NOW).reason == "edited_single"
    cancel = meeting(method="CANCEL", sequence=1, **by_delegate)  # type: ignore[arg-type]
    assert decide(cancel, owned(), NOW).action.kind == "cancel"


def test_a_first_request_binds_whoever_sends_it() -> None:
    d = decide(meeting(organizer_email=MALLORY), MeetingState(token_record=reserved()), NOW)
    assert (d.outcome, d.reason) == ("accepted", "new_single")


def test_a_meeting_handed_over_counts_only_when_sent_by_its_organizer() -> None:
    new = "nina@example.com"
    assert decide(moved(organizer_email=new), owned(), NOW).reason == "not_organizer"
    handed = moved(organizer_email=new, organizer_sent_by=OLGA, mail_from=new, mail_sender=OLGA)
    assert decide(handed, owned(), NOW).reason == "edited_single"


@pytest.mark.parametrize(
    "forged",
    [
        pytest.param({"mail_from": MALLORY}, id="a mail Mallory sent herself"),
        pytest.param({"mail_from": MALLORY, "mail_sender": MALLORY}, id="Sender Mallory"),
        pytest.param({}, id="a bare .ics"),
    ],
)
@pytest.mark.parametrize("method", ["REQUEST", "CANCEL"])
def test_a_hand_over_claimed_by_sent_by_alone_is_not_the_organizers(
    forged: dict[str, str], method: str
) -> None:
    """SENT-BY is text anyone can write into a calendar: `ORGANIZER;SENT-BY=olga:mallory`
    from Mallory's own mailbox would otherwise move or cancel Olga's booking."""
    m = moved(method=method, organizer_email=MALLORY, organizer_sent_by=OLGA, **forged)
    d = decide(m, owned(), NOW)
    assert (d.reason, d.action.kind) == ("not_organizer", "none")


def test_addresses_compare_without_ascii_case_only() -> None:
    """A Unicode case fold would make a look-alike (the Kelvin sign) the organizer."""
    assert decide(moved(organizer_email="OLGA@example.COM"), owned(), NOW).reason == "edited_single"
    look_alike = moved(organizer_email="\u212aate@example.com")  # KELVIN SIGN, then "ate"
    assert decide(look_alike, owned(organizer="kate@example.com"), NOW).reason == "not_organizer"


@pytest.mark.parametrize(
    ("mail_from", "mail_sender", "sent_by"),
    [
        pytest.param(MALLORY, "", "", id="from someone else"),
        pytest.param(OLGA, MALLORY, "", id="sender someone else"),
        pytest.param("", "", "", id="a mail without From"),
        pytest.param("olga@example.com, mallory@evil.example", "", "", id="From a list"),
        # a delegate is one Exchange lets send From the organizer: From the delegate is not
        pytest.param(MALLORY, MALLORY, MALLORY, id="self-declared delegate"),
    ],
)
def test_a_mail_counts_only_from_the_organizer_or_their_delegate(
    mail_from: str, mail_sender: str, sent_by: str
) -> None:
    m = moved(mail_from=mail_from, mail_sender=mail_sender, organizer_sent_by=sent_by)
    assert m.organizer_email == OLGA  # ORGANIZER says Olga: the mail says otherwise
    d = decide(m, owned(), NOW)
    assert d.reason == "not_organizer"
    assert (mail_sender or mail_from or "mail From (none)") in d.detail


def test_without_a_mail_only_organizer_and_sent_by_say_who_sent_it() -> None:
    assert moved().mail_from is None  # a bare .ics
    assert decide(moved(), owned(), NOW).reason == "edited_single"
    assert decide(moved(organizer_sent_by=DELEGATE), owned(), NOW).reason == "edited_single"


def test_a_booking_that_names_no_organizer_cannot_be_checked() -> None:
    assert (
        decide(moved(organizer_email=MALLORY), owned(organizer=""), NOW).reason == "edited_single"
    )


@pytest.mark.parametrize(
    ("value", "one"),
    [
        ("olga@example.com", True),
        ("Olga.O+tag@sub.example.co.uk", True),
        ("jörg@bücher.example", True),
        ("", False),
        ("olga", False),
        ("olga@example.com,mallory@evil.example", False),
        ("olga@example.com,mailto:mallory@evil.example", False),
        ("olga@example.com;mallory@evil.example", False),
        ("Olga <olga@example.com>", False),
        ("olga@example.com mallory@evil.example", False),
        ("olga@example.com\nBcc: mallory@evil.example", False),
        ("olga@@example.com", False),
        ("a@" + "b" * 400, False),
    ],
)
def test_an_organizer_is_one_address(value: str, one: bool) -> None:
    assert is_address(value) is one


def test_a_finished_meeting_found_by_its_token_is_still_its_organizers() -> None:
    archived = replace(bound(), organizer=OLGA, schedule=None)  # the store's archived view
    state = MeetingState(token_record=archived)
    assert decide(moved(organizer_email=MALLORY), state, NOW).reason == "not_organizer"
    assert decide(moved(), state, NOW).reason == "edited_single"
