"""What an admin's template may build is bounded, so that neither check-config nor the running
service can be made to compute or allocate without end by a short text.

The sandbox already caps a `range` at 100,000 items and the dry run stops a render that runs
longer than DRY_RUN_SECONDS, but that clock is read between lines: one `'x' * 300000000`,
`9 ** (9 ** 9)` or `s|center(10**9)` is a single step that allocates or computes all it wants
first. So each operation that can make much from little is refused before it runs:

- one render may build at most `sandbox.MAX_BUILT` characters (or list items), counted over
  everything it builds by repeating (`*`), joining (`+`, `~`, `join`), padding and formatting
  (`center`, `indent`, `wordwrap`, `replace`, `%`, `format`, the same methods of a string),
  growing a list, turning a list into text (a list holding one long string many times is as
  long as all of them), and printing;
- integer arithmetic (`*`, `**`, `//`, `%`) stops at `sandbox.MAX_INT_BITS` bits, estimated
  before the power is computed;
- a render prints at most `sandbox.MAX_OUTPUT` characters.

Past a limit the render raises `TemplateLimitError`: check-config names the key and the limit,
and a running service fails that one message instead of sending it.

The sizes below are over the limits, yet small enough that the code without these limits
renders them in well under a second: a test fails, it does not hang.
"""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

import jinja2.sandbox
import pytest

from vmrsched import config
from vmrsched.config import ConfigError
from vmrsched.sandbox import MAX_BUILT, MAX_INT_BITS, MAX_OUTPUT, TemplateLimitError
from vmrsched.templating import Renderer

ROOT = Path(__file__).resolve().parent.parent
TEXT = "conference_name_template"  # plain text, one line
HTML = "accept_new_single_meeting_template"
SUBJECT = "Quarterly review <draft> & plan"  # 31 characters, as check-config's sample


def render(source: str, name: str = TEXT, subject: str = SUBJECT) -> str:
    return Renderer({name: source}).render(name, {"subject": subject, "alias": "vmr1@example.com"})


def test_the_limits_are_far_above_what_a_template_needs() -> None:
    """A default text builds and prints a few hundred characters; an inline logo of 150 KB,
    a list repeated fifty times, padding and formatting stay well within the limits."""
    assert (MAX_BUILT, MAX_OUTPUT, MAX_INT_BITS) == (1_000_000, 256 * 1024, 4096)
    logo = "<img src='data:image/png;base64," + "A" * 150_000 + "'>"
    rows = "{% for a in [alias] * 50 %}<p>{{ '%-30s'|format(a) }}{{ a|center(40) }}</p>{% endfor %}"
    out = render(logo + rows + "{{ 2 ** 64 }}", HTML)
    assert out.startswith(logo) and out.count("vmr1@example.com") == 100
    assert out.endswith(str(2**64))


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("{{ 6 * 7 }} {{ 1.5 * 2 }} {{ 2 ** 10 }} {{ 10 ** -2 }} {{ 2 ** 0.5 }}", None),
        ("{{ 17 // 5 }} {{ 17 % 5 }} {{ -7 % 3 }} {{ 2 ** 4000 % 7 }}", "3 2 2 2"),
        ("{{ '-' * 20 }}", "-" * 20),
        ("{{ 3 * 'ab' }} {{ [1, 2] * 2 }} {{ (1,) * 3 }}", "ababab [1, 2, 1, 2] (1, 1, 1)"),
        ("{{ 'a' + 'b' }} {{ [1] + [2] }} {{ 'a' ~ 1 ~ none }}", "ab [1, 2] a1None"),
        ("{{ '%05d|%-4s|%.2f' % (42, 'ab', 3.14159) }} {{ '%s'|format('x') }}", None),
        ("{{ '{:>6}|{:.3}'.format('ab', 2.0) }} {{ '{a}'.format_map({'a': 1}) }}", None),
        ("{{ subject|center(40) }}|{{ 'a\nb'|indent(2) }}|{{ 'ab'.zfill(5) }}", None),
        ("{{ subject|wordwrap(10) }}|{{ subject|replace(' ', '_') }}", None),
        ("{{ [subject, alias]|join(', ') }} {{ ', '.join([alias, alias]) }}", None),
        ("{{ [[1], [2, 3]]|sum(start=[]) }} {{ [1, 2, 3]|sum }}", "[1, 2, 3] 6"),
        ("{% set l = [] %}{% set _ = l.append(1) %}{% set _ = l.extend([2]) %}{{ l }}", "[1, 2]"),
    ],
)
def test_ordinary_arithmetic_repeats_and_formatting_render_as_before(
    source: str, expected: str | None
) -> None:
    """What the limits leave alone prints exactly what jinja prints without them."""
    plain = jinja2.sandbox.SandboxedEnvironment().from_string(source)
    values = {"subject": SUBJECT, "alias": "vmr1@example.com"}
    unbounded = " ".join(plain.render(values).split())
    assert render(source) == unbounded
    if expected is not None:
        assert unbounded == expected


