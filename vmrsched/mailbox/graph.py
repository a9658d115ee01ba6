"""The Exchange Online backend: the room mailbox through Microsoft Graph v1.0, app-only (client
credentials through msal), plain HTTPS calls on one pooled session per integration.

Reading: the room inbox's messages, oldest first; a meeting message is read from its MIME content
(`$value`) with the same iTIP parser as the other backends, so every backend decides alike.
Answering: accept or decline on the room's event (the Calendar Attendant placed it tentatively,
AutomateProcessing AutoUpdate) with the rendered text as comment and sendResponse; the answered
message then leaves the inbox. A cancellation removes the room's event. Organizer updates: a PATCH
of the organizer's event body, found by its iCalUId; where the application's scope refuses it
(403) the update fails for good and the notifier mails the organizer the joining instructions
instead. Throttling: Retry-After on 429/503/504 backs the mailbox off; at most
`max_concurrent_requests` calls at once; an expired token is refreshed once and the call retried.
An identity platform that cannot issue tokens is an outage like Graph's own (backoff,
exchange_unreachable). A call that changes something and got no answer (REQUEST_TIMEOUT passed,
the connection dropped) may have been carried out: the notifier asks `delivered` before sending
it again.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hmac
import html
import json
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import msal
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from vmrsched.config import GraphConfig, IntegrationConfig
from vmrsched.mailbox import itip
from vmrsched.mailbox.base import (
    CalendarEntry,
    GatewayError,
    InboxItem,
    Outgoing,
    outcome_unknown,
)
from vmrsched.mailbox.ews_auth import IDENTITY_ERRORS, IdentityHttp, identity_failure
from vmrsched.mailbox.graph_batch import (
    Answer,
    Slots,
    answers_of,
    chain_body,
    run_together,
    settle,
    split,
)
from vmrsched.mailbox.sessions import CaSession
from vmrsched.meetings import Meeting, is_address
from vmrsched.proxies import use_rule
from vmrsched.telemetry import EXCHANGE_UNREACHABLE, Metrics

log = logging.getLogger("vmrsched.graph")
MAX_PAGE = 1000  # messages in one listing (Graph: $top from 1 to 1000)
REQUEST_TIMEOUT = 30.0  # seconds to wait for Graph's answer to one call
CATCH_UP_SECONDS = 60.0  # with change notifications: list the inbox at least this often
SUBSCRIPTION_MINUTES = 4200  # asked for (Graph allows up to 10,080 for messages)
RENEW_BEFORE = 0.5  # renew once less than this share of the lifetime is left
SUBSCRIBE_RETRY = 60.0  # seconds before trying again to subscribe after a refusal
_TAGS = re.compile(r"<[^>]+>")


@dataclass(frozen=True)
class Removal:
    """A removal for sync(): a message deleted or moved to Deleted Items, or a room's event
    deleted; `item_id` names the inbox message it takes away."""

    operation: str  # the metrics label
    method: str
    url: str
    item_id: str = ""
    body: Any = None


class GraphTokens:
    """App-only tokens for Graph (client credentials); msal caches and renews them."""

    def __init__(self, graph: GraphConfig, session: requests.Session) -> None:
        self.graph = graph
        self.session = session
        self.http = IdentityHttp(session)  # timeouts; a 5xx answer is an outage
        self.scope = graph.graph_url.rstrip("/") + "/.default"
        self._lock = threading.Lock()
        self._app: Any = None

    def _credential(self) -> Any:
        """The client secret, or the certificate: msal signs a client assertion with its key
        and names the certificate by its SHA-1 thumbprint."""
        if not self.graph.client_certificate_file:
            secret = self.graph.client_secret
            return secret.reveal() if secret else None
        pem = Path(self.graph.client_certificate_file).read_bytes()
        certificate = x509.load_pem_x509_certificate(pem)
        thumbprint = certificate.fingerprint(hashes.SHA1()).hex()
        return {"private_key": pem.decode(), "thumbprint": thumbprint}

    def get(self, force: bool = False) -> str:
        """A token for Graph; an identity platform that cannot serve (unreachable, 5xx) is an
        outage (a transient GatewayError with its Retry-After), like Graph's own."""
        with self._lock:
            try:
                if force or self._app is None:
                    self._app = None  # rebuilt next time should this fail
                    self._app = msal.ConfidentialClientApplication(
                        self.graph.client_id,
                        client_credential=self._credential(),
                        authority=f"{self.graph.authority.rstrip('/')}/{self.graph.tenant_id}",
                        validate_authority=False,
                        instance_discovery=False,
                        http_client=self.http,
                    )
                result = self._app.acquire_token_for_client(scopes=[self.scope])
            except IDENTITY_ERRORS as exc:
                raise identity_failure(exc, "the token endpoint cannot be reached") from exc
        if not result or "access_token" not in result:
            detail = (result or {}).get("error_description") or (result or {}).get("error")
            raise GatewayError(f"no Graph token for the app registration ({detail})")
        return str(result["access_token"])


