"""The meeting model and the decision rules (DESIGN.md, "Meeting processing rules").

`decide` is pure: it gets the message, a snapshot of what the store knows about the message's
token and UID, and the current time, and returns what to answer and what to change. All I/O
(reading mailboxes, allocating aliases, writing the store, sending replies) happens around it,
which is what lets every rule be tested exhaustively and the service reprocess a message
idempotently after a crash.
"""

from __future__ import annotations

import functools
import re
import traceback
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

from vmrsched.rules import aliases, recurrence
from vmrsched.rules.recurrence import Occurrence, Schedule

Method = Literal["REQUEST", "CANCEL"]
Outcome = Literal["accepted", "declined", "ignored"]
Status = Literal["reserved", "bound", "deleted"]
ActionKind = Literal["bind", "bind_new", "cancel", "cancel_occurrence", "none"]

# reason -> template, as in the rules table
TEMPLATE_FOR_REASON: dict[str, str | None] = {
    "invalid_alias_id": "reject_invalid_alias_id_text",
    "alias_deleted": "reject_alias_deleted_text",
    "alias_conflict": "reject_alias_conflict_template",
    "single_in_past": "reject_single_meeting_in_past_text",
    "recurring_in_past": "reject_recurring_series_in_past_text",
    "new_single": "accept_new_single_meeting_template",
    "new_recurring": "accept_new_recurring_meeting_template",
    "edited_single": "accept_edited_single_meeting_template",
    "edited_occurrence": "accept_edited_occurrence_template",
    "edited_recurring": "accept_edited_recurring_meeting_template",
    "cancelled": None,
    "outdated": None,
    "unchanged": None,
    "not_organizer": None,
    "general_error": "reject_general_error_template",
}

# One mail address and nothing else: no display name, no list, no white space or control
# characters (an ORGANIZER of "a@x,mailto:b@x" would have every reply go to both).
_ATOM = r"[^\s\x00-\x1f\x7f@,;:<>()\[\]\"\\]+"
_ADDRESS = re.compile(f"{_ATOM}@{_ATOM}")
MAX_ADDRESS = 320  # RFC 3696: 64 octets of local part, @, 255 of domain


def is_address(value: str) -> bool:
    """Whether `value` is exactly one mail address. An organizer is one address: a reply, an
    update or a notice goes to one person, whatever a meeting request says."""
    return len(value) <= MAX_ADDRESS and _ADDRESS.fullmatch(value) is not None


@dataclass(frozen=True)
class Meeting:
    """One meeting request or cancellation, as read from any mailbox backend."""

    uid: str
    method: Method
    start: datetime
    end: datetime
    sequence: int = 0
    recurrence_id: datetime | None = None
    rrule: str | None = None
    rdates: tuple[datetime, ...] = ()
    exdates: tuple[datetime, ...] = ()
    overrides: tuple[tuple[datetime, datetime, datetime], ...] = ()
    organizer_name: str = ""
    organizer_email: str = ""
    # ORGANIZER's SENT-BY: a delegate sending for the organizer (Outlook's "on behalf of")
    organizer_sent_by: str = ""
    # The mail that carried the message: its From and Sender (Sender empty when the mail names
    # none: From sent it). mail_from is None when the message came without a mail (a bare .ics
    # in the spool): then only ORGANIZER and SENT-BY say who sent it.
    mail_from: str | None = None
    mail_sender: str = ""
    subject: str = ""
    html_body: str = ""
    attendees: tuple[str, ...] = ()
    correlation_id: str = ""
    # what an organizer update must carry on unchanged: each ATTENDEE's parameters (CUTYPE, CN,
    # ROLE, PARTSTAT, RSVP, …) and the request's own VTIMEZONE definitions (iCalendar text)
    attendee_params: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = ()
    vtimezones: tuple[str, ...] = ()

    @functools.cached_property
    def token(self) -> aliases.Token | None:
        """The PXPS/TOK token in the body, parsed once for everyone who asks (the store
        lookup, the decision, the organizer update)."""
        return aliases.find_token(self.html_body)

    @property
    def schedule(self) -> Schedule:
        return Schedule(
            start=self.start,
            end=self.end,
            rrule=self.rrule,
            rdates=self.rdates,
            exdates=self.exdates,
            overrides=self.overrides,
        )

    @property
    def is_series(self) -> bool:
        return self.recurrence_id is None and bool(self.rrule or self.rdates)

    @property
    def sent_by(self) -> str:
        """Who sent the message, as far as it tells: the mail's Sender or From, else the
        delegate SENT-BY, else ORGANIZER (for logs: the admin asks who tried what)."""
        return self.mail_sender or self.mail_from or self.organizer_sent_by or self.organizer_email


