"""An outage of something an actor depends on (the mailbox for the poller and the notifier, the
Pexip management API for the provisioner), tracked the one way: since when, how many failures
in a row, the wait before the next try (capped exponential backoff, or the server's own
Retry-After under the same cap), the alarm while it lasts, and one log line when it is over.

The actor keeps its own loop: it calls `failed` when a try fails (and waits the delay it
returns) and `recovered` when one works. Nothing here schedules, sleeps or takes a lock: each
actor owns its Outage and uses it in its own thread."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from vmrsched.actors.supervision import Backoff
from vmrsched.telemetry import Alarms

log = logging.getLogger("vmrsched.outage")


class Outage:
    """One dependency's outage state.

    `threshold`: the failure in a row that raises the alarm (1: the first; a blip shorter than
    the threshold raises nothing). `jitter`: a share of each backoff delay taken off at random
    (0.3: the delay lies between 70 % and 100 % of the backoff), drawn from `rng` (uniform in
    [0, 1)), so that many integrations failing together do not all retry together; 0 (the
    default) keeps the delays exact. A Retry-After the server sent is waited as it is, up to
    `retry_after_cap` (the backoff's maximum unless given): one 503 with `Retry-After: 3600`
    from a proxy must not stop an actor for an hour after the dependency is back. The mailbox
    actors give a longer cap (mailbox.base.MAX_RETRY_AFTER): Microsoft asks clients to wait
    what Exchange and Graph name, and retrying sooner only prolongs their throttling."""

    __slots__ = (
        "alarm",
        "alarms",
        "backoff",
        "clock",
        "failures",
        "integration",
        "jitter",
        "raised",
        "retry_after_cap",
        "rng",
        "since",
        "threshold",
        "what",
    )

    def __init__(
        self,
        alarms: Alarms,
        integration: str,
        alarm: str,
        backoff: Backoff,
        what: str,
        *,
        threshold: int = 1,
        jitter: float = 0.0,
        rng: Callable[[], float] | None = None,
        clock: Callable[[], float] = time.monotonic,
        retry_after_cap: float | None = None,
    ) -> None:
        if jitter and rng is None:
            raise ValueError("jitter needs a random source")
        self.alarms = alarms
        self.integration = integration
        self.alarm = alarm  # raised unless a failure names another
        self.backoff = backoff
        self.retry_after_cap = backoff.maximum if retry_after_cap is None else retry_after_cap
        self.what = what  # for the log: "the mailbox (sending)", "Pexip's management API"
        self.threshold = threshold
        self.jitter = jitter
        self.rng = rng
        self.clock = clock
        self.failures = 0  # in a row
        self.since: float | None = None  # the first failure of this outage (clock)
        self.raised: str | None = None  # the alarm raised last, cleared on recovery

    @property
    def down(self) -> bool:
        return self.failures > 0

    def failed(
        self, error: str, retry_after: float | None = None, alarm: str | None = None
    ) -> float:
        """One more failure in a row: from the threshold on, the alarm (`alarm`, else this
        outage's) is raised (an alarm already active keeps the message it was raised with).
        Returns the seconds to wait before the next try: `retry_after` when the server named
        it (at most `retry_after_cap`), else the backoff's."""
        self.failures += 1
        if self.since is None:
            self.since = self.clock()
        if self.failures >= self.threshold:
            self.raised = alarm or self.alarm
            self.alarms.raise_(self.integration, self.raised, error)
        if retry_after:
            return min(retry_after, self.retry_after_cap)
        return self.delay()

    def delay(self) -> float:
        """The backoff after the failures so far, less its jitter."""
        delay = self.backoff.delay(self.failures)
        if self.jitter and self.rng is not None:
            delay -= delay * self.jitter * self.rng()
        return delay

    def recovered(self) -> bool:
        """A try worked. Ends an outage (False when there was none): clears its alarm and logs
        how long it lasted, once."""
        if not self.failures:
            return False
        lasted = self.clock() - (self.since if self.since is not None else self.clock())
        failures, self.failures, self.since = self.failures, 0, None
        if self.raised is not None:
            self.alarms.clear(self.integration, self.raised)
            self.raised = None
        log.info(
            "%s recovered after %.0f s (%d failed tries)",
            self.what,
            lasted,
            failures,
            extra={"integration": self.integration},
        )
        return True
