"""Messages actors tell each other (besides proxy calls)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


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
class Crash:
    """Told to itself by an actor whose state can no longer be trusted: the handler raises, so
    the actor stops and its supervisor starts a fresh one."""


@dataclass(frozen=True)
class ChildFailed:
    role: str
    generation: int
    error: str


@dataclass(frozen=True)
class RestartChild:
    role: str


@dataclass(frozen=True)
class RetryIntegration:
    pass


@dataclass(frozen=True)
class Request:
    """A request from the event loop: `payload` is handled by the actor and `reply` is called with
    (result, error) from the actor's thread; see bridge.py."""

    payload: Any
    reply: Callable[[Any, BaseException | None], None]
