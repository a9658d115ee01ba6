"""Exchange Server (2016/2019/SE) through EWS, with exchangelib: the equipment mailbox's inbox
in, accept/decline/remove responses and organizer updates out.

Every mailbox, the room's included, is opened by impersonation (ews_calls says why and how each
request goes out). Meeting messages are read through their MIME content with the same iTIP
translator as the other backends (ews_convert), so every backend reaches identical decisions.
Every EWS request is counted in vmrsched_exchange_requests_total.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from exchangelib import DELEGATE, Account, EWSDateTime, HTMLBody, Message
from exchangelib import Mailbox as Recipient
from exchangelib.errors import (
    ErrorInvalidRequest,
    ErrorInvalidSubscription,
    ErrorInvalidSubscriptionRequest,
    ErrorInvalidWatermark,
    ErrorItemNotFound,
    ErrorSubscriptionNotFound,
    EWSError,
)
from exchangelib.items import (
    MOVE_TO_DELETED_ITEMS,
    SEND_AND_SAVE_COPY,
    SEND_TO_NONE,
    AcceptItem,
    CalendarItem,
    DeclineItem,
)
from exchangelib.properties import ReferenceItemId

from vmrsched.config import IntegrationConfig
from vmrsched.mailbox.base import (
    CalendarEntry,
    Check,
    GatewayError,
    InboxItem,
    Mailbox,
    Outgoing,
)
from vmrsched.mailbox.ews_auth import TokenSource
from vmrsched.mailbox.ews_calls import EwsClient, RemoveItem, RespondToItems, translate
from vmrsched.mailbox.ews_convert import (
    FETCH_FIELDS,
    MEETING_CLASSES,
    calendar_entries,
    inbox_item,
)
from vmrsched.rules.meetings import Meeting
from vmrsched.telemetry import EXCHANGE_UNREACHABLE, Metrics

log = logging.getLogger("vmrsched.ews")

MAX_PAGE = 1000  # EWS returns at most 1,000 items per FindItem
CATCH_UP_SECONDS = 60.0  # list the inbox at least this often, events or not


class EwsMailbox(EwsClient, Mailbox):
    """The EWS gateway.

    Threads: what the poller's and the notifier's threads both change (the accounts built once,
    the items handed off to a reply, the item classes) is guarded by `_state`, never held during
    a call; the change detection (the pull subscription, the backlog, when the inbox was last
    listed) is the poller's alone; each call's own context (metrics, token, CA file, proxy)
    travels in a thread-local (ews_calls). `sync` has nothing to do."""

    alarm = EXCHANGE_UNREACHABLE
    # a resend is not harmless (a second reply or organizer update): the notifier marks each
    # message delivered as soon as Exchange took it
    idempotent_send = False
    # responses to request items go out together, in one CreateItem
    bulk_send = True

    def __init__(
        self,
        integ: IntegrationConfig,
        metrics: Metrics | None = None,
        tokens: TokenSource | None = None,
    ) -> None:
        super().__init__(integ, metrics, tokens)
        self._handed_off: set[str] = set()
        self._classes: dict[str, str] = {}
        # change detection: a pull subscription on the inbox (None: (re)subscribe, and list the
        # inbox as catch-up); refused: the server offers none, so poll by listing
        self._subscription: tuple[str, str] | None = None
        self._subscriptions_refused = False
        self._backlog = False  # the last listing was cut at the batch limit
        self._listed_at = 0.0

    def poll_interval(self, integ: IntegrationConfig) -> float:
        return integ.exchange.poll_interval_seconds

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
        with self._state:
            self._classes[item_id] = item.item_class or ""
        return inbox_item(item_id, item, self.integ.timezone)

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
                    # Deleted Items, as docs/guarantees.md says: an admin can still look at
                    # what was set aside (HardDelete would purge it past the recycle bin)
                    account.bulk_delete(ids=[(item_id, None)], delete_type=MOVE_TO_DELETED_ITEMS)
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
        outcome (None: delivered), and raises only for the mailbox as a whole, as the
        contract says. A refusal Exchange gives for the request as a whole is about some item
        in it: a lot of one takes it as its outcome, a larger lot sends each message on its
        own, so one bad item cannot fail the others."""
        try:
            return self._responses(messages)
        except GatewayError as exc:
            if exc.whole_mailbox:
                raise
            if len(messages) == 1:
                return [exc]
            return [self._send_one(m) for m in messages]

    def _responses(self, messages: Sequence[Outgoing]) -> list[BaseException | None]:
        """AcceptItem/DeclineItem for each message's request item, in one CreateItem whose
        answer says what became of each (RespondToItems: an item's refusal is that message's
        outcome, the others' stand). A request Exchange no longer has (ErrorItemNotFound)
        fails that message: the notifier asks `delivered` before it sends anything that may
        have gone out already (after a restart, or an answer lost), so here the request was
        removed by someone else before its answer went out, and the organizer got none:
        `vmrsched failed` and delivery_failed say so."""
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
                RespondToItems(account=account).call(
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
                log.warning(
                    "meeting request %s was removed from the room's mailbox before its %s "
                    "went out (by hand, or by another client); the organizer got no answer",
                    item_id,
                    "acceptance" if message.outcome == "accepted" else "decline",
                    extra={"integration": self.name, "meeting_uid": message.meeting_uid},
                )
                outcomes.append(translate(result))
            elif isinstance(result, Exception):
                outcomes.append(translate(result))
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
        organizer's meeting already carries the new alias; a response when its request left
        the inbox (see `_answered`)."""
        if message.kind == "reply" and message.extra.get("item_id"):
            return self._answered(message)
        if message.kind != "update" or not message.extra.get("alias_id"):
            return False
        with self._calling():
            item = self._organizer_item(message)
            if item is None:
                return False
            [full] = list(self._as(message.sender).fetch(ids=[item], only_fields=("body",)))
        body = "" if isinstance(full, Exception) else str(full.body or "")
        return f"PXPS:-{message.extra['alias_id']}#" in body

    def _answered(self, message: Outgoing) -> bool:
        """Whether the request a response answers was answered already. Exchange moves a
        request it carried a response for out of the inbox (to Deleted Items), so a request
        Exchange no longer finds under its id (an item's id changes when it moves, unless ids
        are immutable) or finds in another folder was answered, and sending again would answer
        the organizer twice. The price, as docs/guarantees.md says: a request someone deleted
        by hand in the instant before a crash is not answered again."""
        item_id = str(message.extra["item_id"])
        account = self.account()
        with self._calling():
            [item] = list(account.fetch(ids=[(item_id, None)], only_fields=("parent_folder_id",)))
            inbox = account.inbox.id
        if isinstance(item, ErrorItemNotFound):
            where = "is gone from the room's mailbox"
        elif isinstance(item, Exception):
            raise translate(item)
        elif item.parent_folder_id is not None and item.parent_folder_id.id != inbox:
            where = "has left the inbox"
        else:
            return False
        log.info(
            "meeting request %s %s: it was answered (before a restart, or an answer lost); "
            "not answered again",
            item_id,
            where,
            extra={"integration": self.name, "meeting_uid": message.meeting_uid},
        )
        with self._state:
            self._handed_off.discard(item_id)
            self._classes.pop(item_id, None)
        return True

    def _respond(self, message: Outgoing) -> None:
        [outcome] = self._responses([message])
        if outcome is not None:
            raise outcome

    def _mail(self, message: Outgoing) -> None:
        Message(
            account=self.account(),
            subject=message.subject,
            body=HTMLBody(message.html_body),
            to_recipients=[Recipient(email_address=r) for r in message.recipients],
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
        pairs = [(item_id, item) for (item_id, _), item in zip(ids, items, strict=True)]
        return calendar_entries(pairs, self.integ.timezone, self.name)

    # --- check-config --online --------------------------------------------------------------
    def probe(self, organizer: str = "", outside: str = "") -> list[Check]:
        """What works and what does not, for `check-config --online`: the sign-in and the room
        opened by impersonation (or which right is missing), an organizer's mailbox in the
        impersonation scope, and a mailbox that should be out of reach (None: it is not, a
        warning)."""
        ex = self.integ.exchange
        results: list[Check] = []
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
