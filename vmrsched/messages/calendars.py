"""What we send, before any mailbox is involved: iTIP REPLY/REQUEST calendars and the HTML
bodies of organizer updates. Pure text building, shared by answers, recovery and every backend."""

from __future__ import annotations

import contextlib
import html
import re
from datetime import UTC, datetime

import icalendar

from vmrsched import outgoing
from vmrsched.rules import recurrence
from vmrsched.rules.meetings import Meeting, occurrence_key
from vmrsched.rules.recurrence import Schedule

PRODID = "-//vmrsched//vmrsched 0.1//EN"


def message_id(integration: str, meeting: Meeting, kind: str, outcome: str) -> str:
    """Stable for the same meeting, sequence, occurrence and outcome: reprocessing after a crash
    produces the same id, so a resend replaces the earlier copy where the backend allows."""
    rid = occurrence_key(meeting.recurrence_id) if meeting.recurrence_id else "series"
    return outgoing.message_id(integration, meeting.uid, rid, str(meeting.sequence), kind, outcome)


def _event_base(meeting: Meeting, sequence: int) -> icalendar.Event:
    """The event's identity, times, subject and organizer. icalendar escapes TEXT values and
    encodes parameter values (RFC 6868); what it would write raw (control characters other
    than line breaks) is taken out first."""
    event = icalendar.Event()
    event.add("uid", _text(meeting.uid))
    event.add("sequence", sequence)
    event.add("dtstamp", datetime.now(UTC))
    event.add("dtstart", meeting.start)
    event.add("dtend", meeting.end)
    if meeting.recurrence_id is not None:
        event.add("recurrence-id", meeting.recurrence_id)
    if meeting.subject:
        event.add("summary", _text(meeting.subject))
    if meeting.organizer_email:
        organizer = calendar_address(meeting.organizer_email, meeting.organizer_name)
        event.add("organizer", organizer)
    return event


def calendar_address(address: str, name: str = "") -> icalendar.vCalAddress:
    """A CAL-ADDRESS as every calendar we write has it: `mailto:` and an address holding
    nothing that could end the line, and the name as CN, which icalendar quotes where RFC 5545
    asks and encodes as RFC 6868 says (what no value may hold is taken out first)."""
    value = icalendar.vCalAddress(f"mailto:{_address(address)}")
    if name:
        value.params["CN"] = _text(name)
    return value


# Characters no iCalendar value may hold (RFC 5545 CONTROL: every C0 control but HTAB, and
# DEL), with the C1 controls and Unicode's line and paragraph separators, which some readers
# take for line breaks. Line breaks themselves are escaped (TEXT) or encoded (parameters).
_UNWRITABLE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u2028\u2029]")
_LINE_BREAK = re.compile(r"\r\n?")


def _text(value: str) -> str:
    """`value` with every line break a plain LF (for escaping or encoding) and nothing else a
    reader could break a line at."""
    return _UNWRITABLE.sub("", _LINE_BREAK.sub("\n", value))


def _address(value: str) -> str:
    """An address as the value of a CAL-ADDRESS: nothing that could end the line."""
    return _UNWRITABLE.sub("", value).replace("\r", "").replace("\n", "")


def _escape(value: str) -> str:
    """RFC 5545 TEXT: backslash, semicolon, comma and line breaks escaped."""
    return (
        _text(value)
        .replace("\\", "\\\\")
        .replace(";", "\\;")
        .replace(",", "\\,")
        .replace("\n", "\\n")
    )


def _param(value: str) -> str:
    """RFC 6868 parameter value: ^ as ^^, a line break as ^n, a double quote as ^' (so a name
    that says "^n" or holds a newline can never start a line of its own); quoted when it holds
    a character that would end it."""
    clean = _text(value).replace("^", "^^").replace("\n", "^n").replace('"', "^'")
    return f'"{clean}"' if any(c in clean for c in ";:,") else clean


_PARAM_NAME = re.compile(r"[A-Za-z0-9-]{1,100}")


