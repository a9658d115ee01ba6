"""The one ask channel (actors/bridge.py): a Request told to the actor, answered through a future,
from the event loop (`ask_async`) or from a thread that may block (`ask`); the notifier answers
the admin's questions about its queue this way; a request the actor cannot answer comes back as
an error and leaves the actor running."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pykka
import pytest

from tests import spoolkit
from tests.configs import Running, spool_config
from vmrsched import config, service
from vmrsched.actors.bridge import ask, ask_async
from vmrsched.actors.context import Context
from vmrsched.actors.messages import FindAliases, QueueAct, QueueContents, Reserve
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
