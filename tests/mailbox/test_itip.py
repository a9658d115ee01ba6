"""The real-world corpus: every file parses to meetings or is refused with a reason."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests import spoolkit
from tests.shared import CORPUS, needs_corpus
from vmrsched.mailbox import itip
from vmrsched.rules import recurrence

FILES = sorted(p for p in CORPUS.glob("*") if p.suffix in (".ics", ".eml"))

REFUSED = {
    # TZID "FLE" and no VTIMEZONE: refused rather than read in a guessed zone
    "08-notes-style-request-tzid-without-vtimezone-no-method.eml": "unknown time zone 'FLE'",
    "13-exchange-cdo-request-daily-until-no-uid.ics": "meeting has no UID",
    "15-exchange2010-request-biweekly-seq7-broken-folding.ics": "meeting has no UID",
    "19-exchange-owa-publish-tzid-without-vtimezone.ics": "iTIP method PUBLISH",
    # a calendar published for reading (RFC 5546 PUBLISH) is no meeting request: set aside
    "17-exchange2010-publish-allday-recurring-with-exceptions.ics": "iTIP method PUBLISH",
    "18-exchange2010-publish-exdate-tzid-without-vtimezone.ics": "iTIP method PUBLISH",
    "23-macos-calendar-recurring-count-with-exception.ics": "iTIP method PUBLISH",
}


@needs_corpus
def test_corpus_is_present() -> None:
    assert len(FILES) >= 27, CORPUS


@needs_corpus
@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name[:40])
def test_every_corpus_file_parses_or_is_refused_with_a_reason(path: Path) -> None:
    if path.name in REFUSED:
        with pytest.raises(itip.ParseError, match=REFUSED[path.name]):
            itip.parse_file(path.name, path.read_bytes())
        return
    parsed = itip.parse_file(path.name, path.read_bytes(), "Europe/London", "cid")
    assert parsed.meetings
    for m in parsed.meetings:
        assert m.uid and m.start.tzinfo is not None and m.end >= m.start
        assert m.correlation_id == "cid"
        recurrence.next_occurrence(m.schedule, datetime(2000, 1, 1, tzinfo=UTC))
        assert recurrence.from_json(recurrence.to_json(m.schedule)) == m.schedule


def read(name: str) -> itip.Parsed:
    path = CORPUS / name
    return itip.parse_file(path.name, path.read_bytes(), "Europe/London")


@needs_corpus
def test_windows_zone_names_map_to_iana() -> None:
    m = read("03-exchange-online-request-fle-standard-time.eml").meetings[0]
    assert getattr(m.start.tzinfo, "key", None) in ("Europe/Kiev", "Europe/Kyiv")
    m = read("12-exchange2007-request-bom-sequence2.ics").meetings[0]
    assert getattr(m.start.tzinfo, "key", None) == "America/New_York" and m.sequence == 2


@needs_corpus
def test_bom_mail_parses_and_html_part_is_the_body() -> None:
    m = read("02-outlook2007-request-x-alt-desc-cyrillic.eml").meetings[0]
    assert m.method == "REQUEST" and m.organizer_email
    m = read("07-zimbra8-request-x-alt-desc.eml").meetings[0]
    assert "<" in m.html_body


@needs_corpus
def test_cancel_without_dtstart_still_names_the_series() -> None:
    m = read("11-thunderbird-fixture-cancel-recurring-exdate-no-dtstart.eml").meetings[0]
    assert m.method == "CANCEL" and m.uid


@needs_corpus
def test_occurrence_only_request_and_series_with_exceptions() -> None:
    m = read("09-thunderbird-fixture-request-single-occurrence-recurrence-id.eml").meetings[0]
    assert m.recurrence_id is not None and m.sequence == 2
    # macOS exports it as PUBLISH: read here as a calendar item is (a message would be set aside)
    macos = (CORPUS / "23-macos-calendar-recurring-count-with-exception.ics").read_bytes()
    series = itip.parse_calendar(macos, "Europe/London", any_method=True).meetings[0]
    assert series.rrule and len(series.overrides) == 1
    cancelled = read("25-thunderbird-recurring-count-cancelled-occurrence.ics").meetings[0]
    assert len(cancelled.exdates) == 1


@needs_corpus
def test_notes_rdate_period_series() -> None:
    m = read("28-lotus-notes6-request-update-seq1-rdate-period.ics").meetings[0]
    assert len(m.rdates) == 5 and m.sequence == 1 and m.is_series


@needs_corpus
def test_refusal_keeps_the_organizer_for_a_decline() -> None:
    with pytest.raises(itip.ParseError) as info:
        read("15-exchange2010-request-biweekly-seq7-broken-folding.ics")
    assert info.value.organizer_email == "organizer@example.com"


@pytest.mark.parametrize(
    "data", [b"", b"garbage", b"BEGIN:VCALENDAR\nEND:VCALENDAR\n", b"\xff\xfe\x00binary"]
)
def test_garbage_is_refused_not_crashed(data: bytes) -> None:
    with pytest.raises(itip.ParseError):
        itip.parse_calendar(data)


def test_mail_without_calendar_is_refused_with_sender() -> None:
    mail = b"From: Ann <ann@example.com>\r\nSubject: hi\r\n\r\nhello\r\n"
    with pytest.raises(itip.ParseError) as info:
        itip.parse_mail(mail)
    assert info.value.organizer_email == "ann@example.com"


@pytest.mark.parametrize(
    "method", ["REPLY", "COUNTER", "REFRESH", "DECLINECOUNTER", "ADD", "PUBLISH", "X-ODD"]
)
def test_every_method_but_request_and_cancel_is_no_meeting_message(method: str) -> None:
    """An attendee's response or a published calendar asks nothing of the room: it is set
    aside unanswered (not_meeting), however broken the rest of it is (a long subject here)."""
    cal = (
        f"BEGIN:VCALENDAR\r\nMETHOD:{method}\r\nBEGIN:VEVENT\r\nUID:x\r\n"
        f"SUMMARY:{'s' * 2000}\r\nORGANIZER:mailto:olga@example.com\r\n"
        "ATTENDEE;PARTSTAT=ACCEPTED:mailto:bob@example.com\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n"
    ).encode()
    with pytest.raises(itip.ParseError, match=f"iTIP method {method}") as info:
        itip.parse_calendar(cal)
    assert info.value.not_meeting
    mail = (
        b"From: Bob <bob@example.com>\r\nSubject: Accepted: Weekly sync\r\n"
        b"Content-Type: text/calendar; method=" + method.encode() + b"\r\n\r\n" + cal
    )
    with pytest.raises(itip.ParseError) as info:
        itip.parse_mail(mail)
    assert info.value.not_meeting


def test_a_calendar_item_is_read_whatever_method_its_export_names() -> None:
    """The room's calendar as Exchange exports it (recovery) is read, PUBLISH or not."""
    cal = (
        b"BEGIN:VCALENDAR\r\nMETHOD:PUBLISH\r\nBEGIN:VEVENT\r\nUID:x\r\n"
        b"DTSTART:20300101T100000Z\r\nORGANIZER:mailto:olga@example.com\r\n"
        b"END:VEVENT\r\nEND:VCALENDAR\r\n"
    )
    [meeting] = itip.parse_calendar(cal, any_method=True).meetings
    assert (meeting.uid, meeting.method) == ("x", "REQUEST")


