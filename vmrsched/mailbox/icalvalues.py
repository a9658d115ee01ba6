"""iCalendar values as the service reads them, for the iTIP translator (itip): dates and times
with a zone we can store, addresses, SEQUENCE, bodies, each refused with a ParseError that says
why when it cannot be used. Translation only, no rules; kept apart from itip so each module
stays readable at a glance."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from icalendar.timezone.windows_to_olson import WINDOWS_TO_OLSON

from vmrsched.rules.meetings import is_address

BOM = b"\xef\xbb\xbf"
_MAILTO = re.compile(r"^mailto:", re.IGNORECASE)

# Limits on one item's work: a meeting request is a few kilobytes; these leave generous room for
# real ones (Outlook's HTML bodies, large attendee lists) and refuse what only an attack or a
# broken generator sends.
MAX_CALENDAR_BYTES = 1024 * 1024
MAX_EVENTS = 50  # VEVENTs in one calendar (a series and its exceptions)
MAX_SUBJECT = 1000  # characters
MAX_BODY = 512 * 1024  # characters of HTML body
MAX_ATTENDEES = 1000
MAX_DATES = 1000  # RDATEs or EXDATEs of one event
MAX_UID = 1000  # characters
# Dates the rules can use: anything else is refused with a reason, never stored.
EARLIEST = datetime(1900, 1, 1, tzinfo=UTC)
LATEST = datetime(2999, 12, 31, tzinfo=UTC)


class ParseError(ValueError):
    """The input cannot be turned into a meeting. `organizer` is set when we know whom to tell."""

    def __init__(
        self,
        reason: str,
        organizer_email: str = "",
        organizer_name: str = "",
        subject: str = "",
        uid: str = "",
        not_meeting: bool = False,
        auto_submitted: bool = False,
        sequence: int = 0,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.organizer_email = organizer_email
        self.organizer_name = organizer_name
        self.subject = subject
        self.uid = uid
        self.sequence = sequence  # the request's SEQUENCE, for a decline that names it
        self.not_meeting = not_meeting  # a mail with no meeting in it: set aside, never answered
        self.auto_submitted = auto_submitted  # RFC 3834: never answer it


def zone_for(value: datetime, default_tz: tzinfo) -> datetime:
    """Give every datetime a zone we can store: IANA keys stay, Windows names map to IANA,
    floating times take the integration's zone."""
    tz = value.tzinfo
    if tz is None:
        return value.replace(tzinfo=default_tz)
    if isinstance(getattr(tz, "key", None), str):
        return value
    name = str(getattr(tz, "_tzid", "") or getattr(tz, "zone", "") or "")
    olson = WINDOWS_TO_OLSON.get(name.strip('"'))
    for candidate in (olson, name):
        if candidate:
            try:
                return value.replace(tzinfo=ZoneInfo(candidate))
            except (ZoneInfoNotFoundError, ValueError):
                continue
    return value


def as_datetime(raw: Any, default_tz: tzinfo) -> datetime:
    value = getattr(raw, "dt", raw)
    if isinstance(value, datetime):
        tzid = str(getattr(raw, "params", {}).get("TZID", "") or "")
        if value.tzinfo is None and tzid:
            # icalendar leaves a time naive when neither a VTIMEZONE nor a known name defines
            # its zone; reading it in some default zone would move the meeting silently
            raise ParseError(f"unknown time zone {tzid[:80]!r} (no VTIMEZONE defines it)")
        return checked_date(zone_for(value, default_tz))
    if isinstance(value, date):
        return checked_date(datetime(value.year, value.month, value.day, tzinfo=default_tz))
    raise ParseError(f"not a date or time: {str(raw)[:80]!r}")


def checked_date(value: datetime) -> datetime:
    try:
        inside = EARLIEST <= value <= LATEST
    except (OverflowError, ValueError):
        inside = False
    if not inside:
        raise ParseError(f"date {value.isoformat()[:40]} is outside 1900-2999")
    return value


def date_list(component: Any, key: str, default_tz: tzinfo) -> tuple[datetime, ...]:
    raw = component.get(key)
    if raw is None:
        return ()
    items = raw if isinstance(raw, list) else [raw]
    out: list[datetime] = []
    for item in items:
        entries = getattr(item, "dts", [item])
        if len(out) + len(entries) > MAX_DATES:
            raise ParseError(f"more than {MAX_DATES} {key} values")
        for entry in entries:
            value = getattr(entry, "dt", entry)
            if isinstance(value, tuple):  # RDATE;VALUE=PERIOD
                value = value[0]
            out.append(as_datetime(value, default_tz))
    return tuple(out)


def prop_text(component: Any, key: str) -> str:
    value = component.get(key)
    return "" if value is None else str(value)


