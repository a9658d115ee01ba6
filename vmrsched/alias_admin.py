"""An admin's acts on one integration's stored aliases: search, delete and resend. The same
code serves the running service (inside the allocator, which owns the store) and the CLI on a
stopped service's data directory; the caller commits and sends what these return."""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from vmrsched.config import IntegrationConfig
from vmrsched.messages import answers
from vmrsched.outgoing import Outgoing
from vmrsched.rules import recurrence
from vmrsched.store import Record, StoreWrites, decode_schedule
from vmrsched.templating import Renderer

# the subject is the conference subject, what the admin sees (never the meeting's own)
SEARCHED_KEYS = ("alias", "numeric_alias", "organizer_email", "conference_subject", "meeting_uid")


def search(records: Iterable[Record], query: str, day: str, limit: int) -> list[Record]:
    """Records whose alias, organizer, conference subject or UID hold every word of `query`
    and that touch `day`, newest first."""
    words = query.lower().split()
    found = [
        record
        for record in records
        if all(
            word in " ".join(str(record.get(key, "")) for key in SEARCHED_KEYS).lower()
            for word in words
        )
        and on_day(record, day)
    ]
    found.sort(key=lambda r: r.get("created", 0), reverse=True)
    return found[:limit]


def parse_day(day: str) -> datetime:
    """The start (UTC) of a day written YYYY-MM-DD, in the years a meeting may have (1900 to
    2999); ValueError for anything else (9999-12-31 has no day after it to end on)."""
    start = datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=UTC)
    if not 1900 <= start.year <= 2999:
        raise ValueError(f"{day}: a day from 1900 to 2999")
    return start


def on_day(record: Record, day: str) -> bool:
    """Whether a booking's schedule has an occurrence on `day` (YYYY-MM-DD, UTC), or its
    reservation was made that day; any record when `day` is empty."""
    if not day:
        return True
    try:
        start = parse_day(day)
    except ValueError:
        return False
    end = start + timedelta(days=1)
    raw = record.get("schedule")
    if raw:
        try:
            upcoming = itertools.islice(
                recurrence.occurrences_after(decode_schedule(raw), start), 1000
            )
            return any(o.start < end for o in upcoming)
        except recurrence.RecurrenceError:
            return False
    created = record.get("created")
    return created is not None and start.timestamp() <= float(created) < end.timestamp()


@dataclass(frozen=True)
class Deleted:
    record: Record  # as it is now
    changed: bool  # the store changed: commit and publish (an alias deleted already raises)
    notice: Outgoing | None  # to the organizer of a booked meeting


class InUse(ValueError):
    """The alias is booked for a meeting (or already gone): not cancellable as a reservation."""


class AlreadyDeleted(ValueError):
    """The alias was deleted before: a second delete changes nothing, so nothing is committed,
    logged as a deletion or sent to its organizer again. `record` says when and by whom."""

    def __init__(self, record: Record) -> None:
        super().__init__(f"{record.get('alias', '')} was deleted already")
        self.record = record


def delete(
    store: StoreWrites,
    integ: IntegrationConfig,
    renderer: Renderer,
    alias: str,
    by: str,
    now: datetime,
    unused_only: bool = False,
) -> Deleted | None:
    """Mark `alias` deleted (not yet committed) and write its organizer's notice; None when
    the store has no such alias, AlreadyDeleted when it was deleted before (the allocator
    answers the error without committing or logging a deletion). With `unused_only`, InUse
    for an alias a meeting holds and nothing changes: the check and the delete are one step in
    the allocator's thread."""
    record = store.by_alias(alias)
    if record is None:
        return None
    if unused_only and (record["status"] != "reserved" or record.get("organizer_email")):
        raise InUse(f"{alias} is {record['status']}, not a reservation no meeting uses")
    if record["status"] == "deleted":
        raise AlreadyDeleted(record.copy())
    before = record.copy()
    store.delete(record["alias_id"], f"deleted by {by}")
    deleted = store.get(record["alias_id"]) or record
    notice = None
    if before["status"] == "bound":
        serial = str(deleted.get("deleted", ""))
        notice = answers.admin_notice(integ, renderer, before, "deleted", now, serial)
    return Deleted(deleted, True, notice)


def resend(
    store: StoreWrites, integ: IntegrationConfig, renderer: Renderer, alias: str, now: datetime
) -> tuple[Record, Outgoing] | None:
    """The joining instructions of a booked alias again, for its organizer; None when the
    alias is not booked for a meeting with an organizer."""
    record = store.by_alias(alias)
    if record is None or record["status"] != "bound":
        return None
    notice = answers.admin_notice(integ, renderer, record, "resent", now, now.isoformat())
    return (record, notice) if notice is not None else None
