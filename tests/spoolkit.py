"""Test helpers for the spool mailbox: write meeting requests in, read answers out."""

from __future__ import annotations

import email
import email.policy
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import icalendar

ROOM = "vmr@example.com"


def request(
    uid: str | None = None,
    *,
    body: str = "",
    start: datetime | None = None,
    minutes: int = 30,
    sequence: int = 0,
    rrule: str | None = None,
    recurrence_id: datetime | None = None,
    method: str = "REQUEST",
    subject: str = "Weekly sync",
    organizer: str = "olga@example.com",
    organizer_name: str = "Olga Organizer",
    attendees: tuple[str, ...] = ("bob@example.com",),
) -> tuple[bytes, str]:
    uid = uid or f"{uuid.uuid4()}@test"
    start = start or datetime.now(UTC).replace(microsecond=0) + timedelta(days=1)
    cal = icalendar.Calendar()
    cal.add("prodid", "-//tests//EN")
    cal.add("version", "2.0")
    cal.add("method", method)
    ev = icalendar.Event()
    ev.add("uid", uid)
    ev.add("sequence", sequence)
    ev.add("dtstamp", datetime.now(UTC))
    ev.add("dtstart", start)
    ev.add("dtend", start + timedelta(minutes=minutes))
    ev.add("summary", subject)
    if rrule:
        ev.add("rrule", icalendar.vRecur.from_ical(rrule))
    if recurrence_id is not None:
        ev.add("recurrence-id", recurrence_id)
    org = icalendar.vCalAddress(f"mailto:{organizer}")
    org.params["CN"] = organizer_name
    ev.add("organizer", org)
    for attendee in (ROOM, *attendees):
        ev.add("attendee", icalendar.vCalAddress(f"mailto:{attendee}"))
    if body:
        ev.add("x-alt-desc", icalendar.vText(body), parameters={"FMTTYPE": "text/html"})
    cal.add_component(ev)
    return cal.to_ical(), uid


def drop(inbox: Path, data: bytes, name: str | None = None, suffix: str = ".ics") -> str:
    """Write elsewhere, then rename in (the spool contract)."""
    inbox.mkdir(parents=True, exist_ok=True)
    name = name or f"{uuid.uuid4().hex}{suffix}"
    tmp = inbox / f".{name}.tmp"
    tmp.write_bytes(data)
    os.replace(tmp, inbox / name)
    return name


@dataclass
class Mail:
    path: Path
    headers: dict[str, str]
    html: str
    calendar: str

    @property
    def outcome(self) -> str:
        return self.headers["X-Vmrsched-Outcome"]

    @property
    def reason(self) -> str:
        return self.headers["X-Vmrsched-Reason"]


def read_mail(path: Path) -> Mail:
    msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    html = calendar = ""
    for part in msg.walk():
        if part.get_content_type() == "text/html":
            html = part.get_content()
        elif part.get_content_type() == "text/calendar":
            calendar = part.get_content()
    return Mail(path, {k: str(v) for k, v in msg.items()}, html, calendar)


def outbox(spool: Path) -> list[Mail]:
    return [read_mail(p) for p in sorted((spool / "outbox").glob("*.eml"))]


def answers_for(spool: Path, uid: str) -> list[Mail]:
    return [m for m in outbox(spool) if m.headers.get("X-Vmrsched-Meeting-Uid") == uid]


def wait_for(check: Callable[[], bool], timeout: float = 15.0, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval)
    raise AssertionError("condition not met in time")


def wait_handled(spool: Path, name: str, timeout: float = 15.0) -> None:
    wait_for(lambda: not (spool / "inbox" / name).exists(), timeout)
