"""ServiceSupervisor: one per process. Starts an IntegrationSupervisor per configured
integration and applies config reloads: changed integrations restart, added ones start, removed
ones stop, the rest never notice."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any

import pykka

from vmrsched.actors.context import Context
from vmrsched.actors.integration import IntegrationSupervisor
from vmrsched.actors.messages import Request
from vmrsched.config import Config, IntegrationConfig

log = logging.getLogger("vmrsched.service")


@dataclass(frozen=True)
class ReloadResult:
    changed: list[str] = field(default_factory=list)
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)


class ServiceSupervisor(pykka.ThreadingActor):
    def __init__(self, config: Config, ctx: Context) -> None:
        super().__init__()
        self.config = config
        self.ctx = ctx
        self.integrations: dict[str, pykka.ActorRef[Any]] = {}
        self.configs: dict[str, IntegrationConfig] = {}

    def on_start(self) -> None:
        for integ in self.config.integrations:
            self._start_integration(integ)

    def _start_integration(self, integ: IntegrationConfig) -> None:
        self.configs[integ.name] = integ
        self.integrations[integ.name] = IntegrationSupervisor.start(integ, self.ctx)

    def _stop_integration(self, name: str) -> None:
        ref = self.integrations.pop(name, None)
        self.configs.pop(name, None)
        if ref is not None:
            with contextlib.suppress(pykka.ActorDeadError, pykka.Timeout):
                ref.stop(block=True, timeout=60)

    def reload(self, new: Config) -> ReloadResult:
        old_names = set(self.configs)
        new_by_name = {i.name: i for i in new.integrations}
        result = ReloadResult()
        for name in sorted(old_names - set(new_by_name)):
            self._stop_integration(name)
            self.ctx.status.drop(name)
            self.ctx.metrics.forget_integration(name)
            result.removed.append(name)
        for name, integ in new_by_name.items():
            if name not in old_names:
                self._start_integration(integ)
                result.added.append(name)
            elif integ != self.configs[name]:
                self._stop_integration(name)
                self._start_integration(integ)
                result.changed.append(name)
        if new.server != self.config.server:
            log.warning("[server] changes take effect after a restart")
        self.config = new
        return result

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, Request) and isinstance(message.payload, Config):
            try:
                result = self.reload(message.payload)
            except Exception as exc:
                message.reply(None, exc)
                raise
            message.reply(result, None)
        return None

    def names(self) -> list[str]:
        return sorted(self.integrations)

    def on_stop(self) -> None:
        for name in list(self.integrations):
            self._stop_integration(name)
