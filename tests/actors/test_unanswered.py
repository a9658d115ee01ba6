"""What is never answered, and what a decline of a half-read request still carries, through the
running actor tree and the spool mailbox.

- an attendee's response or any iTIP method but REQUEST and CANCEL: set aside, unanswered;
- automatic mail (RFC 3834): set aside, unanswered, whatever meeting it carries.
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
