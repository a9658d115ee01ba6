"""JSON batching for the Graph backend: many calls in few `$batch` requests without breaking the
mailbox's concurrency limit.

Graph counts each part of a batch against the mailbox's limit of concurrent requests, and runs the
parts of a batch concurrently unless they are sequenced with `dependsOn`. So each batch here is a
chain: up to 20 calls, each depending on the one before, one call of the mailbox's in flight at a
time whatever the batch's size, and up to `max_concurrent_requests` chains go out together.

A chain has a price: a part after a failed one is not run but answered 424 (Failed Dependency).
Those parts get the answer they would have got alone: after a throttled or failing part (429,
5xx, 401) the same answer, Retry-After included (they were not carried out; Graph asks for a
wait); after a refusal of that one call (404, 403, 400…) they go out again in the next chain.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from vmrsched.mailbox.base import GatewayError, retry_after_seconds

BATCH_MAX = 20  # parts in one $batch (Graph's limit)
FAILED_DEPENDENCY = 424
# the longest wait a Retry-After may impose: past it Graph is asked again (and says again, if
# the wait really is that long); a broken or hostile header never stops the mailbox for hours
MAX_HOLD = 300.0

Call = tuple[str, str, Any]  # method, URL, JSON body (None: no body)


@dataclass(frozen=True)
class Answer:
    """One call's answer inside a batch. `error`: the $batch request carrying it failed as a
    whole (throttled, unreachable, no answer), and the call's outcome is that error's."""

    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)
    error: GatewayError | None = None


class Slots:
    """At most `size` requests in flight for the mailbox, a $batch counting as its parts (Graph
    applies the mailbox's concurrency limit to each sub-request; a chained batch runs one at a
    time). Taken all at once, so two threads can never each hold part of what both need."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._free = size
        self._cond = threading.Condition()

    @contextmanager
    def take(self, n: int = 1) -> Iterator[None]:
        n = min(n, self.size)
        with self._cond:
            self._cond.wait_for(lambda: self._free >= n)
            self._free -= n
        try:
            yield
        finally:
            with self._cond:
                self._free += n
                self._cond.notify_all()


class Hold:
    """The mailbox's one back-off. Graph throttles an app per mailbox: a Retry-After on any call
    (a whole response, or one part of a $batch) says when the mailbox may be called again, for
    reading and for sending alike. Every call asks `remaining` first and is not made before
    then. Shared by the poller's and the notifier's threads and a batch's chains: one lock."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._until = 0.0
        self._lock = threading.Lock()

    def extend(self, seconds: float) -> bool:
        """No call before `seconds` (capped at MAX_HOLD) from now, unless a hold already lasts
        longer. True when this starts a hold (none was on): the one to log."""
        seconds = min(max(seconds, 0.0), MAX_HOLD)
        with self._lock:
            now = self.clock()
            started = self._until <= now
            self._until = max(self._until, now + seconds)
            return started and seconds > 0

    def remaining(self) -> float:
        """Seconds before the mailbox may be called again (0: now)."""
        with self._lock:
            return max(0.0, self._until - self.clock())


def retry_after(status: int, headers: Any) -> float | None:
    """The wait a throttled or busy answer (429, 503, 504) asks for, in seconds (capped at
    MAX_HOLD), from its Retry-After header (delay-seconds, as Graph sends it, or an HTTP-date);
    None otherwise."""
    if status not in (429, 503, 504):
        return None
    value = next((str(v) for k, v in dict(headers).items() if k.lower() == "retry-after"), "")
    wait = retry_after_seconds(value)
    return None if wait is None else min(wait, MAX_HOLD)


def chain_body(calls: Sequence[Call], api: str) -> dict[str, Any]:
    """The $batch body of one chain: each part depends on the one before."""
    return {
        "requests": [
            {
                "id": str(i),
                "method": method,
                "url": url.removeprefix(api),
                # times in UTC wherever an answer carries them
                "headers": {
                    "Prefer": 'outlook.timezone="UTC"',
                    **({"Content-Type": "application/json"} if payload is not None else {}),
                },
                **({"body": payload} if payload is not None else {}),
                **({"dependsOn": [str(i - 1)]} if i else {}),
            }
            for i, (method, url, payload) in enumerate(calls)
        ]
    }


def answers_of(reply: dict[str, Any], count: int) -> list[Answer]:
    """A $batch reply's answers in the order of its parts (Graph answers in any order)."""
    by_id = {str(r.get("id")): r for r in reply.get("responses", [])}
    out: list[Answer] = []
    for i in range(count):
        part = by_id.get(str(i), {"status": 500, "body": None})
        out.append(
            Answer(int(part.get("status", 500)), part.get("body"), dict(part.get("headers") or {}))
        )
    return out


def transient(status: int) -> bool:
    """An answer about Graph or the token rather than about the call: wait and ask again."""
    return status in (401, 429) or status >= 500


def split(indexes: Sequence[int], parts: int = BATCH_MAX) -> list[list[int]]:
    """The fewest chains of at most `parts` calls, as even as can be."""
    if not indexes:
        return []
    chains = -(-len(indexes) // parts)
    size, extra = divmod(len(indexes), chains)
    out, start = [], 0
    for number in range(chains):
        end = start + size + (1 if number < extra else 0)
        out.append(list(indexes[start:end]))
        start = end
    return out


def settle(chain: Sequence[int], answers: Sequence[Answer], final: dict[int, Answer]) -> list[int]:
    """File a chain's answers under their calls' indexes in `final`; returns the calls to send
    again (not run only because a call before them was refused)."""
    again: list[int] = []
    breaker: Answer | None = None
    for index, answer in zip(chain, answers, strict=True):
        if answer.status != FAILED_DEPENDENCY or breaker is None:
            final[index] = answer
            if answer.status >= 400:
                breaker = breaker or answer
        elif transient(breaker.status):
            final[index] = breaker  # not carried out: Graph is throttling or failing
        else:
            again.append(index)
    return again


def run_together(jobs: Sequence[Callable[[], None]]) -> None:
    """Run the jobs at once (the first in this thread) and wait for all of them; an exception
    of any of them is raised here."""
    failures: list[BaseException] = []

    def guarded(job: Callable[[], None]) -> None:
        try:
            job()
        except BaseException as exc:  # handed to the caller's thread
            failures.append(exc)

    threads = [threading.Thread(target=guarded, args=(job,), daemon=True) for job in jobs[1:]]
    for thread in threads:
        thread.start()
    if jobs:
        guarded(jobs[0])
    for thread in threads:
        thread.join()
    if failures:
        raise failures[0]
