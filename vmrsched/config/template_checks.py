"""What an admin's templates do when rendered, checked before the service uses them.

`templating.check` (run by `checks`) finds syntax errors and unknown variables; a template can
pass it and still fail every time it renders (`{{ alias.__class__ }}` is refused by the
sandbox, `{{ 1/0 }}`, `{{ alias + 1 }}`, a loop over `range(10**9)`), and then every meeting is
declined with general_error. So each template is rendered once here, through the same
`templating.Renderer` (sandbox, autoescape, StrictUndefined) the service renders with, on
sample values of its documented variables (REFERENCE, "Template variables"), and a failure is a
problem with its key path.

A rule a template must keep ("must contain {{alias_uuid}}") is checked on the parsed template
and on its sample render, never on its text: `<p>alias_uuid</p>`, a comment or a raw block
spell the name without printing the token the service recognises meetings by.

Cost: a thousand integrations usually share a handful of texts, so each distinct (template,
text) is rendered once per process (`_DRY_RUNS`), and a render that takes longer than
`DRY_RUN_SECONDS` is stopped and reported.
"""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Callable, Mapping
from types import FrameType
from typing import Any, TypeVar

import jinja2

from vmrsched import templating
from vmrsched.config.schema import IntegrationConfig
from vmrsched.config.tables import _Loader
from vmrsched.rules import aliases

T = TypeVar("T")

INSTRUCTIONS = "single_use_joining_instructions_template"
# a render of an admin's template that takes longer than this fails the check: the service
# renders it for every booking (a typical one takes well under a millisecond)
DRY_RUN_SECONDS = 0.5

_ALIAS_ID = aliases.alias_id_token("3f2504e0-4f89-41d3-9a0c-0305e82c3301")
_TIME = "09:30 on 02/01/2030 (Coordinated Universal Time)"  # as Renderer.format_time prints
# the single-use set (REFERENCE), plus the declines' {{self_service_url}} and the general
# error's {{correlation_id}}; each template sees only the variables it may use
_SINGLE_USE_SAMPLE: dict[str, Any] = {
    "addin_server_domain": "vmr.example.com",
    "alias": "vmr123456@video.example.com",
    "numeric_alias": "vmr123456",
    "alias_uuid": _ALIAS_ID,
    "correlation_id": "9b2f0c1e-5d3a-4c7b-8e6f-1a2b3c4d5e6f",
    "organizer_email": "ada.organizer@example.com",
    "organizer_name": "Ada Organizer",
    "subject": "Quarterly review <draft> & plan",
    "start_time": _TIME,
    "end_time": "10:30 on 02/01/2030 (Coordinated Universal Time)",
    "self_service_url": "https://vmr.example.com/my/default",
}
# the personal set, as `directory.template_values` builds it: once with guests allowed, once
# without (templates usually branch on it to show the PIN that applies)
_PERSONAL_SAMPLE: dict[str, Any] = {
    "addin_server_domain": "vmr.example.com",
    "aliases": ["meet.alice@video.example.com", "alice", "8812345"],
    "domain_aliases": ["meet.alice@video.example.com"],
    "numeric_aliases": ["8812345"],
    "other_aliases": ["alice"],
    "allow_guests": True,
    "description": "Alice's room",
    "guest_pin": "5678",
    "pin": "1234",
    "name": "Alice Example",
    "owners_email": "alice@example.com",
    "service_type": "conference",
}
_SAMPLES: dict[frozenset[str], tuple[Mapping[str, Any], ...]] = {
    templating.PERSONAL_VARS: (_PERSONAL_SAMPLE, {**_PERSONAL_SAMPLE, "allow_guests": False}),
}

# every (template name, text) rendered so far and what went wrong ("" when nothing did); the
# name fixes the variable set, the kind (HTML or text) and whether the output is one line
_DRY_RUNS: dict[tuple[str, str], str] = {}
MAX_DRY_RUNS = 4096


class _TooSlow(Exception):
    """A dry run overran DRY_RUN_SECONDS."""


def _within(seconds: float, call: Callable[[], T]) -> T:
    """`call()`, stopped with _TooSlow once it has run `seconds`. A trace function sees every
    line the template's compiled code runs (a loop turns once per line), so even a template
    that prints nothing is stopped; the tracer in place before (a coverage tool's) is put
    back."""
    deadline = time.monotonic() + seconds
    previous = sys.gettrace()

    def tracer(frame: FrameType, event: str, arg: Any) -> Any:
        if time.monotonic() > deadline:
            raise _TooSlow
        return tracer

    sys.settrace(tracer)
    try:
        return call()
    finally:
        sys.settrace(previous)


