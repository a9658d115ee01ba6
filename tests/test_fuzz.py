"""Property-based fuzzing of the iTIP parser and the decision: for generated requests and for
mutations of real-shaped ones, parsing either yields meetings or refuses with a ParseError and a
reason, deciding never raises, and each item's work stays within a fixed budget."""

from __future__ import annotations

import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vmrsched import config
from vmrsched.mailbox import compose, itip
from vmrsched.messages import answers
from vmrsched.rules.meetings import AliasRecord, MeetingState
from vmrsched.rules.recurrence import Schedule

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
BUDGET = 2.0  # seconds for one item: parse, decide, render, compose
TOK = "TOK:-00000000-0000-4000-8000-000000000001#"
AID = "1b4e28ba-2fa1-41d2-883f-0016d3cca427"

BASE = (
    "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//fuzz//EN\r\nMETHOD:REQUEST\r\n"
    "BEGIN:VTIMEZONE\r\nTZID:Customized Time Zone\r\nBEGIN:STANDARD\r\n"
    "DTSTART:16010101T030000\r\nTZOFFSETFROM:+0200\r\nTZOFFSETTO:+0100\r\n"
    "RRULE:FREQ=YEARLY;BYDAY=-1SU;BYMONTH=10\r\nEND:STANDARD\r\nBEGIN:DAYLIGHT\r\n"
    "DTSTART:16010101T020000\r\nTZOFFSETFROM:+0100\r\nTZOFFSETTO:+0200\r\n"
    "RRULE:FREQ=YEARLY;BYDAY=-1SU;BYMONTH=3\r\nEND:DAYLIGHT\r\nEND:VTIMEZONE\r\n"
    "BEGIN:VEVENT\r\nUID:fuzz-1\r\nSEQUENCE:0\r\nSUMMARY:Weekly sync\r\n"
    "DTSTART;TZID=Customized Time Zone:20261207T100000\r\n"
    "DTEND;TZID=Customized Time Zone:20261207T110000\r\n"
    "RRULE:FREQ=WEEKLY;COUNT=10\r\nEXDATE;TZID=Customized Time Zone:20261214T100000\r\n"
    "ORGANIZER;CN=Olga:mailto:olga@example.com\r\nATTENDEE;CN=Room:mailto:vmr@example.com\r\n"
    f"X-ALT-DESC;FMTTYPE=text/html:<p>Agenda</p><p>{TOK}</p>\r\n"
    "END:VEVENT\r\n"
    "BEGIN:VEVENT\r\nUID:fuzz-1\r\nRECURRENCE-ID;TZID=Customized Time Zone:20261221T100000\r\n"
    "DTSTART;TZID=Customized Time Zone:20261221T140000\r\nDURATION:PT1H\r\n"
    "ORGANIZER:mailto:olga@example.com\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n"
)

CFG = config.parse(
    {
        "server": {"data_dir": "/nonexistent"},
        "integrations": [
            {
                "name": "fuzz",
                "exchange": {"mailbox_name": "Room", "mailbox_email": "vmr@example.com"},
                "addin": {"token_validation": "none", "server_fqdn": "vc.example.com"},
            }
        ],
    },
    Path("."),
    {},
)
INTEG = CFG.integrations[0]
RENDERER = INTEG.renderer()

