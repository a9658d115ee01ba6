"""The one way to ask an actor: tell it a Request (messages.py) whose reply resolves a future.

From the event loop (`ask_async`) the future is the loop's, resolved through
loop.call_soon_threadsafe: the loop never blocks (never future.get() on it, never a thread
waiting on a pykka future for it). From any other thread that may block (another actor's, the
CLI's, a test's) `ask` waits on a concurrent future. Payloads are typed (`Ask[R]`): the answer
is an R. An actor answers with `answer`, which carries its error back to the asker without
stopping it.

Actors that answer many requests at once (the allocator's group commit) hand all replies to
`deliver`, which wakes each event loop once for the whole batch instead of once per reply."""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import pykka

from vmrsched.actors.messages import Ask, Request, Reserve
from vmrsched.actors.registry import ActorUnavailable

if TYPE_CHECKING:
    from vmrsched.actors.allocator import QuotaReached
    from vmrsched.store import Record

R = TypeVar("R")

# how often a blocked `ask` looks whether the asked actor still runs
ALIVE_CHECK_SECONDS = 0.25


class LoopReply(Generic[R]):
    """The reply of a Request made by `ask_async`: resolves a future on its event loop."""

    __slots__ = ("future", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop, future: asyncio.Future[R]) -> None:
        self.loop = loop
        self.future = future

    def __call__(self, result: R | None, error: BaseException | None) -> None:
        self.loop.call_soon_threadsafe(self.settle, result, error)

    def settle(self, result: R | None, error: BaseException | None) -> None:
        """In the loop's thread: the answer arrived."""
        _resolve(self.future, result, error)


