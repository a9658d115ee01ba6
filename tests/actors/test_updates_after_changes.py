"""The organizer update the service composes for a meeting booked offline (the placeholder path,
on the spool) never undoes what the organizer did after the request: an occurrence cancelled or
moved by a later message, in the same batch or while the update waited, stays so at every
attendee (docs/guarantees.md, RFC 5546 2.1.5). The update is a METHOD:REQUEST from the
organizer for the whole series: what it leaves out, an attendee's client takes for undone."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import icalendar
import pytest

from tests import spoolkit
from tests.configs import Running, spool_config
from vmrsched import service

TOK = "TOK:-00000000-0000-4000-8000-0000000000d1#"
START = datetime.now(UTC).replace(hour=9, minute=0, second=0, microsecond=0) + timedelta(days=1)
THIRD = START + timedelta(days=2)  # the occurrence the organizer changes


def series(**kw: object) -> tuple[bytes, str]:
    """The organizer's daily meeting, five times, booked offline (the placeholder's TOK)."""
    return spoolkit.request(
        body=f"<p>Agenda</p><p>{TOK}</p>", start=START, rrule="FREQ=DAILY;COUNT=5", **kw
    )


def booked_with(tmp_path: Path, *later: bytes, first: bytes) -> Running:
    """The service started on an inbox holding the request and the organizer's `later`
    messages (read in one batch), and everything they brought delivered."""
    cfg = spool_config(tmp_path)
    spool = cfg.integrations[0].spool_dir(cfg.data_dir)
    (spool / "inbox").mkdir(parents=True, exist_ok=True)
    oldest = time.time() - 60
    names = []
    for i, data in enumerate((first, *later)):
        name = spoolkit.drop(spool / "inbox", data, f"{i:02d}-item.ics")
        os.utime(spool / "inbox" / name, (oldest + i, oldest + i))
        names.append(name)
    svc = service.start(cfg)
    running = Running(svc, cfg)
    try:
        for name in names:
            spoolkit.wait_handled(spool, name)
        running.settle()
    except BaseException:
        svc.stop()
        raise
    return running


@pytest.fixture
def started() -> Iterator[list[Running]]:
    runs: list[Running] = []
    yield runs
    for run in runs:
        run.svc.stop()


def the_update(running: Running, uid: str) -> list[icalendar.Event]:
    """The VEVENTs of the one organizer update sent for `uid`."""
    updates = [m for m in running.answers(uid) if m.outcome == "updated"]
    assert len(updates) == 1, [(m.outcome, m.reason) for m in running.answers(uid)]
    cal = icalendar.Calendar.from_ical(updates[0].calendar)
    assert str(cal["METHOD"]) == "REQUEST"
    return list(cal.walk("VEVENT"))


def utc(value: object) -> datetime:
    assert isinstance(value, datetime)
    return value.astimezone(UTC)


def exdates(event: icalendar.Event) -> list[datetime]:
    found = event.get("EXDATE")
    lists = found if isinstance(found, list) else [found] if found is not None else []
    return [utc(d.dt) for value in lists for d in value.dts]


def test_an_occurrence_cancelled_in_the_same_batch_stays_cancelled(
    tmp_path: Path, started: list[Running]
) -> None:
    """The audit's samebatch_occ.py: the request (SEQUENCE 0) and the CANCEL of its third
    occurrence (SEQUENCE 1) read together. The update goes out with that occurrence as an
    EXDATE, one SEQUENCE above the cancellation: not a series of SEQUENCE 1 with a later
    DTSTAMP that ties with the CANCEL and brings the occurrence back."""
    request, uid = series()
    cancel, _ = spoolkit.request(uid, method="CANCEL", sequence=1, start=THIRD, recurrence_id=THIRD)
    running = booked_with(tmp_path, cancel, first=request)
    started.append(running)
    [event] = the_update(running, uid)
    assert "RRULE" in event
    assert exdates(event) == [THIRD]
    assert event["SEQUENCE"] == 2
    assert TOK not in str(event["X-ALT-DESC"])  # the placeholder replaced all the same


def test_an_occurrence_moved_in_the_same_batch_stays_moved(
    tmp_path: Path, started: list[Running]
) -> None:
    """The audit's samebatch_move.py: the third occurrence moved three hours later (SEQUENCE 1)
    in the request's batch. The update carries it as the organizer's message had it: a VEVENT
    with its RECURRENCE-ID and the new times, beside the series, both one SEQUENCE above it."""
    request, uid = series()
    moved, _ = spoolkit.request(
        uid,
        sequence=1,
        start=THIRD + timedelta(hours=3),
        recurrence_id=THIRD,
        body=f"<p>Agenda</p><p>{TOK}</p>",
    )
    running = booked_with(tmp_path, moved, first=request)
    started.append(running)
    master, occurrence = sorted(the_update(running, uid), key=lambda e: "RECURRENCE-ID" in e)
    assert "RRULE" in master and not exdates(master)
    assert [master["SEQUENCE"], occurrence["SEQUENCE"]] == [2, 2]
    assert utc(occurrence.decoded("RECURRENCE-ID")) == THIRD
    assert utc(occurrence.decoded("DTSTART")) == THIRD + timedelta(hours=3)
    assert utc(occurrence.decoded("DTEND")) == THIRD + timedelta(hours=3, minutes=30)
    assert "RRULE" not in occurrence and TOK not in str(occurrence["X-ALT-DESC"])


def test_a_lone_requests_update_is_the_request_one_sequence_higher(
    tmp_path: Path, started: list[Running]
) -> None:
    """Nothing came after the request: its update is as it always was, SEQUENCE 1, the series
    as the request had it."""
    request, uid = series()
    running = booked_with(tmp_path, first=request)
    started.append(running)
    [event] = the_update(running, uid)
    assert event["SEQUENCE"] == 1 and not exdates(event)
    assert utc(event.decoded("DTSTART")) == START
