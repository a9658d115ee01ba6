"""Exchange Server (2016/2019/SE) through EWS, with exchangelib: the equipment mailbox's inbox
in, accept/decline/remove responses and organizer updates out.

Every mailbox, the room's included, is opened by impersonation (the ExchangeImpersonation
header on every request): the documented set-up grants the service account ApplicationImpersonation
over the room and the organizers, nothing else (no FullAccess on the room), and an app-only
OAuth token (oauth_app) is refused by Exchange on any request without that header.

Meeting messages are read through their MIME content: Exchange keeps the iCalendar it sent
(UID, SEQUENCE, recurrence rule, exceptions, time zones, organizer, HTML body), and the same
iTIP translator as the spool backend turns it into meetings, so both backends reach identical
decisions. Every EWS request is counted in vmrsched_exchange_requests_total. Blocking: called
only from the poller and notifier actor threads.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import requests
from exchangelib import (
    BASIC,
    DELEGATE,
    IMPERSONATION,
    NTLM,
    Account,
    Configuration,
    Credentials,
    EWSDateTime,
    FailFast,
    HTMLBody,
    Mailbox,
    Message,
)
from exchangelib.errors import (
    ErrorInternalServerTransientError,
    ErrorInvalidRequest,
    ErrorInvalidSubscription,
    ErrorInvalidSubscriptionRequest,
    ErrorInvalidWatermark,
    ErrorItemNotFound,
    ErrorServerBusy,
    ErrorSubscriptionNotFound,
    ErrorTimeoutExpired,
    EWSError,
    RateLimitError,
    ResponseMessageError,
    TransportError,
    UnauthorizedError,
)
from exchangelib.ewsdatetime import UTC as EWS_UTC
from exchangelib.items import (
    SEND_AND_SAVE_COPY,
    SEND_TO_NONE,
    AcceptItem,
    CalendarItem,
    DeclineItem,
)
from exchangelib.items.base import BaseReplyItem
from exchangelib.properties import Fields, ReferenceItemId
from exchangelib.protocol import BaseProtocol
from exchangelib.services import CreateItem
from exchangelib.transport import NOAUTH
from exchangelib.version import Build, Version

from vmrsched.config import IntegrationConfig
from vmrsched.mailbox import itip
from vmrsched.mailbox.base import (
    CalendarEntry,
    GatewayError,
    InboxItem,
    Outgoing,
    outcome_unknown,
)
from vmrsched.mailbox.ews_auth import TokenSource
from vmrsched.meetings import Meeting, is_address
from vmrsched.telemetry import EXCHANGE_UNREACHABLE, Metrics

log = logging.getLogger("vmrsched.ews")

# Exchange 2013 SP1 schema: understood by every supported on-premises version, so no request is
# spent guessing the server version.
REQUEST_VERSION = Version(build=Build(15, 0, 847))
MEETING_CLASSES = ("IPM.Schedule.Meeting.Request", "IPM.Schedule.Meeting.Canceled")
MAX_PAGE = 1000  # EWS returns at most 1,000 items per FindItem
CATCH_UP_SECONDS = 60.0  # list the inbox at least this often, events or not
FETCH_FIELDS = ("mime_content", "item_class", "datetime_received", "subject", "sender", "author")
_OPERATION = re.compile(rb"<(?:\w+:)?Body[^>]*>\s*<(?:\w+:)?(\w+)")
_current = threading.local()


class RemoveItem(BaseReplyItem):  # type: ignore[misc]
    """EWS RemoveItem: takes a cancelled meeting off the room's calendar and removes the
    cancellation. exchangelib has the other response objects but not this one."""

    ELEMENT_NAME = "RemoveItem"
    FIELDS = Fields(BaseReplyItem.FIELDS[BaseReplyItem.FIELDS.index_by_name("reference_item_id")])


class CountingAdapter(requests.adapters.HTTPAdapter):
    """Every EWS request passes here: it is counted by operation and result for the integration
    the calling thread works for, gets that integration's OAuth bearer token, and is retried
    once with a fresh token when Exchange says the token expired (401). The proxy follows the
    service's one rule (vmrsched.proxies): the environment's, or none for an integration with
    disable_web_proxy."""

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> Any:
        body = request.body if isinstance(request.body, bytes) else b""
        match = _OPERATION.search(body[:4000])
        operation = match.group(1).decode() if match else "unknown"
        counter = getattr(_current, "counter", None)
        tokens = getattr(_current, "tokens", None)
        ca_file = getattr(_current, "ca_file", None)
        if ca_file:
            kwargs["verify"] = ca_file
        if getattr(_current, "direct", False):  # the integration turned the web proxy off
            kwargs["proxies"] = {}
        attempts = 2 if tokens is not None else 1
        for attempt in range(attempts):
            if tokens is not None:
                request.headers["Authorization"] = f"Bearer {tokens.get(force=attempt > 0)}"
            try:
                response = super().send(request, *args, **kwargs)
            except Exception:
                if counter is not None:
                    counter(operation, "error")
                raise
            result = "ok" if response.status_code < 400 else str(response.status_code)
            if counter is not None:
                counter(operation, result)
            if response.status_code != 401 or attempt + 1 == attempts:
                return response
            response.close()  # give the connection back to the pool before the retry
        raise AssertionError("unreachable")


BaseProtocol.HTTP_ADAPTER_CLS = CountingAdapter


# Response codes that will not change on a retry (Microsoft's EWS response code reference):
# the message fails alone, is kept with its reason, and the queue goes on.
PERMANENT_CODES = frozenset(
    {
        "ErrorImpersonateUserDenied",
        "ErrorImpersonationDenied",
        "ErrorAccessDenied",
        "ErrorSendAsDenied",
        "ErrorNonExistentMailbox",
        "ErrorMailRecipientNotFound",
        "ErrorInvalidRecipients",
        "ErrorInvalidSmtpAddress",
        "ErrorMessageSizeExceeded",
        "ErrorItemNotFound",
        "ErrorInvalidIdMalformed",
        "ErrorCalendarIsCancelledForAccept",
        "ErrorCalendarIsCancelledForDecline",
        "ErrorCalendarIsCancelledForRemove",
        "ErrorCalendarIsOrganizerForAccept",
        "ErrorCalendarIsOrganizerForDecline",
        "ErrorCalendarIsOrganizerForRemove",
        "ErrorCalendarIsDelegatedForAccept",
        "ErrorCalendarIsDelegatedForDecline",
        "ErrorCalendarIsDelegatedForRemove",
        "ErrorSchemaValidation",
        "ErrorInvalidRequest",
        "ErrorInvalidPropertySet",
        "ErrorCorruptData",
        "ErrorInvalidSid",
        "ErrorQuotaExceeded",
    }
)


def _translate(exc: Exception) -> GatewayError:
    """exchangelib's failures as the gateway error the actors act on: throttling and outages
    back the whole mailbox off; a response code about one message fails or retries it alone.
    A request that went out and got no answer (exchangelib re-raises a read timeout or a
    dropped connection as ErrorTimeoutExpired, or as ErrorServerBusy) is an outage, never one
    message's refusal, and it may have been carried out (outcome_unknown)."""
    code = type(exc).__name__ if type(exc).__name__.startswith("Error") else ""
    if str(exc).startswith("Reraised from") and isinstance(
        exc, ErrorServerBusy | ErrorTimeoutExpired | ErrorInternalServerTransientError
    ):
        return GatewayError(f"Exchange did not answer: {exc}", outcome_unknown=outcome_unknown(exc))
    if isinstance(exc, requests.RequestException | OSError):
        return GatewayError(
            f"Exchange unreachable: {type(exc).__name__}: {exc}",
            outcome_unknown=outcome_unknown(exc),
        )
    if isinstance(exc, ErrorServerBusy):
        # the server's own BackOffMilliseconds (or Retry-After) when it gave one, else the
        # caller's backoff: for a transient error without either (a bare 503), exchangelib
        # "re-raises" it as busy with a guess of its own (10 s and doubling), which is not ours
        delay = None if str(exc).startswith("Reraised from") else getattr(exc, "back_off", None)
        return GatewayError(f"Exchange is throttling: {exc}", retry_after=delay or None)
    if isinstance(exc, RateLimitError):
        wait = getattr(exc, "wait", None)
        return GatewayError(f"Exchange is throttling: {exc}", retry_after=wait or None)
    if isinstance(exc, UnauthorizedError):
        return GatewayError(f"Exchange refused the service account: {exc}")
    if code in PERMANENT_CODES:
        return GatewayError(f"Exchange refused: {code}: {exc}", permanent=True, code=code)
    if isinstance(exc, ResponseMessageError) and code:
        return GatewayError(f"Exchange refused, for now: {code}: {exc}", code=code)
    return GatewayError(f"Exchange unreachable: {type(exc).__name__}: {exc}")


