"""IntegrationSupervisor: starts one integration's children and restarts them one_for_one (a
Supervisor, supervision.py). More than `max_restarts` restarts within `within_seconds` marks
the integration failed, raises the `integration_failed` alarm and retries the whole
integration with exponential backoff; the other integrations never notice.

one_for_one, not rest_for_one, although the poller hands work to the allocator and the
notifier: it looks both up in the registry for every batch, so a restarted sibling is simply
the one it finds next time, and a notifier crash need not cost a poll in progress."""

from __future__ import annotations

import contextlib
import functools
import logging
from dataclasses import dataclass
from typing import Any

import pykka

from vmrsched.actors.allocator import AliasAllocator
from vmrsched.actors.child import SupervisedChild
from vmrsched.actors.context import Context
from vmrsched.actors.messages import (
    ChildFailed,
    ChildReady,
    IntegrationFailed,
    RetryIntegration,
    error_text,
)
from vmrsched.actors.notifier import Notifier
from vmrsched.actors.poller import MailboxPoller
from vmrsched.actors.provisioner import Provisioner
from vmrsched.actors.supervision import ChildSpec, Supervisor
from vmrsched.config import IntegrationConfig
from vmrsched.mailbox.base import Mailbox
from vmrsched.telemetry import INTEGRATION_FAILED

log = logging.getLogger("vmrsched.supervisor")


@dataclass(frozen=True)
class ChildKind:
    """One kind of child an integration runs: its role (the child's id and its name in the
    registry), its actor class and whether it shares the integration's mailbox gateway."""

    role: str
    actor: type[SupervisedChild]
    uses_gateway: bool = False


# in start order; stopped in reverse
CHILDREN = (
    ChildKind("allocator", AliasAllocator),
    ChildKind("notifier", Notifier, uses_gateway=True),
    ChildKind("poller", MailboxPoller, uses_gateway=True),
)
PROVISIONER = ChildKind("provisioner", Provisioner)


def child_kinds(integ: IntegrationConfig) -> tuple[ChildKind, ...]:
    """An integration's children: the provisioner where the service creates conferences, or
    reads Pexip's own services' names and aliases (the management API configured in policy
    mode) so that it hands out none of them."""
    px = integ.pexip
    if px.mode == "management_api" or (px.management_url and px.management_password is not None):
        return (*CHILDREN, PROVISIONER)
    return CHILDREN


ALARM = INTEGRATION_FAILED
STOP_TIMEOUT = 30.0


