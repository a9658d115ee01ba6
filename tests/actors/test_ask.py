"""The one ask channel (actors/bridge.py): a Request told to the actor, answered through a future,
from the event loop (`ask_async`) or from a thread that may block (`ask`); the notifier answers
the admin's questions about its queue this way; a request the actor cannot answer comes back as
an error and leaves the actor running; an actor that dies before it answers is ActorDeadError
at once, not a wait to the timeout (as a pykka proxy's caller would learn)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pykka
import pytest

from tests import spoolkit
from tests.configs import Running, spool_config
from vmrsched import config, service
from vmrsched.actors.bridge import answer, ask, ask_async
from vmrsched.actors.context import Context
from vmrsched.actors.messages import (
    Ask,
    FindAliases,
    QueueAct,
    QueueContents,
    Request,
    Reserve,
)
from vmrsched.mailbox.base import GatewayError, Outgoing
from vmrsched.mailbox.spool import SpoolMailbox


def child(running: Running, role: str) -> pykka.ActorRef[Any]:
    spoolkit.wait_for(lambda: running.svc.ctx.status.state("alpha") == "running")
    return running.svc.ctx.registry.get("alpha", role)


def test_ask_from_a_thread(running: Running) -> None:
    allocator = child(running, "allocator")
    (record,) = ask(allocator, Reserve(("",)))
    assert not isinstance(record, BaseException)
    found = ask(allocator, FindAliases(record["alias"]))
    assert [r["alias_id"] for r in found] == [record["alias_id"]]


async def test_ask_from_the_event_loop(running: Running) -> None:
    allocator = child(running, "allocator")
    assert await ask_async(allocator, FindAliases("no such alias")) == []


async def test_a_request_the_actor_cannot_answer_is_an_error_not_a_crash(
    running: Running,
) -> None:
    notifier = child(running, "notifier")
    with pytest.raises(ValueError, match="unknown request"):
        await ask_async(notifier, FindAliases())
    assert notifier.is_alive()
    assert await ask_async(notifier, QueueContents()) == ([], [])


class Refusing(SpoolMailbox):
    """The spool, refusing every reply for good (as a mailbox whose organizer is gone)."""

    def send(self, message: Outgoing) -> None:
        raise GatewayError("ErrorItemNotFound", permanent=True, code="ErrorItemNotFound")


def refusing(integ: config.IntegrationConfig, ctx: Context) -> Any:
    return Refusing(integ.spool_dir(ctx.data_dir), integ.name, integ.timezone)


async def test_the_notifier_answers_the_admins_queue_questions(tmp_path: Path) -> None:
    cfg = spool_config(tmp_path)
    svc = service.start(cfg, gateway_factory=refusing)
    try:
        running = Running(svc, cfg)
        spoolkit.wait_for(lambda: svc.ctx.status.state("alpha") == "running")
        data, _ = spoolkit.request(body="<p>no token</p>")
        spoolkit.drop(running.inbox, data)
        notifier = svc.ctx.registry.get("alpha", "notifier")

        async def failed_ids() -> list[str]:
            _, failed = await ask_async(notifier, QueueContents())
            return [f.message.id for f in failed]

        for _ in range(300):
            if await failed_ids():
                break
            await asyncio.sleep(0.05)
        (message_id,) = await failed_ids()
        done, failed = await ask_async(notifier, QueueAct("discard", "no such message"))
        assert not done and [f.message.id for f in failed] == [message_id]
        done, failed = await ask_async(notifier, QueueAct("discard", message_id))
        assert done and failed == []
        assert await ask_async(notifier, QueueContents()) == ([], [])
    finally:
        svc.stop()


# --- asking from a thread that may block: a small actor of its own --------------------------


@dataclass(frozen=True)
class Double(Ask[int]):
    n: int


@dataclass(frozen=True)
class Block(Ask[None]):
    """Holds the actor until `release` is set; then, with `crash`, the actor dies (a told
    message that raises), dropping what waits in its inbox."""

    release: threading.Event
    crash: bool = False


class Worker(pykka.ThreadingActor):
    def on_receive(self, message: Any) -> None:
        assert isinstance(message, Request)
        ask_ = message.payload
        if isinstance(ask_, Double):
            answer(message, lambda: 2 * ask_.n if ask_.n >= 0 else _refuse(ask_.n))
        elif isinstance(ask_, Block):
            ask_.release.wait(10)
            if ask_.crash:
                raise RuntimeError("the worker crashes")
            message.reply(None, None)


def _refuse(n: int) -> int:
    raise ValueError(f"{n} is negative")


@pytest.fixture
def worker() -> Iterator[pykka.ActorRef[Worker]]:
    ref = Worker.start()
    yield ref
    if ref.is_alive():
        ref.stop()


def test_the_answer_is_the_payloads_type(worker: pykka.ActorRef[Worker]) -> None:
    assert ask(worker, Double(21)) == 42


def test_an_error_comes_back_to_the_asker_and_the_actor_goes_on(
    worker: pykka.ActorRef[Worker],
) -> None:
    with pytest.raises(ValueError, match="-1 is negative"):
        ask(worker, Double(-1))
    assert worker.is_alive()
    assert ask(worker, Double(2)) == 4


def test_no_answer_in_time_is_a_timeout(worker: pykka.ActorRef[Worker]) -> None:
    release = threading.Event()
    worker.tell(Request(Block(release), lambda result, error: None))
    try:
        with pytest.raises(TimeoutError, match=r"Double: no answer in 0\.3 s"):
            ask(worker, Double(1), timeout=0.3)
    finally:
        release.set()


def test_an_actor_dying_before_it_answers_is_dead_at_once(
    worker: pykka.ActorRef[Worker],
) -> None:
    """The question waits behind a slow one, and the actor dies handling that: pykka drops the
    told Request with the inbox, and the asker learns it well before its 30 s timeout (as a
    proxy's caller would)."""
    release = threading.Event()
    worker.tell(Request(Block(release, crash=True), lambda result, error: None))
    outcome: list[BaseException | int] = []

    def asker() -> None:
        try:
            outcome.append(ask(worker, Double(1), timeout=30))
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=asker)
    thread.start()
    time.sleep(0.1)  # the question is in the inbox, behind Block
    started = time.monotonic()
    release.set()
    thread.join(10)
    assert time.monotonic() - started < 5
    assert len(outcome) == 1 and isinstance(outcome[0], pykka.ActorDeadError), outcome


def test_asking_a_dead_actor_fails_at_once(worker: pykka.ActorRef[Worker]) -> None:
    worker.stop()
    with pytest.raises(pykka.ActorDeadError):
        ask(worker, Double(1))


async def test_from_the_event_loop_too_an_actor_dying_before_it_answers_is_dead_at_once(
    worker: pykka.ActorRef[Worker],
) -> None:
    release = threading.Event()
    worker.tell(Request(Block(release, crash=True), lambda result, error: None))
    asking = asyncio.ensure_future(ask_async(worker, Double(1), timeout=30))
    await asyncio.sleep(0.05)  # the question is in the inbox, behind Block
    started = time.monotonic()
    release.set()
    with pytest.raises(pykka.ActorDeadError):
        await asyncio.wait_for(asking, 10)
    assert time.monotonic() - started < 5


async def test_from_the_event_loop_no_answer_in_time_is_a_timeout(
    worker: pykka.ActorRef[Worker],
) -> None:
    release = threading.Event()
    worker.tell(Request(Block(release), lambda result, error: None))
    try:
        with pytest.raises(TimeoutError, match=r"Double: no answer in 0\.3 s"):
            await ask_async(worker, Double(1), timeout=0.3)
    finally:
        release.set()
