"""An admin's templates are checked for what they do, not for how they are spelt: the joining
instructions must print the alias ID token (found on the parsed template and in a sample
render), and every template must render on sample values of its documented variables in the
service's own sandbox, or check-config (and serve, and a reload) refuses the file naming the
key and the error."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from vmrsched import config, templating
from vmrsched.config import ConfigError, template_checks
from vmrsched.config.template_checks import _ALIAS_ID

INSTRUCTIONS = "integrations[0].email.single_use_joining_instructions_template"
TOKEN = "<p>Reference: {{alias_uuid}}</p>"


def doc(table: str = "email", **templates: str) -> dict[str, Any]:
    return {
        "server": {"listen": "127.0.0.1:8080"},
        "integrations": [
            {
                "name": "alpha",
                "exchange": {"mailbox_name": "VMR", "mailbox_email": "vmr@example.com"},
                "addin": {"token_validation": "none"},
                "single_use": {"alias_prefix": "81"},
                table: templates,
            }
        ],
    }


def problems(document: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        config.parse(document, Path("."), {})
    return info.value.problems


@pytest.mark.parametrize(
    "text",
    [
        "<p>alias_uuid</p>",
        "{# {{alias_uuid}} #}",
        "{% raw %}{{alias_uuid}}{% endraw %}",
        "{% set alias_uuid = 'none' %}{{ alias_uuid }}",
    ],
)
def test_alias_uuid_spelt_but_not_printed_is_refused(text: str) -> None:
    found = problems(doc(single_use_joining_instructions_template=text))
    assert found == [
        f"{INSTRUCTIONS}: must contain {{{{alias_uuid}}}} (the alias ID the service recognises "
        "meetings by) as a variable the template prints; text, comments and raw blocks do not "
        "count"
    ]


@pytest.mark.parametrize(
    "text", ["{% if false %}{{alias_uuid}}{% endif %}", "{{ alias_uuid | lower }}"]
)
def test_alias_uuid_used_but_not_printed_as_it_is_is_refused(text: str) -> None:
    """A token hidden behind a branch never taken, or changed by a filter, is not the one
    the service looks for in the meeting body."""
    (found,) = problems(doc(single_use_joining_instructions_template=text))
    assert found.startswith(f"{INSTRUCTIONS}: must print {{{{alias_uuid}}}} unchanged")
    assert _ALIAS_ID in found


def test_alias_uuid_printed_anywhere_in_any_form_of_output_is_accepted() -> None:
    for text in (TOKEN, "{{ alias_uuid }}", "{% if alias_uuid %}<i>{{alias_uuid}}</i>{% endif %}"):
        cfg = config.parse(doc(single_use_joining_instructions_template=text), Path("."), {})
        assert cfg.integrations[0].email.single_use_joining_instructions_template == text


def test_without_single_use_vmrs_the_instructions_are_not_required_to_hold_the_token() -> None:
    document = doc(single_use_joining_instructions_template="<p>no token</p>")
    document["integrations"][0].update(enable_single_use_vmrs=False, enable_personal_vmrs=True)
    document["integrations"][0]["personal"] = {
        "directory_file": str(Path(__file__).resolve().parent.parent / "config" / "vmrs.toml")
    }
    assert config.parse(document, Path("."), {}).integrations[0].enable_personal_vmrs


@pytest.mark.parametrize(
    ("expression", "error"),
    [
        ("{{ alias.__class__ }}", "SecurityError: access to attribute '__class__'"),
        ("{{ 1/0 }}", "ZeroDivisionError: division by zero"),
        ("{{ alias + 1 }}", "TypeError: can only concatenate str"),
        ("{{ subject.foo.bar }}", "UndefinedError: 'str object' has no attribute 'foo'"),
        ("{% for i in range(10**9) %}x{% endfor %}", "OverflowError: Range too big"),
    ],
)
def test_a_template_that_fails_every_render_is_refused_with_its_error(
    expression: str, error: str
) -> None:
    (found,) = problems(doc(accept_new_single_meeting_template=f"<p>{expression}</p>"))
    assert found.startswith(
        "integrations[0].email.accept_new_single_meeting_template: fails when rendered with "
        f"sample values: {error}"
    )
    joining = problems(doc(single_use_joining_instructions_template=TOKEN + expression))
    assert joining[0].startswith(f"{INSTRUCTIONS}: fails when rendered with sample values: {error}")


def test_every_template_group_is_rendered_with_its_own_variables() -> None:
    """Single-use texts, declines, personal texts: each renders on its documented set (the
    personal set's lists and flags included), and a failure names its own table."""
    assert problems(doc("personal", name_template="{{ aliases + 1 }}")) == [
        "integrations[0].personal.name_template: fails when rendered with sample values: "
        'TypeError: can only concatenate list (not "int") to list'
    ]
    assert problems(doc("single_use", conference_name_template="{{ subject() }}"))[0].startswith(
        "integrations[0].single_use.conference_name_template: fails when rendered"
    )
    (general,) = problems(doc(reject_general_error_template="{{ correlation_id.x.y }}"))
    assert general.startswith("integrations[0].email.reject_general_error_template: fails")
    fine = doc(
        reject_alias_conflict_template="{{ alias }} <a href='{{ self_service_url }}'>mine</a>",
        reject_general_error_template="{{ correlation_id | upper }}",
    )
    fine["integrations"][0]["personal"] = {
        "location_template": "{{ (domain_aliases or aliases) | first }} {{ aliases | length }}",
        "joining_instructions_template": "{% if allow_guests %}{{guest_pin}}{% else %}{{pin}}"
        "{% endif %} {{ numeric_aliases | join(', ') }} {{ service_type | title }}",
    }
    assert config.parse(fine, Path("."), {})


def test_a_branch_taken_only_without_guests_is_rendered_too() -> None:
    """Personal templates show the PIN that applies: both sides of allow_guests render."""
    found = problems(
        doc(
            "personal",
            joining_instructions_template="{% if not allow_guests %}{{ 1/0 }}{% endif %}",
        )
    )
    assert found[0].startswith("integrations[0].personal.joining_instructions_template: fails")


def test_a_render_that_never_ends_is_stopped_and_reported() -> None:
    """The sandbox caps one range at 100,000 items, not two nested ones: the dry run gives up
    after DRY_RUN_SECONDS instead of hanging the start or the reload."""
    loops = "{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}"
    started = time.monotonic()
    found = problems(doc(accept_new_single_meeting_template=loops))
    assert time.monotonic() - started < template_checks.DRY_RUN_SECONDS + 1.5
    assert found == [
        "integrations[0].email.accept_new_single_meeting_template: takes longer than "
        f"{template_checks.DRY_RUN_SECONDS} s to render with sample values (the service renders "
        "it for every booking): remove the long loop"
    ]


def test_a_syntax_error_is_reported_once_in_its_own_words() -> None:
    found = problems(doc(accept_new_single_meeting_template="{% if %}"))
    assert len(found) == 1 and "does not compile" in found[0]


def test_a_text_shared_by_many_integrations_is_rendered_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A thousand integrations usually share their texts: each distinct text is rendered once,
    so checking them costs what checking one does."""
    renders: list[str] = []
    real = templating.Renderer.render

    def counting(self: templating.Renderer, name: str, values: Any) -> str:
        renders.append(name)
        return real(self, name, values)

    monkeypatch.setattr(template_checks, "_DRY_RUNS", {})
    monkeypatch.setattr(templating.Renderer, "render", counting)
    text = "<p>Booked: {{ subject | upper }} {{ alias }}</p>"
    integrations = [
        {
            "name": f"c{i}",
            "exchange": {"mailbox_name": "VMR", "mailbox_email": f"vmr{i}@example.com"},
            "addin": {"token_validation": "none"},
            "single_use": {"alias_prefix": f"8{i:03d}"},
            "email": {"accept_new_single_meeting_template": text},
        }
        for i in range(50)
    ]
    config.parse({"server": {}, "integrations": integrations}, Path("."), {})
    assert renders.count("accept_new_single_meeting_template") == 1
    # every template once; the personal ones twice (with guests allowed and without)
    personal = [n for n, spec in templating.TEMPLATES.items() if spec.group == "personal"]
    assert len(renders) == len(templating.TEMPLATES) + len(personal)


def test_the_shipped_templates_pass_their_own_dry_run() -> None:
    for name, spec in templating.TEMPLATES.items():
        assert template_checks._dry_run(name, spec.default) == "", name
