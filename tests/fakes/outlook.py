"""Outlook for browser tests: the Office.js stand-in (office/office.js) served in place of
Microsoft's library, and what Outlook with Exchange does with the appointment once it is sent.

The stand-in is written from Microsoft's documentation only, so that the add-in's code is checked
against the documented host rather than against itself (office/README.md says which page each
behaviour follows). `install` puts it in a browser; `state`, `calls` and `fire` read and drive it;
`send` renders the meeting request Exchange would send (iMIP, RFC 6047 / RFC 5546 METHOD:REQUEST)
and `deliver` routes it to a mailbox's inbox directory as Exchange would: only to attendees."""

from __future__ import annotations

import contextlib
import email.policy
import html
import json
import os
import re
import secrets
import tempfile
import uuid
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, formataddr, make_msgid
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from playwright.sync_api import BrowserContext, Page, Route

OFFICE_JS = Path(__file__).resolve().parent / "office" / "office.js"
DEFAULT_URL = "https://appsforoffice.microsoft.com/lib/1/hosted/office.js"
# any URL whose path ends in /office.js (a query string or fragment after it is allowed)
OFFICE_JS_URL = re.compile(r"^[^?#]*/office\.js(?:[?#].*)?$")

# Outlook's UIDs are the hex of the item's GlobalObjectId (MS-OXOCAL): this fixed class id first
OUTLOOK_UID_PREFIX = "040000008200E00074C5B7101A82E008"
FILETIME_EPOCH_OFFSET = 116444736000000000  # 100 ns ticks from 1601-01-01 to 1970-01-01


def install(target: Page | BrowserContext, config: dict[str, Any]) -> None:
    """Serve the stand-in for every `.../office.js` request and set `window.__officeHostConfig`
    before any page script runs. On a BrowserContext the dialogs an add-in opens (popups) get
    both too; on a Page they do not, as Playwright scopes routes and init scripts to the page."""
    source = OFFICE_JS.read_text(encoding="utf-8")

    def serve(route: Route) -> None:
        route.fulfill(
            status=200,
            content_type="text/javascript; charset=utf-8",
            body=source,
            headers={"Cache-Control": "no-store"},
        )

    target.route(OFFICE_JS_URL, serve)
    target.add_init_script(script=f"window.__officeHostConfig = {json.dumps(config)};")


def state(page: Page) -> dict[str, Any]:
    """The compose form as the stand-in holds it (what Outlook would save or send)."""
    result: dict[str, Any] = page.evaluate("() => window.__outlook.state()")
    return result


def calls(page: Page) -> list[dict[str, Any]]:
    """Every Office.js call the page made, in order, as `{api, args}`."""
    result: list[dict[str, Any]] = page.evaluate("() => window.__outlook.calls")
    return result


def fire(
    page: Page,
    name: str,
    *,
    event_type: str | None = None,
    source_id: str | None = None,
) -> dict[str, Any]:
    """Run the handler the add-in associated with `name` as Outlook would and return what the
    host makes of `event.completed(options)`: the options it knows, `{"invalid": [...], ...}`
    when they break the documented limits, `{"error": ...}` if the handler threw, or
    `{"timeout": True}` after 5 s. Launch events come from the config's `launchEvents` (event
    type to function name, as in the manifest) unless `event_type` is given; anything else is a
    function command whose `event.source.id` is `source_id` (default: `name`)."""
    opts: dict[str, Any] = {}
    if event_type is not None:
        opts["eventType"] = event_type
    if source_id is not None:
        opts["sourceId"] = source_id
    result: dict[str, Any] = page.evaluate(
        "([name, opts]) => window.__outlook.fire(name, opts)", [name, opts]
    )
    return result


def outlook_uid(now: datetime | None = None) -> str:
    """A fresh UID of the form Outlook gives a new meeting: the GlobalObjectId's class id, an
    empty instance date, the creation time as a FILETIME, reserved zeros, then 16 random bytes
    with their length; all upper-case hex."""
    moment = now or datetime.now(UTC)
    ticks = int(moment.timestamp() * 10_000_000) + FILETIME_EPOCH_OFFSET
    return (
        OUTLOOK_UID_PREFIX
        + "00000000"
        + ticks.to_bytes(8, "little").hex().upper()
        + "0000000000000000"
        + (16).to_bytes(4, "little").hex().upper()
        + uuid.uuid4().hex.upper()
    )


# ---------------------------------------------------------------- iCalendar by hand
# Written by hand rather than with the icalendar package so that the escaping and folding are
# exactly the RFCs' and the tests can parse the result with that package as an independent check.


def _text(value: str) -> str:
    """An RFC 5545 TEXT value (3.3.11): backslash, semicolon, comma escaped; newlines as \\n."""
    value = value.replace("\r\n", "\n").replace("\r", "\n")
    for char, escaped in (("\\", "\\\\"), (";", "\\;"), (",", "\\,"), ("\n", "\\n")):
        value = value.replace(char, escaped)
    return value


