from __future__ import annotations

import threading
import time
import uuid
from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from vmrsched import templating
from vmrsched.templating import Renderer, TemplateError

START = datetime(2026, 11, 23, 9, 5, tzinfo=UTC)


def test_every_default_template_compiles_with_its_own_variables() -> None:
    for name, spec in templating.TEMPLATES.items():
        assert templating.check(name, spec.default) == [], name


def test_html_subject_and_organizer_are_escaped() -> None:
    r = Renderer({})
    out = r.render(
        "accept_new_single_meeting_template",
        {"subject": "<script>alert(1)</script>", "alias": "a@b", "start_time": START},
    )
    assert "<script>" not in out
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in out


def test_text_templates_are_one_line_and_not_escaped() -> None:
    r = Renderer({"conference_name_template": "{{subject}}\n  by {{organizer_name}}"})
    out = r.render("conference_name_template", {"subject": "R&D", "organizer_name": "Ann"})
    assert out == "R&D by Ann"


def test_a_utc_time_renders_in_the_integration_zone_with_the_zone_named() -> None:
    r = Renderer({}, timezone="Europe/Helsinki")
    assert r.format_time(START) == "11:05 on 23/11/2026 (Eastern European Standard Time)"
    out = r.render("accept_new_single_meeting_template", {"start_time": START, "subject": "x"})
    assert "11:05 on 23/11/2026 (Eastern European Standard Time)" in out


def test_the_organizers_zone_wins_and_the_language_and_format_are_the_admins() -> None:
    berlin = datetime(2026, 12, 15, 14, 0, tzinfo=ZoneInfo("Europe/Berlin"))
    english = Renderer({}, timezone="Europe/London")
    assert english.format_time(berlin) == "14:00 on 15/12/2026 (Central European Standard Time)"
    german = Renderer({}, "UTC", locale="de_DE", time_format="EEEE, d. MMMM y, HH:mm 'Uhr'")
    assert german.format_time(berlin) == (
        "Dienstag, 15. Dezember 2026, 14:00 Uhr (Mitteleuropäische Normalzeit)"
    )
    new_york = datetime(2026, 7, 1, 9, 30, tzinfo=ZoneInfo("America/New_York"))
    us = Renderer({}, locale="en_US", time_format="h:mm a 'on' MMM d, y")
    assert us.format_time(new_york) == "9:30\u202fAM on Jul 1, 2026 (Eastern Daylight Time)" or (
        us.format_time(new_york) == "9:30 AM on Jul 1, 2026 (Eastern Daylight Time)"
    )
    custom = datetime(2026, 12, 15, 14, 0, tzinfo=timezone(timedelta(hours=5, minutes=30)))
    assert english.format_time(custom).endswith("(UTC+05:30)")  # a zone with no name


def test_locale_and_time_format_are_checked() -> None:
    assert templating.check_time_format("xx_YY", "HH:mm")
    assert templating.check_time_format("en_GB", "bbbbbbbb")
    assert "strftime" in templating.check_time_format("en_GB", "%H:%M")[0]
    assert templating.check_time_format("en_GB", "HH:mm") == []


def test_unknown_variable_is_rejected() -> None:
    problems = templating.check("reject_invalid_alias_id_text", "{{alias}}")
    assert problems and "unknown variable" in problems[0] and "alias" in problems[0]
    with pytest.raises(TemplateError):
        Renderer({"reject_invalid_alias_id_text": "{{ secret }}"})


def test_syntax_error_is_reported() -> None:
    assert "does not compile" in templating.check("conference_name_template", "{{ x ")[0]


def test_sandbox_blocks_attribute_escape() -> None:
    r = Renderer({"conference_name_template": "{{ subject.__class__.__mro__ }}"})
    with pytest.raises(Exception, match=r"unsafe"):
        r.render("conference_name_template", {"subject": "x"})


def test_sandbox_globals_stay_usable_and_unshared_between_renders() -> None:
    """The globals are copied flat into each template once; what a render sets (a namespace,
    a loop) must not leak into the next one, and the sandbox's `range` limit still holds."""
    source = (
        "{% set ns = namespace(n=0) %}{% for i in range(3) %}{% set ns.n = ns.n + i %}"
        "{% endfor %}{{ ns.n }} {{ dict(a=1)['a'] }} {{ subject }}"
    )
    r = Renderer({"conference_name_template": source})
    assert r.render("conference_name_template", {"subject": "one"}) == "3 1 one"
    assert r.render("conference_name_template", {"subject": "two"}) == "3 1 two"
    huge = Renderer({"conference_name_template": "{% for i in range(10**9) %}{% endfor %}"})
    with pytest.raises(OverflowError):
        huge.render("conference_name_template", {})


