"""Notifier: the sole sender of replies and organizer updates.

Messages arrive in a durable queue (fsynced before `enqueue` returns) and leave it only after the
gateway accepted them. The delivery mark is fsynced before the next send where a resend would
send twice (each message, or each bulk send's lot, on Exchange and Graph), once per batch where it
would not (the spool): a crash can only ever leave the message in flight unsure. Each message
fails or succeeds on its own:
- the mailbox unreachable or throttling (a transient error without a per-message code): the
  whole batch waits with exponential backoff and `mailbox_unreachable`/`exchange_unreachable`;
- a transient refusal of one message: that message waits (its own backoff) while the others go
  on; after MAX_ATTEMPTS it is failed;
- a permanent refusal, or a message that cannot even be composed (poison): failed at once,
  kept with its reason in the queue (`vmrsched failed` lists them), alarm `delivery_failed`;
  a failed organizer update is replaced by a mail to the organizer with the joining
  instructions, so nobody is left without them (and, as long as that mail is not refused too,
  no admin is needed: the update alone raises no alarm, across restarts too);
- a message whose sending may have taken effect without our knowing (queued before a restart,
  or its call got no answer: a timeout, a connection dropped) is checked with the gateway's
  `delivered` before it is sent again, and marked delivered when it was.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from vmrsched.actors.bridge import answer
from vmrsched.actors.child import SupervisedChild
from vmrsched.actors.messages import Enqueue, Flush, QueueAct, QueueContents, Request
from vmrsched.actors.outage import Outage
from vmrsched.actors.supervision import Backoff
from vmrsched.mailbox.base import MAX_RETRY_AFTER, GatewayError, Mailbox, Outgoing
from vmrsched.messages import answers
from vmrsched.postgres.outqueue import DatabaseOutQueue
from vmrsched.rules.aliases import normalise
from vmrsched.store.outqueue import Failed, MessageQueue, OutQueue
from vmrsched.telemetry import DELIVERY_FAILED

log = logging.getLogger("vmrsched.notifier")

CHUNK = 200
FAILED_ALARM = DELIVERY_FAILED
MAX_ATTEMPTS = 8
# how soon a message that waits on its alias's state asks again while the integration's
# aliases are not all published yet (its allocator is starting)
NOT_LOADED_RETRY = 0.5


@dataclass
class _Retry:
    attempts: int
    not_before: float  # monotonic


class Notifier(SupervisedChild):
    role = "notifier"

    def __init__(self, *args: Any, gateway: Mailbox, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gateway = gateway
        self.alarm: str = gateway.alarm
        self._flush_queued = False
        # the mailbox unreachable or throttling: the whole queue waits, from half a second
        self._outage = Outage(
            self.ctx.alarms,
            self.integ.name,
            self.alarm,
            Backoff(0.5, self.ctx.policy.mailbox_max),
            "the mailbox (sending)",
            retry_after_cap=MAX_RETRY_AFTER,
        )
        self._retries: dict[str, _Retry] = {}
        self._wake_at: float | None = None
        self._replaced = False  # a failed message was replaced: flush again for the new one

    def setup(self) -> None:
        self.queue: MessageQueue
        if self.ctx.shared is not None:  # in the shared database, fenced by this lease
            shared = self.ctx.shared
            self.queue = DatabaseOutQueue(
                shared.connect, self.integ.name, lease=shared.require_lease(self.integ.name)
            )
        else:
            self.queue = OutQueue(self.ctx.queue_dir(self.integ.name))
        # Messages that may have reached the mailbox without our knowing: queued before a
        # restart (the crash may have come just after the mailbox took them), and later any
        # whose call got no answer. Each is checked (gateway.delivered) before it is sent again.
        self._unsure = {m.id for m in self.queue.pending()}
        # found in the mailbox already (not sent by this try): recorded as done, not "sent"
        self._reached: set[str] = set()
        self._idempotent = self.gateway.idempotent_send
        unresolved = self._unresolved()
        if unresolved:
            self.ctx.alarms.raise_(
                self.integ.name,
                FAILED_ALARM,
                f"{unresolved} message(s) could not be delivered; `vmrsched failed` lists them",
            )
        self._request_flush()

    def teardown(self) -> None:
        queue = getattr(self, "queue", None)
        if queue is not None:
            queue.close()
            self.queue = None  # type: ignore[assignment]

    def enqueue(self, messages: list[Outgoing]) -> set[str]:
        """Queue durably the messages never queued before; returns once fsynced, with the ids
        of the given messages still to be sent: pending (see OutQueue.add), or failed and kept
        for an admin's retry. The poller leaves the items these answer in the mailbox, so a
        request read again after a restart is not taken for answered while its reply waits
        for an admin. Delivery happens afterwards."""
        pending = self.queue.add(messages) if messages else set()
        if pending:
            self._request_flush()
        return pending | self._held(m for m in messages if m.id not in pending)

    def _held(self, messages: Iterable[Outgoing]) -> set[str]:
        """The ids of `messages` failed and kept for an admin, each with the same inbox item
        as the kept copy (the one an admin's retry sends)."""
        wanted = {m.id: m.extra.get("item_id") for m in messages}
        if not wanted:
            return set()
        return {
            f.message.id
            for f in self.queue.failed()
            if f.message.id in wanted and f.message.extra.get("item_id") == wanted[f.message.id]
        }

    def pending(self) -> int:
        return len(self.queue)

    def failed(self) -> int:
        return len(self.queue.failed())

    def _request_flush(self) -> None:
        if not self._flush_queued and not self._outage.down:
            self._flush_queued = True
            self.actor_ref.tell(Flush())

    def _retry_later(self) -> None:
        self._flush_queued = False
        self._wake_at = None
        self.actor_ref.tell(Flush())

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, Flush):
            self._flush_queued = False
            self._flush()
        elif isinstance(message, Request):
            self._answer(message)
        return None

    def _answer(self, request: Request[Any]) -> None:
        """Messages to queue (from the poller or the allocator), or an admin's question or act
        about the queue (from the event loop): answered in this thread, which owns the queue;
        an error goes back to the asker."""
        ask = request.payload
        if isinstance(ask, Enqueue):
            answer(request, lambda: self.enqueue(ask.messages))
        elif isinstance(ask, QueueContents):
            answer(request, lambda: self.queue.contents())
        elif isinstance(ask, QueueAct):
            answer(request, lambda: self._queue_act(ask))
        else:
            request.reply(None, ValueError(f"unknown request {ask!r}"))

    def _queue_act(self, ask: QueueAct) -> tuple[bool, list[Failed]]:
        """An admin's retry or discard, durable: whether there was such a message, and the
        failed messages after it."""
        if ask.act == "retry":
            done = self.queue.retry(ask.message_id)
        else:
            done = self.queue.discard(ask.message_id)
        return done, self.queue.failed()

    def _flush(self) -> None:
        try:
            self._send_ready()
        finally:
            self._note_lag()

    def _note_lag(self) -> None:
        """The outgoing side of the mailbox lag: how long the oldest answer has waited to be
        sent (0 when none waits), so a reply that cannot go out shows as lag."""
        queued, _ = self.queue.contents()
        waited = max(0.0, time.time() - min(q.at for q in queued)) if queued else 0.0
        lag = self.ctx.metrics.set_lag(self.integ.name, outgoing=waited)
        self.ctx.status.set(self.integ.name, lag=lag)

    def _send_ready(self) -> None:
        now = time.monotonic()
        sent: list[Outgoing] = []
        waiting: list[float] = []
        try:
            ready: list[Outgoing] = []
            dropped: list[tuple[Outgoing, str]] = []
            broken: list[tuple[Outgoing, Exception]] = []
            for outgoing in self.queue.pending():
                if len(ready) >= CHUNK:
                    break
                retry = self._retries.get(outgoing.id)
                if retry is not None and retry.not_before > now:
                    waiting.append(retry.not_before)
                    continue
                try:
                    current = self._as_it_stands(outgoing)
                except Exception as exc:  # cannot be restated: a poison message
                    broken.append((outgoing, exc))
                    continue
                if current is None:
                    waiting.append(now + NOT_LOADED_RETRY)
                elif isinstance(current, str):
                    dropped.append((outgoing, current))
                else:
                    ready.append(current)
            self._drop(dropped)
            for outgoing, poison in broken:
                self._settle(outgoing, poison, now, waiting, sent)
            attempted = len(ready)
            if self.gateway.bulk_send:
                # responses to request items go out together (one EWS request for the lot)
                bulk = [m for m in ready if self._bulk(m)]
                if bulk:
                    bulk_ids = {m.id for m in bulk}
                    ready = [m for m in ready if m.id not in bulk_ids]
                    try:
                        outcomes = self.gateway.send_many(bulk)
                    except GatewayError as exc:
                        if exc.outcome_unknown:  # the lot may have gone out: ask first
                            self._unsure |= bulk_ids
                        raise
                    backoff: GatewayError | None = None
                    for outgoing, outcome in zip(bulk, outcomes, strict=True):
                        try:
                            self._settle(outgoing, outcome, now, waiting, sent, bulk=True)
                        except GatewayError as exc:  # that one waits with the mailbox; the
                            backoff = backoff or exc  # lot's other outcomes stand all the same
                    # the lot's delivery marks are durable before anything else goes out: a
                    # crash during the next send must not leave them to be sent again
                    self._record(sent)
                    sent.clear()
                    if backoff is not None:
                        raise backoff
            for outgoing in ready:
                error: BaseException | None = None
                try:
                    if not self._already_delivered(outgoing):
                        self.gateway.send(outgoing)
                except Exception as exc:
                    error = exc
                self._settle(outgoing, error, now, waiting, sent)
        except GatewayError as exc:
            try:
                self._record(sent)
            except GatewayError as unrecorded:
                # the mailbox cannot make its writes durable either (a spool on a full disk:
                # only the spool's sync refuses, Exchange's and Graph's never raise): the
                # messages stay queued and go again after the wait, the same files again
                log.warning(
                    "%d delivered message(s) not marked yet, sent again later: %s",
                    len(sent),
                    unrecorded,
                    extra={"integration": self.integ.name},
                )
            delay = self._outage.failed(str(exc), exc.retry_after, exc.alarm)
            log.warning(
                "sending failed, retrying in %.1fs: %s",
                delay,
                exc,
                extra={"integration": self.integ.name},
            )
            self._flush_queued = True
            self.ctx.scheduler.call_later(delay, self._retry_later)
            return
        self._record(sent)
        self._outage.recovered()
        if attempted >= CHUNK or self._replaced:
            self._replaced = False
            self._request_flush()
        elif waiting:
            self._wake(min(waiting) - time.monotonic())

    def _as_it_stands(self, outgoing: Outgoing) -> Outgoing | str | None:
        """answers.as_it_stands, asked of the alias's state now: the policy index, which the
        allocator publishes after each commit (so a cancellation decided in the batch that
        queued an update is there before the update is). The message to send (an organizer
        update restated when its meeting changed since), or why it is withdrawn; None while
        the integration's aliases are not all published yet (its allocator is starting): the
        message waits."""
        if answers.waits_on(outgoing) is None:
            return outgoing
        index = self.ctx.alias_index
        if not index.loaded(self.integ.name):
            return None

        def booking(alias_id: str, alias: str) -> answers.Booking | None:
            room = index.lookup(normalise(alias))
            if room is None or room.alias_id != alias_id:
                return None
            return answers.Booking(room.status, room.schedule, room.sequence)

        return answers.as_it_stands(outgoing, booking)

    def _drop(self, dropped: list[tuple[Outgoing, str]]) -> None:
        """Messages withdrawn before they went out: done with, never sent (their ids stay
        seen, so a request read again queues none of them again). Each is logged before it is
        marked done: a crash between the two leaves it queued, and the restart withdraws and
        logs it again (at least once, docs/guarantees.md), where the other order could leave a
        withdrawal nobody was told of."""
        if not dropped:
            return
        for message, why in dropped:
            self._retries.pop(message.id, None)
            self._unsure.discard(message.id)
            log.info(
                "%s %s %s for %s withdrawn: %s",
                message.kind,
                message.outcome,
                message.reason,
                ", ".join(message.recipients),
                why,
                extra=self._fields(message),
            )
        self.queue.done(m.id for m, _ in dropped)

    def _bulk(self, outgoing: Outgoing) -> bool:
        """Sent with others: a response to a request item, unless it may have gone out already
        (those are checked one by one first)."""
        return _responds(outgoing) and outgoing.id not in self._unsure

    def _settle(
        self,
        outgoing: Outgoing,
        error: BaseException | None,
        now: float,
        waiting: list[float],
        sent: list[Outgoing],
        bulk: bool = False,
    ) -> None:
        """What one message's attempt means: delivered, retried alone, failed for good, or (by
        raising the GatewayError) the whole mailbox backing off. `bulk`: one of a send_many's
        lot, whose marks the caller records together."""
        if isinstance(error, GatewayError) and error.outcome_unknown:
            self._unsure.add(outgoing.id)  # it may have gone out: asked before the next try
        if error is None:
            self._retries.pop(outgoing.id, None)
            # one delivery mark for the batch where a resend sends nothing twice, or for a
            # bulk send's lot (recorded as soon as the lot is settled); otherwise durable
            # before the next send, as docs/guarantees.md says
            sent.append(outgoing)
            if not (self._idempotent or bulk):
                self._record(sent)
                sent.clear()
        elif isinstance(error, GatewayError):
            if error.permanent:
                self._give_up(outgoing, str(error))
            elif error.code and not error.retry_after:
                self._retry_one(outgoing, error, now, waiting)
            else:
                raise error  # the mailbox itself is unreachable or throttling us
        else:  # a poison message: never retried, never blocking
            log.error(
                "cannot send message %s: %r",
                outgoing.id,
                error,
                extra={"integration": self.integ.name},
            )
            self._give_up(outgoing, f"cannot be sent: {type(error).__name__}: {error}")

    def _already_delivered(self, outgoing: Outgoing) -> bool:
        """For a message that may have gone out already: whether the mailbox has it (then it is
        not sent again). The question stays open until the gateway could answer it."""
        if outgoing.id not in self._unsure:
            return False
        done = bool(self.gateway.delivered(outgoing))
        self._unsure.discard(outgoing.id)
        if done:
            self._reached.add(outgoing.id)
            log.info(
                "%s %s had reached the mailbox (after a restart, or an answer lost); "
                "not sent again",
                outgoing.kind,
                outgoing.id,
                extra={"integration": self.integ.name, "meeting_uid": outgoing.meeting_uid},
            )
        return done

    def _wake(self, delay: float) -> None:
        """Come back for the messages waiting on their own backoff."""
        at = time.monotonic() + max(0.05, delay)
        if self._wake_at is not None and self._wake_at <= at:
            return
        self._wake_at = at
        self.ctx.scheduler.call_later(max(0.05, delay), self._retry_later)

    def _retry_one(
        self, outgoing: Outgoing, exc: GatewayError, now: float, waiting: list[float]
    ) -> None:
        retry = self._retries.get(outgoing.id) or _Retry(0, now)
        retry.attempts += 1
        if retry.attempts >= MAX_ATTEMPTS:
            self._retries.pop(outgoing.id, None)
            self._give_up(outgoing, f"{exc} (after {retry.attempts} attempts)")
            return
        retry.not_before = now + self.ctx.policy.message.delay(retry.attempts)
        self._retries[outgoing.id] = retry
        waiting.append(retry.not_before)
        log.warning(
            "message %s refused, retrying in %.1fs: %s",
            outgoing.id,
            retry.not_before - now,
            exc,
            extra={"integration": self.integ.name, "meeting_uid": outgoing.meeting_uid},
        )

    def _give_up(self, outgoing: Outgoing, reason: str) -> None:
        replacement = self._instructions_by_mail(outgoing) if outgoing.kind == "update" else None
        self.queue.fail(outgoing.id, reason, replacement)
        self._replaced = self._replaced or replacement is not None
        self._retries.pop(outgoing.id, None)
        self._unsure.discard(outgoing.id)
        log.log(
            # an update the instructions by mail stand in for needs no admin (organizers outside
            # the application's scope, by design on some tenants): the alarm waits for the mail
            logging.WARNING if replacement else logging.ERROR,
            "%s %s failed for good: %s%s",
            outgoing.kind,
            outgoing.id,
            reason,
            "; the organizer gets the joining instructions by mail" if replacement else "",
            extra={
                "integration": self.integ.name,
                "meeting_uid": outgoing.meeting_uid,
                "correlation_id": outgoing.correlation_id,
            },
        )
        unresolved = self._unresolved()
        if unresolved:
            self.ctx.alarms.raise_(
                self.integ.name,
                FAILED_ALARM,
                f"{unresolved} message(s) could not be delivered; "
                f"latest: {outgoing.kind} for {outgoing.meeting_uid}: {reason}",
            )

    def _fields(self, message: Outgoing) -> dict[str, str]:
        """What a line about one message carries for the log's readers (JSON logs, searches)."""
        return {
            "integration": self.integ.name,
            "meeting_uid": message.meeting_uid,
            "message_id": message.id,
            "correlation_id": message.correlation_id,
            "outcome": message.outcome,
            "reason": message.reason,
        }

    def _unresolved(self) -> int:
        """Failed messages that still need an admin: all but organizer updates whose joining
        instructions by mail went out instead (or are on their way; if that mail fails too,
        both count)."""
        failed = self.queue.failed()
        gone = {f.message.id for f in failed}
        return sum(
            1 for f in failed if f.message.kind != "update" or answers.notice_id(f.message) in gone
        )

    def _instructions_by_mail(self, update: Outgoing) -> Outgoing:
        return answers.instructions_by_mail(self.integ, update)

    def _record(self, sent: list[Outgoing]) -> None:
        if not sent:
            return
        self.gateway.sync()
        self.queue.done(m.id for m in sent)
        for message in sent:
            if message.id in self._reached:  # logged when found: nothing went out now
                self._reached.discard(message.id)
                continue
            log.info(
                "sent %s %s %s to %s",
                message.kind,
                message.outcome,
                message.reason,
                ", ".join(message.recipients),
                extra=self._fields(message),
            )


def _responds(outgoing: Outgoing) -> bool:
    """A reply that answers the request item itself (EWS AcceptItem/DeclineItem)."""
    return outgoing.kind == "reply" and bool(outgoing.extra.get("item_id"))
