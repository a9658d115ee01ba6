from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from vmrsched.rules import recurrence
from vmrsched.rules.recurrence import Schedule

LONDON = ZoneInfo("Europe/London")


def weekly(start: datetime, rule: str = "FREQ=WEEKLY") -> Schedule:
    return Schedule(start, start + timedelta(hours=1), rrule=rule)


def test_weekly_meeting_keeps_its_wall_clock_time_across_dst() -> None:
    start = datetime(2026, 10, 19, 9, 0, tzinfo=LONDON)  # BST
    occ = recurrence.next_occurrence(weekly(start), datetime(2026, 10, 27, tzinfo=UTC))
    assert occ is not None and occ.start.hour == 9 and occ.start.utcoffset() == timedelta(0)


def test_infinite_series_has_no_last_end() -> None:
    assert recurrence.last_end(weekly(datetime(2026, 1, 5, 9, tzinfo=UTC))) is None


def test_count_and_until_series_end() -> None:
    start = datetime(2026, 1, 5, 9, tzinfo=UTC)
    assert recurrence.last_end(weekly(start, "FREQ=DAILY;COUNT=3")) == start + timedelta(
        days=2, hours=1
    )
    until = weekly(start, "FREQ=DAILY;UNTIL=20260107T090000Z")
    assert recurrence.last_end(until) == start + timedelta(days=2, hours=1)


def test_rrule_repairs_seen_in_the_wild() -> None:
    start = datetime(2015, 7, 3, 10, tzinfo=ZoneInfo("Europe/Berlin"))
    assert (
        recurrence.normalise_rrule("FREQ=DAILY;UNTIL=20150722T080000Z;BYDAY=MO, TU, WE", start)
        == "FREQ=DAILY;UNTIL=20150722T080000Z;BYDAY=MO,TU,WE"
    )
    # a floating UNTIL next to a zoned start is read in the start's zone
    assert recurrence.normalise_rrule("FREQ=DAILY;UNTIL=20150722T100000", start) == (
        "FREQ=DAILY;UNTIL=20150722T080000Z"
    )
    assert recurrence.normalise_rrule("FREQ=DAILY;UNTIL=20150722", start) == (
        "FREQ=DAILY;UNTIL=20150722T215959Z"
    )


def test_overrides_and_exdates() -> None:
    start = datetime(2026, 12, 1, 9, tzinfo=UTC)
    series = weekly(start, "FREQ=DAILY;COUNT=3")
    second = start + timedelta(days=1)
    moved = series.with_override(second, second + timedelta(hours=5), second + timedelta(hours=6))
    after_first = start + timedelta(hours=2)
    occ = recurrence.next_occurrence(moved, after_first)
    assert occ is not None and occ.start == second + timedelta(hours=5)
    gone = moved.with_exdate(second)
    occ = recurrence.next_occurrence(gone, after_first)
    assert occ is not None and occ.start == start + timedelta(days=2)
    assert gone.overrides == ()
    # a cancellation applied again (a copy of the CANCEL, a message read again after a
    # crash), in another zone even, excludes the occurrence once
    again = gone.with_exdate(second.astimezone(LONDON)).with_exdate(second)
    assert again.exdates == (second,)


def test_an_override_moved_before_other_occurrences_is_found_first() -> None:
    start = datetime(2026, 12, 1, 9, tzinfo=UTC)
    series = weekly(start, "FREQ=DAILY;COUNT=5")
    last = start + timedelta(days=4)
    early = series.with_override(
        last, start + timedelta(days=1, hours=-3), start + timedelta(days=1, hours=-2)
    )
    occ = recurrence.next_occurrence(early, start + timedelta(hours=2))
    assert occ is not None and occ.recurrence_id == last


def test_live_at_uses_join_windows() -> None:
    start = datetime(2026, 12, 1, 9, tzinfo=UTC)
    s = Schedule(start, start + timedelta(hours=1))
    before, after = timedelta(minutes=30), timedelta(minutes=60)
    assert recurrence.live_at(s, start - timedelta(minutes=30), before, after)
    assert not recurrence.live_at(s, start - timedelta(minutes=31), before, after)
    assert recurrence.live_at(s, start + timedelta(hours=2), before, after)
    assert not recurrence.live_at(s, start + timedelta(hours=2, seconds=1), before, after)
    series = weekly(start)
    assert recurrence.live_at(series, start + timedelta(weeks=50, minutes=10), before, after)
    assert not recurrence.live_at(series, start + timedelta(weeks=50, hours=3), before, after)


def test_rdate_series() -> None:
    start = datetime(2026, 12, 1, 9, tzinfo=UTC)
    extra = start + timedelta(days=10)
    s = Schedule(start, start + timedelta(hours=1), rdates=(extra,))
    assert s.recurring
    occ = recurrence.next_occurrence(s, start + timedelta(days=1))
    assert occ is not None and occ.start == extra
    assert recurrence.last_end(s) == extra + timedelta(hours=1)


def test_json_round_trip_keeps_zones() -> None:
    start = datetime(2026, 3, 27, 9, tzinfo=LONDON)
    s = Schedule(
        start,
        start + timedelta(hours=1),
        rrule="FREQ=DAILY;COUNT=5",
        exdates=(start + timedelta(days=1),),
        overrides=(
            (
                start + timedelta(days=2),
                start + timedelta(days=2, hours=1),
                start + timedelta(days=2, hours=2),
            ),
        ),
    )
    back = recurrence.from_json(recurrence.to_json(s))
    assert back == s and back.start.tzinfo == LONDON
    # across the DST change (29 March) the series stays at 09:00 local time
    occ = recurrence.next_occurrence(back, datetime(2026, 3, 30, 0, tzinfo=UTC))
    assert occ is not None and occ.start.hour == 9
