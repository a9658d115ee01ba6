"""The policy answer for every case a Conferencing Node can meet (DESIGN "Pexip Infinity"):
inside a window, outside every window, reserved only, cancelled, released, archived, foreign;
by alias and by numeric alias; with `sip:`/`h323:`/`tel:` schemes, angle brackets, `;params` and
any case; recurring series between and inside occurrences; theme and participant authentication."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from vmrsched.pexip.policy import AliasIndex, Room, RoomSettings, answer, normalise
from vmrsched.recurrence import Schedule

START = datetime(2030, 6, 3, 9, 0, tzinfo=UTC)  # a Monday
SETTINGS = RoomSettings("hq", timedelta(minutes=30), timedelta(minutes=60))


def room(
    n: int,
    status: str = "bound",
    schedule: Schedule | None = None,
    settings: RoomSettings = SETTINGS,
    name: str = "",
) -> Room:
    if status == "bound" and schedule is None:
        schedule = Schedule(start=START, end=START + timedelta(hours=1))
    return Room(
        alias_id=f"id-{n}",
        alias=f"81{n:06d}@video.example.com",
        numeric_alias=f"81{n:06d}",
        status=status,
        settings=settings,
        schedule=schedule,
        name=name or f"Planning ({n})",
        description="Booked by olga@example.com",
    )


@pytest.fixture
def index() -> AliasIndex:
    idx = AliasIndex()
    idx.publish(
        [
            room(1),
            room(2, "reserved"),
            room(3, "deleted"),
            room(4, "archived"),
            room(
                5,
                schedule=Schedule(
                    start=START, end=START + timedelta(hours=1), rrule="FREQ=WEEKLY;COUNT=4"
                ),
            ),
            room(
                6,
                settings=RoomSettings(
                    "hq",
                    timedelta(0),
                    timedelta(0),
                    theme="Corporate",
                    identity_provider_group="Staff",
                    other_participants="allow_if_trusted",
                ),
            ),
        ]
    )
    return idx


def ask(index: AliasIndex, alias: str, at: datetime) -> tuple[str, dict[str, object]]:
    return answer(alias, at, index)


@pytest.mark.parametrize(
    "at",
    [
        START - timedelta(minutes=30),  # the window opens join_before early
        START + timedelta(minutes=30),
        START + timedelta(hours=1, minutes=60),  # and closes join_after late (inclusive)
    ],
)
def test_a_bound_alias_inside_its_window_is_a_conference(index: AliasIndex, at: datetime) -> None:
    result, body = ask(index, "81000001@video.example.com", at)
    assert result == "conference"
    assert body == {
        "status": "success",
        "action": "continue",
        "result": {
            "service_type": "conference",
            "name": "Planning (1)",
            "service_tag": "vmrsched/hq",
            "description": "Booked by olga@example.com",
        },
    }


@pytest.mark.parametrize(
    "at", [START - timedelta(minutes=31), START + timedelta(hours=2, seconds=1)]
)
def test_a_bound_alias_outside_its_window_is_rejected(index: AliasIndex, at: datetime) -> None:
    assert ask(index, "81000001@video.example.com", at) == (
        "rejected",
        {"status": "success", "action": "reject", "result": {}},
    )


@pytest.mark.parametrize("n", [2, 3, 4])  # reserved only, cancelled/released, archived
def test_our_aliases_without_a_meeting_are_rejected(index: AliasIndex, n: int) -> None:
    assert ask(index, f"81{n:06d}@video.example.com", START)[0] == "rejected"
    assert ask(index, f"81{n:06d}", START)[0] == "rejected"


@pytest.mark.parametrize(
    "alias",
    [
        "bob@example.com",
        "81999999@video.example.com",
        "81999999",
        "sip:meet.alice@example.com",
        "",
        "x81000001@video.example.com",
    ],
)
def test_foreign_aliases_are_left_to_the_node(index: AliasIndex, alias: str) -> None:
    assert ask(index, alias, START) == (
        "not_ours",
        {"status": "success", "action": "continue", "result": {}},
    )


@pytest.mark.parametrize(
    "alias",
    [
        "sip:81000001@video.example.com",
        "SIP:81000001@VIDEO.EXAMPLE.COM",
        "h323:81000001@video.example.com",
        "<sip:81000001@video.example.com>",
        "sip:81000001@video.example.com;transport=tls",
        " 81000001@Video.Example.com ",
        "81000001",
        "tel:81000001",
        "sip:81000001@gateway.example.net",  # a phone gateway dials digits at its own domain
        "81000001@10.0.0.5",
    ],
)
def test_every_form_a_node_sends_finds_the_room(index: AliasIndex, alias: str) -> None:
    assert ask(index, alias, START)[0] == "conference"


def test_a_series_is_live_in_each_occurrence_window_and_refused_between(
    index: AliasIndex,
) -> None:
    alias = "81000005@video.example.com"
    assert ask(index, alias, START + timedelta(days=7, minutes=10))[0] == "conference"
    assert ask(index, alias, START + timedelta(days=3))[0] == "rejected"
    assert ask(index, alias, START + timedelta(days=21, minutes=5))[0] == "conference"
    assert ask(index, alias, START + timedelta(days=28))[0] == "rejected"  # COUNT=4 is over


def test_theme_and_participant_authentication_are_passed_on(index: AliasIndex) -> None:
    result, body = ask(index, "81000006", START + timedelta(minutes=5))
    assert result == "conference"
    conference = body["result"]
    assert isinstance(conference, dict)
    assert conference["ivr_theme_name"] == "Corporate"
    assert conference["host_identity_provider_group"] == "Staff"
    assert conference["non_idp_participants"] == "allow_if_trusted"
    assert "ivr_theme_name" not in ask(index, "81000001", START)[1]["result"]  # type: ignore[operator]


def test_a_change_replaces_the_room_and_a_removed_integration_is_forgotten(
    index: AliasIndex,
) -> None:
    index.publish([room(1, "deleted")])
    assert ask(index, "81000001", START)[0] == "rejected"
    other = RoomSettings("branch", timedelta(0), timedelta(0))
    index.publish([room(7, settings=other)])
    index.drop("hq")
    assert ask(index, "81000001", START)[0] == "not_ours"
    assert ask(index, "81000007", START)[0] == "conference"


def test_normalise() -> None:
    assert normalise("<SIP:Room@Example.COM;x=y>") == "room@example.com"
    assert normalise("h323:1234") == "1234"
    assert normalise("1234:5") == "1234:5"  # not a scheme
