"""What every actor of one service shares: config, metrics, alarms, the registry of child refs,
the timer, the clock, where data lives and where the state beside the records is kept
(`Stores`)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pykka

from vmrsched import config
from vmrsched.actors.ownership import SharedStorage
from vmrsched.actors.registry import Registry
from vmrsched.actors.supervision import RestartPolicy
from vmrsched.actors.timer import Scheduler
from vmrsched.config import IntegrationConfig, ServerConfig
from vmrsched.mailbox.backends import TokenSources, make_gateway
from vmrsched.mailbox.base import Mailbox
from vmrsched.mailbox.ews_auth import TokenCacheStore
from vmrsched.mailbox.graph_notifications import GraphStateStore
from vmrsched.pexip.policy import AliasIndex
from vmrsched.rules.aliases import RandomSource
from vmrsched.signin.admins import AdminSessions, MemoryAdminSessions
from vmrsched.signin.oidc import AttemptStore, MemoryAttempts
from vmrsched.signin.users import FileSessions, SessionStore
from vmrsched.store import utc_now
from vmrsched.store.decisions import Decisions, FileDecisions
from vmrsched.telemetry import Alarms, Metrics


def _nothing() -> None:
    return None


@dataclass
class Stores:
    """Where the service keeps what it owns beside the records and the out-queue, one port per
    kind: files under data_dir (`file_stores`, the default) or the shared database
    (service/runtime.py chooses, once, where the service is wired). The integration-owned ones
    (decisions, token caches, Graph state) are written by the integration's owner only; the
    sign-ins' are the whole service's."""

    decisions: Decisions
    user_sessions: SessionStore
    admin_sessions: AdminSessions
    attempts: AttemptStore  # sign-ins between the redirect and the callback
    # an integration's delegated token cache and Graph state (None: files under data_dir)
    token_cache: Callable[[str], TokenCacheStore] | None = None
    graph_state: Callable[[str], GraphStateStore] | None = None
    close: Callable[[], None] = _nothing


def file_stores(data_dir: Path) -> Stores:
    """Everything in files under data_dir, as one instance always kept it (the console's
    sessions and the attempts in progress in memory)."""
    return Stores(
        decisions=FileDecisions(data_dir),
        user_sessions=FileSessions(data_dir),
        admin_sessions=MemoryAdminSessions(),
        attempts=MemoryAttempts(),
    )


class StatusBoard:
    """Each integration's state, readable from the event loop without asking an actor."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._states: dict[str, dict[str, Any]] = {}

    def set(self, name: str, **values: Any) -> None:
        with self._lock:
            self._states.setdefault(name, {}).update(values)

    def state(self, name: str) -> str | None:
        with self._lock:
            entry = self._states.get(name)
            return None if entry is None else entry.get("state")

    def drop(self, name: str) -> None:
        with self._lock:
            self._states.pop(name, None)

    def snapshot(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {k: dict(v) for k, v in self._states.items()}


def default_gateway(integ: IntegrationConfig, ctx: Context) -> Mailbox:
    return make_gateway(
        integ,
        ctx.data_dir,
        ctx.metrics,
        ctx.tokens,
        exclusive=True,
        graph_states=ctx.stores.graph_state,
    )


@dataclass
class Context:
    server: ServerConfig
    data_dir: Path
    metrics: Metrics
    alarms: Alarms
    registry: Registry = field(default_factory=Registry)
    status: StatusBoard = field(default_factory=StatusBoard)
    scheduler: Scheduler = field(default_factory=Scheduler)
    clock: Callable[[], datetime] = utc_now
    rng: RandomSource | None = None
    policy: RestartPolicy = field(default_factory=RestartPolicy)
    gateway_factory: Callable[[IntegrationConfig, Context], Mailbox] = default_gateway
    tokens: TokenSources = field(init=False)
    # every integration's aliases for the Pexip policy answer, published by the allocators
    alias_index: AliasIndex = field(default_factory=AliasIndex)
    # every running integration's mailbox gateway by name (change notifications reach it)
    mailboxes: dict[str, Mailbox] = field(default_factory=dict)
    # every running integration supervisor by name (for Service.stop when the root is gone)
    supervisors: dict[str, pykka.ActorRef[Any]] = field(default_factory=dict)
    poll_batch: int = 100
    sweep_interval: float = 3600.0
    provision_interval: float = 30.0  # seconds between the provisioner's passes
    # seconds between looks at the damaged files state_damaged names (deleted ones clear it)
    damage_recheck_interval: float = 30.0
    # the database instances share ([storage] backend = "postgresql"); None: the file store
    shared: SharedStorage | None = None
    # the state beside the records (None: files under data_dir)
    stores: Stores = None  # type: ignore[assignment]  # set in __post_init__

    def __post_init__(self) -> None:
        if self.stores is None:
            self.stores = file_stores(self.data_dir)
        self.tokens = TokenSources(self.data_dir, self.stores.token_cache)

    def store_dir(self, name: str) -> Path:
        return config.store_dir(self.data_dir, name)

    def queue_dir(self, name: str) -> Path:
        return config.queue_dir(self.data_dir, name)
