"""Admin-editable templates: sandboxed jinja2, the variables each template may use, default texts.

Subjects and organizer names come from meeting requests and are attacker-controlled, so every
template renders in a SandboxedEnvironment and HTML templates autoescape. StrictUndefined turns a
typo in an admin's template into an error at config-check time instead of an empty string in a
customer's mail.

What a render may build is bounded too (`sandbox.Sandbox`: MAX_BUILT characters or list items,
integers of MAX_INT_BITS bits, MAX_OUTPUT characters printed): past a limit it raises
TemplateLimitError, at check time and at run time alike.
"""

from __future__ import annotations

import html
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any, Literal
from zoneinfo import ZoneInfo

import babel
import babel.dates
import jinja2
import nh3
from jinja2 import meta, nodes
from jinja2.sandbox import SandboxedEnvironment
from markupsafe import Markup, escape

from vmrsched.sandbox import Sandbox, finalize
from vmrsched.sandbox import TemplateLimitError as TemplateLimitError

# Babel (CLDR) date pattern of {{start_time}}/{{end_time}}; the zone's name is added after it
TIME_FORMAT = "HH:mm 'on' dd/MM/yyyy"
DEFAULT_LOCALE = "en_GB"

Kind = Literal["html", "text"]

MEETING_VARS = frozenset({"organizer_email", "organizer_name", "subject", "start_time", "end_time"})
SINGLE_USE_VARS = frozenset(
    {"addin_server_domain", "alias", "alias_uuid", "numeric_alias"} | MEETING_VARS
)
PERSONAL_VARS = frozenset(
    {
        "addin_server_domain",
        "aliases",
        "allow_guests",
        "description",
        "domain_aliases",
        "guest_pin",
        "name",
        "numeric_aliases",
        "other_aliases",
        "owners_email",
        "pin",
        "service_type",
    }
)
TEXT_VARS = frozenset({"addin_server_domain"} | MEETING_VARS)
# what every decline may add: the organizer page, where the organizer sees why and what to do
DECLINE_VARS = frozenset({"self_service_url"})


@dataclass(frozen=True, slots=True)
class TemplateSpec:
    group: str
    kind: Kind
    variables: frozenset[str]
    default: str
    one_line: bool = False


_JOINING = """<div class="vmr-joining">
<p><strong>Join the video meeting</strong></p>
<p>From a video system or app, call: <a href="sip:{{alias}}">{{alias}}</a></p>
<p>In a browser: <a href="https://{{addin_server_domain}}/webapp/#/?conference={{alias}}">https://{{addin_server_domain}}/webapp/#/?conference={{alias}}</a></p>
<p>With the desktop or mobile app: <a href="pexip://{{alias}}">pexip://{{alias}}</a></p>
<p>From a phone: dial your organisation's video gateway number and enter {{numeric_alias}} followed by #</p>
<p style="color:#888888;font-size:8pt">Meeting reference, please keep: {{alias_uuid}}</p>
</div>"""

# The invitees' PIN only: with guests allowed they join as guests (the guest PIN, or none when
# there is none: the host PIN is the host's alone); without, everyone joins with the host PIN.
_PERSONAL_JOINING = """{% set dial = (domain_aliases or other_aliases or numeric_aliases or aliases) | first %}<div class="vmr-joining">
<p><strong>Join {{name}}</strong></p>
<p>From a video system or app, call: {{dial}}</p>
<p>In a browser: <a href="https://{{addin_server_domain}}/webapp/#/?conference={{dial}}">https://{{addin_server_domain}}/webapp/#/?conference={{dial}}</a></p>
{% if numeric_aliases %}<p>From a phone: enter {{numeric_aliases | first}} followed by #</p>{% endif %}
{% if allow_guests %}{% if guest_pin %}<p>PIN: {{guest_pin}}</p>{% endif %}{% elif pin %}<p>PIN: {{pin}}</p>{% endif %}
</div>"""

_ACCEPT_TAIL = "<p>Video address: {{alias}} (phone: {{numeric_alias}}).</p>"