def _resolve(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


def _settle_many(batch: list[tuple[LoopReply[Any], Any, BaseException | None]]) -> None:
    for reply, result, error in batch:
        reply.settle(result, error)


def deliver(replies: Iterable[tuple[Request[Any], Any, BaseException | None]]) -> None:
    """Answer many requests: one wake-up per event loop, plain calls for other replies."""
    by_loop: dict[
        asyncio.AbstractEventLoop, list[tuple[LoopReply[Any], Any, BaseException | None]]
    ] = {}
    for request, result, error in replies:
        reply = request.reply
        if isinstance(reply, LoopReply):
            by_loop.setdefault(reply.loop, []).append((reply, result, error))
        else:
            reply(result, error)
    for loop, batch in by_loop.items():
        loop.call_soon_threadsafe(_settle_many, batch)


def answer(request: Request[R], work: Callable[[], R]) -> None:
    """Reply to `request` with what `work` returns, or with the exception it raised: a request
    never takes the actor that answers it down."""
    try:
        result = work()
    except Exception as exc:
        request.reply(None, exc)
    else:
        request.reply(result, None)


async def ask_async(ref: pykka.ActorRef[Any], payload: Ask[R], timeout: float = 10.0) -> R:
    """Ask from the event loop: the actor's answer, or its exception; TimeoutError after
    `timeout` seconds; pykka.ActorDeadError when the actor is gone, or goes with the Request
    still in its inbox (seen within ALIVE_CHECK_SECONDS, as `ask` sees it)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[R] = loop.create_future()
    ref.tell(Request(payload, LoopReply(loop, future)))
    deadline = loop.time() + timeout
    try:
        while not future.done():
            left = deadline - loop.time()
            if left <= 0:
                raise TimeoutError(f"{type(payload).__name__}: no answer in {timeout:g} s")
            await asyncio.wait((future,), timeout=min(left, ALIVE_CHECK_SECONDS))
            if not future.done() and not ref.is_alive():
                raise pykka.ActorDeadError(
                    f"{ref} stopped before answering {type(payload).__name__}"
                )
    finally:
        future.cancel()  # no-op once answered; a late answer then finds it done
    return future.result()


def ask(ref: pykka.ActorRef[Any], payload: Ask[R], timeout: float = 10.0) -> R:
    """Ask from a thread that may block (another actor's, never the event loop's, never the
    asked actor's own): as `ask_async`, waiting on a concurrent future. An actor that stops
    before answering drops the Request with its inbox: that is ActorDeadError as soon as it is
    seen (within ALIVE_CHECK_SECONDS), not a wait to the timeout (TimeoutError), so that a
    supervisor restarting the asked actor need not wait for its asker either."""
    done: concurrent.futures.Future[R] = concurrent.futures.Future()

    def reply(result: R | None, error: BaseException | None) -> None:
        if error is not None:
            done.set_exception(error)
        else:
            done.set_result(result)  # type: ignore[arg-type]  # (result, None): an R

    ref.tell(Request(payload, reply))
    deadline = time.monotonic() + timeout
    while not done.done():
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"{type(payload).__name__}: no answer in {timeout:g} s")
        concurrent.futures.wait([done], timeout=min(left, ALIVE_CHECK_SECONDS))
        if not done.done() and not ref.is_alive():
            raise pykka.ActorDeadError(f"{ref} stopped before answering {type(payload).__name__}")
    return done.result()


class ReservationBatcher:
    """Coalesces the reservations of one event-loop iteration into one message to the
    allocator: one tell, one actor turn and one fsync for the lot, instead of one per request.
    The reply settles every waiting request's future in the loop callback that carries it
    (never blocking the loop, and no intermediate future whose callbacks would cost another
    loop iteration before the handlers run); an error in the reply's place of one request (a
    user at the quota) fails that request only. One timer per batch bounds the wait
    (TimeoutError), not an asyncio.timeout per request."""

    def __init__(self) -> None:
        self._waiting: list[asyncio.Future[Record]] = []
        self._users: list[str] = []
        self._timeout = 0.0
        self._scheduled = False

    async def reserve(
        self, allocator: pykka.ActorRef[Any], timeout: float, user: str = ""
    ) -> Record:
        """One alias for `user` ("" when no quota applies to the caller), or TimeoutError
        after `timeout` seconds (the shortest of its batch's)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Record] = loop.create_future()
        self._waiting.append(future)
        self._users.append(user)
        if not self._scheduled:
            self._scheduled = True
            self._timeout = timeout
            loop.call_soon(self._send, allocator, loop)
        elif timeout < self._timeout:
            self._timeout = timeout
        return await future

    def _send(self, allocator: pykka.ActorRef[Any], loop: asyncio.AbstractEventLoop) -> None:
        self._scheduled = False
        waiting, self._waiting = self._waiting, []
        users, self._users = tuple(self._users), []
        reply = _BatchReply(loop, waiting, self._timeout, allocator)
        try:
            allocator.tell(Request(Reserve(users), reply))
        except pykka.ActorDeadError:
            reply.settle(None, ActorUnavailable("the allocator stopped"))


class _BatchReply(LoopReply[list["Record | QuotaReached"]]):
    """The allocator's answer to one batch, settling each waiting request's own future. Its one
    timer looks every ALIVE_CHECK_SECONDS (a batch answered sooner never sees it fire) whether
    the allocator still runs: one that stopped with the batch in its inbox fails it at once
    (ActorUnavailable), and the deadline fails it with TimeoutError."""

    __slots__ = ("allocator", "deadline", "timer", "waiting")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        waiting: list[asyncio.Future[Record]],
        timeout: float,
        allocator: pykka.ActorRef[Any],
    ) -> None:
        self.loop = loop  # no future of its own: settle() answers the waiting requests
        self.waiting = waiting
        self.allocator = allocator
        self.deadline = loop.time() + timeout
        self.timer = loop.call_later(min(timeout, ALIVE_CHECK_SECONDS), self._check)

    def _check(self) -> None:
        left = self.deadline - self.loop.time()
        if left <= 0:
            self._fail(TimeoutError())  # its alias, should one come, simply expires unused
        elif not self.allocator.is_alive():
            self._fail(ActorUnavailable("the allocator stopped before answering"))
        else:
            self.timer = self.loop.call_later(min(left, ALIVE_CHECK_SECONDS), self._check)

    def _fail(self, error: BaseException) -> None:
        for future in self.waiting:
            if not future.done():
                future.set_exception(error)

    def settle(
        self, result: list[Record | QuotaReached] | None, error: BaseException | None
    ) -> None:
        self.timer.cancel()
        if error is not None or result is None:
            failure = error or RuntimeError("the allocator answered nothing")
            for future in self.waiting:
                if not future.done():  # timed out or cancelled meanwhile
                    future.set_exception(failure)
            return
        for future, outcome in zip(self.waiting, result, strict=True):
            if future.done():
                continue  # timed out or cancelled meanwhile; its alias expires unused
            if isinstance(outcome, BaseException):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)
