"""A fake Microsoft Graph v1.0 for mailboxes and calendars, from Microsoft's documentation, over
real HTTP so the service's own Graph client runs unmodified:

- Bearer tokens issued by the fake identity platform (tests/fakes/identity_platform.py); an
  expired or unknown one is answered 401 InvalidAuthenticationToken.
- A meeting request delivered to a room arrives in its inbox as an eventMessageRequest and,
  as the Calendar Attendant does with AutomateProcessing AutoUpdate, puts a tentative event in
  the room's calendar (the same event for later updates of the meeting). The attendant works
  on its own time: with `calendar_lag` the event appears that many seconds after the message
  (until then the message's `event` is absent and the event unknown), or when
  `calendar_catch_up` is called; the organizer's own
  calendar holds the organizer's event. A cancellation arrives as an eventMessage with
  meetingMessageType meetingCancelled.
- GET messages (with $top, $expand of the eventMessage's event, @odata.type per message),
  GET messages/{id}/$value (the MIME content), DELETE messages/{id}, POST messages/{id}/move,
  POST events/{id}/accept|decline (202; with sendResponse the organizer gets the response),
  DELETE events/{id}, GET events?$filter=iCalUId eq '…', PATCH events/{id}, POST sendMail (202).
- The organizer's PATCH of an event reaches every attendee, the room included, as an update
  (same SEQUENCE: an informational update), as Exchange does.
- Who the app may reach, as Microsoft adds up its grants: Exchange's RBAC for Applications
  role assignments reach the mailboxes of their management scope (`scope`; None: assignments
  without a scope, every mailbox), and tenant-wide admin consent to the Graph application
  permissions in Entra (`tenant_wide_consent`) reaches every mailbox whatever the scope says.
  A mailbox out of reach is answered 403 ErrorAccessDenied on every call.
- $batch: up to 20 parts, run concurrently, or one after another when they name the parts they
  depend on (dependsOn; a part after a failed one answered 424 Failed Dependency).
- Throttling: `throttle_next` requests (or the calls given to `throttle`, with the Retry-After
  given) answered 429 TooManyRequests with Retry-After, a part of a $batch on its own (the
  batch 200, the part 429 with Retry-After in its own headers); `timeline` keeps when each
  request and sub-request arrived, `throttled_at` when each 429 went out; more than
  4 concurrent requests for one mailbox are answered 429 too (Graph's limit), and counted.
- A refusal on demand (`refuse`): the calls given answered with the status and error code given
  (say 400 ErrorInvalidRequest, which no retry changes), on their own or inside a $batch.
- Unknown items: 404 ErrorItemNotFound.
- An answer lost on demand (`lose_answer`): the call is carried out, then its answer is held
  longer than the client waits (`hold_seconds`), or the connection is dropped before any answer
  (a $batch loses its answer when one of its parts matches).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import unquote, urlencode

import aiohttp
import requests
from aiohttp import web
from dateutil.rrule import rrulestr

from tests.fakes.ews_server import meeting_to_imip
from vmrsched.rules.meetings import Meeting


def new_id(prefix: str) -> str:
    return prefix + secrets.token_urlsafe(24)


@dataclass
class Message:
    id: str
    meeting: Meeting | None
    kind: str  # meetingRequest | meetingCancelled | mail
    received: datetime
    event_id: str | None = None
    subject: str = ""
    sender: str = ""
    sender_name: str = ""
    mime: bytes = b""


@dataclass
class Event:
    id: str
    uid: str
    meeting: Meeting
    organizer: bool = False
    response: str = "tentativelyAccepted"
    cancelled: bool = False


@dataclass
class Mailbox:
    address: str
    inbox: dict[str, Message] = field(default_factory=dict)
    changes: list[tuple[str, str]] = field(default_factory=list)  # (created|removed, id)
    events: dict[str, Event] = field(default_factory=dict)
    deleted: list[Message] = field(default_factory=list)
    arriving: dict[str, Event] = field(default_factory=dict)  # not on the calendar yet


@dataclass
class Response:
    """What the room answered: to whom, for which meeting, accept or decline, with what text."""

    room: str
    uid: str
    action: str
    comment: str


class FakeGraph:
    def __init__(self, valid_token: Callable[[str], bool]) -> None:
        self.valid_token = valid_token
        self.lock = threading.Lock()
        self.mailboxes: dict[str, Mailbox] = {}
        self.responses: list[Response] = []
        self.mails: list[dict[str, Any]] = []  # sendMail bodies, with "from"
        self.patches: list[tuple[str, str]] = []  # (organizer, uid) patched
        # the RBAC for Applications management scope: mailboxes the app's role assignments
        # reach (None: every mailbox); tenant-wide consent in Entra reaches them all anyway
        self.scope: set[str] | None = None
        self.tenant_wide_consent = False
        self.throttle_next = 0
        # (method, path pattern, Retry-After): one 429 each
        self.throttling: list[tuple[str, str, str]] = []
        # (method, path pattern, status, code): one refusal each, nothing carried out
        self.refusing: list[tuple[str, str, int, str]] = []
        self.timeline: list[tuple[float, str, str, bool]] = []  # (monotonic, method, path, batched)
        # when each 429 left: its own answer, or the $batch answer carrying it (monotonic)
        self.throttled_at: list[float] = []
        self.calendar_lag = 0.0  # seconds before the Calendar Attendant adds a request's event
        self.requests: list[tuple[str, str]] = []  # HTTP requests made to Graph
        self.batched = 0  # sub-requests that arrived inside a $batch
        self.batched_calls: list[tuple[str, str]] = []  # (method, path) of those sub-requests
        self.subscriptions: dict[str, dict[str, Any]] = {}
        self.delta_epoch = 1  # bumped by expire_delta_tokens: older tokens answer 410
        self.delta_calls = 0
        self.silent = False  # True: no change notifications are sent (they got lost)
        self.subscription_minutes = 4230  # the longest Graph grants here for messages
        self.validations: list[str] = []  # notification URLs validated
        self.notified: list[tuple[str, int]] = []  # (url, HTTP status of our POST)
        self.concurrent: dict[str, int] = {}
        self.max_concurrent = 0
        self.over_limit = 0
        # answers to lose: (method, path pattern, "hold" | "drop"), each used once
        self.losing: list[tuple[str, str, str]] = []
        self.hold_seconds = 2.0
        self.lost: list[tuple[str, str, str]] = []  # (method, path, how) of answers lost

    # --- the world ---------------------------------------------------------------------------

    def mailbox(self, address: str) -> Mailbox:
        key = address.lower()
        if key not in self.mailboxes:
            self.mailboxes[key] = Mailbox(address)
        return self.mailboxes[key]

    def deliver(
        self, room: str, meeting: Meeting, organizer_copy: bool = True, sender: str = ""
    ) -> Message:
        """The organizer sends a meeting request or a cancellation to the room (and others);
        or, with `sender`, someone else sends one that names the organizer (the message's from
        and sender are theirs)."""
        with self.lock:
            return self._deliver(room, meeting, organizer_copy, sender)

    def _deliver(
        self, room: str, meeting: Meeting, organizer_copy: bool, sender: str = ""
    ) -> Message:
        box = self.mailbox(room)
        cancel = meeting.method == "CANCEL"
        known = [*box.events.values(), *box.arriving.values()]
        event = next((e for e in known if e.uid == meeting.uid), None)
        if event is None and not cancel:
            event = Event(new_id("AAMkEv"), meeting.uid, meeting)
            if self.calendar_lag > 0:  # the Calendar Attendant gets to it in a moment
                box.arriving[event.id] = event
                if self.calendar_lag < 3600:
                    timer = threading.Timer(self.calendar_lag, self.calendar_catch_up)
                    timer.daemon = True
                    timer.start()
            else:
                box.events[event.id] = event
        elif event is not None:
            if cancel:
                event.cancelled = True
            else:
                event.meeting = meeting
        message = Message(
            new_id("AAMkMsg"),
            meeting,
            "meetingCancelled" if cancel else "meetingRequest",
            datetime.now(UTC),
            event.id if event else None,
            meeting.subject,
            sender or meeting.organizer_email,
            sender or meeting.organizer_name,
            meeting_to_imip(meeting, room, sender),
        )
        box.inbox[message.id] = message
        box.changes.append(("created", message.id))
        self._notify(box, message)
        if organizer_copy and not cancel and meeting.organizer_email:
            own = self.mailbox(meeting.organizer_email)
            mine = next((e for e in own.events.values() if e.uid == meeting.uid), None)
            if mine is None:
                mine = Event(new_id("AAMkOrg"), meeting.uid, meeting, organizer=True)
                own.events[mine.id] = mine
            else:
                mine.meeting = meeting
        return message

    def calendar_catch_up(self) -> None:
        """The Calendar Attendant puts the requests waiting for it on their rooms' calendars."""
        with self.lock:
            for box in self.mailboxes.values():
                box.events.update(box.arriving)
                box.arriving.clear()

    def _notify(self, box: Mailbox, message: Message) -> None:
        """Change notifications for a new message in a subscribed inbox, posted from another
        thread as Graph does (a moment after the change, never inside the request)."""
        if self.silent:
            return  # notifications get lost: the subscriber must catch up by itself
        for subscription in self.subscriptions.values():
            if box.address.lower() not in subscription["resource"].lower():
                continue
            note = {
                "subscriptionId": subscription["id"],
                "clientState": subscription.get("clientState", ""),
                "changeType": "created",
                "resource": f"Users/{box.address}/Messages/{message.id}",
                "subscriptionExpirationDateTime": subscription["expirationDateTime"],
                "resourceData": {"@odata.type": "#Microsoft.Graph.Message", "id": message.id},
            }
            self._post_later(subscription["notificationUrl"], [note])

    def lifecycle(self, event: str, client_state: str | None = None) -> None:
        """A lifecycle notification for every subscription (reauthorizationRequired,
        subscriptionRemoved, missed); subscriptionRemoved also removes it here."""
        with self.lock:
            for subscription in list(self.subscriptions.values()):
                note = {
                    "subscriptionId": subscription["id"],
                    "clientState": subscription.get("clientState", "")
                    if client_state is None
                    else client_state,
                    "lifecycleEvent": event,
                }
                if event == "subscriptionRemoved":
                    del self.subscriptions[subscription["id"]]
                url = (
                    subscription.get("lifecycleNotificationUrl") or subscription["notificationUrl"]
                )
                self._post_later(url, [note])

    def _post_later(self, url: str, notes: list[dict[str, Any]]) -> None:
        def post() -> None:
            try:
                response = requests.post(url, json={"value": notes}, timeout=3)
                status = response.status_code
            except requests.RequestException:
                status = 0
            self.notified.append((url, status))

        threading.Thread(target=post, daemon=True).start()

    def lose_answer(self, method: str, path: str, how: str = "hold", times: int = 1) -> None:
        """The next `times` calls of `method` on a path matching `path` (a regular expression
        searched in it; a $batch holding such a part counts as one) are carried out, and then
        their answer is lost: held for `hold_seconds` ("hold": Graph still working as far as
        the client can tell) or the connection closed without one ("drop")."""
        assert how in ("hold", "drop")
        with self.lock:
            self.losing.extend([(method.upper(), path, how)] * times)

    async def _answer_to_lose(self, request: web.Request) -> str | None:
        """Whether this request's answer is to be lost ("hold" or "drop"), using up the rule."""
        if not self.losing or "X-Fake-Batch" in request.headers:
            return None
        calls = [(request.method, request.path)]
        if request.path == "/v1.0/$batch":
            with contextlib.suppress(ValueError):
                calls += [
                    (str(p.get("method", "")).upper(), "/v1.0" + str(p.get("url", "")))
                    for p in (await request.json()).get("requests", [])
                ]
        with self.lock:
            for index, (method, pattern, how) in enumerate(self.losing):
                if any(m == method and re.search(pattern, path) for m, path in calls):
                    del self.losing[index]
                    self.lost.append((request.method, request.path, how))
                    return how
        return None

    def throttle(self, method: str, path: str, times: int = 1, retry_after: int = 1) -> None:
        """The next `times` calls of `method` on a path matching `path` (a regular expression
        searched in it), on their own or inside a $batch, are answered 429 with Retry-After
        `retry_after` seconds."""
        with self.lock:
            self.throttling.extend([(method.upper(), path, str(retry_after))] * times)

    def _throttled(self, request: web.Request) -> str | None:
        """The Retry-After of the throttling rule this request uses up, if one matches."""
        with self.lock:
            for index, (method, pattern, wait) in enumerate(self.throttling):
                if request.method == method and re.search(pattern, request.path):
                    del self.throttling[index]
                    return wait
        return None

    def refuse(self, method: str, path: str, status: int, code: str, times: int = 1) -> None:
        """The next `times` calls of `method` on a path matching `path` (a regular expression
        searched in it), on their own or inside a $batch, are answered `status` with the error
        `code`, and not carried out."""
        with self.lock:
            self.refusing.extend([(method.upper(), path, status, code)] * times)

    def _refused(self, request: web.Request) -> tuple[int, str] | None:
        """The status and code of the refusal rule this request uses up, if one matches."""
        with self.lock:
            for index, (method, pattern, status, code) in enumerate(self.refusing):
                if request.method == method and re.search(pattern, request.path):
                    del self.refusing[index]
                    return status, code
        return None

    def expire_delta_tokens(self) -> None:
        with self.lock:
            self.delta_epoch += 1

    def deliver_mail(self, room: str, sender: str, subject: str) -> Message:
        with self.lock:
            message = Message(
                new_id("AAMkMail"), None, "mail", datetime.now(UTC), None, subject, sender
            )
            self.mailbox(room).inbox[message.id] = message
            return message

    def responses_for(self, uid: str) -> list[Response]:
        with self.lock:
            return [r for r in self.responses if r.uid == uid]

    def organizer_event(self, organizer: str, uid: str) -> Event | None:
        with self.lock:
            box = self.mailbox(organizer)
            return next((e for e in box.events.values() if e.uid == uid), None)

    # --- HTTP ----------------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._guard])
        users = "/v1.0/users/{user}"
        app.router.add_get(users + "/mailFolders/inbox", self._inbox_folder)
        app.router.add_get(users + "/mailFolders/inbox/messages", self._list)
        app.router.add_get(users + "/mailFolders/inbox/messages/delta", self._delta)
        app.router.add_get(users + "/messages/{id}/$value", self._mime)
        app.router.add_get(users + "/messages/{id}", self._get_message)
        app.router.add_delete(users + "/messages/{id}", self._delete_message)
        app.router.add_post(users + "/messages/{id}/move", self._move)
        app.router.add_post(users + "/events/{id}/{action:accept|decline}", self._respond)
        app.router.add_delete(users + "/events/{id}", self._delete_event)
        app.router.add_get(users + "/events/{id}", self._get_event)
        app.router.add_get(users + "/calendarView", self._calendar_view)
        app.router.add_get(users + "/events", self._find_events)
        app.router.add_patch(users + "/events/{id}", self._patch_event)
        app.router.add_post(users + "/sendMail", self._send_mail)
        app.router.add_post("/v1.0/$batch", self._batch)
        app.router.add_post("/v1.0/subscriptions", self._subscribe)
        app.router.add_patch("/v1.0/subscriptions/{id}", self._renew)
        app.router.add_delete("/v1.0/subscriptions/{id}", self._unsubscribe)
        return app

    @web.middleware
    async def _guard(self, request: web.Request, handler: Any) -> web.StreamResponse:
        batched = "X-Fake-Batch" in request.headers
        if batched:
            self.batched += 1  # a sub-request of a $batch: not a request of its own
            self.batched_calls.append((request.method, request.path))
        else:
            self.requests.append((request.method, request.path))
        self.timeline.append((time.monotonic(), request.method, request.path, batched))
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme != "Bearer" or not self.valid_token(token):
            return _error(
                401, "InvalidAuthenticationToken", "Access token has expired or is not yet valid."
            )
        wait = "1" if self.throttle_next > 0 else self._throttled(request)
        if wait is not None:
            self.throttle_next = max(0, self.throttle_next - 1)
            if not batched:  # a part's 429 leaves with its batch's answer
                self.throttled_at.append(time.monotonic())
            return _error(429, "TooManyRequests", "Too many requests.", {"Retry-After": wait})
        refusal = self._refused(request)
        if refusal is not None:
            return _error(*refusal, "The request is refused.")
        lose: str | None = None
        user = unquote(request.match_info.get("user", "")).lower()
        if user and not self.reaches(user):
            return _error(
                403, "ErrorAccessDenied", "Access is denied. Check credentials and try again."
            )
        with self.lock:
            running = self.concurrent.get(user, 0) + 1
            self.concurrent[user] = running
            self.max_concurrent = max(self.max_concurrent, running)
        try:
            if running > 4:
                self.over_limit += 1
                return _error(
                    429,
                    "ApplicationThrottled",
                    "MailboxConcurrency limit exceeded.",
                    {"Retry-After": "1"},
                )
            lose = await self._answer_to_lose(request)
            await asyncio.sleep(0.002)  # a real call takes time: concurrency shows
            response: web.StreamResponse = await handler(request)
        finally:
            with self.lock:
                self.concurrent[user] -= 1
        if lose == "hold":  # carried out; the answer comes after the client gave up
            await asyncio.sleep(self.hold_seconds)
        elif lose == "drop" and request.transport is not None:  # carried out; no answer
            request.transport.close()
        return response

    def reaches(self, address: str) -> bool:
        """Whether the app may use a mailbox: Entra consent and RBAC grants add up."""
        scope = self.scope
        return self.tenant_wide_consent or scope is None or address.lower() in scope

    def _box(self, request: web.Request) -> Mailbox:
        return self.mailbox(unquote(request.match_info["user"]))

    def _message_json(self, box: Mailbox, message: Message, expand: bool) -> dict[str, Any]:
        kind = {
            "meetingRequest": "#microsoft.graph.eventMessageRequest",
            "meetingCancelled": "#microsoft.graph.eventMessage",
        }.get(message.kind, "#microsoft.graph.message")
        body: dict[str, Any] = {
            "@odata.type": kind,
            "id": message.id,
            "receivedDateTime": message.received.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "subject": message.subject,
            "from": {"emailAddress": {"address": message.sender, "name": message.sender_name}},
            "sender": {"emailAddress": {"address": message.sender, "name": message.sender_name}},
        }
        if message.kind != "mail":
            body["meetingMessageType"] = message.kind
            if expand and message.event_id and message.event_id in box.events:
                body["event"] = {"id": message.event_id}
        return body

    async def _inbox_folder(self, request: web.Request) -> web.Response:
        return web.json_response({"id": "AAMkInbox", "displayName": "Inbox"})

    async def _list(self, request: web.Request) -> web.Response:
        top = int(request.query.get("$top", "10"))
        expand = "event" in request.query.get("$expand", "")
        with self.lock:
            box = self._box(request)
            ordered = sorted(box.inbox.values(), key=lambda m: m.received)
            value = [self._message_json(box, m, expand) for m in ordered[:top]]
        return web.json_response({"value": value})

    async def _delta(self, request: web.Request) -> web.Response:
        """Delta query on the inbox's messages: without a token, every message and a delta link;
        with one, what was created or removed since, paged by 10 with @odata.nextLink; a token
        from before expire_delta_tokens answers 410 SyncStateNotFound."""
        self.delta_calls += 1
        token = request.query.get("$deltatoken")
        with self.lock:
            box = self._box(request)
            if token is None:
                since = None
            else:
                epoch, _, position = token.partition(".")
                if int(epoch) != self.delta_epoch:
                    return _error(410, "SyncStateNotFound", "The sync state generation is old.")
                since = int(position)
            if since is None:
                items = [self._message_json(box, m, False) for m in box.inbox.values()]
            else:
                items = []
                for kind, message_id in box.changes[since:]:
                    if kind == "removed":
                        items.append({"id": message_id, "@removed": {"reason": "deleted"}})
                    elif message_id in box.inbox:
                        items.append(self._message_json(box, box.inbox[message_id], False))
            position = len(box.changes)
        skip = int(request.query.get("$skip", "0"))
        page, rest = items[skip : skip + 10], items[skip + 10 :]
        base = f"{request.scheme}://{request.host}{request.path}"
        body: dict[str, Any] = {"value": page}
        if rest:
            query = {k: v for k, v in request.query.items() if k != "$skip"}
            query["$skip"] = str(skip + 10)
            body["@odata.nextLink"] = f"{base}?{urlencode(query)}"
        else:
            body["@odata.deltaLink"] = f"{base}?$deltatoken={self.delta_epoch}.{position}"
        return web.json_response(body)

    def _find(self, request: web.Request) -> tuple[Mailbox, Message | None]:
        box = self._box(request)
        return box, box.inbox.get(request.match_info["id"])

    async def _mime(self, request: web.Request) -> web.Response:
        with self.lock:
            _, message = self._find(request)
        if message is None:
            return _not_found()
        return web.Response(body=message.mime, content_type="text/plain")

    async def _get_message(self, request: web.Request) -> web.Response:
        with self.lock:
            box, message = self._find(request)
            if message is None:
                return _not_found()
            body = self._message_json(box, message, "event" in request.query.get("$expand", ""))
        return web.json_response(body)

    async def _delete_message(self, request: web.Request) -> web.Response:
        with self.lock:
            box, message = self._find(request)
            if message is None:
                return _not_found()
            box.deleted.append(box.inbox.pop(message.id))
            box.changes.append(("removed", message.id))
        return web.Response(status=204)

    async def _move(self, request: web.Request) -> web.Response:
        destination = (await request.json()).get("destinationId")
        with self.lock:
            box, message = self._find(request)
            if message is None:
                return _not_found()
            if destination != "deleteditems":
                return _error(400, "ErrorInvalidIdMalformed", "unknown folder")
            box.deleted.append(box.inbox.pop(message.id))
            box.changes.append(("removed", message.id))
        return web.json_response({"id": message.id}, status=201)

    async def _respond(self, request: web.Request) -> web.Response:
        body = await request.json()
        action = request.match_info["action"]
        with self.lock:
            box = self._box(request)
            event = box.events.get(request.match_info["id"])
            if event is None:
                return _not_found()
            event.response = "accepted" if action == "accept" else "declined"
            if action == "decline":
                del box.events[event.id]  # a declined meeting leaves the room's calendar
            if body.get("sendResponse", True):
                self.responses.append(
                    Response(box.address, event.uid, action, str(body.get("comment", "")))
                )
        return web.Response(status=202)

    async def _delete_event(self, request: web.Request) -> web.Response:
        with self.lock:
            box = self._box(request)
            if box.events.pop(request.match_info["id"], None) is None:
                return _not_found()
        return web.Response(status=204)

    async def _get_event(self, request: web.Request) -> web.Response:
        with self.lock:
            event = self._box(request).events.get(request.match_info["id"])
            if event is None:
                return _not_found()
            body = self._event_json(event)
        return web.json_response(body)

    @staticmethod
    def _event_json(event: Event) -> dict[str, Any]:
        meeting = event.meeting

        def when(moment: datetime) -> dict[str, str]:
            utc = moment.astimezone(UTC)
            return {"dateTime": utc.strftime("%Y-%m-%dT%H:%M:%S.0000000"), "timeZone": "UTC"}

        return {
            "id": event.id,
            "iCalUId": event.uid,
            "type": "seriesMaster" if meeting.rrule else "singleInstance",
            "isCancelled": event.cancelled,
            "responseStatus": {"response": "organizer" if event.organizer else event.response},
            "subject": meeting.subject,
            "body": {"contentType": "html", "content": meeting.html_body},
            "start": when(meeting.start),
            "end": when(meeting.end),
            "organizer": {
                "emailAddress": {"address": meeting.organizer_email, "name": meeting.organizer_name}
            },
            "attendees": [
                {"type": "required", "emailAddress": {"address": a, "name": ""}}
                for a in meeting.attendees
            ],
            "recurrence": _recurrence(meeting),
        }

    async def _calendar_view(self, request: web.Request) -> web.Response:
        """Single meetings and the occurrences of series between the two times (occurrences
        carry their series master's id), as Graph expands them."""
        start = datetime.fromisoformat(request.query["startDateTime"].replace("Z", "+00:00"))
        end = datetime.fromisoformat(request.query["endDateTime"].replace("Z", "+00:00"))
        value: list[dict[str, Any]] = []
        with self.lock:
            for event in self._box(request).events.values():
                meeting = event.meeting
                length = meeting.end - meeting.start
                starts = (
                    rrulestr(meeting.rrule, dtstart=meeting.start).between(start - length, end)
                    if meeting.rrule
                    else [meeting.start]
                    if start - length < meeting.start < end
                    else []
                )
                for number, moment in enumerate(starts):
                    entry = self._event_json(event)
                    entry.pop("recurrence")
                    if meeting.rrule:
                        entry.update(
                            id=f"{event.id}-occ{number}",
                            type="occurrence",
                            seriesMasterId=event.id,
                        )
                    entry["start"]["dateTime"] = moment.astimezone(UTC).strftime(
                        "%Y-%m-%dT%H:%M:%S.0000000"
                    )
                    value.append(entry)
        return web.json_response({"value": value})

    async def _find_events(self, request: web.Request) -> web.Response:
        match = re.fullmatch(r"iCalUId eq '(.*)'", request.query.get("$filter", ""))
        with self.lock:
            box = self._box(request)
            uid = match.group(1).replace("''", "'") if match else None
            value = [
                self._event_json(e) for e in box.events.values() if uid is None or e.uid == uid
            ]
        return web.json_response({"value": value})

    async def _patch_event(self, request: web.Request) -> web.Response:
        body = await request.json()
        with self.lock:
            box = self._box(request)
            event = box.events.get(request.match_info["id"])
            if event is None:
                return _not_found()
            content = (body.get("body") or {}).get("content")
            if content is not None:
                event.meeting = replace(event.meeting, html_body=content)
            self.patches.append((box.address, event.uid))
            if event.organizer:
                # the organizer's change goes out to every attendee, the room included
                rooms = [
                    m
                    for m in self.mailboxes.values()
                    if any(e.uid == event.uid and not e.organizer for e in m.events.values())
                ]
                for room in rooms:
                    self._deliver(room.address, event.meeting, organizer_copy=False)
        return web.json_response({"id": event.id, "iCalUId": event.uid})

    async def _batch(self, request: web.Request) -> web.Response:
        """JSON batching: up to 20 sub-requests, each counted against the mailbox's concurrency
        and throttling as on its own; non-JSON bodies come back base64. Without dependsOn they
        run concurrently. With it the batch is sequential (every part after the first names
        earlier parts in dependsOn; a batch must be fully parallel or fully sequential, and
        names only parts before it): each part runs after the ones it depends on, and a part
        whose dependency failed (not 2xx) is not run but answered 424 Failed Dependency."""
        body = await request.json()
        parts = body.get("requests", [])
        if not 0 < len(parts) <= 20:
            return _error(400, "BadRequest", "A batch holds 1 to 20 requests.")
        ids = [str(part.get("id", "")) for part in parts]
        if len(set(ids)) != len(ids) or not all(ids):
            return _error(400, "BadRequest", "Every request in a batch needs its own id.")
        depends = [[str(d) for d in part.get("dependsOn") or []] for part in parts]
        sequential = any(depends)
        if sequential and not all(depends[1:]):
            return _error(400, "BadRequest", "Batch should be either fully sequential or parallel.")
        for index, needs in enumerate(depends):
            if any(need not in ids[:index] for need in needs):
                return _error(400, "BadRequest", "dependsOn names a request not before it.")
        auth = {"Authorization": request.headers.get("Authorization", ""), "X-Fake-Batch": "1"}
        base = f"{request.scheme}://{request.host}/v1.0"

        async def run(session: aiohttp.ClientSession, part: dict[str, Any]) -> dict[str, Any]:
            async with session.request(
                part["method"], base + part["url"], json=part.get("body"), headers=auth
            ) as sub:
                raw = await sub.read()
                headers = {
                    k: v for k, v in sub.headers.items() if k in ("Retry-After", "Content-Type")
                }
                if sub.content_type == "application/json" and raw:
                    payload: Any = json.loads(raw)
                elif raw:
                    payload = base64.b64encode(raw).decode()
                else:
                    payload = None
                return {"id": part["id"], "status": sub.status, "headers": headers, "body": payload}

        async with aiohttp.ClientSession() as session:
            if not sequential:
                answers = list(await asyncio.gather(*(run(session, part) for part in parts)))
            else:
                answers, status = [], {}
                for part, needs in zip(parts, depends, strict=True):
                    if any(not 200 <= status[need] < 300 for need in needs):
                        answer = {
                            "id": part["id"],
                            "status": 424,
                            "headers": {"Content-Type": "application/json"},
                            "body": {
                                "error": {
                                    "code": "FailedDependency",
                                    "message": "A request it depends on failed.",
                                }
                            },
                        }
                    else:
                        answer = await run(session, part)
                    status[str(part["id"])] = int(answer["status"])
                    answers.append(answer)
        if any(answer["status"] == 429 for answer in answers):
            self.throttled_at.append(time.monotonic())
        return web.json_response({"responses": answers})

    async def _subscribe(self, request: web.Request) -> web.Response:
        """Create a subscription: the notification URL must answer a validation request with
        the token, as text/plain, within 10 s, or the subscription is refused."""
        body = await request.json()
        url = str(body.get("notificationUrl", ""))
        token = new_id("validation-")
        try:
            async with (
                aiohttp.ClientSession() as session,
                session.post(
                    url, params={"validationToken": token}, timeout=aiohttp.ClientTimeout(total=10)
                ) as answer,
            ):
                text = await answer.text()
                valid = (
                    answer.status == 200 and text == token and answer.content_type == "text/plain"
                )
        except (aiohttp.ClientError, TimeoutError):
            valid = False
        if not valid:
            return _error(
                400,
                "InvalidRequest",
                "Subscription validation request failed. "
                "Notification endpoint must respond with 200 OK to validation request.",
            )
        self.validations.append(url)
        minutes = min(self.subscription_minutes, 10080)
        subscription = {
            "id": new_id("sub-"),
            "resource": str(body.get("resource", "")),
            "changeType": body.get("changeType", "created"),
            "notificationUrl": url,
            "lifecycleNotificationUrl": body.get("lifecycleNotificationUrl"),
            "clientState": body.get("clientState"),
            "expirationDateTime": _expiry(minutes),
        }
        with self.lock:
            self.subscriptions[subscription["id"]] = subscription
        return web.json_response(subscription, status=201)

    async def _renew(self, request: web.Request) -> web.Response:
        with self.lock:
            subscription = self.subscriptions.get(request.match_info["id"])
            if subscription is None:
                return _error(404, "ResourceNotFound", "The object was not found.")
            subscription["expirationDateTime"] = _expiry(self.subscription_minutes)
            self.renewals = getattr(self, "renewals", 0) + 1
            return web.json_response(dict(subscription))

    async def _unsubscribe(self, request: web.Request) -> web.Response:
        with self.lock:
            if self.subscriptions.pop(request.match_info["id"], None) is None:
                return _error(404, "ResourceNotFound", "The object was not found.")
        return web.Response(status=204)

    async def _send_mail(self, request: web.Request) -> web.Response:
        body = await request.json()
        with self.lock:
            self.mails.append(
                {**body.get("message", {}), "from": unquote(request.match_info["user"])}
            )
        return web.Response(status=202)


