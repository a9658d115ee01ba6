"""One meeting, handled: from the meeting and the store's view of it to the store action and
every message that carries the decision (the templated reply to the organizer and, on the
placeholder path, the organizer update). Pure: deciding, rendering and composing, no I/O; the
allocator, the poller (through the allocator) and recovery all go through `plan`."""

from __future__ import annotations

import html
import json
import traceback
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any
from urllib.parse import quote

from vmrsched import htmltext, outgoing
from vmrsched.config import IntegrationConfig
from vmrsched.messages import calendars
from vmrsched.outgoing import Outgoing
from vmrsched.rules import aliases, recurrence
from vmrsched.rules.meetings import (
    AliasRecord,
    Decision,
    Meeting,
    MeetingState,
    decide,
    general_error,
    is_address,
)
from vmrsched.rules.recurrence import Schedule
from vmrsched.store import Record
from vmrsched.templating import Renderer, TemplateLimitError

Rule = Callable[[Meeting, MeetingState, datetime], Decision]


@dataclass(frozen=True)
class Step:
    """What handling one meeting comes to: the decision (its action is the store's part, with
    the conference fields to keep) and the messages to send once the action is durable."""

    meeting: Meeting
    decision: Decision
    fields: Mapping[str, Any]
    messages: tuple[Outgoing, ...]

    @property
    def alias(self) -> str:
        record = self.decision.record
        return record.alias if record is not None else ""


def plan(
    integ: IntegrationConfig,
    renderer: Renderer,
    meeting: Meeting,
    state: MeetingState,
    now: datetime,
    item_id: str = "",
    rule: Rule = decide,
) -> Step:
    """Decide (by the rules table, or recovery's rule) and render everything the decision sends;
    the reply answers inbox item `item_id` where the mailbox can. Never raises for a meeting: a
    decision whose conference fields or messages cannot be rendered becomes the meeting's
    general_error decline. Only a general_error that cannot be rendered either propagates."""
    decision = rule(meeting, state, now)
    try:
        fields = (
            conference_fields(integ, renderer, meeting, decision)
            if decision.action.kind != "none"
            else {}
        )
        messages = _messages(integ, renderer, meeting, decision, _values(decision.record), item_id)
    except TemplateLimitError as exc:  # the admin's template on this meeting's values: say which
        why = f"TemplateLimitError: {exc.template}: {exc}" if exc.template else repr(exc)
        return failed(integ, renderer, meeting, why, item_id, decision)
    except Exception:
        return failed(integ, renderer, meeting, traceback.format_exc(), item_id, decision)
    return Step(meeting, decision, fields, tuple(messages))


def failed(
    integ: IntegrationConfig,
    renderer: Renderer,
    meeting: Meeting,
    detail: str,
    item_id: str = "",
    attempted: Decision | None = None,
) -> Step:
    """The general_error step for a meeting whose handling failed (`detail` says how): no store
    action, a decline carrying the meeting's correlation id."""
    cid = attempted.correlation_id if attempted is not None else meeting.correlation_id
    decision = general_error(cid, detail)
    messages = _messages(integ, renderer, meeting, decision, None, item_id)
    return Step(meeting, decision, {}, tuple(messages))


def _values(record: AliasRecord | None) -> dict[str, Any] | None:
    if record is None:
        return None
    return {
        "alias_id": record.alias_id,
        "alias": record.alias,
        "numeric_alias": record.numeric_alias,
    }


# the alias values of the joining instructions, and stand-ins that find them in a body
_ALIAS_VARS = ("alias", "numeric_alias", "alias_uuid")
_SENTINELS = ("VMRSCHED0ALIAS0", "VMRSCHED0NUMERIC0", "VMRSCHED0UUID0")


def joining_domain(integ: IntegrationConfig) -> str:
    """What {{addin_server_domain}} stands for in joining instructions: the host serving Pexip's
    web app when configured. In Pexip's own product the add-in is served by that host, so
    templates copied from it (`https://{{addin_server_domain}}/webapp/…`) link to Pexip."""
    return integ.pexip.webapp_fqdn or integ.addin.server_fqdn


