"""Which mailbox backend an integration uses, and the OAuth token sources EWS backends share."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vmrsched.config import DataLayout, IntegrationConfig
from vmrsched.mailbox.base import Mailbox
from vmrsched.telemetry import Metrics

if TYPE_CHECKING:
    from vmrsched.mailbox.ews_auth import TokenCacheStore
    from vmrsched.mailbox.graph_notifications import GraphStateStore


def make_gateway(
    integ: IntegrationConfig,
    data_dir: Path,
    metrics: Metrics,
    tokens: TokenSources | None = None,
    exclusive: bool = False,
    graph_states: Callable[[str], GraphStateStore] | None = None,
) -> Mailbox:
    """The mailbox backend an integration is configured with (`exclusive`: the running
    service's own, locked against a second process). The running service builds one per
    integration and its poller and notifier share it from their two threads (see base).
    `graph_states`: where the Graph backend keeps an integration's subscription and delta link,
    by its name (files under data_dir unless given); the other backends keep no such state."""
    if integ.backend == "spool":
        from vmrsched.mailbox.spool import SpoolMailbox

        return SpoolMailbox(integ.spool_dir(data_dir), integ.name, integ.timezone, exclusive)
    if integ.backend == "ews":
        from vmrsched.mailbox.ews import EwsMailbox

        source = (tokens or TokenSources(data_dir)).get(integ)
        reload = getattr(source, "reload", None)
        if exclusive and reload is not None:
            reload()  # starting here: from what the last owner kept, not what was read before
        return EwsMailbox(integ, metrics, source)
    if integ.backend == "graph":
        from vmrsched.mailbox.graph import GraphMailbox

        state = (
            graph_states(integ.name)
            if graph_states is not None
            else DataLayout(data_dir).graph(integ.name)
        )
        return GraphMailbox(integ, metrics, state)
    raise RuntimeError(f"backend {integ.backend!r} is not available in this version")


class TokenSources:
    """One OAuth token source per integration, shared by its EWS gateway (actor threads) and
    the admin sign-in pages (event loop); rebuilt when a reload changes the integration."""

    def __init__(
        self, data_dir: Path, caches: Callable[[str], TokenCacheStore] | None = None
    ) -> None:
        self.data_dir = data_dir
        self.caches = caches  # where delegated caches are kept (files under data_dir: None)
        self._lock = threading.Lock()
        self._sources: dict[str, tuple[IntegrationConfig, Any]] = {}

    def get(self, integ: IntegrationConfig) -> Any:
        from vmrsched.mailbox.ews_auth import token_source

        with self._lock:
            entry = self._sources.get(integ.name)
            if entry is None or entry[0] is not integ:
                direct = integ.advanced.disable_web_proxy
                source = token_source(
                    integ.exchange, self.data_dir, integ.name, direct, self.caches
                )
                entry = (integ, source)
                self._sources[integ.name] = entry
            return entry[1]