def test_automatic_mail_is_read_and_marked_as_such() -> None:
    """RFC 3834: the meetings of automatic mail are read, and the item says it is automatic
    (the poller then sets it aside unanswered); a person's mail is not."""
    cal, _ = spoolkit.request("auto-1")
    for header, automatic in [
        (b"Auto-Submitted: auto-generated\r\n", True),
        (b"Precedence: bulk\r\n", True),
        (b"List-Id: <team.example.com>\r\n", True),
        (b"Auto-Submitted: no\r\n", False),
        (b"", False),
    ]:
        mail = (
            b"From: Olga <olga@example.com>\r\nSubject: Weekly sync\r\n"
            + header
            + b"Content-Type: text/calendar; method=REQUEST\r\n\r\n"
            + cal
        )
        parsed = itip.parse_mail(mail)
        assert [m.uid for m in parsed.meetings] == ["auto-1"]
        assert parsed.auto_submitted is automatic, header


def test_an_unreadable_request_names_what_a_decline_needs() -> None:
    """A request refused past its UID and ORGANIZER names them, its SEQUENCE, and a subject
    (SUMMARY, else the mail's Subject) cut to the limit, so its decline can carry a REPLY."""
    long = "word " * 300  # 1,500 characters
    cal = (
        "BEGIN:VCALENDAR\r\nMETHOD:REQUEST\r\nBEGIN:VEVENT\r\nUID:long-1\r\nSEQUENCE:4\r\n"
        f"SUMMARY:{long}\r\nDTSTART:20300101T100000Z\r\n"
        "ORGANIZER;CN=Olga:mailto:olga@example.com\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n"
    ).encode()
    with pytest.raises(itip.ParseError, match="subject longer than 1000") as info:
        itip.parse_calendar(cal)
    err = info.value
    assert (err.uid, err.organizer_email, err.organizer_name, err.sequence) == (
        "long-1",
        "olga@example.com",
        "Olga",
        4,
    )
    assert len(err.subject) <= 1000 and err.subject.startswith("word word")
    assert err.subject.endswith("word\u2026")
    no_summary = cal.replace(f"SUMMARY:{long}\r\n".encode(), b"").replace(
        b"DTSTART:20300101T100000Z", b"DTSTART;TZID=Mars/Olympus:20300101T100000"
    )
    mail = (
        b"From: Olga <olga@example.com>\r\nSubject: Board meeting\r\n"
        b"Content-Type: text/calendar; method=REQUEST\r\n\r\n" + no_summary
    )
    with pytest.raises(itip.ParseError, match="unknown time zone") as info:
        itip.parse_mail(mail)
    assert (info.value.uid, info.value.subject, info.value.sequence) == (
        "long-1",
        "Board meeting",
        4,
    )


