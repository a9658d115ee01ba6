"""When a meeting happens: a schedule (first occurrence, RRULE/RDATE/EXDATE, moved occurrences) and
the questions the service asks of it (is any occurrence still to come, is one live at time t).

Series may be infinite, so nothing here expands a whole series: every question is answered by
stepping from a point in time (dateutil's `after`/`between`). Times expand in the event's own time
zone so that a 10:00 weekly meeting stays at 10:00 across daylight-saving changes.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from dateutil import rrule as du_rrule

# Safety cap for series that never yield an occurrence matching a question (e.g. every
# occurrence EXDATEd): stop stepping after this many candidates.
MAX_STEPS = 10_000
# Every walk over a rule starts at DTSTART (that is how RRULEs are defined) and takes at most
# this many steps; a series that needs more to answer a question is refused (SECONDLY rules,
# COUNT=1000000000, a daily series started centuries ago). Each walk is linear: dateutil's
# iterator is advanced, never restarted.
MAX_WALK = 20_000
# How far ahead the service looks for the end of a series (`last_end`); beyond it a series is
# treated as open-ended. Integrations set their own (booking_horizon_days).
DEFAULT_HORIZON = timedelta(days=730)


class RecurrenceError(ValueError):
    """An RRULE that cannot be understood."""


@dataclass(frozen=True, slots=True)
class Occurrence:
    recurrence_id: datetime  # the original start (identifies the occurrence)
    start: datetime
    end: datetime


@dataclass(frozen=True)
class Schedule:
    start: datetime
    end: datetime
    rrule: str | None = None
    rdates: tuple[datetime, ...] = ()
    exdates: tuple[datetime, ...] = ()
    # recurrence-id (UTC ISO string) -> (start, end) for occurrences moved by an edit
    overrides: tuple[tuple[datetime, datetime, datetime], ...] = field(default=())

    def __post_init__(self) -> None:
        if self.start.tzinfo is None or self.end.tzinfo is None:
            raise ValueError("schedule times must be time-zone aware")
        if self.end < self.start:
            raise ValueError("meeting ends before it starts")

    @property
    def recurring(self) -> bool:
        return bool(self.rrule or self.rdates)

    @property
    def duration(self) -> timedelta:
        return self.end - self.start

    def with_override(self, recurrence_id: datetime, start: datetime, end: datetime) -> Schedule:
        """The occurrence `recurrence_id` moved to start..end; one that was cancelled (an
        EXDATE) is back: a request for an occurrence re-instates it (RFC 5546 §2.1.5)."""
        key = _utc(recurrence_id)
        kept = tuple(o for o in self.overrides if _utc(o[0]) != key)
        exdates = tuple(d for d in self.exdates if _utc(d) != key)
        return replace(self, exdates=exdates, overrides=(*kept, (recurrence_id, start, end)))

    def with_exdate(self, recurrence_id: datetime) -> Schedule:
        """The occurrence `recurrence_id` cancelled: excluded once however often its
        cancellation is applied (a copy of the CANCEL, a message read again after a crash),
        and no longer moved."""
        key = _utc(recurrence_id)
        kept = tuple(o for o in self.overrides if _utc(o[0]) != key)
        if any(_utc(e) == key for e in self.exdates):
            return replace(self, overrides=kept)
        return replace(self, exdates=(*self.exdates, recurrence_id), overrides=kept)


def _utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


_SPACE_AFTER_COMMA = re.compile(r",\s+")
_UNTIL = re.compile(r"UNTIL=(\d{8}(?:T\d{6})?)(Z?)", re.IGNORECASE)


def normalise_rrule(rule: str, start: datetime) -> str:
    """Repair RRULEs as real clients send them: spaces after commas (Exchange CDO), a TZID
    parameter on the rule (Notes), and a floating UNTIL beside a zoned DTSTART, which RFC 5545
    forbids and dateutil rejects; such an UNTIL is read in the start's own zone."""
    text = rule.strip()
    if text.upper().startswith("RRULE"):
        text = text.split(":", 1)[1] if ":" in text else text[5:]
    text = _SPACE_AFTER_COMMA.sub(",", text.replace("\r\n ", "").replace("\n ", ""))
    text = ";".join(part.strip() for part in text.split(";") if part.strip())

    def fix_until(match: re.Match[str]) -> str:
        value, zulu = match.group(1), match.group(2)
        if zulu:
            return f"UNTIL={value}Z"
        if "T" not in value:
            # a date-only UNTIL: the whole day counts
            local = datetime.strptime(value, "%Y%m%d").replace(
                hour=23, minute=59, second=59, tzinfo=start.tzinfo
            )
        else:
            local = datetime.strptime(value, "%Y%m%dT%H%M%S").replace(tzinfo=start.tzinfo)
        return "UNTIL=" + local.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")

    return _UNTIL.sub(fix_until, text)


