"""The notifier's queue: each message succeeds or fails on its own. A poison message (one the
mailbox cannot even take) and a permanent refusal are failed at once and kept; a transient
refusal of one message is retried on its own; none of them holds up the messages behind it or
crashes the notifier."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, ClassVar

from tests import spoolkit
from tests.configs import Running, spool_config
from vmrsched import config, service
from vmrsched.actors.context import Context
from vmrsched.mailbox.base import GatewayError, Outgoing
from vmrsched.mailbox.spool import SpoolMailbox
from vmrsched.store.outqueue import OutQueue


class PickyMailbox(SpoolMailbox):
    """The spool, refusing messages by their subject."""

    flaky_left = 2

    def send(self, message: Outgoing) -> None:
        if "poison" in message.subject:
            raise ValueError("cannot encode this")  # a bug or a hostile value: never retried
        if "refused" in message.subject:
            raise GatewayError(
                "ErrorInvalidRecipients", permanent=True, code="ErrorInvalidRecipients"
            )
        if "flaky" in message.subject and PickyMailbox.flaky_left > 0:
            PickyMailbox.flaky_left -= 1
            raise GatewayError("ErrorMailboxStoreUnavailable", code="ErrorMailboxStoreUnavailable")
        super().send(message)


def picky(integ: config.IntegrationConfig, ctx: Context) -> Any:
    return PickyMailbox(integ.spool_dir(ctx.data_dir), integ.name, integ.timezone)


def test_each_message_fails_or_succeeds_alone(tmp_path: Path) -> None:
    cfg = spool_config(tmp_path)
    svc = service.start(cfg, gateway_factory=picky)
    try:
        running = Running(svc, cfg)
        spool = running.spool
        uids = {}
        for subject in ("poison", "refused", "flaky"):
            data, uids[subject] = spoolkit.request(body="<p>no token</p>", subject=subject)
            spoolkit.drop(running.inbox, data)
        time.sleep(0.2)
        started = time.monotonic()
        normal = []
        for i in range(5):
            data, uid = spoolkit.request(body="<p>no token</p>", subject=f"normal {i}")
            spoolkit.drop(running.inbox, data)
            normal.append(uid)
        for uid in normal:
            spoolkit.wait_for(lambda uid=uid: bool(spoolkit.answers_for(spool, uid)), timeout=5)
        assert time.monotonic() - started < 5  # nothing waited behind the refused ones
        spoolkit.wait_for(lambda: bool(spoolkit.answers_for(spool, uids["flaky"])), timeout=20)
        running.settle()
        notifier = svc.ctx.registry.get("alpha", "notifier")
        assert notifier.proxy().failed().get(timeout=5) == 2
        assert not spoolkit.answers_for(spool, uids["poison"])
        assert not spoolkit.answers_for(spool, uids["refused"])
        alarms = {(a.integration, a.name) for a in svc.ctx.alarms.active()}
        assert ("alpha", "delivery_failed") in alarms
        restarts = svc.ctx.metrics.registry.get_sample_value(
            "vmrsched_actor_restarts_total", {"integration": "alpha", "actor": "notifier"}
        )
        assert not restarts  # failed messages, not a crashed notifier
    finally:
        svc.stop()
    # kept across a restart with their reasons, and never sent again
    queue = OutQueue(cfg.data_dir / "queue" / "alpha")
    reasons = sorted(f.reason for f in queue.failed())
    queue.close()
    assert "ErrorInvalidRecipients" in reasons[0] and "ValueError" in reasons[1]
    svc = service.start(cfg)
    try:
        spoolkit.wait_for(lambda: svc.ctx.status.state("alpha") == "running")
        spoolkit.wait_for(
            lambda: (
                ("alpha", "delivery_failed")
                in {(a.integration, a.name) for a in svc.ctx.alarms.active()}
            )
        )
        time.sleep(0.3)
        assert not spoolkit.answers_for(spool, uids["poison"])
    finally:
        svc.stop()


class OutOfScopeMailbox(SpoolMailbox):
    """The spool, refusing every organizer update as Graph does for organizers outside the
    application's scope, and the instructions by mail for meetings with "unmailable" in their
    subject."""

    def send(self, message: Outgoing) -> None:
        if message.kind == "update":
            raise GatewayError("403 ErrorAccessDenied", permanent=True, code="ErrorAccessDenied")
        if message.kind == "notice" and "unmailable" in message.subject:
            raise GatewayError(
                "ErrorInvalidRecipients", permanent=True, code="ErrorInvalidRecipients"
            )
        super().send(message)


def out_of_scope(integ: config.IntegrationConfig, ctx: Context) -> Any:
    return OutOfScopeMailbox(integ.spool_dir(ctx.data_dir), integ.name, integ.timezone)


def test_an_update_the_instructions_by_mail_stand_in_for_raises_no_alarm(tmp_path: Path) -> None:
    """delivery_failed says what still needs an admin: an organizer outside the application's
    scope (by design on some tenants) got the instructions by mail, so nothing does, during the
    run or after a restart; when that mail is refused too, both failures count."""
    cfg = spool_config(tmp_path)

    def alarm(svc: service.Service) -> str | None:
        return next(
            (a.message for a in svc.ctx.alarms.active("alpha") if a.name == "delivery_failed"),
            None,
        )

    svc = service.start(cfg, gateway_factory=out_of_scope)
    try:
        running = Running(svc, cfg)
        data, uid = spoolkit.request(body=f"<p>{TOK}</p>", subject="Out of scope")
        running.send(data)
        spoolkit.wait_for(lambda: len(running.answers(uid)) == 2)  # the reply, the instructions
        running.settle()
        notifier = svc.ctx.registry.get("alpha", "notifier")
        assert notifier.proxy().failed().get(timeout=5) == 1  # `vmrsched failed` lists it
        assert alarm(svc) is None
    finally:
        svc.stop()
    svc = service.start(cfg, gateway_factory=out_of_scope)
    try:
        running = Running(svc, cfg)
        spoolkit.wait_for(lambda: svc.ctx.status.state("alpha") == "running")
        time.sleep(0.3)
        assert alarm(svc) is None
        # the instructions cannot be mailed either: that needs an admin
        data, uid = spoolkit.request(body=f"<p>{TOK.replace('aa', 'ab')}</p>", subject="unmailable")
        running.send(data)
        spoolkit.wait_for(lambda: alarm(svc) is not None)
        assert str(alarm(svc)).startswith("2 message(s)")  # that update and its mail
    finally:
        svc.stop()
    svc = service.start(cfg, gateway_factory=out_of_scope)
    try:
        spoolkit.wait_for(lambda: alarm(svc) is not None)
        assert str(alarm(svc)).startswith("2 message(s)")
    finally:
        svc.stop()


TOK = "TOK:-00000000-0000-4000-8000-0000000000aa#"


class DownMailbox(SpoolMailbox):
    """The spool, its sending side down until `up` is set (the mailbox refuses every message
    as Exchange does while its store is unavailable)."""

    up = False

    def send(self, message: Outgoing) -> None:
        if not DownMailbox.up:
            raise GatewayError("ErrorMailboxStoreUnavailable", code="ErrorMailboxStoreUnavailable")
        super().send(message)


def down(integ: config.IntegrationConfig, ctx: Context) -> Any:
    return DownMailbox(integ.spool_dir(ctx.data_dir), integ.name, integ.timezone)


def test_an_answer_that_cannot_be_sent_shows_as_mailbox_lag(tmp_path: Path) -> None:
    """The request was read at once (no incoming lag), but its answer waits: the lag is how
    long it has waited, and back to nothing once it went out."""
    DownMailbox.up = False
    cfg = spool_config(tmp_path)
    svc = service.start(cfg, gateway_factory=down)

    def lag() -> float:
        value = svc.ctx.metrics.registry.get_sample_value(
            "vmrsched_mailbox_lag_seconds", {"integration": "alpha"}
        )
        return float(value or 0.0)

    try:
        running = Running(svc, cfg)
        data, uid = spoolkit.request(body="<p>no token</p>")
        spoolkit.wait_handled(running.spool, spoolkit.drop(running.inbox, data))
        spoolkit.wait_for(lambda: lag() >= 1.0, timeout=10)
        assert svc.ctx.status.snapshot()["alpha"]["lag"] >= 1.0
        DownMailbox.up = True
        spoolkit.wait_for(lambda: bool(spoolkit.answers_for(running.spool, uid)), timeout=20)
        spoolkit.wait_for(lambda: lag() == 0.0, timeout=10)
    finally:
        DownMailbox.up = True
        svc.stop()


class RecordingMailbox(SpoolMailbox):
    """A mailbox where a resend is not harmless (EWS, Graph): it answers requests in bulk and
    records what it was asked to send, in order, with the queue's delivery marks."""

    idempotent_send = False
    bulk_send = True
    events: ClassVar[list[tuple[str, list[str]]]] = []

    def send_many(self, messages: Any) -> list[BaseException | None]:
        RecordingMailbox.events.append(("send", [m.id for m in messages]))
        return [None] * len(messages)

    def send(self, message: Outgoing) -> None:
        RecordingMailbox.events.append(("send", [message.id]))


