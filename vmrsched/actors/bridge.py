"""From the event loop to an actor without blocking: tell a Request whose reply resolves an
asyncio future through loop.call_soon_threadsafe (never future.get() on the loop).

Actors that answer many requests at once (the allocator's group commit) hand all replies to
`deliver`, which wakes each event loop once for the whole batch instead of once per reply.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

import pykka

from vmrsched.actors.messages import Request, Reserve
from vmrsched.actors.registry import ActorUnavailable


class LoopReply:
    """The reply of a Request made by `ask_async`: resolves a future on its event loop."""

    __slots__ = ("future", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any]) -> None:
        self.loop = loop
        self.future = future

    def __call__(self, result: Any, error: BaseException | None) -> None:
        self.loop.call_soon_threadsafe(_resolve, self.future, result, error)


def _resolve(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


def _resolve_many(batch: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    for future, result, error in batch:
        _resolve(future, result, error)


def deliver(replies: Iterable[tuple[Request, Any, BaseException | None]]) -> None:
    """Answer many requests: one wake-up per event loop, plain calls for other replies."""
    by_loop: dict[
        asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], Any, BaseException | None]]
    ] = {}
    for request, result, error in replies:
        reply = request.reply
        if isinstance(reply, LoopReply):
            by_loop.setdefault(reply.loop, []).append((reply.future, result, error))
        else:
            reply(result, error)
    for loop, batch in by_loop.items():
        loop.call_soon_threadsafe(_resolve_many, batch)


async def ask_async(ref: pykka.ActorRef[Any], payload: Any, timeout: float = 10.0) -> Any:
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()
    ref.tell(Request(payload, LoopReply(loop, future)))
    async with asyncio.timeout(timeout):
        return await future


class ReservationBatcher:
    """Coalesces the reservations of one event-loop iteration into one message to the
    allocator: one tell, one actor turn and one fsync for the lot, instead of one per request.
    The reply resolves every waiting request's future (never blocking the loop); an error in
    the reply's place of one request (a user at the quota) fails that request only. One timer
    per batch bounds the wait (TimeoutError), not an asyncio.timeout per request."""

    def __init__(self) -> None:
        self._waiting: list[asyncio.Future[Any]] = []
        self._users: list[str] = []
        self._timeout = 0.0
        self._scheduled = False

    async def reserve(self, allocator: Any, timeout: float, user: str = "") -> Any:
        """One alias for `user` ("" when no quota applies to the caller), or TimeoutError
        after `timeout` seconds (the shortest of its batch's)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._waiting.append(future)
        self._users.append(user)
        if not self._scheduled:
            self._scheduled = True
            self._timeout = timeout
            loop.call_soon(self._send, allocator, loop)
        elif timeout < self._timeout:
            self._timeout = timeout
        return await future

    def _send(self, allocator: Any, loop: asyncio.AbstractEventLoop) -> None:
        self._scheduled = False
        waiting, self._waiting = self._waiting, []
        users, self._users = tuple(self._users), []
        batch: asyncio.Future[Any] = loop.create_future()

        def expire() -> None:
            for future in waiting:
                if not future.done():  # its alias, should one come, simply expires unused
                    future.set_exception(TimeoutError())

        timer = loop.call_later(self._timeout, expire)

        def settle(done: asyncio.Future[Any]) -> None:
            timer.cancel()
            error = done.exception()
            results = done.result() if error is None else [None] * len(waiting)
            for future, result in zip(waiting, results, strict=True):
                if future.done():
                    continue  # timed out or cancelled meanwhile; its alias expires unused
                if error is not None:
                    future.set_exception(error)
                elif isinstance(result, BaseException):
                    future.set_exception(result)
                else:
                    future.set_result(result)

        batch.add_done_callback(settle)
        try:
            allocator.tell(Request(Reserve(users), LoopReply(loop, batch)))
        except pykka.ActorDeadError:
            batch.set_exception(ActorUnavailable("the allocator stopped"))
