"""iTIP/iMIP translation: meeting requests in (.ics or .eml bytes) to `Meeting`s, replies out.

Real clients send broken calendars (BOMs, Windows zone names, floating times, folded or
unfolded lines, missing UIDs, several VEVENTs per UID); this module absorbs that so the rules
never see it. It holds no rules of its own: it only translates.
"""

from __future__ import annotations

import email
import email.policy
import email.utils
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta, tzinfo
from email.message import EmailMessage, Message
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import icalendar
from icalendar.timezone.windows_to_olson import WINDOWS_TO_OLSON

from vmrsched.rules.meetings import Meeting, Method, is_address

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
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.organizer_email = organizer_email
        self.organizer_name = organizer_name
        self.subject = subject
        self.uid = uid
        self.not_meeting = not_meeting  # a mail with no meeting in it: set aside, never answered
        self.auto_submitted = auto_submitted  # RFC 3834: never answer it


@dataclass(frozen=True)
class Parsed:
    meetings: tuple[Meeting, ...]
    method: str


def _zone_for(value: datetime, default_tz: tzinfo) -> datetime:
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


def _as_datetime(raw: Any, default_tz: tzinfo) -> datetime:
    value = getattr(raw, "dt", raw)
    if isinstance(value, datetime):
        tzid = str(getattr(raw, "params", {}).get("TZID", "") or "")
        if value.tzinfo is None and tzid:
            # icalendar leaves a time naive when neither a VTIMEZONE nor a known name defines
            # its zone; reading it in some default zone would move the meeting silently
            raise ParseError(f"unknown time zone {tzid[:80]!r} (no VTIMEZONE defines it)")
        return _checked(_zone_for(value, default_tz))
    if isinstance(value, date):
        return _checked(datetime(value.year, value.month, value.day, tzinfo=default_tz))
    raise ParseError(f"not a date or time: {str(raw)[:80]!r}")


def _checked(value: datetime) -> datetime:
    try:
        inside = EARLIEST <= value <= LATEST
    except (OverflowError, ValueError):
        inside = False
    if not inside:
        raise ParseError(f"date {value.isoformat()[:40]} is outside 1900-2999")
    return value


def _date_list(component: Any, key: str, default_tz: tzinfo) -> tuple[datetime, ...]:
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
            out.append(_as_datetime(value, default_tz))
    return tuple(out)


def _text(component: Any, key: str) -> str:
    value = component.get(key)
    return "" if value is None else str(value)


def _address(value: Any) -> tuple[str, str]:
    if value is None:
        return "", ""
    if isinstance(value, list):  # the property given more than once: not one address
        return "", ", ".join(_address(v)[1] for v in value)
    addr = _mailto(str(value))
    params = getattr(value, "params", {})
    name = str(params.get("CN", "")).strip('"')
    if not addr and "EMAIL" in params:
        addr = str(params["EMAIL"])
    return name, addr


def _mailto(value: str) -> str:
    return _MAILTO.sub("", value.strip().strip('"')).strip()


def _sent_by(value: Any) -> str:
    """ORGANIZER's SENT-BY (a delegate sending for the organizer), when it is one address;
    anything else is no delegate at all, which only narrows who may change the meeting."""
    raw = getattr(value, "params", {}).get("SENT-BY") if value is not None else None
    if raw is None or isinstance(value, list):
        return ""
    address = _mailto(str(raw))
    return address if is_address(address) else ""


def _answerable(address: str) -> str:
    """`address` when a decline may go to it, else "" (a ParseError names whom to tell; a list
    of addresses is nobody to tell)."""
    return address if is_address(address) else ""


def _rrule(component: Any) -> str | None:
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


def _times(component: Any, default_tz: tzinfo, cancel: bool = False) -> tuple[datetime, datetime]:
    start_raw = component.get("DTSTART")
    if start_raw is None:
        rid = component.get("RECURRENCE-ID")
        if rid is None:
            if cancel:
                return UNKNOWN_TIME, UNKNOWN_TIME
            raise ParseError("meeting has no DTSTART")
        start_raw = rid
    all_day = not isinstance(start_raw.dt, datetime)
    start = _as_datetime(start_raw, default_tz)
    if component.get("DTEND") is not None:
        end = _as_datetime(component.get("DTEND"), default_tz)
    elif component.get("DURATION") is not None:
        try:
            end = _checked(start + component.get("DURATION").dt)
        except (OverflowError, TypeError, AttributeError) as exc:
            raise ParseError(f"unusable DURATION: {exc}") from exc
    else:
        end = start + (timedelta(days=1) if all_day else timedelta(0))
    if end < start:
        end = start
    return start, end


