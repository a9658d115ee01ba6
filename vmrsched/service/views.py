"""What an admin sees, as JSON-ready dicts: a stored alias (who booked it for what, when it can
be joined), a decisions log entry, a queued or failed message, an alarm. The console, the admin
API and the CLI show these, online and offline alike; the organizer's page builds on the alias
view (organizer.py).

Where an admin sees a meeting, they see the rendered conference subject (the privacy lever),
never the meeting's own subject; a message is shown without its subject or body."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from typing import Any

from vmrsched.config import IntegrationConfig
from vmrsched.messages import answers
from vmrsched.outgoing import Outgoing
from vmrsched.rules import recurrence
from vmrsched.store import Record, decode_schedule
from vmrsched.telemetry import Alarm
from vmrsched.templating import Renderer

View = dict[str, Any]  # one JSON object as the admin pages and APIs answer it


def iso_or_none(value: Any) -> str | None:
    """A time as ISO 8601 in UTC: from unix seconds, or an ISO string as it is."""
    if value is None or value == "":
        return None
    if isinstance(value, int | float):
        return datetime.fromtimestamp(float(value), UTC).isoformat()
    return str(value)


def version() -> str:
    try:
        return package_version("vmrsched")
    except PackageNotFoundError:
        return "unknown"


def alarm_view(alarm: Alarm) -> View:
    """An active alarm as the admin pages show it: what, why, since when."""
    return {
        "name": alarm.name,
        "message": alarm.message,
        "since": datetime.fromtimestamp(alarm.raised_at, UTC).isoformat(),
    }


def message_view(message: Outgoing, state: str, at: float, failure: str = "") -> View:
    """A queued or failed message as the admin sees it: never its subject or body (they carry
    the meeting's own subject), only what it is, for whom, and why it failed."""
    return {
        "id": message.id,
        "state": state,
        "kind": message.kind,
        "outcome": message.outcome,
        "reason": message.reason,
        "recipients": list(message.recipients),
        "meeting_uid": message.meeting_uid,
        "correlation_id": message.correlation_id,
        "at": datetime.fromtimestamp(at, UTC).isoformat() if at else None,
        "failure": failure,
    }


def decision_view(integ: IntegrationConfig, renderer: Renderer) -> Callable[[View], View]:
    """A decisions log entry as the admin sees it: its subject is the conference subject the
    poller logged, or, for an entry an older version logged with the meeting's own subject,
    that subject put through the conference subject template now (the privacy lever holds for
    the past too)."""

    def view(entry: View) -> View:
        shown = dict(entry)
        if "conference_subject" in shown:
            shown["subject"] = shown.pop("conference_subject")
        else:
            shown["subject"] = answers.shown_subject(
                integ,
                renderer,
                subject=str(entry.get("subject", "")),
                organizer=str(entry.get("organizer", "")),
            )
        return shown

    return view


def admin_view(integ: IntegrationConfig, record: Record, now: datetime, renderer: Renderer) -> View:
    """A stored alias as the admin sees it: who booked it for what (its subject is the
    conference subject, rendered when it was bound; for a record without one, its subject put
    through the template now), and when it can be joined (the next occurrences, each widened
    by the join window)."""

    def iso(value: Any) -> str | None:
        return datetime.fromtimestamp(float(value), UTC).isoformat() if value else None

    before = timedelta(minutes=integ.single_use.join_before_minutes)
    after = timedelta(minutes=integ.single_use.join_after_minutes)
    windows: list[dict[str, str]] = []
    raw = record.get("schedule")
    if raw and record.get("status") == "bound":
        try:
            schedule = decode_schedule(raw)
            # moved occurrences come first from the walk, wherever they moved to: the next
            # five in time order are among five regular ones and every moved one
            upcoming = itertools.islice(
                recurrence.occurrences_after(schedule, now - after), 5 + len(schedule.overrides)
            )
            for occurrence in sorted(upcoming, key=lambda o: o.start)[:5]:
                windows.append(
                    {
                        "start": occurrence.start.isoformat(),
                        "end": occurrence.end.isoformat(),
                        "joinable_from": (occurrence.start - before).isoformat(),
                        "joinable_until": (occurrence.end + after).isoformat(),
                    }
                )
        except recurrence.RecurrenceError:
            pass
    return {
        "alias": record.get("alias", ""),
        "numeric_alias": record.get("numeric_alias", ""),
        "alias_id": record.get("alias_id", ""),
        "status": record.get("status", ""),
        "reason": record.get("reason", ""),
        "organizer_email": record.get("organizer_email", ""),
        "subject": _conference_subject(integ, record, renderer),
        "meeting_uid": record.get("meeting_uid", ""),
        "conference_name": record.get("name", ""),
        "created": iso(record.get("created")),
        "expires": iso(record.get("expires")),
        "deleted": iso(record.get("deleted")),
        "windows": windows,
    }


def _conference_subject(integ: IntegrationConfig, record: Record, renderer: Renderer) -> str:
    if "conference_subject" in record:
        return str(record["conference_subject"])
    if not record.get("subject"):
        return ""  # a reservation: no meeting yet
    return answers.shown_subject(
        integ,
        renderer,
        subject=str(record["subject"]),
        organizer=str(record.get("organizer_name") or record.get("organizer_email", "")),
    )