def _smtp(mailbox: Any) -> str:
    """The SMTP address of an EWS mailbox (Sender, From), or "" when Exchange gave another form
    (an internal EX address) or none."""
    address = str(getattr(mailbox, "email_address", "") or "").strip()
    return address if is_address(address) else ""


RETRYABLE = (TransportError, EWSError, requests.RequestException, OSError)


class EwsMailbox:
    alarm = EXCHANGE_UNREACHABLE
    # a resend is not harmless (a second reply or organizer update): the notifier marks each
    # message delivered as soon as Exchange took it
    idempotent_send = False

    def __init__(
        self,
        integ: IntegrationConfig,
        metrics: Metrics | None = None,
        tokens: TokenSource | None = None,
    ) -> None:
        self.integ = integ
        self.tokens = tokens
        self.name = integ.name
        self.metrics = metrics
        self.room = integ.exchange.mailbox_email
        self._account: Account | None = None
        self._impersonated: dict[str, Account] = {}
        self._handed_off: set[str] = set()
        self._classes: dict[str, str] = {}
        # change detection: a pull subscription on the inbox (None: (re)subscribe, and list the
        # inbox as catch-up); refused: the server offers none, so poll by listing
        self._subscription: tuple[str, str] | None = None
        self._subscriptions_refused = False
        # what the poller's and the notifier's threads both change: the accounts built once,
        # the items handed off to a reply, the item classes
        self._state = threading.Lock()
        self._backlog = False  # the last listing was cut at the batch limit
        self._listed_at = 0.0

    # --- plumbing ---------------------------------------------------------------------------
    def _count(self, operation: str, result: str) -> None:
        if self.metrics is not None:
            self.metrics.exchange_requests.labels(self.name, operation, result).inc()

    @contextmanager
    def _calling(self) -> Iterator[None]:
        saved = (
            getattr(_current, "counter", None),
            getattr(_current, "tokens", None),
            getattr(_current, "ca_file", None),
            getattr(_current, "direct", False),
        )
        _current.counter, _current.tokens = self._count, self.tokens
        _current.ca_file = self.integ.exchange.tls_ca_file or None
        _current.direct = self.integ.advanced.disable_web_proxy
        try:
            yield
        except GatewayError:
            raise
        except ErrorItemNotFound:
            raise  # the caller knows what a missing item means where it asked
        except RETRYABLE as exc:
            raise _translate(exc) from exc
        finally:
            _current.counter, _current.tokens, _current.ca_file, _current.direct = saved

    def _configuration(self) -> Configuration:
        ex = self.integ.exchange
        common: dict[str, Any] = {
            "service_endpoint": ex.ews_url,
            "version": REQUEST_VERSION,
            "retry_policy": FailFast(),
            "max_connections": 4,
        }
        if ex.authentication.startswith("oauth"):
            if self.tokens is None:
                raise GatewayError(f"{ex.authentication}: no token source")
            # the bearer token is added per request by CountingAdapter (msal keeps it fresh)
            return Configuration(auth_type=NOAUTH, **common)
        if ex.service_account_password is None:
            raise GatewayError("no service account password configured")
        credentials = Credentials(ex.service_account_username, ex.service_account_password.reveal())
        return Configuration(
            credentials=credentials,
            auth_type=BASIC if ex.authentication == "basic" else NTLM,
            **common,
        )

    def account(self) -> Account:
        """The equipment mailbox's account, opened by impersonation, built once (by whichever
        thread asks first)."""
        with self._state:
            if self._account is None:
                with self._calling():
                    self._account = self._open(self.room, self._configuration())
            return self._account

    @staticmethod
    def _open(address: str, config: Configuration, access_type: str = IMPERSONATION) -> Account:
        return Account(
            address,
            config=config,
            autodiscover=False,
            access_type=access_type,
            default_timezone=EWS_UTC,
        )

    def _as(self, address: str) -> Account:
        """An organizer's mailbox through ApplicationImpersonation (built once per organizer)."""
        key = address.lower()
        config = self.account().protocol.config
        with self._state:
            if key not in self._impersonated:
                self._impersonated[key] = self._open(address, config)
            return self._impersonated[key]

    # --- reading ----------------------------------------------------------------------------
    def fetch(self, limit: int) -> Sequence[InboxItem]:
        """New items, oldest first. The inbox is listed (FindItem) only when the subscription
        reports new mail, when it had to be (re)created (catch-up for anything that arrived
        meanwhile), when the last listing left a backlog, or when subscriptions are refused."""
        account = self.account()
        with self._calling():
            due = time.monotonic() - self._listed_at >= CATCH_UP_SECONDS
            if not (self._changed(account) or self._backlog or due):
                return []
            self._listed_at = time.monotonic()
            # One FindItem for the whole listing: paging by offset would skip items while the
            # notifier removes answered ones between pages.
            with self._state:
                handed_off = set(self._handed_off)
            wanted = min(MAX_PAGE, limit + len(handed_off))
            query = account.inbox.all().order_by("datetime_received")
            query.page_size = wanted
            listed = list(query.values_list("id", "changekey")[:wanted])
            fresh = [(i, c) for i, c in listed if i not in handed_off]
            ids = fresh[:limit]
            # more may be waiting: the listing was full, or this batch was (items handed off
            # may have left the inbox meanwhile, so a short listing proves nothing)
            self._backlog = len(listed) >= wanted or len(fresh) >= limit
            if not ids:
                return []
            fetched = list(account.fetch(ids=ids, only_fields=FETCH_FIELDS))
        items: list[InboxItem] = []
        for (item_id, _), item in zip(ids, fetched, strict=True):
            if isinstance(item, Exception):
                continue  # gone since the listing (someone else moved it)
            items.append(self._to_inbox_item(item_id, item))
        return items

    def _changed(self, account: Account) -> bool:
        if self._subscriptions_refused:
            return True  # no subscriptions on this server: list every time
        if self._subscription is None:
            try:
                subscription_id, watermark = account.inbox.subscribe_to_pull(
                    event_types=("NewMailEvent", "CreatedEvent", "MovedEvent", "CopiedEvent"),
                    timeout=30,
                )
            except (ErrorInvalidSubscriptionRequest, ErrorInvalidRequest) as exc:
                log.info(
                    "no subscriptions (%s); polling the inbox instead",
                    exc,
                    extra={"integration": self.name},
                )
                self._subscriptions_refused = True
                return True
            self._subscription = (subscription_id, watermark)
            return True  # catch up with whatever arrived before the subscription
        subscription_id, watermark = self._subscription
        try:
            changed = False
            for notification in account.inbox.get_events(subscription_id, watermark):
                for event in notification.events:
                    watermark = getattr(event, "watermark", None) or watermark
                    changed = changed or type(event).__name__ != "StatusEvent"
            self._subscription = (subscription_id, watermark)
            return changed
        except (ErrorSubscriptionNotFound, ErrorInvalidSubscription, ErrorInvalidWatermark):
            self._subscription = None  # expired (30 min unpolled) or the server restarted
            return self._changed(account)

    def _to_inbox_item(self, item_id: str, item: Any) -> InboxItem:
        received = item.datetime_received or datetime.now(UTC)
        item_class = item.item_class or ""
        with self._state:
            self._classes[item_id] = item_class
        sender = getattr(item, "sender", None)
        sender_email = getattr(sender, "email_address", "") or ""
        sender_name = getattr(sender, "name", "") or ""
        if not item_class.startswith(MEETING_CLASSES):
            # an out-of-office, a bounce, a newsletter, a meeting response: never answered
            return InboxItem(
                item_id,
                received,
                error=f"not a meeting request ({item_class})",
                sender_email=sender_email,
                sender_name=sender_name,
                subject=item.subject or "",
                not_meeting=True,
            )
        if not item.mime_content:
            return InboxItem(item_id, received, error="meeting message without MIME content")
        try:
            parsed = itip.parse_mail(item.mime_content, self.integ.timezone)
        except itip.ParseError as exc:
            return InboxItem(
                item_id,
                received,
                error=exc.reason,
                sender_email=exc.organizer_email or sender_email,
                sender_name=exc.organizer_name or sender_name,
                subject=exc.subject or item.subject or "",
                uid=exc.uid,
                not_meeting=exc.not_meeting,
                auto_submitted=exc.auto_submitted,
            )
        # who sent it, as Exchange has it (From is EWS's "author"): it decides whether the
        # message may change a booking; an address Exchange gives in another form than SMTP
        # leaves the MIME headers' word
        parsed = itip.sent_in_mail(parsed, _smtp(getattr(item, "author", None)), _smtp(sender))
        return InboxItem(item_id, received, meetings=parsed.meetings)

    # --- handling ---------------------------------------------------------------------------
    def mark_handled(self, item_id: str, replied: bool = False, refused: bool = False) -> None:
        """A reply will respond to (and so remove) the item: keep it out of later fetches until
        then. Otherwise remove it now: a cancellation with RemoveItem (the room's calendar loses
        the meeting), anything else, and a cancellation `refused` (not from the meeting's
        organizer: the room keeps the meeting), to Deleted Items."""
        if replied:
            with self._state:
                self._handed_off.add(item_id)
            return
        account = self.account()
        with self._state:
            item_class = self._classes.get(item_id, "")
        with self._calling():
            try:
                if item_class.startswith(MEETING_CLASSES[1]) and not refused:
                    RemoveItem(account=account, reference_item_id=ReferenceItemId(id=item_id)).send(
                        save_copy=False
                    )
                else:
                    account.bulk_delete(ids=[(item_id, None)])
            except ErrorItemNotFound:
                pass  # already gone (reprocessing after a crash)
        with self._state:
            self._classes.pop(item_id, None)

    def quarantine(self, item_id: str, reason: str) -> None:
        log.info(
            "moving item to Deleted Items: %s",
            reason,
            extra={"integration": self.name, "item": item_id},
        )
        self.mark_handled(item_id, replied=False)

    def record_accepted(self, meeting: Meeting) -> None:
        """Nothing to do: accepting a meeting request puts it on the room's calendar."""

    def sync(self) -> None:
        """Nothing to do: Exchange's writes are durable when it answers."""

    # --- sending ----------------------------------------------------------------------------
    def send(self, message: Outgoing) -> None:
        with self._calling():
            if message.kind == "update":
                self._update_organizer(message)
            elif message.kind == "reply" and message.extra.get("item_id"):
                self._respond(message)
            else:
                self._mail(message)

    def send_many(self, messages: Sequence[Outgoing]) -> list[BaseException | None]:
        """Responses to request items, all in one CreateItem (exchangelib chunks it): one EWS
        request for a poll's worth of answers instead of one each. Returns each message's
        outcome (None: delivered). A refusal Exchange gives for the batch as a whole makes each
        message go on its own, so one bad item cannot fail the others."""
        try:
            return self._responses(messages)
        except GatewayError as exc:
            if exc.code and not exc.retry_after and len(messages) > 1:  # about some item
                return [self._send_one(m) for m in messages]
            raise

    def _responses(self, messages: Sequence[Outgoing]) -> list[BaseException | None]:
        """AcceptItem/DeclineItem for each message's request item, in one CreateItem. A request
        no longer in the inbox was answered before a restart (only a response removes it, or
        someone by hand): a second answer would be a duplicate, so nothing is sent for it."""
        account = self.account()
        items = [
            (AcceptItem if m.outcome == "accepted" else DeclineItem)(
                account=account,
                reference_item_id=ReferenceItemId(id=str(m.extra["item_id"])),
                body=HTMLBody(m.html_body),
            )
            for m in messages
        ]
        with self._calling():
            results = list(
                CreateItem(account=account).call(
                    items=items,
                    folder=None,
                    message_disposition=SEND_AND_SAVE_COPY,
                    send_meeting_invitations=SEND_TO_NONE,
                )
            )
        outcomes: list[BaseException | None] = []
        for message, result in zip(messages, results, strict=True):
            item_id = str(message.extra["item_id"])
            with self._state:
                self._handed_off.discard(item_id)
                self._classes.pop(item_id, None)
            if isinstance(result, ErrorItemNotFound):
                log.info(
                    "meeting request %s is gone; answered before a restart, not answered again",
                    item_id,
                    extra={"integration": self.name, "meeting_uid": message.meeting_uid},
                )
                outcomes.append(None)
            elif isinstance(result, Exception):
                outcomes.append(_translate(result))
            else:
                outcomes.append(None)
        return outcomes

    def _send_one(self, message: Outgoing) -> BaseException | None:
        try:
            self.send(message)
        except Exception as exc:
            return exc
        return None

    def delivered(self, message: Outgoing) -> bool:
        """Whether a message whose sending may have taken effect already did (queued before a
        restart, or its request got no answer): an organizer update is there when the
        organizer's meeting already carries the new alias. A response needs no asking here:
        sent again, it finds its request gone from the inbox (ErrorItemNotFound), which
        counts as answered."""
        if message.kind != "update" or not message.extra.get("alias_id"):
            return False
        with self._calling():
            item = self._organizer_item(message)
            if item is None:
                return False
            [full] = list(self._as(message.sender).fetch(ids=[item], only_fields=("body",)))
        body = "" if isinstance(full, Exception) else str(full.body or "")
        return f"PXPS:-{message.extra['alias_id']}#" in body

    def _respond(self, message: Outgoing) -> None:
        [outcome] = self._responses([message])
        if outcome is not None:
            raise outcome

    def _mail(self, message: Outgoing) -> None:
        Message(
            account=self.account(),
            subject=message.subject,
            body=HTMLBody(message.html_body),
            to_recipients=[Mailbox(email_address=r) for r in message.recipients],
        ).send()

    def _organizer_item(self, message: Outgoing) -> Any:
        """The organizer's own calendar item of the meeting (by UID, near its start)."""
        organizer = self._as(message.sender)
        start = datetime.fromisoformat(str(message.extra["start"]))
        window = (
            EWSDateTime.from_datetime(start - timedelta(days=1)),
            EWSDateTime.from_datetime(start + timedelta(days=1)),
        )
        found = [
            i
            for i in organizer.calendar.view(*window).only("id", "changekey", "uid")
            if i.uid == message.meeting_uid
        ]
        return found[0] if found else None

    def _update_organizer(self, message: Outgoing) -> None:
        """Find the organizer's meeting by UID and replace its body, sending the update to all
        attendees as the organizer. Exchange delivers that update to the room too; the rules
        recognise it (nothing they care about changed) and leave it unanswered."""
        item = self._organizer_item(message)
        if item is None:
            raise GatewayError(
                f"the organizer's meeting no longer exists ({message.sender}, "
                f"UID {message.meeting_uid[:100]})",
                permanent=True,
                code="ErrorItemNotFound",
            )
        organizer = self._as(message.sender)
        CalendarItem(
            account=organizer,
            folder=organizer.calendar,
            id=item.id,
            changekey=item.changekey,
            body=HTMLBody(message.html_body),
        ).save(update_fields=["body"], send_meeting_invitations="SendToAllAndSaveCopy")

    # --- the resource calendar (recovery) -----------------------------------------------------
    def calendar(self, start: datetime, end: datetime) -> Sequence[CalendarEntry]:
        """Meetings on the room's calendar, read like requests: through their MIME content."""
        account = self.account()
        with self._calling():
            view = account.calendar.view(
                EWSDateTime.from_datetime(start), EWSDateTime.from_datetime(end)
            )
            ids = [(i.id, i.changekey) for i in view.only("id", "changekey")]
            items = list(account.fetch(ids=ids, only_fields=("mime_content",))) if ids else []
        entries = []
        seen: set[str] = set()
        for (item_id, _), item in zip(ids, items, strict=True):
            if isinstance(item, Exception) or not item.mime_content:
                continue
            try:
                parsed = itip.parse_mail(item.mime_content, self.integ.timezone)
            except itip.ParseError as exc:
                log.warning(
                    "unreadable calendar item: %s",
                    exc.reason,
                    extra={"integration": self.name, "item": item_id},
                )
                continue
            for meeting in parsed.meetings:
                if meeting.uid not in seen:  # a series' occurrences share one UID
                    seen.add(meeting.uid)
                    entries.append(CalendarEntry(meeting, item_id))
        return entries

    def probe(self, organizer: str = "", outside: str = "") -> list[tuple[bool | None, str]]:
        """What works and what does not, for `check-config --online`: the sign-in and the room
        opened by impersonation (or which right is missing), an organizer's mailbox in the
        impersonation scope, and a mailbox that should be out of reach (None: it is not, a
        warning)."""
        ex = self.integ.exchange
        results: list[tuple[bool | None, str]] = []
        try:
            with self._calling():
                count = self.account().inbox.total_count
        except (GatewayError, EWSError) as exc:
            return [(False, self._room_refused(exc))]
        results.append((True, f"signed in to {ex.ews_url} ({ex.authentication})"))
        results.append(
            (True, f"mailbox {self.room} opened by impersonation: inbox has {count} item(s)")
        )
        if organizer:
            refused = self._try_impersonating(organizer)
            results.append(
                (
                    True,
                    f"organizer {organizer}: in the impersonation scope, meetings can be updated",
                )
                if refused is None
                else (
                    False,
                    f"organizer {organizer} is outside the impersonation scope ({refused}); "
                    "their meetings get the joining instructions by mail instead",
                )
            )
        if outside:
            refused = self._try_impersonating(outside)
            results.append(
                (
                    None,
                    f"the service account reaches {outside}, which should be out of reach: its "
                    "ApplicationImpersonation role assignment has no management scope, or one "
                    "that holds this mailbox (New-ManagementRoleAssignment "
                    "-CustomRecipientWriteScope)",
                )
                if refused is None
                else (True, f"{outside} is out of reach ({refused})")
            )
        results.append(
            (
                True,
                "calendar processing cannot be read over EWS: check that "
                "Get-CalendarProcessing shows AutomateProcessing None and "
                "AllowConflicts True for the room",
            )
        )
        return results

    def _try_impersonating(self, address: str) -> str | None:
        """None when the service account may open `address` by impersonation, else why not."""
        try:
            with self._calling():
                self._open(address, self.account().protocol.config).calendar.refresh()
        except (GatewayError, EWSError) as exc:
            return str(exc)
        return None

    def _room_refused(self, exc: Exception) -> str:
        """Why the room cannot be used, as the right that is missing."""
        text = f"cannot use mailbox {self.room}: {exc}"
        code = getattr(exc, "code", None) or type(exc.__cause__ or exc).__name__
        account = self.integ.exchange.service_account_username or "the service account"
        if code in ("ErrorImpersonateUserDenied", "ErrorImpersonationDenied"):
            text = (
                f"the service account may not impersonate {self.room} ({code}): assign "
                f"{account} the ApplicationImpersonation role over a management scope that "
                "holds the room and the organizers (New-ManagementScope, "
                "New-ManagementRoleAssignment -Role ApplicationImpersonation -User "
                f"{account} -CustomRecipientWriteScope <scope>)"
            )
            if self._delegate_works():
                text += (
                    "; it holds FullAccess on the room instead, which the service does not "
                    "use (it opens every mailbox by impersonation)"
                )
        elif code == "ErrorNonExistentMailbox":
            text = (
                f"no mailbox {self.room} ({code}): create the equipment mailbox "
                "(New-Mailbox -Equipment) or correct mailbox_email"
            )
        elif code == "ErrorInvalidExchangeImpersonationHeaderData":
            text = f"{text} (an app-only token needs impersonation on every request)"
        return text

    def _delegate_works(self) -> bool:
        """Whether the service account reaches the room without impersonation (FullAccess):
        said when impersonation is refused, so the admin knows which right is there instead.
        An app-only token never works without impersonation, so it is not tried."""
        if self.integ.exchange.authentication == "oauth_app" or self._account is None:
            return False
        try:
            with self._calling():
                config = self._account.protocol.config
                self._open(self.room, config, DELEGATE).inbox.refresh()
        except (GatewayError, EWSError):
            return False
        return True

    def close(self) -> None:
        if self._account is not None:
            self._account.protocol.close()
