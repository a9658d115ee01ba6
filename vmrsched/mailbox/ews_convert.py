"""EWS items as the service's types: an inbox item read through its MIME content (Exchange keeps
the iCalendar it sent: UID, SEQUENCE, recurrence rule, exceptions, time zones, organizer, HTML
body), turned into meetings by the same iTIP translator as the other backends, so every backend
reaches the same decisions; the room's calendar items likewise. Pure functions: no calls, no
state, safe from any thread.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from vmrsched.mailbox import itip
from vmrsched.mailbox.base import CalendarEntry, InboxItem
from vmrsched.rules.meetings import is_address

log = logging.getLogger("vmrsched.ews")

MEETING_CLASSES = ("IPM.Schedule.Meeting.Request", "IPM.Schedule.Meeting.Canceled")
FETCH_FIELDS = ("mime_content", "item_class", "datetime_received", "subject", "sender", "author")


def inbox_item(item_id: str, item: Any, timezone: str) -> InboxItem:
    """An inbox item as fetched with FETCH_FIELDS (`timezone`: for times given without one)."""
    received = item.datetime_received or datetime.now(UTC)
    item_class = item.item_class or ""
    sender = getattr(item, "sender", None)
    sender_email = getattr(sender, "email_address", "") or ""
    sender_name = getattr(sender, "name", "") or ""
    if not item_class.startswith(MEETING_CLASSES):
        # an out-of-office, a bounce, a newsletter, a meeting response: never answered (a
        # request item whose iCalendar says another iTIP method is set aside by itip alike)
        return InboxItem(
            item_id,
            received,
            error=f"not a meeting request ({item_class})",
            sender_email=sender_email,
            sender_name=sender_name,
            subject=item.subject or "",
            not_meeting=True,
        )
    if not item.mime_content:
        return InboxItem(item_id, received, error="meeting message without MIME content")
    try:
        parsed = itip.parse_mail(item.mime_content, timezone)
    except itip.ParseError as exc:
        return InboxItem(
            item_id,
            received,
            error=exc.reason,
            sender_email=exc.organizer_email or sender_email,
            sender_name=exc.organizer_name or sender_name,
            subject=exc.subject or item.subject or "",
            uid=exc.uid,
            sequence=exc.sequence,
            not_meeting=exc.not_meeting,
            auto_submitted=exc.auto_submitted,
        )
    # who sent it, as Exchange has it (From is EWS's "author"): it decides whether the
    # message may change a booking; an address Exchange gives in another form than SMTP
    # leaves the MIME headers' word
    parsed = itip.sent_in_mail(parsed, smtp(getattr(item, "author", None)), smtp(sender))
    return InboxItem(
        item_id, received, meetings=parsed.meetings, auto_submitted=parsed.auto_submitted
    )


def calendar_entries(
    items: Iterable[tuple[str, Any]], timezone: str, integration: str
) -> list[CalendarEntry]:
    """The room's calendar items (id, and the item with its MIME content, or the error EWS gave
    for it) as one entry per meeting, a series once; an unreadable one is logged and left out."""
    entries = []
    seen: set[str] = set()
    for item_id, item in items:
        if isinstance(item, Exception) or not item.mime_content:
            continue
        try:
            # a calendar item, not a message: whatever method its export names
            parsed = itip.parse_mail(item.mime_content, timezone, any_method=True)
        except itip.ParseError as exc:
            log.warning(
                "unreadable calendar item: %s",
                exc.reason,
                extra={"integration": integration, "item": item_id},
            )
            continue
        for meeting in parsed.meetings:
            if meeting.uid not in seen:  # a series' occurrences share one UID
                seen.add(meeting.uid)
                entries.append(CalendarEntry(meeting, item_id))
    return entries


def smtp(mailbox: Any) -> str:
    """The SMTP address of an EWS mailbox (Sender, From), or "" when Exchange gave another form
    (an internal EX address) or none."""
    address = str(getattr(mailbox, "email_address", "") or "").strip()
    return address if is_address(address) else ""