@dataclass(frozen=True)
class AliasRecord:
    """What the store knows about one alias (a single-use VMR)."""

    alias_id: str
    alias: str
    numeric_alias: str
    status: Status
    meeting_uid: str | None = None
    sequence: int = -1
    occurrence_sequences: Mapping[str, int] = field(default_factory=dict)
    schedule: Schedule | None = None
    placeholder_id: str | None = None
    # the organizer of the meeting bound to the alias: the only one (with their delegates) who
    # may change or cancel it ("" for a booking kept before organizers were)
    organizer: str = ""
    # answer_key(message) -> reason (with "+update" when the organizer was updated): lets a
    # redelivered message get exactly the answer it got the first time
    answered: Mapping[str, str] = field(default_factory=dict)
    # why a deleted alias was deleted: cancelled, replaced, expired, deleted by <who>
    reason: str = ""


@dataclass(frozen=True)
class MeetingState:
    """The store's answer to two lookups: the record behind the body's token, and the record
    already bound to the message's UID (often the same record)."""

    token_record: AliasRecord | None = None
    uid_record: AliasRecord | None = None
    # An alias drawn for a meeting that has none yet (the placeholder path, recovery): known
    # before the decision so its answer can be rendered in the same pure step; stored only if
    # the decision binds it.
    fresh: AliasRecord | None = None


@dataclass(frozen=True)
class Action:
    kind: ActionKind
    alias_id: str | None = None
    placeholder_id: str | None = None
    meeting_uid: str | None = None
    sequence: int = 0
    occurrence_key: str | None = None
    schedule: Schedule | None = None
    release_alias_id: str | None = None  # an older alias this meeting no longer uses
    answer: tuple[str, str] | None = None  # (answer_key, reason) to remember for redelivery


NO_ACTION = Action("none")


@dataclass(frozen=True)
class Decision:
    outcome: Outcome
    reason: str
    correlation_id: str
    action: Action = NO_ACTION
    record: AliasRecord | None = None  # the alias the reply talks about, when known
    occurrence: Occurrence | None = None  # the occurrence the reply talks about
    organizer_update: bool = False  # replace the placeholder in the organizer's meeting
    detail: str = ""
    reply: bool = True  # whether the organizer gets an accept/decline (never for "ignored")

    @property
    def template(self) -> str | None:
        return TEMPLATE_FOR_REASON[self.reason]

    @property
    def replies(self) -> bool:
        return self.reply and self.outcome != "ignored"


def occurrence_key(recurrence_id: datetime) -> str:
    return recurrence_id.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


def answer_key(message: Meeting) -> str:
    scope = occurrence_key(message.recurrence_id) if message.recurrence_id else "series"
    return f"{scope}@{message.sequence}"


def general_error(correlation_id: str, detail: str = "") -> Decision:
    return Decision("declined", "general_error", correlation_id, detail=detail)


