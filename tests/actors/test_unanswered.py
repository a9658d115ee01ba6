"""What is never answered, and what a decline of a half-read request still carries, through the
running actor tree and the spool mailbox.

- an attendee's response or any iTIP method but REQUEST and CANCEL: set aside, unanswered;
- automatic mail (RFC 3834): set aside, unanswered, whatever meeting it carries;
- a request refused past its UID and ORGANIZER: declined with a METHOD:REPLY part and a
  "Declined: <subject>" Subject, as every other decline is.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tests import spoolkit
from tests.configs import Running

TOK = "<p>TOK:-00000000-0000-4000-8000-{:012d}#</p>"


def soon() -> str:
    return (datetime.now(UTC) + timedelta(days=2)).strftime("%Y%m%dT%H%M%SZ")


def mail(calendar: bytes, *, headers: str = "", method: str = "REQUEST") -> bytes:
    """An iMIP mail from Olga carrying `calendar` (extra `headers`, CRLF-terminated)."""
    return (
        "From: Olga Organizer <olga@example.com>\r\nTo: vmr@example.com\r\n"
        f"Subject: Weekly sync\r\n{headers}MIME-Version: 1.0\r\n"
        f"Content-Type: text/calendar; method={method}; charset=utf-8\r\n\r\n"
    ).encode() + calendar


def drop_and_wait(running: Running, data: bytes, suffix: str = ".eml") -> str:
    name = spoolkit.drop(running.inbox, data, suffix=suffix)
    spoolkit.wait_handled(running.spool, name, timeout=20)
    running.settle()
    return name


def note(running: Running, name: str) -> str:
    return (running.spool / "failed" / f"{name}.error.txt").read_text()


def counted(running: Running, outcome: str, reason: str) -> float:
    value = running.svc.ctx.metrics.registry.get_sample_value(
        "vmrsched_meeting_requests_total",
        {"integration": "alpha", "outcome": outcome, "reason": reason},
    )
    return value or 0.0


def still_answers(running: Running, n: int) -> None:
    data, uid = spoolkit.request(body=TOK.format(700 + n))
    running.send(data)
    assert sorted(m.outcome for m in running.answers(uid)) == ["accepted", "updated"]


@pytest.mark.parametrize(
    "method", ["REPLY", "COUNTER", "REFRESH", "DECLINECOUNTER", "ADD", "PUBLISH"]
)
@pytest.mark.parametrize("suffix", [".eml", ".ics"])
def test_no_method_but_request_and_cancel_is_answered(
    running: Running, method: str, suffix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """An attendee's response (REPLY, COUNTER, …) or a published calendar is no meeting
    message: moved to failed/ with the reason, logged with its sender, counted, never declined
    (before: failed/ and a general_error "Declined" to the organizer, PUBLISH declined as a
    request without a token)."""
    uid = f"{method.lower()}-{suffix[1:]}"
    calendar, _ = spoolkit.request(uid, method=method, body=TOK.format(1))
    data = mail(calendar, method=method) if suffix == ".eml" else calendar
    caplog.set_level("INFO", logger="vmrsched.store.decisions")
    name = drop_and_wait(running, data, suffix)
    assert f"iTIP method {method}" in note(running, name)
    assert spoolkit.outbox(running.spool) == []
    assert counted(running, "set_aside", "not_meeting") == 1
    assert any(
        "set aside without a reply" in r.getMessage() and "olga@example.com" in r.getMessage()
        for r in caplog.records
    )
    still_answers(running, 1)


@pytest.mark.parametrize(
    "header",
    [
        "Auto-Submitted: auto-generated\r\n",
        "Auto-Submitted: auto-replied\r\n",
        "Precedence: bulk\r\n",
        "Precedence: list\r\n",
        "List-Id: <team.lists.example.com>\r\n",
    ],
)
@pytest.mark.parametrize("body", ["<p>no token</p>", TOK.format(2)])
def test_automatic_mail_is_set_aside_unanswered(running: Running, header: str, body: str) -> None:
    """RFC 3834: automatic mail is never answered. A meeting request in it, with or without a
    token, gets no decline, no accept and no organizer update; it is set aside with the reason,
    in the decisions log and counted (before: declined invalid_alias_id)."""
    calendar, uid = spoolkit.request(body=body)
    name = drop_and_wait(running, mail(calendar, headers=header))
    assert "automatic mail" in note(running, name)
    assert spoolkit.outbox(running.spool) == []
    assert counted(running, "set_aside", "automatic") == 1
    [entry] = [e for e in running.svc.ctx.stores.decisions.read("alpha") if e["meeting_uid"] == uid]
    assert (entry["outcome"], entry["reason"]) == ("set_aside", "automatic")
    still_answers(running, 2)


def test_auto_submitted_no_is_a_person_and_is_answered(running: Running) -> None:
    calendar, uid = spoolkit.request(body="<p>no token</p>")
    drop_and_wait(running, mail(calendar, headers="Auto-Submitted: no\r\n"))
    [decline] = running.answers(uid)
    assert decline.reason == "invalid_alias_id"


def ics(uid: str, event: str, summary: str | None = "Board meeting") -> bytes:
    title = f"SUMMARY:{summary}\r\n" if summary is not None else ""
    return (
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//tests//EN\r\nMETHOD:REQUEST\r\n"
        f"BEGIN:VEVENT\r\nUID:{uid}\r\nSEQUENCE:3\r\n{title}{event}"
        "ORGANIZER;CN=Olga Organizer:mailto:olga@example.com\r\n"
        "ATTENDEE:mailto:vmr@example.com\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n"
    ).encode()


@pytest.mark.parametrize(
    ("uid", "event", "why"),
    [
        ("tz-1", f"DTSTART;TZID=Mars/Olympus:{soon()[:-1]}\r\nDURATION:PT1H\r\n", "time zone"),
        ("nostart-1", "DURATION:PT1H\r\n", "no DTSTART"),
        ("y3500-1", "DTSTART:35000101T100000Z\r\nDURATION:PT1H\r\n", "1900-2999"),
    ],
)
def test_a_half_read_request_is_declined_with_a_reply_calendar(
    running: Running, uid: str, event: str, why: str
) -> None:
    """Quarantined but readable as far as UID and ORGANIZER: the decline is the spool
    contract's (text/html and a METHOD:REPLY with PARTSTAT=DECLINED naming the UID, SEQUENCE
    and organizer; Subject "Declined: <subject>"), before: words only."""
    name = drop_and_wait(running, ics(uid, event), ".ics")
    assert why in note(running, name)
    [decline] = running.answers(uid)
    assert (decline.outcome, decline.reason) == ("declined", "general_error")
    assert decline.headers["Subject"] == "Declined: Board meeting"
    calendar = decline.calendar.replace("\r\n ", "")
    assert "METHOD:REPLY" in calendar and f"UID:{uid}" in calendar
    assert "SEQUENCE:3" in calendar
    assert "ORGANIZER;CN=Olga Organizer:mailto:olga@example.com" in calendar
    assert "ATTENDEE;PARTSTAT=DECLINED;CN=Video Room:mailto:vmr@example.com" in calendar
    assert 'method="REPLY"' in decline.headers.get("Content-Type", "") or "REPLY" in calendar


def test_a_subject_over_the_limit_is_declined_under_it(running: Running) -> None:
    """Subject over 1,000 characters: declined "Declined: <subject cut at a word, …>" with a
    REPLY (before: a bare "Declined" without one)."""
    long = "Quarterly planning " * 80  # 1,520 characters
    uid = "long-subject-1"
    drop_and_wait(running, ics(uid, f"DTSTART:{soon()}\r\nDURATION:PT1H\r\n", long), ".ics")
    [decline] = running.answers(uid)
    subject = decline.headers["Subject"]
    assert subject.startswith("Declined: Quarterly planning Quarterly")
    assert subject.endswith("\u2026") and len(subject) <= len("Declined: ") + 1000
    assert "METHOD:REPLY" in decline.calendar and "PARTSTAT=DECLINED" in decline.calendar


def test_without_summary_the_mails_subject_names_the_decline(running: Running) -> None:
    uid = "mail-subject-1"
    event = f"DTSTART;TZID=Mars/Olympus:{soon()[:-1]}\r\nDURATION:PT1H\r\n"
    drop_and_wait(running, mail(ics(uid, event, summary=None)))
    [decline] = running.answers(uid)
    assert decline.headers["Subject"] == "Declined: Weekly sync"
    assert "METHOD:REPLY" in decline.calendar


def test_a_request_without_uid_is_declined_in_words_alone(running: Running) -> None:
    """Nothing a REPLY could name: the decline stays text and HTML."""
    data = ics("", f"DTSTART:{soon()}\r\nDURATION:PT1H\r\n").replace(b"UID:\r\n", b"")
    drop_and_wait(running, data, ".ics")
    [decline] = spoolkit.outbox(running.spool)
    assert decline.reason == "general_error" and decline.calendar == ""
    assert decline.headers["Subject"] == "Declined: Board meeting"