MAX_SEQUENCE = 2**31 - 1  # RFC 5545 says "integer": a signed 32-bit value


def _sequence(component: Any) -> int:
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


def _body(component: Any) -> str:
    alt = component.get("X-ALT-DESC")
    if alt is not None:
        params = getattr(alt, "params", {})
        if str(params.get("FMTTYPE", "")).lower() == "text/html":
            return _unescape_text(str(alt))
    return _text(component, "DESCRIPTION")


_TEXT_ESCAPE = re.compile(r"\\([\\;,nN])")


def _unescape_text(value: str) -> str:
    """RFC 5545 TEXT unescaping, for X- properties icalendar leaves raw (Outlook's X-ALT-DESC)."""
    return _TEXT_ESCAPE.sub(lambda m: "\n" if m.group(1) in "nN" else m.group(1), value)


def _fallback_tz(name: str) -> tzinfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return UTC


def parse_calendar(
    data: bytes,
    default_timezone: str = "UTC",
    html_body: str | None = None,
    method_hint: str | None = None,
    correlation_id: str = "",
) -> Parsed:
    """Meetings in one iCalendar object. A master VEVENT and its RECURRENCE-ID exceptions become
    one series meeting (exceptions as overrides, cancelled ones as EXDATEs); exceptions without
    a master become occurrence meetings."""
    default_tz = _fallback_tz(default_timezone)
    if data.startswith(BOM):
        data = data[len(BOM) :]
    if len(data) > MAX_CALENDAR_BYTES:
        raise ParseError(f"calendar larger than {MAX_CALENDAR_BYTES} bytes")
    if data.upper().count(b"BEGIN:VEVENT") > MAX_EVENTS:
        raise ParseError(f"more than {MAX_EVENTS} VEVENTs in one calendar")
    try:
        return _parse_calendar(data, default_tz, html_body, method_hint, correlation_id)
    except ParseError:
        raise
    except Exception as exc:  # whatever a library raises on hostile input is this item's error
        raise ParseError(f"unreadable calendar: {type(exc).__name__}: {str(exc)[:200]}") from exc


def _incomplete(data: bytes) -> bool:
    return b"END:VCALENDAR" not in data.rstrip()[-40:].upper()


def _parse_calendar(
    data: bytes,
    default_tz: tzinfo,
    html_body: str | None,
    method_hint: str | None,
    correlation_id: str,
) -> Parsed:
    try:
        cal = icalendar.Calendar.from_ical(data)
    except Exception as exc:  # icalendar raises ValueError and friends on garbage
        hint = (
            " (the file looks incomplete: write it elsewhere, then rename it into the inbox)"
            if _incomplete(data)
            else ""
        )
        raise ParseError(f"not an iCalendar object: {str(exc)[:200]}{hint}") from exc
    method = str(cal.get("METHOD") or method_hint or "REQUEST").upper()
    events = [c for c in cal.walk("VEVENT")]
    vtimezones = tuple(
        tz.to_ical().decode("utf-8", errors="replace") for tz in cal.walk("VTIMEZONE")
    )
    if not events:
        raise ParseError("calendar holds no VEVENT")
    organizer_name, organizer_email = _address(events[0].get("ORGANIZER"))
    organizer_email = _answerable(organizer_email)
    subject = _text(events[0], "SUMMARY")
    if len(subject) > MAX_SUBJECT:
        raise ParseError(f"subject longer than {MAX_SUBJECT} characters", organizer_email)
    if method not in ("REQUEST", "CANCEL", "PUBLISH"):
        raise ParseError(
            f"unsupported iTIP method {method}", organizer_email, organizer_name, subject
        )
    if html_body is not None and len(html_body) > MAX_BODY:
        raise ParseError(
            f"body longer than {MAX_BODY} characters", organizer_email, organizer_name, subject
        )
    meeting_method: Method = "CANCEL" if method == "CANCEL" else "REQUEST"
    by_uid: dict[str, list[Any]] = {}
    for event in events:
        uid = _text(event, "UID").strip()
        if not uid:
            raise ParseError("meeting has no UID", organizer_email, organizer_name, subject)
        if len(uid) > MAX_UID:
            raise ParseError(
                f"UID longer than {MAX_UID} characters", organizer_email, organizer_name, subject
            )
        by_uid.setdefault(uid, []).append(event)
    meetings: list[Meeting] = []
    for uid, group in by_uid.items():
        masters = [e for e in group if e.get("RECURRENCE-ID") is None]
        exceptions = [e for e in group if e.get("RECURRENCE-ID") is not None]
        if masters:
            # Several masters for one UID is invalid iTIP (seen from iCloud); the last wins.
            meetings.append(
                _meeting(
                    masters[-1],
                    uid,
                    meeting_method,
                    default_tz,
                    exceptions,
                    html_body,
                    correlation_id,
                    vtimezones,
                )
            )
        else:
            for exc_event in exceptions:
                meetings.append(
                    _meeting(
                        exc_event,
                        uid,
                        meeting_method,
                        default_tz,
                        [],
                        html_body,
                        correlation_id,
                        vtimezones,
                    )
                )
    return Parsed(tuple(meetings), method)


