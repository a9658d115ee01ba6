"""The external policy answer a Pexip Conferencing Node gets for a dialled alias (GET
/policy/v1/service/configuration): a pure function of the alias, the time and the published
index of our aliases. Nodes give up after about 5 s and ask on every call, so the answer is a
dictionary lookup and a window check, never a wait on an actor or a disk."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from vmrsched import recurrence
from vmrsched.recurrence import Schedule

# Answers are shared objects: they are serialised, never changed.
CONTINUE_ELSEWHERE: dict[str, Any] = {"status": "success", "action": "continue", "result": {}}
REJECT: dict[str, Any] = {"status": "success", "action": "reject", "result": {}}

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

    def index_keys(self) -> tuple[str, ...]:
        """The normalised forms a node may ask for: the alias, the numeric alias, and the
        numeric alias at any domain (a phone gateway dials `<digits>@<its own domain>`)."""
        return (normalise(self.alias), normalise(self.numeric_alias))


def normalise(local_alias: str) -> str:
    """A dialled alias as the index keys it: without a URI scheme (`sip:`, `h323:`, `tel:`),
    angle brackets or `;parameters`, and case-folded."""
    text = local_alias.strip()
    if text.startswith("<") and ">" in text:
        text = text[1 : text.index(">")]
    head, sep, rest = text.partition(":")
    if sep and "@" not in head and not head.isdigit():
        text = rest
    text = text.split(";", 1)[0].strip()
    return text.casefold()


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
                        self._rooms[key] = room
                    else:
                        refused.append((key, claimant, owner))
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

    def drop(self, integration: str) -> None:
        """Forget an integration's aliases (it was removed from the config)."""
        with self._write:
            for key in [k for k, owner in self._owner.items() if owner == integration]:
                del self._owner[key]
                self._rooms.pop(key, None)

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
    room = index.lookup(normalise(local_alias))
    if room is None:
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
        "name": room.name or room.alias,
        "service_tag": settings.service_tag,
        "description": room.description,
    }
    if settings.theme:
        result["ivr_theme_name"] = settings.theme
    if settings.identity_provider_group:
        # participants authenticate with the group's identity provider; the others are
        # let in (or not) as configured
        result["host_identity_provider_group"] = settings.identity_provider_group
        result["non_idp_participants"] = settings.other_participants
    return result
