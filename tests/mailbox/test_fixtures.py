"""The project's own iTIP fixtures (tests/data/ics): the shapes and quirks real clients send,
each read exactly as it should be, or refused with its reason."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tests.shared import FIXTURES
from vmrsched.mailbox import itip


def read(name: str) -> itip.Parsed:
    path = FIXTURES / name
    return itip.parse_file(path.name, path.read_bytes(), "Europe/London", "cid")


def test_outlook_mail_with_a_windows_zone_base64_calendar_and_quoted_printable_html() -> None:
    [m] = read("outlook-windows-zone-weekly-exdate.eml").meetings
    assert getattr(m.start.tzinfo, "key", None) == "Europe/Berlin"  # W. Europe Standard Time
    assert m.start.astimezone(UTC) == datetime(2030, 10, 1, 8, 0, tzinfo=UTC)
    assert m.rrule is not None and "COUNT=10" in m.rrule and len(m.exdates) == 1
    assert m.exdates[0].astimezone(UTC) == datetime(2030, 10, 15, 8, 0, tzinfo=UTC)
    assert "TOK:-00000000-0000-4000-8000-00000000a001#" in m.html_body  # the HTML part, decoded
    assert "&#8211;" in m.html_body
    assert m.organizer_name == "Petra Planner" and m.organizer_email == "petra@example.com"
    assert "olaf@example.com" in m.attendees and m.correlation_id == "cid"


def test_customized_time_zone_bom_folding_and_an_exception() -> None:
    [m] = read("outlook-customized-zone-bom-exception.ics").meetings
    assert m.start.utcoffset() == timedelta(hours=-4)  # from the VTIMEZONE, in October
    assert m.sequence == 3 and m.rrule is not None
    [(rid, start, end)] = m.overrides
    assert (start - rid) == timedelta(hours=1) and end - start == timedelta(minutes=30)
    assert "folded more than once" in m.html_body  # X-ALT-DESC, unfolded and unescaped
    assert "team, with" in m.html_body
    assert m.organizer_name == "Dana, Dev"


def test_google_nested_multipart_with_quoted_printable_calendar() -> None:
    [m] = read("google-multipart-quoted-printable.eml").meetings
    assert m.start == datetime(2030, 11, 4, 15, 0, tzinfo=UTC)
    assert m.html_body.endswith("TOK:-00000000-0000-4000-8000-00000000a003#</p>")
    assert m.attendees == ("gina@example.com", "vmr@example.com")


def test_apple_iana_zone() -> None:
    [m] = read("apple-iana-zone.ics").meetings
    assert getattr(m.start.tzinfo, "key", None) == "Europe/Berlin"
    assert m.start.utcoffset() == timedelta(hours=1) and m.sequence == 1
    assert m.html_body == "PXPS:-6fa459ea-ee8a-4ca4-894e-db77e160355e#"  # DESCRIPTION


def test_thunderbird_occurrence_and_cancellation_without_dtstart() -> None:
    [m] = read("thunderbird-occurrence-only.ics").meetings
    assert m.recurrence_id is not None and m.rrule is None and m.sequence == 2
    assert m.start - m.recurrence_id == timedelta(hours=1)
    [c] = read("thunderbird-cancel-no-dtstart.ics").meetings
    assert c.method == "CANCEL" and c.uid == m.uid and c.recurrence_id is not None


def test_a_request_without_organizer_parses_but_names_nobody() -> None:
    [m] = read("refused-no-organizer.ics").meetings
    assert m.organizer_email == ""  # the poller quarantines it: nobody to answer


@pytest.mark.parametrize(
    ("name", "reason", "organizer"),
    [
        ("refused-unknown-tzid.ics", "unknown time zone 'Lunar Standard Time'", "luna@example.com"),
        ("refused-no-uid.ics", "meeting has no UID", "nora@example.com"),
    ],
)
def test_refusals_name_their_reason_and_whom_to_tell(
    name: str, reason: str, organizer: str
) -> None:
    with pytest.raises(itip.ParseError, match=reason) as caught:
        read(name)
    assert caught.value.organizer_email == organizer
