"""Supervision as in Erlang/OTP, for pykka (which has none): one_for_one restarts with a restart
intensity; past it the integration is marked failed and retried with exponential backoff."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class RestartPolicy:
    max_restarts: int = 5  # more than this many restarts ...
    within_seconds: float = 60.0  # ... within this window marks the integration failed
    restart_delay: float = 0.1  # under the 1 s the design allows
    backoff_initial: float = 5.0
    backoff_max: float = 300.0


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
        growth = 2.0 ** min(self.failures, 16)
        delay = min(self.policy.backoff_max, self.policy.backoff_initial * growth)
        self.failures += 1
        return delay
