"""Who a meeting message says it is from, as the parser reads it: ORGANIZER (one address, or it
is nobody the service can answer), a delegate's SENT-BY, and the mail's From and Sender (a bare
.ics has none: there only ORGANIZER speaks)."""

from __future__ import annotations

import pytest

from vmrsched.mailbox import itip
from vmrsched.rules.meetings import is_address

OLGA = "olga@example.com"


def ics(organizer: str = f"ORGANIZER;CN=Olga:mailto:{OLGA}", *, extra: str = "") -> bytes:
    return (
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//tests//EN\r\nMETHOD:REQUEST\r\n"
        "BEGIN:VEVENT\r\nUID:u-1\r\nSEQUENCE:1\r\nDTSTART:20301010T100000Z\r\n"
        f"DURATION:PT1H\r\nSUMMARY:Sync\r\n{organizer}\r\n{extra}"
        "ATTENDEE:mailto:vmr@example.com\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n"
    ).encode()


def eml(headers: str, calendar: bytes) -> bytes:
    return (
        (
            f"{headers}To: vmr@example.com\r\nSubject: Sync\r\nMIME-Version: 1.0\r\n"
            'Content-Type: multipart/alternative; boundary="b"\r\n\r\n'
            '--b\r\nContent-Type: text/html; charset="utf-8"\r\n\r\n<p>hi</p>\r\n'
            '--b\r\nContent-Type: text/calendar; method=REQUEST; charset="utf-8"\r\n\r\n'
        ).encode()
        + calendar
        + b"\r\n--b--\r\n"
    )


def test_a_delegates_request_is_the_managers_meeting_sent_by_the_delegate() -> None:
    line = 'ORGANIZER;CN=Manager;SENT-BY="mailto:dan@example.com":mailto:manager@example.com'
    [m] = itip.parse_calendar(ics(line)).meetings
    assert (m.organizer_email, m.organizer_name) == ("manager@example.com", "Manager")
    assert m.organizer_sent_by == "dan@example.com"


@pytest.mark.parametrize("sent_by", ['"mailto:a@x.example,mailto:b@x.example"', '""', "nobody"])
def test_a_sent_by_that_is_not_one_address_is_no_delegate(sent_by: str) -> None:
    [m] = itip.parse_calendar(ics(f"ORGANIZER;SENT-BY={sent_by}:mailto:{OLGA}")).meetings
    assert m.organizer_email == OLGA and m.organizer_sent_by == ""


@pytest.mark.parametrize(
    "organizer",
    [
        "ORGANIZER:mailto:a@example.com,mailto:b@example.com",
        "ORGANIZER:mailto:a@example.com, b@example.com",
        "ORGANIZER:mailto:a@example.com\r\nORGANIZER:mailto:b@example.com",
    ],
    ids=["comma list", "comma list without mailto", "two properties"],
)
def test_an_organizer_that_is_not_one_address_is_read_as_it_stands(organizer: str) -> None:
    """The parser only translates: the poller refuses such a request (no reply to anyone)."""
    [m] = itip.parse_calendar(ics(organizer)).meetings
    assert m.organizer_email and not is_address(m.organizer_email)


def test_an_unreadable_request_names_no_list_to_decline_to() -> None:
    bad = ics("ORGANIZER:mailto:a@example.com,mailto:b@example.com").replace(
        b"DTSTART:", b"DTSTART;TZID=Mars/Olympus:"
    )
    with pytest.raises(itip.ParseError) as caught:
        itip.parse_calendar(bad.replace(b"00Z\r\n", b"00\r\n"))
    assert caught.value.organizer_email == ""
    with pytest.raises(itip.ParseError) as caught:  # in a mail, its single From is told
        itip.parse_mail(eml(f"From: Olga <{OLGA}>\r\n", bad.replace(b"00Z\r\n", b"00\r\n")))
    assert caught.value.organizer_email == OLGA


def test_attendees_that_are_not_one_address_are_dropped() -> None:
    extra = "ATTENDEE:mailto:bob@example.com,mailto:eve@example.com\r\nATTENDEE:mailto:c@e.x\r\n"
    [m] = itip.parse_calendar(ics(extra=extra)).meetings
    assert m.attendees == ("c@e.x", "vmr@example.com")
    assert [a for a, _ in m.attendee_params] == list(m.attendees)


def test_a_bare_calendar_has_no_mail_to_say_who_sent_it() -> None:
    [m] = itip.parse_file("x.ics", ics()).meetings
    assert m.mail_from is None and m.mail_sender == ""


@pytest.mark.parametrize(
    ("headers", "sent_from", "sender"),
    [
        (f"From: Olga <{OLGA}>\r\n", OLGA, ""),
        (f"From: Olga <{OLGA}>\r\nSender: Olga <OLGA@example.com>\r\n", OLGA, ""),
        (
            "From: Manager <m@example.com>\r\nSender: Dan <dan@example.com>\r\n",
            "m@example.com",
            "dan@example.com",
        ),
        ("", "", ""),
        ("From: a@example.com, b@example.com\r\n", "a@example.com, b@example.com", ""),
        ("From: not an address\r\n", "not an address", ""),
    ],
    ids=["from", "sender the same", "on behalf", "none", "a list", "garbage"],
)
def test_a_mail_says_who_sent_it(headers: str, sent_from: str, sender: str) -> None:
    [m] = itip.parse_file("x.eml", eml(headers, ics())).meetings
    assert (m.mail_from, m.mail_sender) == (sent_from, sender)


def test_what_the_mailbox_knows_of_the_sender_overrides_the_headers() -> None:
    parsed = itip.parse_mail(eml(f"From: {OLGA}\r\n", ics()))
    [m] = itip.sent_in_mail(parsed, "", "mallory@evil.example").meetings  # EWS's Sender
    assert (m.mail_from, m.mail_sender) == (OLGA, "mallory@evil.example")
    [m] = itip.sent_in_mail(parsed, "mallory@evil.example").meetings  # Graph's from
    assert (m.mail_from, m.mail_sender) == ("mallory@evil.example", "")
