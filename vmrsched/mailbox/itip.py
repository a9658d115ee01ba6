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
from datetime import datetime, tzinfo
from email.message import EmailMessage, Message
from typing import Any

import icalendar

from vmrsched.mailbox.icalvalues import (
    BOM,
    MAX_ATTENDEES,
    MAX_BODY,
    MAX_CALENDAR_BYTES,
    MAX_EVENTS,
    MAX_SUBJECT,
    MAX_UID,
    ParseError,
    answerable,
    as_datetime,
    cal_address,
    date_list,
    event_body,
    event_times,
    fallback_tz,
    known_sequence,
    prop_text,
    rrule_of,
    sent_by_of,
    sequence_of,
    shortened,
)
from vmrsched.rules.meetings import Meeting, Method, is_address

# The iTIP methods that make a meeting message (RFC 5546): a request (new or changed) and a
# cancellation. Every other method (REPLY, COUNTER, REFRESH, DECLINECOUNTER, ADD, PUBLISH, …)
# is an attendee's response or no scheduling message at all: never answered.
MEETING_METHODS = ("REQUEST", "CANCEL")


@dataclass(frozen=True)
class Parsed:
    meetings: tuple[Meeting, ...]
    method: str
    # the mail asks not to be answered (RFC 3834 Auto-Submitted other than "no", a list, a
    # delivery report): what it carries is read, and it is never answered
    auto_submitted: bool = False


def parse_calendar(
    data: bytes,
    default_timezone: str = "UTC",
    html_body: str | None = None,
    method_hint: str | None = None,
    correlation_id: str = "",
    *,
    any_method: bool = False,
) -> Parsed:
    """Meetings in one iCalendar object. A master VEVENT and its RECURRENCE-ID exceptions become
    one series meeting (exceptions as overrides, cancelled ones as EXDATEs); exceptions without
    a master become occurrence meetings. A message whose METHOD is not one of MEETING_METHODS
    is no meeting message (ParseError with `not_meeting`); `any_method`: the object is a
    calendar item rather than a message (the room's calendar as Exchange exports it), read
    whatever method its export names."""
    default_tz = fallback_tz(default_timezone)
    if data.startswith(BOM):
        data = data[len(BOM) :]
    if len(data) > MAX_CALENDAR_BYTES:
        raise ParseError(f"calendar larger than {MAX_CALENDAR_BYTES} bytes")
    if data.upper().count(b"BEGIN:VEVENT") > MAX_EVENTS:
        raise ParseError(f"more than {MAX_EVENTS} VEVENTs in one calendar")
    try:
        return _parse_calendar(data, default_tz, html_body, method_hint, correlation_id, any_method)
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
    any_method: bool,
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
    first = events[0] if events else {}
    organizer_name, organizer_email = cal_address(first.get("ORGANIZER"))
    organizer_email = answerable(organizer_email)
    subject = prop_text(first, "SUMMARY")
    uid = prop_text(first, "UID").strip()
    uid = uid if len(uid) <= MAX_UID else ""  # a UID cut short would name another meeting
    if method not in MEETING_METHODS and not any_method:
        # an attendee's response (REPLY, COUNTER, REFRESH) or a calendar published for
        # reading: nothing to decide, and nobody who expects an answer
        raise ParseError(
            f"not a meeting message (iTIP method {method[:40]})",
            organizer_email,
            organizer_name,
            subject[:MAX_SUBJECT],
            uid,
            not_meeting=True,
        )
    if not events:
        raise ParseError("calendar holds no VEVENT")
    if len(subject) > MAX_SUBJECT:
        # still answerable: the decline names the subject, cut to the limit
        raise ParseError(
            f"subject longer than {MAX_SUBJECT} characters",
            organizer_email,
            organizer_name,
            shortened(subject),
            uid,
            sequence=known_sequence(first),
        )
    if html_body is not None and len(html_body) > MAX_BODY:
        raise ParseError(
            f"body longer than {MAX_BODY} characters", organizer_email, organizer_name, subject
        )
    meeting_method: Method = "CANCEL" if method == "CANCEL" else "REQUEST"
    by_uid: dict[str, list[Any]] = {}
    for event in events:
        uid = prop_text(event, "UID").strip()
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
    name, addr = cal_address(event.get("ORGANIZER"))
    sent_by = sent_by_of(event.get("ORGANIZER"))
    subject = prop_text(event, "SUMMARY")
    try:
        start, end = event_times(event, default_tz, cancel=(method == "CANCEL"))
        rid_raw = event.get("RECURRENCE-ID")
        recurrence_id = as_datetime(rid_raw, default_tz) if rid_raw is not None else None
        exdates = list(date_list(event, "EXDATE", default_tz))
        overrides: list[tuple[datetime, datetime, datetime]] = []
        for exc_event in exceptions:
            rid = as_datetime(exc_event.get("RECURRENCE-ID"), default_tz)
            if prop_text(exc_event, "STATUS").upper() == "CANCELLED":
                exdates.append(rid)
            else:
                o_start, o_end = event_times(exc_event, default_tz, cancel=(method == "CANCEL"))
                overrides.append((rid, o_start, o_end))
        rdates = date_list(event, "RDATE", default_tz)
        attendees_raw = event.get("ATTENDEE") or []
        if not isinstance(attendees_raw, list):
            attendees_raw = [attendees_raw]
        if len(attendees_raw) > MAX_ATTENDEES:
            raise ParseError(f"more than {MAX_ATTENDEES} attendees")
        body = html_body if html_body is not None else event_body(event)
        if len(body) > MAX_BODY:
            raise ParseError(f"body longer than {MAX_BODY} characters")
        # an attendee that is not one address is nobody an organizer update could go to
        attendee_params = tuple(
            (
                cal_address(x)[1],
                tuple((str(k), str(v)) for k, v in getattr(x, "params", {}).items()),
            )
            for x in attendees_raw
            if is_address(cal_address(x)[1])
        )
        attendees = tuple(a for a, _ in attendee_params)
    except (ParseError, ValueError, TypeError, AttributeError, OverflowError) as exc:
        # what is known of the request so far goes with the error: its decline can answer it
        raise ParseError(
            exc.reason if isinstance(exc, ParseError) else f"unreadable meeting times: {exc}",
            answerable(addr),
            name,
            shortened(subject),
            uid,
            sequence=known_sequence(event),
        ) from exc
    if recurrence_id is not None and rdates and len(rdates) == 1:
        rdates = ()  # Notes repeats a rescheduled instance as a one-period RDATE
    return Meeting(
        uid=uid,
        method=method,
        start=start,
        end=end,
        sequence=sequence_of(event),
        recurrence_id=recurrence_id,
        rrule=rrule_of(event) if recurrence_id is None else None,
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


def parse_mail(
    data: bytes,
    default_timezone: str = "UTC",
    correlation_id: str = "",
    *,
    any_method: bool = False,
) -> Parsed:
    """Meetings in an iMIP mail: the text/calendar part, with the text/html part as body
    (`any_method`: a calendar item's export, as parse_calendar says)."""
    if data.startswith(BOM):
        data = data[len(BOM) :]
    try:
        message = email.message_from_bytes(data, policy=email.policy.compat32)
        automatic = auto_submitted(message)
        sender = email.utils.parseaddr(_clean(str(message.get("From", ""))))
        mail_from, mail_sender = mail_senders(message)
        subject = shortened(_clean(str(message.get("Subject", "")))[: MAX_SUBJECT * 2])
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
            any_method=any_method,
        )
    except ParseError as exc:
        exc.auto_submitted = automatic
        if not exc.organizer_email and is_address(sender[1]):
            exc.organizer_email, exc.organizer_name = sender[1], exc.organizer_name or sender[0]
        exc.subject = exc.subject or subject  # no SUMMARY: the mail's Subject names it
        raise
    parsed = sent_in_mail(parsed, mail_from, mail_sender)
    return replace(parsed, auto_submitted=automatic)


