"""What the store keeps of one alias: the record (`StoredRecord` names every key the store
writes), its schedule in one compact JSON string, and the decision view of a record."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, Required, TypedDict, cast

import orjson

from vmrsched.rules import aliases, recurrence
from vmrsched.rules.meetings import AliasRecord, Status

Clock = Callable[[], datetime]

# what the store writes, and "archived": how `take_changes` hands on a record moved to the archive
RecordStatus = Literal["reserved", "bound", "deleted", "archived"]


class StoredRecord(TypedDict, total=False):
    """One alias as the store keeps it: a plain dict at run time (JSON in the snapshot, the
    journal and the archive), with every key the store writes. The first four are in every
    record; the others come with its life. A key whose value would be None or {} is left out."""

    # reserved (Store.reserve), or drawn for a decision and stored by its action
    alias_id: Required[str]  # the bare UUID of its PXPS token
    alias: Required[str]  # <numeric alias>@<domain>
    numeric_alias: Required[str]  # prefix + digits
    status: Required[RecordStatus]
    created: float  # UTC timestamp in seconds, three decimals, as every time here
    expires: float  # an unbound reservation's end
    user: str  # the add-in user who reserved it (their quota counts it until it is bound)
    placeholder_id: str  # the TOK token it was drawn for (a meeting booked offline)
    # bound to a meeting (Store.apply)
    meeting_uid: str
    sequence: int  # the highest iCalendar SEQUENCE applied to the whole meeting
    occ_seq: dict[str, int]  # the same per occurrence (recurrence key)
    answered: dict[str, str]  # answer key -> reason, the MAX_ANSWERS most recent
    schedule: str | dict[str, Any]  # encode_schedule's JSON text (an object in older stores)
    valid_until: float  # the end of its last window within the booking horizon
    # the conference (answers.conference_fields; the name made unique)
    name: str
    description: str
    conference_subject: str  # the meeting's subject as the subject template shows it
    organizer_email: str
    organizer_name: str
    subject: str  # older versions: the meeting's own subject, before conference_subject
    # deleted (Store.delete)
    reason: str  # cancelled | expired | replaced | deleted by <who>
    deleted: float


# the name the allocator, the service and the front ends know the record by
Record = StoredRecord


def utc_now() -> datetime:
    return datetime.now(UTC)


def ts(value: datetime) -> float:
    return round(value.timestamp(), 3)


@dataclass(frozen=True)
class ArchivedInfo:
    status: str
    meeting_uid: str | None
    reason: str
    alias: str = ""
    numeric_alias: str = ""
    organizer: str = ""  # of a bound meeting: who may still move it back into the future
    # the highest SEQUENCE applied to its meeting (a cancellation's included): a request of
    # that meeting read again later is still known as older (outdated) once the alias is here
    sequence: int = -1


@dataclass
class StoreStats:
    active: int
    bound: int
    reserved: int
    archived: int
    journal_entries: int


def reserved_record(alias: aliases.Alias, now: datetime) -> dict[str, Any]:
    """A new reservation's keys (Store._put makes the StoredRecord of it)."""
    return {
        "alias_id": alias.alias_id,
        "alias": alias.alias,
        "numeric_alias": alias.numeric_alias,
        "status": "reserved",
        "created": ts(now),
    }


def archived_info(record: Mapping[str, Any]) -> ArchivedInfo:
    """What the index keeps of an archived record (the rest stays in the archive file)."""
    return ArchivedInfo(
        record.get("status", "deleted"),
        record.get("meeting_uid"),
        record.get("reason", ""),
        record.get("alias", ""),
        record.get("numeric_alias", ""),
        record.get("organizer_email", "") if record.get("status") == "bound" else "",
        record.get("sequence", -1) if record.get("meeting_uid") else -1,
    )


def highest_sequence(record: Mapping[str, Any]) -> int:
    """The highest SEQUENCE applied to a bound record's meeting, an occurrence's included
    (-1 when none was): what an organizer update sent now must go one above."""
    if not record.get("meeting_uid"):
        return -1
    occurrences = record.get("occ_seq") or {}
    return max([int(record.get("sequence", -1)), *(int(s) for s in occurrences.values())])


def to_alias_record(record: StoredRecord) -> AliasRecord:
    schedule = record.get("schedule")
    return AliasRecord(
        alias_id=record["alias_id"],
        alias=record["alias"],
        numeric_alias=record["numeric_alias"],
        # an indexed record is never "archived": that is only what take_changes hands on
        status=cast(Status, record["status"]),
        meeting_uid=record.get("meeting_uid"),
        sequence=record.get("sequence", -1),
        occurrence_sequences=record.get("occ_seq") or {},
        schedule=decode_schedule(schedule) if schedule else None,
        placeholder_id=record.get("placeholder_id"),
        organizer=record.get("organizer_email", ""),
        answered=record.get("answered") or {},
        reason=record.get("reason", ""),
    )


def encode_schedule(schedule: recurrence.Schedule) -> str:
    """Schedules are kept as one compact JSON string per record: a reload then creates one string
    instead of a dozen nested objects per conference (reload time is dominated by object
    creation), and a schedule is decoded only when a decision needs it."""
    raw = orjson.dumps(recurrence.to_json(schedule)).decode()
    _RECENT.put(raw, schedule)
    return raw


def decode_schedule(raw: str | dict[str, Any]) -> recurrence.Schedule:
    if not isinstance(raw, str):
        return recurrence.from_json(raw)
    schedule = _RECENT.get(raw)
    return schedule if schedule is not None else recurrence.from_json(orjson.loads(raw))


class _RecentSchedules:
    """The schedules last encoded, by their JSON: a meeting just bound is published to the
    policy index at once, and decoding what was just encoded cost as much as the rest of
    binding it (schedules are frozen, so sharing one is safe; they come from calendars, in
    whole seconds and named zones, which is all the JSON keeps). Decoding adds nothing here,
    so publishing a whole store at start-up does not churn it."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: dict[str, recurrence.Schedule] = {}
        self._lock = threading.Lock()

    def get(self, raw: str) -> recurrence.Schedule | None:
        return self._items.get(raw)

    def put(self, raw: str, schedule: recurrence.Schedule) -> None:
        with self._lock:
            self._items[raw] = schedule
            if len(self._items) > self.size:
                del self._items[next(iter(self._items))]  # the oldest (dicts keep order)


_RECENT = _RecentSchedules(4096)