# values real clients and attackers put into properties
VALUES = st.one_of(
    st.sampled_from(
        [
            "99991231",
            "00010101T000000Z",
            "20261301T250000",
            "P99999999W",
            "-PT1H",
            "FREQ=SECONDLY;COUNT=1000000000",
            "FREQ=DAILY;COUNT=100000",
            "FREQ=YEARLY;BYMONTH=2;BYMONTHDAY=30",
            "FREQ=WEEKLY;UNTIL=20261301",
            "FREQ=MONTHLY;BYSETPOS=-1;BYDAY=MO,TU",
            "Mars/Olympus",
            "a\\nBcc: x@example.com",
            "PXPS:-" + AID + "#",
            TOK,
            "",
            "\x00\x7f",
        ]
    ),
    st.text(max_size=40),
)
PROPS = st.sampled_from(
    [
        "DTSTART",
        "DTEND",
        "DURATION",
        "RRULE",
        "EXDATE",
        "RDATE",
        "RECURRENCE-ID",
        "SEQUENCE",
        "UID",
        "SUMMARY",
        "ORGANIZER;CN=",
        "DTSTART;TZID=",
        "DTSTART;VALUE=DATE",
        "X-ALT-DESC;FMTTYPE=text/html",
    ]
)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    lines = BASE.split("\r\n")
    for _ in range(draw(st.integers(1, 4))):
        if not lines:
            break
        choice = draw(st.integers(0, 3))
        index = draw(st.integers(0, len(lines) - 1))
        if choice == 0:  # replace a property's value
            name = draw(PROPS)
            lines[index] = f"{name}:{draw(VALUES)}"
        elif choice == 1:  # drop a line
            del lines[index]
        elif choice == 2:  # duplicate a line
            lines.insert(index, lines[index])
        else:  # tear the file
            lines = lines[: index + 1]
    data = "\r\n".join(lines).encode("utf-8", errors="surrogatepass")
    if draw(st.booleans()):
        cut = draw(st.integers(0, len(data)))
        data = data[:cut] + draw(st.binary(max_size=20)) + data[cut:]
    return data


STATES = st.sampled_from(
    [
        MeetingState(fresh=AliasRecord(AID, "vmr1@example.com", "81", "reserved")),
        MeetingState(token_record=AliasRecord(AID, "vmr1@example.com", "81", "reserved")),
        MeetingState(
            uid_record=AliasRecord(
                AID,
                "vmr1@example.com",
                "81",
                "bound",
                meeting_uid="fuzz-1",
                sequence=0,
                schedule=Schedule(NOW, NOW + timedelta(hours=1), rrule="FREQ=DAILY"),
                answered={"series@0": "new_recurring+update"},
            )
        ),
    ]
)


SEEN: Counter[str] = Counter()  # what the examples reached (checked below: not all refusals)


def work(data: bytes, state: MeetingState) -> None:
    """What the service does with one item, without the I/O around it."""
    try:
        parsed = itip.parse_calendar(data, "Europe/Berlin", correlation_id="c")
    except itip.ParseError as exc:
        assert exc.reason  # refused with a reason
        SEEN["refused"] += 1
        return
    for meeting in parsed.meetings:
        step = answers.plan(INTEG, RENDERER, meeting, state, NOW)
        SEEN[step.decision.reason] += 1
        for message in step.messages:
            compose.to_eml(message)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated(), STATES)
def test_mutated_requests_are_refused_with_a_reason_or_decided(
    data: bytes, state: MeetingState
) -> None:
    started = time.perf_counter()
    work(data, state)
    assert time.perf_counter() - started < BUDGET


def test_the_mutations_reach_the_decisions() -> None:
    test_mutated_requests_are_refused_with_a_reason_or_decided()
    decided = sum(n for reason, n in SEEN.items() if reason != "refused")
    assert SEEN["refused"] > 10 and decided > 10, SEEN
    print(dict(SEEN))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2000), STATES)
def test_arbitrary_bytes_never_raise_anything_but_a_refusal(
    data: bytes, state: MeetingState
) -> None:
    started = time.perf_counter()
    work(data, state)
    work(b"BEGIN:VCALENDAR\r\nBEGIN:VEVENT\r\n" + data, state)
    assert time.perf_counter() - started < BUDGET


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=3000))
def test_arbitrary_mail_is_refused_or_parsed(data: bytes) -> None:
    try:
        itip.parse_mail(data, "UTC")
    except itip.ParseError as exc:
        assert exc.reason
