"""Answering through Microsoft Graph: accept or decline on the room's event (the Calendar
Attendant placed it tentatively, AutomateProcessing AutoUpdate) with the rendered text as
comment and sendResponse, many in $batch requests; organizer updates as a PATCH of the
organizer's event body, found by its iCalUId (where the application's scope refuses it, 403,
the update fails for good and the notifier mails the organizer the joining instructions
instead); plain mails through sendMail; whether a message whose answer was lost took effect
(`delivered`). An answered message then leaves the inbox, with the other removals the poller
marked, at the next `sync`.

Exactly once: an answer Graph carried out (202) is noted at once (`_answered`) and its message's
removal queued; the call reports the message delivered, so the notifier marks it durably before
anything else is tried. The removal is only ever retried by `sync`, alone: a throttled or failed
removal never sends the answer again. Each removal is queued once, however many paths ask for
it (the answer, `delivered` after a restart, the poller re-reading the message).

`GraphSending` holds what reading and answering share about the inbox's messages; the gateway,
`graph.GraphMailbox`, adds the reading.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from vmrsched.config import IntegrationConfig
from vmrsched.htmltext import text_of
from vmrsched.mailbox.base import GatewayError, Mailbox, Outgoing
from vmrsched.mailbox.graph_http import GraphClient
from vmrsched.telemetry import Metrics

log = logging.getLogger("vmrsched.graph")

REFUSALS_BEFORE_ALARM = 3  # syncs in a row whose removals were refused before `untidy` says so
REMEMBERED = 4096  # messages removed lately, remembered so that nothing removes them again


@dataclass(frozen=True)
class Removal:
    """A removal for sync(): a message deleted or moved to Deleted Items, or a room's event
    deleted; `item_id` names the inbox message it takes away."""

    operation: str  # the metrics label
    method: str
    url: str
    item_id: str = ""
    body: Any = None


class GraphSending(GraphClient, Mailbox):
    """The answering half of the Graph gateway, and the state both halves share.

    Threads: the poller (reading, marking handled) and the notifier (answering) change the same
    maps and sets: which room event a message is, which messages are handed off to a reply or
    answered, the removals waiting for `sync`. All of it is guarded by `_state`, a lock never
    held during a call to Graph. `sync` runs on both threads: each takes the removals pending
    when it starts, so two never make the same call."""

    # a resend is not harmless (a second response or organizer update): each message is marked
    # delivered as soon as Graph took it
    idempotent_send = False
    # responses to meeting messages go out together, in $batch requests
    bulk_send = True

    def __init__(self, integ: IntegrationConfig, metrics: Metrics) -> None:
        super().__init__(integ, metrics)
        self._state = threading.Lock()
        self._events: dict[str, str] = {}  # message id -> the room's event id
        self._pending: list[Removal] = []  # removals for sync()
        self._handed_off: set[str] = set()  # answered by a queued reply: not fetched again
        self._answered: set[str] = set()  # answered here; the message's removal still pending
        self._removing: dict[str, str] = {}  # removals a sync is making now: URL -> item id
        self._removed: dict[str, None] = {}  # messages removed lately (oldest first)
        # syncs in a row whose removals were refused (not throttled), and the latest refusal
        self._refusals = 0
        self._refusal = ""

    # --- removals ------------------------------------------------------------------------------

    def _removal(self, item_id: str) -> Removal:
        return Removal("delete_message", "DELETE", f"{self.base}/messages/{item_id}", item_id)

    def _queue_removal(self, removal: Removal) -> None:
        """Queue a removal for `sync` unless it is queued, being made or done already: two
        paths can ask for the same one (a reply's answer or `delivered`, and the poller reading
        the message again after a restart), and one call each is enough. Under `_state`."""
        if (
            removal.url in self._removing
            or any(r.url == removal.url for r in self._pending)
            or (removal.item_id and removal.item_id in self._removed)
        ):
            return
        self._pending.append(removal)

    def _skipped(self) -> set[str]:
        """Messages the listing leaves out: handed off to a reply, answered, or on their way out
        of the inbox (their removal queued, being made or just made). Under `_state`."""
        leaving = {r.item_id for r in self._pending if r.item_id}
        leaving |= {item_id for item_id in self._removing.values() if item_id}
        return self._handed_off | self._answered | leaving | set(self._removed)

    def sync(self) -> None:
        """The removals (and moves to Deleted Items) marked since the last sync, in batches.
        Items already gone are fine (reprocessing after a crash); anything else stays queued for
        the next sync (a throttled one waits out Graph's Retry-After with every other call) and
        is logged, never raised: what is left is tidying the inbox, and it must not stand in the
        way of the notifier's durable delivery mark (the answers went out already). A removed
        message is no longer skipped by the listing."""
        with self._state:
            pending, self._pending = self._pending, []
            self._removing.update((r.url, r.item_id) for r in pending)
        if not pending:
            return
        try:
            results = self.batch(
                [(r.method, r.url, r.body) for r in pending],
                "delete",
                [r.operation for r in pending],
            )
        finally:
            with self._state:
                for removal in pending:
                    self._removing.pop(removal.url, None)
        failed = [
            (removal, answer)
            for removal, answer in zip(pending, results, strict=True)
            if answer.status >= 300 and answer.status != 404
        ]
        gone = {r.item_id for r in pending if r.item_id} - {r.item_id for r, _ in failed}
        with self._state:
            self._pending[:0] = [removal for removal, _ in failed]
            self._handed_off -= gone
            self._answered -= gone
            for item_id in gone:
                self._removed[item_id] = None
            while len(self._removed) > REMEMBERED:
                del self._removed[next(iter(self._removed))]
        if failed:
            removal, answer = failed[0]
            first = self._part_error(answer, f"{removal.method} {removal.url}")
        with self._state:
            if not failed:
                self._refusals, self._refusal = 0, ""
            elif not first.retry_after:  # throttling is waited out, not reported
                self._refusals += 1
                self._refusal = (
                    f"{len(failed)} handled messages could not be removed from the inbox "
                    f"({self._refusals} tries in a row): {first}"
                )
        if failed:
            log.log(
                # a wait Graph asked for is logged once, when it starts (GraphClient._held)
                logging.DEBUG if first.retry_after else logging.WARNING,
                "%d handled messages could not be removed yet, retried with the next sync: %s",
                len(failed),
                first,
                extra={"integration": self.name},
            )

    def untidy(self) -> str | None:
        """The removals' refusal once REFUSALS_BEFORE_ALARM syncs in a row were refused (a
        blip of one server error reports nothing)."""
        with self._state:
            return self._refusal if self._refusals >= REFUSALS_BEFORE_ALARM else None

    def _answered_now(self, item_ids: Sequence[str]) -> None:
        """Graph carried out these messages' answers: never answered again by this process
        (skipped by the listing, and by a retry of the sending), their removal queued."""
        with self._state:
            self._answered.update(item_ids)
            for item_id in item_ids:
                self._events.pop(item_id, None)
                self._queue_removal(self._removal(item_id))

    # --- sending -------------------------------------------------------------------------------

    def send(self, message: Outgoing) -> None:
        if message.kind == "reply" and message.extra.get("item_id"):
            self._respond(message)
        elif message.kind == "update":
            self._update_organizer(message)
        else:
            self._mail(message)

    def send_many(self, messages: Sequence[Outgoing]) -> list[BaseException | None]:
        """Responses to meeting messages together: the accepts and declines in $batch requests,
        then the answered messages' removal in more. Each message's outcome on its own (None:
        delivered): a throttled part waits and is sent again alone, a refused one fails alone;
        a message already gone was answered before a restart and is not answered again."""
        outcomes: list[BaseException | None] = [None] * len(messages)
        calls: list[tuple[int, tuple[str, str, Any]]] = []
        for index, message in enumerate(messages):
            item_id = str(message.extra["item_id"])
            with self._state:
                event_id = self._events.get(item_id)
                if item_id in self._answered:
                    continue  # answered already; only its removal is left (the next sync)
            if event_id is None:  # not read by this process: the careful way, alone
                outcomes[index] = self._send_one(message)
                continue
            action = "accept" if message.outcome == "accepted" else "decline"
            comment = {"comment": text_of(message.html_body), "sendResponse": True}
            calls.append((index, ("POST", f"{self.base}/events/{event_id}/{action}", comment)))
        answered: list[str] = []
        results = self.batch([call for _, call in calls], "respond") if calls else []
        unknown = next((a.error for a in results if a.error and a.error.outcome_unknown), None)
        for (index, (_, url, _)), answer in zip(calls, results, strict=True):
            message = messages[index]
            item_id = str(message.extra["item_id"])
            if answer.status < 300 or answer.status == 404:
                if answer.status == 404:
                    log.info(
                        "the room's event for %s is gone; not answered again",
                        item_id,
                        extra={"integration": self.name, "meeting_uid": message.meeting_uid},
                    )
                answered.append(item_id)
            else:
                outcomes[index] = self._part_error(answer, f"POST {url}")
        if answered:
            self._answered_now(answered)
            self.sync()
        if unknown is not None:
            raise unknown  # some of the lot may have gone out unseen: each is checked first
        return outcomes

    def _send_one(self, message: Outgoing) -> BaseException | None:
        try:
            self.send(message)
        except GatewayError as exc:
            return exc
        return None

    def _respond(self, message: Outgoing) -> None:
        """Accept or decline the message's room event. Once Graph has carried it out the answer
        is noted and the message's removal queued for `sync`: nothing after the answer can
        fail this send, so the answer is never made twice by retrying it. A message Graph no
        longer has fails the send (ErrorItemNotFound, permanent): the notifier asks `delivered`
        first about any message that may have been answered already, so here nothing was
        answered, and the organizer got no answer."""
        item_id = str(message.extra["item_id"])
        with self._state:
            if item_id in self._answered:
                return  # carried out already; only its removal is left (the next sync)
            event_id = self._events.get(item_id)
        action = "accept" if message.outcome == "accepted" else "decline"
        if event_id is None:
            event_id = self._event_of_unanswered(item_id, action)
        try:
            self.call(
                "POST",
                f"{self.base}/events/{event_id}/{action}",
                action,
                json={"comment": text_of(message.html_body), "sendResponse": True},
            )
        except GatewayError as exc:
            if _not_found(exc):
                log.info(
                    "the room's event for %s is gone; not answered again",
                    item_id,
                    extra={"integration": self.name, "meeting_uid": message.meeting_uid},
                )
                self._forget(item_id)
                return
            raise
        self._answered_now([item_id])

    def _event_of_unanswered(self, item_id: str, action: str) -> str:
        """The room event of a message not answered yet; the message gone is that send's
        permanent failure."""
        try:
            return self._event_of(item_id)
        except GatewayError as exc:
            if not _not_found(exc):
                raise
            self._forget(item_id)
            raise GatewayError(
                f"meeting message {item_id} is gone (ErrorItemNotFound): removed from the "
                f"room's mailbox (by hand, or by another client) before its {action} went out; "
                "the organizer got no answer",
                permanent=True,
                code="ErrorItemNotFound",
            ) from exc

    def delivered(self, message: Outgoing) -> bool:
        """Whether a message whose sending may have taken effect already did: one queued before
        a restart (the crash came between Graph's answer and the queue's delivery mark), or one
        whose call got no answer (a timeout, a connection dropped). A reply: the room's event
        already carries that response (then only the message is left to remove), or the message
        is gone. An organizer update: the organizer's meeting already carries the new alias."""
        if message.kind == "reply" and message.extra.get("item_id"):
            return self._reply_delivered(message)
        if message.kind == "update" and message.extra.get("alias_id"):
            for event in self._organizer_events(message, "id,body"):
                content = str((event.get("body") or {}).get("content", ""))
                if f"PXPS:-{message.extra['alias_id']}#" in content:
                    return True
        return False

    def _reply_delivered(self, message: Outgoing) -> bool:
        """A reply: the room's event carries its response, or its message is gone from the
        room's mailbox. An answered message leaves the inbox, so a message Graph no longer has
        was answered (before a restart, or an answer lost) and is not answered again; the price,
        as docs/guarantees.md says: one someone deleted by hand in that instant is not either."""
        item_id = str(message.extra["item_id"])
        with self._state:
            if item_id in self._answered:
                return True  # carried out by this process (Graph said 202)
            known = self._events.get(item_id)
        try:
            event_id = known or self._event_of(item_id)
        except GatewayError as exc:
            if not _not_found(exc):
                return self._unknown(exc)
            log.info(
                "meeting message %s is gone from the room's mailbox: it was answered (before a "
                "restart, or an answer lost); not answered again",
                item_id,
                extra={"integration": self.name, "meeting_uid": message.meeting_uid},
            )
            self._forget(item_id)
            return True
        try:
            event = self.call(
                "GET",
                f"{self.base}/events/{event_id}",
                "get_event",
                params={"$select": "responseStatus"},
            ).json()
        except GatewayError as exc:
            return self._unknown(exc)
        wanted = "accepted" if message.outcome == "accepted" else "declined"
        if (event.get("responseStatus") or {}).get("response") != wanted:
            return False
        self._answered_now([item_id])  # only the message is left to remove
        return True

    @staticmethod
    def _unknown(exc: GatewayError) -> bool:
        """A refusal while asking: not delivered as far as can be told (sending finds out and
        says so); anything else is raised, to be asked again."""
        if exc.permanent:
            return False
        raise exc

    def _forget(self, item_id: str) -> None:
        with self._state:
            self._handed_off.discard(item_id)
            self._answered.discard(item_id)
            self._events.pop(item_id, None)

    def _event_of(self, item_id: str) -> str:
        message = self.call(
            "GET",
            f"{self.base}/messages/{item_id}",
            "get_message",
            params={"$expand": "microsoft.graph.eventMessage/event($select=id)"},
        ).json()
        event = message.get("event") or {}
        if not event.get("id"):
            # The Calendar Attendant puts the request on the room's calendar a moment after the
            # message arrives: retried on its own with the message's backoff, and failed only
            # once the retries are spent (then: is the room's AutomateProcessing AutoUpdate?)
            raise GatewayError(
                "the meeting message has no event in the room's calendar yet (is the room's "
                "AutomateProcessing AutoUpdate?)",
                code="NoRoomEvent",
            )
        return str(event["id"])

    def _organizer_events(self, message: Outgoing, select: str) -> list[dict[str, Any]]:
        uid = message.meeting_uid.replace("'", "''")
        found = self.call(
            "GET",
            f"{self.api}/users/{quote(message.sender)}/events",
            "find_organizer_event",
            params={"$filter": f"iCalUId eq '{uid}'", "$select": select},
        ).json()
        return list(found.get("value", []))

    def _update_organizer(self, message: Outgoing) -> None:
        organizer = message.sender
        events = self._organizer_events(message, "id")
        if not events:
            raise GatewayError(
                f"the organizer's meeting {message.meeting_uid} is not in {organizer}'s calendar",
                permanent=True,
                code="ErrorItemNotFound",
            )
        for event in events:
            self.call(
                "PATCH",
                f"{self.api}/users/{quote(organizer)}/events/{event['id']}",
                "update_organizer_event",
                json={"body": {"contentType": "html", "content": message.html_body}},
            )

    def _mail(self, message: Outgoing) -> None:
        self.call(
            "POST",
            f"{self.base}/sendMail",
            "send_mail",
            json={
                "message": {
                    "subject": message.subject,
                    "body": {"contentType": "html", "content": message.html_body},
                    "toRecipients": [
                        {"emailAddress": {"address": address}} for address in message.recipients
                    ],
                    "internetMessageHeaders": [
                        {"name": "X-Vmrsched-Outcome", "value": message.outcome},
                        {"name": "X-Vmrsched-Correlation-Id", "value": message.correlation_id},
                    ],
                },
                "saveToSentItems": True,
            },
        )


def _not_found(exc: GatewayError) -> bool:
    """Graph no longer has what was asked for (404 ErrorItemNotFound)."""
    return exc.permanent and exc.code in ("ErrorItemNotFound", "http_404")
