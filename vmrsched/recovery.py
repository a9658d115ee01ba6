"""Recovery: when the store was lost or restored from an old backup, meetings on the room's
calendar may have aliases nobody knows any more. For each accepted future meeting missing from
the store, give it a new alias, bind it, and send the organizer an update with the new joining
instructions (as the organizer, through the mailbox backend).

Missing from the store is not enough: a record `store repair` could not keep may be that of a
meeting whose alias an admin deleted, or that was declined or cancelled. The decisions log,
which no damage to a store touches, says which: a meeting whose newest decision about it as a
whole was a decline, a cancellation or an admin's deletion is left as it is, and the report
says why. The other way round, a store restored from a backup may still hold as bound a meeting
whose alias an admin deleted, or whose organizer cancelled it, after the backup: the decisions
log (kept current through the restore) says so, and its binding is ended again, quietly (its
organizer was told the first time)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from vmrsched.config import IntegrationConfig
from vmrsched.mailbox.base import Gateway, GatewayError
from vmrsched.messages import answers
from vmrsched.rules import recurrence
from vmrsched.rules.meetings import Meeting, MeetingState, recovered
from vmrsched.store import StoreWrites
from vmrsched.templating import Renderer

HORIZON = timedelta(days=366)


@dataclass(frozen=True)
class Recovered:
    uid: str
    subject: str  # as the conference subject template shows it, never the raw subject
    organizer: str
    # bound | would_bind | already_bound | known | skipped | past | failed; and where a store
    # restored from a backup is behind: released | would_release (a bound meeting its
    # decisions log says is over since), updated | would_update (the calendar holds a newer
    # SEQUENCE of a bound meeting)
    action: str
    alias: str = ""
    detail: str = ""


# What a decision says about a meeting as a whole, when it is not about one occurrence only:
# an accept (it is booked), a decline or cancellation (it is not), an admin's deletion (its
# alias must not come back). Anything else (ignored as outdated or unchanged, refused as not
# from its organizer, set aside) left the meeting as it was.
_STANDING_OUTCOMES = frozenset({"accepted", "declined", "deleted"})


def standing(history: Iterable[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    """Each meeting's newest decision about it as a whole, by meeting UID, from a decisions
    log read newest first."""
    found: dict[str, Mapping[str, Any]] = {}
    for entry in history:
        uid = str(entry.get("meeting_uid") or "")
        if not uid or uid in found or entry.get("occurrence"):
            continue
        outcome, reason = entry.get("outcome"), entry.get("reason")
        if outcome in _STANDING_OUTCOMES or (outcome == "ignored" and reason == "cancelled"):
            found[uid] = entry
    return found


def _left_alone(entry: Mapping[str, Any] | None) -> str:
    """Why a lost meeting is not bound again (its newest decision as a whole), or ""."""
    if entry is None:
        return ""
    when = str(entry.get("time") or "an unknown time")
    outcome, reason = entry.get("outcome"), entry.get("reason")
    if outcome == "deleted":
        by = f", {entry['detail']}" if entry.get("detail") else ""
        return f"its alias {entry.get('alias', '')} was deleted by an admin ({when}{by})"
    if outcome == "declined":
        return f"its last request was declined ({reason}, {when})"
    if outcome == "ignored":
        return f"cancelled by its organizer ({when})"
    return ""


def _ends(entry: Mapping[str, Any]) -> bool:
    """Whether a decision ended the binding it names: an admin's deletion of its alias, or
    its organizer's cancellation of the whole meeting."""
    if entry.get("occurrence"):
        return False
    return entry.get("outcome") == "deleted" or (
        entry.get("outcome") == "ignored" and entry.get("reason") == "cancelled"
    )


def endings(history: Iterable[Mapping[str, Any]]) -> dict[tuple[str, str], Mapping[str, Any]]:
    """The decision that ended each binding, by (meeting UID, alias), from a decisions log read
    newest first. Once ended a binding never comes back (its alias is deleted: a request naming
    it again is declined alias_deleted), so later decisions about the meeting do not undo it."""
    found: dict[tuple[str, str], Mapping[str, Any]] = {}
    for entry in history:
        key = (str(entry.get("meeting_uid") or ""), str(entry.get("alias") or ""))
        if all(key) and key not in found and _ends(entry):
            found[key] = entry
    return found


def _ended_since(entry: Mapping[str, Any] | None) -> str:
    """Why a meeting the store holds as bound is over after all, or "": a decision ended this
    very binding (`endings`). Only a store older than its decisions log holds that: one
    restored from a backup taken before, with the current log put back (docs/production.md)."""
    return _left_alone(entry) if entry is not None else ""


