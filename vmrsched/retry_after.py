"""The wait an HTTP Retry-After header asks for (RFC 9110 10.2.3: delay-seconds or an
HTTP-date). Exchange, Graph, the identity providers and Pexip's management API all may send
one; each caller caps it as its own contract says (the mailbox at 300 s, Pexip's outage at its
longest wait)."""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import parsedate_to_datetime


def seconds(value: str, now: datetime | None = None) -> float | None:
    """The seconds `value` asks to wait, uncapped; None when it says nothing usable (absent,
    malformed, zero, or a date already past), so the caller's own backoff applies."""
    value = value.strip()
    if not value:
        return None
    if value.isdigit():
        wait = float(value)
    else:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # an HTTP-date is always GMT
            when = when.replace(tzinfo=UTC)
        wait = (when - (now or datetime.now(UTC))).total_seconds()
    return wait if wait > 0 else None