def recovered(meeting: Meeting, state: MeetingState, now: datetime) -> Decision:
    """Recovery's rule, with decide's shape: an accepted meeting the store lost gets the fresh
    alias bound, as a new booking would, and its organizer the new joining instructions (no
    accept: the room accepted the meeting long ago)."""
    cid = meeting.correlation_id
    fresh = state.fresh
    if fresh is None:
        return general_error(cid, "no alias was drawn for the recovered meeting")
    occurrence = recurrence.next_occurrence(meeting.schedule, now)
    if occurrence is None:
        return Decision("ignored", "single_in_past", cid, reply=False)
    reason = "new_recurring" if meeting.schedule.recurring else "new_single"
    return Decision(
        "accepted",
        reason,
        cid,
        action=Action(
            "bind_new",
            alias_id=fresh.alias_id,
            meeting_uid=meeting.uid,
            sequence=meeting.sequence,
            schedule=meeting.schedule,
            answer=(answer_key(meeting), f"{reason}+update"),
        ),
        record=fresh,
        occurrence=occurrence,
        organizer_update=True,
        reply=False,
    )


def decide(message: Meeting, state: MeetingState, now: datetime) -> Decision:
    """Apply the rules table to one message. Never raises: anything unexpected becomes a
    general_error decline carrying the message's correlation id."""
    try:
        if message.method == "CANCEL":
            return _decide_cancel(message, state)
        return _decide_request(message, state, now)
    except recurrence.RecurrenceError as exc:  # a series the service will not walk
        return general_error(message.correlation_id, str(exc))
    except Exception:  # the rules table's last row: answer, never crash the worker
        return general_error(message.correlation_id, traceback.format_exc())


def _declined(message: Meeting, reason: str, record: AliasRecord | None = None) -> Decision:
    return Decision("declined", reason, message.correlation_id, record=record)


def from_organizer(message: Meeting, organizer: str) -> bool:
    """Whether `message` may change or cancel the meeting `organizer` booked (DESIGN.md: only
    its organizer may).

    - Its ORGANIZER is that organizer, sent by them or SENT-BY a delegate acting for them; in
      a mail, the mail is From that ORGANIZER and its Sender, if any, is that ORGANIZER or that
      SENT-BY: the shape Exchange gives a message the organizer or their delegate sent (and lets
      only them send from its mailboxes). A delegate claimed by SENT-BY alone, From someone
      else, does not count.
    - Or the organizer handed the meeting to the new ORGANIZER: then it comes SENT-BY the
      organizer, and only a mail can show that they sent it: From the new ORGANIZER with the
      organizer as its Sender. SENT-BY is text anyone can write into a calendar, so without
      that Sender (a bare .ics, or a mail the new ORGANIZER sent themselves) a hand-over does
      not count.

    A booking that names no organizer (kept before organizers were) cannot be checked.
    Addresses compare without ASCII case only: `\u212aate@…` (a Kelvin sign) is not kate."""
    if not organizer:
        return True
    bound = fold_address(organizer)
    named = fold_address(message.organizer_email)
    sent_by = fold_address(message.organizer_sent_by)
    sender = fold_address(message.mail_sender or message.mail_from or "")
    if bound == named:
        if message.mail_from is None:
            return True
        return fold_address(message.mail_from) == named and sender in {named, sent_by} - {""}
    if bound == sent_by and message.mail_from is not None:
        return fold_address(message.mail_from) == named and sender == bound
    return False


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def fold_address(address: str) -> str:
    """A mail address as compared: ASCII letters without case, everything else exactly (a
    Unicode case fold would make look-alikes such as the Kelvin sign equal to a letter)."""
    return address.strip().translate(_ASCII_LOWER)


def _not_organizer(message: Meeting, record: AliasRecord) -> Decision:
    """Someone other than the meeting's organizer tried to change or cancel it: nothing
    changes and nobody is answered (a reply would confirm the booking exists to whoever
    guessed its UID); the log names both addresses."""
    claimed = f"ORGANIZER {message.organizer_email or '(none)'}"
    if message.organizer_sent_by:
        claimed += f" SENT-BY {message.organizer_sent_by}"
    if message.mail_from is not None:
        claimed += f", mail From {message.mail_from or '(none)'}"
        if message.mail_sender:
            claimed += f" Sender {message.mail_sender}"
    detail = (
        f"{message.method} from {message.sent_by or 'nobody'} ({claimed}); "
        f"the meeting's organizer is {record.organizer}"
    )
    return Decision(
        "ignored",
        "not_organizer",
        message.correlation_id,
        record=record,
        detail=detail,
        reply=False,
    )


