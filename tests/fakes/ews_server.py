"""A fake Exchange Web Services endpoint that exchangelib talks to over real HTTP.

It speaks SOAP as the recordings in shared/corpus/ews show (ServerVersionInfo header, message
and type namespaces, ResponseClass/ResponseCode, ErrorServerBusy faults with BackOffMilliseconds)
and keeps in-memory mailboxes: the equipment mailbox's inbox and calendar, and organizers'
calendars (reached through ExchangeImpersonation). Tests put meeting requests in, run the
service, and read the answers and calendar changes back from this state.

Operations: GetFolder, FindItem (inbox paging and CalendarView), GetItem, CreateItem (AcceptItem,
DeclineItem, RemoveItem, Message), UpdateItem (body, SendToAllAndSaveCopy), DeleteItem.

Mailbox rights as an admin grants them, refused as Exchange refuses them: the service account's
ApplicationImpersonation role assignment and its management scope (`impersonation_scope`), its
FullAccess on mailboxes (`full_access`), app-only OAuth tokens (`app_only`: every request must
carry ExchangeImpersonation) and addresses without a mailbox (`missing`). A request that
impersonates someone outside the scope is refused with the ErrorImpersonateUserDenied fault, one
that impersonates an address without a mailbox with ErrorNonExistentMailbox, one without the
header under an app-only token with ErrorInvalidExchangeImpersonationHeaderData; one that reaches
into another mailbox without FullAccess (delegate access) gets ErrorAccessDenied for each item.
Where items go as Exchange puts them: a request or cancellation responded to moves to Deleted
Items, and a copy of the response is saved in Sent Items (MessageDisposition SendAndSaveCopy);
DeleteItem with DeleteType MoveToDeletedItems moves the item to Deleted Items, HardDelete purges
it (`purged`). A moved item gets a new id, so its old one is ErrorItemNotFound, unless
`immutable_ids` (Exchange Online's immutable identifiers, which survive a move): then GetItem
still finds it, with Deleted Items as its ParentFolderId, and it can still be responded to.
Faults on demand: HTTP 503 (with `retry_after` as its Retry-After header), ErrorServerBusy, or
the whole server stopped; and an answer lost
(`lose_answer`): the operation is carried out, then its answer held longer than the client waits
or the connection closed without one.
"""

from __future__ import annotations

import asyncio
import base64
import html
import itertools
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.utils import formataddr
from typing import Any

import icalendar
from aiohttp import web
from lxml import etree

from tests.fakes import ntlm
from vmrsched.rules.meetings import Meeting

S = "http://schemas.xmlsoap.org/soap/envelope/"
M = "http://schemas.microsoft.com/exchange/services/2006/messages"
T = "http://schemas.microsoft.com/exchange/services/2006/types"
E = "http://schemas.microsoft.com/exchange/services/2006/errors"
NS = {"s": S, "m": M, "t": T}
# where a request lists what it asks about: one response message each
_LISTS = {
    "GetFolder": "m:FolderIds",
    "GetItem": "m:ItemIds",
    "DeleteItem": "m:ItemIds",
    "CreateItem": "m:Items",
    "UpdateItem": "m:ItemChanges",
}
VERSION = (
    '<h:ServerVersionInfo MajorVersion="15" MinorVersion="1" MajorBuildNumber="2507" '
    'MinorBuildNumber="6" Version="V2017_07_11" xmlns:h="' + T + '" '
    'xmlns:xsd="http://www.w3.org/2001/XMLSchema" '
    'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"/>'
)


