"""Supervision as in Erlang/OTP, for pykka (which has none).

A `Supervisor` starts its children from `ChildSpec`s (OTP's child specifications: an id, a
start function, a restart type and a shutdown timeout), restarts them by a strategy
(`one_for_one` or `rest_for_one`) within a restart intensity (more than `max_restarts` in
`within_seconds`), after a short delay, never in its own turn (the restart is a message told
to itself by the one timer thread, so a crash loop cannot starve the supervisor's inbox).
Every start of a child gets a new generation: a death reported by a child already replaced or
stopped names an old generation and is ignored.

The two supervisors of the service are subclasses holding only their specifics: the
ServiceSupervisor (actors/service.py: one child per integration, an intensity per child, past
it a restart after a backoff) and the IntegrationSupervisor (actors/integration.py: the
integration's actors, one intensity for them all, past it the integration is failed and
retried with a backoff). pykka knows nothing of any of this: a child reports its own death
(actors/child.py, or the IntegrationSupervisor's on_failure) and the supervisor acts on it."""

from __future__ import annotations

import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import pykka

from vmrsched.actors.inbox import Actor
from vmrsched.actors.messages import Crash, RestartChild
from vmrsched.actors.timer import Scheduler

log = logging.getLogger("vmrsched.supervisor")


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff, the one formula every retry in the service uses: the delay after
    the n-th consecutive failure doubles from `initial` up to `maximum`."""

    initial: float
    maximum: float

    def delay(self, failures: int) -> float:
        return min(self.maximum, self.initial * 2.0 ** min(max(failures - 1, 0), 32))


@dataclass(frozen=True)
class RestartPolicy:
    """Every timing of supervision and retries, in one injectable place (tests shorten it)."""

    max_restarts: int = 5  # more than this many restarts ...
    within_seconds: float = 60.0  # ... within this window marks the integration failed
    restart_delay: float = 0.1  # under the 1 s the design allows
    integration: Backoff = Backoff(5.0, 300.0)  # a failed integration's retries
    mailbox_max: float = 60.0  # a mailbox outage (polling and sending): the longest wait
    message: Backoff = Backoff(1.0, 60.0)  # one message the mailbox refused for now


class RestartIntensity:
    """Counts restarts in a sliding window."""

    def __init__(self, policy: RestartPolicy, clock: Callable[[], float] = time.monotonic) -> None:
        self.policy = policy
        self.clock = clock
        self._times: deque[float] = deque()
        self.failures = 0  # consecutive failed periods, for the backoff

    def record(self) -> bool:
        """Note one restart; True when the intensity is exceeded."""
        now = self.clock()
        self._times.append(now)
        while self._times and self._times[0] < now - self.policy.within_seconds:
            self._times.popleft()
        return len(self._times) > self.policy.max_restarts

    def reset_window(self) -> None:
        self._times.clear()

    def next_backoff(self) -> float:
        self.failures += 1
        return self.policy.integration.delay(self.failures)


# OTP's restart types. A child's normal stop (ActorRef.stop) is never reported to its
# supervisor, so every death a supervisor hears of is abnormal: "transient" restarts as
# "permanent" does; "temporary" is never restarted (its spec is forgotten), nor when stopped
# because a sibling died (rest_for_one).
Restart = Literal["permanent", "transient", "temporary"]
# one_for_one: only the dead child is restarted. rest_for_one: the children started after it
# (in spec order) are stopped too and everything from it on is restarted, in order: for
# children that hold on to an earlier sibling and would be left with a dead one.
Strategy = Literal["one_for_one", "rest_for_one"]

# Starts a child: (its supervisor, its generation) -> the running actor. The child reports its
# death to the supervisor with that generation.
StartFunction = Callable[[pykka.ActorRef[Any], int], pykka.ActorRef[Any]]


@dataclass(frozen=True, slots=True)
class ChildSpec:
    """How to start one child and what to do when it dies (OTP's child specification)."""

    id: str
    start: StartFunction
    restart: Restart = "permanent"
    shutdown: float = 30.0  # seconds its stop may take before the supervisor goes on without it


class Supervisor(Actor):
    """The base of both supervisors. Everything here runs in the supervisor's own thread.

    Subclasses pass their death messages to `child_died` and everything else they do not
    handle to `super().on_receive`, and may override the hooks: `child_started` and
    `child_stopped` (where a child's ref is published), `child_exited` (counting a death),
    `may_restart` (whether deaths and restarts count at all now), `intensity_exceeded` (the
    default restarts after a backoff) and `restart_failed` (the default lets the supervisor
    crash)."""

    strategy: Strategy = "one_for_one"
    # one restart intensity for all children (OTP), or one per child: a child that keeps dying
    # then never holds up the restarts of the others
    intensity_per_child = False
    label = "supervisor"  # for logs and crashes

    def __init__(self, scheduler: Scheduler, policy: RestartPolicy) -> None:
        super().__init__()
        self.scheduler = scheduler
        self.policy = policy
        self.specs: dict[str, ChildSpec] = {}  # in start order
        self.children: dict[str, pykka.ActorRef[Any]] = {}  # the running ones
        self.generations: dict[str, int] = {}  # kept after a child is deleted: no reuse
        self.intensity = RestartIntensity(policy)
        self._intensities: dict[str, RestartIntensity] = {}

    # --- OTP's supervisor API ------------------------------------------------------------------

    def add_child(self, spec: ChildSpec, start: bool = True) -> None:
        """Supervise a new child (after the others), and start it (OTP's start_child)."""
        self.specs[spec.id] = spec
        if start:
            self.start_child(spec.id)

    def start_child(self, child_id: str) -> pykka.ActorRef[Any]:
        """Start a child of a known spec in a new generation."""
        generation = self.generations.get(child_id, 0) + 1
        self.generations[child_id] = generation
        ref = self.specs[child_id].start(self.actor_ref, generation)
        self.children[child_id] = ref
        self.child_started(child_id, ref)
        return ref

    def terminate_child(self, child_id: str) -> None:
        """Stop a child, waiting at most its shutdown timeout; its spec stays (OTP's
        terminate_child). A child that is not running is left as it is."""
        ref = self.children.pop(child_id, None)
        self.child_stopped(child_id)
        if ref is not None:
            with contextlib.suppress(pykka.ActorDeadError, pykka.Timeout):
                ref.stop(block=True, timeout=self.specs[child_id].shutdown)

    def delete_child(self, child_id: str) -> None:
        """Stop a child and forget its spec; its generations go on should it come back."""
        if child_id in self.specs:
            self.terminate_child(child_id)
            del self.specs[child_id]

    def start_all(self) -> None:
        """Start every child not running, in spec order."""
        for child_id in self.specs:
            if child_id not in self.children:
                self.start_child(child_id)

    def terminate_all(self) -> None:
        """Stop every child, in reverse spec order (the later may depend on the earlier)."""
        for child_id in reversed(self.specs):
            self.terminate_child(child_id)

    # --- hooks ----------------------------------------------------------------------------------

    def child_started(self, child_id: str, ref: pykka.ActorRef[Any]) -> None:
        """A child was started (publish its ref)."""

    def child_stopped(self, child_id: str) -> None:
        """A child was stopped or is dead (unpublish its ref)."""

    def child_exited(self, child_id: str, error: str) -> None:
        """A death was accepted, before the restart decision (count it)."""

    def may_restart(self) -> bool:
        """Whether deaths and restarts count now (not while the supervisor is winding down)."""
        return True

    def intensity_exceeded(self, child_id: str, error: str) -> None:
        """Past the restart intensity. Default: restart it after the next backoff."""
        self.restart_later(child_id, self.intensity_of(child_id).next_backoff(), error)

    def restart_failed(self, child_id: str, error: Exception) -> None:
        """Starting a child again raised. Default: the supervisor crashes (its own supervisor
        takes over)."""
        raise error

    def describe(self, child_id: str) -> str:
        """A child as logs name it."""
        return child_id

    # --- deaths and restarts ----------------------------------------------------------------------

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, Crash):
            raise RuntimeError(f"{self.label} told to crash")
        if isinstance(message, RestartChild):
            self._restart(message.child)
        return None

    def intensity_of(self, child_id: str) -> RestartIntensity:
        if not self.intensity_per_child:
            return self.intensity
        found = self._intensities.get(child_id)
        if found is None:
            found = self._intensities[child_id] = RestartIntensity(self.policy)
        return found

    def child_died(self, child_id: str, generation: int, error: str) -> None:
        """A child reported its death. Ignored when it names an old generation, a child that
        is not running (stopped meanwhile, or reported twice) or when `may_restart` says no;
        otherwise the child (and, rest_for_one, the ones after it) is restarted after the
        restart delay, or `intensity_exceeded` decides."""
        if (
            generation != self.generations.get(child_id)
            or child_id not in self.children
            or not self.may_restart()
        ):
            return
        del self.children[child_id]
        self.child_stopped(child_id)
        self.child_exited(child_id, error)
        if self.specs[child_id].restart == "temporary":
            del self.specs[child_id]
            return
        if self.strategy == "rest_for_one":
            for later in reversed(self._from(child_id)[1:]):
                if self.specs[later].restart == "temporary":
                    self.delete_child(later)  # as in OTP: stopped with the rest, not restarted
                else:
                    self.terminate_child(later)
        if self.intensity_of(child_id).record():
            self.intensity_exceeded(child_id, error)
        else:
            self.restart_later(child_id, self.policy.restart_delay, error)

    def restart_later(self, child_id: str, delay: float, error: str) -> None:
        log.warning("restarting %s in %.1fs after: %s", self.describe(child_id), delay, error)
        ref = self.actor_ref
        self.scheduler.call_later(delay, lambda: ref.tell(RestartChild(child_id)))

    def _restart(self, child_id: str) -> None:
        """Start the child (rest_for_one: and those after it) unless running again already, or
        replaced or removed meanwhile."""
        if child_id not in self.specs or not self.may_restart():
            return
        ids = self._from(child_id) if self.strategy == "rest_for_one" else [child_id]
        for one in ids:
            if one not in self.children:
                try:
                    self.start_child(one)
                except Exception as exc:
                    self.restart_failed(one, exc)
                    return

    def _from(self, child_id: str) -> list[str]:
        """The child and every child after it, in spec order."""
        ids = list(self.specs)
        return ids[ids.index(child_id) :]