def _error(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    return web.json_response(
        {"error": {"code": code, "message": message, "innerError": {"request-id": new_id("")}}},
        status=status,
        headers=headers,
    )


def _not_found() -> web.Response:
    return _error(404, "ErrorItemNotFound", "The specified object was not found in the store.")


_WEEKDAYS = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]


def _recurrence(meeting: Meeting) -> dict[str, Any] | None:
    """A series' RRULE as Graph's patternedRecurrence (the daily and weekly rules tests use)."""
    if not meeting.rrule:
        return None
    rule = dict(part.split("=", 1) for part in meeting.rrule.split(";"))
    day = _WEEKDAYS[meeting.start.weekday()]
    pattern: dict[str, Any] = {
        "type": {"DAILY": "daily", "WEEKLY": "weekly"}[rule["FREQ"]],
        "interval": int(rule.get("INTERVAL", "1")),
        "daysOfWeek": [day] if rule["FREQ"] == "WEEKLY" else [],
    }
    span: dict[str, Any] = {"type": "noEnd", "startDate": meeting.start.date().isoformat()}
    if "COUNT" in rule:
        span.update(type="numbered", numberOfOccurrences=int(rule["COUNT"]))
    return {"pattern": pattern, "range": span}


def _expiry(minutes: float) -> str:
    return (datetime.now(UTC) + timedelta(minutes=minutes)).strftime("%Y-%m-%dT%H:%M:%S.0000000Z")