def self_service_url(integ: IntegrationConfig) -> str:
    """What {{self_service_url}} stands for in declines: the organizer page's public URL,
    /my/<integration> where the service answers: [server] public_url when set (as the page's
    sign-in redirect URI is built; on a loopback trial plain http), else https at server_fqdn,
    where it answers the add-in."""
    base = integ.public_url or f"https://{integ.addin.server_fqdn}"
    return f"{base}/my/{quote(integ.name, safe='')}"


def variables(
    integ: IntegrationConfig,
    meeting: Meeting | None,
    record: Mapping[str, Any] | None,
    decision: Decision | None = None,
) -> dict[str, Any]:
    """Template variables of the single-use set for one meeting and alias (and the declines'
    {{self_service_url}}: templates that may not use it never see it)."""
    values: dict[str, Any] = {
        "addin_server_domain": joining_domain(integ),
        "self_service_url": self_service_url(integ),
    }
    if meeting is not None:
        occurrence = decision.occurrence if decision is not None else None
        values.update(
            subject=meeting.subject,
            organizer_name=meeting.organizer_name or meeting.organizer_email,
            organizer_email=meeting.organizer_email,
            start_time=occurrence.start if occurrence else meeting.start,
            end_time=occurrence.end if occurrence else meeting.end,
        )
    if record is not None:
        values.update(
            alias=record.get("alias", ""),
            numeric_alias=record.get("numeric_alias", ""),
            alias_uuid=aliases.alias_id_token(record["alias_id"]) if record.get("alias_id") else "",
        )
    if decision is not None:
        values["correlation_id"] = decision.correlation_id
    return values


def conference_fields(
    integ: IntegrationConfig, renderer: Renderer, meeting: Meeting, decision: Decision
) -> dict[str, Any]:
    """What the store keeps about the conference besides its schedule: its name, description
    and subject rendered for the alias it is bound to. The meeting's own subject is kept only
    as the conference subject template renders it (the admins' privacy lever)."""
    values = variables(integ, meeting, _values(decision.record), decision)
    return {
        "name": renderer.render("conference_name_template", values),
        "description": renderer.render("conference_description_template", values),
        "conference_subject": renderer.render("conference_subject_template", values),
        "organizer_email": meeting.organizer_email,
        "organizer_name": meeting.organizer_name,
    }


def shown_subject(
    integ: IntegrationConfig,
    renderer: Renderer,
    meeting: Meeting | None = None,
    decision: Decision | None = None,
    *,
    subject: str = "",
    organizer: str = "",
) -> str:
    """A meeting's subject as admins see it (the decisions log, the console, the admin API,
    the CLI): the conference subject template rendered. Without a meeting, for what an older
    version logged or an unreadable request: `subject` and `organizer` as far as they are
    known. "" where the template cannot be rendered: the raw subject never stands in for it."""
    if meeting is not None:
        record = decision.record if decision is not None else None
        values = variables(integ, meeting, _values(record), decision)
    else:
        values = {
            "addin_server_domain": joining_domain(integ),
            "subject": subject,
            "organizer_email": organizer,
            "organizer_name": organizer,
        }
    try:
        return renderer.render("conference_subject_template", values)
    except Exception:
        return ""


def reply(
    integ: IntegrationConfig,
    renderer: Renderer,
    meeting: Meeting,
    decision: Decision,
    record: Mapping[str, Any] | None,
) -> Outgoing | None:
    """The accept/decline message for a decision, or None when the rules say no reply or
    there is nobody to reply to: an organizer is one address (the poller sets a request with
    anything else aside before it is decided), never a list that a reply would go to in full."""
    template = decision.template
    if not decision.replies or template is None or not is_address(meeting.organizer_email):
        return None
    body = renderer.render(template, variables(integ, meeting, record, decision))
    accepted = decision.outcome == "accepted"
    prefix = "Accepted" if accepted else "Declined"
    room = integ.exchange
    return Outgoing(
        id=calendars.message_id(integ.name, meeting, "reply", decision.outcome),
        kind="reply",
        sender=room.mailbox_email,
        sender_name=room.mailbox_name,
        recipients=(meeting.organizer_email,),
        subject=f"{prefix}: {meeting.subject}" if meeting.subject else prefix,
        html_body=body,
        outcome=decision.outcome,
        reason=decision.reason,
        correlation_id=decision.correlation_id,
        meeting_uid=meeting.uid,
        calendar=calendars.reply_calendar(meeting, accepted, room.mailbox_email, room.mailbox_name),
    )


