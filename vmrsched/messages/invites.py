"""Meeting requests made by hand (`vmrsched invite`) and dropped into a spool inbox, so an admin
can try the whole flow without Outlook."""

from __future__ import annotations

import argparse
import html
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.errors import MessageError
from email.headerregistry import AddressHeader, HeaderRegistry
from email.utils import unquote

import icalendar

from vmrsched import htmltext
from vmrsched.config import IntegrationConfig
from vmrsched.messages.calendars import PRODID, calendar_address
from vmrsched.rules import aliases
from vmrsched.rules.meetings import is_address

# "Name <address>" where the name is typed as people write it ("Doe, John", "O'Brien (IT)"):
# no angle bracket in it, so it cannot hide a second address
_NAMED = re.compile(r"\s*([^<>]*?)\s*<([^<>]*)>\s*", re.DOTALL)
_QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)  # one RFC 5322 quoted-string
_HEADERS = HeaderRegistry()


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
    name, email = one_address(options.organizer, "--organizer")
    guests = [one_address(attendee, "--attendee")[1] for attendee in options.attendees]
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
    event.add("organizer", calendar_address(email, name))
    room = calendar_address(integ.exchange.mailbox_email)
    room.params["CUTYPE"] = "RESOURCE"
    room.params["PARTSTAT"] = "NEEDS-ACTION"
    event.add("attendee", room)
    for guest in guests:
        event.add("attendee", calendar_address(guest))
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


def one_address(text: str, option: str) -> tuple[str, str]:
    """(name, address) of `text`, written "Name <address>" (the name as typed, commas and
    parentheses included, or quoted as RFC 5322 quotes it) or as the bare address. ValueError,
    naming `option`, for anything else: a list, a group, an unquoted name holding angle
    brackets, no address at all. A meeting's organizer is one address (DESIGN, Security)."""
    named = _NAMED.fullmatch(text)
    if named is not None:
        name, address = _unquoted(named.group(1)), named.group(2).strip()
    else:
        name, address = _parsed(text)
    if not is_address(address):
        raise ValueError(
            f"{option}: not one address: {text!r} (write 'Name <address>' or the address; "
            "quote a name that holds < or >)"
        )
    return name, address


def _unquoted(name: str) -> str:
    """A name as RFC 5322 quotes it ("Smith, Ann") without its quotes; any other as typed."""
    return unquote(name) if _QUOTED.fullmatch(name) else name


def _parsed(text: str) -> tuple[str, str]:
    """(name, address) as a mail header reads `text` when it is exactly one address outside
    any group and read without a defect; ("", "") otherwise."""
    try:
        header = _HEADERS("To", text)
    except (ValueError, MessageError):
        return "", ""
    if not isinstance(header, AddressHeader):
        return "", ""
    groups = header.groups
    if header.defects or len(groups) != 1 or groups[0].display_name is not None:
        return "", ""
    if len(groups[0].addresses) != 1:
        return "", ""
    found = groups[0].addresses[0]
    return found.display_name, found.addr_spec
