"""MailboxPoller: reads the equipment mailbox, has the allocator decide and apply each meeting,
hands the answers to the notifier, and only then marks the items handled.

An item decided and answered whose removal the mailbox refuses (a spool folder made read-only,
EACCES or EPERM) is held: it is never decided, counted or logged again while it waits, only its
removal is tried again, on the mailbox outage's backoff, and that outage (its alarm naming the
item and the refusal, and the lag counting the item's age) lasts until the removal works. The
hold is this process's: after a restart the item is read, and decided, again (its answer has
the same id, and is not sent twice).

The decisions log is for admins; the answer is what the organizer waits for. A log the disk
refuses (ENOSPC) does not stop the batch: the loss is logged once, with the correlation ids,
and the batch is answered and marked as it would have been."""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from vmrsched.actors.bridge import ask
from vmrsched.actors.child import SupervisedChild
from vmrsched.actors.messages import Enqueue, Poll, ProcessMeetings
from vmrsched.actors.outage import Outage
from vmrsched.actors.supervision import Backoff
from vmrsched.errors import StorageFull
from vmrsched.mailbox.base import MAX_RETRY_AFTER, GatewayError, InboxItem, Mailbox, Outgoing
from vmrsched.messages import answers, calendars
from vmrsched.rules.meetings import Meeting, is_address, occurrence_key
from vmrsched.store.decisions import DecisionWriter
from vmrsched.telemetry import INBOX_NOT_EMPTIED

if TYPE_CHECKING:
    from vmrsched.config import ExchangeConfig

log = logging.getLogger("vmrsched.store.decisions")
ASK_TIMEOUT = 60.0
SET_ASIDE = "set_aside"  # the outcome of an item that is not answered and not decided
AUTOMATIC_MAIL = (
    "automatic mail (RFC 3834 Auto-Submitted, Precedence bulk/list, List-Id or a delivery "
    "report): set aside, never answered"
)


@dataclass(frozen=True)
class _Held:
    """An item decided and answered that the mailbox would not let go of yet: how to remove it
    (`reason`: set aside with it; None: marked handled, `replied` and `refused` as then)."""

    item: InboxItem
    reason: str | None = None
    replied: bool = False
    refused: bool = False