def organizer_update(
    integ: IntegrationConfig,
    renderer: Renderer,
    meeting: Meeting,
    decision: Decision,
    record: Mapping[str, Any],
) -> Outgoing:
    """The organizer's meeting with the placeholder replaced by real joining instructions, sent
    on the organizer's behalf to the attendees."""
    values = variables(integ, meeting, record, decision)
    instructions = renderer.render("single_use_joining_instructions_template", values)
    token = meeting.token
    token_text = token.text if token is not None else ""
    if token is not None and token.kind == "PXPS":
        # recovery: the body holds instructions for an alias that no longer exists
        skeleton = renderer.render(
            "single_use_joining_instructions_template",
            {**variables(integ, None, None), **dict(zip(_ALIAS_VARS, _SENTINELS, strict=True))},
        )
        body = calendars.replace_instructions(
            meeting.html_body, token_text, skeleton, _SENTINELS, instructions
        )
    else:
        placeholder = renderer.render("placeholder_instructions_text", values)
        body = calendars.replace_placeholder(
            meeting.html_body, token_text, placeholder, instructions
        )
    recipients = tuple(
        a
        for a in meeting.attendees
        if a.lower() != integ.exchange.mailbox_email.lower() and is_address(a)
    )
    return Outgoing(
        # per alias: recovery's update for a new alias is a new message, not a resend
        id=calendars.message_id(integ.name, meeting, "update", f"updated-{record['alias_id']}"),
        kind="update",
        sender=meeting.organizer_email,
        sender_name=meeting.organizer_name,
        recipients=recipients or (meeting.organizer_email,),
        subject=meeting.subject,
        html_body=body,
        outcome="updated",
        reason="placeholder_replaced",
        correlation_id=decision.correlation_id,
        meeting_uid=meeting.uid,
        calendar=calendars.update_calendar(meeting, body, htmltext.text_of(body)),
        extra={
            "alias_id": record["alias_id"],
            "alias": record.get("alias", ""),  # what it waits on: see `withdrawn`
            "start": meeting.start.isoformat(),
            # the SEQUENCE it was composed from: a later message of the meeting applied before
            # it goes out makes it restated (see `as_it_stands`)
            "sequence": meeting.sequence,
            "instructions": instructions,  # mailed to the organizer if the update fails
        },
    )


def unreadable_reply(
    integ: IntegrationConfig,
    renderer: Renderer,
    correlation_id: str,
    recipient: str,
    recipient_name: str,
    subject: str,
    uid: str,
) -> Outgoing:
    """A general_error decline for a request we could not read but whose sender we know."""
    values: dict[str, Any] = {
        "addin_server_domain": joining_domain(integ),
        "self_service_url": self_service_url(integ),
        "correlation_id": correlation_id,
        "subject": subject,
        "organizer_name": recipient_name or recipient,
        "organizer_email": recipient,
    }
    body = renderer.render("reject_general_error_template", values)
    return Outgoing(
        id=outgoing.message_id("unreadable", correlation_id),
        kind="reply",
        sender=integ.exchange.mailbox_email,
        sender_name=integ.exchange.mailbox_name,
        recipients=(recipient,),
        subject=f"Declined: {subject}" if subject else "Declined",
        html_body=body,
        outcome="declined",
        reason="general_error",
        correlation_id=correlation_id,
        meeting_uid=uid,
    )


def _messages(
    integ: IntegrationConfig,
    renderer: Renderer,
    meeting: Meeting,
    decision: Decision,
    record: Mapping[str, Any] | None,
    item_id: str,
) -> list[Outgoing]:
    out: list[Outgoing] = []
    answer = reply(integ, renderer, meeting, decision, record)
    if answer is not None:
        extra = {**answer.extra, "item_id": item_id} if item_id else answer.extra
        out.append(replace(answer, extra=extra))
    # sent as the organizer: an organizer that is not one address is nobody to send it as
    if decision.organizer_update and record is not None and is_address(meeting.organizer_email):
        out.append(organizer_update(integ, renderer, meeting, decision, record))
    return out


