"""Where to find an integration's current child actors. Child refs change on every restart, so
nobody keeps one: they look it up here by integration name and role. A plain locked dict, not an
actor, so that a lookup never waits on a supervisor that may itself be waiting on a child."""

from __future__ import annotations

import threading
from typing import Any

import pykka


class ActorUnavailable(RuntimeError):
    """The integration or the child is not running (it is starting, restarting or failed)."""


class Registry:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._refs: dict[tuple[str, str], pykka.ActorRef[Any]] = {}

    def set(self, integration: str, role: str, ref: pykka.ActorRef[Any] | None) -> None:
        with self._lock:
            if ref is None:
                self._refs.pop((integration, role), None)
            else:
                self._refs[(integration, role)] = ref

    def get(self, integration: str, role: str) -> pykka.ActorRef[Any]:
        with self._lock:
            ref = self._refs.get((integration, role))
        if ref is None or not ref.is_alive():
            raise ActorUnavailable(f"{role} of integration {integration!r} is not running")
        return ref

    def drop(self, integration: str) -> None:
        with self._lock:
            for key in [k for k in self._refs if k[0] == integration]:
                del self._refs[key]
