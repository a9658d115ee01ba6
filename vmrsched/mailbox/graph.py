"""The Exchange Online backend: the room mailbox through Microsoft Graph v1.0, app-only (client
credentials through msal), plain HTTPS calls on one pooled session per integration.

Reading (here): the room inbox's messages, oldest first; a meeting message is read from its MIME
content (`$value`) with the same iTIP parser as the other backends, so every backend decides
alike. A handled message leaves the inbox at the next `sync`; a cancellation removes the room's
event too. The rest lives in modules of its own:

    graph_http           tokens, calls, errors, $batch (graph_batch: the chains)
    graph_sending        responses, organizer updates, mails, `delivered`, the removals (`sync`)
    graph_notifications  change notifications, the subscription, the delta catch-up
    graph_convert        Graph's JSON as meetings, times, text
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from vmrsched.config import IntegrationConfig
from vmrsched.mailbox import itip
from vmrsched.mailbox.base import CalendarEntry, Check, GatewayError, InboxItem
from vmrsched.mailbox.graph_convert import address_of, is_meeting, meeting_of, rrule_of, when
from vmrsched.mailbox.graph_notifications import GraphStateStore, InboxWatch
from vmrsched.mailbox.graph_sending import GraphSending, Removal
from vmrsched.rules.meetings import Meeting
from vmrsched.telemetry import EXCHANGE_UNREACHABLE, Metrics

__all__ = ["GraphMailbox", "rrule_of"]

log = logging.getLogger("vmrsched.graph")
MAX_PAGE = 1000  # messages in one listing (Graph: $top from 1 to 1000)


class GraphMailbox(GraphSending):
    """The Graph gateway: reading and handling here, answering in GraphSending, the calls in
    GraphClient, change notifications in an InboxWatch.

    Threads: what the poller and the notifier share (the message's room event, cancellations,
    messages handed off or answered, removals waiting for `sync`) is guarded by one lock,
    `_state`, never held during a call; the calls share one pooled session, a token source with
    its own lock and the slots that keep at most max_concurrent_requests calls in flight. The
    listing's state (the backlog, the InboxWatch's subscription and delta link) is the poller's
    alone; `notified`, on the event loop, only sets the watch's Events."""

    alarm = EXCHANGE_UNREACHABLE

    def __init__(
        self, integ: IntegrationConfig, metrics: Metrics, state: Path | GraphStateStore
    ) -> None:
        super().__init__(integ, metrics)
        self._cancels: set[str] = set()  # messages that are cancellations
        self._backlog = False
        self.watch = InboxWatch(self, integ.graph.notification_url, state)

    def poll_interval(self, integ: IntegrationConfig) -> float:
        return integ.graph.poll_interval_seconds

    # --- reading -------------------------------------------------------------------------------

    def fetch(self, limit: int) -> Sequence[InboxItem]:
        """New items, oldest first. With change notifications the inbox is listed only when a
        notification came, when the last listing was full, or every CATCH_UP_SECONDS. Removals
        an earlier sync could not make go out first (the listing leaves their messages out)."""
        with self._state:
            leftover = bool(self._pending)
        if leftover:
            self.sync()
        if not self.watch.should_list(self._backlog):
            return []
        with self._state:
            handed_off = self._skipped()  # answered or on their way out: not read again
        top = min(MAX_PAGE, limit + len(handed_off))
        listing = self.call(
            "GET",
            f"{self.base}/mailFolders/inbox/messages",
            "list_inbox",
            params={
                "$select": "id,receivedDateTime,subject,from,sender",
                "$orderby": "receivedDateTime",
                "$top": str(top),
                "$expand": "microsoft.graph.eventMessage/event($select=id)",
            },
        ).json()
        fresh = [m for m in listing.get("value", []) if m["id"] not in handed_off]
        self._backlog = len(listing.get("value", [])) >= top or len(fresh) > limit
        chosen = fresh[:limit]
        meetings = [m for m in chosen if is_meeting(m)]
        # the meeting messages' MIME content, a batch at a time instead of a call each
        contents = self.batch(
            [("GET", f"{self.base}/messages/{m['id']}/$value", None) for m in meetings],
            "get_mime",
        )
        raw: dict[str, bytes] = {}
        for message, answer in zip(meetings, contents, strict=True):
            if answer.status == 404:
                continue  # gone since the listing (someone else moved it)
            if answer.status >= 300:
                raise self._part_error(answer, "GET $value")
            raw[message["id"]] = base64.b64decode(answer.body or "")
        items: list[InboxItem] = []
        for message in chosen:
            if is_meeting(message) and message["id"] not in raw:
                continue
            items.append(self._to_inbox_item(message, raw.get(message["id"], b"")))
        return items

    def _to_inbox_item(self, message: dict[str, Any], raw: bytes) -> InboxItem:
        message_id = str(message["id"])
        received = when(message.get("receivedDateTime"))
        sender = (message.get("from") or {}).get("emailAddress") or {}
        sender_email, sender_name = sender.get("address", ""), sender.get("name", "")
        subject = message.get("subject") or ""
        kind = message.get("@odata.type", "")
        if not is_meeting(message):
            return InboxItem(
                message_id,
                received,
                error=f"not a meeting message ({kind or 'a mail'})",
                sender_email=sender_email,
                sender_name=sender_name,
                subject=subject,
                not_meeting=True,
            )
        event = message.get("event") or {}
        if event.get("id"):
            with self._state:
                self._events[message_id] = str(event["id"])
        try:
            parsed = itip.parse_mail(raw, self.integ.timezone)
        except itip.ParseError as exc:
            return InboxItem(
                message_id,
                received,
                error=exc.reason,
                sender_email=exc.organizer_email or sender_email,
                sender_name=exc.organizer_name or sender_name,
                subject=exc.subject or subject,
                uid=exc.uid,
                sequence=exc.sequence,
                not_meeting=exc.not_meeting,
                auto_submitted=exc.auto_submitted,
            )
        if parsed.method == "CANCEL":
            with self._state:
                self._cancels.add(message_id)
        # who sent it, as Exchange has it: it decides whether the message may change a booking
        parsed = itip.sent_in_mail(
            parsed, address_of(message, "from"), address_of(message, "sender")
        )
        return InboxItem(
            message_id, received, meetings=parsed.meetings, auto_submitted=parsed.auto_submitted
        )

    # --- handling ------------------------------------------------------------------------------

    def mark_handled(self, item_id: str, replied: bool = False, refused: bool = False) -> None:
        """Replied: the reply removes the message once it is sent. Otherwise the message leaves
        the inbox at the next sync (a batch for the poll); a cancellation also takes the room's
        event with it, unless `refused` (not from the meeting's organizer: the room keeps it)."""
        with self._state:
            if replied:
                self._handed_off.add(item_id)
                return
            event_id = self._events.pop(item_id, None)
            if event_id is not None and item_id in self._cancels and not refused:
                self._queue_removal(
                    Removal("delete_event", "DELETE", f"{self.base}/events/{event_id}")
                )
            self._cancels.discard(item_id)
            self._queue_removal(self._removal(item_id))

    def quarantine(self, item_id: str, reason: str) -> None:
        """To Deleted Items at the next sync (with the poll's other removals)."""
        log.info(
            "moving message to Deleted Items: %s",
            reason,
            extra={"integration": self.name, "item": item_id},
        )
        with self._state:
            self._queue_removal(
                Removal(
                    "move_message",
                    "POST",
                    f"{self.base}/messages/{item_id}/move",
                    item_id,
                    {"destinationId": "deleteditems"},
                )
            )

    def record_accepted(self, meeting: Meeting) -> None:
        """Accepting the room's event is what puts it in the calendar: nothing more to do."""

    # --- the resource calendar (recovery) -----------------------------------------------------

    def calendar(self, start: datetime, end: datetime) -> Sequence[CalendarEntry]:
        """Accepted meetings on the room's calendar between `start` and `end`, one entry per
        meeting (a series once, from its master), for the recovery tool."""
        view = self.call(
            "GET",
            f"{self.base}/calendarView",
            "calendar_view",
            params={
                "startDateTime": start.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "endDateTime": end.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "$select": "id,iCalUId,seriesMasterId,isCancelled,responseStatus",
                "$top": "1000",
            },
            headers={"Prefer": 'outlook.timezone="UTC"'},
        ).json()
        wanted: dict[str, str] = {}  # event id (a series' master) -> iCalUId
        for event in view.get("value", []):
            response = (event.get("responseStatus") or {}).get("response")
            if event.get("isCancelled") or response not in ("accepted", "organizer"):
                continue
            wanted.setdefault(str(event.get("seriesMasterId") or event["id"]), event["iCalUId"])
        fields = "id,iCalUId,subject,body,start,end,organizer,attendees,recurrence"
        results = self.batch(
            [
                ("GET", f"{self.base}/events/{event_id}?$select={fields}", None)
                for event_id in wanted
            ],
            "get_event",
        )
        entries: list[CalendarEntry] = []
        for event_id, answer in zip(wanted, results, strict=True):
            if answer.status >= 300:
                raise self._part_error(answer, f"GET event {event_id}")
            try:
                entries.append(CalendarEntry(meeting_of(answer.body, self.room), event_id))
            except (KeyError, ValueError) as exc:
                log.warning(
                    "unreadable calendar event: %r",
                    exc,
                    extra={"integration": self.name, "item": event_id},
                )
        return entries

    # --- change notifications and checks ----------------------------------------------------

    def notified(self, notifications: Sequence[dict[str, Any]]) -> tuple[int, int]:
        """Change and lifecycle notifications posted to our notification URL: (accepted,
        refused). Any thread; quick (Graph wants an answer within 3 s). One whose clientState
        is not ours is refused: someone else posting to the URL."""
        return self.watch.notified(notifications)

    def probe(self, organizer: str = "", outside: str = "") -> list[Check]:
        """What check-config --online reports: a token, the room's inbox readable, and, given
        an organizer's address, whether the app's scope lets it update that organizer's
        meetings (the scope itself cannot be listed through Graph); given a mailbox that
        should be out of reach, whether it is (None, a warning, when the app reads it:
        tenant-wide consent reaches every mailbox whatever the RBAC scope says)."""
        out: list[Check] = []
        try:
            self.tokens.get()
        except GatewayError as exc:
            return [(False, f"token for app {self.integ.graph.client_id}: {exc}")]
        out.append((True, f"token for app {self.integ.graph.client_id} from the identity platform"))
        try:
            self.call("GET", f"{self.base}/mailFolders/inbox", "probe", params={"$select": "id"})
            out.append((True, f"room mailbox {self.room} is readable"))
        except GatewayError as exc:
            out.append(
                (
                    False,
                    f"cannot read the inbox of {self.room}: {exc} (the room must be in the "
                    "management scope of the app's RBAC for Applications role assignments)",
                )
            )
        if organizer:
            try:
                self.call(
                    "GET",
                    f"{self.api}/users/{quote(organizer)}/events",
                    "probe_organizer",
                    params={"$top": "1", "$select": "id"},
                )
                out.append((True, f"organizer {organizer}: meetings can be updated"))
            except GatewayError as exc:
                out.append(
                    (
                        False,
                        f"organizer {organizer} is outside the app's scope ({exc}); their "
                        "meetings get the joining instructions by mail instead",
                    )
                )
        if outside:
            out.append(self._probe_outside(outside))
        return out

    def _probe_outside(self, address: str) -> Check:
        try:
            self.call(
                "GET",
                f"{self.api}/users/{quote(address)}/mailFolders/inbox",
                "probe_outside",
                params={"$select": "id"},
            )
        except GatewayError as exc:
            if exc.code in ("ErrorAccessDenied", "http_403"):  # what an RBAC scope answers
                return True, f"{address} is out of reach: the app's access ends at its scope"
            return False, f"could not try {address}: {exc}"
        return None, (
            f"the app reads the mailbox of {address}, outside its RBAC for Applications "
            "scope: it holds tenant-wide (admin) consent for Microsoft Graph application "
            "permissions (Mail.*, Calendars.*), which reaches every mailbox in the tenant "
            "whatever the scope says (Entra and RBAC grants add up). Remove that consent from "
            "the app (Entra ID > Enterprise applications > the app > Permissions) and keep "
            "only the scoped role assignments"
        )
