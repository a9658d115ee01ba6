"""Refusals on the organizer page and the user sign-in, in the log: one warning line each,
naming the integration, the client's address (as the page's acts name it: X-Forwarded-For only
from a trusted proxy) and why, in our own words and the error's log-only detail. Nothing else
of the request goes in: never a token, a code, a state, a cookie or a secret.

Whoever can reach the page can make it refuse, as often as they like: the lines are bounded
(`Bounded`), at most PER_MINUTE a minute for each kind of refusal from each client address, and
CEILING_PER_MINUTE in all; the ones left out are counted, and the count is logged before the
next line of that kind from that address. So one client's flood of one refusal cannot keep
another kind, or another client's, out of the log (only a flood from many addresses at once
reaches the ceiling)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from vmrsched.errors import ServiceError
from vmrsched.http.common import client_address

PER_MINUTE = 30
CEILING_PER_MINUTE = 300
WINDOW_SECONDS = 60.0
MAX_WHY = 600  # a reason may quote what the caller sent (an alias, the provider's words)
MAX_KEYS = 10_000  # (kind, client) budgets remembered; past it, the ones whose minute is over go


@dataclass
class _Budget:
    """One minute's lines of one key: when that minute began, lines written, lines left out."""

    window: float = float("-inf")
    written: int = 0
    left_out: int = 0


class Bounded:
    """Warning lines at a bounded rate: at most `per_minute` in each minute for each key (a
    kind of refusal and a client address), and `ceiling` a minute in all; the rest are
    counted, and the count goes out as a line of its own before the next line of its key in a
    later minute. Thread-safe (sign-ins finish in worker threads)."""

    def __init__(
        self,
        logger: logging.Logger,
        per_minute: int = PER_MINUTE,
        clock: Callable[[], float] = time.monotonic,
        ceiling: int = CEILING_PER_MINUTE,
    ) -> None:
        self.logger = logger
        self.per_minute = per_minute
        self.ceiling = ceiling
        self.clock = clock
        self._lock = threading.Lock()
        self._budgets: dict[tuple[str, str], _Budget] = {}
        self._all = _Budget()

    def warning(
        self, message: str, *args: object, integration: str = "", key: tuple[str, str] = ("", "")
    ) -> None:
        left_out = self._admit(key)
        if left_out is None:
            return
        extra = {"integration": integration} if integration else {}
        if left_out:
            self.logger.warning(
                "%d more refusals%s were not logged in the minute before this one (at most %d "
                "lines a minute%s)",
                left_out,
                f" of {key[0]}" + (f" from {key[1]}" if key[1] else "") if key[0] else "",
                self.per_minute,
                " for each kind and client" if key != ("", "") else "",
                extra=extra,
            )
        self.logger.warning(message, *args, extra=extra)

    def _admit(self, key: tuple[str, str]) -> int | None:
        """None when this line is one too many for its key's minute, or for the minute of all
        (then counted); else how many of its key were left out before it, to be said first."""
        with self._lock:
            now = self.clock()
            budget = self._budgets.get(key)
            if budget is None:
                if len(self._budgets) >= MAX_KEYS:
                    self._forget_before(now - WINDOW_SECONDS)
                budget = self._budgets[key] = _Budget()
            left_out = 0
            if now - budget.window >= WINDOW_SECONDS:
                budget.window, budget.written = now, 0
                left_out, budget.left_out = budget.left_out, 0
            if now - self._all.window >= WINDOW_SECONDS:
                self._all.window, self._all.written = now, 0
            if budget.written >= self.per_minute or self._all.written >= self.ceiling:
                budget.left_out += 1
                return None
            budget.written += 1
            self._all.written += 1
            return left_out

    def _forget_before(self, start: float) -> None:
        """Drop the budgets whose minute began before `start` (their left-out counts with
        them: a key that never comes back is never reported anyway)."""
        for key in [k for k, b in self._budgets.items() if b.window < start]:
            del self._budgets[key]


ORGANIZER = Bounded(logging.getLogger("vmrsched.organizer"))
PERSONAL = Bounded(logging.getLogger("vmrsched.sign_in"))


def why(exc: ServiceError) -> str:
    """What a refusal's line says of the error: its message, and its detail when it has one."""
    return f"{exc.message} ({exc.detail})" if exc.detail else exc.message


def refused(
    request: web.Request,
    lines: Bounded,
    integration: str,
    what: str,
    reason: str,
    kind: str = "",
) -> None:
    """One line: `what` was refused to the request's client, and why; `kind` (default: `what`)
    is the refusal's budget, with the client's address."""
    client = client_address(request)
    lines.warning(
        "%s refused from %s: %s",
        what,
        client,
        reason[:MAX_WHY],
        integration=integration,
        key=(kind or what, client),
    )
