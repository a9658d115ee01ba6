"""What an organizer receives: every mail has a text/plain alternative, readable parts (no
base64), valid HTML (no block inside a paragraph), names that sort by time, and organizer
updates that keep the request's zone definitions and attendee parameters."""

from __future__ import annotations

import email
import email.policy
from dataclasses import replace
from email.header import decode_header, make_header
from html.parser import HTMLParser
from pathlib import Path

import icalendar
import pytest

from tests import spoolkit
from tests.configs import Running
from tests.shared import FIXTURES
from vmrsched.mailbox import compose, itip
from vmrsched.mailbox.icalvalues import MAX_UID
from vmrsched.mailbox.spool import SpoolMailbox, read_outbox
from vmrsched.messages.calendars import replace_placeholder
from vmrsched.outgoing import Outgoing

BLOCKS = {"p", "div", "table", "ul", "ol", "li", "h1", "h2", "h3", "h4", "blockquote", "pre"}


class ParagraphCheck(HTMLParser):
    """Finds block elements opened inside an open <p> (which HTML does not allow)."""

    def __init__(self) -> None:
        super().__init__()
        self.open_p = 0
        self.problems: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in BLOCKS and self.open_p:
            self.problems.append(f"<{tag}> inside <p>")
        if tag == "p":
            self.open_p += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "p" and self.open_p:
            self.open_p -= 1


def valid_html(text: str) -> list[str]:
    checker = ParagraphCheck()
    checker.feed(text)
    return checker.problems


def test_the_placeholder_paragraph_is_replaced_not_filled_with_a_block() -> None:
    block = "<div><p>Join</p></div>"
    alone = replace_placeholder("<p>Agenda</p><p>TOK:-x#</p>", "TOK:-x#", "", block)
    assert alone == "<p>Agenda</p><div><p>Join</p></div>" and not valid_html(alone)
    inline = replace_placeholder("<p>Agenda TOK:-x# end</p>", "TOK:-x#", "", block)
    assert not valid_html(inline) and "Agenda" in inline and "end" in inline


def test_every_mail_has_readable_parts_valid_html_and_a_sortable_name(running: Running) -> None:
    for name in (
        "outlook-windows-zone-weekly-exdate.eml",
        "outlook-customized-zone-bom-exception.ics",
    ):
        suffix = Path(name).suffix
        data = (FIXTURES / name).read_bytes()  # a TOK request, and an alias never issued here
        spoolkit.drop(running.inbox, data, suffix=suffix)
    data, _ = spoolkit.request(
        body="<p>Agenda</p><p>TOK:-00000000-0000-4000-8000-00000000c001#</p>"
    )
    spoolkit.drop(running.inbox, data)
    data, _ = spoolkit.request(body="<p>no token</p>", subject="Café ☕")
    spoolkit.drop(running.inbox, data)
    spoolkit.wait_for(lambda: len(list((running.spool / "outbox").glob("*.eml"))) >= 6, timeout=20)
    running.settle()
    paths = sorted((running.spool / "outbox").glob("*.eml"))
    assert [p.name for p in paths] == sorted(p.name for p in paths)
    for path in paths:
        stamp, outcome = path.name.split("-")[:2]
        assert stamp.endswith("Z") and outcome in ("accepted", "declined", "updated")
        raw = path.read_bytes()
        assert b"Content-Transfer-Encoding: base64" not in raw  # readable with cat
        mail = email.message_from_bytes(raw, policy=email.policy.default)
        types = [part.get_content_type() for part in mail.iter_parts()]
        assert types[:2] == ["text/plain", "text/html"], (path.name, types)
        plain = mail.get_body(("plain",)).get_content()  # type: ignore[union-attr]
        html = mail.get_body(("html",)).get_content()  # type: ignore[union-attr]
        assert plain.strip() and "<" not in plain
        assert not valid_html(html), (path.name, valid_html(html))


def test_an_organizer_update_keeps_zone_definitions_and_attendee_parameters(
    running: Running,
) -> None:
    source = (FIXTURES / "outlook-customized-zone-bom-exception.ics").read_bytes()
    source = source.replace(
        b"PXPS:-1b4e28ba-2fa1-41d2-883f-0016d3cca427#",
        b"TOK:-00000000-0000-4000-8000-00000000c002#",
    )
    source = source.replace(
        b"ATTENDEE;CN=Video Room;RSVP=TRUE:mailto:vmr@example.com",
        b"ATTENDEE;CN=Video Room;RSVP=TRUE:mailto:vmr@example.com\r\n"
        b"ATTENDEE;CUTYPE=INDIVIDUAL;ROLE=OPT-PARTICIPANT;PARTSTAT=TENTATIVE;RSVP=FALSE;CN=Ola"
        b" Optional:mailto:ola@example.com",
    )
    [meeting] = itip.parse_calendar(source).meetings
    running.send(source)
    [update] = [m for m in running.answers(meeting.uid) if m.outcome == "updated"]
    cal = icalendar.Calendar.from_ical(update.calendar)
    [zone] = cal.walk("VTIMEZONE")
    assert str(zone["TZID"]) == "Customized Time Zone"
    event = cal.walk("VEVENT")[0]
    assert event["DTSTART"].params["TZID"] == "Customized Time Zone"
    ola = next(a for a in event["ATTENDEE"] if "ola@example.com" in str(a))
    assert dict(ola.params) == {
        "CUTYPE": "INDIVIDUAL",
        "ROLE": "OPT-PARTICIPANT",
        "PARTSTAT": "TENTATIVE",
        "RSVP": "FALSE",
        "CN": "Ola Optional",
    }


