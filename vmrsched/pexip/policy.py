"""The external policy answer a Pexip Conferencing Node gets for a dialled alias (GET
/policy/v1/service/configuration): a pure function of the alias, the time and the published
index of our aliases. Nodes give up after about 5 s and ask on every call, so the answer is a
dictionary lookup and a window check, never a wait on an actor or a disk."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from vmrsched.rules import recurrence
from vmrsched.rules.aliases import (
    normalise as normalise,  # dialled aliases keyed as the store keys them
)
from vmrsched.rules.recurrence import Schedule

# Answers are shared objects: they are serialised, never changed.
CONTINUE_ELSEWHERE: dict[str, Any] = {"status": "success", "action": "continue", "result": {}}
REJECT: dict[str, Any] = {"status": "success", "action": "reject", "result": {}}

# Pexip's limit on a service's text fields (name, description, tag, group names, aliases): a node
# refuses a service configuration whose fields are longer, and the Management Node a conference
FIELD_MAX = 250
# what Pexip takes for non_idp_participants; our "allow_all" is served as the closest value
# that lets in no one Pexip would not (Pexip has no setting that admits every device)
NON_IDP_VALUES = ("disallow_all", "allow_if_trusted")


def clip(text: str, limit: int = FIELD_MAX) -> str:
    """`text` within Pexip's field limit (cut, trailing blanks dropped)."""
    return text if len(text) <= limit else text[:limit].rstrip()


def non_idp(other_participants: str) -> str:
    return other_participants if other_participants in NON_IDP_VALUES else "allow_if_trusted"


log = logging.getLogger("vmrsched.policy")


@dataclass(frozen=True, slots=True)
class RoomSettings:
    """What an integration's config says about all of its rooms on Pexip."""

    integration: str
    join_before: timedelta
    join_after: timedelta
    theme: str = ""
    identity_provider_group: str = ""
    other_participants: str = "disallow_all"

    @property
    def service_tag(self) -> str:
        return f"vmrsched/{self.integration}"


@dataclass(frozen=True, slots=True)
class Room:
    """One of our aliases as the policy answer sees it. `schedule` is None unless bound."""

    alias_id: str
    alias: str
    numeric_alias: str
    status: str  # reserved | bound | deleted | archived
    settings: RoomSettings
    schedule: Schedule | None = None
    name: str = ""
    description: str = ""
    # the highest SEQUENCE applied to its meeting (-1 unless bound): an organizer update
    # waiting to go out is restated above it (messages.answers.as_it_stands)
    sequence: int = -1

    def index_keys(self) -> tuple[str, ...]:
        """The normalised forms a node may ask for: the alias, the numeric alias, and the
        numeric alias at any domain (a phone gateway dials `<digits>@<its own domain>`)."""
        return (normalise(self.alias), normalise(self.numeric_alias))


@dataclass(frozen=True, slots=True)
class PersonalRoom:
    """A personal VMR of a file directory, as the policy answer serves it (always on: a
    personal room has no window)."""

    integration: str
    name: str
    aliases: tuple[str, ...]
    description: str = ""
    pin: str = ""
    guest_pin: str = ""
    allow_guests: bool = False
    service_type: str = "conference"