def _is_outdated(message: Meeting, record: AliasRecord | None) -> bool:
    if record is None or record.meeting_uid != message.uid:
        return False
    if message.recurrence_id is not None:
        seen = record.occurrence_sequences.get(occurrence_key(message.recurrence_id), -1)
        return message.sequence < seen
    return message.sequence < record.sequence


def _decide_cancel(message: Meeting, state: MeetingState) -> Decision:
    record = state.uid_record
    cid = message.correlation_id
    if record is None or record.status != "bound":
        return Decision("ignored", "cancelled", cid, record=record, detail="meeting not bound")
    if not from_organizer(message, record.organizer):
        return _not_organizer(message, record)
    if _is_outdated(message, record):
        return Decision("ignored", "outdated", cid, record=record)
    schedule = record.schedule
    if message.recurrence_id is not None and schedule is not None and schedule.recurring:
        action = Action(
            "cancel_occurrence",
            alias_id=record.alias_id,
            meeting_uid=message.uid,
            sequence=message.sequence,
            occurrence_key=occurrence_key(message.recurrence_id),
            schedule=schedule.with_exdate(message.recurrence_id),
        )
        return Decision("ignored", "cancelled", cid, action=action, record=record)
    action = Action(
        "cancel", alias_id=record.alias_id, meeting_uid=message.uid, sequence=message.sequence
    )
    return Decision("ignored", "cancelled", cid, action=action, record=record)