def _caught_up(
    integ: IntegrationConfig,
    renderer: Renderer,
    store: StoreWrites,
    meeting: Meeting,
    bound: Mapping[str, Any],
    now: datetime,
    dry_run: bool,
    shown: str,
) -> Recovered:
    """A meeting the store holds as bound, at a SEQUENCE below the calendar's: the store came
    from a backup taken before the organizer's update (a move, say), which the room accepted.
    The binding takes the calendar's meeting as the rules take an update, quietly: the
    organizer had the answer then. Otherwise (or if the rules would not accept the update
    now) it stays as it is: `already_bound`."""
    who = meeting.organizer_email
    if meeting.sequence <= int(bound.get("sequence", -1)):
        return Recovered(meeting.uid, shown, who, "already_bound")
    state = store.state_for(meeting.token, meeting.uid)
    step = answers.plan(integ, renderer, meeting, state, now)
    action = step.decision.action
    if step.decision.outcome != "accepted" or action.kind != "bind":
        return Recovered(
            meeting.uid,
            shown,
            who,
            "already_bound",
            bound["alias"],
            f"the calendar's SEQUENCE {meeting.sequence} is not taken: {step.decision.reason}",
        )
    detail = f"as the calendar holds it (SEQUENCE {meeting.sequence}): {step.decision.reason}"
    if dry_run:
        return Recovered(meeting.uid, shown, who, "would_update", bound["alias"], detail)
    # the conference keeps its name: names are unique per integration, and this one is taken
    fields = {**step.fields, "name": bound["name"]} if bound.get("name") else step.fields
    store.apply(action, fields)
    store.commit()
    return Recovered(meeting.uid, shown, who, "updated", bound["alias"], detail)


def recover(
    integ: IntegrationConfig,
    gateway: Gateway,
    store: StoreWrites,
    now: datetime,
    dry_run: bool = False,
    report: Callable[[Recovered], None] = lambda _: None,
    history: Iterable[Mapping[str, Any]] = (),
) -> list[Recovered]:
    """Bind every accepted future meeting the store lost, unless `history` (the integration's
    decisions log, newest first) says it was declined, cancelled or its alias deleted."""
    renderer = integ.renderer()
    done: list[Recovered] = []
    history = list(history)
    standings = standing(history)
    ends = endings(history)

    def note(entry: Recovered) -> None:
        done.append(entry)
        report(entry)

    spec = integ.single_use
    known = store.meeting_uids()
    for entry in gateway.calendar(now, now + HORIZON):
        meeting = replace(entry.meeting, correlation_id=str(uuid.uuid4()))
        who = meeting.organizer_email
        # What the report shows is the subject as admins see it (the conference subject template),
        # never the raw one: a template that blanks subjects for privacy blanks them here too.
        shown = answers.shown_subject(integ, renderer, meeting)
        bound = store.by_meeting_uid(meeting.uid)
        if bound is not None:
            ending = ends.get((meeting.uid[:300], str(bound.get("alias", ""))))
            ended = _ended_since(ending)
            if not ended:
                note(_caught_up(integ, renderer, store, meeting, bound, now, dry_run, shown))
            elif dry_run:
                note(Recovered(meeting.uid, shown, who, "would_release", bound["alias"], ended))
            else:
                decision = ending or {}
                # the reason the first ending gave the record, as the store words it
                reason = (
                    "cancelled" if decision.get("outcome") == "ignored" else decision.get("detail")
                )
                store.delete(bound["alias_id"], str(reason or "deleted by an admin"))
                store.commit()
                note(Recovered(meeting.uid, shown, who, "released", bound["alias"], ended))
            continue
        if meeting.uid in known:  # cancelled, or its alias deleted by an admin: not lost
            note(Recovered(meeting.uid, shown, who, "known", detail="the store knows it, unbound"))
            continue
        why = _left_alone(standings.get(meeting.uid[:300]))
        if why:
            note(Recovered(meeting.uid, shown, who, "skipped", detail=f"{why}: not bound again"))
            continue
        if recurrence.next_occurrence(meeting.schedule, now) is None:
            note(Recovered(meeting.uid, shown, who, "past"))
            continue
        if dry_run:
            note(Recovered(meeting.uid, shown, who, "would_bind"))
            continue
        fresh = store.draw(spec.alias_prefix, spec.alias_suffix_length, spec.alias_domain)
        step = answers.plan(
            integ, renderer, meeting, MeetingState(fresh=fresh), now, rule=recovered
        )
        if step.decision.action.kind == "none":
            note(Recovered(meeting.uid, shown, who, "failed", "", step.decision.detail))
            continue
        store.apply(step.decision.action, step.fields)
        store.commit()  # the alias is on disk before anyone is told about it
        try:
            for message in step.messages:
                gateway.send(message)
        except GatewayError as exc:
            note(
                Recovered(
                    meeting.uid,
                    shown,
                    who,
                    "failed",
                    fresh.alias,
                    f"alias bound, organizer update not sent: {exc}",
                )
            )
            continue
        note(Recovered(meeting.uid, shown, who, "bound", fresh.alias))
    return done
