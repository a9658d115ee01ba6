"""Change notifications for a Graph room mailbox (when `graph.notification_url` is set): a
subscription to the inbox's new messages, created, renewed before it lapses and re-created
when Graph removed it; the notifications Graph posts to the service (`notified`); and, as the
safety net, a delta query on the inbox at least every CATCH_UP_SECONDS, from a delta link kept
across restarts. Without a notification URL, or while Graph refuses the subscription, the inbox
is simply listed at every poll.

The delta link and the subscription (its id, lifetime and clientState) are kept in a
`GraphStateStore`: a file under data_dir (`FileGraphState`), or the shared database
(`vmrsched.postgres.tokens.DatabaseGraphState`, written by the integration's owner only), so the
instance that takes the integration over continues the same subscription and delta link
instead of subscribing again and listing the whole inbox.

Threads: `should_list` and everything it calls (the subscription, the delta link) run on the
poller's thread only. `notified` runs on the HTTP front end's event loop: it only sets Events
(and forgets a subscription Graph removed, one assignment), so it never waits for a call.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from vmrsched.mailbox.base import GatewayError
from vmrsched.mailbox.graph_convert import when
from vmrsched.mailbox.graph_http import GraphClient

log = logging.getLogger("vmrsched.graph")
CATCH_UP_SECONDS = 60.0  # with change notifications: list the inbox at least this often
SUBSCRIPTION_MINUTES = 4200  # asked for (Graph allows up to 10,080 for messages)
RENEW_BEFORE = 0.5  # renew once less than this share of the lifetime is left
SUBSCRIBE_RETRY = 60.0  # seconds before trying again to subscribe after a refusal


class GraphStateStore(Protocol):
    """Where one integration's Graph state is kept. Blocking: the poller's thread."""

    def load(self) -> dict[str, Any]:
        """What was kept ({} when nothing, or nothing readable)."""
        ...

    def save(self, state: dict[str, Any]) -> None:
        """Keep `state`, durable when this returns. In a shared database only the
        integration's owner writes: OwnershipLostError (nothing written) elsewhere."""
        ...