def _rule(schedule: Schedule) -> du_rrule.rrule | None:
    if not schedule.rrule:
        return None
    try:
        parsed = du_rrule.rrulestr(
            normalise_rrule(schedule.rrule, schedule.start), dtstart=schedule.start, forceset=False
        )
    except (ValueError, TypeError) as exc:
        raise RecurrenceError(f"cannot read RRULE {schedule.rrule!r}: {exc}") from exc
    if not isinstance(parsed, du_rrule.rrule):
        raise RecurrenceError(f"unsupported RRULE {schedule.rrule!r}")
    if getattr(parsed, "_freq", None) in (du_rrule.SECONDLY, du_rrule.MINUTELY):
        # no meeting repeats by the second or minute, and dateutil may search such a rule's
        # filters for a very long time between two results
        raise RecurrenceError(f"RRULE {schedule.rrule[:80]!r}: meetings do not repeat this often")
    return parsed


def _starts_from(schedule: Schedule, after: datetime) -> Iterator[datetime]:
    """Original starts (recurrence ids) strictly after `after`, in order, from RRULE, RDATE and
    the first start, without EXDATE filtering."""
    rule = _rule(schedule)
    candidates: list[datetime] = sorted(
        {d for d in (schedule.start, *schedule.rdates) if d > after}, key=_utc
    )
    rule_iter: Iterator[datetime] = iter(())
    if rule is not None:
        rule_iter = _rule_after(rule, after)
    pending = next(rule_iter, None)
    index = 0
    last: datetime | None = None
    while pending is not None or index < len(candidates):
        if pending is not None and (index >= len(candidates) or pending <= candidates[index]):
            value = pending
            pending = next(rule_iter, None)
        else:
            value = candidates[index]
            index += 1
        if last is not None and _utc(value) == _utc(last):
            continue
        last = value
        yield value


class SeriesTooLongError(RecurrenceError):
    """A series that would take more than MAX_WALK steps to walk."""


def _rule_after(rule: du_rrule.rrule, after: datetime) -> Iterator[datetime]:
    """The rule's starts after `after`, from one pass over the rule (linear, capped)."""
    for steps, current in enumerate(rule, 1):
        if steps > MAX_WALK:
            raise SeriesTooLongError(
                f"the series has more than {MAX_WALK} occurrences to walk through; "
                "the service does not book series this long"
            )
        if current > after:
            yield current


def occurrences_after(schedule: Schedule, moment: datetime) -> Iterator[Occurrence]:
    """Occurrences (with overrides applied, EXDATEs removed) whose end is after `moment`, roughly
    in order. Overrides may move an occurrence anywhere, so they are considered separately."""
    excluded = {_utc(d) for d in schedule.exdates}
    overrides = {_utc(o[0]): o for o in schedule.overrides}
    if not schedule.recurring:
        if _utc(schedule.start) not in excluded:
            start, end = schedule.start, schedule.end
            if _utc(schedule.start) in overrides:
                _, start, end = overrides[_utc(schedule.start)]
            if end > moment:
                yield Occurrence(schedule.start, start, end)
        return
    # Overridden occurrences may have moved into the future from the past, or vice versa.
    for rid, start, end in sorted(schedule.overrides, key=lambda o: _utc(o[1])):
        if _utc(rid) not in excluded and end > moment:
            yield Occurrence(rid, start, end)
    longest = schedule.duration
    steps = 0
    for rid in _starts_from(schedule, moment - longest - timedelta(seconds=1)):
        steps += 1
        if steps > MAX_STEPS:
            raise SeriesTooLongError(
                f"no answer within {MAX_STEPS} occurrences of the series; "
                "the service does not book series like this"
            )
        key = _utc(rid)
        if key in excluded or key in overrides:
            continue
        end = rid + longest
        if end > moment:
            yield Occurrence(rid, rid, end)


def next_occurrence(schedule: Schedule, now: datetime) -> Occurrence | None:
    """The earliest occurrence that has not ended at `now` (an occurrence ending exactly at
    `now` has ended). Moved occurrences come first from `occurrences_after`, then the regular
    ones in order, so the first regular one ends the search."""
    best: Occurrence | None = None
    moved = {_utc(o[0]) for o in schedule.overrides}
    for occ in occurrences_after(schedule, now):
        if best is None or _utc(occ.start) < _utc(best.start):
            best = occ
        if _utc(occ.recurrence_id) not in moved:
            break
    return best


def last_end(
    schedule: Schedule, now: datetime | None = None, horizon: timedelta = DEFAULT_HORIZON
) -> datetime | None:
    """When the last occurrence ends, or None for a series with no end, or one that goes on
    past `now + horizon`, or one too long to walk."""
    if not schedule.recurring:
        return schedule.end
    limit = (now or datetime.now(UTC)) + horizon
    rule = _rule(schedule)
    if (
        rule is not None
        and getattr(rule, "_count", None) is None
        and getattr(rule, "_until", None) is None
    ):
        return None
    latest: datetime | None = None
    earliest = min(
        [schedule.start, *schedule.rdates, *(o[1] for o in schedule.overrides)], key=_utc
    )
    floor = earliest - schedule.duration - timedelta(days=1)
    try:
        for steps, occ in enumerate(occurrences_after(schedule, floor), 1):
            if steps > MAX_STEPS or occ.start > limit:
                return None
            if latest is None or _utc(occ.end) > _utc(latest):
                latest = occ.end
    except SeriesTooLongError:
        return None
    return latest