def cal_address(value: Any) -> tuple[str, str]:
    if value is None:
        return "", ""
    if isinstance(value, list):  # the property given more than once: not one address
        return "", ", ".join(cal_address(v)[1] for v in value)
    addr = mailto(str(value))
    params = getattr(value, "params", {})
    name = str(params.get("CN", "")).strip('"')
    if not addr and "EMAIL" in params:
        addr = str(params["EMAIL"])
    return name, addr


def mailto(value: str) -> str:
    return _MAILTO.sub("", value.strip().strip('"')).strip()


def sent_by_of(value: Any) -> str:
    """ORGANIZER's SENT-BY (a delegate sending for the organizer), when it is one address;
    anything else is no delegate at all, which only narrows who may change the meeting."""
    raw = getattr(value, "params", {}).get("SENT-BY") if value is not None else None
    if raw is None or isinstance(value, list):
        return ""
    address = mailto(str(raw))
    return address if is_address(address) else ""


def answerable(address: str) -> str:
    """`address` when a decline may go to it, else "" (a ParseError names whom to tell; a list
    of addresses is nobody to tell)."""
    return address if is_address(address) else ""


def rrule_of(component: Any) -> str | None:
    raw = component.get("RRULE")
    if raw is None:
        return None
    if isinstance(raw, list):
        raw = raw[0]
    text = raw.to_ical().decode() if hasattr(raw, "to_ical") else str(raw)
    return text.replace("\\;", ";").replace("\\,", ",")


# A cancellation need not say when the meeting was (Thunderbird omits DTSTART); the UID and
# RECURRENCE-ID identify what is cancelled, so such a cancellation gets this placeholder time.
UNKNOWN_TIME = datetime(1970, 1, 1, tzinfo=UTC)


def event_times(
    component: Any, default_tz: tzinfo, cancel: bool = False
) -> tuple[datetime, datetime]:
    start_raw = component.get("DTSTART")
    if start_raw is None:
        rid = component.get("RECURRENCE-ID")
        if rid is None:
            if cancel:
                return UNKNOWN_TIME, UNKNOWN_TIME
            raise ParseError("meeting has no DTSTART")
        start_raw = rid
    all_day = not isinstance(start_raw.dt, datetime)
    start = as_datetime(start_raw, default_tz)
    if component.get("DTEND") is not None:
        end = as_datetime(component.get("DTEND"), default_tz)
    elif component.get("DURATION") is not None:
        try:
            end = checked_date(start + component.get("DURATION").dt)
        except (OverflowError, TypeError, AttributeError) as exc:
            raise ParseError(f"unusable DURATION: {exc}") from exc
    else:
        end = start + (timedelta(days=1) if all_day else timedelta(0))
    if end < start:
        end = start
    return start, end


MAX_SEQUENCE = 2**31 - 1  # RFC 5545 says "integer": a signed 32-bit value


def sequence_of(component: Any) -> int:
    for key in ("SEQUENCE", "X-MICROSOFT-CDO-APPT-SEQUENCE"):
        raw = component.get(key)
        if raw is not None:
            try:
                value = int(str(raw).strip()[:20])
            except ValueError:
                continue
            if not 0 <= value <= MAX_SEQUENCE:
                raise ParseError(f"SEQUENCE {str(raw)[:30]} is outside 0-{MAX_SEQUENCE}")
            return value
    return 0


def known_sequence(component: Any) -> int:
    """The SEQUENCE of an event that could not be read otherwise, 0 where it is unusable too."""
    try:
        return sequence_of(component)
    except ParseError:
        return 0


def shortened(subject: str, limit: int = MAX_SUBJECT) -> str:
    """A subject cut to `limit` characters for a decline's Subject and SUMMARY: at the last
    word break in its last tenth, marked with an ellipsis, so what is left still reads."""
    if len(subject) <= limit:
        return subject
    cut = subject[: limit - 1]
    space = cut.rfind(" ", limit - limit // 10)
    return (cut[:space] if space > 0 else cut).rstrip() + "\u2026"


def event_body(component: Any) -> str:
    alt = component.get("X-ALT-DESC")
    if alt is not None:
        params = getattr(alt, "params", {})
        if str(params.get("FMTTYPE", "")).lower() == "text/html":
            return unescape_text(str(alt))
    return prop_text(component, "DESCRIPTION")


_TEXT_ESCAPE = re.compile(r"\\([\\;,nN])")


def unescape_text(value: str) -> str:
    """RFC 5545 TEXT unescaping, for X- properties icalendar leaves raw (Outlook's X-ALT-DESC)."""
    return _TEXT_ESCAPE.sub(lambda m: "\n" if m.group(1) in "nN" else m.group(1), value)


def fallback_tz(name: str) -> tzinfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return UTC