def test_html_templates_still_escape_what_they_join_and_format() -> None:
    source = "{{ subject ~ '!' }} {{ '%s' % subject }} {{ '{}'.format(subject) }} {{ subject * 2 }}"
    escaped = "Quarterly review &lt;draft&gt; &amp; plan"
    assert render(source, HTML) == f"{escaped}! {escaped} {escaped} {escaped}{escaped}"


@pytest.mark.parametrize(
    "source",
    [
        "{{ 'x' * 3000000 }}",
        "{{ 3000000 * 'x' }}",
        "{{ (subject * 100000)|length }}",
        "{{ ([0] * 3000000)|length }}",
        "{{ ((1, 2) * 1000000)|length }}",
    ],
)
def test_repeating_a_string_or_a_list_past_the_limit_is_refused_before_it_is_built(
    source: str,
) -> None:
    with pytest.raises(TemplateLimitError, match=r"^`\*` would build [\d,]+ characters or items"):
        render(source)


@pytest.mark.parametrize(
    "source",
    [
        "{{ 2 ** 5000 }}",
        "{{ 3 ** 200000 % 7 }}",
        "{{ (subject|length) ** 100000 % 7 }}",
        "{{ 9 ** (9 ** 5) % 7 }}",
    ],
)
def test_a_power_whose_result_would_be_huge_is_refused_before_it_is_computed(
    source: str,
) -> None:
    with pytest.raises(TemplateLimitError, match=r"^`\*\*` would make a number of about"):
        render(source)


def test_multiplying_or_dividing_huge_numbers_is_refused() -> None:
    """Numbers grow past the limit only through products and powers; a number read from a long
    text (`int` in base 16 has no digit limit) cannot be multiplied or divided by another."""
    big = "{% set n = ('f' * 3000)|int(base=16) %}"
    with pytest.raises(TemplateLimitError, match=r"^`\*` would make a number of about 24,000"):
        render(big + "{{ (n * n) % 7 }}")
    for op in ("//", "%"):
        with pytest.raises(TemplateLimitError, match=rf"^`{op}` of two numbers of over 4,096"):
            render(big + f"{{{{ (n {op} (n // 3)) % 7 }}}}")
    assert render(big + "{{ n % 7 }} {{ (2 ** 4000 * 2 ** 95) % 7 }}") == "0 1"


@pytest.mark.parametrize("join", ["~", "+"])
def test_doubling_a_string_line_after_line_is_stopped(join: str) -> None:
    """No loop needed: twenty lines that each double the subject would make 32 million
    characters (and forty, a thousand times the memory of the machine)."""
    doubling = "{% set s = subject %}" + f"{{% set s = s {join} s %}}" * 20 + "{{ s|length }}"
    with pytest.raises(TemplateLimitError, match=rf"^`\{join}` would build"):
        render(doubling)