def _ts(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _e(text: str) -> str:
    return html.escape(text, quote=True)


@dataclass
class FakeItem:
    id: str
    kind: str  # MeetingRequest | MeetingCancellation | Message | CalendarItem
    meeting: Meeting | None = None
    subject: str = ""
    body: str = ""
    sender: str = ""
    recipients: tuple[str, ...] = ()
    received: datetime = field(default_factory=lambda: datetime.now(UTC))
    changekey: str = "CK1"
    response: str = ""  # for CalendarItem in the room's calendar: Accept/Decline
    updates_sent: int = 0  # organizer updates sent to all attendees
    # for an organizer's CalendarItem: the mailboxes (rooms) the meeting was delivered to
    delivered_to: set[str] = field(default_factory=set)
    request_type: str = ""  # MeetingRequest: "" (new or full update) or InformationalUpdate


@dataclass
class Mailbox:
    address: str
    inbox: dict[str, FakeItem] = field(default_factory=dict)
    calendar: dict[str, FakeItem] = field(default_factory=dict)
    sent: list[FakeItem] = field(default_factory=list)
    deleted: list[FakeItem] = field(default_factory=list)  # Deleted Items
    purged: list[FakeItem] = field(default_factory=list)  # HardDelete: past recovery
    events: list[str] = field(default_factory=list)  # ids of items that arrived in the inbox


class FakeExchange:
    def __init__(
        self,
        username: str = "svc-vmr",
        password: str = "s3cret",
        bearer: Callable[[str], bool] | None = None,
        ntlm: bool = False,
    ) -> None:
        self.username = username
        self.password = password
        self.bearer = bearer  # accepts OAuth access tokens when set
        self.ntlm = ntlm  # NTLM instead of Basic for the service account
        self._challenges: dict[int, bytes] = {}
        self._ntlm_ok: set[int] = set()
        self.ntlm_users: list[str] = []
        self.auth_seen: list[str] = []
        self.mailboxes: dict[str, Mailbox] = {}
        self.lock = threading.Lock()
        self._ids = itertools.count(1)
        self.requests: list[str] = []  # operation names, in order
        self.impersonated: list[str] = []
        self.fail_next: list[str] = []  # "503" | "busy" | "invalid"
        self.retry_after = ""  # the Retry-After header of a 503 (seconds or an HTTP-date)
        self.immutable_ids = False  # an item keeps its id when it moves (see the docstring)
        self.delete_types: list[str] = []  # DeleteItem's DeleteType, in order
        # the service account's rights. The documented set-up: ApplicationImpersonation over a
        # scope holding the room and the organizers (None: an assignment without a scope, every
        # mailbox; an empty set: no assignment), and no FullAccess anywhere.
        self.impersonation_scope: set[str] | None = None
        self.full_access: set[str] = set()  # Add-MailboxPermission -AccessRights FullAccess
        self.app_only = False  # bearer tokens are app-only (client credentials)
        self.missing: set[str] = set()  # addresses that have no mailbox
        self.subscriptions: dict[str, str] = {}  # subscription id -> mailbox address
        self.subscribe_supported = True
        self.down = False
        # Exchange keeps the SEQUENCE when only the body of a meeting changes (an
        # informational update); some versions and clients bump it anyway
        self.update_bumps_sequence = False
        # item id -> response code CreateItem answers for a response to that item
        self.refuse_responses: dict[str, str] = {}
        # answers to lose: (operation, "hold" | "drop"), each used once; see lose_answer
        self.losing: list[tuple[str, str]] = []
        self.hold_seconds = 2.0
        self.lost: list[tuple[str, str]] = []  # (operation, how) of answers lost

    # --- state helpers for tests ----------------------------------------------------------
    def mailbox(self, address: str) -> Mailbox:
        key = address.lower()
        if key not in self.mailboxes:
            self.mailboxes[key] = Mailbox(address)
        return self.mailboxes[key]

    def put_in_inbox(self, room: str, item: FakeItem) -> None:
        """An item arriving in the room's inbox (with its new-mail event)."""
        with self.lock:
            self.mailbox(room).inbox[item.id] = item
            self.mailbox(room).events.append(item.id)

    def new_id(self, prefix: str) -> str:
        raw = f"{prefix}-{next(self._ids):08d}".encode()
        return base64.b64encode(raw).decode()

    def deliver(
        self, room: str, meeting: Meeting, organizer_copy: bool = True, sender: str = ""
    ) -> FakeItem:
        """A meeting request (or cancellation) arriving in the room's inbox; the organizer's
        own copy goes to their calendar (unless the organizer has deleted it since). `sender`:
        the mail's From and Sender when not the organizer (someone else sending a meeting
        message that names the organizer)."""
        kind = "MeetingCancellation" if meeting.method == "CANCEL" else "MeetingRequest"
        with self.lock:
            item = FakeItem(
                self.new_id("in"),
                kind,
                meeting,
                meeting.subject,
                meeting.html_body,
                sender or meeting.organizer_email,
            )
            self.mailbox(room).inbox[item.id] = item
            self.mailbox(room).events.append(item.id)
            if meeting.method == "REQUEST" and meeting.organizer_email and organizer_copy:
                calendar = self.mailbox(meeting.organizer_email).calendar
                existing = next(
                    (
                        i
                        for i in calendar.values()
                        if i.meeting
                        and i.meeting.uid == meeting.uid
                        and i.meeting.recurrence_id == meeting.recurrence_id
                    ),
                    None,
                )
                if existing is None:
                    own = FakeItem(
                        self.new_id("cal"),
                        "CalendarItem",
                        meeting,
                        meeting.subject,
                        meeting.html_body,
                        meeting.organizer_email,
                    )
                    calendar[own.id] = own
                    existing = own
                else:
                    existing.meeting, existing.body = meeting, meeting.html_body
                existing.delivered_to.add(room.lower())
            return item

    def remove_organizer_meeting(self, organizer: str, uid: str) -> None:
        """The organizer deleted the meeting from their calendar (without cancelling)."""
        with self.lock:
            calendar = self.mailbox(organizer).calendar
            for item_id in [i.id for i in calendar.values() if i.meeting and i.meeting.uid == uid]:
                del calendar[item_id]

    def _send_to_all(self, item: FakeItem) -> None:
        """What Exchange does with an organizer's update sent with SendToAll…: every attendee,
        resources included, gets a meeting request in their inbox; a change of the body only
        is an informational update."""
        assert item.meeting is not None
        recipients = {a.lower() for a in item.meeting.attendees} | item.delivered_to
        recipients.discard(item.meeting.organizer_email.lower())
        for address in sorted(recipients):
            copy = FakeItem(
                self.new_id("in"),
                "MeetingRequest",
                item.meeting,
                item.meeting.subject,
                item.body,
                item.meeting.organizer_email,
                request_type="InformationalUpdate",
            )
            box = self.mailbox(address)
            box.inbox[copy.id] = copy
            box.events.append(copy.id)

    def lose_answer(self, operation: str, how: str = "hold", times: int = 1) -> None:
        """The next `times` requests of `operation` (UpdateItem, CreateItem, …) are carried
        out, and then their answer is lost: held for `hold_seconds` ("hold") or the connection
        closed without one ("drop")."""
        assert how in ("hold", "drop")
        with self.lock:
            self.losing.extend([(operation, how)] * times)

    def replies(self, room: str) -> list[FakeItem]:
        return list(self.mailbox(room).sent)

    # --- HTTP ------------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application(client_max_size=20 * 1024 * 1024)
        app.router.add_post("/EWS/Exchange.asmx", self.handle)
        return app

    def _authorized(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        self.auth_seen.append(header.split(" ", 1)[0])
        if header.startswith("Bearer ") and self.bearer is not None:
            return self.bearer(header[7:])
        if not header.startswith("Basic "):
            return False
        user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        return user.split("\\")[-1] == self.username and password == self.password

    def _ntlm(self, request: web.Request) -> web.Response | None:
        """None when the connection is authenticated; else the next 401 of the handshake."""
        connection = id(request.transport)
        header = request.headers.get("Authorization", "")
        if not header.startswith("NTLM "):
            if connection in self._ntlm_ok:
                return None
            return web.Response(status=401, headers={"WWW-Authenticate": "NTLM"})
        data = base64.b64decode(header[5:])
        kind = ntlm.message_type(data)
        if kind == 1:
            challenge = ntlm.new_challenge()
            self._challenges[connection] = challenge
            token = base64.b64encode(ntlm.challenge_message(challenge)).decode()
            return web.Response(status=401, headers={"WWW-Authenticate": f"NTLM {token}"})
        challenge = self._challenges.pop(connection, b"")
        user = ntlm.verify_authenticate(data, challenge, self.password) if challenge else None
        if kind == 3 and user is not None and user.split("\\")[-1] == self.username:
            self._ntlm_ok.add(connection)
            self.ntlm_users.append(user)
            return None
        return web.Response(status=401, headers={"WWW-Authenticate": "NTLM"})

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if self.down:
            raise ConnectionResetError("server is down")
        if self.ntlm:
            refused = self._ntlm(request)
            if refused is not None:
                return refused
        elif not self._authorized(request):
            challenge = 'Bearer error="invalid_token"' if self.bearer else 'Basic realm="EWS"'
            return web.Response(status=401, headers={"WWW-Authenticate": challenge})
        document = etree.fromstring(await request.read())
        body = document.find("s:Body", NS)
        assert body is not None and len(body)
        operation = etree.QName(body[0]).localname
        with self.lock:
            self.requests.append(operation)
            if self.fail_next:
                fault = self.fail_next.pop(0)
                if fault == "503":
                    headers = {"Retry-After": self.retry_after} if self.retry_after else {}
                    return web.Response(status=503, text="Service Unavailable", headers=headers)
                if fault == "busy":
                    return self._server_busy()
            header = document.find("s:Header", NS)
            acting = self._impersonated(header)
            bearer = request.headers.get("Authorization", "").startswith("Bearer ")
            refused = self._refusal(operation, body[0], acting, bearer)
            if refused is not None:
                return refused
            handler = getattr(self, f"_op_{operation}", None)
            if handler is None:
                return self._fault("ErrorInvalidRequest", f"{operation} is not supported")
            payload = handler(body[0], acting)
            lose = next((how for op, how in self.losing if op == operation), None)
            if lose is not None:
                self.losing.remove((operation, lose))
                self.lost.append((operation, lose))
        if lose == "hold":  # carried out; the answer comes after the client gave up
            await asyncio.sleep(self.hold_seconds)
        elif lose == "drop" and request.transport is not None:  # carried out; no answer
            request.transport.close()
        return self._envelope(payload)

    def _impersonated(self, header: Any) -> str | None:
        if header is None:
            return None
        smtp = header.find("t:ExchangeImpersonation/t:ConnectingSID/t:PrimarySmtpAddress", NS)
        if smtp is None:
            smtp = header.find("t:ExchangeImpersonation/t:ConnectingSID/t:SmtpAddress", NS)
        if smtp is not None and smtp.text:
            self.impersonated.append(smtp.text)
            return smtp.text
        return None

    def _envelope(self, payload: str) -> web.Response:
        text = (
            f'<?xml version="1.0" encoding="utf-8"?><s:Envelope xmlns:s="{S}"><s:Header>'
            f'{VERSION}</s:Header><s:Body xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"'
            f' xmlns:xsd="http://www.w3.org/2001/XMLSchema">{payload}</s:Body></s:Envelope>'
        )
        return web.Response(text=text, content_type="text/xml", charset="utf-8")

    def _server_busy(self) -> web.Response:
        text = (
            f'<?xml version="1.0" encoding="utf-8"?><s:Envelope xmlns:s="{S}"><s:Body>'
            '<s:Fault><faultcode xmlns:a="http://schemas.microsoft.com/exchange/services/'
            '2006/types">a:ErrorServerBusy</faultcode><faultstring xml:lang="en-US">The '
            "server cannot service this request right now. Try again later.</faultstring>"
            '<detail><e:ResponseCode xmlns:e="http://schemas.microsoft.com/exchange/services/'
            '2006/errors">ErrorServerBusy</e:ResponseCode><e:Message xmlns:e="http://schemas.'
            'microsoft.com/exchange/services/2006/errors">The server cannot service this '
            'request right now. Try again later.</e:Message><t:MessageXml xmlns:t="http://'
            'schemas.microsoft.com/exchange/services/2006/types"><t:Value Name="BackOff'
            'Milliseconds">300</t:Value></t:MessageXml></detail></s:Fault></s:Body>'
            "</s:Envelope>"
        )
        return web.Response(status=500, text=text, content_type="text/xml", charset="utf-8")

    def _soap_fault(self, code: str, message: str) -> web.Response:
        """A request Exchange refuses as a whole (what its SOAP header asks for), as a fault."""
        text = (
            f'<?xml version="1.0" encoding="utf-8"?><s:Envelope xmlns:s="{S}"><s:Body>'
            f'<s:Fault><faultcode xmlns:a="{T}">a:{code}</faultcode><faultstring xml:lang='
            f'"en-US">{_e(message)}</faultstring><detail><e:ResponseCode xmlns:e="{E}">{code}'
            f'</e:ResponseCode><e:Message xmlns:e="{E}">{_e(message)}</e:Message></detail>'
            "</s:Fault></s:Body></s:Envelope>"
        )
        return web.Response(status=500, text=text, content_type="text/xml", charset="utf-8")

    # --- rights -----------------------------------------------------------------------------
    def _may_impersonate(self, address: str) -> bool:
        scope = self.impersonation_scope
        return scope is None or address.lower() in {a.lower() for a in scope}

    def _refusal(
        self, operation: str, request: Any, acting: str | None, bearer: bool
    ) -> web.Response | None:
        """What Exchange answers a request the service account has no right to make (None:
        it may)."""
        if acting is None and bearer and self.app_only:
            return self._soap_fault(
                "ErrorInvalidExchangeImpersonationHeaderData",
                "ExchangeImpersonation SOAP header must be present for this type of OAuth token.",
            )
        if acting is not None:
            if acting.lower() in self.missing:
                return self._soap_fault(
                    "ErrorNonExistentMailbox", "The SMTP address has no mailbox associated with it."
                )
            if not self._may_impersonate(acting):
                return self._soap_fault(
                    "ErrorImpersonateUserDenied",
                    "The account does not have permission to impersonate the requested user.",
                )
        others = {t for t in self._targets(request) if t != (acting or "").lower()}
        if not others:
            return None
        if acting is None:
            if others & self.missing:
                code, text = "ErrorNonExistentMailbox", "The SMTP address has no mailbox."
            elif others <= {a.lower() for a in self.full_access}:
                return None  # delegate access with FullAccess
            else:
                code, text = (
                    "ErrorAccessDenied",
                    "Access is denied. Check credentials and try again.",
                )
        else:  # an impersonated user reaching into a mailbox not their own
            code, text = "ErrorAccessDenied", "Access is denied. Check credentials and try again."
        listed = request.find(_LISTS.get(operation, "m:None"), NS)
        count = max(1, len(listed) if listed is not None else 1)
        return self._envelope(
            self._response(operation, [self._error(operation, code, text)] * count)
        )

    def _targets(self, request: Any) -> set[str]:
        """The mailboxes a request reaches: named folders, folder ids, items, subscriptions."""
        found: set[str] = set()
        for smtp in request.iterfind(".//t:DistinguishedFolderId/t:Mailbox/t:EmailAddress", NS):
            found.add((smtp.text or "").lower())
        for folder in request.iterfind(".//t:FolderId", NS):
            try:
                address, _, _ = base64.b64decode(folder.get("Id")).decode().partition("|")
            except (ValueError, TypeError):
                continue
            found.add(address.lower())
        for tag in (".//t:ItemId", ".//t:ReferenceItemId"):
            for item in request.iterfind(tag, NS):
                hit = self._find(item.get("Id") or "")
                if hit is not None:
                    found.add(hit[0].address.lower())
        subscription = request.findtext("m:SubscriptionId", namespaces=NS)
        if subscription and subscription in self.subscriptions:
            found.add(self.subscriptions[subscription].lower())
        found.discard("")
        return found

    def _fault(self, code: str, message: str) -> web.Response:
        return self._envelope(
            f'<m:ResponseMessages xmlns:m="{M}"><m:Error ResponseClass="Error"><m:MessageText>'
            f"{_e(message)}</m:MessageText><m:ResponseCode>{code}</m:ResponseCode></m:Error>"
            "</m:ResponseMessages>"
        )

    # --- folder and item lookups -----------------------------------------------------------
    def _folder_owner(self, element: Any, acting: str | None) -> tuple[str, str]:
        """(mailbox address, folder name) for a DistinguishedFolderId or FolderId."""
        distinguished = element.find(".//t:DistinguishedFolderId", NS)
        if distinguished is not None:
            address = distinguished.findtext("t:Mailbox/t:EmailAddress", namespaces=NS)
            return (address or acting or "", distinguished.get("Id"))
        folder = element.find(".//t:FolderId", NS)
        assert folder is not None
        address, _, name = base64.b64decode(folder.get("Id")).decode().partition("|")
        return address, name

    def _folder_id(self, address: str, name: str) -> str:
        return base64.b64encode(f"{address}|{name}".encode()).decode()

    def _find(self, item_id: str) -> tuple[Mailbox, dict[str, FakeItem], FakeItem] | None:
        for box in self.mailboxes.values():
            folders = [box.inbox, box.calendar]
            if self.immutable_ids:  # a moved item is still found under its id
                folders.append({i.id: i for i in box.deleted})
            for folder in folders:
                if item_id in folder:
                    return box, folder, folder[item_id]
        return None

    def _folder_name(self, box: Mailbox, folder: dict[str, FakeItem]) -> str:
        if folder is box.inbox:
            return "inbox"
        return "calendar" if folder is box.calendar else "deleteditems"

    def _response(self, operation: str, messages: Iterable[str]) -> str:
        return (
            f'<m:{operation}Response xmlns:m="{M}" xmlns:t="{T}"><m:ResponseMessages>'
            + "".join(messages)
            + f"</m:ResponseMessages></m:{operation}Response>"
        )

    @staticmethod
    def _ok(operation: str, inner: str = "") -> str:
        return (
            f'<m:{operation}ResponseMessage ResponseClass="Success"><m:ResponseCode>NoError'
            f"</m:ResponseCode>{inner}</m:{operation}ResponseMessage>"
        )

    def _not_found(self, operation: str) -> str:
        return self._error(
            operation, "ErrorItemNotFound", "The specified object was not found in the store."
        )

    @staticmethod
    def _error(operation: str, code: str, text: str) -> str:
        return (
            f'<m:{operation}ResponseMessage ResponseClass="Error"><m:MessageText>{_e(text)}'
            f"</m:MessageText><m:ResponseCode>{code}</m:ResponseCode><m:DescriptiveLinkKey>0"
            f"</m:DescriptiveLinkKey></m:{operation}ResponseMessage>"
        )

    def drop_subscriptions(self) -> None:
        """As after a server restart: every subscription is gone."""
        with self.lock:
            self.subscriptions.clear()

    # --- operations ---------------------------------------------------------------------------
    def _op_Subscribe(self, request: Any, acting: str | None) -> str:
        if not self.subscribe_supported:
            return self._response(
                "Subscribe",
                [
                    self._error(
                        "Subscribe",
                        "ErrorInvalidSubscriptionRequest",
                        "Subscriptions are disabled.",
                    )
                ],
            )
        pull = request.find("m:PullSubscriptionRequest", NS)
        address, _ = self._folder_owner(pull.find("t:FolderIds", NS), acting)
        subscription = base64.b64encode(self.new_id("sub").encode()).decode()
        self.subscriptions[subscription] = address
        watermark = str(len(self.mailbox(address).events))
        return self._response(
            "Subscribe",
            [
                self._ok(
                    "Subscribe",
                    (
                        f"<m:SubscriptionId>{subscription}</m:SubscriptionId>"
                        f"<m:Watermark>{base64.b64encode(watermark.encode()).decode()}</m:Watermark>"
                    ),
                )
            ],
        )

    def _op_GetEvents(self, request: Any, acting: str | None) -> str:
        subscription = request.findtext("m:SubscriptionId", namespaces=NS)
        address = self.subscriptions.get(subscription or "")
        if address is None:
            return self._response(
                "GetEvents",
                [
                    self._error(
                        "GetEvents",
                        "ErrorSubscriptionNotFound",
                        "The specified subscription was not found.",
                    )
                ],
            )
        watermark = int(
            base64.b64decode(request.findtext("m:Watermark", namespaces=NS) or "MA==").decode()
        )
        events = self.mailbox(address).events
        inner = [
            f"<t:SubscriptionId>{subscription}</t:SubscriptionId><t:PreviousWatermark>"
            f"{base64.b64encode(str(watermark).encode()).decode()}</t:PreviousWatermark>"
            "<t:MoreEvents>false</t:MoreEvents>"
        ]
        for index in range(watermark, len(events)):
            mark = base64.b64encode(str(index + 1).encode()).decode()
            inner.append(
                f"<t:NewMailEvent><t:Watermark>{mark}</t:Watermark><t:TimeStamp>"
                f'{_ts(datetime.now(UTC))}</t:TimeStamp><t:ItemId Id="{events[index]}"'
                f' ChangeKey="CK1"/><t:ParentFolderId Id="{self._folder_id(address, "inbox")}"'
                "/></t:NewMailEvent>"
            )
        if len(inner) == 1:  # nothing new: a status event carries the current watermark
            mark = base64.b64encode(str(len(events)).encode()).decode()
            inner.append(f"<t:StatusEvent><t:Watermark>{mark}</t:Watermark></t:StatusEvent>")
        return self._response(
            "GetEvents",
            [self._ok("GetEvents", (f"<m:Notification>{''.join(inner)}</m:Notification>"))],
        )

    def _op_GetFolder(self, request: Any, acting: str | None) -> str:
        messages = []
        for folder in request.find("m:FolderIds", NS):
            address, name = self._folder_owner(_wrap(folder), acting)
            tag = "CalendarFolder" if name == "calendar" else "Folder"
            self.mailbox(address)
            messages.append(
                self._ok(
                    "GetFolder",
                    (
                        f'<m:Folders><t:{tag}><t:FolderId Id="{self._folder_id(address, name)}" '
                        f'ChangeKey="AQAAAA=="/><t:DisplayName>{name.title()}</t:DisplayName>'
                        f"<t:TotalCount>0</t:TotalCount><t:ChildFolderCount>0</t:ChildFolderCount>"
                        f"</t:{tag}></m:Folders>"
                    ),
                )
            )
        return self._response("GetFolder", messages)

    def _op_FindItem(self, request: Any, acting: str | None) -> str:
        address, name = self._folder_owner(request.find("m:ParentFolderIds", NS), acting)
        box = self.mailbox(address)
        view = request.find("m:CalendarView", NS)
        if view is not None:
            start = datetime.fromisoformat(view.get("StartDate").replace("Z", "+00:00"))
            end = datetime.fromisoformat(view.get("EndDate").replace("Z", "+00:00"))
            items = [i for i in box.calendar.values() if _overlaps(i.meeting, start, end)]
            inner = "".join(_calendar_summary(i) for i in items)
            return self._response(
                "FindItem",
                [
                    self._ok(
                        "FindItem",
                        (
                            f'<m:RootFolder TotalItemsInView="{len(items)}" IncludesLastItemInRange="true">'
                            f"<t:Items>{inner}</t:Items></m:RootFolder>"
                        ),
                    )
                ],
            )
        folder = box.inbox if name == "inbox" else box.calendar
        paging = request.find("m:IndexedPageItemView", NS)
        offset = int(paging.get("Offset", "0")) if paging is not None else 0
        limit = int(paging.get("MaxEntriesReturned", "1000")) if paging is not None else 1000
        everything = sorted(folder.values(), key=lambda i: i.received)
        page = everything[offset : offset + limit]
        last = offset + len(page) >= len(everything)
        inner = "".join(
            f'<t:{_tag(i)}><t:ItemId Id="{i.id}" ChangeKey="{i.changekey}"/></t:{_tag(i)}>'
            for i in page
        )
        return self._response(
            "FindItem",
            [
                self._ok(
                    "FindItem",
                    (
                        f'<m:RootFolder IndexedPagingOffset="{offset + len(page)}" TotalItemsInView='
                        f'"{len(everything)}" IncludesLastItemInRange="{str(last).lower()}"><t:Items>{inner}'
                        "</t:Items></m:RootFolder>"
                    ),
                )
            ],
        )

    def _op_GetItem(self, request: Any, acting: str | None) -> str:
        messages = []
        for item_id in request.find("m:ItemIds", NS):
            found = self._find(item_id.get("Id"))
            if found is None:
                messages.append(self._not_found("GetItem"))
                continue
            box, folder, item = found
            parent = self._folder_id(box.address, self._folder_name(box, folder))
            messages.append(
                self._ok("GetItem", f"<m:Items>{_item_xml(item, box.address, parent)}</m:Items>")
            )
        return self._response("GetItem", messages)

    def _op_CreateItem(self, request: Any, acting: str | None) -> str:
        saved_in = request.findtext("m:SavedItemFolderId//t:EmailAddress", namespaces=NS)
        sender = acting or saved_in or ""
        messages = []
        for element in request.find("m:Items", NS):
            kind = etree.QName(element).localname
            if kind == "Message":
                to = tuple(a.text for a in element.findall(".//t:ToRecipients//t:EmailAddress", NS))
                body = element.findtext("t:Body", default="", namespaces=NS)
                subject = element.findtext("t:Subject", default="", namespaces=NS)
                mailbox = element.findtext("t:From//t:EmailAddress", namespaces=NS) or sender
                self.mailbox(mailbox or "unknown").sent.append(
                    FakeItem(self.new_id("msg"), "Message", None, subject, body, mailbox, to)
                )
                messages.append(self._ok("CreateItem", "<m:Items/>"))
                continue
            ref = element.find("t:ReferenceItemId", NS)
            found = self._find(ref.get("Id")) if ref is not None else None
            if found is None:
                messages.append(self._not_found("CreateItem"))
                continue
            box, folder, item = found
            if item.id in self.refuse_responses:
                code = self.refuse_responses[item.id]
                messages.append(self._error("CreateItem", code, f"{code} (refused by the test)"))
                continue
            body = element.findtext("t:Body", default="", namespaces=NS)
            assert item.meeting is not None
            if kind in ("AcceptItem", "DeclineItem"):
                response = "Accept" if kind == "AcceptItem" else "Decline"
                reply = FakeItem(
                    self.new_id("sent"),
                    "Message",
                    item.meeting,
                    f"{'Accepted' if response == 'Accept' else 'Declined'}: {item.subject}",
                    body,
                    box.address,
                    (item.sender,),
                    response=response,
                )
                box.sent.append(reply)
                if response == "Accept":
                    self._put_on_calendar(box, item.meeting)
            elif kind == "RemoveItem":
                self._remove_from_calendar(box, item.meeting)
            else:
                messages.append(self._error("CreateItem", "ErrorInvalidRequest", kind))
                continue
            if folder is box.inbox or folder is box.calendar:  # a responded-to request
                del folder[item.id]  # leaves the inbox, for Deleted Items
                box.deleted.append(item)
            messages.append(self._ok("CreateItem", "<m:Items/>"))
        return self._response("CreateItem", messages)

    def _put_on_calendar(self, box: Mailbox, meeting: Meeting) -> None:
        for existing in list(box.calendar.values()):
            same = existing.meeting and existing.meeting.uid == meeting.uid
            if same and (
                meeting.recurrence_id is None
                or existing.meeting.recurrence_id == meeting.recurrence_id
            ):
                del box.calendar[existing.id]
        item = FakeItem(
            self.new_id("cal"),
            "CalendarItem",
            meeting,
            meeting.subject,
            meeting.html_body,
            meeting.organizer_email,
            response="Accept",
        )
        box.calendar[item.id] = item

    def _remove_from_calendar(self, box: Mailbox, meeting: Meeting) -> None:
        for existing in list(box.calendar.values()):
            if existing.meeting is None or existing.meeting.uid != meeting.uid:
                continue
            if meeting.recurrence_id is None:
                del box.calendar[existing.id]
            else:
                existing.meeting = replace(
                    existing.meeting, exdates=(*existing.meeting.exdates, meeting.recurrence_id)
                )

    def _op_UpdateItem(self, request: Any, acting: str | None) -> str:
        messages = []
        send = request.get("SendMeetingInvitationsOrCancellations", "")
        for change in request.find("m:ItemChanges", NS):
            item_id = change.find("t:ItemId", NS)
            found = self._find(item_id.get("Id"))
            if found is None:
                messages.append(self._not_found("UpdateItem"))
                continue
            _, _, item = found
            if item_id.get("ChangeKey") not in (None, item.changekey):
                messages.append(
                    self._error(
                        "UpdateItem",
                        "ErrorIrresolvableConflict",
                        "The send or update operation could not be performed "
                        "because the change key passed in the request does "
                        "not match the current change key for the item.",
                    )
                )
                continue
            body = change.find(".//t:SetItemField//t:Body", NS)
            if body is not None:
                item.body = body.text or ""
                if item.meeting is not None:
                    bump = 1 if self.update_bumps_sequence else 0
                    item.meeting = replace(
                        item.meeting, html_body=item.body, sequence=item.meeting.sequence + bump
                    )
            item.changekey = f"CK{int(item.changekey[2:]) + 1}"
            if send.startswith("SendToAll") and item.meeting is not None:
                item.updates_sent += 1
                self._send_to_all(item)
            messages.append(
                self._ok(
                    "UpdateItem",
                    (
                        f'<m:Items><t:CalendarItem><t:ItemId Id="{item.id}" ChangeKey="{item.changekey}"/>'
                        "</t:CalendarItem></m:Items><m:ConflictResults><t:Count>0</t:Count>"
                        "</m:ConflictResults>"
                    ),
                )
            )
        return self._response("UpdateItem", messages)

    def _op_DeleteItem(self, request: Any, acting: str | None) -> str:
        messages = []
        delete_type = request.get("DeleteType", "")
        self.delete_types.append(delete_type)
        for item_id in request.find("m:ItemIds", NS):
            found = self._find(item_id.get("Id"))
            if found is None:
                messages.append(self._not_found("DeleteItem"))
                continue
            box, folder, item = found
            if folder is box.inbox or folder is box.calendar:
                del folder[item.id]
                (box.purged if delete_type == "HardDelete" else box.deleted).append(item)
            else:  # deleting in Deleted Items purges
                box.deleted.remove(item)
                box.purged.append(item)
            messages.append(self._ok("DeleteItem"))
        return self._response("DeleteItem", messages)


def _wrap(element: Any) -> Any:
    holder = etree.Element("holder")
    holder.append(etree.fromstring(etree.tostring(element)))
    return holder


def _tag(item: FakeItem) -> str:
    return item.kind if item.kind != "Message" else "Message"


def _overlaps(meeting: Meeting | None, start: datetime, end: datetime) -> bool:
    if meeting is None:
        return False
    if meeting.rrule:
        return meeting.start < end
    return meeting.start < end and meeting.end > start


def _mailbox_xml(name: str, address: str) -> str:
    return (
        f"<t:Mailbox><t:Name>{_e(name)}</t:Name><t:EmailAddress>{_e(address)}"
        "</t:EmailAddress><t:RoutingType>SMTP</t:RoutingType></t:Mailbox>"
    )


def _calendar_summary(item: FakeItem) -> str:
    meeting = item.meeting
    assert meeting is not None
    return (
        f'<t:CalendarItem><t:ItemId Id="{item.id}" ChangeKey="{item.changekey}"/>'
        f"<t:Subject>{_e(item.subject)}</t:Subject><t:Start>{_ts(meeting.start)}</t:Start>"
        f"<t:End>{_ts(meeting.end)}</t:End><t:UID>{_e(meeting.uid)}</t:UID>"
        f"</t:CalendarItem>"
    )


def meeting_to_imip(meeting: Meeting, room: str, sender: str = "") -> bytes:
    """The MIME content Exchange keeps for a meeting message: an iMIP mail with the HTML body
    and the text/calendar part (REQUEST or CANCEL), From the organizer unless `sender` says
    who else sent it."""
    cal = icalendar.Calendar()
    cal.add("prodid", "-//Microsoft Corporation//Outlook 16.0 MIMEDIR//EN")
    cal.add("version", "2.0")
    cal.add("method", meeting.method)
    event = icalendar.Event()
    event.add("uid", meeting.uid)
    event.add("sequence", meeting.sequence)
    event.add("dtstamp", datetime.now(UTC))
    event.add("dtstart", meeting.start)
    event.add("dtend", meeting.end)
    event.add("summary", meeting.subject)
    if meeting.recurrence_id is not None:
        event.add("recurrence-id", meeting.recurrence_id)
    if meeting.rrule:
        event.add("rrule", icalendar.vRecur.from_ical(meeting.rrule))
    for exdate in meeting.exdates:
        event.add("exdate", exdate)
    organizer = icalendar.vCalAddress(f"mailto:{meeting.organizer_email}")
    organizer.params["CN"] = meeting.organizer_name
    event.add("organizer", organizer)
    for attendee in (room, *meeting.attendees):
        event.add("attendee", icalendar.vCalAddress(f"mailto:{attendee}"))
    if meeting.method == "CANCEL":
        event.add("status", "CANCELLED")
    cal.add_component(event)
    mail = MIMEMultipart("alternative")
    if sender and sender.lower() != meeting.organizer_email.lower():
        mail["From"] = sender
    else:
        mail["From"] = formataddr((meeting.organizer_name, meeting.organizer_email))
    mail["To"] = room
    mail["Subject"] = meeting.subject
    mail.attach(MIMEText(meeting.html_body or "<p></p>", "html", "utf-8"))
    part = MIMEText(cal.to_ical().decode(), "calendar", "utf-8")
    part.set_param("method", meeting.method)
    mail.attach(part)
    return mail.as_bytes()


def _item_xml(item: FakeItem, room: str, parent: str = "") -> str:
    meeting = item.meeting
    tag = item.kind
    item_class = {
        "MeetingRequest": "IPM.Schedule.Meeting.Request",
        "MeetingCancellation": "IPM.Schedule.Meeting.Canceled",
        "CalendarItem": "IPM.Appointment",
        "Message": "IPM.Note",
    }[tag]
    parts = [f'<t:ItemId Id="{item.id}" ChangeKey="{item.changekey}"/>']
    if parent:
        parts.append(f'<t:ParentFolderId Id="{parent}" ChangeKey="AQAAAA=="/>')
    if meeting is not None:
        mime = base64.b64encode(meeting_to_imip(meeting, room, item.sender)).decode()
        parts.insert(0, f'<t:MimeContent CharacterSet="UTF-8">{mime}</t:MimeContent>')
    parts.append(f"<t:ItemClass>{item_class}</t:ItemClass>")
    parts.append(f"<t:Subject>{_e(item.subject)}</t:Subject>")
    parts.append(f'<t:Body BodyType="HTML">{_e(item.body)}</t:Body>')
    parts.append(f"<t:DateTimeReceived>{_ts(item.received)}</t:DateTimeReceived>")
    sender = (
        (meeting.organizer_name, meeting.organizer_email)
        if meeting and item.sender.lower() in ("", meeting.organizer_email.lower())
        else (item.sender, item.sender)
    )
    if tag != "CalendarItem":  # Exchange sets both on messages
        parts.append(f"<t:Sender>{_mailbox_xml(*sender)}</t:Sender>")
        parts.append(f"<t:From>{_mailbox_xml(*sender)}</t:From>")
    if tag == "MeetingRequest" and item.request_type:
        parts.append(f"<t:MeetingRequestType>{item.request_type}</t:MeetingRequestType>")
    if meeting is not None and tag == "CalendarItem":
        parts.append(f"<t:Start>{_ts(meeting.start)}</t:Start><t:End>{_ts(meeting.end)}</t:End>")
        parts.append(f"<t:UID>{_e(meeting.uid)}</t:UID>")
        if meeting.recurrence_id is not None:
            parts.append(f"<t:RecurrenceId>{_ts(meeting.recurrence_id)}</t:RecurrenceId>")
        parts.append(
            f"<t:AppointmentSequenceNumber>{meeting.sequence}</t:AppointmentSequenceNumber>"
        )
        parts.append(
            f"<t:Organizer>{_mailbox_xml(meeting.organizer_name, meeting.organizer_email)}"
            "</t:Organizer>"
        )
    return f"<t:{tag}>{''.join(parts)}</t:{tag}>"
