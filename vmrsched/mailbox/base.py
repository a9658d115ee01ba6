"""The gateway protocol every mailbox backend implements (spool, EWS, Microsoft Graph).

The actors speak only this protocol, so a backend is chosen per integration without changing
them. Backends translate; they hold no rules. Methods are blocking and are called only from the
poller and notifier actor threads, never from the event loop.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

import requests
import urllib3.exceptions

from vmrsched.meetings import Meeting
from vmrsched.outgoing import Outgoing

__all__ = [
    "CalendarEntry",
    "Gateway",
    "GatewayError",
    "InboxItem",
    "Outgoing",
    "outcome_unknown",
]


class GatewayError(Exception):
    """The mailbox could not be reached or refused the call. Transient unless `permanent`: a
    permanent refusal (the organizer's meeting is gone, impersonation is denied, a message the
    backend cannot carry) fails that one message and is never retried. `outcome_unknown`: the
    call went out and no answer came back (a timeout, a connection dropped), so it may have
    been carried out: before it is sent again the gateway's `delivered` is asked."""

    def __init__(
        self,
        message: str,
        retry_after: float | None = None,
        alarm: str | None = None,
        permanent: bool = False,
        code: str = "",
        outcome_unknown: bool = False,
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.alarm = alarm  # the alarm to raise, when not the backend's usual one
        self.permanent = permanent
        self.code = code  # the backend's own error code, when it gave one
        self.outcome_unknown = outcome_unknown


# The request never left: no connection was made (refused, no such host, TLS handshake failed,
# connect timeout). Checked before _IN_TRANSIT, which holds some of their base classes.
_NEVER_SENT = (
    requests.ConnectTimeout,
    requests.exceptions.SSLError,
    urllib3.exceptions.NewConnectionError,
    urllib3.exceptions.ConnectTimeoutError,
    ConnectionRefusedError,
    socket.gaierror,
)
# The request went out and its answer never came: waiting for it timed out, or the connection
# broke while it was on its way (Remote end closed connection without response, a reset).
_IN_TRANSIT = (
    requests.Timeout,
    requests.ConnectionError,
    requests.exceptions.ChunkedEncodingError,
    urllib3.exceptions.ProtocolError,
    urllib3.exceptions.ReadTimeoutError,
    ConnectionError,
    TimeoutError,
)


def outcome_unknown(exc: BaseException) -> bool:
    """Whether a call that failed with `exc` may have been carried out all the same: somewhere
    in its chain (causes, contexts, urllib3's reasons) the request went out and no answer came
    back. False for an answer the server gave (any status) and for a connection never made."""
    chain = list(_chain(exc))
    if any(isinstance(e, _NEVER_SENT) for e in chain):
        return False
    return any(isinstance(e, _IN_TRANSIT) for e in chain)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    todo: list[object] = [exc]
    while todo and len(seen) < 32:
        item = todo.pop()
        if not isinstance(item, BaseException) or id(item) in seen:
            continue
        seen.add(id(item))
        yield item
        todo += [item.__cause__, item.__context__, getattr(item, "reason", None), *item.args]


@dataclass(frozen=True)
class InboxItem:
    """One item in the equipment mailbox: the meetings it carries, or why it cannot be read."""

    id: str
    received: datetime
    meetings: tuple[Meeting, ...] = ()
    error: str | None = None
    # who to tell when the item cannot be read but its sender is known (for a general_error)
    sender_email: str = ""
    sender_name: str = ""
    subject: str = ""
    uid: str = ""
    # not a meeting message at all (an out-of-office, a newsletter, a bounce): set aside,
    # never answered
    not_meeting: bool = False
    # the mail asks not to be answered (RFC 3834 Auto-Submitted other than "no")
    auto_submitted: bool = False


@dataclass(frozen=True)
class CalendarEntry:
    """An accepted meeting in the resource calendar (for the recovery tool)."""

    meeting: Meeting
    item_id: str


class Gateway(Protocol):
    name: str

    def fetch(self, limit: int) -> Sequence[InboxItem]:
        """Up to `limit` unhandled items, oldest first. Items stay until marked handled."""
        ...

    def mark_handled(self, item_id: str, replied: bool = False, refused: bool = False) -> None:
        """Done with an item (called only after its replies are durably queued). `replied`: a
        queued reply refers to the item (EWS responds to the request itself). `refused`: the
        item was not from its meeting's organizer (not_organizer): it is removed without
        touching the room's calendar, which a cancellation otherwise takes the meeting off."""
        ...

    def quarantine(self, item_id: str, reason: str) -> None:
        """Set aside an item that cannot be processed, keeping it with the reason."""
        ...

    def send(self, message: Outgoing) -> None:
        """Deliver a reply or organizer update. Raises GatewayError to be retried."""
        ...

    def record_accepted(self, meeting: Meeting) -> None:
        """Keep an accepted meeting in the resource calendar."""
        ...

    def calendar(self, start: datetime, end: datetime) -> Sequence[CalendarEntry]:
        """Accepted meetings in the resource calendar between `start` and `end`."""
        ...

    def close(self) -> None: ...