def _booked_values(integ: IntegrationConfig, record: Record, now: datetime) -> dict[str, Any]:
    """The single-use variables of a stored booking (no meeting at hand: the store keeps the
    conference subject, organizer and schedule; the times are those of the next occurrence)."""
    values = variables(integ, None, record)
    schedule = record.get("schedule")
    occurrence = None
    if schedule:
        decoded = recurrence.from_json(
            json.loads(schedule) if isinstance(schedule, str) else schedule
        )
        occurrence = recurrence.next_occurrence(decoded, now) or recurrence.Occurrence(
            decoded.start, decoded.start, decoded.end
        )
    values.update(
        # what the conference subject template kept (a booking of an older version: the subject)
        subject=str(record.get("conference_subject", record.get("subject", ""))),
        organizer_name=str(record.get("organizer_name") or record.get("organizer_email", "")),
        organizer_email=str(record.get("organizer_email", "")),
        start_time=occurrence.start if occurrence else "",
        end_time=occurrence.end if occurrence else "",
    )
    return values


def admin_notice(
    integ: IntegrationConfig,
    renderer: Renderer,
    record: Record,
    kind: str,
    now: datetime,
    serial: str,
) -> Outgoing | None:
    """A mail from the room to a booking's organizer about an admin's act: `deleted` (the
    alias_deleted_notice_template) or `resent` (the joining instructions again). None when the
    booking names no organizer. `serial` makes each act its own message."""
    organizer = str(record.get("organizer_email", ""))
    if not is_address(organizer):
        return None
    values = _booked_values(integ, record, now)
    subject = values["subject"] or "your meeting"
    if kind == "deleted":
        body = renderer.render("alias_deleted_notice_template", values)
        title = f"Video room removed: {subject}"
    else:
        body = renderer.render("single_use_joining_instructions_template", values)
        title = f"Joining details: {subject}"
    room = integ.exchange
    key = f"{integ.name}\0{record.get('alias_id')}\0{kind}\0{serial}"
    return Outgoing(
        id=outgoing.message_id(integ.name, str(record.get("alias_id")), kind, serial),
        kind="notice",
        sender=room.mailbox_email,
        sender_name=room.mailbox_name,
        recipients=(organizer,),
        subject=title,
        html_body=body,
        outcome=kind,
        reason="admin",
        # one shape with the meetings' (a UUID), whichever act and clock made the serial
        correlation_id=str(uuid.uuid5(uuid.NAMESPACE_OID, key)),
        meeting_uid=str(record.get("meeting_uid", "")),
    )


def notice_id(update: Outgoing) -> str:
    """The id of the mail with the joining instructions that replaces a failed update."""
    return outgoing.message_id(update.id, "notice")


def instructions_by_mail(integ: IntegrationConfig, update: Outgoing) -> Outgoing:
    """The organizer's meeting could not be updated (the organizer is outside the service's
    reach, or the meeting was gone): a mail from the room telling the organizer what to paste
    into it. The subject comes from a meeting request: escaped."""
    instructions = str(update.extra.get("instructions") or update.html_body)
    subject = update.subject or "your meeting"
    body = (
        f"<p>The video meeting details could not be added to your meeting "
        f"&quot;{html.escape(subject)}&quot; automatically. Please add them to the meeting "
        f"and send the update to its attendees:</p>\n{instructions}"
    )
    room = integ.exchange
    return Outgoing(
        id=notice_id(update),
        kind="notice",
        sender=room.mailbox_email,
        sender_name=room.mailbox_name,
        recipients=(update.sender,),
        subject=f"Joining details: {update.subject}" if update.subject else "Joining details",
        html_body=body,
        outcome="instructions",
        reason="update_failed",
        correlation_id=update.correlation_id,
        meeting_uid=update.meeting_uid,
        # the same joining instructions: sent only while the same alias is bound
        extra={k: update.extra[k] for k in ("alias_id", "alias") if k in update.extra},
    )


