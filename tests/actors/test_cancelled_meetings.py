"""A meeting cancelled soon after it was booked, through the running actor tree and the spool:
its request read again gets no second answer, the organizer update that would restore it at the
attendees is not sent, and the log says what a cancellation did to the alias (docs/guarantees.md,
DESIGN.md "Meeting processing rules")."""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

import pytest

from tests import spoolkit
from tests.configs import Running, pxps, spool_config
from vmrsched import config, service
from vmrsched.actors.context import Context
from vmrsched.mailbox.base import GatewayError, Outgoing
from vmrsched.mailbox.spool import SpoolMailbox

TOK = "TOK:-00000000-0000-4000-8000-0000000000c1#"


def drop_in_order(inbox: Path, *files: bytes) -> list[str]:
    """Files in the inbox before the service reads it, named and dated in the order given (the
    spool takes the oldest first): the poller reads them in one batch."""
    inbox.mkdir(parents=True, exist_ok=True)
    names = []
    oldest = time.time() - 60
    for i, data in enumerate(files):
        name = spoolkit.drop(inbox, data, f"{i:02d}-item.ics")
        os.utime(inbox / name, (oldest + i, oldest + i))
        names.append(name)
    return names


def placeholder_and_cancel(**kw: Any) -> tuple[bytes, bytes, str]:
    """A request booked offline (the placeholder, TOK) and its cancellation of SEQUENCE 1."""
    request, uid = spoolkit.request(body=f"<p>Agenda</p><p>{TOK}</p>", **kw)
    cancel, _ = spoolkit.request(uid, method="CANCEL", sequence=1, **kw)
    return request, cancel, uid


@pytest.fixture
def same_batch(tmp_path: Path) -> Iterator[tuple[Running, list[str], str]]:
    """The service started on an inbox holding a placeholder request and its cancellation."""
    cfg = spool_config(tmp_path)
    request, cancel, uid = placeholder_and_cancel()
    spool = cfg.integrations[0].spool_dir(cfg.data_dir)
    names = drop_in_order(spool / "inbox", request, cancel)
    svc = service.start(cfg)
    try:
        running = Running(svc, cfg)
        for name in names:
            spoolkit.wait_handled(spool, name)
        running.settle()
        yield running, names, uid
    finally:
        svc.stop()


def outcomes(running: Running, uid: str) -> list[tuple[str, str]]:
    return sorted((m.outcome, m.reason) for m in running.answers(uid))


def test_an_organizer_update_is_not_sent_for_a_meeting_cancelled_in_the_same_batch(
    same_batch: tuple[Running, list[str], str], caplog: pytest.LogCaptureFixture
) -> None:
    """The audit's samebatch.py: the update (METHOD:REQUEST from the organizer, SEQUENCE 1,
    the released alias's joining instructions) would restore the cancelled meeting at every
    attendee, a later DTSTAMP beating the CANCEL of the same SEQUENCE. The request is still
    answered; the update is withdrawn and the log says why."""
    caplog.set_level("INFO", logger="vmrsched.notifier")
    running, _, uid = same_batch
    assert outcomes(running, uid) == [("accepted", "new_single")]
    assert not [m for m in spoolkit.outbox(running.spool) if m.outcome == "updated"]


def test_a_request_and_its_cancellation_read_again_send_nothing_new(
    same_batch: tuple[Running, list[str], str],
) -> None:
    """The state a SIGKILL leaves between queueing the answers and moving the items: both
    decided (accepted, then cancelled), both still in the inbox. Read again, the request is
    older than the cancellation already applied: no "Declined: alias_deleted" after the
    "Accepted" for the same SEQUENCE, and no update."""
    running, names, uid = same_batch
    before = outcomes(running, uid)
    for name in names:  # back into the inbox, as they were before they were marked handled
        shutil.move(running.spool / "processed" / name, running.inbox / name)
    for name in names:
        spoolkit.wait_handled(running.spool, name)
    running.settle()
    assert outcomes(running, uid) == before == [("accepted", "new_single")]


class HoldingUpdates(SpoolMailbox):
    """The spool, refusing organizer updates for now (a transient refusal of that message
    alone, as Exchange's ErrorServerBusy) until `release` is set."""

    release: ClassVar[threading.Event] = threading.Event()
    refused: ClassVar[int] = 0

    def send(self, message: Outgoing) -> None:
        if message.kind == "update" and not HoldingUpdates.release.is_set():
            HoldingUpdates.refused += 1
            raise GatewayError("ErrorServerBusy", code="ErrorServerBusy")
        super().send(message)


def holding_updates(integ: config.IntegrationConfig, ctx: Context) -> Any:
    return HoldingUpdates(integ.spool_dir(ctx.data_dir), integ.name, integ.timezone)


def test_an_organizer_update_waiting_to_be_sent_is_withdrawn_once_its_meeting_is_cancelled(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The update was refused for now and waits for its retry; meanwhile the organizer cancels
    the meeting. The retry finds the alias released and does not send it."""
    caplog.set_level("INFO", logger="vmrsched.notifier")
    HoldingUpdates.release = threading.Event()
    HoldingUpdates.refused = 0
    cfg = spool_config(tmp_path)
    svc = service.start(cfg, gateway_factory=holding_updates)
    try:
        running = Running(svc, cfg)
        request, cancel, uid = placeholder_and_cancel()
        spoolkit.wait_handled(running.spool, spoolkit.drop(running.inbox, request))
        spoolkit.wait_for(lambda: HoldingUpdates.refused >= 1)
        spoolkit.wait_handled(running.spool, spoolkit.drop(running.inbox, cancel))
        HoldingUpdates.release.set()
        running.settle()
    finally:
        svc.stop()
    assert outcomes(running, uid) == [("accepted", "new_single")]
    withdrawn = [r.getMessage() for r in caplog.records if "withdrawn" in r.getMessage()]
    assert len(withdrawn) == 1 and "no longer bound" in withdrawn[0], withdrawn


def test_an_organizer_update_of_a_meeting_still_booked_is_sent(running: Running) -> None:
    request, _, uid = placeholder_and_cancel()
    running.send(request)
    assert outcomes(running, uid) == [
        ("accepted", "new_single"),
        ("updated", "placeholder_replaced"),
    ]


def test_the_log_says_a_cancelled_occurrence_leaves_the_alias_bound(
    running: Running, caplog: pytest.LogCaptureFixture
) -> None:
    """The audit's r18: cancelling one occurrence was logged as "released <alias>: meeting
    cancelled" although the alias stays bound to the series."""
    caplog.set_level("INFO", logger="vmrsched.store.decisions")
    rec = running.reserve()
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(days=1)
    series, uid = spoolkit.request(
        body=pxps(rec), start=start, rrule="FREQ=DAILY;COUNT=5", subject="Daily"
    )
    running.send(series)
    rid = start + timedelta(days=2)
    one, _ = spoolkit.request(
        uid, method="CANCEL", sequence=1, start=rid, recurrence_id=rid, subject="Daily"
    )
    running.send(one)
    whole, _ = spoolkit.request(uid, method="CANCEL", sequence=2, start=start, subject="Daily")
    running.send(whole)
    lines = [r.getMessage() for r in caplog.records if r.name == "vmrsched.store.decisions"]
    alias = rec["alias"]
    assert lines[1:] == [
        f"cancelled occurrence {rid:%Y%m%dT%H%M%SZ} of {alias}, which stays bound: 'Daily' "
        "from olga@example.com",
        f"released {alias}: meeting cancelled: 'Daily' from olga@example.com",
    ]