# Group "email": sent to organizers; group "single_use"/"personal": conference data and add-in output.
TEMPLATES: dict[str, TemplateSpec] = {
    "conference_name_template": TemplateSpec(
        "single_use", "text", SINGLE_USE_VARS, "{{subject}} ({{organizer_name}})", one_line=True
    ),
    "conference_description_template": TemplateSpec(
        "single_use",
        "text",
        SINGLE_USE_VARS,
        "Booked by {{organizer_email}} for {{start_time}}",
        one_line=True,
    ),
    "conference_subject_template": TemplateSpec(
        "single_use", "text", SINGLE_USE_VARS, "{{subject}}", one_line=True
    ),
    "joining_instructions_template": TemplateSpec(
        "personal", "html", PERSONAL_VARS, _PERSONAL_JOINING
    ),
    "location_template": TemplateSpec(
        "personal",
        "text",
        PERSONAL_VARS,
        "{{ ((domain_aliases or other_aliases or numeric_aliases or aliases) | first) }}",
        one_line=True,
    ),
    "name_template": TemplateSpec("personal", "text", PERSONAL_VARS, "{{name}}", one_line=True),
    "description_template": TemplateSpec(
        "personal", "text", PERSONAL_VARS, "{{description or name}}", one_line=True
    ),
    "single_use_joining_instructions_template": TemplateSpec(
        "email", "html", SINGLE_USE_VARS, _JOINING
    ),
    "placeholder_instructions_text": TemplateSpec(
        "email",
        "html",
        frozenset({"addin_server_domain"}),
        "<p><strong>Video meeting details will follow.</strong> The booking service could not be "
        "reached just now; you will receive an update with the joining details shortly. "
        "Please do not remove the reference below.</p>",
    ),
    "accept_new_single_meeting_template": TemplateSpec(
        "email",
        "html",
        SINGLE_USE_VARS,
        "<p>Your video meeting <em>{{subject}}</em> at {{start_time}} is booked.</p>"
        + _ACCEPT_TAIL,
    ),
    "accept_edited_single_meeting_template": TemplateSpec(
        "email",
        "html",
        SINGLE_USE_VARS,
        "<p>The changes to your video meeting <em>{{subject}}</em> are saved; it now starts at "
        "{{start_time}}.</p>" + _ACCEPT_TAIL,
    ),
    "accept_new_recurring_meeting_template": TemplateSpec(
        "email",
        "html",
        SINGLE_USE_VARS,
        "<p>Your recurring video meeting <em>{{subject}}</em> is booked; the first occurrence "
        "starts at {{start_time}}.</p>" + _ACCEPT_TAIL,
    ),
    "accept_edited_occurrence_template": TemplateSpec(
        "email",
        "html",
        SINGLE_USE_VARS,
        "<p>The change to one occurrence of <em>{{subject}}</em> is saved; it now starts at "
        "{{start_time}}.</p>" + _ACCEPT_TAIL,
    ),
    "accept_edited_recurring_meeting_template": TemplateSpec(
        "email",
        "html",
        SINGLE_USE_VARS,
        "<p>The changes to your recurring video meeting <em>{{subject}}</em> are saved.</p>"
        + _ACCEPT_TAIL,
    ),
    "reject_invalid_alias_id_text": TemplateSpec(
        "email",
        "html",
        TEXT_VARS | DECLINE_VARS,
        "<p>This meeting has no valid video meeting reference, so the video room cannot be "
        "booked. Use the add-in button in your meeting window to add a video room, then send "
        "the invitation again.</p>",
    ),
    "reject_alias_conflict_template": TemplateSpec(
        "email",
        "html",
        SINGLE_USE_VARS | DECLINE_VARS,
        "<p>The video address {{alias}} already belongs to another meeting. Each meeting needs "
        "its own video room: remove the copied joining details, add a new video room with the "
        "add-in, and send the invitation again.</p>",
    ),
    "reject_alias_deleted_text": TemplateSpec(
        "email",
        "html",
        TEXT_VARS | DECLINE_VARS,
        "<p>The video room in this meeting is no longer available (its meeting was cancelled or "
        "the reservation expired). Add a new video room with the add-in and send the invitation "
        "again.</p>",
    ),
    "alias_deleted_notice_template": TemplateSpec(
        "email",
        "html",
        SINGLE_USE_VARS,
        "<p>The video room {{alias}} of your meeting &quot;{{subject}}&quot;, starting at "
        "{{start_time}}, was removed by an administrator and can no longer be joined. To meet by video, add a "
        "new video room to the meeting with the add-in and send the update to its "
        "attendees.</p>",
    ),
    "reject_recurring_series_in_past_text": TemplateSpec(
        "email",
        "html",
        TEXT_VARS | DECLINE_VARS,
        "<p>Every occurrence of this recurring meeting is in the past, so no video room was "
        "booked.</p>",
    ),
    "reject_single_meeting_in_past_text": TemplateSpec(
        "email",
        "html",
        TEXT_VARS | DECLINE_VARS,
        "<p>This meeting has already ended, so no video room was booked.</p>",
    ),
    "reject_general_error_template": TemplateSpec(
        "email",
        "html",
        SINGLE_USE_VARS | {"correlation_id"} | DECLINE_VARS,
        "<p>Something went wrong while booking the video room for this meeting. Please try "
        "again later; if it keeps happening, contact your help desk and quote reference "
        "{{correlation_id}}.</p>",
    ),
}


