"""Every rules-table case through the running actor tree and the spool mailbox: real files in,
real mails out (headers and HTML body checked)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests import spoolkit
from tests.configs import Running, pxps, stored_record
from tests.shared import CORPUS, FIXTURES, needs_corpus
from tests.spoolkit import drop, request, wait_handled

TOK = "TOK:-{}#"


def only(mails: list[spoolkit.Mail]) -> spoolkit.Mail:
    assert len(mails) == 1, [m.headers for m in mails]
    return mails[0]


def test_no_token_is_declined(running: Running) -> None:
    data, uid = request(body="<p>no token</p>")
    running.send(data)
    mail = only(running.answers(uid))
    assert (mail.outcome, mail.reason) == ("declined", "invalid_alias_id")
    assert mail.headers["Subject"] == "Declined: Weekly sync"
    assert mail.headers["From"] == "Video Room <vmr@example.com>"
    assert mail.headers["To"] == "olga@example.com"
    assert mail.headers["X-Vmrsched-Correlation-Id"]
    assert "no valid video meeting reference" in mail.html
    assert "METHOD:REPLY" in mail.calendar and "PARTSTAT=DECLINED" in mail.calendar


def test_unknown_alias_id_is_declined(running: Running) -> None:
    data, uid = request(body="PXPS:-6fa459ea-ee8a-4ca4-894e-db77e160355e#")
    running.send(data)
    assert only(running.answers(uid)).reason == "invalid_alias_id"


def test_new_single_then_edit_then_outdated(running: Running) -> None:
    rec = running.reserve()
    data, uid = request(body=pxps(rec), subject="<script>alert(1)</script>")
    running.send(data)
    mail = only(running.answers(uid))
    assert (mail.outcome, mail.reason) == ("accepted", "new_single")
    assert "PARTSTAT=ACCEPTED" in mail.calendar
    assert rec["alias"] in mail.html and rec["numeric_alias"] in mail.html
    assert "<script>" not in mail.html and "&lt;script&gt;" in mail.html
    later = datetime.now(UTC).replace(microsecond=0) + timedelta(days=3)
    data, _ = request(uid, body=pxps(rec), sequence=1, start=later)
    running.send(data)
    mails = running.answers(uid)
    assert sorted(m.reason for m in mails) == ["edited_single", "new_single"]
    edited = next(m for m in mails if m.reason == "edited_single")
    london = later.astimezone(datetime.now().astimezone().tzinfo)
    assert f"on {london:%d/%m/%Y}" in edited.html
    data, _ = request(uid, body=pxps(rec), sequence=0)
    running.send(data)
    assert len(running.answers(uid)) == 2  # outdated: no reply


def test_same_token_in_a_second_meeting_is_a_conflict(running: Running) -> None:
    rec = running.reserve()
    first, _ = request(body=pxps(rec))
    running.send(first)
    second, uid2 = request(body=pxps(rec))
    running.send(second)
    mail = only(running.answers(uid2))
    assert mail.reason == "alias_conflict" and rec["alias"] in mail.html


def test_cancel_deletes_and_reuse_is_alias_deleted(running: Running) -> None:
    rec = running.reserve()
    data, uid = request(body=pxps(rec))
    running.send(data)
    cancel, _ = request(uid, body=pxps(rec), sequence=1, method="CANCEL")
    running.send(cancel)
    assert len(running.answers(uid)) == 1  # a cancellation gets no reply
    again, uid2 = request(body=pxps(rec))
    running.send(again)
    assert only(running.answers(uid2)).reason == "alias_deleted"


def test_meetings_in_the_past(running: Running) -> None:
    rec = running.reserve()
    past = datetime.now(UTC).replace(microsecond=0) - timedelta(days=2)
    data, uid = request(body=pxps(rec), start=past)
    running.send(data)
    assert only(running.answers(uid)).reason == "single_in_past"
    data, uid = request(body=pxps(rec), start=past - timedelta(days=10), rrule="FREQ=DAILY;COUNT=3")
    running.send(data)
    assert only(running.answers(uid)).reason == "recurring_in_past"


def test_series_occurrence_edit_and_series_edit(running: Running) -> None:
    rec = running.reserve()
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(days=1)
    data, uid = request(body=pxps(rec), start=start, rrule="FREQ=WEEKLY;COUNT=10")
    running.send(data)
    rid = start + timedelta(weeks=2)
    data, _ = request(
        uid, body=pxps(rec), start=rid + timedelta(hours=2), recurrence_id=rid, sequence=1
    )
    running.send(data)
    data, _ = request(uid, body=pxps(rec), start=start, rrule="FREQ=WEEKLY;COUNT=20", sequence=2)
    running.send(data)
    reasons = sorted(m.reason for m in running.answers(uid))
    assert reasons == ["edited_occurrence", "edited_recurring", "new_recurring"]
    cancel_one, _ = request(
        uid, body=pxps(rec), start=rid, recurrence_id=rid, sequence=3, method="CANCEL"
    )
    running.send(cancel_one)
    record = stored_record(running.svc.ctx.registry.get("alpha", "allocator"), rec["alias_id"])
    assert record["status"] == "bound"  # only the occurrence went


def test_placeholder_token_is_accepted_and_organizer_updated(running: Running) -> None:
    placeholder = (
        "<p><strong>Video meeting details will follow.</strong> The booking service "
        "could not be reached just now; you will receive an update with the joining "
        "details shortly. Please do not remove the reference below.</p>"
    )
    token = TOK.format("00000000-0000-4000-8000-00000000abcd")
    data, uid = request(body=f"<p>Agenda</p>{placeholder}<p>{token}</p>")
    running.send(data)
    mails = running.answers(uid)
    reply = next(m for m in mails if m.outcome == "accepted")
    update = next(m for m in mails if m.outcome == "updated")
    assert reply.reason == "new_single" and update.reason == "placeholder_replaced"
    assert update.headers["From"] == "Olga Organizer <olga@example.com>"
    assert update.headers["To"] == "bob@example.com"
    assert update.headers["Subject"] == "Weekly sync"
    assert "PXPS:-" in update.html and token not in update.html
    assert "will follow" not in update.html and "Agenda" in update.html
    assert "METHOD:REQUEST" in update.calendar and "SEQUENCE:1" in update.calendar


def test_unreadable_requests_are_quarantined_or_declined(running: Running) -> None:
    name = drop(running.inbox, b"this is not a calendar", suffix=".ics")
    wait_handled(running.spool, name)
    failed = running.spool / "failed"
    assert (failed / name).exists()
    assert "not an iCalendar object" in (failed / f"{name}.error.txt").read_text()
    no_uid = (
        b"BEGIN:VCALENDAR\r\nMETHOD:REQUEST\r\nBEGIN:VEVENT\r\n"
        b"ORGANIZER;CN=Ann:mailto:ann@example.com\r\nSUMMARY:No uid\r\n"
        b"DTSTART:20301010T100000Z\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n"
    )
    name = drop(running.inbox, no_uid)
    wait_handled(running.spool, name)
    running.settle()
    reason = (failed / f"{name}.error.txt").read_text()
    assert "meeting has no UID" in reason and "correlation id" in reason
    decline = next(
        m for m in spoolkit.outbox(running.spool) if m.headers["To"] == "ann@example.com"
    )
    assert decline.reason == "general_error"
    assert decline.headers["X-Vmrsched-Correlation-Id"] in decline.html
    assert decline.headers["X-Vmrsched-Correlation-Id"] in reason


@pytest.mark.parametrize(
    "corpus",
    [
        pytest.param(FIXTURES, id="own-fixtures"),
        pytest.param(CORPUS, id="shared-corpus", marks=needs_corpus),
    ],
)
def test_every_corpus_file_is_answered_or_quarantined(running: Running, corpus: Path) -> None:
    names = []
    for path in sorted(corpus.glob("*")):
        if path.suffix in (".ics", ".eml"):
            names.append(drop(running.inbox, path.read_bytes(), suffix=path.suffix))
    for name in names:
        wait_handled(running.spool, name, timeout=30)
    processed = {p.name for p in (running.spool / "processed").iterdir()}
    failed = {p.name for p in (running.spool / "failed").iterdir()}
    for name in names:
        assert name in processed or (name in failed and f"{name}.error.txt" in failed), name
    health = running.svc.ctx.status.snapshot()["alpha"]
    assert health["state"] == "running" and health["restarts"] == 0


def test_metrics_count_decisions(running: Running) -> None:
    data, _ = request(body="no token")
    running.send(data)
    registry = running.svc.ctx.metrics.registry
    value = registry.get_sample_value(
        "vmrsched_meeting_requests_total",
        {"integration": "alpha", "outcome": "declined", "reason": "invalid_alias_id"},
    )
    assert value == 1.0
    assert registry.get_sample_value("vmrsched_integration_up", {"integration": "alpha"}) == 1.0


def test_one_log_line_per_decision_names_meeting_organizer_alias_and_reason(
    running: Running, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="vmrsched.store.decisions")
    rec = running.reserve()
    data, uid = request(body=pxps(rec), subject="Budget review")
    running.send(data)
    cancel, _ = request(uid, method="CANCEL", sequence=1, subject="Budget review")
    running.send(cancel)
    lines = [r for r in caplog.records if r.name == "vmrsched.store.decisions"]
    assert [r.getMessage() for r in lines] == [
        f"accepted (new_single), alias {rec['alias']}: 'Budget review' from olga@example.com",
        f"released {rec['alias']}: meeting cancelled: 'Budget review' from olga@example.com",
    ]
    assert all(uid not in r.getMessage() and r.meeting_uid == uid for r in lines)  # type: ignore[attr-defined]