@pytest.mark.parametrize(
    ("source", "plain"),
    [
        ("<p>{{alias}} and {{ subject }}</p>", True),
        ("no variables at all", True),
        ("{{ subject|upper }}", False),
        ("{{ subject[0] }}", False),
        ("{% if subject %}{{subject}}{% endif %}", False),
        ("{{ subject ~ alias }}", False),
    ],
)
def test_plain_templates_are_told_apart(source: str, plain: bool) -> None:
    assert templating._plain("html", source) is plain


def test_check_values_raises_what_render_would() -> None:
    """The add-in's check before it reserves: for any template, it fails exactly where a
    render with the same values fails."""
    name = "single_use_joining_instructions_template"
    naive = datetime(2026, 1, 1)  # format_time refuses a time without a zone
    cases = [
        ({}, "{{subject}} at {{start_time}}"),  # plain
        ({}, "{{ subject[0] }}"),  # fails on an empty subject
        ({"subject": "x"}, "{{ subject[0] }}"),
        ({"start_time": naive}, "{{subject}} at {{start_time}}"),
        ({"start_time": naive}, "{{ subject|upper }}"),  # the time is formatted anyway
    ]
    failed = 0
    for values, source in cases:
        r = Renderer({name: source})
        try:
            r.render(name, values)
        except Exception as exc:
            failed += 1
            with pytest.raises(type(exc)):
                r.check_values(name, values)
        else:
            r.check_values(name, values)
    assert failed == 3  # the empty subject and both naive times


def test_general_error_template_shows_the_correlation_id() -> None:
    out = Renderer({}).render("reject_general_error_template", {"correlation_id": "abc-123"})
    assert "abc-123" in out


def test_missing_known_variable_renders_empty() -> None:
    out = Renderer({}).render("conference_subject_template", {})
    assert out == ""


def test_renderers_built_together_compile_a_text_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Integrations starting together share one compilation of the same text."""
    real = templating.environment
    compiled: list[str] = []

    class Counting:
        def __init__(self, env: object) -> None:
            self.env = env

        def __getattr__(self, name: str) -> object:
            return getattr(self.env, name)

        def from_string(self, source: str) -> object:
            compiled.append(source)
            time.sleep(0.01)  # a slow compilation: the others arrive meanwhile
            return self.env.from_string(source)  # type: ignore[attr-defined]

    monkeypatch.setattr(templating, "environment", lambda kind: Counting(real(kind)))
    source = f"{{{{alias}}}} {uuid.uuid4()}"  # new to the caches
    start = threading.Barrier(8)

    def build() -> None:
        start.wait()
        Renderer({"conference_name_template": source})

    threads = [threading.Thread(target=build) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert compiled.count(source) == 1


def personal(**values: object) -> dict[str, object]:
    """The personal variables of one VMR, as directory.template_values makes them."""
    base: dict[str, object] = {
        "addin_server_domain": "join.example.com",
        "name": "Ann's room",
        "aliases": ["meet.ann", "81100007", "meet.ann@video.example.com"],
        "domain_aliases": ["meet.ann@video.example.com"],
        "numeric_aliases": ["81100007"],
        "other_aliases": ["meet.ann"],
        "pin": "",
        "guest_pin": "",
        "allow_guests": False,
    }
    base.update(values)
    return base


def test_the_default_personal_instructions_show_the_pin_that_applies_to_the_invitees() -> None:
    r = Renderer({})

    def out(**values: object) -> str:
        return r.render("joining_instructions_template", personal(**values))

    # guests allowed: invitees are guests; a host PIN is the host's alone, even with no guest PIN
    assert "1234" not in out(allow_guests=True, pin="1234")
    guests = out(allow_guests=True, pin="1234", guest_pin="5678")
    assert "5678" in guests and "1234" not in guests
    # no guests: everyone joins as a host, with the host PIN
    hosts = out(allow_guests=False, pin="1234", guest_pin="5678")
    assert "1234" in hosts and "5678" not in hosts
    assert "PIN" not in out(allow_guests=True)  # no PIN at all: none to show
    # the first domain alias to dial, else the first other alias, else the first numeric one
    assert "call: meet.ann@video.example.com" in out()
    assert "call: meet.ann<" in out(domain_aliases=[])
    assert "call: 81100007<" in out(domain_aliases=[], other_aliases=[])
    assert "enter 81100007 followed by #" in out()