class TemplateError(ValueError):
    """A template does not compile or uses a variable it may not use."""


@lru_cache(maxsize=2)
def environment(kind: Kind) -> SandboxedEnvironment:
    return Sandbox(
        autoescape=(kind == "html"),
        undefined=jinja2.StrictUndefined,
        finalize=finalize,
        keep_trailing_newline=False,
    )


def _compile(kind: Kind, source: str) -> jinja2.Template:
    """Compiled templates are immutable and safe to share between threads; integrations with
    the same texts (most of them, with the defaults) share one compilation (`_prepared`).

    Its globals (the sandbox's `range`, `dict`, `namespace`, ...) are flattened from jinja's
    ChainMap into a plain dict: every render copies them into its context and lists their
    names, and over a ChainMap that walk is Python code costing a third of a small render
    (33 against 22 µs for the default joining instructions). The environment's globals never
    change after start-up, so the copy cannot go stale."""
    template = environment(kind).from_string(source)
    template.globals = dict(template.globals)
    return template


def check(name: str, source: str) -> list[str]:
    """Problems with an admin's template: syntax errors and variables outside its allowed set."""
    spec = TEMPLATES[name]
    try:
        undeclared = _undeclared(spec.kind, source)
    except jinja2.TemplateSyntaxError as exc:
        return [f"does not compile: {exc.message} (line {exc.lineno})"]
    unknown = sorted(undeclared - spec.variables)
    if unknown:
        allowed = ", ".join(sorted(spec.variables))
        return [f"uses unknown variable(s) {', '.join(unknown)}; allowed: {allowed}"]
    return []


def used_variables(name: str, source: str) -> frozenset[str]:
    """The variables a template's code reads (parsed: text, comments and raw blocks that
    merely spell a name do not count). Raises jinja2.TemplateSyntaxError."""
    return _undeclared(TEMPLATES[name].kind, source)


@lru_cache(maxsize=4096)
def _undeclared(kind: Kind, source: str) -> frozenset[str]:
    return frozenset(meta.find_undeclared_variables(environment(kind).parse(source)))


def _plain(kind: Kind, source: str) -> bool:
    """Whether the template only prints text and bare variables (`{{alias}}`: no filters,
    tests, calls, lookups or statements), as the defaults and most admins' texts do. Such a
    render cannot fail once the times are formatted: missing variables become "" and every
    value prints (escaped, for HTML)."""
    body = environment(kind).parse(source).body
    return all(
        isinstance(node, nodes.Output)
        and all(isinstance(part, nodes.TemplateData | nodes.Name) for part in node.nodes)
        for node in body
    )


# what a plain template is rendered with once both ways, to confirm the pieces print as jinja
_PROBES: tuple[Any, ...] = (
    '<a href="x">&amp;\'é</a>\n  two  spaces {0}',
    None,
    7,
    Markup("<b>b</b>"),
)


