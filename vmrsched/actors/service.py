"""ServiceSupervisor: one per process, a Supervisor (supervision.py) whose children are the
IntegrationSupervisors, one per configured integration. It applies config reloads: changed
integrations restart, added ones start, removed ones stop, the rest never notice."""

from __future__ import annotations

import logging
from typing import Any

import pykka

from vmrsched.actors import futex
from vmrsched.actors.context import Context
from vmrsched.actors.integration import IntegrationSupervisor, child_kinds
from vmrsched.actors.messages import IntegrationFailed, Reload, Request, error_text
from vmrsched.actors.messages import ReloadResult as ReloadResult  # where the service finds it
from vmrsched.actors.ownership import Gained, Lost
from vmrsched.actors.supervision import ChildSpec, Supervisor
from vmrsched.config import Config, IntegrationConfig
from vmrsched.store.files import SPOOL_CALENDAR, kept_aside
from vmrsched.telemetry import (
    SUPERVISOR_FAILED,
)

log = logging.getLogger("vmrsched.service")
OTHER_THREADS = 64  # beside the actors: the event loop, the timer, worker pools
STOP_TIMEOUT = 60.0  # an integration's stop: its children's, one after the other


def threads_for(config: Config) -> int:
    """The threads the service runs with this config: each integration's supervisor and
    children, and the rest."""
    return OTHER_THREADS + sum(1 + len(child_kinds(integ)) for integ in config.integrations)


KEPT_ASIDE_DELAY = 2.0  # seconds after the start when the damaged files kept aside are named


