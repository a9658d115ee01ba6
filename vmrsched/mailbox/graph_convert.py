"""Microsoft Graph's JSON as the service's own types: a room's event as a Meeting (its
patternedRecurrence as an RRULE), an eventMessage's sender, Graph's times in UTC, and the
response comment as text. Pure functions: no calls, no state, safe from any thread."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from vmrsched.rules.meetings import Meeting, is_address

_DAYS = {
    "sunday": "SU",
    "monday": "MO",
    "tuesday": "TU",
    "wednesday": "WE",
    "thursday": "TH",
    "friday": "FR",
    "saturday": "SA",
}
_INDEX = {"first": "1", "second": "2", "third": "3", "fourth": "4", "last": "-1"}


def rrule_of(recurrence: dict[str, Any] | None) -> str | None:
    """Graph's patternedRecurrence as an RFC 5545 RRULE (the form the rules work with)."""
    if not recurrence:
        return None
    pattern, span = recurrence.get("pattern") or {}, recurrence.get("range") or {}
    kind = pattern.get("type", "")
    parts = [f"INTERVAL={int(pattern.get('interval') or 1)}"]
    days = ",".join(_DAYS[d.lower()] for d in pattern.get("daysOfWeek") or [])
    relative = _INDEX.get(str(pattern.get("index", "first")).lower(), "1")
    if kind == "daily":
        parts.insert(0, "FREQ=DAILY")
    elif kind == "weekly":
        parts[:0] = ["FREQ=WEEKLY"]
        parts.append(f"BYDAY={days}")
    elif kind == "absoluteMonthly":
        parts[:0] = ["FREQ=MONTHLY"]
        parts.append(f"BYMONTHDAY={int(pattern['dayOfMonth'])}")
    elif kind == "relativeMonthly":
        parts[:0] = ["FREQ=MONTHLY"]
        parts.append("BYDAY=" + ",".join(relative + d for d in days.split(",")))
    elif kind == "absoluteYearly":
        parts[:0] = ["FREQ=YEARLY"]
        parts += [f"BYMONTH={int(pattern['month'])}", f"BYMONTHDAY={int(pattern['dayOfMonth'])}"]
    elif kind == "relativeYearly":
        parts[:0] = ["FREQ=YEARLY"]
        parts.append(f"BYMONTH={int(pattern['month'])}")
        parts.append("BYDAY=" + ",".join(relative + d for d in days.split(",")))
    else:
        raise ValueError(f"unknown recurrence pattern {kind!r}")
    if span.get("type") == "numbered":
        parts.append(f"COUNT={int(span['numberOfOccurrences'])}")
    elif span.get("type") == "endDate" and span.get("endDate"):
        parts.append(f"UNTIL={span['endDate'].replace('-', '')}T235959Z")
    return ";".join(parts)


def meeting_of(event: dict[str, Any], room: str) -> Meeting:
    """A meeting on the room's calendar (a single one, or a series' master) as a Meeting."""
    organizer = (event.get("organizer") or {}).get("emailAddress") or {}
    attendees = tuple(
        str(a["emailAddress"]["address"])
        for a in event.get("attendees") or []
        if (a.get("emailAddress") or {}).get("address")
        and a["emailAddress"]["address"].lower() != room.lower()
    )
    return Meeting(
        uid=str(event["iCalUId"]),
        method="REQUEST",
        start=utc_of(event["start"]),
        end=utc_of(event["end"]),
        rrule=rrule_of(event.get("recurrence")),
        organizer_email=str(organizer.get("address", "")),
        organizer_name=str(organizer.get("name", "")),
        subject=str(event.get("subject") or ""),
        html_body=str((event.get("body") or {}).get("content", "")),
        attendees=attendees,
    )


def address_of(message: dict[str, Any], key: str) -> str:
    """An eventMessage's `from` or `sender` address, or "" when it gives none that is one."""
    address = str(((message.get(key) or {}).get("emailAddress") or {}).get("address") or "")
    return address.strip() if is_address(address.strip()) else ""


def utc_of(value: dict[str, Any]) -> datetime:
    """Graph's dateTimeTimeZone, asked for in UTC (Prefer: outlook.timezone)."""
    if str(value.get("timeZone", "UTC")).upper() not in ("UTC", "ETC/UTC"):
        raise ValueError(f"expected UTC times, got {value.get('timeZone')!r}")
    text = str(value["dateTime"]).rstrip("Z")
    moment = datetime.fromisoformat(text[:26] if "." in text else text)
    return moment.replace(tzinfo=UTC)


def is_meeting(message: dict[str, Any]) -> bool:
    return str(message.get("@odata.type", "")).startswith("#microsoft.graph.eventMessage")


def when(value: Any) -> datetime:
    if not value:
        return datetime.now(UTC)
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return datetime.now(UTC)
