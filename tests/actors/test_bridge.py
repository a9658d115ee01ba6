"""The reservation batcher: how the add-in's reservations travel from the event loop to the
allocator and back (vmrsched.actors.bridge). A real pykka actor stands in for the allocator and
answers the way the real one does: one Reserve per batch, one result per user, replied through
`deliver` after its commit."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pykka
import pytest

from vmrsched.actors.bridge import ReservationBatcher, deliver
from vmrsched.actors.messages import Request, Reserve
from vmrsched.actors.registry import ActorUnavailable


class Quota(Exception):
    """Stands for the allocator's QuotaReached: an error in one request's place."""


class Allocator(pykka.ThreadingActor):
    """Answers each Reserve with one record per user ("full" users get Quota), unless told to
    hold its answers back."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[tuple[str, ...]] = []
        self.hold = threading.Event()
        self.held: list[Request[Any]] = []

    def on_receive(self, message: Any) -> None:
        assert isinstance(message, Request) and isinstance(message.payload, Reserve)
        users = message.payload.users
        self.batches.append(users)
        if self.hold.is_set():
            self.held.append(message)
            return
        results = [Quota(user) if user == "full" else {"alias": f"a-{user}"} for user in users]
        deliver([(message, results, None)])

    def batch_sizes(self) -> list[int]:
        return [len(batch) for batch in self.batches]

    def release(self) -> None:
        deliver(
            (request, [{"alias": "late"}] * len(request.payload.users), None)
            for request in self.held
        )


@pytest.fixture
def allocator() -> Iterator[pykka.ActorRef[Allocator]]:
    ref = Allocator.start()
    yield ref
    ref.stop()


async def test_reservations_of_one_loop_iteration_travel_as_one_batch(
    allocator: pykka.ActorRef[Allocator],
) -> None:
    batcher = ReservationBatcher()
    records = await asyncio.gather(*(batcher.reserve(allocator, 5.0, f"u{i}") for i in range(5)))
    assert [r["alias"] for r in records] == [f"a-u{i}" for i in range(5)]
    assert allocator.proxy().batch_sizes().get(timeout=5) == [5]
    # the next iteration's requests are the next batch
    assert (await batcher.reserve(allocator, 5.0, "x"))["alias"] == "a-x"
    assert allocator.proxy().batch_sizes().get(timeout=5) == [5, 1]


async def test_an_error_in_one_requests_place_fails_that_request_only(
    allocator: pykka.ActorRef[Allocator],
) -> None:
    batcher = ReservationBatcher()
    outcomes = await asyncio.gather(
        batcher.reserve(allocator, 5.0, "a"),
        batcher.reserve(allocator, 5.0, "full"),
        batcher.reserve(allocator, 5.0, "b"),
        return_exceptions=True,
    )
    assert outcomes[0] == {"alias": "a-a"} and outcomes[2] == {"alias": "a-b"}
    assert isinstance(outcomes[1], Quota)


async def test_a_batch_not_answered_in_time_times_out_and_a_late_answer_changes_nothing(
    allocator: pykka.ActorRef[Allocator],
) -> None:
    actor = allocator.proxy()
    actor.hold.get(timeout=5).set()
    batcher = ReservationBatcher()
    # the shortest timeout of the batch bounds the whole batch
    slow = asyncio.ensure_future(batcher.reserve(allocator, 30.0, "a"))
    quick = asyncio.ensure_future(batcher.reserve(allocator, 0.2, "b"))
    for waiting in (slow, quick):
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(waiting, 5)
    actor.release().get(timeout=5)
    await asyncio.sleep(0.05)  # the late reply reaches the loop and is dropped quietly


async def test_a_stopped_allocator_is_unavailable_not_a_hang() -> None:
    ref = Allocator.start()
    ref.stop()
    with pytest.raises(ActorUnavailable):
        await asyncio.wait_for(ReservationBatcher().reserve(ref, 5.0, "a"), 5)


class Crashing(pykka.ThreadingActor):
    """An allocator that dies on its first message: what waits behind it is dropped with its
    inbox (pykka answers nothing told to an actor that stops)."""

    def __init__(self, release: threading.Event) -> None:
        super().__init__()
        self.release = release

    def on_receive(self, message: Any) -> None:
        self.release.wait(5)
        raise RuntimeError("the allocator crashes")


async def test_an_allocator_dying_with_a_batch_in_its_inbox_fails_it_at_once() -> None:
    """Not a wait to the batch's 30 s timeout: the batch's timer sees the allocator gone."""
    release = threading.Event()
    ref = Crashing.start(release)
    ref.tell("the message it dies of")
    batcher = ReservationBatcher()
    waiting = asyncio.ensure_future(batcher.reserve(ref, 30.0, "a"))
    await asyncio.sleep(0.05)  # the batch is told, behind the fatal message
    started = asyncio.get_running_loop().time()
    release.set()
    with pytest.raises(ActorUnavailable, match="stopped before answering"):
        await asyncio.wait_for(waiting, 10)
    assert asyncio.get_running_loop().time() - started < 5


async def test_the_reply_resumes_the_waiting_handlers_in_the_next_loop_iteration(
    allocator: pykka.ActorRef[Allocator],
) -> None:
    """No future between the reply and the requests' own: once the loop runs the callback that
    carries the allocator's answer, every waiting handler resumes in the iteration after it."""
    loop = asyncio.get_running_loop()
    resumed: list[int] = []
    iterations = 0
    woken_at: list[int] = []

    def tick() -> None:
        nonlocal iterations
        iterations += 1
        loop.call_soon(tick)

    batcher = ReservationBatcher()

    async def one(user: str) -> None:
        await batcher.reserve(allocator, 5.0, user)
        resumed.append(iterations)

    loop.call_soon(tick)
    tasks = [asyncio.ensure_future(one(u)) for u in ("a", "b", "c")]
    # note when the answer's callback runs in the loop: wrap the loop's threadsafe scheduling
    real = loop.call_soon_threadsafe

    def spy(callback: Any, *args: Any, **kwargs: Any) -> Any:
        def marked(*a: Any) -> None:
            woken_at.append(iterations)
            callback(*a)

        return real(marked, *args, **kwargs)

    loop.call_soon_threadsafe = spy  # type: ignore[method-assign]
    try:
        await asyncio.wait_for(asyncio.gather(*tasks), 5)
    finally:
        loop.call_soon_threadsafe = real  # type: ignore[method-assign]
    assert woken_at, "the answer came through call_soon_threadsafe"
    assert len(resumed) == 3
    assert max(resumed) - woken_at[-1] <= 1
