"""Hand-made meeting requests (`vmrsched invite`): the organizer and attendees given as
"Name <address>" are read as one address each, whatever the name holds, and written as the
service writes every calendar address (RFC 5545 quoting, RFC 6868 encoding)."""

from __future__ import annotations

from pathlib import Path

import pytest

from vmrsched import config
from vmrsched.mailbox import itip
from vmrsched.messages import invites

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def integ() -> config.IntegrationConfig:
    return config.load(ROOT / "config" / "vmrsched.toml", environ={}).integrations[0]


def organizer_of(integ: config.IntegrationConfig, organizer: str) -> tuple[str, str, bytes]:
    data, _ = invites.build(integ, invites.InviteOptions(organizer=organizer))
    [meeting] = itip.parse_calendar(data).meetings
    return meeting.organizer_name, meeting.organizer_email, data.replace(b"\r\n ", b"")


@pytest.mark.parametrize(
    ("given", "name", "address"),
    [
        ("Doe, John <john@example.com>", "Doe, John", "john@example.com"),
        ('"Smith, Ann" <ann@example.com>', "Smith, Ann", "ann@example.com"),
        ('"Eve <b>x</b>" <eve@example.com>', "Eve <b>x</b>", "eve@example.com"),
        ("O'Brien (IT) <ob@example.com>", "O'Brien (IT)", "ob@example.com"),
        ('A ^ and "quote" too <caret@example.com>', 'A ^ and "quote" too', "caret@example.com"),
        ('"Doe, \\"JD\\"" <jd@example.com>', 'Doe, "JD"', "jd@example.com"),
        ('"A" and "B" <ab@example.com>', '"A" and "B"', "ab@example.com"),
        ("plain@example.com", "", "plain@example.com"),
        ("<bare@example.com>", "", "bare@example.com"),
    ],
)
def test_a_display_name_with_commas_or_brackets_keeps_its_address(
    integ: config.IntegrationConfig, given: str, name: str, address: str
) -> None:
    assert invites.one_address(given, "--organizer") == (name, address)
    assert organizer_of(integ, given)[1] == address


def test_the_name_is_written_as_every_calendar_address_of_ours(
    integ: config.IntegrationConfig,
) -> None:
    """Quoted where it holds a comma, a caret and a double quote encoded (RFC 6868): the
    ORGANIZER line cannot be ended or split by what a name says."""
    *_, data = organizer_of(integ, 'Doe, "J" ^ John <john@example.com>')
    assert b"ORGANIZER;CN=\"Doe, ^'J^' ^^ John\":mailto:john@example.com\r\n" in data


@pytest.mark.parametrize(
    "given",
    [
        "Eve <b>x</b> <eve@example.com>",  # an unquoted name holding brackets: two addresses
        "a@example.com, b@example.com",
        "Ann <a@example.com>, Bob <b@example.com>",
        "Doe, John",
        "john",
        "",
        "Team: a@example.com;",
        "Ann <a@example.com,mailto:b@example.com>",
    ],
)
def test_anything_but_one_address_is_refused(integ: config.IntegrationConfig, given: str) -> None:
    with pytest.raises(ValueError, match="--organizer: not one address"):
        invites.build(integ, invites.InviteOptions(organizer=given))


def test_attendees_are_read_the_same_way(integ: config.IntegrationConfig) -> None:
    data, _ = invites.build(
        integ, invites.InviteOptions(attendees=("Roe, Jane <jane@example.com>",))
    )
    assert b"mailto:jane@example.com" in data and b"mailto:Roe" not in data
    with pytest.raises(ValueError, match="--attendee: not one address"):
        invites.build(integ, invites.InviteOptions(attendees=("a@example.com, b@example.com",)))