def recording(integ: config.IntegrationConfig, ctx: Context) -> Any:
    return RecordingMailbox(integ.spool_dir(ctx.data_dir), integ.name, integ.timezone)


def _outgoing(id: str, kind: Any, extra: dict[str, Any]) -> Outgoing:
    return Outgoing(
        id=id,
        kind=kind,
        sender="room@example.com",
        sender_name="Room",
        recipients=("olga@example.com",),
        subject="s",
        html_body="<p>b</p>",
        outcome="accepted",
        reason="",
        correlation_id="c",
        meeting_uid="uid-1",
        extra=extra,
    )


def sent_and_marked(
    tmp_path: Path,
    monkeypatch: Any,
    factory: Any,
    messages: list[Outgoing],
    restarts: list[float] | None = None,
) -> list[tuple[str, list[str]]]:
    """Queue `messages` with a service whose mailbox `factory` makes (a RecordingMailbox), wait
    until none is pending: what the mailbox was asked to send and the queue's delivery marks,
    in the order they happened (and the notifier's restarts appended to `restarts`)."""
    events = RecordingMailbox.events = []
    done = OutQueue.done

    def recorded_done(self: OutQueue, ids: Any) -> None:
        ids = list(ids)
        events.append(("done", ids))
        done(self, ids)

    monkeypatch.setattr(OutQueue, "done", recorded_done)
    svc = service.start(spool_config(tmp_path), gateway_factory=factory)
    try:
        spoolkit.wait_for(lambda: svc.ctx.status.state("alpha") == "running")
        notifier = svc.ctx.registry.get("alpha", "notifier")
        notifier.proxy().enqueue(messages).get(timeout=5)
        spoolkit.wait_for(lambda: notifier.proxy().pending().get(timeout=5) == 0, timeout=20)
        if restarts is not None:
            restarts.append(
                svc.ctx.metrics.registry.get_sample_value(
                    "vmrsched_actor_restarts_total", {"integration": "alpha", "actor": "notifier"}
                )
                or 0.0
            )
    finally:
        svc.stop()
    return events


