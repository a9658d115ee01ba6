from __future__ import annotations

from datetime import UTC, datetime

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


def test_times_render_in_the_integration_zone() -> None:
    r = Renderer({}, timezone="Europe/Helsinki")
    assert r.format_time(START) == "11:05 on 23/11/2026"
    out = r.render("accept_new_single_meeting_template", {"start_time": START, "subject": "x"})
    assert "11:05 on 23/11/2026" in out


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


def test_general_error_template_shows_the_correlation_id() -> None:
    out = Renderer({}).render("reject_general_error_template", {"correlation_id": "abc-123"})
    assert "abc-123" in out


def test_missing_known_variable_renders_empty() -> None:
    out = Renderer({}).render("conference_subject_template", {})
    assert out == ""
