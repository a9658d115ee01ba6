"""Supervision as in Erlang/OTP, for pykka (which has none): one_for_one restarts with a restart
intensity; past it the integration is marked failed and retried with exponential backoff."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass


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