def waits_on(message: Outgoing) -> tuple[str, str] | None:
    """(alias id, alias) of the alias `message` is sent only while it is bound: an organizer
    update, or the mail standing in for a failed one (see `withdrawn`); None for the others."""
    alias_id = str(message.extra.get("alias_id") or "")
    alias = str(message.extra.get("alias") or "")
    carries = message.kind == "update" or (
        message.kind == "notice" and message.outcome == "instructions"
    )
    return (alias_id, alias) if carries and alias_id and alias else None


def withdrawn(message: Outgoing, status: Callable[[str, str], str | None]) -> str:
    """Why `message` must not go out any more ("" when it must), asked just before it is sent.

    An organizer update, or the mail standing in for a failed one, carries an alias's joining
    instructions; the update is a METHOD:REQUEST from the organizer of one higher SEQUENCE, so
    an attendee's client takes it over a cancellation of the same SEQUENCE (RFC 5546 2.1.5:
    the later DTSTAMP wins) and restores the meeting, with a dead room. So each goes out only
    while its alias is still bound: not once the meeting was cancelled (in the same batch, or
    while the message waited), the alias deleted by an admin, or the meeting finished and
    archived. `status(alias_id, alias)` is the alias's state now (reserved | bound | deleted |
    archived), None when it cannot be told: then the message goes out, as before."""
    carried = waits_on(message)
    if carried is None:
        return ""
    now = status(*carried)
    if now is None or now == "bound":
        return ""
    why = "its meeting cancelled or the alias deleted" if now == "deleted" else now
    return f"alias {carried[1]} is no longer bound ({why}): not sent"


@dataclass(frozen=True)
class Booking:
    """An alias as it stands when a message waiting on it is about to go out: its status
    (reserved | bound | deleted | archived) and, while bound, its meeting's schedule and the
    highest SEQUENCE applied to that meeting, an occurrence's included (-1: not known)."""

    status: str
    schedule: Schedule | None = None
    sequence: int = -1


def as_it_stands(
    message: Outgoing, booking: Callable[[str, str], Booking | None]
) -> Outgoing | str:
    """`message` as it must go out now, or why it must not (see `withdrawn`), asked just before
    it is sent. `booking(alias_id, alias)` is the alias's state now, None when it cannot be
    told: then the message goes out as it was composed.

    An organizer update restores at every attendee the meeting it carries (a METHOD:REQUEST
    from the organizer, one SEQUENCE above the last message applied). One composed before a
    later message of its meeting was applied (an occurrence cancelled or moved, the series
    changed: in the same batch, or while it waited) would undo that message: it goes out
    restated from the meeting as the store now keeps it, with cancelled occurrences as EXDATEs,
    moved ones as VEVENTs of their own, and SEQUENCE one above the highest applied. An
    attendee's client then takes it over the organizer's messages it already has, and the
    organizer's next message, of at least that SEQUENCE and a later DTSTAMP, over it
    (RFC 5546 2.1.5). An update of one occurrence that was cancelled since is withdrawn."""
    carried = waits_on(message)
    if carried is None:
        return message
    now = booking(*carried)
    why = withdrawn(message, lambda *_: now.status if now is not None else None)
    if why:
        return why
    return restated(message, now) if now is not None else message


def restated(message: Outgoing, now: Booking) -> Outgoing | str:
    """An organizer update brought up to date with `now` (see `as_it_stands`): unchanged while
    no message of a higher SEQUENCE than the one it answers was applied (a lone request's
    update, or one queued before updates said what they answer)."""
    base = message.extra.get("sequence")
    if (
        message.kind != "update"
        or not message.calendar
        or not isinstance(base, int)
        or now.schedule is None
        or now.sequence <= base
    ):
        return message
    calendar = calendars.restate(message.calendar, now.schedule, now.sequence + 1)
    if calendar is None:
        return f"its occurrence was cancelled since (SEQUENCE {now.sequence}): not sent"
    return replace(message, calendar=calendar)
