"""EWS items as inbox items: the same iTIP translator as the other backends decides what is no
meeting message and what is automatic mail, so a request item whose iCalendar says REPLY, or
that came as automatic mail, is set aside as it is on the spool and on Graph."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace

from tests import spoolkit
from vmrsched.mailbox.ews_convert import inbox_item


def item(mime: bytes, item_class: str = "IPM.Schedule.Meeting.Request") -> SimpleNamespace:
    return SimpleNamespace(
        mime_content=mime,
        item_class=item_class,
        datetime_received=datetime(2026, 12, 6, 9, tzinfo=UTC),
        subject="Weekly sync",
        sender=SimpleNamespace(email_address="olga@example.com", name="Olga"),
        author=SimpleNamespace(email_address="olga@example.com", name="Olga"),
    )


def mail(method: str, headers: bytes = b"") -> bytes:
    calendar, _ = spoolkit.request("ews-1", method=method, body="<p>no token</p>")
    return (
        b"From: Olga <olga@example.com>\r\nSubject: Weekly sync\r\n"
        + headers
        + f"Content-Type: text/calendar; method={method}\r\n\r\n".encode()
        + calendar
    )


def test_a_request_item_holding_a_reply_is_no_meeting_message() -> None:
    got = inbox_item("id-1", item(mail("REPLY")), "UTC")
    assert got.not_meeting and "iTIP method REPLY" in (got.error or "")
    assert got.meetings == ()


def test_a_request_item_in_automatic_mail_says_so() -> None:
    got = inbox_item("id-2", item(mail("REQUEST", b"Precedence: bulk\r\n")), "UTC")
    assert got.auto_submitted and [m.uid for m in got.meetings] == ["ews-1"]
    plain = inbox_item("id-3", item(mail("REQUEST")), "UTC")
    assert not plain.auto_submitted and [m.uid for m in plain.meetings] == ["ews-1"]