class FileGraphState:
    """`<data_dir>/graph/<integration>/inbox-delta.json`, written atomically."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "inbox-delta.json"

    def load(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def save(self, state: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_suffix(".tmp")
        # mode 0600: the subscription's clientState is what proves a notification is Graph's
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(state, out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, self.path)


def _subscription_of(state: dict[str, Any], url: str) -> tuple[str, datetime, datetime, str] | None:
    """A kept subscription still worth renewing: for this notification URL, not lapsed."""
    kept = state.get("subscription")
    if not isinstance(kept, dict) or not url or kept.get("url") != url:
        return None
    try:
        since = datetime.fromisoformat(str(kept["since"]))
        until = datetime.fromisoformat(str(kept["until"]))
        found = (str(kept["id"]), since, until, str(kept["client_state"]))
    except (KeyError, ValueError):
        return None
    return found if until > datetime.now(UTC) and found[0] and found[3] else None


class InboxWatch:
    """When a room's inbox is worth listing: always without change notifications; with them,
    when a notification came, when the last listing was full, or when the catch-up found
    something."""

    def __init__(
        self, client: GraphClient, notification_url: str, state: Path | GraphStateStore
    ) -> None:
        self.client = client
        self.name = client.name
        self.room = client.room
        # change notifications (when graph.notification_url is set)
        self.notification_url = (
            f"{notification_url.rstrip('/')}/graph/notifications/{client.name}"
            if notification_url
            else ""
        )
        self.store: GraphStateStore = FileGraphState(state) if isinstance(state, Path) else state
        kept = self.store.load()
        link = kept.get("delta_link")
        # the inbox's delta link, kept across restarts: the catch-up asks only what changed
        self._delta_link: str | None = str(link) if link else None
        resumed = _subscription_of(kept, self.notification_url)
        self.client_state = resumed[3] if resumed else secrets.token_urlsafe(32)
        # id, from, until: the one kept by the last owner (renewed as ours), else none yet
        self._subscription: tuple[str, datetime, datetime] | None = resumed[:3] if resumed else None
        self._subscribe_after = 0.0  # monotonic: not before this after a refusal
        self._notified = threading.Event()  # something arrived: list the inbox now
        self._renew = threading.Event()  # Graph asked for reauthorization
        self._listed_at = 0.0
        if resumed:
            self._notified.set()  # catch up on what arrived before this instance ran it

    def should_list(self, backlog: bool) -> bool:
        """Whether fetch lists the inbox now (`backlog`: the last listing was full). With
        change notifications only when a notification came, when there is a backlog, or every
        CATCH_UP_SECONDS when the catch-up found something new."""
        if self.notification_url and self._subscribed():
            due = time.monotonic() - self._listed_at >= CATCH_UP_SECONDS
            if not (self._notified.is_set() or backlog or due):
                return False
            if due and not (self._notified.is_set() or backlog) and not self._caught_up():
                self._listed_at = time.monotonic()
                return False  # the catch-up found nothing new
        self._notified.clear()
        self._listed_at = time.monotonic()
        return True

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
                    self._save()
                return self._subscription is not None
            if time.monotonic() < self._subscribe_after:
                return False
            self._subscription = self._subscribe(now)
            self._save()
            self._notified.set()  # catch up on what arrived without notifications
            return True
        except GatewayError as exc:
            if not exc.permanent:
                raise
            self._subscription = None
            self._save()
            self._subscribe_after = time.monotonic() + SUBSCRIBE_RETRY
            log.warning(
                "change notifications unavailable, polling the inbox instead: %s",
                exc,
                extra={"integration": self.name},
            )
            return False

    def _subscribe(self, now: datetime) -> tuple[str, datetime, datetime]:
        until = now + timedelta(minutes=SUBSCRIPTION_MINUTES)
        created = self.client.call(
            "POST",
            f"{self.client.api}/subscriptions",
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
        return str(created["id"]), now, when(created.get("expirationDateTime")) or until

    def _renew_subscription(
        self, subscription_id: str, now: datetime
    ) -> tuple[str, datetime, datetime] | None:
        until = now + timedelta(minutes=SUBSCRIPTION_MINUTES)
        try:
            renewed = self.client.call(
                "PATCH",
                f"{self.client.api}/subscriptions/{subscription_id}",
                "renew_subscription",
                json={"expirationDateTime": until.strftime("%Y-%m-%dT%H:%M:%SZ")},
            ).json()
        except GatewayError as exc:
            if exc.permanent and exc.code in ("ResourceNotFound", "ErrorItemNotFound", "http_404"):
                return self._subscribe(now)  # gone (expired, removed): a new one
            raise
        return subscription_id, now, when(renewed.get("expirationDateTime")) or until

    def _caught_up(self) -> bool:
        """The catch-up: a delta query on the inbox from the kept delta link. True when
        something arrived that no notification told of (or the link was dead: a full resync
        lists the inbox)."""
        link = self._delta_link or (
            f"{self.client.base}/mailFolders/inbox/messages/delta?$select=id,receivedDateTime"
        )
        added = False
        try:
            while True:
                page = self.client.call("GET", link, "inbox_delta").json()
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

    def _save_delta_link(self, link: str | None) -> None:
        self._delta_link = link
        self._save()

    def _save(self) -> None:
        """Keep the delta link and the subscription for a restart or the next owner."""
        state: dict[str, Any] = {"delta_link": self._delta_link}
        current = self._subscription
        if current is not None and self.notification_url:
            state["subscription"] = {
                "id": current[0],
                "since": current[1].isoformat(),
                "until": current[2].isoformat(),
                "client_state": self.client_state,
                "url": self.notification_url,
            }
        self.store.save(state)

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
