"""Organizer self-service (DESIGN "Organizer self-service"): who the organizer is (a session of
the user sign-in, or the add-in's own verified token), their own bookings with state and
windows, their declines with the reason in plain words and what to do, resending the joining
details of a booked meeting, cancelling a reservation no meeting uses.

Only their own: the ownership rule (`owns`) decides, and a booking of anyone else is NotFound,
never Forbidden, so a guess confirms nothing. Every act is logged with who did it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from vmrsched import alias_admin
from vmrsched.actors.messages import DeleteAlias, FindAliases
from vmrsched.config import IntegrationConfig
from vmrsched.errors import BadRequest, NotFound, Unauthorized
from vmrsched.rules.meetings import is_address
from vmrsched.service.admin import OnlineAdmin
from vmrsched.service.runtime import Runtime
from vmrsched.service.sign_ins import SignIns
from vmrsched.service.views import View, admin_view, decision_view
from vmrsched.signin import users
from vmrsched.store import Record
from vmrsched.templating import Renderer

log = logging.getLogger("vmrsched.service")

CANCELLED_BY_ORGANIZER = "organizer self-service"  # in `by`: how a record says who cancelled it

# Every decline reason (DESIGN "Meeting processing rules") in plain words, and what to do: the
# one table the organizer page and its API read.
DECLINE_REASONS: dict[str, tuple[str, str]] = {
    "invalid_alias_id": (
        "The meeting had no video room reference from the add-in (or one the service does not "
        "know), so no video room could be booked.",
        "Open the meeting in Outlook, add a video room with the add-in button, and send the "
        "invitation again.",
    ),
    "alias_deleted": (
        "The video room in the meeting is no longer available: its meeting was cancelled, the "
        "reservation expired or was cancelled, or an administrator removed it.",
        "Remove the old joining details from the meeting, add a new video room with the add-in, "
        "and send the update.",
    ),
    "alias_conflict": (
        "The video room in the meeting already belongs to another meeting (joining details "
        "copied from another invitation).",
        "Remove the copied joining details, add a new video room with the add-in, and send the "
        "invitation again.",
    ),
    "single_in_past": (
        "The meeting had already ended when it reached the booking service.",
        "Nothing to do; for a new meeting, book a new video room with the add-in.",
    ),
    "recurring_in_past": (
        "Every occurrence of the recurring meeting was already in the past.",
        "Nothing to do; for new occurrences, create a new series with a video room from the "
        "add-in.",
    ),
    "general_error": (
        "Something went wrong in the booking service while it handled the meeting.",
        "Send the meeting again later. If it keeps happening, contact your help desk and quote "
        "the reference shown.",
    ),
}
UNKNOWN_REASON = (
    "The booking service declined the meeting.",
    "Add a new video room with the add-in and send the invitation again; if it is declined "
    "again, contact your help desk.",
)

# a booking's state in plain words (deleted ones by the reason they were deleted)
BOOKING_STATES = {
    "reserved": "Reserved, not used in a meeting yet",
    "bound": "Booked for your meeting",
    "cancelled": "Ended: the meeting was cancelled",
    "expired": "Ended: the reservation expired unused",
    "replaced": "Ended: replaced by another video room in the same meeting",
    "by_you": "Ended: you cancelled the reservation",
    "by_admin": "Ended: removed by an administrator",
}


@dataclass(frozen=True)
class Organizer:
    """Who asks on the organizer page: the email their meetings are bound to, and the add-in's
    names for them (the reservations recorded under one of these are theirs). `shown`: for
    the log."""

    email: str
    users: frozenset[str]
    shown: str


def owns(who: Organizer, record: Record) -> bool:
    """The ownership rule: a booking's organizer is its bound organizer_email; an unbound
    reservation belongs to the add-in user who reserved it."""
    organizer = str(record.get("organizer_email") or "").strip().lower()
    if organizer:
        return bool(who.email) and organizer == who.email
    user = record.get("user")
    return bool(user) and user in who.users


def booking_state(record: Record) -> str:
    status = str(record.get("status", ""))
    if status != "deleted":
        return BOOKING_STATES.get(status, status)
    reason = str(record.get("reason", ""))
    if reason in BOOKING_STATES:
        return BOOKING_STATES[reason]
    if CANCELLED_BY_ORGANIZER in reason:
        return BOOKING_STATES["by_you"]
    return BOOKING_STATES["by_admin"]  # never who: an admin's name or address stays theirs


def organizer_view(
    integ: IntegrationConfig, record: Record, now: datetime, renderer: Renderer
) -> View:
    """A booking as its organizer sees it: the video address, the state in plain words, the
    conference subject, the joining windows to come (times as the integration writes them)."""
    seen = admin_view(integ, record, now, renderer)
    status = seen["status"]
    windows = [
        {
            **w,
            "shown": f"{_shown(renderer, w['joinable_from'])} to "
            f"{_shown(renderer, w['joinable_until'])}",
        }
        for w in seen["windows"]
    ]
    return {
        "alias": seen["alias"],
        "numeric_alias": seen["numeric_alias"],
        "status": status,
        "state": booking_state(record),
        "subject": seen["subject"],
        "created": seen["created"],
        "expires": seen["expires"] if status == "reserved" else None,
        "expires_shown": _shown(renderer, seen["expires"]) if status == "reserved" else "",
        "windows": windows,
        "current": status == "reserved" or (status == "bound" and bool(windows)),
        "can_resend": status == "bound" and bool(seen["organizer_email"]),
        "can_cancel": status == "reserved" and not seen["organizer_email"],
    }


def _shown(renderer: Renderer, iso: str | None) -> str:
    return renderer.format_time(datetime.fromisoformat(iso)) if iso else ""


def own_declines(
    entries: Iterable[dict[str, Any]],
    email: str,
    since: datetime,
    view: Callable[[View], View],
    limit: int = 100,
) -> list[View]:
    """The declines of meetings organized by `email` logged since `since`, newest first (the
    log is read from its end and left where it reaches older entries)."""
    found: list[View] = []
    for entry in entries:
        try:
            when = datetime.fromisoformat(str(entry.get("time", "")))
        except ValueError:
            continue
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        if when < since:
            break
        if entry.get("outcome") != "declined":
            continue
        if str(entry.get("organizer", "")).strip().lower() != email:
            continue
        shown = view(entry)
        reason = str(entry.get("reason", ""))
        explanation, what_to_do = DECLINE_REASONS.get(reason, UNKNOWN_REASON)
        found.append(
            {
                "time": when.isoformat(),
                "subject": shown.get("subject", ""),
                "reason": reason,
                "explanation": explanation,
                "what_to_do": what_to_do,
                # what the help desk asks for; the other declines need none
                "reference": str(entry.get("correlation_id", ""))
                if reason == "general_error"
                else "",
                "alias": str(entry.get("alias", "")),
            }
        )
        if len(found) >= limit:
            break
    return found


class SelfService:
    """The organizer's acts, each on their own bookings only. A resend goes through the
    admin's resend (the allocator queues it with the notifier)."""

    def __init__(self, runtime: Runtime, sign_ins: SignIns, admin: OnlineAdmin) -> None:
        self.runtime = runtime
        self.sign_ins = sign_ins
        self.admin = admin
        self._renderers = runtime.renderers

    async def organizer(
        self, integ: IntegrationConfig, token: str | None, demo_user: str = ""
    ) -> Organizer:
        """Who asks on the organizer page or its API: a session of the user sign-in (a
        `vms1.` token: the page's cookie, or the pane's bearer), else the add-in's own verified
        token (an Entra ID token names the user and their email). With token validation "none"
        (loopback trials only) the caller names a demo user, as the preview pane does; such a
        user owns no reservation (none records a user)."""
        if token is not None and token.startswith(users.TOKEN_PREFIX):
            who = await self.sign_ins.personal_identity(integ, token)
            user = await self.sign_ins.session_user(integ, token)
            return Organizer(who.email.lower(), frozenset({user} - {""}), f"{who.email}")
        verified = await self.sign_ins.verify_addin_token(integ, token)
        if verified.kind == "none":
            email = demo_user.strip().lower()
            if not is_address(email):
                raise Unauthorized(
                    "token validation is none: name the demo user (?user=)", "user_required"
                )
            return Organizer(email, frozenset(), f"{email} (demo user)")
        shown = f"{verified.email} ({verified.user})" if verified.email else verified.user
        return Organizer(verified.email.lower(), frozenset({verified.user}), shown)

    async def bookings(self, name: str, who: Organizer) -> list[View]:
        """The organizer's own bookings (meetings bound to their email, reservations they made
        and have not used), newest first, those still to come before those that are over."""
        integ = self.runtime.integration(name)
        found: dict[str, Record] = {}
        asks = ([FindAliases(who.email, "", 1000)] if who.email else []) + (
            [FindAliases("", "", 1000)] if who.users else []
        )
        for ask in asks:
            for record in await self.runtime.ask_allocator(name, ask):
                if owns(who, record):
                    found[str(record.get("alias_id", ""))] = record
        now = self.runtime.ctx.clock()
        renderer = self._renderers(integ)
        views = [organizer_view(integ, record, now, renderer) for record in found.values()]
        views.sort(key=lambda v: v["created"] or "", reverse=True)
        views.sort(key=lambda v: v["status"] == "deleted" or not v["current"])
        return views

    async def declines(self, name: str, who: Organizer, days: int = 30) -> list[View]:
        """The organizer's own declines of the last `days` days, newest first, each with its
        reason in plain words and what to do."""
        integ = self.runtime.integration(name)
        if not who.email:
            return []
        since = self.runtime.ctx.clock() - timedelta(days=days)
        renderer = self._renderers(integ)
        logs = self.runtime.ctx.stores.decisions  # files, or the database every instance reads
        found = await asyncio.to_thread(
            lambda: own_declines(
                logs.read(integ.name), who.email, since, decision_view(integ, renderer)
            )
        )
        for decline in found:
            decline["shown"] = _shown(renderer, decline["time"])
        return found

    async def own_record(self, name: str, alias: str, who: Organizer) -> Record:
        """The organizer's record of `alias`; NotFound (never Forbidden) for any other, so a
        guess confirms nothing."""
        wanted = alias.strip().lower()
        found: list[Record] = (
            await self.runtime.ask_allocator(name, FindAliases(wanted, "", 1000)) if wanted else []
        )
        for record in found:
            if str(record.get("alias", "")).lower() == wanted and owns(who, record):
                return record
        raise NotFound("you have no booking with that video address", "unknown_booking")

    async def resend(self, name: str, record: Record, by: str) -> str:
        """Mail the joining details of the organizer's booked meeting (their `own_record`) to
        them again (the admin console's resend: the allocator queues it with the notifier)."""
        if record.get("status") != "bound" or not record.get("organizer_email"):
            raise NotFound("that video room is not booked for a meeting", "not_booked")
        message_id = await self.admin.resend(name, str(record["alias"]), by)
        log.info(
            "organizer self-service: joining details of %s resent by %s",
            record["alias"],
            by,
            extra={"integration": name, "alias": record["alias"], "by": by},
        )
        return message_id

    async def cancel(self, name: str, record: Record, by: str) -> View:
        """Release the organizer's reservation (their `own_record`) that no meeting uses (as an
        admin deletes an alias: declined from then on); a booked meeting is cancelled in Outlook
        instead. The allocator checks again when it applies the cancel: a meeting may have
        bound the reservation since the record was read."""
        integ = self.runtime.integration(name)
        if record.get("status") != "reserved" or record.get("organizer_email"):
            raise BadRequest(
                "only a reservation that no meeting uses can be cancelled here; to end a booked "
                "meeting, cancel the meeting in Outlook",
                "not_cancellable",
            )
        ask = DeleteAlias(str(record["alias"]), by, unused_only=True)
        try:
            deleted = await self.runtime.ask_allocator(name, ask)
        except alias_admin.InUse as exc:  # a meeting bound it since it was read
            raise BadRequest(
                "a meeting now uses this video room; to end it, cancel the meeting in Outlook",
                "not_cancellable",
            ) from exc
        if deleted is None:
            raise NotFound("you have no booking with that video address", "unknown_booking")
        log.warning(
            "organizer self-service: reservation %s cancelled by %s",
            record["alias"],
            by,
            extra={"integration": name, "alias": record["alias"], "by": by},
        )
        return organizer_view(integ, deleted, self.runtime.ctx.clock(), self._renderers(integ))
