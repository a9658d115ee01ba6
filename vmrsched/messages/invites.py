"""Meeting requests made by hand (`vmrsched invite`) and dropped into a spool inbox, so an admin
can try the whole flow without Outlook."""

from __future__ import annotations

import argparse
import html
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parseaddr

import icalendar

from vmrsched import htmltext
from vmrsched.config import IntegrationConfig
from vmrsched.messages.calendars import PRODID
from vmrsched.rules import aliases


@dataclass(frozen=True)
class InviteOptions:
    subject: str = "Video meeting"
    start: datetime | None = None
    duration_minutes: int = 30
    rrule: str | None = None
    token: str | None = None  # None: a fresh TOK placeholder; "" : no token at all
    organizer: str = "Organizer <organizer@example.com>"
    attendees: tuple[str, ...] = ()
    uid: str | None = None
    sequence: int = 0
    cancel: bool = False
    html_body: str | None = None  # the meeting body as the organizer wrote it (demo pane)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> InviteOptions:
        start = None
        if args.start:
            try:
                start = datetime.fromisoformat(args.start)
            except ValueError as exc:
                raise ValueError(f"--start: not an ISO time: {args.start!r}") from exc
            if start.tzinfo is None:
                start = start.replace(tzinfo=UTC)
        return cls(
            subject=args.subject,
            start=start,
            duration_minutes=args.duration,
            rrule=args.rrule,
            token="" if args.no_token else args.token,
            organizer=args.organizer,
            attendees=tuple(args.attendee),
            uid=args.uid,
            sequence=args.sequence,
            cancel=args.cancel,
        )


def build(
    integ: IntegrationConfig, options: InviteOptions, now: datetime | None = None
) -> tuple[bytes, str]:
    """An iCalendar REQUEST (or CANCEL) for the integration's equipment mailbox."""
    now = now or datetime.now(UTC)
    start = options.start or (now + timedelta(hours=1)).replace(second=0, microsecond=0)
    if getattr(start.tzinfo, "key", None) is None:
        # a bare offset (+01:00) has no zone name a calendar can resolve: write UTC instead
        start = start.astimezone(UTC)
    uid = options.uid or f"{uuid.uuid4()}@vmrsched-invite"
    name, email = parseaddr(options.organizer)
    if not email:
        raise ValueError(f"--organizer: not an address: {options.organizer!r}")
    token = options.token if options.token is not None else aliases.placeholder_token()
    if token and aliases.find_token(token) is None:
        raise ValueError(f"--token: not a PXPS:-<uuid># or TOK:-<uuid># token: {token!r}")
    cal = icalendar.Calendar()
    cal.add("prodid", PRODID)
    cal.add("version", "2.0")
    cal.add("method", "CANCEL" if options.cancel else "REQUEST")
    event = icalendar.Event()
    event.add("uid", uid)
    event.add("sequence", options.sequence)
    event.add("dtstamp", now)
    event.add("dtstart", start)
    event.add("dtend", start + timedelta(minutes=options.duration_minutes))
    event.add("summary", options.subject)
    if options.rrule:
        event.add("rrule", icalendar.vRecur.from_ical(options.rrule))
    organizer = icalendar.vCalAddress(f"mailto:{email}")
    if name:
        organizer.params["CN"] = name
    event.add("organizer", organizer)
    room = icalendar.vCalAddress(f"mailto:{integ.exchange.mailbox_email}")
    room.params["CUTYPE"] = "RESOURCE"
    room.params["PARTSTAT"] = "NEEDS-ACTION"
    event.add("attendee", room)
    for attendee in options.attendees:
        event.add("attendee", icalendar.vCalAddress(f"mailto:{parseaddr(attendee)[1]}"))
    if options.html_body is not None:
        body = options.html_body
    else:
        body = f"<p>{html.escape(options.subject)}</p>" + (f"<p>{token}</p>" if token else "")
    event.add("description", htmltext.text_of(body))
    event.add("x-alt-desc", icalendar.vText(body), parameters={"FMTTYPE": "text/html"})
    if options.cancel:
        event.add("status", "CANCELLED")
    cal.add_component(event)
    return cal.to_ical(), uid