def _fold(line: str) -> str:
    """RFC 5545 folding: at most 75 octets a line, continuation lines start with a space."""
    data = line.encode()
    if len(data) <= 75:
        return line
    parts: list[str] = []
    limit = 75
    while data:
        cut = min(limit, len(data))
        while cut < len(data) and (data[cut] & 0xC0) == 0x80:  # never split a UTF-8 sequence
            cut -= 1
        parts.append(data[:cut].decode())
        data = data[cut:]
        limit = 74
    return "\r\n ".join(parts)


def _utc(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


def reply_calendar(meeting: Meeting, accepted: bool, room_email: str, room_name: str) -> str:
    """An iTIP REPLY from the room. Written directly (a fixed shape, on the hot path of every
    answer); values are escaped and lines folded as RFC 5545 says."""
    times = [f"DTSTART:{_utc(meeting.start)}", f"DTEND:{_utc(meeting.end)}"]
    if meeting.recurrence_id is not None:
        times.append(f"RECURRENCE-ID:{_utc(meeting.recurrence_id)}")
    return _reply(
        meeting.uid,
        meeting.sequence,
        times,
        meeting.subject,
        (meeting.organizer_email, meeting.organizer_name),
        "ACCEPTED" if accepted else "DECLINED",
        (room_email, room_name),
    )


def decline_calendar(
    uid: str,
    sequence: int,
    subject: str,
    organizer: tuple[str, str],
    room: tuple[str, str],
) -> str:
    """An iTIP REPLY declining a request that could not be read through (an unknown zone, no
    or impossible times) but whose UID and ORGANIZER could: the organizer's calendar shows
    the room declined. Without its times, which RFC 5546 (3.2.3) lets a REPLY leave out.
    `organizer` and `room` are (address, name)."""
    return _reply(uid, sequence, [], subject, organizer, "DECLINED", room)


def _reply(
    uid: str,
    sequence: int,
    times: list[str],
    subject: str,
    organizer: tuple[str, str],
    partstat: str,
    room: tuple[str, str],
) -> str:
    (organizer_email, organizer_name), (room_email, room_name) = organizer, room
    cn = f";CN={_param(room_name)}" if room_name else ""
    lines = [
        "BEGIN:VCALENDAR",
        f"PRODID:{PRODID}",
        "VERSION:2.0",
        "METHOD:REPLY",
        "BEGIN:VEVENT",
        f"UID:{_escape(uid)}",
        f"SEQUENCE:{sequence}",
        f"DTSTAMP:{_utc(datetime.now(UTC))}",
        *times,
    ]
    if subject:
        lines.append(f"SUMMARY:{_escape(subject)}")
    if organizer_email:
        org_cn = f";CN={_param(organizer_name)}" if organizer_name else ""
        lines.append(f"ORGANIZER{org_cn}:mailto:{_address(organizer_email)}")
    lines.append(f"ATTENDEE;PARTSTAT={partstat}{cn}:mailto:{_address(room_email)}")
    lines += ["END:VEVENT", "END:VCALENDAR"]
    return "\r\n".join(_fold(line) for line in lines) + "\r\n"


def update_calendar(meeting: Meeting, html_body: str, text_body: str) -> str:
    """The organizer's meeting re-sent with the real joining instructions (one higher SEQUENCE):
    the series (or single meeting) and a VEVENT of its own for each moved occurrence, as the
    request had them; `restate` brings it up to date with what the organizer did since."""
    cal = icalendar.Calendar()
    cal.add("prodid", PRODID)
    cal.add("version", "2.0")
    cal.add("method", "REQUEST")
    for text in meeting.vtimezones:  # the request's own zone definitions, carried unchanged
        try:
            zone = icalendar.Timezone.from_ical(text)
        except (ValueError, KeyError):
            continue
        cal.add_component(zone)
    event = _event_base(meeting, meeting.sequence + 1)
    if meeting.rrule:
        event.add("rrule", icalendar.vRecur.from_ical(meeting.rrule))
    for rdate in meeting.rdates:
        event.add("rdate", rdate)
    for exdate in meeting.exdates:
        event.add("exdate", exdate)
    event.add("description", _text(text_body))
    alt = icalendar.vText(_text(html_body))
    event.add("x-alt-desc", alt, parameters={"FMTTYPE": "text/html"})
    params = dict(meeting.attendee_params)
    for attendee in meeting.attendees:
        address = calendar_address(attendee)
        for key, value in params.get(attendee, ()):
            # CUTYPE, CN, ROLE, PARTSTAT, RSVP, … as the request had them (values encoded)
            if _PARAM_NAME.fullmatch(key):
                address.params[key] = _text(value)
        event.add("attendee", address)
    cal.add_component(event)
    if meeting.recurrence_id is None:
        _add_moved(cal, event, meeting.overrides)
    return _finished(cal)


# what says when a meeting happens and which of its versions an event is (RFC 5546 2.1.5)
_WHEN = ("SEQUENCE", "DTSTAMP", "DTSTART", "DTEND", "DURATION", "RRULE", "RDATE", "EXDATE")


def restate(calendar: str, schedule: Schedule, sequence: int) -> str | None:
    """An organizer update composed earlier (`update_calendar`) as the meeting stands now: its
    times, recurrence, cancelled occurrences (EXDATE) and moved ones (a VEVENT of their own with
    their RECURRENCE-ID and new times) from `schedule`, and SEQUENCE `sequence`. Everything
    else (subject, attendees, the body with the joining instructions) stays as composed. None
    for an update of one occurrence that the meeting no longer has (it was cancelled)."""
    cal = icalendar.Calendar.from_ical(calendar)
    events = [c for c in cal.subcomponents if c.name == "VEVENT"]
    cal.subcomponents = [c for c in cal.subcomponents if c.name != "VEVENT"]
    master = next((e for e in events if "RECURRENCE-ID" not in e), None)
    if master is None:  # an update of one occurrence (the meeting booked by it alone)
        event = events[0]
        when = _occurrence_now(schedule, event.decoded("RECURRENCE-ID"))
        if when is None:
            return None
        _set_when(event, sequence, when[0], when[1])
        cal.add_component(event)
        return _finished(cal)
    _set_when(master, sequence, schedule.start, schedule.end)
    if schedule.rrule:
        master.add("rrule", icalendar.vRecur.from_ical(schedule.rrule))
    for rdate in schedule.rdates:
        master.add("rdate", rdate)
    for exdate in schedule.exdates:
        master.add("exdate", exdate)
    cal.add_component(master)
    _add_moved(cal, master, schedule.overrides)
    return _finished(cal)


def _occurrence_now(
    schedule: Schedule, recurrence_id: datetime
) -> tuple[datetime, datetime] | None:
    if not schedule.recurring:
        return schedule.start, schedule.end
    found = recurrence.occurrence_of(schedule, recurrence_id)
    return (found.start, found.end) if found is not None else None


def _set_when(
    event: icalendar.cal.Component, sequence: int, start: datetime, end: datetime
) -> None:
    for name in _WHEN:
        event.pop(name, None)
    event.add("sequence", sequence)
    event.add("dtstamp", datetime.now(UTC))
    event.add("dtstart", start)
    event.add("dtend", end)


_SERIES_ONLY = ("RRULE", "RDATE", "EXDATE", "DTSTART", "DTEND", "DURATION", "RECURRENCE-ID")


def _add_moved(
    cal: icalendar.Calendar,
    master: icalendar.cal.Component,
    moved: tuple[tuple[datetime, datetime, datetime], ...],
) -> None:
    """A VEVENT for each moved occurrence (recurrence id, start, end): the master's own
    properties (the body with the joining instructions, the attendees) at its new times."""
    for recurrence_id, start, end in moved:
        event = icalendar.Event()
        for name, value in master.items():
            if name not in _SERIES_ONLY:
                event[name] = value
        event.add("recurrence-id", recurrence_id)
        event.add("dtstart", start)
        event.add("dtend", end)
        cal.add_component(event)


def _finished(cal: icalendar.Calendar) -> str:
    with contextlib.suppress(Exception):  # an unusual zone: its TZID still names it
        cal.add_missing_timezones()  # a VTIMEZONE for every IANA zone the times use
    return str(cal.to_ical().decode())


def replace_placeholder(
    body: str, token_text: str, placeholder_html: str, instructions_html: str
) -> str:
    """The organizer's body with the placeholder (as the add-in inserted it) and its TOK token
    swapped for the real joining instructions. Mail clients re-format HTML, so when the
    placeholder text is no longer found verbatim only the token is replaced."""
    if placeholder_html and placeholder_html in body:
        body = body.replace(placeholder_html, "", 1)
    for text in (token_text, html.escape(token_text)):
        if text and text in body:
            return _put_in_place_of(body, body.index(text), len(text), instructions_html)
    return body + instructions_html


_P_OPEN = re.compile(r"<(p)(?:\s[^>]*)?>", re.IGNORECASE)
_BLOCK = re.compile(r"<(p|div|li|td|span)\b[^>]*>", re.IGNORECASE)


def _enclosing(
    body: str, at: int, openings: re.Pattern[str]
) -> tuple[re.Match[str], re.Match[str] | None] | None:
    """The innermost element (of those `openings` finds) still open at `at`, with its closing
    tag when there is one."""
    for opening in reversed(list(openings.finditer(body, 0, at))):
        closing_tag = re.compile(rf"</{opening.group(1)}\s*>", re.IGNORECASE)
        if closing_tag.search(body, opening.end(), at) is None:
            return opening, closing_tag.search(body, at)
    return None


def _put_in_place_of(body: str, at: int, length: int, block: str) -> str:
    """`block` (block-level HTML) in place of body[at:at+length]. A paragraph cannot hold a
    block: a paragraph with nothing else in it is replaced whole, otherwise it is closed
    before the block and reopened after it."""
    opening, closing = _enclosing(body, at, _P_OPEN) or (None, None)
    if opening is not None and closing is not None:
        inside = body[opening.end() : at] + body[at + length : closing.start()]
        if not re.sub(r"<[^>]*>|&nbsp;|\s", "", inside):
            return body[: opening.start()] + block + body[closing.end() :]
        return body[:at] + "</p>" + block + opening.group(0) + body[at + length :]
    return body[:at] + block + body[at + length :]


_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")
MAX_HEADER = 900  # characters of one header value (RFC 5322 allows 998 octets a line)


def clean_header(value: str) -> str:
    """A header value on one line: newlines and other control characters (attacker-controlled
    SUMMARY, UID or CN) become spaces, and very long values are cut."""
    return _CONTROL.sub(" ", value).strip()[:MAX_HEADER]


def replace_instructions(
    body: str, token_text: str, skeleton: str, sentinels: tuple[str, ...], instructions_html: str
) -> str:
    """The organizer's body with every trace of earlier joining instructions (for an alias that
    no longer exists: recovery) removed and the new instructions in their place, once.

    `skeleton` is the instructions template rendered with `sentinels` standing for the alias
    values: every copy of it with any values is cut out. Where a client re-formatted the HTML so
    that the skeleton no longer matches, the blocks that name the dead token go instead."""
    pattern = re.escape(skeleton)
    for sentinel in sentinels:
        pattern = pattern.replace(re.escape(sentinel), r"[^<>\"]{0,300}?")
    first: int | None = None
    if skeleton.strip():
        matches = list(re.finditer(pattern, body))
        for match in reversed(matches):
            body = body[: match.start()] + body[match.end() :]
            first = match.start()
        if not matches:  # the markup was rewritten (Exchange, Outlook): match the words instead
            body, first = _cut_by_text(body, token_text, skeleton, sentinels)
    while token_text and token_text in body:
        at = body.index(token_text)
        found = _enclosing(body, at, _BLOCK)
        start, end = at, at + len(token_text)
        if found is not None:
            start = found[0].start()
            end = found[1].end() if found[1] is not None else end
        body = body[:start] + body[end:]
        first = start if first is None else min(first, start)
    if first is None:
        return body + instructions_html
    return body[:first] + instructions_html + body[first:]


_TOKEN = re.compile(r"<[^>]*>|&#?\w+;|[^<&]+|[<&]")
_TAG = re.compile(r"<\s*(/?)\s*([a-zA-Z][\w:-]*)[^>]*?(/?)\s*>")
# after the words: closing tags, and elements with nothing in them (Word's <o:p></o:p>)
_CLOSING_OR_EMPTY = re.compile(r"\s*(?:</[^>]*>|<([\w:]+)[^>]*>\s*</\1\s*>)")
_VOID = frozenset({"br", "hr", "img", "meta", "link", "input", "wbr", "col", "area", "base"})


def _text_positions(body: str) -> tuple[str, list[int], list[int]]:
    """The body's words with no markup and no white space, and where each character of them
    starts and ends in the body (an entity is one character spanning its source)."""
    chars: list[str] = []
    starts: list[int] = []
    ends: list[int] = []
    for piece in _TOKEN.finditer(body):
        text = piece.group(0)
        if text.startswith("<") and len(text) > 1:
            continue
        if text.startswith("&") and len(text) > 1:
            decoded = html.unescape(text)
            if not decoded.isspace():
                chars.append(decoded)
                starts.append(piece.start())
                ends.append(piece.end())
            continue
        for offset, char in enumerate(text):
            if not char.isspace():
                chars.append(char)
                starts.append(piece.start() + offset)
                ends.append(piece.start() + offset + 1)
    return "".join(chars), starts, ends


def _unbalanced(region: str) -> str:
    """The tags of `region` that open or close something outside it (kept, so what stays
    around a cut is still well formed); text and pairs within it go."""
    kept: list[tuple[str, str]] = []  # (name, tag) still open, or closings of outer elements
    for tag in _TAG.finditer(region):
        closing, name, self_closing = tag.group(1), tag.group(2).lower(), tag.group(3)
        if name in _VOID or self_closing:
            continue
        if not closing:
            kept.append((name, tag.group(0)))
            continue
        for index in range(len(kept) - 1, -1, -1):
            if kept[index][0] == name and not kept[index][1].startswith("</"):
                del kept[index:]  # the pair (and anything left open inside it) goes
                break
        else:
            kept.append((name, tag.group(0)))
    return "".join(tag for _, tag in kept)


def _cut_by_text(
    body: str, token_text: str, skeleton: str, sentinels: tuple[str, ...]
) -> tuple[str, int | None]:
    """Every stretch of the body whose words are the instructions' words (the alias values
    being any), wherever markup, entities and white space were rewritten, cut out with the
    markup around it that it alone filled. Only stretches that name the dead token count."""
    words, _, _ = _text_positions(skeleton)
    if not words or not token_text:
        return body, None
    wanted = "".join(token_text.split())
    # a value is the dead token where it stands (tried first, so one at the very end is taken
    # whole), else the fewest characters that let the words after it match
    value = f"(?:{re.escape(wanted)}|.{{0,300}}?)"
    pattern = re.escape(words)
    for sentinel in sentinels:
        pattern = pattern.replace(re.escape(sentinel), value)
    text, starts, ends = _text_positions(body)
    found = [m for m in re.finditer(pattern, text, re.DOTALL) if wanted in m.group(0)]
    first: int | None = None
    for match in reversed(found):
        start, end = starts[match.start()], ends[match.end() - 1]
        # widen over the tags right around the words: the elements the instructions filled
        while (before := re.search(r"<[^/!][^>]*>\s*$", body[:start])) is not None:
            start = before.start()
        while (after := _CLOSING_OR_EMPTY.match(body, end)) is not None:
            end = after.end()
        body = body[:start] + _unbalanced(body[start:end]) + body[end:]
        first = start
    return body, first
