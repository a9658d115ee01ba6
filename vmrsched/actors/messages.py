"""Every message actors tell each other and the front ends tell actors: typed, immutable.

Asking an actor (from the event loop, another actor's thread or the CLI; see bridge.py) is
telling it a `Request`: a payload and the callable that takes its reply. Every payload is an
`Ask[R]`, R being what the reply carries, so `bridge.ask_async(ref, FindAliases(...))` is known
to return `list[Record]`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Generic, Literal

from vmrsched.config import Config
from vmrsched.messages.answers import Step
from vmrsched.outgoing import Outgoing
from vmrsched.rules.meetings import Meeting
from vmrsched.store import Record
from vmrsched.store.outqueue import Failed, Queued

if TYPE_CHECKING:
    from typing import TypeAlias

    # R defaults to Any, so an actor handling requests of every kind may name the bare
    # `Request`; typing.TypeVar takes a default from Python 3.13 only
    from typing_extensions import TypeVar

    from vmrsched.actors.allocator import QuotaReached

    R = TypeVar("R", default=Any)
    # one user's reservation: the record, or the quota that refused it (the allocator's
    # QuotaReached, named here for the type checker only: the allocator imports this module)
    Reserved: TypeAlias = Record | QuotaReached
else:
    from typing import TypeVar

    R = TypeVar("R")


@dataclass(frozen=True)
class Poll:
    pass


@dataclass(frozen=True)
class Flush:
    pass


@dataclass(frozen=True)
class Sweep:
    pass


@dataclass(frozen=True)
class Reconcile:
    """Provisioner: bring Pexip in line with the store; `full` re-reads Pexip's conferences
    instead of trusting what was last seen there."""

    full: bool = False


@dataclass(frozen=True)
class Poke:
    """Provisioner: the allocator committed changes; reconcile soon (bursts coalesce)."""


@dataclass(frozen=True)
class Crash:
    """Told to itself by an actor whose state can no longer be trusted: the handler raises, so
    the actor stops and its supervisor starts a fresh one."""


def error_text(error: BaseException | None) -> str:
    """What a death says in the log, the status and the alarm: the exception's repr, except
    for an OSError naming a file, whose repr leaves the file out (PermissionError(1, 'Operation
    not permitted')): then its type and text, which name it."""
    if isinstance(error, OSError) and error.filename is not None:
        return f"{type(error).__name__}: {error}"
    return repr(error)


@dataclass(frozen=True)
class ChildFailed:
    """Told by a child of an IntegrationSupervisor that died (actors/child.py)."""

    role: str
    generation: int
    error: str


@dataclass(frozen=True)
class IntegrationFailed:
    """Told by an IntegrationSupervisor that died (its children with it) to the service
    supervisor, which starts the integration again."""

    name: str
    generation: int
    error: str


@dataclass(frozen=True)
class ChildReady:
    """Told by a child once its start-up work is done (the allocator: its store loaded and its
    aliases published): the integration is running when every child has said so."""

    role: str
    generation: int


@dataclass(frozen=True)
class RestartChild:
    """Told by a supervisor to itself (through the timer) when a child's restart is due."""

    child: str


@dataclass(frozen=True)
class RetryIntegration:
    pass


class Ask(Generic[R]):
    """The base of every payload of a Request: R is the type of the reply."""

    __slots__ = ()


@dataclass(frozen=True)
class Reserve(Ask["list[Reserved]"]):
    """Payload of a Request from the add-in API: reserve an alias for each of `users` (the
    requests that arrived together; "" for a caller no quota applies to); the reply lists, in
    the same order, each one's record or the QuotaReached of a user at the cap."""

    users: tuple[str, ...] = ("",)


@dataclass(frozen=True)
class FindAliases(Ask[list[Record]]):
    """Payload of a Request to an allocator from the admin API: the records matching `query`
    (every word in the alias, numeric alias, organizer, subject or meeting UID) whose schedule
    touches `day` (ISO date, optional); the reply is a list of records, newest first."""

    query: str = ""
    day: str = ""
    limit: int = 100


@dataclass(frozen=True)
class DeleteAlias(Ask[Record | None]):
    """Payload: delete an alias (an admin's act: `by`). Declined from then on, refused by the
    policy endpoint, its conference removed where provisioned; the organizer of a booked
    meeting is told. The reply is the deleted record, or None when no such alias exists."""

    alias: str
    by: str
    # the organizer's cancel: only a reservation no meeting uses, checked when the allocator
    # applies it (a meeting may have bound it since the organizer's page was read)
    unused_only: bool = False


@dataclass(frozen=True)
class ResendInstructions(Ask[str | None]):
    """Payload: mail a booked meeting's joining instructions to its organizer again; the reply
    is the queued message's id, or None when the alias is not booked."""

    alias: str
    by: str


@dataclass(frozen=True)
class ProcessMeetings(Ask[list[Step]]):
    """Payload of a Request from the poller to its allocator: plan and apply each meeting
    (with the id of the inbox item it came in) on the store's view, one after the other; the
    reply, once all of it is durable (one fsync), is each one's Step, in order."""

    meetings: Sequence[tuple[Meeting, str]]
    now: datetime


@dataclass(frozen=True)
class Enqueue(Ask[set[str]]):
    """Payload of a Request to a notifier (from the poller, or the allocator for an admin's
    act): queue these messages durably, each id once; the reply, once fsynced, is the ids of
    the given messages still to be sent (pending, or failed and kept for an admin's retry)."""

    messages: list[Outgoing]


@dataclass(frozen=True)
class StopTaking(Ask[None]):
    """Payload of a Request to the ownership actor: the service stops, take no integration
    more (the leases held are renewed until ReleaseAll)."""


@dataclass(frozen=True)
class ReleaseAll(Ask[None]):
    """Payload of a Request to the ownership actor: every integration stopped here, give
    every lease up (a clean stop hands them over at once)."""


@dataclass(frozen=True)
class ReloadResult:
    """The reply to Reload: the integrations restarted, started and stopped."""

    changed: list[str] = field(default_factory=list)
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    # [server] keys the file changed that wait for a restart (the running values stay)
    restart_needed: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Reload(Ask[ReloadResult]):
    """Payload of a Request to the service supervisor: apply this (validated) configuration;
    the reply is a ReloadResult."""

    config: Config


@dataclass(frozen=True)
class QueueContents(Ask[tuple[list[Queued], list[Failed]]]):
    """Payload of a Request to a notifier from the admin API: what its queue holds (queued,
    oldest first, and failed)."""


@dataclass(frozen=True)
class QueueAct(Ask[tuple[bool, list[Failed]]]):
    """Payload: an admin's retry (a failed message back in the queue) or discard (a failed or
    queued message dropped) of one message, durable before the reply: whether there was such
    a message, and the failed messages after the act (the delivery_failed alarm follows them).
    A retried message goes out with the next flush (tell the notifier Flush)."""

    act: Literal["retry", "discard"]
    message_id: str


# Called from the actor's thread with (result, None) or (None, error).
Reply = Callable[[R | None, BaseException | None], None]


@dataclass(frozen=True)
class Request(Generic[R]):
    """A request to an actor: `payload` is handled by the actor and `reply` is called with
    (result, error) from the actor's thread, never raising into it; see bridge.py."""

    payload: Ask[R]
    reply: Reply[R]