def test_each_delivery_is_marked_before_the_next_send_where_a_resend_is_not_harmless(
    tmp_path: Path, monkeypatch: Any
) -> None:
    """The audit's crash: Exchange took the accept, the organizer update was on its way, and
    SIGKILL. The accept's delivery mark must be durable before the update is sent, or the
    restart sends the accept again (docs/guarantees.md: each delivery is marked before the
    next one on Exchange)."""
    reply = _outgoing("reply-1", "reply", {"item_id": "item-1"})
    update = _outgoing("update-1", "update", {"alias_id": "a1"})
    events = sent_and_marked(tmp_path, monkeypatch, recording, [reply, update])
    assert events == [
        ("send", ["reply-1"]),
        ("done", ["reply-1"]),
        ("send", ["update-1"]),
        ("done", ["update-1"]),
    ]


class DeliveredMailbox(RecordingMailbox):
    """A mailbox that already has every message it is asked about (sent before a crash)."""

    def delivered(self, message: Outgoing) -> bool:
        RecordingMailbox.events.append(("asked", [message.id]))
        return True


def delivered_already(integ: config.IntegrationConfig, ctx: Context) -> Any:
    return DeliveredMailbox(integ.spool_dir(ctx.data_dir), integ.name, integ.timezone)


def test_a_message_found_in_the_mailbox_after_a_restart_is_not_logged_as_sent(
    tmp_path: Path, caplog: Any
) -> None:
    """Queued before a crash and found delivered on the restart: marked done, logged as found,
    and not logged as "sent" (nothing went out this time)."""
    caplog.set_level("INFO", logger="vmrsched.notifier")
    RecordingMailbox.events = []
    cfg = spool_config(tmp_path)
    queue = OutQueue(config.queue_dir(cfg.data_dir, "alpha"))
    queue.add([_outgoing("reply-1", "reply", {"item_id": "item-1"})])
    queue.close()
    svc = service.start(cfg, gateway_factory=delivered_already)
    try:
        spoolkit.wait_for(lambda: svc.ctx.status.state("alpha") == "running")
        notifier = svc.ctx.registry.get("alpha", "notifier")
        spoolkit.wait_for(lambda: notifier.proxy().pending().get(timeout=5) == 0)
    finally:
        svc.stop()
    assert RecordingMailbox.events == [("asked", ["reply-1"])]
    lines = [r.getMessage() for r in caplog.records if r.name == "vmrsched.notifier"]
    assert any("had reached the mailbox" in line for line in lines)
    assert not any(line.startswith("sent ") for line in lines), lines


class RefusingFirst(SpoolMailbox):
    """The spool, refusing for good the first message this process asks it to send."""

    refused: ClassVar[list[str]] = []

    def send(self, message: Outgoing) -> None:
        if not RefusingFirst.refused:
            RefusingFirst.refused.append(message.id)
            raise GatewayError(
                "ErrorInvalidRecipients", permanent=True, code="ErrorInvalidRecipients"
            )
        super().send(message)