def test_a_list_that_doubles_itself_is_stopped() -> None:
    growing = "{% set l = [0] %}{% for i in range(22) %}{% set _ = l.extend(l) %}{% endfor %}"
    with pytest.raises(TemplateLimitError, match=r"^list\.extend would build"):
        render(growing + "{{ l|length }}")
    with pytest.raises(TemplateLimitError, match=r"^`\+` would build"):
        render("{% set l = [0] %}" + "{% set l = l + l %}" * 22 + "{{ l|length }}")


def test_what_a_render_builds_is_counted_over_all_its_steps() -> None:
    """Each step here is under the limit; the loop adds them up."""
    loop = "{% for i in range(100) %}{% set s = 'x' * 50000 %}{% endfor %}done"
    with pytest.raises(TemplateLimitError, match="has built 1,000,000 already"):
        render(loop)
    assert render("{% for i in range(19) %}{% set s = 'x' * 50000 %}{% endfor %}done") == "done"


@pytest.mark.parametrize(
    "source",
    [
        "{{ subject|center(3000000) }}",
        "{{ subject|indent(3000000, true) }}",
        "{{ ((subject ~ '\n') * 2000)|indent(2000) }}",
        "{{ subject|wordwrap(5, wrapstring='x' * 300000) }}",
        "{{ subject|replace('', 'x' * 100000) }}",
        "{{ subject|replace(' ', 'x' * 500000) }}",
        "{{ (['x' * 100000] * 20)|join }}",
        "{{ '%3000000s'|format(subject) }}",
        "{{ '%3000000s' % subject }}",
        "{{ '%.3000000f' % 1.5 }}",
        "{{ '%*s' % (3000000, subject) }}",
        "{{ '{:>3000000}'.format(subject) }}",
        "{{ '{:{w}}'.format(subject, w=3000000) }}",
        "{{ '{a:>3000000}'.format_map({'a': subject}) }}",
        "{{ subject.center(3000000) }}",
        "{{ subject.ljust(3000000) }}",
        "{{ subject.rjust(3000000) }}",
        "{{ subject.zfill(3000000) }}",
        "{{ 'a\tb'.expandtabs(3000000) }}",
        "{{ subject.replace('', 'x' * 100000) }}",
        "{{ ('x' * 100000).join([subject] * 20) }}",
        "{{ subject.translate({32: 'x' * 500000}) }}",
    ],
)
def test_padding_and_formatting_cannot_make_a_huge_string(source: str) -> None:
    """Widths, fills and replacements are taken from the template (or the values), so each of
    these is refused on its arguments, before the string is made."""
    with pytest.raises(TemplateLimitError, match="would build"):
        render(source)


@pytest.mark.parametrize(
    "text",
    [
        "{{ [s] * 5 }}",
        "{{ [s, s, s]|join }}",
        "{{ [s, s, s]|string|length }}",
        "{{ [s, s, s]|tojson|length }}",
        "{{ ([s, s, s] ~ '')|length }}",
        "{{ ('%s' % ([s, s, s],))|length }}",
        "{{ ('{}'.format([s, s, s]))|length }}",
        "{{ {'a': s, 'b': s, 'c': s}|xmlattr|length }}",
        "{{ ([s, s, s] is lower) }}",
        "{{ namespace(a=[s, s, s])|string|length }}",
        "{{ {'a': s, 'b': s, 'c': s}.values()|string|length }}",
    ],
)
def test_a_list_holding_a_long_string_many_times_is_as_long_as_all_of_them(text: str) -> None:
    """A list of references is cheap; the text it becomes is not."""
    with pytest.raises(TemplateLimitError):
        render("{% set s = 'x' * 400000 %}" + text)


def test_filters_chained_on_their_own_output_are_counted() -> None:
    """Each `tojson` doubles the backslashes of the one before: a dozen of them turn a
    thousand backslashes into four million characters, twenty into a billion."""
    chained = "{{ ('\\\\' * 1000)" + "|tojson" * 12 + "|length }}"
    with pytest.raises(TemplateLimitError, match="the tojson filter would build"):
        render(chained)