@dataclass(frozen=True)
class Parts:
    """A plain template as a format string: its text as written, a field for each variable
    printed there (the distinct variables' values are printed once each, in `names` order)."""

    form: str
    names: tuple[str, ...]
    html: bool

    def render(self, values: Mapping[str, Any]) -> str:
        """What jinja prints: each value (None or missing as "") escaped for HTML, as str
        for text."""
        printed = [values.get(name) for name in self.names]
        if self.html:
            return self.form.format(*["" if v is None else _escape(v) for v in printed])
        return self.form.format(*["" if v is None else str(v) for v in printed])


def _escape(value: Any) -> str:
    """markupsafe's escape as a plain str (a Markup formats in Python, a str in C)."""
    if type(value) is str:
        return (
            value.replace("&", "&amp;")
            .replace(">", "&gt;")
            .replace("<", "&lt;")
            .replace("'", "&#39;")
            .replace('"', "&#34;")
        )
    return str(escape(value))


def _plain_parts(kind: Kind, source: str, template: jinja2.Template) -> Parts | None:
    """A plain template (`_plain`) as Parts, which print it without jinja's context machinery
    (a fraction of a small render's time); None when it is not plain, or when the Parts do not
    print what jinja prints for every probe."""
    if not _plain(kind, source):
        return None
    form: list[str] = []
    names: list[str] = []
    for node in environment(kind).parse(source).body:
        assert isinstance(node, nodes.Output)  # so `_plain` found
        for part in node.nodes:
            if isinstance(part, nodes.TemplateData):
                form.append(part.data.replace("{", "{{").replace("}", "}}"))
            elif isinstance(part, nodes.Name):
                if part.name not in names:
                    names.append(part.name)
                form.append(f"{{{names.index(part.name)}}}")
            else:  # not plain after all
                return None
    found = Parts("".join(form), tuple(names), kind == "html")
    for i in range(len(_PROBES)):
        values = {n: _PROBES[(i + j) % len(_PROBES)] for j, n in enumerate(names)}
        try:
            if found.render(values) != template.render(values):
                return None
        except Exception:
            return None
    return found


def _names_a_zone(value: datetime) -> bool:
    """Whether a time carries the organizer's own zone: any zone but UTC (a request in UTC,
    as Google sends them, says nothing about where its organizer is)."""
    key = getattr(value.tzinfo, "key", None)
    if isinstance(key, str):
        return key not in ("UTC", "Etc/UTC", "Etc/GMT", "GMT", "Zulu")
    return value.utcoffset() != timedelta(0)


def check_time_format(locale: str, time_format: str) -> list[str]:
    """Problems with a locale and a time pattern, for check-config."""
    try:
        parsed = babel.Locale.parse(locale)
    except (ValueError, babel.UnknownLocaleError) as exc:
        said = str(exc)
        return [said if locale in said else f"unknown locale {locale!r}: {said}"]
    example = "a CLDR pattern such as HH:mm 'on' dd/MM/yyyy"
    if not time_format.strip():
        return [f"must not be empty: {{{{start_time}}}} would print no time; use {example}"]
    if "%" in time_format:
        return [f"looks like a strftime format; use {example}"]
    if time_format.replace("''", "").count("'") % 2:
        return [
            "has a quote that is never closed (text in quotes is printed as it is, up to the "
            f"next quote, and '' is a quote): everything after it would be dropped; use {example}"
        ]
    try:
        babel.dates.format_datetime(datetime(2030, 1, 2, 3, 4), time_format, locale=parsed)
    except (ValueError, KeyError, AttributeError) as exc:
        return [f"not a date pattern Babel understands: {exc}"]
    return []


# Every text checked and compiled so far, by template name and text. A text is prepared once
# under the lock: lru_cache does not make a caller wait for a miss already being computed, so
# integrations starting together compiled the same defaults again and again (67 times for 200
# integrations, milliseconds each). Found texts are read without the lock, which 4,000 starting
# threads would queue on.
_PREPARED: dict[tuple[str, str], tuple[jinja2.Template, bool, Parts | None]] = {}
_PREPARING = threading.Lock()
MAX_PREPARED = 4096