def _meeting(
    event: Any,
    uid: str,
    method: Method,
    default_tz: tzinfo,
    exceptions: Iterable[Any],
    html_body: str | None,
    correlation_id: str,
    vtimezones: tuple[str, ...] = (),
) -> Meeting:
    name, addr = _address(event.get("ORGANIZER"))
    sent_by = _sent_by(event.get("ORGANIZER"))
    subject = _text(event, "SUMMARY")
    try:
        start, end = _times(event, default_tz, cancel=(method == "CANCEL"))
        rid_raw = event.get("RECURRENCE-ID")
        recurrence_id = _as_datetime(rid_raw, default_tz) if rid_raw is not None else None
        exdates = list(_date_list(event, "EXDATE", default_tz))
        overrides: list[tuple[datetime, datetime, datetime]] = []
        for exc_event in exceptions:
            rid = _as_datetime(exc_event.get("RECURRENCE-ID"), default_tz)
            if _text(exc_event, "STATUS").upper() == "CANCELLED":
                exdates.append(rid)
            else:
                o_start, o_end = _times(exc_event, default_tz, cancel=(method == "CANCEL"))
                overrides.append((rid, o_start, o_end))
        rdates = _date_list(event, "RDATE", default_tz)
        attendees_raw = event.get("ATTENDEE") or []
        if not isinstance(attendees_raw, list):
            attendees_raw = [attendees_raw]
        if len(attendees_raw) > MAX_ATTENDEES:
            raise ParseError(f"more than {MAX_ATTENDEES} attendees")
        body = html_body if html_body is not None else _body(event)
        if len(body) > MAX_BODY:
            raise ParseError(f"body longer than {MAX_BODY} characters")
        # an attendee that is not one address is nobody an organizer update could go to
        attendee_params = tuple(
            (_address(x)[1], tuple((str(k), str(v)) for k, v in getattr(x, "params", {}).items()))
            for x in attendees_raw
            if is_address(_address(x)[1])
        )
        attendees = tuple(a for a, _ in attendee_params)
    except ParseError as exc:
        raise ParseError(exc.reason, _answerable(addr), name, subject, uid) from exc
    except (ValueError, TypeError, AttributeError, OverflowError) as exc:
        raise ParseError(
            f"unreadable meeting times: {exc}", _answerable(addr), name, subject, uid
        ) from exc
    if recurrence_id is not None and rdates and len(rdates) == 1:
        rdates = ()  # Notes repeats a rescheduled instance as a one-period RDATE
    return Meeting(
        uid=uid,
        method=method,
        start=start,
        end=end,
        sequence=_sequence(event),
        recurrence_id=recurrence_id,
        rrule=_rrule(event) if recurrence_id is None else None,
        rdates=rdates if recurrence_id is None else (),
        exdates=tuple(exdates),
        overrides=tuple(overrides),
        organizer_name=name,
        organizer_email=addr,
        organizer_sent_by=sent_by,
        subject=subject,
        html_body=body,
        attendees=attendees,
        correlation_id=correlation_id,
        attendee_params=attendee_params,
        vtimezones=vtimezones,
    )


def _calendar_part(message: Message) -> Message | None:
    for part in message.walk():
        ctype = part.get_content_type()
        if ctype in ("text/calendar", "application/ics"):
            return part
    return None


def _html_part(message: Message) -> str | None:
    for part in message.walk():
        if part.get_content_type() == "text/html" and not part.get_filename():
            payload = part.get_payload(decode=True)
            if isinstance(payload, bytes):
                charset = part.get_content_charset() or "utf-8"
                try:
                    return payload.decode(charset, errors="replace")
                except LookupError:
                    return payload.decode("utf-8", errors="replace")
    return None