def test_adding_up_lists_is_counted_like_joining_them() -> None:
    with pytest.raises(TemplateLimitError, match="the sum filter would build"):
        render("{% set p = [0] * 600000 %}{{ [p, p]|sum(start=[])|length }}")
    assert render("{{ ([[0]] * 3000)|sum(start=[])|length }}") == "3000"


def test_a_render_prints_at_most_max_output_characters() -> None:
    with pytest.raises(TemplateLimitError, match=r"^prints more than 262,144 characters"):
        render("{% for i in range(10000) %}{{ subject }}{% endfor %}")
    with pytest.raises(TemplateLimitError, match=r"^would print a list of more than 262,144"):
        render("{{ [subject] * 10000 }}")
    assert len(render("{% for i in range(8000) %}{{ subject }}{% endfor %}")) == 8000 * 31


def test_a_template_that_passes_with_the_sample_subject_stays_bounded_on_a_long_one() -> None:
    """check-config renders the sample subject (31 characters); a meeting request may carry a
    thousand. The same limits hold at run time: the render fails, it does not build 20 MB."""
    source = "{{ (subject * 20000)|length }}"
    assert render(source) == "620000"
    with pytest.raises(TemplateLimitError):
        render(source, subject="x" * 1000)


def problems(document: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        config.parse(document, Path("."), {})
    return info.value.problems


def test_check_config_refuses_a_template_past_a_limit_naming_the_key_and_the_limit() -> None:
    document = {
        "server": {"listen": "127.0.0.1:8080"},
        "integrations": [
            {
                "name": "alpha",
                "exchange": {"mailbox_name": "VMR", "mailbox_email": "vmr@example.com"},
                "addin": {"token_validation": "none"},
                "email": {"accept_new_single_meeting_template": "<p>{{ 'x' * 3000000 }}</p>"},
                "single_use": {"conference_name_template": "{{ 3 ** 200000 % 7 }}"},
            }
        ],
    }
    assert problems(document) == [
        "integrations[0].single_use.conference_name_template: goes over a template limit "
        "with sample values: `**` would make a number of about 316,993 bits; template "
        "arithmetic stops at 4,096",
        "integrations[0].email.accept_new_single_meeting_template: goes over a template limit "
        "with sample values: `*` would build 3,000,000 characters or items; one render may "
        "build 1,000,000",
    ]


AUDIT = """\
[server]
listen = "127.0.0.1:8080"
{integrations}"""
INTEGRATION = """
[[integrations]]
name = "i{n}"
[integrations.exchange]
mailbox_name = "VMR"
mailbox_email = "vmr{n}@example.com"
[integrations.single_use]
alias_prefix = "8{n}"
[integrations.addin]
token_validation = "none"
[integrations.email]
accept_new_single_meeting_template = "{text}"
"""


def test_the_audits_templates_are_refused_at_once_by_check_config(tmp_path: Path) -> None:
    """The findings' reproductions, through the command: a 300-million-character string
    (passed after 5.8 s and 1.2 GB), and two powers that never finished. Run in a process of
    its own with 1 GB of address space and a minute, should the limits ever be lost."""
    texts = ["{{ 'x' * 300000000 }}", "{{ subject|length ** 99999999 % 7 }}", "{{ 9 ** (9 ** 9) }}"]
    config_file = tmp_path / "vmrsched.toml"
    config_file.write_text(
        AUDIT.format(
            integrations="".join(INTEGRATION.format(n=n, text=t) for n, t in enumerate(texts))
        )
    )

    def one_gigabyte() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (2**30, 2**30))

    checked = subprocess.run(
        [sys.executable, "-m", "vmrsched", "check-config", str(config_file)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        preexec_fn=one_gigabyte,
    )
    assert checked.returncode == 1, checked.stderr
    key = "integrations[{}].email.accept_new_single_meeting_template: goes over a template limit"
    for n in range(len(texts)):
        assert key.format(n) in checked.stderr
    assert "`*` would build 300,000,000 characters or items" in checked.stderr
    assert checked.stderr.count("`**` would make a number of about") == 2