class IntegrationSupervisor(Supervisor):
    use_daemon_thread = True
    strategy = "one_for_one"

    def __init__(
        self,
        integ: IntegrationConfig,
        ctx: Context,
        parent: pykka.ActorRef[Any] | None = None,
        generation: int = 0,
    ) -> None:
        super().__init__(ctx.scheduler, ctx.policy)
        self.integ = integ
        self.ctx = ctx
        self.parent = parent  # the ServiceSupervisor, told when this supervisor dies
        self.own_generation = generation
        self.name = integ.name
        self.label = f"integration supervisor of {self.name}"
        for kind in child_kinds(integ):
            start = functools.partial(self._start_kind, kind)
            self.specs[kind.role] = ChildSpec(kind.role, start, "permanent", STOP_TIMEOUT)
        self.gateway: Mailbox | None = None
        self._starting: set[str] = set()  # children whose start-up is not done yet
        self.state = "starting"

    def on_start(self) -> None:
        self.ctx.status.set(self.name, state="starting", restarts=0, error="")
        self._start_all()

    def _start_kind(
        self, kind: ChildKind, supervisor: pykka.ActorRef[Any], generation: int
    ) -> pykka.ActorRef[Any]:
        extra = {"gateway": self.gateway} if kind.uses_gateway else {}
        return kind.actor.start(self.integ, self.ctx, supervisor, generation, **extra)

    def _start_all(self) -> None:
        try:
            if self.gateway is None:
                self.gateway = self.ctx.gateway_factory(self.integ, self.ctx)
                self.ctx.mailboxes[self.name] = self.gateway
            self._set_state("starting")
            self._starting = set(self.specs)
            self.start_all()
        except Exception as exc:
            log.exception("integration %s could not start", self.name)
            self._enter_failed(error_text(exc))
            return
        # running (and ready) once every child has finished its start-up (ChildReady)

    # --- the Supervisor's hooks -----------------------------------------------------------------

    def child_started(self, child_id: str, ref: pykka.ActorRef[Any]) -> None:
        self.ctx.registry.set(self.name, child_id, ref)

    def child_stopped(self, child_id: str) -> None:
        self.ctx.registry.set(self.name, child_id, None)

    def child_exited(self, child_id: str, error: str) -> None:
        self.ctx.metrics.actor_restarts.labels(self.name, child_id).inc()
        restarts = int(self.ctx.status.snapshot().get(self.name, {}).get("restarts", 0)) + 1
        self.ctx.status.set(self.name, restarts=restarts)

    def may_restart(self) -> bool:
        return self.state in ("running", "starting")

    def intensity_exceeded(self, child_id: str, error: str) -> None:
        self._enter_failed(f"{child_id} restarted too often: {error}")

    def restart_failed(self, child_id: str, error: Exception) -> None:
        self._enter_failed(error_text(error))

    def describe(self, child_id: str) -> str:
        return f"{child_id} of {self.name}"

    # --- states ---------------------------------------------------------------------------------

    def _set_state(self, state: str, error: str = "") -> None:
        self.state = state
        self.ctx.status.set(self.name, state=state, error=error)
        self.ctx.metrics.integration_up.labels(self.name).set(1 if state == "running" else 0)
        if state == "running":
            self.ctx.alarms.clear(self.name, ALARM)

    def _enter_failed(self, error: str) -> None:
        self.terminate_all()
        delay = self.intensity.next_backoff()
        self._set_state("failed", error)
        self.ctx.alarms.raise_(self.name, ALARM, error)
        log.error("integration %s failed (%s); retrying in %.0fs", self.name, error, delay)
        self.ctx.scheduler.call_later(delay, self._tell_retry)

    def _tell_retry(self) -> None:
        self.actor_ref.tell(RetryIntegration())

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, ChildReady):
            if message.generation == self.generations.get(message.role) and self._starting:
                self._starting.discard(message.role)
                if not self._starting and self.state == "starting":
                    self._set_state("running")
        elif isinstance(message, ChildFailed):
            self.child_died(message.role, message.generation, message.error)
        elif isinstance(message, RetryIntegration):
            if self.state == "failed":
                self.intensity.reset_window()
                self._start_all()
        else:
            return super().on_receive(message)  # Crash, RestartChild
        return None

    def on_stop(self) -> None:
        self._shut_down()

    def on_failure(self, *exc_info: Any) -> None:
        """A supervisor that dies takes its children with it (a closed tree), says so on the
        status board and tells its own supervisor, which restarts it."""
        error = error_text(exc_info[1]) if len(exc_info) > 1 else "crashed"
        log.error("integration supervisor of %s crashed: %s", self.name, error)
        try:
            self._shut_down()
            self._set_state("failed", f"supervisor crashed: {error}")
        finally:
            if self.parent is not None:
                with contextlib.suppress(pykka.ActorDeadError):
                    self.parent.tell(IntegrationFailed(self.name, self.own_generation, error))

    def _shut_down(self) -> None:
        try:
            self.terminate_all()
        finally:
            if self.gateway is not None:
                gateway, self.gateway = self.gateway, None
                if self.ctx.mailboxes.get(self.name) is gateway:
                    del self.ctx.mailboxes[self.name]
                gateway.close()
            self.ctx.registry.drop(self.name)
            self.ctx.metrics.integration_up.labels(self.name).set(0)
