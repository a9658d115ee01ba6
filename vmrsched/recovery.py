"""Recovery: when the store was lost or restored from an old backup, meetings on the room's
calendar may have aliases nobody knows any more. For each accepted future meeting missing from
the store, give it a new alias, bind it, and send the organizer an update with the new joining
instructions (as the organizer, through the mailbox backend)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from vmrsched.config import IntegrationConfig
from vmrsched.mailbox.base import Gateway, GatewayError
from vmrsched.messages import answers
from vmrsched.rules import recurrence
from vmrsched.rules.meetings import MeetingState, recovered
from vmrsched.store import StoreWrites

HORIZON = timedelta(days=366)


@dataclass(frozen=True)
class Recovered:
    uid: str
    subject: str  # as the conference subject template shows it, never the raw subject
    organizer: str
    action: str  # bound | would_bind | already_bound | known | past | failed
    alias: str = ""
    detail: str = ""


def recover(
    integ: IntegrationConfig,
    gateway: Gateway,
    store: StoreWrites,
    now: datetime,
    dry_run: bool = False,
    report: Callable[[Recovered], None] = lambda _: None,
) -> list[Recovered]:
    renderer = integ.renderer()
    done: list[Recovered] = []

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
        if store.by_meeting_uid(meeting.uid) is not None:
            note(Recovered(meeting.uid, shown, who, "already_bound"))
            continue
        if meeting.uid in known:  # cancelled, or its alias deleted by an admin: not lost
            note(Recovered(meeting.uid, shown, who, "known", detail="the store knows it, unbound"))
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
