"""From the event loop to an actor without blocking: tell a Request whose reply resolves an
asyncio future through loop.call_soon_threadsafe (never future.get() on the loop)."""

from __future__ import annotations

import asyncio
from typing import Any

import pykka

from vmrsched.actors.messages import Request


def _resolve(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


async def ask_async(ref: pykka.ActorRef[Any], payload: Any, timeout: float = 10.0) -> Any:
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()

    def reply(result: Any, error: BaseException | None) -> None:
        loop.call_soon_threadsafe(_resolve, future, result, error)

    ref.tell(Request(payload, reply))
    return await asyncio.wait_for(future, timeout)
