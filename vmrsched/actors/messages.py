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
    role: str
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
    role: str


@dataclass(frozen=True)
class RetryIntegration:
    pass


@dataclass(frozen=True)
class Reserve:
    """Payload of a Request from the add-in API: reserve `count` aliases (the requests that
    arrived together); the reply is the list of records."""

    count: int = 1


@dataclass(frozen=True)
class Reload:
    """Payload of a Request to the service supervisor: apply this (validated) configuration;
    the reply is a ReloadResult."""

    config: Config


@dataclass(frozen=True)
class Request:
    """A request from the event loop: `payload` is handled by the actor and `reply` is called with
    (result, error) from the actor's thread; see bridge.py."""

    payload: Reserve | Reload
    reply: Callable[[Any, BaseException | None], None]
