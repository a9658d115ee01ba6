"""The real-world corpus: every file parses to meetings or is refused with a reason."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.shared import CORPUS, needs_corpus
from vmrsched.mailbox import itip
from vmrsched.rules import recurrence

FILES = sorted(p for p in CORPUS.glob("*") if p.suffix in (".ics", ".eml"))

REFUSED = {
    # TZID "FLE" and no VTIMEZONE: refused rather than read in a guessed zone
    "08-notes-style-request-tzid-without-vtimezone-no-method.eml": "unknown time zone 'FLE'",
    "13-exchange-cdo-request-daily-until-no-uid.ics": "meeting has no UID",
    "15-exchange2010-request-biweekly-seq7-broken-folding.ics": "meeting has no UID",
    "19-exchange-owa-publish-tzid-without-vtimezone.ics": "meeting has no UID",
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
    series = read("23-macos-calendar-recurring-count-with-exception.ics").meetings[0]
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


def test_unsupported_method_is_refused() -> None:
    cal = (
        b"BEGIN:VCALENDAR\r\nMETHOD:REPLY\r\nBEGIN:VEVENT\r\nUID:x\r\n"
        b"DTSTART:20300101T100000Z\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n"
    )
    with pytest.raises(itip.ParseError, match="unsupported iTIP method REPLY"):
        itip.parse_calendar(cal)


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
