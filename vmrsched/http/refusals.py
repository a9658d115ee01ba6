"""Refusals on the organizer page and the user sign-in, in the log: one warning line each,
naming the integration, the client's address (as the page's acts name it: X-Forwarded-For only
from a trusted proxy) and why, in our own words and the error's log-only detail. Nothing else
of the request goes in: never a token, a code, a state, a cookie or a secret.

Whoever can reach the page can make it refuse, as often as they like: the lines are bounded
(`Bounded`: at most PER_MINUTE a minute for each kind), the ones left out are counted and the
count is logged before the next line that goes in."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from aiohttp import web

from vmrsched.errors import ServiceError
from vmrsched.http.common import client_address

PER_MINUTE = 30
WINDOW_SECONDS = 60.0
MAX_WHY = 600  # a reason may quote what the caller sent (an alias, the provider's words)


class Bounded:
    """Warning lines at a bounded rate: at most `per_minute` in each minute from the first
    line of that minute; the rest are counted, and the count goes out as a line of its own
    before the first line of a later minute. Thread-safe (sign-ins finish in worker threads)."""

    def __init__(
        self,
        logger: logging.Logger,
        per_minute: int = PER_MINUTE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.per_minute = per_minute
        self.clock = clock
        self._lock = threading.Lock()
        self._window = float("-inf")
        self._written = 0
        self._left_out = 0

    def warning(self, message: str, *args: object, integration: str = "") -> None:
        left_out = self._admit()
        if left_out is None:
            return
        extra = {"integration": integration} if integration else {}
        if left_out:
            self.logger.warning(
                "%d more refusals were not logged in the minute before this one (at most %d "
                "lines a minute)",
                left_out,
                self.per_minute,
            )
        self.logger.warning(message, *args, extra=extra)

    def _admit(self) -> int | None:
        """None when this line is one too many for its minute (then counted); else how many
        were left out before it, to be said first."""
        with self._lock:
            now = self.clock()
            left_out = 0
            if now - self._window >= WINDOW_SECONDS:
                self._window, self._written = now, 0
                left_out, self._left_out = self._left_out, 0
            if self._written >= self.per_minute:
                self._left_out += 1
                return None
            self._written += 1
            return left_out


ORGANIZER = Bounded(logging.getLogger("vmrsched.organizer"))
PERSONAL = Bounded(logging.getLogger("vmrsched.sign_in"))


def why(exc: ServiceError) -> str:
    """What a refusal's line says of the error: its message, and its detail when it has one."""
    return f"{exc.message} ({exc.detail})" if exc.detail else exc.message


def refused(request: web.Request, lines: Bounded, integration: str, what: str, reason: str) -> None:
    """One line: `what` was refused to the request's client, and why."""
    lines.warning(
        "%s refused from %s: %s",
        what,
        client_address(request),
        reason[:MAX_WHY],
        integration=integration,
    )