def same_schedule(a: Schedule, b: Schedule) -> bool:
    """Whether two schedules describe the same occurrences (instants compared, not zones)."""
    if _utc(a.start) != _utc(b.start) or _utc(a.end) != _utc(b.end):
        return False
    rule_a = normalise_rrule(a.rrule, a.start) if a.rrule else None
    rule_b = normalise_rrule(b.rrule, b.start) if b.rrule else None
    if (rule_a or "").upper() != (rule_b or "").upper():
        return False
    if {_utc(d) for d in a.rdates} != {_utc(d) for d in b.rdates}:
        return False
    if {_utc(d) for d in a.exdates} != {_utc(d) for d in b.exdates}:
        return False
    moved_a = {(_utc(r), _utc(s), _utc(e)) for r, s, e in a.overrides}
    moved_b = {(_utc(r), _utc(s), _utc(e)) for r, s, e in b.overrides}
    return moved_a == moved_b


def occurrence_of(schedule: Schedule, recurrence_id: datetime) -> Occurrence | None:
    """The occurrence a RECURRENCE-ID names, as the schedule has it now (moved or not), or
    None when the schedule has no such occurrence (or it was cancelled)."""
    key = _utc(recurrence_id)
    if key in {_utc(d) for d in schedule.exdates}:
        return None
    for rid, start, end in schedule.overrides:
        if _utc(rid) == key:
            return Occurrence(rid, start, end)
    for rid in _starts_from(schedule, recurrence_id - timedelta(seconds=1)):
        if _utc(rid) == key:
            return Occurrence(rid, rid, rid + schedule.duration)
        if _utc(rid) > key:
            break
    return None


def live_at(schedule: Schedule, moment: datetime, before: timedelta, after: timedelta) -> bool:
    """Whether `moment` lies in some occurrence's validity window
    [start - before, end + after]."""
    # windows are closed intervals: an occurrence whose window ends exactly at `moment` counts
    for occ in occurrences_after(schedule, moment - after - timedelta(microseconds=1)):
        if occ.start - before <= moment <= occ.end + after:
            return True
        if not schedule.overrides and occ.start - before > moment:
            return False
    return False


def zone(name: str | None) -> tzinfo:
    """A zone by IANA name, falling back to UTC for names we cannot resolve."""
    if not name:
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return UTC


# --- serialisation (the store keeps schedules as JSON) ---------------------------------------


def _tz_name(value: datetime) -> str:
    tz = value.tzinfo
    key = getattr(tz, "key", None)
    if isinstance(key, str):
        return key
    offset = value.utcoffset()
    if offset is None or offset == timedelta(0):
        return "UTC"
    return f"{offset.total_seconds():+.0f}s"


def _dt_out(value: datetime) -> list[str]:
    return [value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), _tz_name(value)]


def _dt_in(raw: list[str]) -> datetime:
    moment = datetime.strptime(raw[0], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    name = raw[1]
    if name.endswith("s") and name[:1] in "+-":
        from datetime import timezone

        return moment.astimezone(timezone(timedelta(seconds=float(name[:-1]))))
    return moment.astimezone(zone(name))


def to_json(schedule: Schedule) -> dict[str, object]:
    return {
        "start": _dt_out(schedule.start),
        "end": _dt_out(schedule.end),
        "rrule": schedule.rrule,
        "rdates": [_dt_out(d) for d in schedule.rdates],
        "exdates": [_dt_out(d) for d in schedule.exdates],
        "overrides": [[_dt_out(r), _dt_out(s), _dt_out(e)] for r, s, e in schedule.overrides],
    }


def from_json(raw: dict[str, object]) -> Schedule:
    def dts(key: str) -> tuple[datetime, ...]:
        values = raw.get(key) or []
        assert isinstance(values, list)
        return tuple(_dt_in(v) for v in values)

    overrides_raw = raw.get("overrides") or []
    assert isinstance(overrides_raw, list)
    start_raw, end_raw = raw["start"], raw["end"]
    assert isinstance(start_raw, list) and isinstance(end_raw, list)
    rrule_raw = raw.get("rrule")
    return Schedule(
        start=_dt_in(start_raw),
        end=_dt_in(end_raw),
        rrule=rrule_raw if isinstance(rrule_raw, str) else None,
        rdates=dts("rdates"),
        exdates=dts("exdates"),
        overrides=tuple((_dt_in(r), _dt_in(s), _dt_in(e)) for r, s, e in overrides_raw),
    )