def _param(value: str) -> str:
    """A parameter value: RFC 6868 caret encoding, quoted when it holds : ; or , (RFC 5545)."""
    value = value.replace("\r\n", "\n").replace("\r", "\n")
    encoded = value.replace("^", "^^").replace("\n", "^n").replace('"', "^'")
    return f'"{encoded}"' if re.search(r"[:;,]", encoded) else encoded


def _fold(line: str) -> str:
    """Fold a content line at 75 octets (RFC 5545 3.1), never inside a UTF-8 sequence."""
    out: list[str] = []
    current = b""
    limit = 75
    for char in line:
        encoded = char.encode("utf-8")
        if len(current) + len(encoded) > limit:
            out.append(current.decode("utf-8"))
            current = b""
            limit = 74  # continuation lines start with a space
        current += encoded
    out.append(current.decode("utf-8"))
    return "\r\n ".join(out)


def _utc(value: str | datetime) -> str:
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    if moment.tzinfo is None:
        raise ValueError(f"a time without a zone: {value!r}")
    return moment.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


class _Text(HTMLParser):
    """The text of an HTML body, one line per block, as a plain-text alternative."""

    BLOCKS = frozenset(
        {"p", "div", "li", "ul", "ol", "tr", "table", "blockquote", "pre", "section", "header"}
        | {"footer", "h1", "h2", "h3", "h4", "h5", "h6"}
    )

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("style", "script", "head", "title"):
            self.skip += 1
        elif tag == "br" or tag in self.BLOCKS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("style", "script", "head", "title"):
            self.skip = max(0, self.skip - 1)
        elif tag in self.BLOCKS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self.skip:
            self.parts.append(re.sub(r"\s+", " ", data))

    def text(self) -> str:
        lines = (line.strip() for line in "".join(self.parts).split("\n"))
        return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def html_to_text(content: str) -> str:
    """The plain text Outlook puts beside the HTML body (and in DESCRIPTION)."""
    parser = _Text()
    parser.feed(content)
    parser.close()
    return parser.text()


def html_document(content: str) -> str:
    """The body content as the whole HTML document the message carries."""
    return (
        '<html>\r\n<head>\r\n<meta http-equiv="Content-Type" content="text/html; charset=utf-8">'
        f"\r\n</head>\r\n<body>\r\n{content}\r\n</body>\r\n</html>\r\n"
    )


def _content(page_state: dict[str, Any]) -> str:
    """The body as HTML: a plain-text body (bodyType "text") becomes escaped lines."""
    content = str(page_state.get("bodyContent", ""))
    if page_state.get("bodyType") == "text":
        return "<br>\n".join(html.escape(line) for line in content.split("\n"))
    return content