class MailboxPoller(SupervisedChild):
    role = "poller"

    def __init__(self, *args: Any, gateway: Mailbox, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gateway = gateway
        self.interval = gateway.poll_interval(self.integ)
        self.alarm: str = gateway.alarm
        # the mailbox unreachable: the gateway's alarm (or the one its error names) from the
        # first failed poll, polls backing off from twice the interval
        self._outage = Outage(
            self.ctx.alarms,
            self.integ.name,
            self.alarm,
            Backoff(self.interval * 2, self.ctx.policy.mailbox_max),
            "the mailbox (reading)",
            retry_after_cap=MAX_RETRY_AFTER,
        )
        self._full = 0  # polls in a row the disk was full for
        self._untidy_raised = False  # inbox_not_emptied raised by this poller
        # decided and answered, but still in the mailbox: by item id, in the order held
        self._held: dict[str, _Held] = {}
        self._remove_at = 0.0  # when the held items' removal is tried again (the outage's clock)
        self._unlogged = False  # the decisions log refused the last batch

    def setup(self) -> None:
        self.renderer = self.integ.renderer()
        # in files or the shared database (fenced by this instance's lease there)
        self.decisions: DecisionWriter = self.ctx.stores.decisions.writer(self.integ.name)
        self._entries: list[dict[str, Any]] = []
        self.actor_ref.tell(Poll())

    def teardown(self) -> None:
        log_ = getattr(self, "decisions", None)
        if log_ is not None:
            try:
                log_.close()
            except (OSError, ValueError) as exc:  # its last lines could not be written
                log.error(
                    "the decisions log could not be closed: %s",
                    exc,
                    extra={"integration": self.integ.name},
                )

    def _tell_poll(self) -> None:
        self.actor_ref.tell(Poll())

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, Poll):
            try:
                handled = self.poll_once()
            except GatewayError as exc:
                delay = self._outage.failed(str(exc), exc.retry_after, exc.alarm)
                self.ctx.scheduler.call_later(delay, self._tell_poll)
                return None
            except StorageFull:
                # the allocator took the batch back and holds the storage_full alarm: nothing
                # was answered or marked, so the same items are read again once there is room
                self._full += 1
                delay = self._outage.backoff.delay(self._full)
                self.ctx.scheduler.call_later(delay, self._tell_poll)
                return None
            self._full = 0
            if not self._held:  # else the mailbox still refuses to let go of an item
                self._outage.recovered()
            if handled >= self.ctx.poll_batch:
                self.actor_ref.tell(Poll())  # more waiting: go on at once
            else:
                self.ctx.scheduler.call_later(self.interval, self._tell_poll)
        return None

    def poll_once(self) -> int:
        self._remove_held()
        # the held items may come back in the listing: a batch of new ones beside them
        items = [
            item
            for item in self.gateway.fetch(self.ctx.poll_batch + len(self._held))
            if self._new(item)
        ]
        now = self.ctx.clock()
        name = self.integ.name
        waiting = [item.received for item in items]
        waiting += [held.item.received for held in self._held.values()]
        oldest = max(0.0, (now - min(waiting)).total_seconds()) if waiting else 0.0
        lag = self.ctx.metrics.set_lag(name, incoming=oldest)
        self.ctx.status.set(name, lag=lag, polled=now.isoformat())
        if not items:
            return 0
        started = time.perf_counter()

        items = [_answerable(item) for item in items]
        # automatic mail is never answered (RFC 3834), whatever it carries: it is not decided
        readable = [
            item
            for item in items
            if item.error is None and not item.not_meeting and not item.auto_submitted
        ]
        batch = [(_with_correlation(m), item.id) for item in readable for m in item.meetings]

        allocator = self.ctx.registry.get(name, "allocator")
        steps = ask(allocator, ProcessMeetings(batch, now), timeout=ASK_TIMEOUT)

        # Count and log each decision as it is made, before any of its effects can be seen.
        outgoing: list[Outgoing] = []
        accepted: list[Meeting] = []
        replies: dict[str, list[str]] = {}  # item id -> ids of replies that answer it
        refused: set[str] = set()  # items not from their meeting's organizer
        for step, (_, item_id) in zip(steps, batch, strict=True):
            d = step.decision
            self.ctx.metrics.meeting_requests.labels(name, d.outcome, d.reason).inc()
            shown = step.fields.get("conference_subject")
            if shown is None:
                shown = answers.shown_subject(self.integ, self.renderer, step.meeting, d)
            self._log_decision(
                step.meeting,
                d.outcome,
                d.reason,
                d.correlation_id,
                d.detail,
                item_id,
                None,
                step.alias,
                shown,
                d.action.kind,
            )
            replies.setdefault(item_id, []).extend(m.id for m in step.messages if m.kind == "reply")
            outgoing.extend(step.messages)
            if d.outcome == "accepted":
                accepted.append(step.meeting)
            elif d.reason == "not_organizer":
                refused.add(item_id)
        quarantined: list[tuple[InboxItem, str]] = []
        for item in items:
            if item.not_meeting:
                quarantined.append((item, item.error or "not a meeting message"))
                log.info(
                    "not a meeting message from %s (%r): set aside without a reply",
                    item.sender_email or "an unknown sender",
                    item.subject,
                    extra={"integration": name, "item": item.id, "detail": item.error or ""},
                )
                self.ctx.metrics.meeting_requests.labels(name, SET_ASIDE, "not_meeting").inc()
            elif item.error is not None:
                quarantined.append((item, self._unreadable(item, outgoing)))
            elif item.auto_submitted:
                quarantined.append((item, self._automatic(item)))

        # the decisions log (for admins) is durable before the items count as handled
        entries, self._entries = self._entries, []
        self._write_decisions(entries)

        notifier = self.ctx.registry.get(name, "notifier")
        # durable before handled; ids already queued once (a re-read, an echo) are not queued
        # again. An item stays unanswered while a reply to it is still to be sent: pending, or
        # failed and waiting for an admin's retry (read again after a restart too)
        to_send = ask(notifier, Enqueue(outgoing), timeout=ASK_TIMEOUT)

        for meeting in accepted:
            self.gateway.record_accepted(meeting)
        removals = [
            _Held(
                item, None, any(i in to_send for i in replies.get(item.id, ())), item.id in refused
            )
            for item in readable
        ]
        removals += [_Held(item, reason) for item, reason in quarantined]
        refusals = self._remove_each(removals)
        if refusals:
            self._kept(refusals)
        self.gateway.sync()
        self._untidy(self.gateway.untidy())

        elapsed = time.perf_counter() - started
        per_item = elapsed / max(1, len(items))
        for _ in items:
            self.ctx.metrics.meeting_processing.labels(name).observe(per_item)
        return len(items)

    def _new(self, item: InboxItem) -> bool:
        """Whether a fetched item is to be decided: not when it is a held one, already decided
        and answered (known by its id and arrival time). Another item under a held one's id
        (a file dropped again under its name) means the held one is gone."""
        held = self._held.get(item.id)
        if held is None:
            return True
        if held.item.received == item.received:
            return False
        del self._held[item.id]
        return True

    def _remove(self, held: _Held) -> GatewayError | None:
        """Mark one item handled or set it aside, as `held` says; the mailbox's refusal, the
        item then held (a second refusal leaves it so), or None and the item let go."""
        item_id = held.item.id
        try:
            if held.reason is not None:
                self.gateway.quarantine(item_id, held.reason)
            elif held.refused:  # removed, and the room's calendar left as it is
                self.gateway.mark_handled(item_id, replied=held.replied, refused=True)
            else:
                self.gateway.mark_handled(item_id, replied=held.replied)
        except GatewayError as exc:
            self._held[item_id] = held
            return exc
        self._held.pop(item_id, None)
        return None

    def _remove_each(self, removals: list[_Held]) -> list[tuple[_Held, GatewayError]]:
        """Remove each item; the refusals. Each is tried on its own (one file the spool cannot
        move holds up no other), unless the mailbox asked to be left alone (a Retry-After) or a
        call went unanswered (a timeout): then the rest are held untried, for the retry."""
        refusals: list[tuple[_Held, GatewayError]] = []
        for index, held in enumerate(removals):
            exc = self._remove(held)
            if exc is None:
                continue
            refusals.append((held, exc))
            if exc.retry_after or exc.outcome_unknown:
                for rest in removals[index + 1 :]:
                    self._held[rest.item.id] = rest
                    refusals.append((rest, exc))
                break
        return refusals

    def _kept(self, refusals: list[tuple[_Held, GatewayError]]) -> None:
        """The mailbox refused to let go of items just decided: each is held (logged once),
        and the outage goes on, its alarm naming the first, until every removal works."""
        for held, exc in refusals:
            log.warning(
                "%s was handled, but the mailbox keeps it: %s; it is not decided again, only "
                "its removal is tried again",
                held.item.id,
                exc,
                extra={"integration": self.integ.name, "item": held.item.id},
            )
        self._refused_again(refusals[0])

    def _refused_again(self, first: tuple[_Held, GatewayError]) -> None:
        """The outage goes on (its alarm, once raised, keeps naming the first item held) and
        the held items' removal is tried again after its next backoff."""
        held, exc = first
        why = f"{held.item.id} was handled but cannot leave the inbox: {exc}"
        if len(self._held) > 1:
            why += f" ({len(self._held)} items held)"
        delay = self._outage.failed(why, exc.retry_after, exc.alarm)
        self._remove_at = self._outage.clock() + delay

    def _remove_held(self) -> None:
        """Try the held items' removal again once the backoff has passed; the outage ends with
        the poll after the last one goes."""
        if not self._held or self._outage.clock() < self._remove_at:
            return
        held = list(self._held.values())
        refusals = self._remove_each(held)
        if len(refusals) < len(held):
            self.gateway.sync()  # the removals that worked, durable
        if refusals:
            self._refused_again(refusals[0])
            return
        log.info(
            "every handled item the mailbox kept has left it now",
            extra={"integration": self.integ.name},
        )

    def _write_decisions(self, entries: list[dict[str, Any]]) -> None:
        """Append the batch's decisions; a log the disk refuses (ENOSPC, EDQUOT, or a file the
        writer can no longer use) costs the log those lines, never the answers: the loss is
        logged once, with their correlation ids, and the batch goes on."""
        try:
            self.decisions.append(entries)
        except (OSError, ValueError) as exc:
            ids = sorted({str(e["correlation_id"]) for e in entries if e["correlation_id"]})
            log.error(
                "the decisions log did not take %d decisions (%s): they were answered all the "
                "same, and are missing from it (correlation ids: %s)",
                len(entries),
                exc,
                ", ".join(ids) or "none",
                extra={"integration": self.integ.name},
            )
            self._unlogged = True
            return
        if self._unlogged and entries:
            self._unlogged = False
            log.info(
                "the decisions log takes decisions again", extra={"integration": self.integ.name}
            )

    def _untidy(self, why: str | None) -> None:
        """The inbox_not_emptied alarm while the gateway says handled messages stay in the
        inbox (as it first said why), cleared once they leave it."""
        if why:
            self.ctx.alarms.raise_(self.integ.name, INBOX_NOT_EMPTIED, why)
            self._untidy_raised = True
        elif self._untidy_raised:
            self.ctx.alarms.clear(self.integ.name, INBOX_NOT_EMPTIED)
            self._untidy_raised = False

    def _automatic(self, item: InboxItem) -> str:
        """Set aside a meeting message sent as automatic mail (RFC 3834 Auto-Submitted other
        than "no", Precedence bulk/list/junk, List-Id, a delivery report): whatever it asks,
        an answer to it could start a mail loop or go to a list, so it is neither decided nor
        answered; the decisions log and the log say so, with its sender and subject."""
        reason = AUTOMATIC_MAIL
        for meeting in item.meetings:
            shown = answers.shown_subject(self.integ, self.renderer, meeting)
            self._log_decision(
                meeting, SET_ASIDE, "automatic", "", reason, item.id, item, "", shown
            )
        self.ctx.metrics.meeting_requests.labels(self.integ.name, SET_ASIDE, "automatic").inc()
        return reason

    def _unreadable(self, item: InboxItem, outgoing: list[Outgoing]) -> str:
        """Quarantine reason for an item that cannot be read; its sender, when known and not an
        automatic mail, gets a general_error decline (one per item, however often it is read)."""
        reason = item.error or "unreadable"
        key = f"{self.integ.name}\0{item.id}\0{item.received.isoformat()}\0{reason}"
        correlation_id = str(uuid.uuid5(uuid.NAMESPACE_URL, key))
        outcome = "quarantined"
        if is_address(item.sender_email) and not item.auto_submitted:
            try:
                decline = answers.unreadable_reply(
                    self.integ,
                    self.renderer,
                    correlation_id,
                    item.sender_email,
                    item.sender_name,
                    item.subject,
                    item.uid,
                )
                outgoing.append(_with_reply_calendar(decline, item, self.integ.exchange))
                outcome = "declined"
            except Exception:
                log.exception("cannot answer unreadable item %s", item.id)
        shown = answers.shown_subject(
            self.integ, self.renderer, subject=item.subject, organizer=item.sender_email
        )
        self._log_decision(
            None, outcome, "general_error", correlation_id, reason, item.id, item, "", shown
        )
        self.ctx.metrics.meeting_requests.labels(self.integ.name, outcome, "general_error").inc()
        return f"{reason} (correlation id {correlation_id})"

    def _log_decision(
        self,
        meeting: Meeting | None,
        outcome: str,
        reason: str,
        correlation_id: str,
        detail: str,
        item_id: str,
        item: InboxItem | None = None,
        alias: str = "",
        subject: str = "",
        action: str = "",
    ) -> None:
        """One line per decision: what, why, which meeting (by its conference subject, the
        subject as admins see it; the UID is a field of its own, and the occurrence when it
        is about one occurrence only: recovery reads a meeting's standing from the series'
        own decisions), who organised it, which alias it is about and, for a cancellation,
        what became of the alias (released, or bound still without the one occurrence)."""
        uid = meeting.uid if meeting is not None else (item.uid if item is not None else "")
        rid = meeting.recurrence_id if meeting is not None else None
        if reason == "unchanged":
            level = logging.DEBUG  # the room's own organizer update coming back, and the like
        elif reason == "general_error":
            level = logging.WARNING
        else:
            level = logging.INFO
        organizer = meeting.organizer_email if meeting is not None else ""
        if item is not None and not organizer:
            organizer = item.sender_email
        sender = meeting.sent_by if meeting is not None else ""
        if action == "cancel":
            what = f"released {alias}: meeting cancelled"
        elif action == "cancel_occurrence" and rid is not None:
            what = f"cancelled occurrence {occurrence_key(rid)} of {alias}, which stays bound"
        else:
            what = f"{outcome} ({reason})" + (f", alias {alias}" if alias else "")
        self._entries.append(
            {
                "time": self.ctx.clock().isoformat(),
                "conference_subject": subject[:300],
                "organizer": organizer[:300],
                "sender": sender[:300],
                "outcome": outcome,
                "reason": reason,
                "correlation_id": correlation_id,
                "alias": alias,
                "meeting_uid": uid[:300],
                "occurrence": occurrence_key(rid) if rid is not None else "",
                "item": item_id[:300],
                "detail": _clipped(detail),
            }
        )
        # a general_error says why in its line (a traceback by its last line: the error)
        why = detail.strip().splitlines()[-1][:300] if reason == "general_error" and detail else ""
        log.log(
            level,
            "%s: %r from %s%s",
            what,
            subject[:200],
            organizer or "nobody",
            f" ({why})" if why else "",
            extra={
                "integration": self.integ.name,
                "meeting_uid": uid,
                "outcome": outcome,
                "reason": reason,
                "correlation_id": correlation_id,
                "detail": detail,
                "item": item_id,
                "organizer": organizer,
                "sender": sender,
                "alias": alias,
            },
        )