def accepted(meeting_uid: str) -> Outgoing:
    """The room's acceptance of one meeting, as the spool writes it."""
    return Outgoing(
        id="0" * 32,
        kind="reply",
        sender="vmr@example.com",
        sender_name="Video Room",
        recipients=("olga@example.com",),
        subject="Accepted: Sync",
        html_body="<p>ok</p>",
        outcome="accepted",
        reason="new_single",
        correlation_id="c",
        meeting_uid=meeting_uid,
    )


def test_a_recipient_that_is_a_list_is_refused_not_sent_to_everyone_on_it() -> None:
    message = accepted("u")
    assert b"\r\nTo: olga@example.com\r\n" in compose.to_eml(message)
    for listed in ("olga@example.com, eve@evil.example", "olga@example.com,mailto:e@evil.example"):
        with pytest.raises(ValueError, match="not one address"):
            compose.to_eml(replace(message, recipients=(listed,)))


def _uid_header_lines(raw: bytes) -> list[bytes]:
    """The X-Vmrsched-Meeting-Uid header as written: its line and its folded continuations."""
    lines = raw.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
    start = next(i for i, line in enumerate(lines) if line.startswith(b"X-Vmrsched-Meeting-Uid:"))
    end = start + 1
    while end < len(lines) and lines[end][:1] in (b" ", b"\t"):
        end += 1
    return lines[start:end]


@pytest.mark.parametrize(
    "uid",
    [
        "u" * MAX_UID,  # the longest UID a request may carry, with nowhere to fold
        "u" * 990 + "abcdefghi",
        "040000008200E00074C5B7101A82E008 " * 30,  # spaces to fold at, a run of them at the end
        "Réunion-équipe-☕-" * 60,  # not ASCII, long
        "=?utf-8?q?looks_encoded?=",  # text a MIME parser would decode if written as it is
        "two  spaces\tand a tab",
    ],
    ids=["longest", "999", "spaces", "unicode", "looks-encoded", "whitespace"],
)
def test_the_meeting_uid_header_carries_the_whole_uid_within_the_line_limit(uid: str) -> None:
    """X-Vmrsched-Meeting-Uid is how a reader of the outbox finds a meeting's mails: it holds the
    whole UID (up to MAX_UID characters), folded as RFC 5322 asks (lines of at most 78
    characters once it does not fit one line of 998) with RFC 2047 encoded words where the text
    cannot be written as it is, and both of Python's parsers read back exactly the UID."""
    message = accepted(uid)
    raw = compose.to_eml(message)
    assert b"\n" not in raw.replace(b"\r\n", b"") and b"\r" not in raw.replace(b"\r\n", b"")
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998
    written = _uid_header_lines(raw)
    if len(written) > 1 or b"=?" in written[0]:
        assert all(len(line) <= 78 for line in written), written
    modern = email.message_from_bytes(raw, policy=email.policy.default)
    assert str(modern["X-Vmrsched-Meeting-Uid"]) == uid
    legacy = email.message_from_bytes(raw)  # compat32: encoded words decoded by hand
    decoded = make_header(decode_header(legacy["X-Vmrsched-Meeting-Uid"]))
    assert str(decoded) == uid


def test_a_short_ascii_uid_is_written_as_it_is() -> None:
    message = accepted("040000008200E00074C5B7101A82E008")
    raw = compose.to_eml(message)
    assert b"\r\nX-Vmrsched-Meeting-Uid: 040000008200E00074C5B7101A82E008\r\n" in raw


def test_the_spool_finds_the_mails_of_a_meeting_with_the_longest_uid(tmp_path: Path) -> None:
    """read_outbox (the demo pane, `vmrsched invite`) matches the whole UID: a mail about
    another meeting whose UID starts the same is not this meeting's."""
    spool = SpoolMailbox(tmp_path)
    uid = "u" * (MAX_UID - 1) + "1"
    for n, meeting_uid in enumerate([uid, uid[:-1] + "2", uid[:900]]):
        spool.send(
            replace(
                accepted(meeting_uid),
                id=f"{n:032x}",
                subject=f"Accepted: Sync {n}",
                correlation_id=f"c{n}",
            )
        )
    spool.close()
    assert [mail["subject"] for mail in read_outbox(tmp_path, uid)] == ["Accepted: Sync 0"]
