"""Base of supervised children: report every death to the supervisor (pykka has no supervision;
an exception in a tell handler stops the actor and calls on_failure; on_start failures skip
on_failure, so they are caught here too)."""

from __future__ import annotations

import contextlib
import logging
from types import TracebackType
from typing import Any

import pykka

from vmrsched.actors.context import Context
from vmrsched.actors.inbox import Actor
from vmrsched.actors.messages import ChildFailed, ChildReady, error_text
from vmrsched.config import IntegrationConfig

log = logging.getLogger("vmrsched.actors")


class SupervisedChild(Actor):
    role = "child"
    use_daemon_thread = True

    def __init__(
        self,
        integ: IntegrationConfig,
        ctx: Context,
        supervisor: pykka.ActorRef[Any],
        generation: int,
    ) -> None:
        super().__init__()
        self.integ = integ
        self.ctx = ctx
        self.supervisor = supervisor
        self.generation = generation

    def on_start(self) -> None:
        try:
            self.setup()
        except Exception as exc:
            log.exception("%s of %s failed to start", self.role, self.integ.name)
            self._report(exc)
            raise
        with contextlib.suppress(pykka.ActorDeadError):
            self.supervisor.tell(ChildReady(self.role, self.generation))

    def setup(self) -> None:
        """Start-up work; override."""

    def on_failure(
        self,
        exception_type: type[BaseException] | None,
        exception_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        log.error("%s of %s crashed: %r", self.role, self.integ.name, exception_value)
        try:
            self.teardown()
        finally:
            self._report(exception_value)

    def on_stop(self) -> None:
        self.teardown()

    def teardown(self) -> None:
        """Release resources; called on stop and after a crash. Override."""

    def _report(self, error: BaseException | None) -> None:
        with contextlib.suppress(pykka.ActorDeadError):
            self.supervisor.tell(ChildFailed(self.role, self.generation, error_text(error)))
