"""Every message actors tell each other and the front ends tell actors: typed, immutable."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from vmrsched.config import Config


@dataclass(frozen=True)
class Poll:
    pass


@dataclass(frozen=True)
class Flush:
    pass


@dataclass(frozen=True)
class Sweep:
    pass


@dataclass(frozen=True)
class Reconcile:
    """Provisioner: bring Pexip in line with the store; `full` re-reads Pexip's conferences
    instead of trusting what was last seen there."""

    full: bool = False


@dataclass(frozen=True)
class Poke:
    """Provisioner: the allocator committed changes; reconcile soon (bursts coalesce)."""


@dataclass(frozen=True)
class Crash:
    """Told to itself by an actor whose state can no longer be trusted: the handler raises, so
    the actor stops and its supervisor starts a fresh one."""


@dataclass(frozen=True)
class ChildFailed:
    """Told by a child of an IntegrationSupervisor that died (actors/child.py)."""

    role: str
    generation: int
    error: str


@dataclass(frozen=True)
class IntegrationFailed:
    """Told by an IntegrationSupervisor that died (its children with it) to the service
    supervisor, which starts the integration again."""

    name: str
    generation: int
    error: str


@dataclass(frozen=True)
class ChildReady:
    """Told by a child once its start-up work is done (the allocator: its store loaded and its
    aliases published): the integration is running when every child has said so."""

    role: str
    generation: int


@dataclass(frozen=True)
class RestartChild:
    """Told by a supervisor to itself (through the timer) when a child's restart is due."""

    child: str


@dataclass(frozen=True)
class RetryIntegration:
    pass


@dataclass(frozen=True)
class Reserve:
    """Payload of a Request from the add-in API: reserve an alias for each of `users` (the
    requests that arrived together; "" for a caller no quota applies to); the reply lists, in
    the same order, each one's record or the QuotaReached of a user at the cap."""

    users: tuple[str, ...] = ("",)


@dataclass(frozen=True)
class FindAliases:
    """Payload of a Request to an allocator from the admin API: the records matching `query`
    (every word in the alias, numeric alias, organizer, subject or meeting UID) whose schedule
    touches `day` (ISO date, optional); the reply is a list of records, newest first."""

    query: str = ""
    day: str = ""
    limit: int = 100


@dataclass(frozen=True)
class DeleteAlias:
    """Payload: delete an alias (an admin's act: `by`). Declined from then on, refused by the
    policy endpoint, its conference removed where provisioned; the organizer of a booked
    meeting is told. The reply is the deleted record, or None when no such alias exists."""

    alias: str
    by: str
    # the organizer's cancel: only a reservation no meeting uses, checked when the allocator
    # applies it (a meeting may have bound it since the organizer's page was read)
    unused_only: bool = False


@dataclass(frozen=True)
class ResendInstructions:
    """Payload: mail a booked meeting's joining instructions to its organizer again; the reply
    is the queued message's id, or None when the alias is not booked."""

    alias: str
    by: str


@dataclass(frozen=True)
class Reload:
    """Payload of a Request to the service supervisor: apply this (validated) configuration;
    the reply is a ReloadResult."""

    config: Config


@dataclass(frozen=True)
class Request:
    """A request from the event loop: `payload` is handled by the actor and `reply` is called with
    (result, error) from the actor's thread; see bridge.py."""

    payload: Reserve | Reload | FindAliases | DeleteAlias | ResendInstructions
    reply: Callable[[Any, BaseException | None], None]
