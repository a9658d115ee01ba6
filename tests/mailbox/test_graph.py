"""The Graph backend end to end: the service against a fake Microsoft Graph and a fake identity
platform over real HTTP(S), msal and our Graph client unmodified. The rules decide as on the other
backends; accept/decline go to the room's event with the rendered comment; the organizer's
meeting is PATCHed (and its echo to the room is not answered again), or, outside the app's
scope, the organizer gets the instructions by mail; cancellations remove the room's event;
throttling and an expired token are survived; nothing is answered twice."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests import spoolkit
from tests.backups import restore_without
from tests.configs import reserve_alias, stored_record
from tests.fakes.graph_server import FakeGraph, Message
from tests.fakes.identity_platform import IdentityPlatform, tls_files
from tests.fakes.threaded import ThreadedServer
from tests.graphkit import (
    ORGANIZER,
    ROOM,
    SECRET,
    GraphWorld,
    graph_world,
    meeting,
    pxps,
    start_service,
)
from vmrsched import config, service
from vmrsched.actors.supervision import RestartPolicy
from vmrsched.rules.meetings import Meeting


@dataclass
class Env:
    world: GraphWorld
    svc: service.Service

    @property
    def platform(self) -> IdentityPlatform:
        return self.world.platform

    @property
    def fake(self) -> FakeGraph:
        return self.world.fake

    def count(self, outcome: str, reason: str) -> float:
        value = self.svc.ctx.metrics.registry.get_sample_value(
            "vmrsched_meeting_requests_total",
            {"integration": "online", "outcome": outcome, "reason": reason},
        )
        return value or 0.0

    def reserve(self) -> dict[str, Any]:
        spoolkit.wait_for(lambda: self.svc.ctx.status.state("online") == "running")
        ref = self.svc.ctx.registry.get("online", "allocator")
        record: dict[str, Any] = reserve_alias(ref)
        return record

    def settle(self) -> None:
        notifier = self.svc.ctx.registry.get("online", "notifier")
        spoolkit.wait_for(lambda: notifier.proxy().pending().get(timeout=5) == 0, timeout=20)

    def send(self, meeting: Meeting) -> Message:
        message = self.fake.deliver(ROOM, meeting)
        spoolkit.wait_for(lambda: not self.fake.mailbox(ROOM).inbox, timeout=20)
        self.settle()
        return message


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    with graph_world(tmp_path) as world:
        env = Env(world, start_service(world, tmp_path))
        try:
            yield env
        finally:
            env.svc.stop()  # the one running now (a test may have restarted it)


def test_the_rules_through_graph(env: Env) -> None:
    env.send(meeting("no-token", "<p>nothing</p>"))
    [declined] = env.fake.responses_for("no-token")
    assert declined.action == "decline" and "no valid video meeting reference" in declined.comment
    assert env.count("declined", "invalid_alias_id") == 1

    rec = env.reserve()
    env.send(meeting("single", pxps(rec)))
    [accepted] = env.fake.responses_for("single")
    assert accepted.action == "accept" and rec["alias"] in accepted.comment
    assert "<p>" not in accepted.comment  # the comment is text
    room_events = env.fake.mailbox(ROOM).events.values()
    assert any(e.uid == "single" and e.response == "accepted" for e in room_events)

    env.send(meeting("single", pxps(rec), days=2, sequence=1))
    assert env.count("accepted", "edited_single") == 1
    env.send(meeting("copy", pxps(rec)))
    assert env.count("declined", "alias_conflict") == 1

    env.send(meeting("single", pxps(rec), days=2, sequence=2, method="CANCEL"))
    assert env.count("ignored", "cancelled") == 1
    assert not any(e.uid == "single" for e in env.fake.mailbox(ROOM).events.values())
    env.send(meeting("reuse", pxps(rec)))
    assert env.count("declined", "alias_deleted") == 1

    # an out-of-office in the room's inbox: set aside, never answered
    mail = env.fake.deliver_mail(ROOM, "bob@contoso.example", "Out of office")
    spoolkit.wait_for(lambda: mail.id not in env.fake.mailbox(ROOM).inbox)
    assert any(m.id == mail.id for m in env.fake.mailbox(ROOM).deleted)
    assert env.fake.max_concurrent <= 4 and env.fake.over_limit == 0


def test_placeholder_meeting_is_patched_and_its_echo_is_not_answered(env: Env) -> None:
    body = "<p>Agenda</p><p>TOK:-00000000-0000-4000-8000-0000000000aa#</p>"
    env.send(meeting("tok", body))
    spoolkit.wait_for(lambda: (ORGANIZER, "tok") in env.fake.patches)
    spoolkit.wait_for(lambda: not env.fake.mailbox(ROOM).inbox)  # the echo, handled
    env.settle()
    event = env.fake.organizer_event(ORGANIZER, "tok")
    assert event is not None and "TOK:-" not in event.meeting.html_body
    assert "PXPS:-" in event.meeting.html_body
    assert len(env.fake.responses_for("tok")) == 1  # the echo got no second answer
    assert env.count("ignored", "unchanged") == 1


def test_outside_the_apps_scope_the_organizer_gets_the_instructions_by_mail(env: Env) -> None:
    env.fake.scope = {ROOM}  # the application access policy covers the room only
    env.send(meeting("scoped", "<p>TOK:-00000000-0000-4000-8000-0000000000bb#</p>"))
    spoolkit.wait_for(lambda: any(ORGANIZER in str(m.get("toRecipients")) for m in env.fake.mails))
    [mail] = [m for m in env.fake.mails if ORGANIZER in str(m.get("toRecipients"))]
    assert mail["from"] == ROOM and "PXPS:-" in mail["body"]["content"]
    assert not env.fake.patches
    # by design on such a tenant, and the organizer has the instructions: nothing for an admin
    # (`vmrsched failed` still lists the update), across a restart too
    env.settle()
    notifier = env.svc.ctx.registry.get("online", "notifier")
    assert notifier.proxy().failed().get(timeout=5) == 1
    assert "delivery_failed" not in {a.name for a in env.svc.ctx.alarms.active("online")}
    cfg = env.svc.config
    env.svc.stop()
    env.svc = service.start(cfg, policy=RestartPolicy(mailbox_max=1.0))
    spoolkit.wait_for(lambda: env.svc.ctx.status.state("online") == "running")
    time.sleep(0.3)
    assert "delivery_failed" not in {a.name for a in env.svc.ctx.alarms.active("online")}


def test_throttling_and_an_expired_token_are_survived(env: Env) -> None:
    rec = env.reserve()
    env.fake.throttle_next = 3
    env.send(meeting("throttled", pxps(rec)))
    assert [r.action for r in env.fake.responses_for("throttled")] == ["accept"]
    env.platform.expire_all()
    rec2 = env.reserve()
    env.send(meeting("after-expiry", pxps(rec2)))
    assert [r.action for r in env.fake.responses_for("after-expiry")] == ["accept"]
    alarms = {a.name for a in env.svc.ctx.alarms.active("online")}
    assert "exchange_unreachable" not in alarms


def test_after_a_crash_a_reply_or_update_that_reached_graph_is_not_sent_again(
    tmp_path: Path,
) -> None:
    """The crash comes between Graph's answer and the queue's delivery mark: on restart the
    notifier asks `delivered` before sending a resumed message again."""
    from vmrsched.mailbox.graph import GraphMailbox
    from vmrsched.outgoing import Outgoing
    from vmrsched.telemetry import Metrics

    stack = ExitStack()
    world = stack.enter_context(graph_world(tmp_path))
    fake = world.fake
    doc = {"server": {"data_dir": str(tmp_path / "data")}, "integrations": [world.integration()]}
    integ = config.parse(doc, tmp_path, {"GRAPH_SECRET": SECRET}).integrations[0]
    gateway = GraphMailbox(integ, Metrics(), tmp_path / "graph-state")
    try:
        request = fake.deliver(ROOM, meeting("crash", "<p>PXPS:-x#</p>"))
        reply = Outgoing(
            id="r1",
            kind="reply",
            sender=ROOM,
            sender_name="Video Room",
            recipients=(ORGANIZER,),
            subject="Accepted: Weekly sync",
            html_body="<p>Booked</p>",
            outcome="accepted",
            reason="new_single",
            correlation_id="c1",
            meeting_uid="crash",
            extra={"item_id": request.id},
        )
        assert not gateway.delivered(reply)  # not answered yet: it must be sent
        [item] = gateway.fetch(10)
        gateway.send(reply)
        assert len(fake.responses_for("crash")) == 1
        gateway.sync()  # the notifier's, before its delivery mark: the message leaves
        assert request.id not in fake.mailbox(ROOM).inbox
        # as if the message had survived the crash (accepted, not yet removed), and a new
        # process asks about the reply it found queued
        with fake.lock:
            fake.mailbox(ROOM).inbox[request.id] = request
        gateway.close()
        gateway = GraphMailbox(integ, Metrics(), tmp_path / "graph-state")
        assert gateway.delivered(reply)  # answered: only the message is removed
        gateway.sync()
        assert request.id not in fake.mailbox(ROOM).inbox
        assert len(fake.responses_for("crash")) == 1

        update = Outgoing(
            id="u1",
            kind="update",
            sender=ORGANIZER,
            sender_name="Olga",
            recipients=("bob@contoso.example",),
            subject="Weekly sync",
            html_body="<p>PXPS:-alias-1#</p>",
            outcome="updated",
            reason="new_single",
            correlation_id="c1",
            meeting_uid="crash",
            extra={"alias_id": "alias-1"},
        )
        assert not gateway.delivered(update)
        gateway.send(update)
        assert gateway.delivered(update)
        assert item.meetings[0].uid == "crash"
    finally:
        gateway.close()
        stack.close()


def test_recovery_rebinds_meetings_the_store_lost(env: Env) -> None:
    from vmrsched.mailbox.graph import rrule_of
    from vmrsched.store import Store

    kept = env.reserve()
    env.send(meeting("kept", pxps(kept)))
    series = meeting("lost", "<p>TOK:-00000000-0000-4000-8000-0000000000cc#</p>", days=3)
    series = Meeting(**{**series.__dict__, "rrule": "FREQ=WEEKLY;COUNT=4"})
    env.send(series)
    spoolkit.wait_for(lambda: (ORGANIZER, "lost") in env.fake.patches)
    spoolkit.wait_for(lambda: not env.fake.mailbox(ROOM).inbox)
    env.settle()
    cfg, integ = env.svc.config, env.svc.config.integrations[0]
    env.svc.stop()
    lost = restore_without(cfg.data_dir / "store" / "online", "lost")
    patches_before = len(env.fake.patches)

    done = service.recover_integration(cfg, integ, datetime.now(UTC), False, lambda _: None)
    assert {d.uid: d.action for d in done} == {"kept": "already_bound", "lost": "bound"}
    store = Store(cfg.data_dir / "store" / "online")
    try:
        rebound = store.by_meeting_uid("lost")
        assert rebound is not None and rebound["alias_id"] != lost["alias_id"]
        assert "WEEKLY" in str(rebound["schedule"])  # the series came back as a series
    finally:
        store.close()
    assert len(env.fake.patches) == patches_before + 1
    event = env.fake.organizer_event(ORGANIZER, "lost")
    assert event is not None and f"PXPS:-{rebound['alias_id']}#" in event.meeting.html_body

    weekly = {
        "pattern": {"type": "weekly", "interval": 2, "daysOfWeek": ["monday", "Friday"]},
        "range": {"type": "endDate", "endDate": "2027-03-31"},
    }
    assert rrule_of(weekly) == "FREQ=WEEKLY;INTERVAL=2;BYDAY=MO,FR;UNTIL=20270331T235959Z"
    monthly = {
        "pattern": {
            "type": "relativeMonthly",
            "interval": 1,
            "daysOfWeek": ["tuesday"],
            "index": "last",
        },
        "range": {"type": "numbered", "numberOfOccurrences": 5},
    }
    assert rrule_of(monthly) == "FREQ=MONTHLY;INTERVAL=1;BYDAY=-1TU;COUNT=5"


def test_the_rest_of_the_rules_table_through_graph(env: Env) -> None:
    def at(uid: str, body: str, start: datetime, **extra: Any) -> Meeting:
        base = meeting(uid, body)
        return Meeting(
            **{**base.__dict__, "start": start, "end": start + timedelta(minutes=30), **extra}
        )

    now = datetime.now(UTC).replace(microsecond=0)
    env.send(meeting("unknown", "<p>PXPS:-00000000-0000-4000-8000-000000000099#</p>"))
    assert env.count("declined", "invalid_alias_id") == 1

    env.send(at("past", pxps(env.reserve()), now - timedelta(days=2)))
    assert env.count("declined", "single_in_past") == 1
    old = "FREQ=DAILY;COUNT=2"
    env.send(at("old-series", pxps(env.reserve()), now - timedelta(days=10), rrule=old))
    assert env.count("declined", "recurring_in_past") == 1

    first = now + timedelta(days=1)
    rec = env.reserve()
    weekly = "FREQ=WEEKLY;COUNT=6"
    env.send(at("series", pxps(rec), first, rrule=weekly))
    assert env.count("accepted", "new_recurring") == 1
    moved = first + timedelta(days=7)
    env.send(at("series", pxps(rec), moved + timedelta(hours=2), sequence=1, recurrence_id=moved))
    assert env.count("accepted", "edited_occurrence") == 1
    env.send(at("series", pxps(rec), first + timedelta(hours=1), rrule=weekly, sequence=2))
    assert env.count("accepted", "edited_recurring") == 1
    env.send(at("series", pxps(rec), first, rrule=weekly, sequence=1))  # older than processed
    assert env.count("ignored", "outdated") == 1
    assert [r.action for r in env.fake.responses_for("series")] == ["accept"] * 3


def test_only_the_organizer_changes_a_booking_and_graphs_from_says_who_sent_it(
    env: Env,
) -> None:
    rec = env.reserve()
    env.send(meeting("owned", pxps(rec)))
    assert env.count("accepted", "new_single") == 1
    mallory = "mallory@evil.example"
    # a cancellation naming Olga as ORGANIZER, from someone else's mailbox
    message = env.fake.deliver(
        ROOM, meeting("owned", pxps(rec), sequence=1, method="CANCEL"), sender=mallory
    )
    spoolkit.wait_for(lambda: message.id not in env.fake.mailbox(ROOM).inbox, timeout=20)
    env.settle()
    assert env.count("ignored", "not_organizer") == 1
    assert env.count("ignored", "cancelled") == 0
    # the room keeps the meeting (its event is not deleted) and the alias stays bound
    assert any(e.uid == "owned" for e in env.fake.mailbox(ROOM).events.values())
    ref = env.svc.ctx.registry.get("online", "allocator")
    assert stored_record(ref, rec["alias_id"])["status"] == "bound"
    assert [r.action for r in env.fake.responses_for("owned")] == ["accept"]
    env.send(meeting("owned", pxps(rec), sequence=2, method="CANCEL"))  # Olga's own
    assert env.count("ignored", "cancelled") == 1
    assert stored_record(ref, rec["alias_id"])["status"] == "deleted"


def test_an_unreadable_meeting_message_is_declined_with_a_correlation_id(env: Env) -> None:
    with env.fake.lock:
        message = env.fake._deliver(ROOM, meeting("broken", "<p>x</p>"), True)
        message.mime = b"Content-Type: text/calendar\r\n\r\nBEGIN:VCALENDAR\r\nnot a calendar"
    spoolkit.wait_for(lambda: not env.fake.mailbox(ROOM).inbox)
    env.settle()
    assert any(m.id == message.id for m in env.fake.mailbox(ROOM).deleted)  # set aside
    [mail] = [m for m in env.fake.mails if ORGANIZER in str(m.get("toRecipients"))]
    headers = {h["name"]: h["value"] for h in mail["internetMessageHeaders"]}
    assert headers["X-Vmrsched-Outcome"] == "declined"
    assert headers["X-Vmrsched-Correlation-Id"] in mail["body"]["content"]
    assert env.count("declined", "general_error") == 1


def replaced_mime(env: Env, uid: str, change: Any) -> Message:
    """A meeting message delivered to the room with its MIME content changed by `change`."""
    with env.fake.lock:
        message = env.fake._deliver(ROOM, meeting(uid, "<p>no token</p>"), True)
        message.mime = change(message.mime)
    spoolkit.wait_for(lambda: not env.fake.mailbox(ROOM).inbox)
    env.settle()
    return message


def test_an_attendees_response_is_set_aside_unanswered(env: Env) -> None:
    """Graph lists a response as an eventMessage too: its iTIP method (REPLY) says it asks
    nothing, as on the other backends (before: a general_error decline to the organizer)."""
    reply, _ = spoolkit.request("reply-1", method="REPLY", organizer=ORGANIZER)
    mime = (
        b"From: Bob <bob@contoso.example>\r\nSubject: Accepted: Weekly sync\r\n"
        b"Content-Type: text/calendar; method=REPLY\r\n\r\n" + reply
    )
    message = replaced_mime(env, "reply-1", lambda _: mime)
    assert any(m.id == message.id for m in env.fake.mailbox(ROOM).deleted)  # set aside
    assert env.fake.responses == [] and env.fake.mails == [] and env.fake.patches == []
    assert env.count("set_aside", "not_meeting") == 1


def test_a_meeting_request_in_automatic_mail_is_set_aside_unanswered(env: Env) -> None:
    message = replaced_mime(
        env, "auto-1", lambda mime: b"Auto-Submitted: auto-generated\r\n" + mime
    )
    assert any(m.id == message.id for m in env.fake.mailbox(ROOM).deleted)  # set aside
    assert env.fake.responses == [] and env.fake.mails == [] and env.fake.patches == []
    assert env.count("set_aside", "automatic") == 1
    assert env.count("declined", "invalid_alias_id") == 0


def test_check_online_reports_the_token_the_room_and_an_organizers_scope(env: Env) -> None:
    cfg, integ = env.svc.config, env.svc.config.integrations[0]
    env.fake.scope = {ROOM, "in.scope@contoso.example"}
    inside = service.check_online(cfg, integ, "in.scope@contoso.example")
    assert [ok for ok, _ in inside] == [True, True, True]
    outside = service.check_online(cfg, integ, ORGANIZER)
    assert [ok for ok, _ in outside] == [True, True, False]
    assert "outside the app's scope" in outside[2][1] and "403" in outside[2][1]
    env.platform.client_secret = "rotated"  # the secret we have is no longer accepted
    env.platform.expire_all()
    [(ok, text)] = service.check_online(cfg, integ)
    assert not ok and "token" in text


def test_tenant_wide_consent_reaches_organizers_outside_the_rbac_scope(env: Env) -> None:
    """Entra consent and RBAC grants add up: with admin consent the scope holds nobody back."""
    env.fake.scope = {ROOM}
    env.fake.tenant_wide_consent = True
    env.send(meeting("consented", "<p>TOK:-00000000-0000-4000-8000-0000000000cc#</p>"))
    spoolkit.wait_for(lambda: (ORGANIZER, "consented") in env.fake.patches)


def test_check_online_warns_when_the_app_reaches_a_mailbox_outside_its_scope(env: Env) -> None:
    cfg, integ = env.svc.config, env.svc.config.integrations[0]
    env.fake.scope = {ROOM, ORGANIZER}  # RBAC for Applications: the room and its organizers
    *_, (ok, text) = service.check_online(cfg, integ, outside="ceo@contoso.example")
    assert ok is True and "ceo@contoso.example is out of reach" in text, text
    env.fake.tenant_wide_consent = True  # admin consent granted in Entra as well
    *_, (ok, text) = service.check_online(cfg, integ, outside="ceo@contoso.example")
    assert ok is None, text  # a warning: it works, and reaches every mailbox
    assert "tenant-wide" in text and "consent" in text and "ceo@contoso.example" in text
    checks = service.check_online(cfg, integ, ORGANIZER, "ceo@contoso.example")
    assert [ok for ok, _ in checks] == [True, True, True, None]


def test_an_outage_backs_off_with_the_alarm_and_loses_nothing(env: Env) -> None:
    rec = env.reserve()
    env.send(meeting("before", pxps(rec)))
    port = env.world.graph_server.port
    env.world.graph_server.stop()
    spoolkit.wait_for(
        lambda: "exchange_unreachable" in {a.name for a in env.svc.ctx.alarms.active("online")},
        timeout=20,
    )
    waiting = env.fake.deliver(ROOM, meeting("during", pxps(env.reserve())))
    assert env.svc.ctx.status.state("online") == "running"  # backing off, not crashing
    env.world.graph_server = ThreadedServer(env.fake.app(), port=port).start()
    spoolkit.wait_for(lambda: waiting.id not in env.fake.mailbox(ROOM).inbox, timeout=30)
    env.settle()
    assert [r.action for r in env.fake.responses_for("during")] == ["accept"]
    spoolkit.wait_for(
        lambda: "exchange_unreachable" not in {a.name for a in env.svc.ctx.alarms.active("online")}
    )


def test_a_certificate_credential_signs_in_instead_of_a_secret(tmp_path: Path) -> None:
    """msal signs a client assertion with the certificate's key; the identity platform checks
    it against the certificate registered for the app, and refuses another one."""
    from cryptography import x509

    from vmrsched.mailbox.graph import GraphMailbox
    from vmrsched.telemetry import Metrics

    stack = ExitStack()
    world = stack.enter_context(graph_world(tmp_path))
    platform, cert = world.platform, world.cert
    credential = tmp_path / "graph-app.pem"
    credential.write_bytes(world.key.read_bytes() + cert.read_bytes())
    graph = world.integration(client_certificate_file=str(credential))
    del graph["graph"]["client_secret_env"]
    doc = {"server": {"data_dir": str(tmp_path / "data")}, "integrations": [graph]}
    integ = config.parse(doc, tmp_path, {}).integrations[0]
    try:
        platform.client_certificate = x509.load_pem_x509_certificate(cert.read_bytes())
        gateway = GraphMailbox(integ, Metrics(), tmp_path / "state")
        assert [ok for ok, _ in gateway.probe()] == [True, True]
        assert platform.grants == ["client_credentials"]
        gateway.close()
        (tmp_path / "other").mkdir()
        other, _ = tls_files(tmp_path / "other")
        platform.client_certificate = x509.load_pem_x509_certificate(other.read_bytes())
        gateway = GraphMailbox(integ, Metrics(), tmp_path / "state")
        [(ok, text)] = gateway.probe()
        assert not ok and "invalid_client" in text
        gateway.close()
    finally:
        stack.close()


# --- issue 26: Exchange Online faults ----------------------------------------------------------


def _alarms(env: Env) -> set[str]:
    return {a.name for a in env.svc.ctx.alarms.active("online")}


def _restarts(env: Env) -> float:
    return sum(
        env.svc.ctx.metrics.registry.get_sample_value(
            "vmrsched_actor_restarts_total", {"integration": "online", "actor": actor}
        )
        or 0.0
        for actor in ("poller", "notifier", "allocator")
    )


def test_an_identity_platform_outage_backs_off_with_the_alarm_and_recovers_at_once(
    env: Env,
) -> None:
    """The token endpoint answers 503 (msal raises MsalServiceError): an outage like any other,
    not a crash loop. The poller backs off with exchange_unreachable, the integration stays
    running (and ready), and once the platform is back the waiting meeting is answered within
    a poll or two, not after msal's own throttling or an integration restart's backoff."""
    rec = env.reserve()
    env.send(meeting("before", pxps(rec)))
    waiting_rec = env.reserve()
    env.platform.unavailable = 503
    env.platform.expire_all()  # Graph refuses the token we hold: a new one is needed
    spoolkit.wait_for(lambda: "exchange_unreachable" in _alarms(env), timeout=10)
    waiting = env.fake.deliver(ROOM, meeting("during", pxps(waiting_rec)))
    time.sleep(1.5)  # several polls' worth of refused sign-ins
    assert env.platform.refused >= 2
    assert waiting.id in env.fake.mailbox(ROOM).inbox
    assert env.svc.ctx.status.state("online") == "running"
    assert "integration_failed" not in _alarms(env) and _restarts(env) == 0
    assert env.svc.readiness()[0]

    env.platform.unavailable = 0
    back = time.monotonic()
    spoolkit.wait_for(lambda: waiting.id not in env.fake.mailbox(ROOM).inbox, timeout=10)
    assert time.monotonic() - back < 3.0  # mailbox_max is 1 s here: a poll or two
    env.settle()
    assert [r.action for r in env.fake.responses_for("during")] == ["accept"]
    spoolkit.wait_for(lambda: "exchange_unreachable" not in _alarms(env))
    assert _restarts(env) == 0


def test_a_token_endpoint_outage_is_a_gateway_error_with_the_platforms_retry_after(
    tmp_path: Path,
) -> None:
    from vmrsched.mailbox.base import GatewayError
    from vmrsched.mailbox.graph import GraphMailbox
    from vmrsched.telemetry import Metrics

    with graph_world(tmp_path) as world:
        doc = {
            "server": {"data_dir": str(tmp_path / "data")},
            "integrations": [world.integration()],
        }
        integ = config.parse(doc, tmp_path, {"GRAPH_SECRET": SECRET}).integrations[0]
        gateway = GraphMailbox(integ, Metrics(), tmp_path / "state")
        try:
            world.platform.unavailable, world.platform.retry_after = 503, "7"
            with pytest.raises(GatewayError) as raised:
                gateway.tokens.get()
            assert not raised.value.permanent and raised.value.retry_after == 7
            assert "503" in str(raised.value)
            world.platform.unavailable = 0
            assert gateway.tokens.get()  # back: no cached refusal outlives the outage
        finally:
            gateway.close()


@pytest.mark.parametrize("how", ["hold", "drop"])
def test_a_call_carried_out_whose_answer_was_lost_is_checked_not_sent_again(
    env: Env, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """Graph carries out the accept (in a $batch) and the organizer PATCH, but the answer never
    arrives: held past the client's timeout, or the connection dropped. The notifier does not
    know whether they took effect, so it asks (the room's event's response, the token in the
    organizer's body) before sending again: one response, one update to every attendee."""
    from vmrsched.mailbox import graph_http

    monkeypatch.setattr(graph_http, "REQUEST_TIMEOUT", 0.5)
    env.fake.hold_seconds = 1.5
    env.send(meeting("warm", "<p>nothing</p>"))
    env.fake.lose_answer("POST", r"/events/[^/]+/accept$", how)
    env.fake.lose_answer("PATCH", r"/users/[^/]+/events/", how)
    env.fake.deliver(ROOM, meeting("lost", "<p>TOK:-00000000-0000-4000-8000-0000000000dd#</p>"))
    spoolkit.wait_for(lambda: (ORGANIZER, "lost") in env.fake.patches, timeout=20)
    spoolkit.wait_for(lambda: not env.fake.mailbox(ROOM).inbox, timeout=20)  # and the echo
    env.settle()
    time.sleep(env.fake.hold_seconds)  # anything sent twice has arrived by now
    assert [how for _, _, how in env.fake.lost] == [how, how]  # both answers were lost
    assert [r.action for r in env.fake.responses_for("lost")] == ["accept"]
    assert env.fake.patches.count((ORGANIZER, "lost")) == 1
    event = env.fake.organizer_event(ORGANIZER, "lost")
    assert event is not None and event.meeting.html_body.count("PXPS:-") == 1
    spoolkit.wait_for(lambda: "exchange_unreachable" not in _alarms(env))
    assert "delivery_failed" not in _alarms(env)