def _decide_request(message: Meeting, state: MeetingState, now: datetime) -> Decision:
    bound = state.uid_record if state.uid_record and state.uid_record.status == "bound" else None
    owned = bound or _bound_to(message, state.token_record)  # an archived one: by its token
    if owned is not None and not from_organizer(message, owned.organizer):
        return _not_organizer(message, owned)
    if _is_outdated(message, bound):
        return Decision("ignored", "outdated", message.correlation_id, record=bound)
    ended = _ended(message, state.token_record)
    if ended is not None:
        return ended

    token = message.token
    if token is None:
        return _declined(message, "invalid_alias_id")
    record = state.token_record
    if record is None and token.kind == "PXPS":
        return _declined(message, "invalid_alias_id")
    if record is not None:
        if record.status == "deleted":
            return _declined(message, "alias_deleted", record)
        if record.status == "bound" and record.meeting_uid != message.uid:
            return _declined(message, "alias_conflict", record)

    # The schedule this meeting will have once the message is applied.
    schedule, occurrence = _resulting_schedule(message, bound, now)
    if occurrence is None:
        if message.recurrence_id is not None or not message.is_series:
            return _declined(message, "single_in_past", record or bound)
        return _declined(message, "recurring_in_past", record or bound)

    key = occurrence_key(message.recurrence_id) if message.recurrence_id else None
    target = record or bound
    remembered = _remembered(message, target)
    if remembered is not None and remembered.endswith("+update") and token.kind != "TOK":
        # answered with an organizer update, and now the body carries our token instead of
        # the placeholder: this is that update coming back, not the request read again
        remembered = None
    again = _read_again(message, bound, target, remembered, now)
    if again is not None:
        return again
    if target is None:
        # TOK path: the add-in could not reach us; allocate now and fix the organizer's copy.
        assert token.kind == "TOK"
        fresh = state.fresh
        if fresh is None:
            return general_error(message.correlation_id, "no alias was drawn for the placeholder")
        reason = "new_recurring" if schedule.recurring else "new_single"
        action = Action(
            "bind_new",
            alias_id=fresh.alias_id,
            placeholder_id=token.id,
            meeting_uid=message.uid,
            sequence=message.sequence,
            occurrence_key=key,
            schedule=schedule,
            answer=(answer_key(message), f"{reason}+update"),
        )
        return Decision(
            "accepted",
            reason,
            message.correlation_id,
            action=action,
            record=fresh,
            occurrence=occurrence,
            organizer_update=True,
        )

    was_bound = target.status == "bound" and target.meeting_uid == message.uid
    if (
        remembered in (None, "unchanged")
        and was_bound
        and bound is not None
        and _unchanged(message, bound)
    ):
        # An informational update that changes nothing the rules care about (time,
        # recurrence, token): above all the organizer update this service sent, which
        # Exchange delivers to every attendee, the room included. No reply, no update.
        return _unchanged_decision(message, bound, key)
    if (
        message.recurrence_id is not None
        and was_bound
        and target.schedule is not None
        and target.schedule.recurring
    ):
        reason = "edited_occurrence"
    elif was_bound or bound is not None:
        reason = "edited_recurring" if schedule.recurring else "edited_single"
    else:
        reason = "new_recurring" if schedule.recurring else "new_single"
    update = False
    detail = ""
    if remembered is not None and (bound is None or _unchanged(message, bound)):
        # the same message again (redelivery after a crash): the answer it got the first time
        reason, _, flag = remembered.partition("+")
        # the placeholder is replaced once: a body that carries our token has nothing to replace
        update = flag == "update" and token.kind == "TOK"
        # or an informational update that kept the SEQUENCE (an attendee added, say): the two
        # look alike, and either way that answer goes out once (same message id)
        detail = "answered before at this SEQUENCE: the same answer, sent once"
    # otherwise times changed at a SEQUENCE already answered: an edit (reason as above), whose
    # answer was sent once for that SEQUENCE and outcome and is not sent again
    release = bound.alias_id if bound is not None and bound.alias_id != target.alias_id else None
    action = Action(
        "bind",
        alias_id=target.alias_id,
        meeting_uid=message.uid,
        sequence=message.sequence,
        occurrence_key=key,
        schedule=schedule,
        release_alias_id=release,
        answer=(answer_key(message), f"{reason}+update" if update else reason),
    )
    return Decision(
        "accepted",
        reason,
        message.correlation_id,
        action=action,
        record=target,
        occurrence=occurrence,
        organizer_update=update,
        detail=detail,
    )


def _unchanged_decision(message: Meeting, bound: AliasRecord, key: str | None) -> Decision:
    """`unchanged`, with its SEQUENCE remembered when it is the highest yet: an older request
    read after it (a lower SEQUENCE) is then `outdated` and moves nothing, as the rules table
    says."""
    seen = bound.occurrence_sequences.get(key, -1) if key is not None else bound.sequence
    action = NO_ACTION
    if message.sequence > seen and bound.schedule is not None:
        action = Action(
            "bind",
            alias_id=bound.alias_id,
            meeting_uid=message.uid,
            sequence=message.sequence,
            occurrence_key=key,
            schedule=bound.schedule,
            answer=(answer_key(message), "unchanged"),
        )
    return Decision("ignored", "unchanged", message.correlation_id, action=action, record=bound)


def _ended(message: Meeting, record: AliasRecord | None) -> Decision | None:
    """`outdated` for a request of a meeting whose alias was deleted since (the meeting
    cancelled, the alias deleted by an admin), of a SEQUENCE no higher than the last message
    applied to it. RFC 5546 orders one meeting's messages by SEQUENCE, then DTSTAMP: a lower
    SEQUENCE than the cancellation's is older. An equal one is, as far as the store can tell,
    the request read again (after a crash, or kept in the inbox while its reply waits), and
    the cancellation came after it. Either way no second answer, which would contradict the
    first ("Accepted", then "Declined: alias_deleted"); a higher SEQUENCE is alias_deleted."""
    if record is None or record.status != "deleted" or record.meeting_uid != message.uid:
        return None
    seen = record.sequence
    if message.recurrence_id is not None:
        seen = max(seen, record.occurrence_sequences.get(occurrence_key(message.recurrence_id), -1))
    if message.sequence > seen:
        return None
    why = f" ({record.reason})" if record.reason else ""
    detail = f"SEQUENCE {message.sequence}; its alias was deleted{why} at SEQUENCE {seen}"
    return Decision("ignored", "outdated", message.correlation_id, record=record, detail=detail)


