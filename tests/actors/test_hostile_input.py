"""No input can stop an integration: each of these, dropped into the spool of the running
service, is answered or set aside with a reason, the integration stays running, and the meeting
after it is answered as usual."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta

import pytest

from tests import spoolkit
from tests.configs import Running

TOK = "TOK:-00000000-0000-4000-8000-{:012d}#"


def ics(event: str, *, organizer: bool = True, extra: str = "") -> bytes:
    org = "ORGANIZER;CN=Olga:mailto:olga@example.com\r\n" if organizer else ""
    return (
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//tests//EN\r\nMETHOD:REQUEST\r\n"
        f"{extra}BEGIN:VEVENT\r\n{event}{org}"
        "ATTENDEE:mailto:vmr@example.com\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n"
    ).encode()


def soon(days: int = 2) -> str:
    return (datetime.now(UTC) + timedelta(days=days)).strftime("%Y%m%dT%H%M%SZ")


def still_works(running: Running, n: int) -> None:
    """The integration is running and answers the next meeting."""
    data, uid = spoolkit.request(body=f"<p>{TOK.format(900 + n)}</p>")
    running.send(data)
    assert running.svc.ctx.status.state("alpha") == "running"
    assert sorted(m.outcome for m in running.answers(uid)) == ["accepted", "updated"]


def failed_reason(running: Running, name: str) -> str:
    notes = list((running.spool / "failed").glob("*.error.txt"))
    match = [p for p in notes if p.name.startswith(name[:100])]
    assert match, notes
    return match[0].read_text()


def drop_and_wait(running: Running, data: bytes, name: str | None = None) -> str:
    name = spoolkit.drop(running.inbox, data, name=name)
    spoolkit.wait_for(lambda: not (running.inbox / name).exists(), timeout=20)
    running.settle()
    return name


@pytest.mark.parametrize(
    "event",
    [
        "UID:nl-summary\r\nSUMMARY:Board\\nBcc: evil@example.com\r\n",
        "UID:nl\\nuid\r\nSUMMARY:UID with a newline\r\n",
    ],
)
def test_newlines_in_header_values_are_answered_safely(running: Running, event: str) -> None:
    body = f"X-ALT-DESC;FMTTYPE=text/html:<p>{TOK.format(1)}</p>\r\n"
    data = ics(f"{event}DTSTART:{soon()}\r\nDURATION:PT30M\r\n{body}")
    drop_and_wait(running, data)
    mails = spoolkit.outbox(running.spool)
    assert mails, "answered"
    for mail in mails:
        assert "Bcc" not in mail.headers and "\n" not in mail.headers["Subject"]
    still_works(running, 1)


@pytest.mark.parametrize(
    ("times", "reason"),
    [
        ("DTSTART;VALUE=DATE:99991231\r\n", "outside 1900-2999"),
        (f"DTSTART:{soon()}\r\nDURATION:P99999999W\r\n", "DURATION"),
        ("DTSTART:00010101T100000Z\r\nDURATION:PT1H\r\nRRULE:FREQ=YEARLY\r\n", "outside"),
    ],
)
def test_dates_the_rules_cannot_use_are_refused(running: Running, times: str, reason: str) -> None:
    uid = f"dates-{abs(hash(times))}"
    body = f"X-ALT-DESC;FMTTYPE=text/html:<p>{TOK.format(2)}</p>\r\n"
    drop_and_wait(running, ics(f"UID:{uid}\r\nSUMMARY:x\r\n{times}{body}"))
    [decline] = running.answers(uid)
    assert (decline.outcome, decline.reason) == ("declined", "general_error")
    assert reason in failed_reason(running, "")
    still_works(running, 2)


def test_a_file_name_too_long_for_its_error_note_is_quarantined_once(running: Running) -> None:
    name = "x" * 242 + ".ics"
    data = ics("UID:long-name\r\nSUMMARY:no times\r\n")  # unreadable, sender known
    drop_and_wait(running, data, name=name)
    assert (running.spool / "failed" / name).exists()
    assert "meeting has no DTSTART" in failed_reason(running, name)
    time.sleep(0.5)
    assert len(running.answers("long-name")) == 1  # one decline, not one per retry
    still_works(running, 3)


@pytest.mark.parametrize(
    ("rule", "outcome"),
    [("FREQ=DAILY;COUNT=10000", "accepted"), ("FREQ=SECONDLY;COUNT=1000000000", "declined")],
)
def test_recurrence_cost_is_bounded(running: Running, rule: str, outcome: str) -> None:
    start = (datetime.now(UTC) - timedelta(days=100)).strftime("%Y%m%dT%H%M%SZ")
    uid = f"rule-{outcome}"
    body = f"X-ALT-DESC;FMTTYPE=text/html:<p>{TOK.format(4)}</p>\r\n"
    started = time.monotonic()
    drop_and_wait(
        running,
        ics(
            f"UID:{uid}\r\nSUMMARY:x\r\nDTSTART:{start}\r\nDURATION:PT1H\r\nRRULE:{rule}\r\n{body}"
        ),
    )
    assert time.monotonic() - started < 10
    assert outcome in {m.outcome for m in running.answers(uid)}
    still_works(running, 4)


def test_symlinks_are_never_followed(running: Running) -> None:
    running.inbox.mkdir(parents=True, exist_ok=True)
    os.symlink("/proc/self/environ", running.inbox / "environ.ics")
    os.symlink(running.inbox / "loop-b.ics", running.inbox / "loop-a.ics")
    os.symlink(running.inbox / "loop-a.ics", running.inbox / "loop-b.ics")
    spoolkit.wait_for(lambda: not any(running.inbox.iterdir()), timeout=20)
    note = failed_reason(running, "environ.ics")
    assert "symbolic link" in note and "PATH=" not in note
    assert (running.spool / "failed" / "environ.ics").is_symlink()
    assert running.svc.ctx.alarms.active() == [] or all(
        a.name != "mailbox_unreachable" for a in running.svc.ctx.alarms.active()
    )
    still_works(running, 5)


def test_item_limits(running: Running) -> None:
    many = "".join(
        f"BEGIN:VEVENT\r\nUID:many-{i}\r\nDTSTART:{soon()}\r\nDURATION:PT30M\r\n"
        f"ORGANIZER:mailto:olga@example.com\r\nEND:VEVENT\r\n"
        for i in range(200)
    )
    data = f"BEGIN:VCALENDAR\r\nVERSION:2.0\r\nMETHOD:REQUEST\r\n{many}END:VCALENDAR\r\n".encode()
    name = drop_and_wait(running, data)
    assert "more than 50 VEVENTs" in failed_reason(running, name)
    huge = data * 60  # 10,000+ VEVENTs: refused by size before anything is parsed
    name = drop_and_wait(running, huge)
    assert "larger than" in failed_reason(running, name)
    big = ics(f"UID:big\r\nSUMMARY:{'A' * 2_000_000}\r\nDTSTART:{soon()}\r\nDURATION:PT1H\r\n")
    name = drop_and_wait(running, big)
    assert "larger than" in failed_reason(running, name)
    assert len(spoolkit.outbox(running.spool)) <= 1  # at most one decline, never 20,000 mails
    still_works(running, 6)


def test_no_organizer_unknown_zone_and_a_torn_file(running: Running) -> None:
    body = f"X-ALT-DESC;FMTTYPE=text/html:<p>{TOK.format(7)}</p>\r\n"
    name = drop_and_wait(
        running, ics(f"UID:no-org\r\nDTSTART:{soon()}\r\nDURATION:PT1H\r\n{body}", organizer=False)
    )
    assert "no ORGANIZER" in failed_reason(running, name)
    assert not running.answers("no-org")
    name = drop_and_wait(
        running, ics(f"UID:mars\r\nDTSTART;TZID=Mars/Olympus:{soon()[:-1]}\r\nDURATION:PT1H\r\n")
    )
    assert "unknown time zone 'Mars/Olympus'" in failed_reason(running, name)
    [decline] = running.answers("mars")
    assert decline.reason == "general_error"
    torn = ics(f"UID:torn\r\nDTSTART:{soon()}\r\nDURATION:PT1H\r\n")[:-60]
    name = drop_and_wait(running, torn)
    assert "write it elsewhere, then rename it" in failed_reason(running, name)
    still_works(running, 7)


def test_plain_and_automatic_mail_gets_no_reply(running: Running) -> None:
    ooo = (
        b"From: Ann <ann@example.com>\r\nTo: vmr@example.com\r\nSubject: Out of office\r\n"
        b"Auto-Submitted: auto-replied\r\nContent-Type: text/plain\r\n\r\nI am away.\r\n"
    )
    news = (
        b"From: news@example.com\r\nTo: vmr@example.com\r\nSubject: Newsletter\r\n"
        b"Content-Type: text/html\r\n\r\n<p>News</p>\r\n"
    )
    for index, data in enumerate((ooo, news)):
        name = drop_and_wait(running, data, name=f"mail-{index}.eml")
        assert "not a meeting message" in failed_reason(running, name)
    assert spoolkit.outbox(running.spool) == []
    still_works(running, 8)
