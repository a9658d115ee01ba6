"""A reply that failed for good through EWS waits for an admin, across restarts: `failed` lists
it, its meeting request stays in the room's inbox (it is still unanswered), and the admin's retry
answers it, once. Against the fake Exchange over real HTTP, the service restarted as an admin
restarts it (stopped cleanly, started again)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests import spoolkit
from tests.configs import ROOM, ews_config, reserve_alias
from tests.fakes.ews_server import FakeExchange
from tests.fakes.threaded import ThreadedServer
from vmrsched import config, service
from vmrsched.actors.supervision import RestartPolicy
from vmrsched.rules.meetings import Meeting


class Running:
    """The service on the fake Exchange; `restart` stops it and starts it again on the same
    data directory."""

    def __init__(self, fake: FakeExchange, cfg: config.Config) -> None:
        self.fake = fake
        self.cfg = cfg
        self._start()

    def _start(self) -> None:
        self.svc = service.start(self.cfg, policy=RestartPolicy(mailbox_max=1.0))
        spoolkit.wait_for(lambda: self.svc.ctx.status.state("onprem") == "running")

    def restart(self) -> None:
        self.svc.stop()
        self._start()

    def failed(self) -> list[dict[str, Any]]:
        """What the admin API lists as failed."""
        failed: list[dict[str, Any]] = asyncio.run(self.svc.admin_messages("onprem"))["failed"]
        return failed

    def retry(self, message_id: str) -> None:
        """The admin API's retry."""
        asyncio.run(self.svc.admin_retry_message("onprem", message_id, "admin@example.com"))

    def decided(self) -> float:
        """Meeting messages this run of the service decided."""
        return sum(
            sample.value
            for family in self.svc.ctx.metrics.registry.collect()
            if family.name == "vmrsched_meeting_requests"
            for sample in family.samples
            if sample.name.endswith("_total")
        )

    def replies(self, uid: str) -> list[str]:
        return [r.response for r in self.fake.replies(ROOM) if r.meeting and r.meeting.uid == uid]


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Running]:
    fake = FakeExchange()
    server = ThreadedServer(fake.app()).start()
    started = Running(fake, ews_config(tmp_path, server.url))
    try:
        yield started
    finally:
        started.svc.stop()
        server.stop()


def request(uid: str, body: str) -> Meeting:
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(days=1)
    return Meeting(
        uid=uid,
        method="REQUEST",
        start=start,
        end=start + timedelta(minutes=30),
        sequence=0,
        organizer_name="Olga Organizer",
        organizer_email="olga@example.com",
        subject="Weekly sync",
        html_body=body,
        attendees=("bob@example.com",),
    )


def test_a_reply_failed_for_good_is_answered_by_the_admins_retry_after_a_restart(
    running: Running,
) -> None:
    fake = running.fake
    rec = reserve_alias(running.svc.ctx.registry.get("onprem", "allocator"))
    item = fake.deliver(ROOM, request("refused", f"<p>PXPS:-{rec['alias_id']}#</p>"))
    fake.refuse_responses[item.id] = "ErrorMessageSizeExceeded"
    spoolkit.wait_for(lambda: len(running.failed()) == 1, timeout=20)
    [failed] = running.failed()
    assert failed["kind"] == "reply" and failed["meeting_uid"] == "refused"
    assert "ErrorMessageSizeExceeded" in failed["failure"]
    assert running.replies("refused") == []
    assert item.id in fake.mailbox(ROOM).inbox  # unanswered: waiting for an admin
    del fake.refuse_responses[item.id]

    running.restart()
    spoolkit.wait_for(lambda: running.decided() >= 1, timeout=20)  # read again, decided
    assert [f["id"] for f in running.failed()] == [failed["id"]]
    assert item.id in fake.mailbox(ROOM).inbox  # still unanswered: not taken for answered
    assert running.replies("refused") == []

    running.retry(failed["id"])
    spoolkit.wait_for(lambda: running.replies("refused"), timeout=20)
    notifier = running.svc.ctx.registry.get("onprem", "notifier")
    spoolkit.wait_for(lambda: notifier.proxy().pending().get(timeout=5) == 0, timeout=20)
    assert running.replies("refused") == ["Accept"]
    assert running.failed() == []
    assert item.id not in fake.mailbox(ROOM).inbox


@pytest.mark.parametrize("others", [0, 3])
def test_a_reply_refused_with_error_invalid_request_fails_alone_and_for_good(
    tmp_path: Path, others: int
) -> None:
    """Exchange refuses one response (its CreateItemResponseMessage has ResponseClass Error and
    ResponseCode ErrorInvalidRequest), alone in its poll or beside others in the same
    CreateItem. That reply fails for good (`failed` lists it, delivery_failed), Exchange is not
    taken for down (no exchange_unreachable, no endless retries), and every other reply of the
    poll goes out once and counts as delivered. The requests are in the inbox before the
    service starts, so its first poll answers them together."""
    fake = FakeExchange()
    server = ThreadedServer(fake.app()).start()
    refused = fake.deliver(ROOM, request("refused", "<p>no token</p>"))
    fake.refuse_responses[refused.id] = "ErrorInvalidRequest"
    for n in range(others):
        fake.deliver(ROOM, request(f"other-{n}", "<p>no token</p>"))
    started = Running(fake, ews_config(tmp_path, server.url))
    try:
        spoolkit.wait_for(lambda: len(started.failed()) >= 1, timeout=20)
        notifier = started.svc.ctx.registry.get("onprem", "notifier")
        spoolkit.wait_for(lambda: notifier.proxy().pending().get(timeout=5) == 0, timeout=20)
        create_items = fake.requests.count("CreateItem")
        time.sleep(1.5)  # long enough for several rounds of an outage's backoff here
        assert fake.requests.count("CreateItem") == create_items  # nothing retried
        [failed] = started.failed()
        assert failed["kind"] == "reply" and failed["meeting_uid"] == "refused"
        assert "ErrorInvalidRequest" in failed["failure"]
        alarms = {a.name for a in started.svc.ctx.alarms.active("onprem")}
        assert "delivery_failed" in alarms and "exchange_unreachable" not in alarms
        assert started.replies("refused") == []
        assert refused.id in fake.mailbox(ROOM).inbox  # unanswered: waiting for an admin
        for n in range(others):
            assert started.replies(f"other-{n}") == ["Decline"]
    finally:
        started.svc.stop()
        server.stop()