class AliasIndex:
    """Every integration's aliases by normalised alias and numeric alias, published by the
    allocators after each commit (so a node never learns of an alias before it is on disk)
    and read by the event loop without a lock: a dict lookup is atomic, and rooms are
    immutable, so a reader sees the old room or the new one, never half of either. It never
    holds one alias twice: each key has one owning integration."""

    def __init__(self) -> None:
        self._rooms: dict[str, Room] = {}
        self._owner: dict[str, str] = {}  # key -> integration that published it
        self._write = threading.Lock()  # writers only: several allocators publish at once
        self._loaded: set[str] = set()  # integrations whose whole store has been published
        # conference names in use, service-wide: casefolded name -> (integration, alias id)
        self._names: dict[str, tuple[str, str]] = {}
        self._name_of: dict[tuple[str, str], str] = {}
        # the name Pexip holds for a conference where it differs from the stored one
        self._pexip_names: dict[tuple[str, str], str] = {}
        # names and aliases of Pexip's own services (not ours), per integration that read them
        self._foreign_names: dict[str, frozenset[str]] = {}
        self._foreign_aliases: dict[str, frozenset[str]] = {}
        self._personal: dict[str, PersonalRoom] = {}  # file-directory personal VMRs by key
        self._personal_taken: frozenset[str] = frozenset()  # their aliases and user parts

    def publish(self, rooms: Iterable[Room]) -> list[tuple[str, str, str]]:
        """Add or replace rooms. An alias belongs to the integration that published it first
        (until that one is dropped): another integration's room with the same alias or numeric
        alias is refused, logged as an error, and returned as (key, claimant, owner), so the
        answer never depends on which integration published last. check-config keeps ranges
        apart; this guards stores written before it did, and anything that slips past it."""
        refused: list[tuple[str, str, str]] = []
        with self._write:
            for room in rooms:
                claimant = room.settings.integration
                for key in room.index_keys():
                    if not key:
                        continue  # an archived alias known by one form only
                    owner = self._owner.setdefault(key, claimant)
                    if owner == claimant:
                        self._rooms[key] = self._named(room)
                    else:
                        refused.append((key, claimant, owner))
                self._note_name(room)
        for key, claimant, owner in refused:
            log.error(
                "alias %s of integration %s is already %s's: %s's room is not served "
                "(two integrations handed out one alias; give them ranges that cannot meet)",
                key,
                claimant,
                owner,
                claimant,
                extra={"integration": claimant, "alias": key, "owner": owner},
            )
        return refused

    def _named(self, room: Room) -> Room:
        """The room with the name Pexip holds for it, where a provisioner found another one
        there: the answer and the conference on Pexip carry one name."""
        held = self._pexip_names.get((room.settings.integration, room.alias_id))
        if held is None or held == room.name:
            return room
        return replace(room, name=held)

    def _note_name(self, room: Room) -> None:
        """Keep the service-wide name registry in step with a published room (lock held)."""
        key = (room.settings.integration, room.alias_id)
        old = self._name_of.pop(key, None)
        if old is not None and self._names.get(old) == key:
            del self._names[old]
        if room.status in ("reserved", "bound") and room.name:
            folded = room.name.casefold()
            self._names.setdefault(folded, key)
            self._name_of[key] = folded

    def mark_loaded(self, integration: str) -> None:
        """The integration's whole store is published: what is missing from it is not ours
        to keep (until then, a provisioner deletes nothing)."""
        with self._write:
            self._loaded.add(integration)

    def loaded(self, integration: str) -> bool:
        return integration in self._loaded

    def name_taken(self, name: str, integration: str, alias_id: str = "") -> bool:
        """Whether another conference, of any integration or of Pexip's own services, has
        this name (case-insensitive, as Pexip compares them)."""
        folded = name.casefold()
        holder = self._names.get(folded)
        if holder is not None and holder != (integration, alias_id):
            return True
        return any(folded in names for names in self._foreign_names.values())

    def alias_taken(self, numeric_alias: str) -> bool:
        """Whether Pexip's own services, a personal VMR of a file directory, or an alias of
        any integration (reserved, bound, or archived: one handed out under a prefix an
        integration no longer has, or by another integration whose range now covers it)
        already route this alias (as digits, or as digits at any domain): a single-use alias
        never takes it."""
        key = numeric_alias.casefold()
        if key in self._personal_taken or key in self._owner:
            return True
        return any(key in found for found in self._foreign_aliases.values())

    def owner(self, alias: str) -> str | None:
        """The integration one of whose single-use aliases this is (any form a node dials;
        `<digits>@<any domain>` by its digits), or None."""
        key = normalise(alias)
        owner = self._owner.get(key)
        if owner is None and "@" in key:
            room = self.lookup(key)
            owner = room.settings.integration if room is not None else None
        return owner

    def set_foreign(self, integration: str, names: Iterable[str], aliases: Iterable[str]) -> None:
        """What a provisioner read of Pexip's own services (names, and every alias with its
        user part): names and aliases handed out from now on avoid them."""
        keys: set[str] = set()
        for alias in aliases:
            folded = normalise(alias)
            keys.add(folded)
            keys.add(folded.split("@", 1)[0])
        with self._write:
            self._foreign_names[integration] = frozenset(n.casefold() for n in names)
            self._foreign_aliases[integration] = frozenset(keys)

    def set_pexip_name(self, integration: str, alias_id: str, name: str) -> None:
        """The name Pexip holds for one of our conferences (a provisioner found or had to
        make it differ from the stored one): the policy answer uses it from now on."""
        with self._write:
            key = (integration, alias_id)
            if self._pexip_names.get(key) == name:
                return
            self._pexip_names[key] = name
            for index_key, room in list(self._rooms.items()):
                if room.alias_id == alias_id and room.settings.integration == integration:
                    self._rooms[index_key] = self._named(room)
            old = self._name_of.get(key)
            if old is not None and self._names.get(old) == key:
                del self._names[old]
            self._names.setdefault(name.casefold(), key)
            self._name_of[key] = name.casefold()

    def publish_personal(self, integration: str, rooms: Iterable[PersonalRoom]) -> None:
        """Replace one integration's file-directory personal VMRs (by every alias)."""
        fresh = {k: v for k, v in self._personal.items() if v.integration != integration}
        for room in rooms:
            for alias in room.aliases:
                key = normalise(alias)
                if key:
                    fresh.setdefault(key, room)
        taken = frozenset(fresh) | {key.split("@", 1)[0] for key in fresh}
        self._personal = fresh  # one assignment: readers see the old map or the new one
        self._personal_taken = taken

    def personal(self, key: str) -> PersonalRoom | None:
        """The file-directory personal room a normalised alias reaches: one of its aliases,
        or one of its numeric aliases (digits only) at any domain, as single-use numeric
        aliases are matched: a phone gateway dials `<digits>@<its own domain or address>`,
        and the node would otherwise look in its own database, where these rooms are not."""
        room = self._personal.get(key)
        if room is None and "@" in key:
            user = key.split("@", 1)[0]
            if user.isascii() and user.isdigit():
                room = self._personal.get(user)
        return room

    def drop(self, integration: str) -> None:
        """Forget an integration's aliases (it was removed from the config)."""
        with self._write:
            for key in [k for k, owner in self._owner.items() if owner == integration]:
                del self._owner[key]
                self._rooms.pop(key, None)
            self._loaded.discard(integration)
            for name_key in [k for k in self._name_of if k[0] == integration]:
                folded = self._name_of.pop(name_key)
                if self._names.get(folded) == name_key:
                    del self._names[folded]
            for name_key in [k for k in self._pexip_names if k[0] == integration]:
                del self._pexip_names[name_key]
            self._foreign_names.pop(integration, None)
            self._foreign_aliases.pop(integration, None)
        self.publish_personal(integration, ())

    def rooms(self, integration: str) -> list[Room]:
        """One integration's rooms (each once), for the provisioner."""
        with self._write:
            values = list(self._rooms.values())
        seen: dict[str, Room] = {}
        for room in values:
            if room.settings.integration == integration:
                seen[room.alias_id] = room
        return list(seen.values())

    def lookup(self, key: str) -> Room | None:
        room = self._rooms.get(key)
        if room is None and "@" in key:
            room = self._rooms.get(key.split("@", 1)[0])  # `<numeric alias>@<any domain>`
            if room is not None and key.split("@", 1)[0] != normalise(room.numeric_alias):
                room = None
        return room

    def __len__(self) -> int:
        return len(self._rooms)


