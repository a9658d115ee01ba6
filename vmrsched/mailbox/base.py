"""The gateway contract every mailbox backend implements (spool, EWS, Microsoft Graph).

The actors speak only this contract, so a backend is chosen per integration without changing
them. Backends translate; they hold no rules. As in Mopidy's backend API, the contract is one
base class, `Mailbox`: its abstract methods are what every backend must do (mypy refuses to
build a backend that lacks one), and every optional part has a default meaning "not supported"
that callers act on as it is, without asking first whether the backend has it.

Required (abstract): `fetch`, `mark_handled`, `quarantine`, `send`, `record_accepted`,
`calendar`. Optional, with their defaults:

    name                 ""                      the integration's name (backends set it)
    alarm                "mailbox_unreachable"   raised while the mailbox cannot be reached
    idempotent_send      False                   a message sent twice is still one message
    bulk_send            False                   send_many answers many in one call
    poll_interval(integ) the exchange section's poll_interval_seconds
    send_many(messages)  send() each in turn, stopping at an outage of the mailbox
    delivered(message)   None: the backend cannot tell
    sync()               nothing to make durable
    untidy()             None: handled messages always leave the inbox
    probe(...)           one warning: no online check for this backend
    notified(...)        None: the backend takes no push notifications
    close()              nothing to release

Threads. The integration's supervisor builds one gateway (`backends.make_gateway`, through the
context's `gateway_factory`) and hands that same instance to two actors, each on a thread of its
own: the poller (`fetch`, `record_accepted`, `mark_handled`, `quarantine`, `sync`) and the
notifier (`send_many`, `send`, `delivered`, `sync`). They call it at the same time, so an
implementation must be safe for that: each piece of state belongs to one of the two roles or is
guarded by a lock, and `sync` (called by both) must be. `notified` is called from a third
thread, the HTTP front end's event loop: it must be quick, never block on the mailbox, and only
hand the news to the poller (an Event, a flag). Every other method is blocking and never called
from the event loop. The supervisor's thread builds the gateway and calls `close` once both
actors have stopped. Tools (`check-config --online`, recovery) build a gateway of their own and
use it from one thread. Each backend's class docstring says what it does to be safe.
"""

from __future__ import annotations

import socket
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import requests
import urllib3.exceptions

from vmrsched import retry_after
from vmrsched.outgoing import Outgoing
from vmrsched.rules.meetings import Meeting
from vmrsched.telemetry import MAILBOX_UNREACHABLE

if TYPE_CHECKING:
    from vmrsched.config import IntegrationConfig

__all__ = [
    "CalendarEntry",
    "Check",
    "Gateway",
    "GatewayError",
    "InboxItem",
    "Mailbox",
    "Outgoing",
    "outcome_unknown",
    "retry_after_seconds",
]

# The longest wait a server's Retry-After is taken at its word for: a longer one (a misconfigured
# proxy's, a date far ahead) is cut to this, so a mailbox is tried again within five minutes.
MAX_RETRY_AFTER = 300.0


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

    @property
    def whole_mailbox(self) -> bool:
        """About the mailbox rather than one message (unreachable, throttling): everything
        waits. A permanent refusal, or a code without a Retry-After, is about one message."""
        return not self.permanent and (not self.code or bool(self.retry_after))


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


def retry_after_seconds(value: str, now: datetime | None = None) -> float | None:
    """The wait an HTTP Retry-After header asks for, at most MAX_RETRY_AFTER; None when it
    says nothing usable, so the caller's own backoff applies."""
    wait = retry_after.seconds(value, now)
    return None if wait is None else min(wait, MAX_RETRY_AFTER)


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
    sequence: int = 0  # the unreadable request's SEQUENCE, where it could be read
    # not a meeting message at all (an out-of-office, a newsletter, a bounce, an attendee's
    # response: any iTIP method but REQUEST and CANCEL): set aside, never answered
    not_meeting: bool = False
    # the mail asks not to be answered (RFC 3834 Auto-Submitted other than "no", a list, a
    # delivery report): set aside unanswered, whatever it carries
    auto_submitted: bool = False


@dataclass(frozen=True)
class CalendarEntry:
    """An accepted meeting in the resource calendar (for the recovery tool)."""

    meeting: Meeting
    item_id: str


Check = tuple[bool | None, str]
"""One line of `Mailbox.probe`: works (True), does not (False) or a warning (None), and what was
tried."""


