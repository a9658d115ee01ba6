"""ServiceSupervisor: one per process. Starts an IntegrationSupervisor per configured
integration and applies config reloads: changed integrations restart, added ones start, removed
ones stop, the rest never notice."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any, cast

import pykka
from pykka.typing import ActorMemberMixin, proxy_method

from vmrsched.actors import futex
from vmrsched.actors.context import Context
from vmrsched.actors.integration import IntegrationSupervisor, child_specs
from vmrsched.actors.messages import ChildFailed, Crash, Reload, Request, RestartChild
from vmrsched.actors.supervision import RestartIntensity
from vmrsched.config import Config, IntegrationConfig
from vmrsched.telemetry import SUPERVISOR_FAILED

log = logging.getLogger("vmrsched.service")
OTHER_THREADS = 64  # beside the actors: the event loop, the timer, worker pools


def threads_for(config: Config) -> int:
    """The threads the service runs with this config: each integration's supervisor and
    children, and the rest."""
    return OTHER_THREADS + sum(1 + len(child_specs(integ)) for integ in config.integrations)


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
        self.generations: dict[str, int] = {}
        self.intensity: dict[str, RestartIntensity] = {}

    def on_start(self) -> None:
        futex.size_futex_hash(threads_for(self.config))
        for integ in self.config.integrations:
            self._start_integration(integ)

    def _start_integration(self, integ: IntegrationConfig) -> None:
        self.configs[integ.name] = integ
        generation = self.generations.get(integ.name, 0) + 1
        self.generations[integ.name] = generation
        ref = IntegrationSupervisor.start(integ, self.ctx, self.actor_ref, generation)
        self.integrations[integ.name] = ref
        self.ctx.supervisors[integ.name] = ref

    def _stop_integration(self, name: str) -> None:
        ref = self.integrations.pop(name, None)
        self.ctx.supervisors.pop(name, None)
        self.configs.pop(name, None)
        if ref is not None:
            with contextlib.suppress(pykka.ActorDeadError, pykka.Timeout):
                ref.stop(block=True, timeout=60)

    def reload(self, new: Config) -> ReloadResult:
        old_names = set(self.configs)
        new_by_name = {i.name: i for i in new.integrations}
        futex.size_futex_hash(threads_for(new))
        result = ReloadResult()
        for name in sorted(old_names - set(new_by_name)):
            self._stop_integration(name)
            self.ctx.status.drop(name)
            self.ctx.metrics.forget_integration(name)
            self.ctx.alias_index.drop(name)
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
        if isinstance(message, Crash):
            raise RuntimeError("service supervisor told to crash")
        if isinstance(message, ChildFailed):
            self._integration_failed(message)
            return None
        if isinstance(message, RestartChild):
            integ = self.configs.get(message.role)
            if integ is not None and message.role not in self.integrations:
                self._start_integration(integ)
            return None
        if isinstance(message, Request) and isinstance(message.payload, Reload):
            try:
                result = self.reload(message.payload.config)
            except Exception as exc:
                message.reply(None, exc)
                raise
            message.reply(result, None)
        return None

    def _integration_failed(self, message: ChildFailed) -> None:
        """An integration supervisor died (its children with it): start it again, within the
        same restart intensity as children; past it, after a backoff."""
        name = message.role
        if message.generation != self.generations.get(name) or name not in self.configs:
            return  # an integration replaced or removed meanwhile
        self.integrations.pop(name, None)
        self.ctx.supervisors.pop(name, None)
        self.ctx.metrics.actor_restarts.labels(name, "supervisor").inc()
        intensity = self.intensity.setdefault(name, RestartIntensity(self.ctx.policy))
        delay = intensity.next_backoff() if intensity.record() else self.ctx.policy.restart_delay
        log.warning("restarting integration %s in %.1fs after: %s", name, delay, message.error)
        ref = self.actor_ref
        self.ctx.scheduler.call_later(delay, lambda: ref.tell(RestartChild(name)))

    def on_failure(self, *exc_info: Any) -> None:
        """The root died: stop everything under it (nothing runs unsupervised) and say so;
        readiness then reports every integration stopped."""
        error = repr(exc_info[1]) if len(exc_info) > 1 else "crashed"
        log.error("service supervisor crashed: %s; stopping every integration", error)
        self.ctx.alarms.raise_("service", SUPERVISOR_FAILED, error)
        for name in list(self.integrations):
            self._stop_integration(name)
            self.ctx.status.set(name, state="stopped", error=f"service supervisor crashed: {error}")

    def on_stop(self) -> None:
        for name in list(self.integrations):
            self._stop_integration(name)


class ServiceSupervisorProxy(ActorMemberMixin, pykka.ActorProxy[ServiceSupervisor]):
    """The typed proxy: what may be asked of the actor from another actor's thread."""

    reload = proxy_method(ServiceSupervisor.reload)


def supervisor_proxy(ref: pykka.ActorRef[Any]) -> ServiceSupervisorProxy:
    return cast(ServiceSupervisorProxy, ref.proxy())
