"""A meeting as the spool's resource calendar keeps it: JSON, read back into the same Meeting."""

from __future__ import annotations

from collections.abc import Mapping

from vmrsched.rules import recurrence
from vmrsched.rules.meetings import Meeting
from vmrsched.rules.recurrence import Schedule


def meeting_to_json(meeting: Meeting) -> dict[str, object]:
    """A JSON-ready form of a meeting (the spool's resource calendar keeps these)."""
    return {
        "uid": meeting.uid,
        "method": meeting.method,
        "sequence": meeting.sequence,
        "schedule": recurrence.to_json(meeting.schedule),
        "recurrence_id": recurrence.to_json(Schedule(meeting.recurrence_id, meeting.recurrence_id))[
            "start"
        ]
        if meeting.recurrence_id
        else None,
        "organizer_name": meeting.organizer_name,
        "organizer_email": meeting.organizer_email,
        "subject": meeting.subject,
        "html_body": meeting.html_body,
        "attendees": list(meeting.attendees),
        "attendee_params": [
            [a, [list(p) for p in params]] for a, params in meeting.attendee_params
        ],
        "vtimezones": list(meeting.vtimezones),
    }


def meeting_from_json(raw: Mapping[str, object]) -> Meeting:
    schedule_raw = raw["schedule"]
    assert isinstance(schedule_raw, dict)
    schedule = recurrence.from_json(schedule_raw)
    rid_raw = raw.get("recurrence_id")
    recurrence_id = None
    if isinstance(rid_raw, list):
        recurrence_id = recurrence.from_json({"start": rid_raw, "end": rid_raw}).start
    method = raw.get("method")
    attendees = raw.get("attendees") or []
    assert isinstance(attendees, list)
    return Meeting(
        uid=str(raw["uid"]),
        method="CANCEL" if method == "CANCEL" else "REQUEST",
        start=schedule.start,
        end=schedule.end,
        sequence=int(str(raw.get("sequence", 0))),
        recurrence_id=recurrence_id,
        rrule=schedule.rrule,
        rdates=schedule.rdates,
        exdates=schedule.exdates,
        overrides=schedule.overrides,
        organizer_name=str(raw.get("organizer_name", "")),
        organizer_email=str(raw.get("organizer_email", "")),
        subject=str(raw.get("subject", "")),
        html_body=str(raw.get("html_body", "")),
        attendees=tuple(str(a) for a in attendees),
        attendee_params=_attendee_params(raw.get("attendee_params")),
        vtimezones=_strings(raw.get("vtimezones")),
    )


def _strings(raw: object) -> tuple[str, ...]:
    return tuple(v for v in raw if isinstance(v, str)) if isinstance(raw, list) else ()


def _attendee_params(raw: object) -> tuple[tuple[str, tuple[tuple[str, str], ...]], ...]:
    if not isinstance(raw, list):
        return ()
    out = []
    for entry in raw:
        if isinstance(entry, list) and len(entry) == 2 and isinstance(entry[1], list):
            params = tuple((str(k), str(v)) for k, v in entry[1])
            out.append((str(entry[0]), params))
    return tuple(out)