def test_x_alt_desc_text_escapes_are_undone() -> None:
    cal = (
        b"BEGIN:VCALENDAR\r\nMETHOD:REQUEST\r\nBEGIN:VEVENT\r\nUID:u1\r\n"
        b"DTSTART:20300101T100000Z\r\n"
        b"X-ALT-DESC;FMTTYPE=text/html:<p>a\\;b\\,c</p>\\n<p>d\\\\e</p>\r\n"
        b"END:VEVENT\r\nEND:VCALENDAR\r\n"
    )
    m = itip.parse_calendar(cal).meetings[0]
    assert m.html_body == "<p>a;b,c</p>\n<p>d\\e</p>"


def test_reply_calendar_round_trips_through_the_parser() -> None:
    from datetime import timedelta

    from vmrsched.messages import calendars
    from vmrsched.rules.meetings import Meeting

    start = datetime(2030, 5, 6, 9, 30, tzinfo=UTC)
    meeting = Meeting(
        uid="u;1,2",
        method="REQUEST",
        start=start,
        end=start + timedelta(hours=1),
        sequence=4,
        recurrence_id=start,
        subject="Ünïcode; commas, and a very long subject " * 4,
        organizer_email="o@example.com",
        organizer_name="O, Rg",
    )
    text = calendars.reply_calendar(meeting, True, "room@example.com", "Room: A")
    assert all(len(line.encode()) <= 75 for line in text.split("\r\n"))
    import icalendar

    event = icalendar.Calendar.from_ical(text).walk("VEVENT")[0]
    assert str(event["UID"]) == "u;1,2" and int(event["SEQUENCE"]) == 4
    assert str(event["SUMMARY"]) == meeting.subject
    assert event["ATTENDEE"].params["PARTSTAT"] == "ACCEPTED"
    assert event["ATTENDEE"].params["CN"] == "Room: A"
    assert event["RECURRENCE-ID"].dt == start


def test_non_ascii_subjects_survive_the_mail() -> None:
    import email
    import email.policy

    from vmrsched.mailbox import compose
    from vmrsched.mailbox.base import Outgoing

    out = Outgoing(
        id="x",
        kind="reply",
        sender="r@example.com",
        sender_name="Переговорная",
        recipients=("o@example.com",),
        subject="Accepted: Встреча",
        html_body="<p>é</p>",
        outcome="accepted",
        reason="new_single",
        correlation_id="c",
        meeting_uid="u",
    )
    msg = email.message_from_bytes(compose.to_eml(out), policy=email.policy.default)
    assert msg["Subject"] == "Accepted: Встреча"
    assert "Переговорная" in str(msg["From"])
    assert msg.get_body(("html",)).get_content() == "<p>é</p>"  # type: ignore[union-attr]


def test_a_sender_written_in_utf8_is_read_as_written() -> None:
    """RFC 6532 lets a header carry raw UTF-8: the address is logged as the mail names it (a
    look-alike of the organizer shows as one, never as garbage or as the real organizer)."""
    import email
    import email.policy

    from vmrsched.mailbox.itip import mail_senders

    def senders(from_: str) -> tuple[str, str]:
        raw = f"From: {from_}\r\nSender: Bob <bob@example.com>\r\n\r\nbody".encode()
        return mail_senders(email.message_from_bytes(raw, policy=email.policy.compat32))

    assert senders("\u212aate@example.com") == ("\u212aate@example.com", "bob@example.com")
    assert senders("Käte <käte@example.com>") == ("käte@example.com", "bob@example.com")
    assert senders("Kate <kate@example.com>") == ("kate@example.com", "bob@example.com")