class Mailbox(ABC):
    """A mailbox backend: the abstract methods are required, the rest are optional with the
    defaults below (see the module docstring for the list and the threading rule)."""

    name: str = ""
    # the alarm raised while the mailbox cannot be reached, unless a GatewayError names another
    alarm: str = MAILBOX_UNREACHABLE
    # a message sent again under its id replaces nothing and sends nothing twice: the notifier
    # may mark a batch delivered at once instead of each message before the next send
    idempotent_send: bool = False
    # send_many carries many responses to request items in one call (EWS CreateItem, Graph
    # $batch): the notifier hands it those together. False: it sends each message alone
    bulk_send: bool = False

    # --- required ------------------------------------------------------------------------------

    @abstractmethod
    def fetch(self, limit: int) -> Sequence[InboxItem]:
        """Up to `limit` unhandled items, oldest first. Items stay until marked handled."""

    @abstractmethod
    def mark_handled(self, item_id: str, replied: bool = False, refused: bool = False) -> None:
        """Done with an item (called only after its replies are durably queued). `replied`: a
        queued reply refers to the item (EWS responds to the request itself). `refused`: the
        item was not from its meeting's organizer (not_organizer): it is removed without
        touching the room's calendar, which a cancellation otherwise takes the meeting off."""

    @abstractmethod
    def quarantine(self, item_id: str, reason: str) -> None:
        """Set aside an item that cannot be processed, keeping it with the reason."""

    @abstractmethod
    def send(self, message: Outgoing) -> None:
        """Deliver a reply or organizer update. Raises GatewayError to be retried (or, when
        permanent, to fail that message); any other exception fails the message as poison."""

    @abstractmethod
    def record_accepted(self, meeting: Meeting) -> None:
        """Keep an accepted meeting in the resource calendar (a backend whose accepting puts it
        there already does nothing, but says so)."""

    @abstractmethod
    def calendar(self, start: datetime, end: datetime) -> Sequence[CalendarEntry]:
        """Accepted meetings in the resource calendar between `start` and `end`."""

    # --- optional ------------------------------------------------------------------------------

    def poll_interval(self, integ: IntegrationConfig) -> float:
        """Seconds between the poller's reads of an idle mailbox: the backend's own setting of
        the integration (default: the exchange section's)."""
        return integ.exchange.poll_interval_seconds

    def send_many(self, messages: Sequence[Outgoing]) -> list[BaseException | None]:
        """Each message's outcome, in order: None when delivered, else the exception its sending
        raised, for the caller to settle as it would a `send` of its own. Raises GatewayError
        only for the lot as a whole: it failed together, or may have gone out unseen
        (outcome_unknown: each is asked about with `delivered` before it is sent again).
        Default: `send` each in turn; once the mailbox itself fails (GatewayError.whole_mailbox)
        the rest are not tried and get that error. A backend that answers many in one call
        overrides it and sets `bulk_send`; the notifier hands it messages only then."""
        outcomes: list[BaseException | None] = []
        outage: GatewayError | None = None
        for message in messages:
            if outage is not None:
                outcomes.append(outage)
                continue
            try:
                self.send(message)
            except Exception as exc:
                outcomes.append(exc)
                if isinstance(exc, GatewayError) and exc.whole_mailbox:
                    outage = exc
            else:
                outcomes.append(None)
        return outcomes

    def delivered(self, message: Outgoing) -> bool | None:
        """Whether a message whose sending may have taken effect (queued before a restart, or
        its call got no answer) is in the mailbox already, so it is not sent again. None (the
        default): the backend cannot tell, and the message is sent again."""
        return None

    def sync(self) -> None:
        """Make durable what the last calls changed (the poller calls it after marking a batch
        handled, the notifier before it forgets sent messages). Default: nothing to do, every
        call is durable when it returns. Called from both actor threads."""
        return None

    def untidy(self) -> str | None:
        """Why handled messages stay in the inbox, while removing them keeps being refused for
        a reason other than throttling (a 403, a server error): nothing is answered twice, but
        the inbox grows and every restart reads them again, so the poller raises
        `inbox_not_emptied` with this text until a removal works. Default: never (every
        backend that removes in `mark_handled` reports a failure there). Both threads."""
        return None

    def probe(self, organizer: str = "", outside: str = "") -> list[Check]:
        """What works and what does not, for `check-config --online`. `organizer`: a mailbox
        whose meetings the service must be able to update; `outside`: one it must not reach
        (backends without such a scope ignore both). Default: one warning, nothing checked."""
        return [(None, f"{type(self).__name__} has no online check: nothing was tried")]

    def notified(self, notifications: Sequence[dict[str, Any]]) -> tuple[int, int] | None:
        """Push notifications posted for this mailbox (Graph change notifications): how many
        were (accepted, refused). Called from the event loop: quick, never blocking. None (the
        default): this backend takes no notifications, and none of them were looked at."""
        return None

    def close(self) -> None:
        """Release what the gateway holds (sessions, files, locks). Default: nothing."""
        return None


# the name the actors, the supervisor and the recovery tool know the contract by
Gateway = Mailbox
