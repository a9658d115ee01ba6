"""The gateway contract: a backend must implement the required methods (it cannot be built
without them), gets the declared defaults for every optional part, and the real backends say
what they support; the spool's folders are reached through its module (deliver, read_outbox)."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests import spoolkit
from tests.configs import spool_config
from vmrsched.mailbox import spool
from vmrsched.mailbox.base import CalendarEntry, GatewayError, InboxItem, Mailbox
from vmrsched.mailbox.ews import EwsMailbox
from vmrsched.mailbox.graph import GraphMailbox
from vmrsched.mailbox.spool import SpoolMailbox
from vmrsched.outgoing import Outgoing
from vmrsched.rules.meetings import Meeting
from vmrsched.telemetry import EXCHANGE_UNREACHABLE, MAILBOX_UNREACHABLE


def message(n: int) -> Outgoing:
    return Outgoing(
        id=f"m{n}",
        kind="reply",
        sender="room@example.com",
        sender_name="Room",
        recipients=("organizer@example.com",),
        subject=f"Accepted: meeting {n}",
        html_body="<p>ok</p>",
        outcome="accepted",
        reason="ok",
        correlation_id=f"c{n}",
        meeting_uid=f"uid-{n}",
    )


class Bare(Mailbox):
    """The required methods only; `send` fails as `failures` says."""

    def __init__(self, failures: dict[str, BaseException] | None = None) -> None:
        self.name = "bare"
        self.failures = failures or {}
        self.sent: list[str] = []

    def fetch(self, limit: int) -> Sequence[InboxItem]:
        return []

    def mark_handled(self, item_id: str, replied: bool = False, refused: bool = False) -> None:
        pass

    def quarantine(self, item_id: str, reason: str) -> None:
        pass

    def send(self, message: Outgoing) -> None:
        failure = self.failures.get(message.id)
        if failure is not None:
            raise failure
        self.sent.append(message.id)

    def record_accepted(self, meeting: Meeting) -> None:
        pass

    def calendar(self, start: datetime, end: datetime) -> Sequence[CalendarEntry]:
        return []


def test_a_backend_without_a_required_method_cannot_be_built() -> None:
    class Incomplete(Mailbox):
        def fetch(self, limit: int) -> Sequence[InboxItem]:
            return []

    with pytest.raises(TypeError, match="abstract"):
        Incomplete()  # type: ignore[abstract]


def test_the_optional_parts_default_to_not_supported(tmp_path: Path) -> None:
    integ = spool_config(tmp_path).integrations[0]
    gateway = Bare()
    assert gateway.alarm == MAILBOX_UNREACHABLE
    assert gateway.idempotent_send is False and gateway.bulk_send is False
    assert gateway.poll_interval(integ) == integ.exchange.poll_interval_seconds
    assert gateway.delivered(message(1)) is None
    gateway.sync()  # nothing to do, and nothing raised
    assert gateway.notified([{"clientState": "x"}]) is None
    [(ok, text)] = gateway.probe(organizer="someone@example.com")
    assert ok is None and "Bare" in text
    gateway.close()


def test_send_many_sends_each_and_stops_at_an_outage_of_the_mailbox() -> None:
    refused = GatewayError("refused", permanent=True, code="ErrorInvalidRecipients")
    busy = GatewayError("one message, for now", code="ErrorMailboxStoreUnavailable")
    poison = ValueError("cannot encode")
    down = GatewayError("unreachable")
    gateway = Bare({"m1": refused, "m2": busy, "m3": poison, "m5": down})
    outcomes = gateway.send_many([message(n) for n in range(8)])
    assert outcomes == [None, refused, busy, poison, None, down, down, down]
    assert gateway.sent == ["m0", "m4"]  # nothing tried after the mailbox went down
    assert not refused.whole_mailbox and not busy.whole_mailbox and down.whole_mailbox
    assert GatewayError("throttled", code="x", retry_after=5.0).whole_mailbox


def test_each_backend_declares_what_it_supports(tmp_path: Path) -> None:
    cfg = spool_config(tmp_path)
    integ = cfg.integrations[0]
    gateway = SpoolMailbox(integ.spool_dir(cfg.data_dir), integ.name)
    try:
        assert gateway.alarm == MAILBOX_UNREACHABLE
        assert gateway.idempotent_send and not gateway.bulk_send
        assert gateway.poll_interval(integ) == integ.spool.poll_interval_seconds == 0.05
        assert gateway.notified([]) is None
    finally:
        gateway.close()
    for backend in (EwsMailbox, GraphMailbox):
        assert backend.alarm == EXCHANGE_UNREACHABLE
        assert backend.bulk_send and not backend.idempotent_send
    for name in ("send_many", "delivered", "probe", "close"):
        for backend in (EwsMailbox, GraphMailbox):
            assert getattr(backend, name) is not getattr(Mailbox, name), (backend, name)
    assert GraphMailbox.notified is not Mailbox.notified
    assert GraphMailbox.sync is not Mailbox.sync


def test_the_spools_sync_opens_its_files_once_from_two_threads(tmp_path: Path) -> None:
    gateway = SpoolMailbox(tmp_path / "spool", "room")
    barrier = threading.Barrier(8)

    def sync() -> None:
        barrier.wait()
        gateway.sync()

    try:
        threads = [threading.Thread(target=sync) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        calendar = gateway._calendar
        gateway.sync()
        assert gateway._calendar is calendar is not None
    finally:
        gateway.close()


def test_deliver_renames_into_the_inbox_and_the_gateway_reads_it(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    data, uid = spoolkit.request(body="<p>no token</p>")
    path = spool.deliver(root, "invite-1.ics", data)
    assert path == root / "inbox" / "invite-1.ics" and path.read_bytes() == data
    assert [p.name for p in path.parent.iterdir()] == ["invite-1.ics"]  # no temporary left
    gateway = SpoolMailbox(root, "room")
    try:
        [item] = gateway.fetch(10)
        assert item.id == "invite-1.ics" and item.meetings[0].uid == uid
    finally:
        gateway.close()


def test_read_outbox_finds_the_mails_about_one_meeting(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    gateway = SpoolMailbox(root, "room")
    try:
        for n in (1, 2):
            gateway.send(message(n))
    finally:
        gateway.close()
    found: list[dict[str, Any]] = spool.read_outbox(root, "uid-2")
    assert [(m["subject"], m["outcome"], m["correlation_id"]) for m in found] == [
        ("Accepted: meeting 2", "accepted", "c2")
    ]
    assert "<p>ok</p>" in found[0]["html"]
    assert spool.read_outbox(root, "uid-3") == []