def _clipped(detail: str, limit: int = 500) -> str:
    """A decision's detail for the decisions log: whole when short, else its start and its end
    (a traceback's last line is the error itself)."""
    if len(detail) <= limit:
        return detail
    return f"{detail[: limit // 4]} … {detail[-(limit - limit // 4 - 3) :]}"


def _answerable(item: InboxItem) -> InboxItem:
    """A meeting request needs an organizer to answer, and an organizer is one address; without
    one, or with a list of them, the item is unreadable (quarantined: there is nobody to decline
    to either, and a decline to a list would go to everyone on it)."""
    if item.error is not None:
        return item
    for meeting in item.meetings:
        if meeting.method != "REQUEST" or is_address(meeting.organizer_email):
            continue
        error = (
            f"meeting request's ORGANIZER is not one address ({meeting.organizer_email[:200]!r})"
            if meeting.organizer_email
            else "meeting request has no ORGANIZER"
        )
        return replace(
            item,
            meetings=(),
            error=f"{error}: nobody to answer",
            subject=item.meetings[0].subject,
            uid=item.meetings[0].uid,
        )
    return item


def _with_reply_calendar(decline: Outgoing, item: InboxItem, room: ExchangeConfig) -> Outgoing:
    """The decline of a request that was read as far as its UID and ORGANIZER, with the
    METHOD:REPLY part every other decline carries (PARTSTAT=DECLINED), so the organizer's
    calendar shows the room declined; a request read less far than that has nothing a REPLY
    could name and is declined in words alone."""
    if not item.uid or not is_address(item.sender_email) or decline.calendar:
        return decline
    calendar = calendars.decline_calendar(
        item.uid,
        item.sequence,
        item.subject,
        (item.sender_email, item.sender_name),
        (room.mailbox_email, room.mailbox_name),
    )
    return replace(decline, calendar=calendar)


def _with_correlation(meeting: Meeting) -> Meeting:
    if meeting.correlation_id:
        return meeting
    return replace(meeting, correlation_id=str(uuid.uuid4()))