class ServiceSupervisor(Supervisor):
    """The root: one child per integration (an IntegrationSupervisor), each with a restart
    intensity of its own so that one integration dying over and over never delays another's
    restart; past it, the integration starts again after a backoff. Nothing supervises the
    root: when it dies, it stops everything (on_failure)."""

    intensity_per_child = True
    label = "service supervisor"

    def __init__(self, config: Config, ctx: Context) -> None:
        super().__init__(ctx.scheduler, ctx.policy)
        self.config = config
        self.ctx = ctx
        self.configs: dict[str, IntegrationConfig] = {}

    def on_start(self) -> None:
        futex.size_futex_hash(threads_for(self.config))
        # soon, not at once: past the start of the integrations, which it would only slow
        first = min(self.ctx.damage_recheck_interval, KEPT_ASIDE_DELAY)
        self.ctx.scheduler.call_later(first, self._find_kept_aside)
        if self.ctx.shared is not None:
            # instances share the integrations: each starts when this instance gains its
            # lease (Gained, from the Ownership actor), none before
            for integ in self.config.integrations:
                self.ctx.status.set(integ.name, state="elsewhere")
            return
        for integ in self.config.integrations:
            self._start_integration(integ)

    def _gained(self, name: str) -> None:
        integ = next((i for i in self.config.integrations if i.name == name), None)
        if integ is not None and name not in self.configs:
            log.info("integration %s starts here (this instance holds its lease)", name)
            self._start_integration(integ)

    def _lost(self, message: Lost) -> None:
        """Stop at once: another instance owns the integration, or will once this one hands
        the lease over (`then`, after the stop)."""
        if message.name in self.configs:
            log.warning(
                "integration %s stops here: %s",
                message.name,
                "handed over to another instance" if message.release else "its lease is lost",
                extra={"integration": message.name},
            )
            self._stop_integration(message.name)
        # what this instance said about the integration (its store, its failed start, its
        # mailbox) is no longer its to say: the owner reports on it now
        for alarm in self.ctx.alarms.active(message.name):
            self.ctx.alarms.clear(message.name, alarm.name)
        self.ctx.status.set(message.name, state="elsewhere")
        if message.then is not None:
            message.then()

    def _start_integration(self, integ: IntegrationConfig) -> None:
        self.configs[integ.name] = integ

        def start(parent: pykka.ActorRef[Any], generation: int) -> pykka.ActorRef[Any]:
            return IntegrationSupervisor.start(integ, self.ctx, parent, generation)

        self.add_child(ChildSpec(integ.name, start, "permanent", STOP_TIMEOUT))

    def _stop_integration(self, name: str) -> None:
        self.configs.pop(name, None)
        self.delete_child(name)

    # --- the Supervisor's hooks -----------------------------------------------------------------

    def child_started(self, child_id: str, ref: pykka.ActorRef[Any]) -> None:
        self.ctx.supervisors[child_id] = ref

    def child_stopped(self, child_id: str) -> None:
        self.ctx.supervisors.pop(child_id, None)

    def child_exited(self, child_id: str, error: str) -> None:
        self.ctx.metrics.actor_restarts.labels(child_id, "supervisor").inc()

    def describe(self, child_id: str) -> str:
        return f"integration {child_id}"

    # --- reload ---------------------------------------------------------------------------------

    def _find_kept_aside(self) -> None:
        """On the timer's thread, once at start: the damaged files kept aside before it are
        named in state_damaged again (a restart must not hide them before anyone looked);
        then the looks at them that clear the alarm once they are deleted."""
        if not self.actor_ref.is_alive():
            return
        calendars = {
            integ.name: integ.spool_dir(self.ctx.data_dir) / SPOOL_CALENDAR
            for integ in self.config.integrations
            if integ.backend == "spool"
        }
        names = [integ.name for integ in self.config.integrations]
        for owner, path in kept_aside(self.ctx.data_dir, names, calendars):
            self.ctx.alarms.damaged(owner, path, "kept aside before this start: look at it")
        self._recheck_damaged()

    def _recheck_damaged(self) -> None:
        """On the timer's thread (a look at a few paths, under the alarms' own lock): files
        kept aside as damaged that an admin has deleted clear state_damaged. Not again once
        the root has stopped."""
        if not self.actor_ref.is_alive():
            return
        self.ctx.alarms.recheck_damaged()
        self.ctx.scheduler.call_later(self.ctx.damage_recheck_interval, self._recheck_damaged)

    def reload(self, new: Config) -> ReloadResult:
        """Apply a new config: what the result names is what changed in the file against the
        config this instance ran (the same on every instance that reads the same file), and it
        acts only on what runs here. An integration this instance runs restarts when changed
        and stops when removed; one added starts here at once with one instance, and where its
        lease is taken with several. With several, an integration another instance runs is
        only noted: changed, it starts here (should its lease come here) with the new config;
        removed, it is forgotten here."""
        old_by_name = {i.name: i for i in self.config.integrations}
        new_by_name = {i.name: i for i in new.integrations}
        futex.size_futex_hash(threads_for(new))
        self.ctx.alarms.recheck_damaged()  # an admin's reload after deleting one clears it now
        result = ReloadResult()
        for name in sorted(old_by_name.keys() - new_by_name.keys()):
            if name in self.configs:
                self._stop_integration(name)
            self.ctx.status.drop(name)
            self.ctx.metrics.forget_integration(name)
            self.ctx.alarms.forget(name)
            self.ctx.alias_index.drop(name)
            result.removed.append(name)
        shared = self.ctx.shared is not None
        for name, integ in new_by_name.items():
            if name not in old_by_name:
                if shared:  # started where its lease is taken (maybe here, at the next tick)
                    self.ctx.status.set(name, state="elsewhere")
                else:
                    self._start_integration(integ)
                result.added.append(name)
            elif integ != old_by_name[name]:
                if name in self.configs:  # runs here: again, on the new config
                    self._stop_integration(name)
                    self._start_integration(integ)
                result.changed.append(name)
        self.config = new
        return result

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, Gained):
            self._gained(message.name)
        elif isinstance(message, Lost):
            self._lost(message)
        elif isinstance(message, IntegrationFailed):
            self.child_died(message.name, message.generation, message.error)
        elif isinstance(message, Request) and isinstance(message.payload, Reload):
            try:
                result = self.reload(message.payload.config)
            except Exception as exc:
                message.reply(None, exc)
                raise  # the tree may be half changed: the root stops it all (on_failure)
            message.reply(result, None)
        else:
            return super().on_receive(message)  # Crash, RestartChild
        return None

    def on_failure(self, *exc_info: Any) -> None:
        """The root died: stop everything under it (nothing runs unsupervised) and say so;
        readiness then reports every integration stopped."""
        error = error_text(exc_info[1]) if len(exc_info) > 1 else "crashed"
        log.error("service supervisor crashed: %s; stopping every integration", error)
        self.ctx.alarms.raise_("service", SUPERVISOR_FAILED, error)
        for name in list(self.children):
            self._stop_integration(name)
            self.ctx.status.set(name, state="stopped", error=f"service supervisor crashed: {error}")

    def on_stop(self) -> None:
        for name in list(self.children):
            self._stop_integration(name)