def _samples(name: str) -> tuple[Mapping[str, Any], ...]:
    spec = templating.TEMPLATES[name]
    return _SAMPLES.get(spec.variables, (_SINGLE_USE_SAMPLE,))


def _dry_run(name: str, source: str) -> str:
    """Why rendering `source` as template `name` fails on sample values, or ""."""
    key = (name, source)
    found = _DRY_RUNS.get(key)
    if found is not None:
        return found
    problem = ""
    try:
        renderer = templating.Renderer({name: source})
        for sample in _samples(name):
            output = _within(DRY_RUN_SECONDS, functools.partial(renderer.render, name, sample))
            if name == INSTRUCTIONS and _ALIAS_ID not in output:
                problem = (
                    "must print {{alias_uuid}} unchanged (the alias ID the service recognises "
                    f"meetings by): rendered with sample values it does not show {_ALIAS_ID!r}"
                )
    except _TooSlow:
        problem = (
            f"takes longer than {DRY_RUN_SECONDS} s to render with sample values (the service "
            "renders it for every booking): remove the long loop"
        )
    except templating.TemplateLimitError as exc:
        problem = f"goes over a template limit with sample values: {exc}"
    except (templating.TemplateError, jinja2.TemplateSyntaxError):
        problem = ""  # reported by templating.check in its own words
    except Exception as exc:
        problem = f"fails when rendered with sample values: {type(exc).__name__}: {exc}"
    if len(_DRY_RUNS) >= MAX_DRY_RUNS:  # texts of configs long reloaded away
        _DRY_RUNS.clear()
    _DRY_RUNS[key] = problem
    return problem


def _check_templates(loader: _Loader, integ: IntegrationConfig, path: str) -> None:
    """Every template of the integration renders on sample values; the joining instructions
    print the alias ID; a template `templating.check` already refused is not rendered."""
    for name, source in integ.template_sources().items():
        key = f"{path}.{templating.TEMPLATES[name].group}.{name}"
        if any(p.startswith(f"{key}:") for p in loader.problems):
            continue
        if name == INSTRUCTIONS and integ.enable_single_use_vmrs:
            if not _check_instructions(loader, integ, key, source):
                continue
        elif name == INSTRUCTIONS:
            continue  # not used without single-use VMRs: not rendered, not checked
        problem = _dry_run(name, source)
        if problem:
            loader.error(key, problem)
    _check_link_host(loader, integ, path)


def _check_link_host(loader: _Loader, integ: IntegrationConfig, path: str) -> None:
    """{{addin_server_domain}} is the host of the joining links (Pexip's web app): webapp_fqdn,
    or else the add-in's server_fqdn. With neither, every link would read https:///webapp/…"""
    if integ.pexip.webapp_fqdn or integ.addin.server_fqdn:
        return
    using = []
    for name, source in integ.template_sources().items():
        if name == INSTRUCTIONS and not integ.enable_single_use_vmrs:
            continue
        if templating.TEMPLATES[name].group == "personal" and not integ.enable_personal_vmrs:
            continue
        try:
            if "addin_server_domain" in templating.used_variables(name, source):
                using.append(name)
        except jinja2.TemplateError:
            continue  # refused already, with its own problem
    if using:
        shown = ", ".join(using[:3]) + (f" and {len(using) - 3} more" if len(using) > 3 else "")
        loader.warnings.append(
            f"{path}.pexip.webapp_fqdn: joining links would have no host (https:///…): "
            f"{shown} use {{{{addin_server_domain}}}}, which is [integrations.pexip] "
            "webapp_fqdn, or else [integrations.addin] server_fqdn, and both are empty; set "
            "webapp_fqdn to the Conferencing Node (or reverse proxy) serving Pexip's web app"
        )


def _check_instructions(loader: _Loader, integ: IntegrationConfig, key: str, source: str) -> bool:
    """The joining instructions must use {{alias_uuid}} as a variable (parsed, not as text);
    whether the alias ID is printed is left to the render. False when a problem is reported."""
    used = templating.used_variables(INSTRUCTIONS, source)
    if "alias_uuid" not in used:
        loader.error(
            key,
            "must contain {{alias_uuid}} (the alias ID the service recognises meetings by) as "
            "a variable the template prints; text, comments and raw blocks do not count",
        )
        return False
    prefix = integ.single_use.alias_prefix
    if "numeric_alias" in used and not prefix.isdigit():
        loader.warnings.append(
            f"{key.rsplit('.email.', 1)[0]}.single_use.alias_prefix: {prefix!r} is not "
            "numeric, but the joining instructions offer phone dial-in, and the numeric "
            "alias is prefix + digits: use a numeric prefix so phones can dial it"
        )
    return True