def refusing_first(integ: config.IntegrationConfig, ctx: Context) -> Any:
    return RefusingFirst(integ.spool_dir(ctx.data_dir), integ.name, integ.timezone)


def test_a_reply_failed_for_good_is_sent_by_the_admins_retry_after_a_restart(
    tmp_path: Path,
) -> None:
    """On the spool a reply is a mail of its own, and its request left the inbox when it was
    read: after a clean restart `failed` still lists the reply, and the admin's retry writes it
    to the outbox, once."""
    RefusingFirst.refused = []
    cfg = spool_config(tmp_path)
    svc = service.start(cfg, gateway_factory=refusing_first)
    try:
        running = Running(svc, cfg)
        data, uid = spoolkit.request(body="<p>no token</p>")
        running.send(data)
        notifier = svc.ctx.registry.get("alpha", "notifier")
        spoolkit.wait_for(lambda: notifier.proxy().failed().get(timeout=5) == 1)
    finally:
        svc.stop()
    svc = service.start(cfg)
    try:
        running = Running(svc, cfg)
        spoolkit.wait_for(lambda: svc.ctx.status.state("alpha") == "running")
        failed = asyncio.run(svc.admin_messages("alpha"))["failed"]
        assert [f["id"] for f in failed] == RefusingFirst.refused
        assert not running.answers(uid)
        asyncio.run(svc.admin_retry_message("alpha", failed[0]["id"], "admin@example.com"))
        running.settle()
        assert len(running.answers(uid)) == 1
        assert asyncio.run(svc.admin_messages("alpha"))["failed"] == []
    finally:
        svc.stop()


class ThrottledMidLot(RecordingMailbox):
    """A bulk send whose second answer is a throttling refusal about the whole mailbox (a $batch
    part answered 429) while the first and third were carried out."""

    def send_many(self, messages: Any) -> list[BaseException | None]:
        RecordingMailbox.events.append(("send", [m.id for m in messages]))
        if len(messages) < 3:
            return [None] * len(messages)
        return [
            None,
            GatewayError("throttled", retry_after=0.2),
            None,
            *[None] * (len(messages) - 3),
        ]


def throttled_mid_lot(integ: config.IntegrationConfig, ctx: Context) -> Any:
    return ThrottledMidLot(integ.spool_dir(ctx.data_dir), integ.name, integ.timezone)


def test_answers_carried_out_beside_a_throttled_one_are_marked_and_not_sent_again(
    tmp_path: Path, monkeypatch: Any
) -> None:
    """The mailbox backs off for the throttled answer alone: the others of its lot are marked
    delivered before the wait, so only the throttled one goes out again."""
    replies = [_outgoing(f"reply-{i}", "reply", {"item_id": f"item-{i}"}) for i in (1, 2, 3)]
    events = sent_and_marked(tmp_path, monkeypatch, throttled_mid_lot, replies)
    assert events == [
        ("send", ["reply-1", "reply-2", "reply-3"]),
        ("done", ["reply-1", "reply-3"]),
        ("send", ["reply-2"]),
        ("done", ["reply-2"]),
    ]


class FullWhenThrottled(ThrottledMidLot):
    """The throttled lot of ThrottledMidLot, and the first sync after it refused as a spool on a
    full disk refuses it (a GatewayError since the spool maps ENOSPC to an outage)."""

    idempotent_send = True  # as the spool: a message sent again is the same file
    syncs_refused = 2  # the lot's sync, then the one in the outage's handler

    def sync(self) -> None:
        if FullWhenThrottled.syncs_refused and any(e[0] == "send" for e in self.events):
            FullWhenThrottled.syncs_refused -= 1
            raise GatewayError("the spool's disk is full")
        super().sync()


def full_when_throttled(integ: config.IntegrationConfig, ctx: Context) -> Any:
    return FullWhenThrottled(integ.spool_dir(ctx.data_dir), integ.name, integ.timezone)


def test_a_sync_refused_during_an_outage_backs_off_without_a_crash(
    tmp_path: Path, monkeypatch: Any
) -> None:
    """The lot's delivery marks cannot be made durable (the disk is full) just as the mailbox
    throttles: the notifier backs off like for any outage, without dying, and every message is
    delivered and marked in the end (those carried out before go again: idempotent)."""
    replies = [_outgoing(f"reply-{i}", "reply", {"item_id": f"item-{i}"}) for i in (1, 2, 3)]
    restarts: list[float] = []
    events = sent_and_marked(tmp_path, monkeypatch, full_when_throttled, replies, restarts)
    assert restarts == [0.0]
    marked = [i for kind, ids in events if kind == "done" for i in ids]
    assert sorted(set(marked)) == ["reply-1", "reply-2", "reply-3"]