def auto_submitted(message: Message) -> bool:
    """RFC 3834: automatic mail (out-of-office, bounces, lists) must not be answered."""
    value = str(message.get("Auto-Submitted", "no")).strip().lower()
    precedence = str(message.get("Precedence", "")).strip().lower()
    return (
        not value.startswith("no")
        or precedence in ("bulk", "junk", "list", "auto_reply")
        or message.get("X-Autoreply") is not None
        or message.get("List-Id") is not None
        or str(message.get("Content-Type", "")).lower().startswith("multipart/report")
    )


def parse_mail(data: bytes, default_timezone: str = "UTC", correlation_id: str = "") -> Parsed:
    """Meetings in an iMIP mail: the text/calendar part, with the text/html part as body."""
    if data.startswith(BOM):
        data = data[len(BOM) :]
    try:
        message = email.message_from_bytes(data, policy=email.policy.compat32)
        automatic = auto_submitted(message)
        sender = email.utils.parseaddr(_clean(str(message.get("From", ""))))
        mail_from, mail_sender = mail_senders(message)
        subject = _clean(str(message.get("Subject", "")))[:MAX_SUBJECT]
        part = _calendar_part(message)
    except Exception as exc:  # the email package is lenient, but not about everything
        raise ParseError(f"unreadable mail: {type(exc).__name__}: {str(exc)[:200]}") from exc
    if part is None:
        raise ParseError(
            "not a meeting message (no text/calendar part)",
            sender[1],
            sender[0],
            subject,
            not_meeting=True,
            auto_submitted=automatic,
        )
    try:
        payload = part.get_payload(decode=True)
        method_hint = part.get_param("method")
        html = _html_part(message)
    except Exception as exc:
        raise ParseError(
            f"unreadable mail: {type(exc).__name__}: {str(exc)[:200]}",
            sender[1],
            sender[0],
            subject,
            auto_submitted=automatic,
        ) from exc
    if not isinstance(payload, bytes) or not payload.strip():
        raise ParseError(
            "calendar part is empty", sender[1], sender[0], subject, auto_submitted=automatic
        )
    try:
        parsed = parse_calendar(
            payload,
            default_timezone,
            html_body=html,
            method_hint=str(method_hint) if isinstance(method_hint, str) else None,
            correlation_id=correlation_id,
        )
    except ParseError as exc:
        exc.auto_submitted = automatic
        if not exc.organizer_email and is_address(sender[1]):
            exc.organizer_email, exc.organizer_name = sender[1], exc.organizer_name or sender[0]
        raise
    return sent_in_mail(parsed, mail_from, mail_sender)


def mail_senders(message: Message) -> tuple[str, str]:
    """(From, Sender) of a mail, each one address, or the header as it stands when it is not
    one (which then matches no organizer), or "" when absent: who sent the meeting message,
    which decides whether it may change a booking (meetings.from_organizer)."""
    found: list[str] = []
    for header in ("From", "Sender"):
        values = message.get_all(header) or []
        text = _clean(" ".join(str(v) for v in values))
        addresses = email.utils.getaddresses([text]) if text else []
        one = addresses[0][1].strip() if len(addresses) == 1 else ""
        found.append(one if is_address(one) else text[:MAX_HEADER_ADDRESS])
    return found[0], found[1]


MAX_HEADER_ADDRESS = 400  # characters of an unusable From or Sender kept for the log


def sent_in_mail(parsed: Parsed, mail_from: str = "", mail_sender: str = "") -> Parsed:
    """The meetings as carried by a mail From `mail_from` (Sender `mail_sender`). parse_mail
    gives what the MIME headers say; backends that know a message's sender from the mailbox
    itself (EWS's From and Sender, Graph's from and sender) call this again with what they
    know, and what they do not know ("") stays as the headers said."""
    meetings = []
    for meeting in parsed.meetings:
        sent_from = mail_from or meeting.mail_from or ""
        sender = mail_sender or meeting.mail_sender
        if sender.casefold() == sent_from.casefold():
            sender = ""  # sent by the one it is from: nothing to tell apart
        meetings.append(replace(meeting, mail_from=sent_from, mail_sender=sender))
    return Parsed(tuple(meetings), parsed.method)


def _clean(value: str) -> str:
    """A header value on one line."""
    return " ".join(value.split())


def parse_file(
    name: str, data: bytes, default_timezone: str = "UTC", correlation_id: str = ""
) -> Parsed:
    if name.lower().endswith(".eml"):
        return parse_mail(data, default_timezone, correlation_id)
    return parse_calendar(data, default_timezone, correlation_id=correlation_id)


__all__ = ["EmailMessage", "ParseError", "Parsed", "parse_calendar", "parse_file", "parse_mail"]
