"""What we write as iCalendar cannot be steered by what we read: parameter values are encoded as
RFC 6868 says (^n, ^^, ^') and TEXT values escaped as RFC 5545 says, so a name or subject never
ends a line and starts one of its own (a forged ATTENDEE in the room's reply)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import icalendar
import pytest

from vmrsched.messages import calendars
from vmrsched.rules.meetings import Meeting

START = datetime(2030, 5, 6, 9, 30, tzinfo=UTC)
FORGED = "ATTENDEE;PARTSTAT=ACCEPTED:mailto:evil@evil.example"
HOSTILE = [
    f"Olga\n{FORGED}",
    f"Olga\r\n{FORGED}",
    f"Olga\r{FORGED}",
    f"Olga\x0b{FORGED}",
    f"Olga\u2028{FORGED}",
    f"Olga\" ^n ^^ ^'{FORGED}",
]


def meeting(name: str, subject: str = "Sync") -> Meeting:
    return Meeting(
        uid="u-1",
        method="REQUEST",
        start=START,
        end=START + timedelta(hours=1),
        organizer_name=name,
        organizer_email="olga@example.com",
        subject=subject,
        attendees=("bob@example.com",),
        attendee_params=(("bob@example.com", (("CN", name), ("ROLE", "REQ-PARTICIPANT"))),),
    )


def lines(text: str) -> list[str]:
    """Every line a reader could see: CRLF, a lone CR or LF, or any other break Python knows."""
    return text.replace("\r\n ", "").splitlines()


def written(name: str, subject: str = "Sync") -> list[str]:
    m = meeting(name, subject)
    return [
        calendars.reply_calendar(m, True, "vmr@example.com", name),
        calendars.reply_calendar(m, False, "vmr@example.com", "Video Room"),
        calendars.update_calendar(m, f"<p>{subject}</p>", subject),
    ]


@pytest.mark.parametrize("name", HOSTILE)
def test_a_name_never_writes_a_line_of_its_own(name: str) -> None:
    for text in written(name):
        assert not [line for line in lines(text) if line.startswith(FORGED)]
        event = icalendar.Calendar.from_ical(text).walk("VEVENT")[0]
        found = event.get("ATTENDEE")
        attendees = found if isinstance(found, list) else [found]
        assert "mailto:evil@evil.example" not in [str(a) for a in attendees]


def test_a_newline_in_a_name_is_encoded_and_read_back() -> None:
    reply = calendars.reply_calendar(meeting('Olga\nO\'Hara ^ "x"'), True, "vmr@example.com", "")
    assert "ORGANIZER;CN=Olga^nO'Hara ^^ ^'x^':mailto:olga@example.com" in reply
    event = icalendar.Calendar.from_ical(reply).walk("VEVENT")[0]
    assert event["ORGANIZER"].params["CN"] == 'Olga\nO\'Hara ^ "x"'


@pytest.mark.parametrize("subject", [s.replace(";PARTSTAT=ACCEPTED", "") for s in HOSTILE])
def test_a_subject_never_writes_a_line_of_its_own(subject: str) -> None:
    """(Without a semicolon, which TEXT escapes: a line break alone would start the line.)"""
    for text in written("Olga", subject):
        assert not [line for line in lines(text) if line.startswith("ATTENDEE:mailto:evil")]
        summary = str(icalendar.Calendar.from_ical(text).walk("VEVENT")[0]["SUMMARY"])
        assert summary.endswith("ATTENDEE:mailto:evil@evil.example")


def test_parameter_names_that_are_not_names_are_not_carried_over() -> None:
    m = meeting("Olga")
    odd = (("bob@example.com", (("CN", "Bob"), ("X-A:B\r\nATTENDEE", "x"))),)
    text = calendars.update_calendar(
        Meeting(**{**m.__dict__, "attendee_params": odd}), "<p></p>", ""
    )
    assert "ATTENDEE;CN=Bob:mailto:bob@example.com" in lines(text)
