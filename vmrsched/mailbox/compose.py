"""Outgoing messages: iTIP REPLY/REQUEST calendars, organizer-update bodies, RFC 5322 mails."""

from __future__ import annotations

import hashlib
import html
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, formataddr, make_msgid

import icalendar

from vmrsched.mailbox.base import Outgoing
from vmrsched.meetings import Meeting, occurrence_key

PRODID = "-//vmrsched//vmrsched 0.1//EN"


def message_id(integration: str, meeting: Meeting, kind: str, outcome: str) -> str:
    """Stable for the same meeting, sequence, occurrence and outcome: reprocessing after a crash
    produces the same id, so a resend replaces the earlier copy where the backend allows."""
    rid = occurrence_key(meeting.recurrence_id) if meeting.recurrence_id else "series"
    key = f"{integration}\0{meeting.uid}\0{rid}\0{meeting.sequence}\0{kind}\0{outcome}"
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def _event_base(meeting: Meeting, sequence: int) -> icalendar.Event:
    event = icalendar.Event()
    event.add("uid", meeting.uid)
    event.add("sequence", sequence)
    event.add("dtstamp", datetime.now(UTC))
    event.add("dtstart", meeting.start)
    event.add("dtend", meeting.end)
    if meeting.recurrence_id is not None:
        event.add("recurrence-id", meeting.recurrence_id)
    if meeting.subject:
        event.add("summary", meeting.subject)
    if meeting.organizer_email:
        organizer = icalendar.vCalAddress(f"mailto:{meeting.organizer_email}")
        if meeting.organizer_name:
            organizer.params["CN"] = meeting.organizer_name
        event.add("organizer", organizer)
    return event


def reply_calendar(meeting: Meeting, accepted: bool, room_email: str, room_name: str) -> str:
    cal = icalendar.Calendar()
    cal.add("prodid", PRODID)
    cal.add("version", "2.0")
    cal.add("method", "REPLY")
    event = _event_base(meeting, meeting.sequence)
    attendee = icalendar.vCalAddress(f"mailto:{room_email}")
    attendee.params["PARTSTAT"] = "ACCEPTED" if accepted else "DECLINED"
    if room_name:
        attendee.params["CN"] = room_name
    event.add("attendee", attendee)
    cal.add_component(event)
    return str(cal.to_ical().decode())


def update_calendar(meeting: Meeting, html_body: str, text_body: str) -> str:
    """The organizer's meeting re-sent with the real joining instructions (one higher SEQUENCE)."""
    cal = icalendar.Calendar()
    cal.add("prodid", PRODID)
    cal.add("version", "2.0")
    cal.add("method", "REQUEST")
    event = _event_base(meeting, meeting.sequence + 1)
    if meeting.rrule:
        event.add("rrule", icalendar.vRecur.from_ical(meeting.rrule))
    for exdate in meeting.exdates:
        event.add("exdate", exdate)
    event.add("description", text_body)
    alt = icalendar.vText(html_body)
    event.add("x-alt-desc", alt, parameters={"FMTTYPE": "text/html"})
    for attendee in meeting.attendees:
        event.add("attendee", icalendar.vCalAddress(f"mailto:{attendee}"))
    cal.add_component(event)
    return str(cal.to_ical().decode())


def replace_placeholder(
    body: str, token_text: str, placeholder_html: str, instructions_html: str
) -> str:
    """The organizer's body with the placeholder (as the add-in inserted it) and its TOK token
    swapped for the real joining instructions. Mail clients re-format HTML, so when the
    placeholder text is no longer found verbatim only the token is replaced."""
    if placeholder_html and placeholder_html in body:
        body = body.replace(placeholder_html, "", 1)
    if token_text in body:
        return body.replace(token_text, instructions_html, 1)
    escaped = html.escape(token_text)
    if escaped in body:
        return body.replace(escaped, instructions_html, 1)
    return body + instructions_html


def to_eml(message: Outgoing) -> bytes:
    """An RFC 5322 mail: multipart/alternative with the HTML body and the text/calendar part."""
    mail = EmailMessage()
    mail["From"] = formataddr((message.sender_name, message.sender))
    mail["To"] = ", ".join(message.recipients)
    mail["Subject"] = message.subject
    mail["Date"] = format_datetime(datetime.now(UTC))
    mail["Message-ID"] = make_msgid(idstring=message.id, domain="vmrsched.invalid")
    mail["X-Vmrsched-Outcome"] = message.outcome
    mail["X-Vmrsched-Reason"] = message.reason
    mail["X-Vmrsched-Correlation-Id"] = message.correlation_id
    mail["X-Vmrsched-Meeting-Uid"] = message.meeting_uid
    mail.set_content(message.html_body, subtype="html")
    if message.calendar:
        method = "REQUEST" if message.kind == "update" else "REPLY"
        mail.add_alternative(message.calendar, subtype="calendar", params={"method": method})
    if not mail.is_multipart():
        mail.make_alternative()
    return bytes(mail)
