"""IntegrationSupervisor: starts one integration's children and restarts them one_for_one.
More than `max_restarts` restarts within `within_seconds` marks the integration failed, raises
the `integration_failed` alarm and retries the whole integration with exponential backoff."""

from __future__ import annotations

import contextlib
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
    Crash,
    RestartChild,
    RetryIntegration,
)
from vmrsched.actors.notifier import Notifier
from vmrsched.actors.poller import MailboxPoller
from vmrsched.actors.provisioner import Provisioner
from vmrsched.actors.supervision import RestartIntensity
from vmrsched.config import IntegrationConfig
from vmrsched.mailbox.base import Gateway
from vmrsched.telemetry import INTEGRATION_FAILED

log = logging.getLogger("vmrsched.supervisor")


@dataclass(frozen=True)
class ChildSpec:
    """How to start one child (OTP's child specification): its role, its actor class and
    whether it shares the integration's mailbox gateway."""

    role: str
    actor: type[SupervisedChild]
    uses_gateway: bool = False


# in start order; stopped in reverse
CHILDREN = (
    ChildSpec("allocator", AliasAllocator),
    ChildSpec("notifier", Notifier, uses_gateway=True),
    ChildSpec("poller", MailboxPoller, uses_gateway=True),
)
PROVISIONER = ChildSpec("provisioner", Provisioner)


def child_specs(integ: IntegrationConfig) -> tuple[ChildSpec, ...]:
    """An integration's children: the provisioner where the service creates conferences, or
    reads Pexip's own services' names and aliases (the management API configured in policy
    mode) so that it hands out none of them."""
    px = integ.pexip
    if px.mode == "management_api" or (px.management_url and px.management_password is not None):
        return (*CHILDREN, PROVISIONER)
    return CHILDREN


ALARM = INTEGRATION_FAILED
STOP_TIMEOUT = 30.0


class IntegrationSupervisor(pykka.ThreadingActor):
    use_daemon_thread = True

    def __init__(
        self,
        integ: IntegrationConfig,
        ctx: Context,
        parent: pykka.ActorRef[Any] | None = None,
        generation: int = 0,
    ) -> None:
        super().__init__()
        self.integ = integ
        self.ctx = ctx
        self.parent = parent  # the ServiceSupervisor, told when this supervisor dies
        self.own_generation = generation
        self.name = integ.name
        self.children: dict[str, pykka.ActorRef[Any]] = {}
        self.specs = {spec.role: spec for spec in child_specs(integ)}  # in start order
        self.generation: dict[str, int] = dict.fromkeys(self.specs, 0)
        self.intensity = RestartIntensity(ctx.policy)
        self.gateway: Gateway | None = None
        self._starting: set[str] = set()  # children whose start-up is not done yet
        self.state = "starting"

    def on_start(self) -> None:
        self.ctx.status.set(self.name, state="starting", restarts=0, error="")
        self._start_all()

    def _start_all(self) -> None:
        try:
            if self.gateway is None:
                self.gateway = self.ctx.gateway_factory(self.integ, self.ctx)
                self.ctx.mailboxes[self.name] = self.gateway
            self._set_state("starting")
            self._starting = set(self.specs)
            for role in self.specs:
                self._start_child(role)
        except Exception as exc:
            log.exception("integration %s could not start", self.name)
            self._enter_failed(repr(exc))
            return
        # running (and ready) once every child has finished its start-up (ChildReady)

    def _start_child(self, role: str) -> None:
        self.generation[role] += 1
        args = (self.integ, self.ctx, self.actor_ref, self.generation[role])
        spec = self.specs[role]
        extra = {"gateway": self.gateway} if spec.uses_gateway else {}
        ref: pykka.ActorRef[Any] = spec.actor.start(*args, **extra)
        self.children[role] = ref
        self.ctx.registry.set(self.name, role, ref)

    def _stop_children(self) -> None:
        for role in reversed(self.specs):
            ref = self.children.pop(role, None)
            self.ctx.registry.set(self.name, role, None)
            if ref is not None:
                with contextlib.suppress(pykka.ActorDeadError, pykka.Timeout):
                    ref.stop(block=True, timeout=STOP_TIMEOUT)

    def _set_state(self, state: str, error: str = "") -> None:
        self.state = state
        self.ctx.status.set(self.name, state=state, error=error)
        self.ctx.metrics.integration_up.labels(self.name).set(1 if state == "running" else 0)
        if state == "running":
            self.ctx.alarms.clear(self.name, ALARM)

    def _enter_failed(self, error: str) -> None:
        self._stop_children()
        delay = self.intensity.next_backoff()
        self._set_state("failed", error)
        self.ctx.alarms.raise_(self.name, ALARM, error)
        log.error("integration %s failed (%s); retrying in %.0fs", self.name, error, delay)
        self.ctx.scheduler.call_later(delay, self._tell_retry)

    def _tell_retry(self) -> None:
        self.actor_ref.tell(RetryIntegration())

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, Crash):
            raise RuntimeError(f"integration supervisor of {self.name} told to crash")
        if isinstance(message, ChildReady):
            if message.generation == self.generation.get(message.role) and self._starting:
                self._starting.discard(message.role)
                if not self._starting and self.state == "starting":
                    self._set_state("running")
        elif isinstance(message, ChildFailed):
            self._child_failed(message)
        elif isinstance(message, RestartChild):
            if self.state in ("running", "starting") and message.role not in self.children:
                try:
                    self._start_child(message.role)
                except Exception as exc:
                    self._enter_failed(repr(exc))
        elif isinstance(message, RetryIntegration) and self.state == "failed":
            self.intensity.reset_window()
            self._start_all()
        return None

    def _child_failed(self, message: ChildFailed) -> None:
        if message.generation != self.generation.get(message.role) or self.state not in (
            "running",
            "starting",
        ):
            return  # a report from a child already replaced or stopped
        self.children.pop(message.role, None)
        self.ctx.registry.set(self.name, message.role, None)
        self.ctx.metrics.actor_restarts.labels(self.name, message.role).inc()
        restarts = int(self.ctx.status.snapshot().get(self.name, {}).get("restarts", 0)) + 1
        self.ctx.status.set(self.name, restarts=restarts)
        if self.intensity.record():
            self._enter_failed(f"{message.role} restarted too often: {message.error}")
            return
        log.warning("restarting %s of %s after: %s", message.role, self.name, message.error)
        self.ctx.scheduler.call_later(
            self.ctx.policy.restart_delay,
            lambda: self.actor_ref.tell(RestartChild(message.role)),
        )

    def on_stop(self) -> None:
        self._shut_down()

    def on_failure(self, *exc_info: Any) -> None:
        """A supervisor that dies takes its children with it (a closed tree), says so on the
        status board and tells its own supervisor, which restarts it."""
        error = repr(exc_info[1]) if len(exc_info) > 1 else "crashed"
        log.error("integration supervisor of %s crashed: %s", self.name, error)
        try:
            self._shut_down()
            self._set_state("failed", f"supervisor crashed: {error}")
        finally:
            if self.parent is not None:
                with contextlib.suppress(pykka.ActorDeadError):
                    self.parent.tell(ChildFailed(self.name, self.own_generation, error))

    def _shut_down(self) -> None:
        try:
            self._stop_children()
        finally:
            if self.gateway is not None:
                gateway, self.gateway = self.gateway, None
                if self.ctx.mailboxes.get(self.name) is gateway:
                    del self.ctx.mailboxes[self.name]
                gateway.close()
            self.ctx.registry.drop(self.name)
            self.ctx.metrics.integration_up.labels(self.name).set(0)
