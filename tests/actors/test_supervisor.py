"""The Supervisor base (actors/supervision.py) on toy children: one_for_one restarts the dead
child only, rest_for_one the children after it too; a death reported under an old generation
is ignored; a temporary child is not restarted; past the restart intensity the hook decides."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any, cast

import pykka
import pytest

from tests import spoolkit
from vmrsched.actors.messages import ChildFailed
from vmrsched.actors.supervision import (
    Backoff,
    ChildSpec,
    Restart,
    RestartPolicy,
    Strategy,
    Supervisor,
)
from vmrsched.actors.timer import Scheduler


class Toy(pykka.ThreadingActor):
    """A child that dies when told "die" and reports it, as SupervisedChild does."""

    use_daemon_thread = True

    def __init__(self, supervisor: pykka.ActorRef[Any], generation: int, child_id: str) -> None:
        super().__init__()
        self.supervisor = supervisor
        self.generation = generation
        self.child_id = child_id

    def on_receive(self, message: Any) -> Any:
        if message == "die":
            raise RuntimeError(f"{self.child_id} told to die")
        return None

    def on_failure(self, *exc_info: Any) -> None:
        self.supervisor.tell(ChildFailed(self.child_id, self.generation, repr(exc_info[1])))


def toy(child_id: str, restart: Restart = "permanent") -> ChildSpec:
    def start(supervisor: pykka.ActorRef[Any], generation: int) -> pykka.ActorRef[Any]:
        return Toy.start(supervisor, generation, child_id)

    return ChildSpec(child_id, start, restart, shutdown=5.0)


class ToySupervisor(Supervisor):
    use_daemon_thread = True

    def __init__(self, scheduler: Scheduler, policy: RestartPolicy, strategy: Strategy) -> None:
        super().__init__(scheduler, policy)
        self.strategy = strategy
        self.exceeded: list[str] = []

    def on_start(self) -> None:
        for spec in (toy("a"), toy("b"), toy("c"), toy("once", "temporary")):
            self.add_child(spec)

    def on_stop(self) -> None:
        self.terminate_all()

    def intensity_exceeded(self, child_id: str, error: str) -> None:
        self.exceeded.append(child_id)
        super().intensity_exceeded(child_id, error)

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, ChildFailed):
            self.child_died(message.role, message.generation, message.error)
            return None
        if message == "state":
            return dict(self.generations), sorted(self.children), list(self.exceeded)
        if message == "refs":
            return dict(self.children)
        return super().on_receive(message)


POLICY = RestartPolicy(
    max_restarts=2, within_seconds=60, restart_delay=0.01, integration=Backoff(0.05, 1.0)
)


@pytest.fixture
def scheduler() -> Iterator[Scheduler]:
    timer = Scheduler()
    yield timer
    timer.stop()


def start(scheduler: Scheduler, strategy: Strategy) -> pykka.ActorRef[ToySupervisor]:
    return ToySupervisor.start(scheduler, POLICY, strategy)


def state(ref: pykka.ActorRef[ToySupervisor]) -> tuple[dict[str, int], list[str], list[str]]:
    return cast(tuple[dict[str, int], list[str], list[str]], ref.ask("state", timeout=5))


def refs(ref: pykka.ActorRef[ToySupervisor]) -> dict[str, pykka.ActorRef[Any]]:
    return cast(dict[str, pykka.ActorRef[Any]], ref.ask("refs", timeout=5))


def kill(ref: pykka.ActorRef[ToySupervisor], child_id: str) -> None:
    refs(ref)[child_id].tell("die")


def running(ref: pykka.ActorRef[ToySupervisor], child_id: str, generation: int) -> bool:
    generations, children, _ = state(ref)
    return generations[child_id] == generation and child_id in children


ALL = ["a", "b", "c", "once"]


def test_one_for_one_restarts_the_dead_child_only(scheduler: Scheduler) -> None:
    sup = start(scheduler, "one_for_one")
    try:
        kill(sup, "b")
        spoolkit.wait_for(lambda: state(sup)[0]["b"] == 2 and state(sup)[1] == ALL)
        assert state(sup)[0] == {"a": 1, "b": 2, "c": 1, "once": 1}
    finally:
        sup.stop()


def test_rest_for_one_restarts_the_children_after_it_too(scheduler: Scheduler) -> None:
    sup = start(scheduler, "rest_for_one")
    try:
        old_c, old_once = refs(sup)["c"], refs(sup)["once"]
        kill(sup, "b")
        spoolkit.wait_for(lambda: running(sup, "c", 2))
        # the temporary child after it is stopped with the rest and not restarted (as in OTP)
        assert state(sup)[:2] == ({"a": 1, "b": 2, "c": 2, "once": 1}, ["a", "b", "c"])
        assert not old_c.is_alive() and not old_once.is_alive()
    finally:
        sup.stop()


def test_a_death_under_an_old_generation_is_ignored(scheduler: Scheduler) -> None:
    sup = start(scheduler, "one_for_one")
    try:
        kill(sup, "a")
        spoolkit.wait_for(lambda: state(sup)[0]["a"] == 2 and "a" in state(sup)[1])
        sup.tell(ChildFailed("a", 1, "a late report of the first a"))
        sup.tell(ChildFailed("c", 7, "no such generation"))
        sup.tell(ChildFailed("nobody", 1, "no such child"))
        assert state(sup) == ({"a": 2, "b": 1, "c": 1, "once": 1}, ALL, [])
        assert all(ref.is_alive() for ref in refs(sup).values())
    finally:
        sup.stop()


def test_a_temporary_child_is_not_restarted(scheduler: Scheduler) -> None:
    sup = start(scheduler, "one_for_one")
    try:
        kill(sup, "once")
        spoolkit.wait_for(lambda: "once" not in state(sup)[1])
        kill(sup, "a")  # a later restart does not bring it back either
        spoolkit.wait_for(lambda: state(sup)[0]["a"] == 2 and "a" in state(sup)[1])
        assert state(sup)[1] == ["a", "b", "c"]
    finally:
        sup.stop()


def test_past_the_intensity_the_hook_decides(scheduler: Scheduler) -> None:
    sup = start(scheduler, "one_for_one")
    try:
        for generation in (1, 2, 3):  # the third restart in the window is one too many
            spoolkit.wait_for(functools.partial(running, sup, "a", generation))
            kill(sup, "a")
        # the default: restarted all the same, after the backoff
        spoolkit.wait_for(lambda: running(sup, "a", 4))
        assert state(sup)[2] == ["a"]
    finally:
        sup.stop()


def test_terminate_all_leaves_no_child_running(scheduler: Scheduler) -> None:
    sup = start(scheduler, "one_for_one")
    children = list(refs(sup).values())
    sup.stop()
    assert children and not any(ref.is_alive() for ref in children)