class GraphMailbox:
    alarm = EXCHANGE_UNREACHABLE

    def __init__(self, integ: IntegrationConfig, metrics: Metrics, state_dir: Path) -> None:
        self.integ = integ
        self.name = integ.name
        self.room = integ.exchange.mailbox_email
        self.metrics = metrics
        graph = integ.graph
        self.api = graph.graph_url.rstrip("/") + "/v1.0"
        self.base = f"{self.api}/users/{quote(self.room)}"
        # Graph and its token endpoint under the service's one proxy rule
        self.session = use_rule(CaSession(graph.tls_ca_file), integ.advanced.disable_web_proxy)
        adapter = requests.adapters.HTTPAdapter(pool_maxsize=graph.max_concurrent_requests)
        self.session.mount("https://", adapter)
        self.session.mount("http://", adapter)
        self.tokens = GraphTokens(graph, self.session)
        self._slots = Slots(graph.max_concurrent_requests)
        self._cancels: set[str] = set()  # messages that are cancellations
        self._pending: list[Removal] = []  # removals for sync()
        self._state = threading.Lock()
        self._events: dict[str, str] = {}  # message id -> the room's event id
        # change notifications (when graph.notification_url is set)
        self.notification_url = (
            f"{graph.notification_url.rstrip('/')}/graph/notifications/{integ.name}"
            if graph.notification_url
            else ""
        )
        self.client_state = secrets.token_urlsafe(32)
        self._subscription: tuple[str, datetime, datetime] | None = None  # id, from, until
        self._subscribe_after = 0.0  # monotonic: not before this after a refusal
        self._notified = threading.Event()  # something arrived: list the inbox now
        self._renew = threading.Event()  # Graph asked for reauthorization
        self._listed_at = 0.0
        self._backlog = False
        # the inbox's delta link, kept across restarts: the catch-up asks only what changed
        self._delta_file = state_dir / "inbox-delta.json"
        self._delta_link: str | None = self._read_delta_link()
        self._handed_off: set[str] = set()  # answered by a queued reply: not fetched again
        self._answered: set[str] = set()  # answered here; the message's removal still pending

    # --- plumbing ------------------------------------------------------------------------------

    def _count(self, operation: str, result: str) -> None:
        self.metrics.exchange_requests.labels(self.name, operation, result).inc()

    def call(
        self,
        method: str,
        url: str,
        operation: str,
        json: Any = None,
        parts: int = 1,
        **kwargs: Any,
    ) -> requests.Response:
        """One Graph call: a fresh token once on 401, throttling and outages as retryable
        GatewayErrors, 403/404/400 as permanent ones carrying Graph's error code. A call that
        changes something and got no answer (a timeout, a connection dropped once it was sent)
        may have been carried out: its GatewayError says so (outcome_unknown)."""
        for attempt in range(2):
            token = self.tokens.get(force=attempt > 0)
            headers = {"Authorization": f"Bearer {token}", **kwargs.pop("headers", {})}
            try:
                with self._slots.take(parts):
                    response = self.session.request(
                        method, url, json=json, headers=headers, timeout=REQUEST_TIMEOUT, **kwargs
                    )
            except requests.RequestException as exc:
                self._count(operation, "unreachable")
                if method != "GET" and outcome_unknown(exc):
                    raise GatewayError(
                        f"Microsoft Graph did not answer {operation} (it may have been carried "
                        f"out): {exc}",
                        outcome_unknown=True,
                    ) from exc
                raise GatewayError(f"Microsoft Graph cannot be reached: {exc}") from exc
            status = response.status_code
            self._count(operation, str(status))
            if status == 401 and attempt == 0:
                continue  # the token expired or was revoked: one fresh token, one retry
            if status < 300:
                return response
            return self._failed(response, method, url)
        raise AssertionError("unreachable")

    def _failed(self, response: requests.Response, method: str, url: str) -> requests.Response:
        status = response.status_code
        code, message = _graph_error(response)
        what = f"Graph {method} {url.removeprefix(self.api)} answered {status} {code}: {message}"
        if status in (429, 503, 504):
            retry = response.headers.get("Retry-After", "")
            raise GatewayError(
                f"Microsoft Graph is throttling or busy: {what}",
                retry_after=float(retry) if retry.isdigit() else None,
            )
        if status >= 500:
            raise GatewayError(what)
        if status == 401:
            raise GatewayError(f"the app registration is not accepted: {what}")
        # 400, 403, 404, 409: about this one call (a message, an organizer outside the scope)
        raise GatewayError(what, permanent=True, code=code or f"http_{status}")

    def batch(
        self,
        calls: Sequence[tuple[str, str, Any]],
        operation: str,
        operations: Sequence[str] | None = None,
    ) -> list[Answer]:
        """Several calls in $batch requests: (method, URL, JSON body) each, answered in the same
        order, each as it would be alone (graph_batch: chains of up to 20, one call in flight
        per chain, up to max_concurrent_requests chains at once). Non-JSON bodies ($value)
        arrive base64-encoded. A chain whose $batch request failed gives its calls that error
        (Answer.error); the others keep their answers. `operations`: a metrics label per call."""
        labels = list(operations) if operations is not None else [operation] * len(calls)
        final: dict[int, Answer] = {}
        todo = list(range(len(calls)))
        while todo:
            chains = split(todo)
            replies: list[list[Answer]] = [[] for _ in chains]
            run_together(
                [
                    functools.partial(self._chain, [calls[i] for i in chain], operation, reply)
                    for chain, reply in zip(chains, replies, strict=True)
                ]
            )
            todo = sorted(
                index
                for chain, reply in zip(chains, replies, strict=True)
                for index in settle(chain, reply, final)
            )
        out = [final[i] for i in range(len(calls))]
        for label, answer in zip(labels, out, strict=True):
            if answer.error is None:
                self._count(label, str(answer.status))
        return out

    def _chain(
        self, calls: Sequence[tuple[str, str, Any]], operation: str, out: list[Answer]
    ) -> None:
        """One chained $batch; its answers (or its failure, as each call's) go into `out`."""
        try:
            reply = self.call(
                "POST", f"{self.api}/$batch", operation, json=chain_body(calls, self.api)
            ).json()
            out[:] = answers_of(reply, len(calls))
        except GatewayError as exc:
            out[:] = [Answer(400 if exc.permanent else 503, None, {}, exc)] * len(calls)

    @staticmethod
    def _part_error(answer: Answer, what: str) -> GatewayError:
        """A failed part of a batch as the GatewayError the same call alone would give."""
        if answer.error is not None:
            return answer.error
        status, body, headers = answer.status, answer.body, answer.headers
        error = body.get("error", {}) if isinstance(body, dict) else {}
        code, message = str(error.get("code", "")), str(error.get("message", ""))
        text = f"Graph {what} answered {status} {code}: {message}"
        if status in (429, 503, 504):
            retry = str(headers.get("Retry-After", ""))
            return GatewayError(
                f"Microsoft Graph is throttling or busy: {text}",
                retry_after=float(retry) if retry.isdigit() else None,
            )
        if status >= 500 or status == 401:
            return GatewayError(text)
        return GatewayError(text, permanent=True, code=code or f"http_{status}")

    # --- reading -------------------------------------------------------------------------------

    def fetch(self, limit: int) -> Sequence[InboxItem]:
        """New items, oldest first. With change notifications the inbox is listed only when a
        notification came, when the last listing was full, or every CATCH_UP_SECONDS."""
        if self.notification_url and self._subscribed():
            due = time.monotonic() - self._listed_at >= CATCH_UP_SECONDS
            if not (self._notified.is_set() or self._backlog or due):
                return []
            if due and not (self._notified.is_set() or self._backlog) and not self._caught_up():
                self._listed_at = time.monotonic()
                return []  # the catch-up found nothing new
        self._notified.clear()
        self._listed_at = time.monotonic()
        with self._state:
            handed_off = set(self._handed_off)
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
        meetings = [m for m in chosen if _is_meeting(m)]
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
            if _is_meeting(message) and message["id"] not in raw:
                continue
            items.append(self._to_inbox_item(message, raw.get(message["id"], b"")))
        return items

    def _to_inbox_item(self, message: dict[str, Any], raw: bytes) -> InboxItem:
        message_id = str(message["id"])
        received = _when(message.get("receivedDateTime"))
        sender = (message.get("from") or {}).get("emailAddress") or {}
        sender_email, sender_name = sender.get("address", ""), sender.get("name", "")
        subject = message.get("subject") or ""
        kind = message.get("@odata.type", "")
        if not _is_meeting(message):
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
                not_meeting=exc.not_meeting,
                auto_submitted=exc.auto_submitted,
            )
        if parsed.method == "CANCEL":
            with self._state:
                self._cancels.add(message_id)
        # who sent it, as Exchange has it: it decides whether the message may change a booking
        parsed = itip.sent_in_mail(
            parsed, _address_of(message, "from"), _address_of(message, "sender")
        )
        return InboxItem(message_id, received, meetings=parsed.meetings)

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
                self._pending.append(
                    Removal("delete_event", "DELETE", f"{self.base}/events/{event_id}")
                )
            self._cancels.discard(item_id)
            self._pending.append(self._removal(item_id))

    def _removal(self, item_id: str) -> Removal:
        return Removal("delete_message", "DELETE", f"{self.base}/messages/{item_id}", item_id)

    def quarantine(self, item_id: str, reason: str) -> None:
        """To Deleted Items at the next sync (with the poll's other removals)."""
        log.info(
            "moving message to Deleted Items: %s",
            reason,
            extra={"integration": self.name, "item": item_id},
        )
        with self._state:
            self._pending.append(
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

    def sync(self) -> None:
        """The removals (and moves to Deleted Items) marked since the last sync, in batches.
        Items already gone are fine (reprocessing after a crash); anything else is retried with
        the next sync. A removed message is no longer skipped by the listing."""
        with self._state:
            pending, self._pending = self._pending, []
        if not pending:
            return
        results = self.batch(
            [(r.method, r.url, r.body) for r in pending],
            "delete",
            [r.operation for r in pending],
        )
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
        if failed:
            removal, answer = failed[0]
            first = self._part_error(answer, f"{removal.method} {removal.url}")
            raise GatewayError(
                f"{len(failed)} handled messages could not be removed yet: {first}",
                retry_after=first.retry_after,
                outcome_unknown=first.outcome_unknown,
            )

    @staticmethod
    def _ignore_gone(call: Any) -> None:
        try:
            call()
        except GatewayError as exc:
            if not (exc.permanent and exc.code in ("ErrorItemNotFound", "http_404")):
                raise

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
            comment = {"comment": _text_of(message.html_body), "sendResponse": True}
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
            with self._state:
                # never answered again by this process; skipped by the listing until removed
                self._answered.update(answered)
                for item_id in answered:
                    self._events.pop(item_id, None)
                self._pending.extend(self._removal(item_id) for item_id in answered)
            with contextlib.suppress(GatewayError):  # left for the next sync
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
        item_id = str(message.extra["item_id"])
        with self._state:
            event_id = self._events.get(item_id)
        try:
            if event_id is None:
                event_id = self._event_of(item_id)
            action = "accept" if message.outcome == "accepted" else "decline"
            self.call(
                "POST",
                f"{self.base}/events/{event_id}/{action}",
                action,
                json={"comment": _text_of(message.html_body), "sendResponse": True},
            )
        except GatewayError as exc:
            if exc.permanent and exc.code in ("ErrorItemNotFound", "http_404"):
                log.info(
                    "meeting message %s is gone; answered before a restart, not answered again",
                    item_id,
                    extra={"integration": self.name, "meeting_uid": message.meeting_uid},
                )
                self._forget(item_id)
                return
            raise
        self._ignore_gone(
            lambda: self.call("DELETE", f"{self.base}/messages/{item_id}", "delete_message")
        )
        self._forget(item_id)

    def delivered(self, message: Outgoing) -> bool:
        """Whether a message whose sending may have taken effect already did: one queued before
        a restart (the crash came between Graph's answer and the queue's delivery mark), or one
        whose call got no answer (a timeout, a connection dropped). A reply: the room's event
        already carries that response (then only the message is left to remove). An organizer
        update: the organizer's meeting already carries the new alias."""
        if message.kind == "reply" and message.extra.get("item_id"):
            item_id = str(message.extra["item_id"])
            with self._state:
                known = self._events.get(item_id)
            try:
                event_id = known or self._event_of(item_id)
                event = self.call(
                    "GET",
                    f"{self.base}/events/{event_id}",
                    "get_event",
                    params={"$select": "responseStatus"},
                ).json()
            except GatewayError as exc:
                if exc.permanent:
                    return False  # gone or unknown: sending finds out and says so
                raise
            wanted = "accepted" if message.outcome == "accepted" else "declined"
            if (event.get("responseStatus") or {}).get("response") != wanted:
                return False
            self._ignore_gone(
                lambda: self.call("DELETE", f"{self.base}/messages/{item_id}", "delete_message")
            )
            self._forget(item_id)
            return True
        if message.kind == "update" and message.extra.get("alias_id"):
            for event in self._organizer_events(message, "id,body"):
                content = str((event.get("body") or {}).get("content", ""))
                if f"PXPS:-{message.extra['alias_id']}#" in content:
                    return True
        return False

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
            raise GatewayError(
                "the meeting message has no event in the room's calendar (is the room's "
                "AutomateProcessing AutoUpdate?)",
                permanent=True,
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

    # --- the rest ----------------------------------------------------------------------------

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
                entries.append(CalendarEntry(_meeting_of(answer.body, self.room), event_id))
            except (KeyError, ValueError) as exc:
                log.warning(
                    "unreadable calendar event: %r",
                    exc,
                    extra={"integration": self.name, "item": event_id},
                )
        return entries

    # --- change notifications ----------------------------------------------------------------

    def _subscribed(self) -> bool:
        """Whether a subscription delivers notifications now: created, renewed or re-created
        as needed. A refusal (the URL cannot be validated, say) falls back to polling and is
        tried again after SUBSCRIBE_RETRY seconds."""
        now = datetime.now(UTC)
        current = self._subscription
        try:
            if current is not None:
                subscription_id, since, until = current
                if self._renew.is_set() or now >= until - (until - since) * RENEW_BEFORE:
                    self._renew.clear()
                    self._subscription = self._renew_subscription(subscription_id, now)
                return self._subscription is not None
            if time.monotonic() < self._subscribe_after:
                return False
            self._subscription = self._subscribe(now)
            self._notified.set()  # catch up on what arrived without notifications
            return True
        except GatewayError as exc:
            if not exc.permanent:
                raise
            self._subscription = None
            self._subscribe_after = time.monotonic() + SUBSCRIBE_RETRY
            log.warning(
                "change notifications unavailable, polling the inbox instead: %s",
                exc,
                extra={"integration": self.name},
            )
            return False

    def _subscribe(self, now: datetime) -> tuple[str, datetime, datetime]:
        until = now + timedelta(minutes=SUBSCRIPTION_MINUTES)
        created = self.call(
            "POST",
            f"{self.api}/subscriptions",
            "subscribe",
            json={
                "changeType": "created",
                "notificationUrl": self.notification_url,
                "lifecycleNotificationUrl": self.notification_url,
                "resource": f"users/{self.room}/mailFolders('inbox')/messages",
                "expirationDateTime": until.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "clientState": self.client_state,
            },
        ).json()
        log.info(
            "subscribed to the inbox of %s until %s",
            self.room,
            created.get("expirationDateTime"),
            extra={"integration": self.name},
        )
        return str(created["id"]), now, _when(created.get("expirationDateTime")) or until

    def _renew_subscription(
        self, subscription_id: str, now: datetime
    ) -> tuple[str, datetime, datetime] | None:
        until = now + timedelta(minutes=SUBSCRIPTION_MINUTES)
        try:
            renewed = self.call(
                "PATCH",
                f"{self.api}/subscriptions/{subscription_id}",
                "renew_subscription",
                json={"expirationDateTime": until.strftime("%Y-%m-%dT%H:%M:%SZ")},
            ).json()
        except GatewayError as exc:
            if exc.permanent and exc.code in ("ResourceNotFound", "ErrorItemNotFound", "http_404"):
                return self._subscribe(now)  # gone (expired, removed): a new one
            raise
        return subscription_id, now, _when(renewed.get("expirationDateTime")) or until

    def _caught_up(self) -> bool:
        """The catch-up: a delta query on the inbox from the kept delta link. True when
        something arrived that no notification told of (or the link was dead: a full resync
        lists the inbox)."""
        link = self._delta_link or (
            f"{self.base}/mailFolders/inbox/messages/delta?$select=id,receivedDateTime"
        )
        added = False
        try:
            while True:
                page = self.call("GET", link, "inbox_delta").json()
                added = added or any("@removed" not in m for m in page.get("value", []))
                following = page.get("@odata.nextLink")
                if not following:
                    break
                link = following
        except GatewayError as exc:
            if exc.permanent and exc.code in ("SyncStateNotFound", "syncStateNotFound", "http_410"):
                log.info(
                    "the inbox's delta link expired: full resync", extra={"integration": self.name}
                )
                self._save_delta_link(None)
                return True
            raise
        self._save_delta_link(page.get("@odata.deltaLink"))
        return added or self._delta_link is None

    def _read_delta_link(self) -> str | None:
        try:
            link = json.loads(self._delta_file.read_text()).get("delta_link")
        except (OSError, ValueError, AttributeError):
            return None
        return str(link) if link else None

    def _save_delta_link(self, link: str | None) -> None:
        self._delta_link = link
        self._delta_file.parent.mkdir(parents=True, exist_ok=True)
        temporary = self._delta_file.with_suffix(".tmp")
        with open(temporary, "w") as out:
            json.dump({"delta_link": link}, out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, self._delta_file)

    def notified(self, notifications: Sequence[dict[str, Any]]) -> tuple[int, int]:
        """Change and lifecycle notifications posted to our notification URL: (accepted,
        refused). Any thread; quick (Graph wants an answer within 3 s). One whose clientState
        is not ours is refused: someone else posting to the URL."""
        accepted = refused = 0
        for notification in notifications:
            state = str(notification.get("clientState", ""))
            if not hmac.compare_digest(state.encode(), self.client_state.encode()):
                refused += 1
                continue
            accepted += 1
            event = notification.get("lifecycleEvent")
            if event == "reauthorizationRequired":
                self._renew.set()
            elif event == "subscriptionRemoved":
                self._subscription = None
            self._notified.set()  # new mail, or possibly missed mail: list the inbox
        return accepted, refused

    def probe(self, organizer: str = "", outside: str = "") -> list[tuple[bool | None, str]]:
        """What check-config --online reports: a token, the room's inbox readable, and, given
        an organizer's address, whether the app's scope lets it update that organizer's
        meetings (the scope itself cannot be listed through Graph); given a mailbox that
        should be out of reach, whether it is (None, a warning, when the app reads it:
        tenant-wide consent reaches every mailbox whatever the RBAC scope says)."""
        out: list[tuple[bool | None, str]] = []
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

    def _probe_outside(self, address: str) -> tuple[bool | None, str]:
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

    def close(self) -> None:
        self.session.close()


_DAYS = {
    "sunday": "SU",
    "monday": "MO",
    "tuesday": "TU",
    "wednesday": "WE",
    "thursday": "TH",
    "friday": "FR",
    "saturday": "SA",
}
_INDEX = {"first": "1", "second": "2", "third": "3", "fourth": "4", "last": "-1"}


def rrule_of(recurrence: dict[str, Any] | None) -> str | None:
    """Graph's patternedRecurrence as an RFC 5545 RRULE (the form the rules work with)."""
    if not recurrence:
        return None
    pattern, span = recurrence.get("pattern") or {}, recurrence.get("range") or {}
    kind = pattern.get("type", "")
    parts = [f"INTERVAL={int(pattern.get('interval') or 1)}"]
    days = ",".join(_DAYS[d.lower()] for d in pattern.get("daysOfWeek") or [])
    relative = _INDEX.get(str(pattern.get("index", "first")).lower(), "1")
    if kind == "daily":
        parts.insert(0, "FREQ=DAILY")
    elif kind == "weekly":
        parts[:0] = ["FREQ=WEEKLY"]
        parts.append(f"BYDAY={days}")
    elif kind == "absoluteMonthly":
        parts[:0] = ["FREQ=MONTHLY"]
        parts.append(f"BYMONTHDAY={int(pattern['dayOfMonth'])}")
    elif kind == "relativeMonthly":
        parts[:0] = ["FREQ=MONTHLY"]
        parts.append("BYDAY=" + ",".join(relative + d for d in days.split(",")))
    elif kind == "absoluteYearly":
        parts[:0] = ["FREQ=YEARLY"]
        parts += [f"BYMONTH={int(pattern['month'])}", f"BYMONTHDAY={int(pattern['dayOfMonth'])}"]
    elif kind == "relativeYearly":
        parts[:0] = ["FREQ=YEARLY"]
        parts.append(f"BYMONTH={int(pattern['month'])}")
        parts.append("BYDAY=" + ",".join(relative + d for d in days.split(",")))
    else:
        raise ValueError(f"unknown recurrence pattern {kind!r}")
    if span.get("type") == "numbered":
        parts.append(f"COUNT={int(span['numberOfOccurrences'])}")
    elif span.get("type") == "endDate" and span.get("endDate"):
        parts.append(f"UNTIL={span['endDate'].replace('-', '')}T235959Z")
    return ";".join(parts)


def _meeting_of(event: dict[str, Any], room: str) -> Meeting:
    """A meeting on the room's calendar (a single one, or a series' master) as a Meeting."""
    organizer = (event.get("organizer") or {}).get("emailAddress") or {}
    attendees = tuple(
        str(a["emailAddress"]["address"])
        for a in event.get("attendees") or []
        if (a.get("emailAddress") or {}).get("address")
        and a["emailAddress"]["address"].lower() != room.lower()
    )
    return Meeting(
        uid=str(event["iCalUId"]),
        method="REQUEST",
        start=_utc_of(event["start"]),
        end=_utc_of(event["end"]),
        rrule=rrule_of(event.get("recurrence")),
        organizer_email=str(organizer.get("address", "")),
        organizer_name=str(organizer.get("name", "")),
        subject=str(event.get("subject") or ""),
        html_body=str((event.get("body") or {}).get("content", "")),
        attendees=attendees,
    )


def _address_of(message: dict[str, Any], key: str) -> str:
    """An eventMessage's `from` or `sender` address, or "" when it gives none that is one."""
    address = str(((message.get(key) or {}).get("emailAddress") or {}).get("address") or "")
    return address.strip() if is_address(address.strip()) else ""


def _utc_of(value: dict[str, Any]) -> datetime:
    """Graph's dateTimeTimeZone, asked for in UTC (Prefer: outlook.timezone)."""
    if str(value.get("timeZone", "UTC")).upper() not in ("UTC", "ETC/UTC"):
        raise ValueError(f"expected UTC times, got {value.get('timeZone')!r}")
    text = str(value["dateTime"]).rstrip("Z")
    moment = datetime.fromisoformat(text[:26] if "." in text else text)
    return moment.replace(tzinfo=UTC)


def _is_meeting(message: dict[str, Any]) -> bool:
    return str(message.get("@odata.type", "")).startswith("#microsoft.graph.eventMessage")


def _graph_error(response: requests.Response) -> tuple[str, str]:
    try:
        error = response.json().get("error") or {}
        return str(error.get("code", "")), str(error.get("message", ""))[:300]
    except ValueError:
        return "", response.text[:300]


def _when(value: Any) -> datetime:
    if not value:
        return datetime.now(UTC)
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return datetime.now(UTC)


def _text_of(body: str) -> str:
    """The response comment: Graph takes text, our templates are HTML."""
    text = re.sub(r"<br\s*/?>|</p>|</div>|</li>", "\n", body, flags=re.IGNORECASE)
    text = html.unescape(_TAGS.sub("", text))
    return "\n".join(line.strip() for line in text.splitlines() if line.strip())
