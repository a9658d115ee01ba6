"""Every actor here runs on a C inbox (actors/inbox.py), with pykka's semantics unchanged:
messages are handled one at a time in the order sent, asks are answered, and a stop is handled
in its turn, dropping what arrived after it and failing those asks."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import queue
import threading
from typing import Any

import pykka
import pytest

import vmrsched.actors
from vmrsched.actors.inbox import Actor


class Recorder(Actor):
    def __init__(self, gate: threading.Event | None = None) -> None:
        super().__init__()
        self.seen: list[Any] = []
        self.gate = gate

    def on_receive(self, message: Any) -> Any:
        if message == "wait" and self.gate is not None:
            self.gate.wait(5)
        self.seen.append(message)
        return list(self.seen)


def test_the_inbox_is_the_c_queue() -> None:
    ref = Recorder.start()
    try:
        assert type(ref.actor_inbox) is queue.SimpleQueue
    finally:
        ref.stop()


def test_tells_are_handled_in_order_and_asks_answered() -> None:
    ref = Recorder.start()
    try:
        for i in range(1000):
            ref.tell(i)
        assert ref.ask("last", timeout=5) == [*range(1000), "last"]
    finally:
        ref.stop()


def test_a_stop_drops_what_arrived_after_it_and_fails_its_asks() -> None:
    gate = threading.Event()
    ref = Recorder.start(gate)
    first = ref.ask("wait", block=False)
    before = ref.ask("before", block=False)
    stopped = ref.stop(block=False)
    after = ref.ask("after", block=False)
    gate.set()
    stopped.get(timeout=5)
    assert first.get(timeout=5) == ["wait"]
    assert before.get(timeout=5) == ["wait", "before"]
    with pytest.raises(pykka.ActorDeadError):
        after.get(timeout=5)


def test_every_actor_of_the_service_has_the_c_inbox() -> None:
    """No actor falls back to pykka's queue.Queue inbox: each ThreadingActor of the package
    derives from inbox.Actor."""
    found = []
    for info in pkgutil.iter_modules(vmrsched.actors.__path__):
        module = importlib.import_module(f"vmrsched.actors.{info.name}")
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, pykka.ThreadingActor) and cls.__module__ == module.__name__:
                found.append(cls)
                assert issubclass(cls, Actor), cls
    assert len(found) >= 4
