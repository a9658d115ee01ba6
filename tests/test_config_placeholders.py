"""Values that parse but give every booking something broken are named by check-config: joining
links with no host, aliases in a domain reserved for examples, a time pattern that prints no time
or drops text, a personal room whose alias a single-use range can hand out, a secret file of more
than one line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.test_config_limits import doc, problems
from vmrsched import config


def warnings(document: dict[str, Any], base: Path = Path(".")) -> list[str]:
    return list(config.parse(document, base, {}).warnings)


def test_joining_links_with_no_host_are_named() -> None:
    found = [w for w in warnings(doc()) if "joining links" in w]
    assert len(found) == 1
    assert found[0].startswith(
        "integrations[0].pexip.webapp_fqdn: joining links would have no host"
    )
    assert "single_use_joining_instructions_template" in found[0]
    # either host makes them links
    for tables in ({"pexip": {"webapp_fqdn": "pexip.corp.test"}}, {"addin": {"server_fqdn": "v"}}):
        assert not [w for w in warnings(doc(**tables)) if "joining links" in w]


def test_no_template_using_the_host_says_nothing_of_it() -> None:
    without = doc(
        email={
            "single_use_joining_instructions_template": "<p>{{alias}}</p><p>{{alias_uuid}}</p>",
        }
    )
    assert not [w for w in warnings(without) if "joining links" in w]


@pytest.mark.parametrize(
    "domain", ["video.example.com", "example.org", "VC.Example.NET", "vc.corp.test", "a.example"]
)
def test_an_alias_domain_reserved_for_examples_is_named(domain: str) -> None:
    found = warnings(doc(single_use={"alias_domain": domain}))
    assert (
        f"integrations[0].single_use.alias_domain: {domain!r} is a domain reserved for examples"
        in "\n".join(found)
    )


@pytest.mark.parametrize("domain", ["video.corp.com", "examples.com", "example.company.io"])
def test_an_alias_domain_of_ones_own_is_not(domain: str) -> None:
    assert not [
        w for w in warnings(doc(single_use={"alias_domain": domain})) if "alias_domain" in w
    ]


@pytest.mark.parametrize(
    ("pattern", "why"),
    [
        ("", "must not be empty"),
        ("   ", "must not be empty"),
        ("HH:mm 'on", "has a quote that is never closed"),
        ("HH:mm 'on' dd/MM/yyyy 'at", "has a quote that is never closed"),
    ],
)
def test_a_time_pattern_that_prints_no_time_or_drops_text_is_refused(
    pattern: str, why: str
) -> None:
    (found,) = problems(doc(email={"time_format": pattern}))
    assert found.startswith(f"integrations[0].email.time_format: {why}")


@pytest.mark.parametrize("pattern", ["HH:mm 'on' dd/MM/yyyy", "HH 'o''clock'", "h:mm a"])
def test_quoted_text_and_escaped_quotes_make_a_pattern(pattern: str) -> None:
    config.parse(doc(email={"time_format": pattern}), Path("."), {})


def test_an_unknown_locale_is_said_once() -> None:
    (found,) = problems(doc(email={"locale": "xx_YY"}))
    assert found == "integrations[0].email.locale: unknown locale 'xx_YY'"


def _directory(tmp_path: Path, *aliases: str) -> dict[str, Any]:
    (tmp_path / "vmrs.toml").write_text(
        '[[users]]\nemail = "olga@corp.test"\n[[users.vmrs]]\nname = "Olga"\n'
        f"aliases = [{', '.join(repr(a).replace(chr(39), chr(34)) for a in aliases)}]\n"
    )
    document = doc(personal={"directory_file": "vmrs.toml"})
    document["integrations"][0]["enable_personal_vmrs"] = True
    return document


@pytest.mark.parametrize("alias", ["81123456", "81123457@video.example.com", "SIP:81999999@x"])
def test_a_personal_alias_a_single_use_range_can_hand_out_is_refused(
    tmp_path: Path, alias: str
) -> None:
    (found,) = problems(_directory(tmp_path, "meet.olga", alias), tmp_path)
    assert found == (
        "integrations[0].personal.directory_file: vmrs.toml: olga@corp.test's room 'Olga': alias "
        f"{alias!r} lies in the single-use range of integration 'alpha' (alias_prefix '81' + 6 "
        "digits): once a meeting is given it, one alias would reach two rooms; give the room an "
        "alias outside every single-use range"
    )


@pytest.mark.parametrize(
    "alias", ["8112345", "811234567", "82123456", "81abcdef", "81１２３４５６"]
)
def test_personal_aliases_outside_every_range_are_taken(tmp_path: Path, alias: str) -> None:
    config.parse(_directory(tmp_path, alias), tmp_path, {})


def test_a_secret_file_of_two_lines_is_refused_and_never_shown(tmp_path: Path) -> None:
    (tmp_path / "policy.secret").write_text("first-line-secret\nsecond line\n")
    document = doc(server={"policy_username": "node", "policy_password_file": "policy.secret"})
    found = problems(document, tmp_path)
    assert found[0] == (
        f"server.policy_password_file: {tmp_path / 'policy.secret'} holds more than one line: a "
        "secret file holds the secret alone, on one line (a final newline is fine)"
    )
    assert not any("first-line-secret" in p or "second line" in p for p in found)
    (tmp_path / "policy.secret").write_text("one-line-secret-value\n")
    config.parse(document, tmp_path, {})