def _attendees(page_state: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    rows = [("REQ-PARTICIPANT", a) for a in page_state.get("requiredAttendees", [])]
    rows += [("OPT-PARTICIPANT", a) for a in page_state.get("optionalAttendees", [])]
    return rows


def calendar(
    page_state: dict[str, Any],
    *,
    organizer: tuple[str, str],
    sent_by: str | None,
    uid: str,
    sequence: int,
    dtstamp: datetime,
) -> str:
    """The VCALENDAR (METHOD:REQUEST, one VEVENT) of the meeting request."""
    name, address = organizer
    content = _content(page_state)
    org = f"ORGANIZER;CN={_param(name)}"
    if sent_by:
        org += f';SENT-BY="mailto:{sent_by}"'
    lines = [
        "BEGIN:VCALENDAR",
        "METHOD:REQUEST",
        "PRODID:Microsoft Exchange Server 2010",
        "VERSION:2.0",
        "BEGIN:VEVENT",
        f"{org}:mailto:{address}",
    ]
    for role, attendee in _attendees(page_state):
        cn = str(attendee.get("displayName") or attendee["emailAddress"])
        lines.append(
            f"ATTENDEE;ROLE={role};PARTSTAT=NEEDS-ACTION;RSVP=TRUE;CN={_param(cn)}"
            f":mailto:{attendee['emailAddress']}"
        )
    lines += [
        f"DESCRIPTION;LANGUAGE=en-US:{_text(html_to_text(content))}",
        f"UID:{uid}",
        f"SUMMARY;LANGUAGE=en-US:{_text(str(page_state.get('subject', '')))}",
        f"DTSTART:{_utc(page_state['start'])}",
        f"DTEND:{_utc(page_state['end'])}",
        "CLASS:PUBLIC",
        "PRIORITY:5",
        f"DTSTAMP:{_utc(dtstamp)}",
        "TRANSP:OPAQUE",
        "STATUS:CONFIRMED",
        f"SEQUENCE:{sequence}",
        f"LOCATION;LANGUAGE=en-US:{_text(str(page_state.get('location', '')))}",
        "X-MICROSOFT-CDO-APPT-SEQUENCE:" + str(sequence),
        "X-MICROSOFT-CDO-BUSYSTATUS:TENTATIVE",
        "X-MICROSOFT-CDO-INTENDEDSTATUS:BUSY",
        "X-MICROSOFT-CDO-ALLDAYEVENT:FALSE",
        "X-MICROSOFT-CDO-IMPORTANCE:1",
        "X-MICROSOFT-CDO-INSTTYPE:0",
        f"X-ALT-DESC;FMTTYPE=text/html:{_text(html_document(content))}",
        "X-MICROSOFT-DISALLOW-COUNTER:FALSE",
        "BEGIN:VALARM",
        "DESCRIPTION:REMINDER",
        "TRIGGER;RELATED=START:-PT15M",
        "ACTION:DISPLAY",
        "END:VALARM",
        "END:VEVENT",
        "END:VCALENDAR",
    ]
    return "".join(_fold(line) + "\r\n" for line in lines)


def send(
    page_state: dict[str, Any],
    *,
    organizer: tuple[str, str],
    sent_by: str | None = None,
    uid: str | None = None,
    sequence: int = 0,
    dtstamp: datetime,
) -> bytes:
    """The meeting request Outlook with Exchange sends for the item in `page_state` (from
    `state`): From the organizer (Sender the delegate when `sent_by` is given), To the required
    and Cc the optional attendees, multipart/alternative of text, HTML and the text/calendar
    METHOD:REQUEST part. `organizer` is (display name, address)."""
    if dtstamp.tzinfo is None:
        raise ValueError("dtstamp must carry a time zone")
    name, address = organizer
    the_uid = uid or outlook_uid(dtstamp)
    content = _content(page_state)
    ical = calendar(
        page_state,
        organizer=organizer,
        sent_by=sent_by,
        uid=the_uid,
        sequence=sequence,
        dtstamp=dtstamp,
    )

    msg = EmailMessage(policy=email.policy.SMTP)
    msg["From"] = formataddr((name, address))
    if sent_by:
        msg["Sender"] = sent_by
    required = [a for role, a in _attendees(page_state) if role == "REQ-PARTICIPANT"]
    optional = [a for role, a in _attendees(page_state) if role == "OPT-PARTICIPANT"]
    if required:
        msg["To"] = ", ".join(
            formataddr((str(a.get("displayName") or ""), a["emailAddress"])) for a in required
        )
    if optional:
        msg["Cc"] = ", ".join(
            formataddr((str(a.get("displayName") or ""), a["emailAddress"])) for a in optional
        )
    msg["Subject"] = str(page_state.get("subject", ""))
    msg["Date"] = format_datetime(dtstamp.astimezone(UTC))
    msg["Message-ID"] = make_msgid(domain=address.rpartition("@")[2] or "localhost")
    msg.set_content(html_to_text(content), subtype="plain", charset="utf-8")
    msg.add_alternative(html_document(content), subtype="html", charset="utf-8")
    msg.add_alternative(ical, subtype="calendar", charset="utf-8", params={"method": "REQUEST"})
    # after the parts: making the message multipart moves every Content-* header into a part
    msg["Content-Class"] = "urn:content-classes:calendarmessage"
    return msg.as_bytes()


def _is_attendee(page_state: dict[str, Any], mailbox: str) -> bool:
    wanted = mailbox.casefold()
    return any(str(a["emailAddress"]).casefold() == wanted for _, a in _attendees(page_state))


def _safe_name(uid: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", uid)
    return safe[:160] if safe else secrets.token_hex(16)


def deliver(
    page_state: dict[str, Any], inbox: Path, mailbox: str, **send_kwargs: Any
) -> Path | None:
    """Exchange's routing of the meeting request to `mailbox`: it arrives only if the mailbox is
    a required or optional attendee (addresses compared without case). The message is written
    whole or not at all (a temporary name not ending in .eml, fsync, then a link to the final
    name that never replaces another message), so a watcher of `inbox` never sees half a file.
    Returns the path, or None when the mailbox is not invited."""
    if not _is_attendee(page_state, mailbox):
        return None
    kwargs = dict(send_kwargs)
    if not kwargs.get("uid"):
        kwargs["uid"] = outlook_uid(kwargs.get("dtstamp"))
    data = send(page_state, **kwargs)
    inbox.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=inbox, prefix=".incoming-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        stem = f"{_safe_name(str(kwargs['uid']))}-{int(kwargs.get('sequence', 0))}"
        for n in range(1, 1000):
            final = inbox / (f"{stem}.eml" if n == 1 else f"{stem}-{n}.eml")
            try:
                os.link(tmp, final)
            except FileExistsError:
                continue
            _fsync_dir(inbox)
            return final
        raise FileExistsError(f"no free name for {stem} in {inbox}")
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


__all__ = [
    "DEFAULT_URL",
    "OFFICE_JS",
    "calendar",
    "calls",
    "deliver",
    "fire",
    "html_document",
    "html_to_text",
    "install",
    "outlook_uid",
    "send",
    "state",
]
