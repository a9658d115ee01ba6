"""A booking belongs to its organizer, and an organizer is one safely-encoded address, through the
running service and the spool mailbox: only the organizer (or a delegate acting for them) can
move or cancel a room; everyone else changes nothing and learns nothing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import icalendar

from tests import spoolkit
from tests.configs import Running, pxps, stored_record
from tests.spoolkit import drop, request, wait_handled
from vmrsched.store import Record, decisions

OLGA = "olga@example.com"
MALLORY = "mallory@evil.example"
MANAGER = "manager@example.com"
DELEGATE = "delegate@example.com"


def now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def live(running: Running, record: Record, organizer: str = OLGA, **kw: object) -> str:
    """Book `record` for a meeting that is on now (so the policy endpoint answers "conference");
    returns its UID."""
    data, uid = request(
        body=pxps(record), start=now() - timedelta(minutes=5), minutes=60, organizer=organizer
    )
    running.send(data)
    assert [m.reason for m in running.answers(uid)] == ["new_single"]
    return uid


def policy(running: Running, record: Record) -> str:
    return running.svc.policy_answer(record["alias"])[0]


def stored(running: Running, record: Record) -> Record:
    ref = running.svc.ctx.registry.get("alpha", "allocator")
    return stored_record(ref, record["alias_id"])


def logged(running: Running, reason: str) -> list[dict[str, object]]:
    path = decisions.log_path(running.cfg.data_dir, "alpha")
    return [e for e in decisions.read(path) if e["reason"] == reason]


def with_organizer(data: bytes, organizer: str, sent_by: str = "", name: str = "") -> bytes:
    """The calendar with its ORGANIZER replaced (and a delegate's SENT-BY when given)."""
    cal = icalendar.Calendar.from_ical(data)
    for event in cal.walk("VEVENT"):
        address = icalendar.vCalAddress(f"mailto:{organizer}")
        if name:
            address.params["CN"] = name
        if sent_by:
            address.params["SENT-BY"] = f"mailto:{sent_by}"
        event.pop("ORGANIZER")
        event.add("organizer", address)
    return cal.to_ical()


def eml(calendar: bytes, headers: str, html: str) -> bytes:
    """An iMIP mail: `headers` (From, Sender, ...) over an HTML body and the calendar."""
    method = icalendar.Calendar.from_ical(calendar)["METHOD"]
    return (
        (
            f"{headers}To: vmr@example.com\r\nSubject: Weekly sync\r\nMIME-Version: 1.0\r\n"
            'Content-Type: multipart/alternative; boundary="b0"\r\n\r\n'
            f'--b0\r\nContent-Type: text/html; charset="utf-8"\r\n\r\n{html}\r\n'
            f'--b0\r\nContent-Type: text/calendar; method={method}; charset="utf-8"\r\n\r\n'
        ).encode()
        + calendar
        + b"\r\n--b0--\r\n"
    )


def send_eml(running: Running, data: bytes) -> None:
    name = drop(running.inbox, data, suffix=".eml")
    wait_handled(running.spool, name)
    running.settle()


def assert_refused(running: Running, record: Record, uid: str, sender: str) -> None:
    """Nothing changed, nobody was answered, and the log says who tried what on whose room."""
    assert policy(running, record) == "conference"
    assert stored(running, record)["status"] == "bound"
    assert [m.reason for m in running.answers(uid)] == ["new_single"]
    [entry] = logged(running, "not_organizer")
    assert entry["outcome"] == "ignored" and entry["meeting_uid"] == uid
    assert entry["sender"] == sender and OLGA in str(entry["detail"])
    path = decisions.log_path(running.cfg.data_dir, "alpha")
    assert decisions.search(path, f"{sender} not_organizer") == [entry]  # an admin finds it


def test_a_cancellation_from_someone_else_releases_nothing(running: Running) -> None:
    record = running.reserve()
    uid = live(running, record)
    assert policy(running, record) == "conference"
    cancel, _ = request(uid, method="CANCEL", sequence=1, organizer=MALLORY)
    running.send(cancel)
    assert_refused(running, record, uid, MALLORY)


def test_a_request_from_someone_else_moves_nothing(running: Running) -> None:
    record = running.reserve()
    uid = live(running, record)
    before = stored(running, record)["schedule"]
    later = now() + timedelta(days=3)
    move, _ = request(uid, body=pxps(record), sequence=1, start=later, organizer=MALLORY)
    running.send(move)
    assert_refused(running, record, uid, MALLORY)
    assert stored(running, record)["schedule"] == before


def test_a_mail_from_someone_else_with_a_forged_organizer_is_refused(running: Running) -> None:
    record = running.reserve()
    uid = live(running, record)
    cancel, _ = request(uid, method="CANCEL", sequence=1)  # ORGANIZER: Olga, as she would send
    send_eml(running, eml(cancel, f"From: Olga <{OLGA}>\r\nSender: <{MALLORY}>\r\n", "<p></p>"))
    assert_refused(running, record, uid, MALLORY)
    send_eml(running, eml(cancel, f"From: {MALLORY}\r\n", "<p></p>"))
    assert policy(running, record) == "conference"
    assert len(logged(running, "not_organizer")) == 2


def test_the_organizers_own_mail_still_cancels(running: Running) -> None:
    record = running.reserve()
    uid = live(running, record)
    cancel, _ = request(uid, method="CANCEL", sequence=1, organizer="Olga@Example.COM")
    send_eml(running, eml(cancel, "From: Olga <OLGA@example.com>\r\n", "<p></p>"))
    assert policy(running, record) == "rejected"
    assert not logged(running, "not_organizer")


def test_a_delegate_books_for_the_manager_and_may_change_it(running: Running) -> None:
    record = running.reserve()
    start = now() + timedelta(days=1)
    first, uid = request(body=pxps(record), start=start)
    first = with_organizer(first, MANAGER, sent_by=DELEGATE, name="Manager")
    on_behalf = f"From: Manager <{MANAGER}>\r\nSender: Delegate <{DELEGATE}>\r\n"
    send_eml(running, eml(first, on_behalf, pxps(record)))
    [accept] = running.answers(uid)
    assert (accept.outcome, accept.reason) == ("accepted", "new_single")
    assert accept.headers["To"] == MANAGER
    assert f"ORGANIZER;CN=Manager:mailto:{MANAGER}" in accept.calendar
    assert stored(running, record)["organizer_email"] == MANAGER
    [booked] = logged(running, "new_single")  # the manager's meeting, sent by the delegate
    assert (booked["organizer"], booked["sender"]) == (MANAGER, DELEGATE)

    move, _ = request(uid, body=pxps(record), sequence=1, start=start + timedelta(days=2))
    send_eml(running, eml(with_organizer(move, MANAGER, sent_by=DELEGATE), on_behalf, pxps(record)))
    assert sorted(m.reason for m in running.answers(uid)) == ["edited_single", "new_single"]
    by_manager, _ = request(uid, body=pxps(record), sequence=2, start=start + timedelta(days=3))
    running.send(with_organizer(by_manager, MANAGER))
    assert len(running.answers(uid)) == 3
    cancel, _ = request(uid, method="CANCEL", sequence=3)
    running.send(with_organizer(cancel, MANAGER, sent_by=DELEGATE))
    assert stored(running, record)["status"] == "deleted"
    assert not logged(running, "not_organizer")


def test_an_organizer_that_is_not_one_address_is_quarantined_unanswered(
    running: Running,
) -> None:
    many = ",".join(f"mailto:user{i}@example.com" for i in range(50))
    token = "TOK:-00000000-0000-4000-8000-00000000c0de#"
    data, uid = request(body=f"<p>{token}</p>")
    raw = data.replace(b'ORGANIZER;CN="Olga Organizer":mailto:olga@example.com', b"")
    assert raw != data
    raw = raw.replace(b"BEGIN:VEVENT\r\n", f"BEGIN:VEVENT\r\nORGANIZER:{many}\r\n".encode())
    name = drop(running.inbox, raw)
    wait_handled(running.spool, name)
    running.settle()
    assert not spoolkit.outbox(running.spool)
    error = (running.spool / "failed" / f"{name}.error.txt").read_text()
    assert "ORGANIZER is not one address" in error
    assert not running.answers(uid)


CN_INJECTION = 'ORGANIZER;CN="Olga^nATTENDEE;PARTSTAT=ACCEPTED:mailto:evil@evil.example"'


def inject(data: bytes) -> bytes:
    raw = data.replace(b'ORGANIZER;CN="Olga Organizer"', CN_INJECTION.encode())
    assert raw != data
    return raw


def attendees_of(calendar: str) -> list[str]:
    """Every ATTENDEE of the calendar, as a reader sees them (folded lines joined)."""
    [event] = icalendar.Calendar.from_ical(calendar).walk("VEVENT")
    found = event.get("ATTENDEE") or []
    return [str(a) for a in (found if isinstance(found, list) else [found])]


def test_a_newline_in_the_organizers_name_writes_no_line_of_its_own(running: Running) -> None:
    record = running.reserve()
    data, uid = request(body=pxps(record))
    running.send(inject(data))
    [accept] = running.answers(uid)
    assert accept.outcome == "accepted"
    assert attendees_of(accept.calendar) == ["mailto:vmr@example.com"]
    assert "\nATTENDEE;PARTSTAT=ACCEPTED:mailto:evil" not in accept.calendar
    declined, uid = request(body="<p>no token</p>")
    running.send(inject(declined))
    [decline] = running.answers(uid)
    assert decline.outcome == "declined"
    assert attendees_of(decline.calendar) == ["mailto:vmr@example.com"]
    token = "TOK:-00000000-0000-4000-8000-00000000cafe#"
    placeholder, uid = request(body=f"<p>{token}</p>")
    running.send(inject(placeholder))
    update = next(m for m in running.answers(uid) if m.outcome == "updated")
    assert attendees_of(update.calendar) == ["mailto:vmr@example.com", "mailto:bob@example.com"]
    for mail in (accept, decline, update):
        lines = mail.calendar.replace("\r\n ", "").splitlines()
        assert not [line for line in lines if "mailto:evil@" in line and "ORGANIZER" not in line]