def _prepared(name: str, source: str) -> tuple[jinja2.Template, bool, Parts | None]:
    """The text compiled, whether it is plain, and its pieces when they print as jinja does
    (`_plain_parts`); TemplateError if `check` finds problems."""
    key = (name, source)
    found = _PREPARED.get(key)
    if found is not None:
        return found
    with _PREPARING:
        found = _PREPARED.get(key)
        if found is None:
            problems = check(name, source)
            if problems:
                raise TemplateError(f"{name}: {problems[0]}")
            kind = TEMPLATES[name].kind
            if len(_PREPARED) >= MAX_PREPARED:  # texts of configs long reloaded away
                _PREPARED.clear()
            template = _compile(kind, source)
            found = _PREPARED[key] = (
                template,
                _plain(kind, source),
                _plain_parts(kind, source, template),
            )
    return found


class Renderer:
    """Compiled templates of one integration. Build it once per config; rendering is hot."""

    def __init__(
        self,
        sources: Mapping[str, str],
        timezone: str = "UTC",
        locale: str = DEFAULT_LOCALE,
        time_format: str = TIME_FORMAT,
    ) -> None:
        self.tz = ZoneInfo(timezone)
        self.locale = babel.Locale.parse(locale)
        self.time_format = time_format
        self._compiled: dict[str, jinja2.Template] = {}
        self._plain: dict[str, bool] = {}
        self._parts: dict[str, Parts | None] = {}
        for name, spec in TEMPLATES.items():
            self._compiled[name], self._plain[name], self._parts[name] = _prepared(
                name, sources.get(name, spec.default)
            )

    def format_time(self, value: datetime | None) -> str:
        """A time in the organizer's zone where the request names one (else the
        integration's), in the integration's format and language, with the zone named: the
        reader may live elsewhere."""
        if value is None:
            return ""
        if value.tzinfo is None:
            raise ValueError("naive datetime given to format_time")
        zone = value.tzinfo if _names_a_zone(value) else self.tz
        local = value.astimezone(zone)
        text = babel.dates.format_datetime(local, self.time_format, locale=self.locale)
        return f"{text} ({self.zone_name(local)})"

    def zone_name(self, local: datetime) -> str:
        key = getattr(local.tzinfo, "key", None)
        if isinstance(key, str):
            try:
                return str(babel.dates.get_timezone_name(local, width="long", locale=self.locale))
            except (LookupError, ValueError, AttributeError):
                return key
        offset = local.utcoffset() or timedelta(0)
        minutes = int(offset.total_seconds() // 60)
        sign = "+" if minutes >= 0 else "-"
        return f"UTC{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"

    def check_values(self, name: str, variables: Mapping[str, Any]) -> None:
        """Raise what `render` would raise for these variables, without rendering where
        nothing but the times can fail (a plain template; see `_plain`). The add-in checks a
        request's meeting details this way before it reserves an alias for them."""
        if not self._plain[name]:
            self.render(name, variables)
            return
        for key in ("start_time", "end_time"):
            value = variables.get(key)
            if key in TEMPLATES[name].variables and isinstance(value, datetime):
                self.format_time(value)

    def render(self, name: str, variables: Mapping[str, Any]) -> str:
        spec = TEMPLATES[name]
        parts = self._parts[name]
        if parts is not None:  # plain: printed from its pieces, the same text as jinja's
            values: Mapping[str, Any] = variables
            for key in ("start_time", "end_time"):
                value = variables.get(key)
                if isinstance(value, datetime) and key in spec.variables:
                    values = {**values, key: self.format_time(value)}
            out = parts.render(values)
        else:
            values = {k: v for k, v in variables.items() if k in spec.variables}
            for key in ("start_time", "end_time"):
                if isinstance(values.get(key), datetime):
                    values[key] = self.format_time(values[key])
            for key in spec.variables - values.keys():
                values[key] = ""
            try:
                out = self._compiled[name].render(values)
            except TemplateLimitError as exc:  # which template, for the admin who must fix it
                exc.template = name
                raise
        if spec.one_line:
            out = " ".join(out.split())
        return out


def plain_text(text: str) -> str:
    """An admin's text that may hold HTML (the add-in's texts may) as the words it shows: for
    notifications, titles and the message of an API error, which a client may show as it is."""
    return " ".join(html.unescape(nh3.clean(text, tags=set())).split())
