"""The policy answer for every case a Conferencing Node can meet (DESIGN "Pexip Infinity"):
inside a window, outside every window, reserved only, cancelled, released, archived, foreign;
by alias and by numeric alias; with `sip:`/`h323:`/`tel:` schemes, angle brackets, `;params` and
any case; recurring series between and inside occurrences; theme and participant authentication."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from vmrsched.pexip.policy import AliasIndex, Room, RoomSettings, answer, normalise
from vmrsched.rules.recurrence import Schedule

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


# --- issue 27: every answer a node can get is one Pexip takes -------------------------------

# The service configuration response as Pexip's external policy documentation describes it:
# status "success", action "continue" or "reject", result a service configuration (for a
# Virtual Meeting Room or Virtual Auditorium: service_type and name required; text fields at
# most 250 characters; PINs 4 to 20 digits, optionally ending in #; non_idp_participants one of
# disallow_all and allow_if_trusted) or empty.
TEXT = {"type": "string", "maxLength": 250}
PIN = {"type": "string", "pattern": "^[0-9]{4,20}#?$"}
SERVICE = {
    "type": "object",
    "required": ["service_type", "name"],
    "additionalProperties": False,
    "properties": {
        "service_type": {"enum": ["conference", "lecture", "two_stage_dialing"]},
        "name": {**TEXT, "minLength": 1},
        "service_tag": TEXT,
        "description": TEXT,
        "pin": PIN,
        "guest_pin": PIN,
        "allow_guests": {"type": "boolean"},
        "ivr_theme_name": TEXT,
        "host_identity_provider_group": TEXT,
        "guest_identity_provider_group": TEXT,
        "non_idp_participants": {"enum": ["disallow_all", "allow_if_trusted"]},
    },
}
POLICY_SCHEMA = {
    "type": "object",
    "required": ["status", "action", "result"],
    "properties": {
        "status": {"const": "success"},
        "action": {"enum": ["continue", "reject"]},
        "result": {"anyOf": [{"type": "object", "maxProperties": 0}, SERVICE]},
    },
}


def every_answer() -> list[dict[str, object]]:
    from vmrsched.pexip.policy import PersonalRoom

    index = AliasIndex()
    rooms = []
    n = 100
    for other in ("disallow_all", "allow_if_trusted", "allow_all"):
        for group in ("", "Staff", "g" * 300):
            for theme in ("", "Corporate", "t" * 300):
                n += 1
                settings = RoomSettings("i" * 240, timedelta(0), timedelta(0), theme, group, other)
                rooms.append(room(n, settings=settings, name="n" * (n % 3) * 200))
    rooms += [room(2, "reserved"), room(3, "deleted"), room(4, "archived")]
    index.publish(rooms)
    personal = [
        PersonalRoom(
            "hq", "Olga's room", ("meet.olga@x", "81100001"), "d" * 400, "1234", "5678#", True
        ),
        PersonalRoom("hq", "x" * 300, ("lecture@x",), service_type="lecture"),
        PersonalRoom("hq", "Reception", ("two@x",), service_type="two_stage_dialing"),
    ]
    index.publish_personal("hq", personal)
    aliases = [r.alias for r in rooms] + ["nobody@example.com", "meet.olga@x", "lecture@x", "two@x"]
    return [answer(alias, START, index)[1] for alias in aliases]


def test_every_answer_is_valid_against_pexips_policy_schema() -> None:
    import jsonschema_rs

    validator = jsonschema_rs.validator_for(POLICY_SCHEMA)
    answers = every_answer()
    assert len(answers) > 30
    for body in answers:
        errors = [e.message for e in validator.iter_errors(body)]
        assert not errors, (body, errors)


def test_allow_all_goes_out_as_a_value_pexip_takes() -> None:
    settings = RoomSettings("hq", timedelta(0), timedelta(0), "", "Staff", "allow_all")
    index = AliasIndex()
    index.publish([room(9, settings=settings)])
    body = answer("81000009", START, index)[1]
    assert body["result"]["non_idp_participants"] == "allow_if_trusted"  # type: ignore[index]


def test_a_long_name_goes_out_within_pexips_limit() -> None:
    index = AliasIndex()
    index.publish([room(9, name="n" * 400)])
    body = answer("81000009", START, index)[1]
    assert len(body["result"]["name"]) == 250  # type: ignore[index]


def test_names_are_unique_across_integrations_and_pexips_own_services() -> None:
    index = AliasIndex()
    index.publish([room(1, name="Weekly sync (Olga)")])
    assert index.name_taken("weekly SYNC (olga)", "branch", "other-id")
    assert not index.name_taken("Weekly sync (Olga)", "hq", "id-1")  # its own
    index.set_foreign("hq", ["The CEO's room"], ["ceo@example.com", "81555555@video.example.com"])
    assert index.name_taken("the ceo's room", "hq")
    assert index.alias_taken("81555555") and not index.alias_taken("81555556")


def test_a_personal_vmrs_alias_is_never_handed_out_as_a_single_use_one() -> None:
    """DESIGN: an alias and a numeric alias are unique across the whole service. A file
    directory's personal rooms count as taken (whole, or as digits at any domain) while the
    directory holds them."""
    from vmrsched.pexip.policy import PersonalRoom

    index = AliasIndex()
    index.publish_personal(
        "hq", [PersonalRoom("hq", "Olga's room", ("meet.olga@x", "81100001", "81100002@x"))]
    )
    assert index.alias_taken("81100001") and index.alias_taken("81100002")
    assert not index.alias_taken("81100003")
    index.publish_personal("hq", ())
    assert not index.alias_taken("81100001")


def test_a_personal_rooms_numeric_alias_is_matched_at_any_domain() -> None:
    """docs/pexip.md: the numeric alias matches at any domain, as a phone gateway dials it
    (`<digits>@<its own domain or address>`), for a file directory's personal room as for a
    single-use one; its other aliases only as they are."""
    from vmrsched.pexip.policy import PersonalRoom

    index = AliasIndex()
    index.publish_personal(
        "hq", [PersonalRoom("hq", "Olga's room", ("meet.olga@video.example.com", "71100001"))]
    )
    for dialled in (
        "71100001",
        "h323:71100001",
        "sip:71100001@video.example.com",
        "71100001@10.0.0.5",
        "<SIP:71100001@Gateway.Example.NET;transport=tls>",
        "meet.olga@video.example.com",
    ):
        label, body = answer(dialled, START, index)
        assert label == "personal", dialled
        assert body["result"]["name"] == "Olga's room"  # type: ignore[index]
    for dialled in ("meet.olga@elsewhere.example.com", "71100002@video.example.com", "7110@x"):
        assert answer(dialled, START, index)[0] == "not_ours", dialled


def test_an_alias_any_integration_handed_out_is_never_handed_out_again() -> None:
    """An integration whose range now covers aliases another one (or itself, under a prefix
    since changed) handed out never draws them: reserved, bound and archived alike, as digits
    and at any domain; the owner of each form is known, for the directory's check."""
    index = AliasIndex()
    index.publish([room(1), room(2, status="reserved"), room(3, status="archived")])
    for n in (1, 2, 3):
        assert index.alias_taken(f"81{n:06d}")
    assert not index.alias_taken("81000004")
    assert index.owner("81000001") == "hq"
    assert index.owner("SIP:81000001@Video.Example.COM") == "hq"
    assert index.owner("81000001@gateway.example.net") == "hq"  # digits at any domain
    assert index.owner("81000004") is None
    index.drop("hq")
    assert not index.alias_taken("81000001") and index.owner("81000001") is None