def answer(local_alias: str, now: datetime, index: AliasIndex) -> tuple[str, dict[str, Any]]:
    """(result label for the metrics, the JSON answer) for one node request."""
    key = normalise(local_alias)
    room = index.lookup(key)
    if room is None:
        personal = index.personal(key)
        if personal is not None:
            return "personal", {"status": "success", "action": "continue", "result": vmr(personal)}
        return "not_ours", CONTINUE_ELSEWHERE
    if room.status != "bound" or room.schedule is None:
        return "rejected", REJECT
    settings = room.settings
    try:
        live = recurrence.live_at(room.schedule, now, settings.join_before, settings.join_after)
    except recurrence.RecurrenceError:
        live = False
    if not live:
        return "rejected", REJECT
    return "conference", {"status": "success", "action": "continue", "result": conference(room)}


def conference(room: Room) -> dict[str, Any]:
    """The service configuration of a live room (Pexip's policy response fields)."""
    settings = room.settings
    result: dict[str, Any] = {
        "service_type": "conference",
        "name": clip(room.name or room.alias),
        "service_tag": clip(settings.service_tag),
        "description": clip(room.description),
    }
    if settings.theme:
        result["ivr_theme_name"] = clip(settings.theme)
    if settings.identity_provider_group:
        # participants authenticate with the group's identity provider; the others are
        # let in (or not) as configured, in the values Pexip takes
        result["host_identity_provider_group"] = clip(settings.identity_provider_group)
        result["non_idp_participants"] = non_idp(settings.other_participants)
    return result


def vmr(room: PersonalRoom) -> dict[str, Any]:
    """The service configuration of a personal VMR from a file directory."""
    result: dict[str, Any] = {
        "service_type": room.service_type,
        "name": clip(room.name),
        "service_tag": clip(f"vmrsched/{room.integration}/personal"),
        "description": clip(room.description),
        "allow_guests": room.allow_guests,
    }
    if room.pin:
        result["pin"] = room.pin
    if room.guest_pin:
        result["guest_pin"] = room.guest_pin
    return result