def _read_again(
    message: Meeting,
    bound: AliasRecord | None,
    target: AliasRecord | None,
    remembered: str | None,
    now: datetime,
) -> Decision | None:
    """A series request answered before (the same meeting and SEQUENCE: read again) after a
    message of the same or a higher SEQUENCE changed one of its occurrences (cancelled or moved
    it): the answer it got the first time (the same messages), and the store keeps that change;
    applying the series again would open a cancelled occurrence's window on Pexip again."""
    if remembered is None or bound is None or bound.schedule is None or target is None:
        return None
    if target.alias_id != bound.alias_id or message.recurrence_id is not None:
        return None
    later = [(s, k) for k, s in bound.occurrence_sequences.items() if s >= message.sequence]
    if not later:
        return None
    cid = message.correlation_id
    detail = "answered before at this SEQUENCE; occurrence {1} changed since (SEQUENCE {0})"
    detail = detail.format(*max(later)) + " and stays so: the same answer, sent once"
    reason, _, flag = remembered.partition("+")
    if TEMPLATE_FOR_REASON.get(reason) is None:  # "unchanged" remembered
        return Decision("ignored", "unchanged", cid, record=bound, detail=detail)
    token = message.token
    return Decision(
        "accepted",
        reason,
        cid,
        record=bound,
        occurrence=recurrence.next_occurrence(bound.schedule, now)
        or recurrence.next_occurrence(message.schedule, now),
        organizer_update=flag == "update" and token is not None and token.kind == "TOK",
        detail=detail,
    )


def _bound_to(message: Meeting, record: AliasRecord | None) -> AliasRecord | None:
    """`record` when it is bound to the message's meeting."""
    if record is not None and record.status == "bound" and record.meeting_uid == message.uid:
        return record
    return None


def _unchanged(message: Meeting, bound: AliasRecord) -> bool:
    """Whether applying `message` to the meeting bound to its UID would change nothing: the same
    times and recurrence (its token has already been checked to name the bound alias)."""
    if bound.schedule is None:
        return False
    if message.recurrence_id is None:
        return recurrence.same_schedule(message.schedule, bound.schedule)
    occurrence = recurrence.occurrence_of(bound.schedule, message.recurrence_id)
    return (
        occurrence is not None
        and occurrence.start == message.start
        and occurrence.end == message.end
    )


def _remembered(message: Meeting, target: AliasRecord | None) -> str | None:
    if target is None or target.status != "bound" or target.meeting_uid != message.uid:
        return None
    return target.answered.get(answer_key(message))


def _resulting_schedule(
    message: Meeting, bound: AliasRecord | None, now: datetime
) -> tuple[Schedule, Occurrence | None]:
    """The schedule after applying `message`, and the occurrence a reply should talk about (None
    when nothing relevant is left in the future)."""
    if message.recurrence_id is not None:
        # One occurrence changed. Its own end decides past/future (rules table).
        moved = Occurrence(message.recurrence_id, message.start, message.end)
        if message.end <= now:
            return message.schedule, None
        if bound is not None and bound.schedule is not None and bound.schedule.recurring:
            return bound.schedule.with_override(
                message.recurrence_id, message.start, message.end
            ), moved
        return Schedule(message.start, message.end), moved
    schedule = message.schedule
    return schedule, recurrence.next_occurrence(schedule, now)