def mail_senders(message: Message) -> tuple[str, str]:
    """(From, Sender) of a mail, each one address, or the header as it stands when it is not
    one (which then matches no organizer), or "" when absent: who sent the meeting message,
    which decides whether it may change a booking (meetings.from_organizer)."""
    found: list[str] = []
    for header in ("From", "Sender"):
        # raw: compat32 turns a value with 8-bit bytes into a Header whose str() is garbage
        values = [v for name, v in message.raw_items() if name.lower() == header.lower()]
        text = _clean(" ".join(str(v) for v in values))
        one = _one_address(text)
        found.append(one if is_address(one) else text[:MAX_HEADER_ADDRESS])
    return found[0], found[1]


MAX_HEADER_ADDRESS = 400  # characters of an unusable From or Sender kept for the log
# a name-addr or a bare address, as far as it can be told without rewriting what it says
_NAME_ADDR = re.compile(r"(?:[^<>]*<)?\s*([^<>\s,;]+@[^<>\s,;]+)\s*>?")


def _one_address(text: str) -> str:
    """The one address a From or Sender names, "" when it names none or several. Only ASCII
    goes through the standard library's parser: it folds look-alikes into letters (the Kelvin
    sign into K), which would log a forged sender as the real one."""
    if not text:
        return ""
    if text.isascii():
        addresses = email.utils.getaddresses([text])
        return addresses[0][1].strip() if len(addresses) == 1 else ""
    found = _NAME_ADDR.fullmatch(text)
    return found.group(1) if found else ""


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
    return replace(parsed, meetings=tuple(meetings))


def _clean(value: str) -> str:
    """A header value on one line, its raw UTF-8 (RFC 6532: an address such as
    `\u212aate@example.com` written unencoded) read as UTF-8: the parser keeps such bytes as
    surrogates, which would log as garbage instead of the address the mail names."""
    text = value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return " ".join(text.split())


def parse_file(
    name: str, data: bytes, default_timezone: str = "UTC", correlation_id: str = ""
) -> Parsed:
    if name.lower().endswith(".eml"):
        return parse_mail(data, default_timezone, correlation_id)
    return parse_calendar(data, default_timezone, correlation_id=correlation_id)


__all__ = ["EmailMessage", "ParseError", "Parsed", "parse_calendar", "parse_file", "parse_mail"]
