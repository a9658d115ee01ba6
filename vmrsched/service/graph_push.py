"""Microsoft Graph's change notifications for a room's inbox: which integrations take them
(only those echo Graph's validation token), and what a batch of notifications does (the
gateway checks each one's clientState; the poller is told to look now). Nothing here waits:
Graph wants its answer within seconds, and the poller does the reading in its own thread."""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import pykka

from vmrsched.actors.messages import Poll
from vmrsched.actors.registry import ActorUnavailable
from vmrsched.service.runtime import Runtime

log = logging.getLogger("vmrsched.service")


class GraphPush:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def graph_validation(self, name: str) -> bool:
        """Whether `name` is a Graph integration expecting change notifications (only those
        echo Graph's validation token)."""
        integ = self.runtime.config.integration(name)
        return integ is not None and integ.graph_notifications

    def graph_notification(self, name: str, notifications: list[dict[str, Any]]) -> None:
        """Change or lifecycle notifications for a Graph integration: its gateway checks the
        clientState and notes what happened; the poller is told to look now. Never waits."""
        ctx = self.runtime.ctx
        gateway = ctx.mailboxes.get(name)
        counter = ctx.metrics.graph_notifications
        result = gateway.notified(notifications) if gateway is not None else None
        if result is None:  # no such integration, or its mailbox takes no notifications
            counter.labels(name[:64], "unknown").inc(len(notifications))
            return
        accepted, refused = result
        counter.labels(name, "accepted").inc(accepted)
        if refused:
            counter.labels(name, "refused").inc(refused)
            log.warning(
                "ignored %d Graph notifications with a wrong clientState",
                refused,
                extra={"integration": name},
            )
        if accepted:
            with contextlib.suppress(ActorUnavailable, pykka.ActorDeadError):
                ctx.registry.get(name, "poller").tell(Poll())
