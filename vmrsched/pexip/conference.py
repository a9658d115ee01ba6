"""What one of our conferences on Pexip should hold, and how a conference read back from Pexip
differs from it: the fields the service owns (name, service type, description, tag, theme,
participant authentication) and the aliases (conference_alias objects). Pure functions, so the
provisioner's create and its reconcile compare the same things, and a hand edit on the
Management Node (an alias dropped, a theme cleared, a description changed) is put back on the
next full read instead of being left until the conference is deleted."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from vmrsched.pexip.management import API
from vmrsched.pexip.policy import FIELD_MAX, clip

SUFFIX = 7  # " " + six digits appended to a name Pexip already has


@dataclass(frozen=True, slots=True)
class AliasChanges:
    """How a conference's aliases differ from the room's: aliases to add, and the
    conference_alias URIs of aliases the room does not have."""

    missing: tuple[str, ...]
    extra: tuple[str, ...]

    def __bool__(self) -> bool:
        return bool(self.missing or self.extra)


def numbered(name: str, number: int) -> str:
    """`name` with a number appended, as a name Pexip already has gets one (within the limit)."""
    return f"{clip(name, FIELD_MAX - SUFFIX)} {number:06d}"


def ours(held: str, name: str) -> bool:
    """Whether the name Pexip holds is the room's, or the room's with a number appended (the
    name was taken when the conference was created): anything else is a hand edit."""
    base = clip(name)
    if held == base:
        return True
    short = re.escape(clip(name, FIELD_MAX - SUFFIX))
    return re.fullmatch(short + r" \d{6}", held) is not None


def differences(existing: dict[str, Any], wanted: dict[str, Any]) -> dict[str, Any]:
    """The owned fields whose value on Pexip is not the wanted one, with the wanted values
    (a PATCH body). `name` is left out: `ours` decides about it. A field Pexip leaves out
    reads as null (a conference without a theme lists `ivr_theme: null`)."""
    return {
        key: value for key, value in wanted.items() if key != "name" and existing.get(key) != value
    }


def alias_changes(existing: dict[str, Any], wanted: list[str]) -> AliasChanges:
    """Compare a conference's aliases (as Pexip lists them: dicts with `alias` and `id`)
    with the room's, case-insensitively as Pexip compares aliases."""
    held = existing.get("aliases") or []
    have = {str(a.get("alias", "")).casefold() for a in held}
    want = {a.casefold() for a in wanted}
    missing = tuple(a for a in wanted if a.casefold() not in have)
    extra = tuple(
        uri
        for a in held
        if str(a.get("alias", "")).casefold() not in want
        for uri in [alias_uri(a)]
        if uri
    )
    return AliasChanges(missing, extra)


def alias_uri(alias: dict[str, Any]) -> str:
    """A conference_alias object's URI: its own `resource_uri` where Pexip gives one, else
    built from its `id` (the conference listing nests aliases by id); "" when neither."""
    uri = alias.get("resource_uri")
    if isinstance(uri, str) and uri:
        return uri
    alias_id = alias.get("id")
    return f"{API}conference_alias/{alias_id}/" if isinstance(alias_id, int) else ""
