"""The Graph backend under Exchange Online's timing: throttling that Graph reports per app and
mailbox (a whole answer or one part of a $batch answered 429 with Retry-After), and the Calendar
Attendant putting a request on the room's calendar a moment after its message arrives. Over real
HTTP to the fake Graph, the service's actors unmodified: each answer is carried out once, a
Retry-After holds every call to the mailbox (reading and sending) until it has passed, a request
whose room event is not there yet is answered once it is, and each message is removed once."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests import spoolkit
from tests.configs import reserve_alias
from tests.fakes.graph_server import FakeGraph
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
from vmrsched.mailbox.graph import GraphMailbox
from vmrsched.outgoing import Outgoing
from vmrsched.rules.meetings import Meeting
from vmrsched.telemetry import Metrics


@dataclass
class Env:
    world: GraphWorld
    svc: service.Service

    @property
    def fake(self) -> FakeGraph:
        return self.world.fake

    def reserve(self) -> str:
        spoolkit.wait_for(lambda: self.svc.ctx.status.state("online") == "running")
        return pxps(reserve_alias(self.svc.ctx.registry.get("online", "allocator")))

    def settle(self) -> None:
        notifier = self.svc.ctx.registry.get("online", "notifier")
        spoolkit.wait_for(lambda: notifier.proxy().pending().get(timeout=5) == 0, timeout=30)

    def handled(self, *meetings: Meeting) -> None:
        for one in meetings:
            self.fake.deliver(ROOM, one)
        spoolkit.wait_for(lambda: not self.fake.mailbox(ROOM).inbox, timeout=30)
        self.settle()

    def metric(self, name: str, **labels: str) -> float:
        value = self.svc.ctx.metrics.registry.get_sample_value(name, labels)
        return value or 0.0

    def alarms(self) -> set[str]:
        return {a.name for a in self.svc.ctx.alarms.active("online")}

    def calls_while_held(self, retry_after: float) -> list[tuple[float, str, str, bool]]:
        """Calls that reached Graph after its first 429 left and before the Retry-After it named
        had passed. A tenth of a second is left for calls of another thread already on their
        way, but not for a removal: only the throttled answer's own thread removes."""
        [throttled, *_] = self.fake.throttled_at
        return [
            (round(at - throttled, 3), method, path, batched)
            for at, method, path, batched in self.fake.timeline
            if throttled < at < throttled + retry_after - 0.1
            and (at > throttled + 0.1 or method == "DELETE")
        ]


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    with graph_world(tmp_path) as world:
        env = Env(world, start_service(world, tmp_path))
        try:
            yield env
        finally:
            env.svc.stop()


def test_an_answer_carried_out_is_not_sent_again_when_its_removal_is_throttled(env: Env) -> None:
    """The inbox is listed before the Calendar Attendant has put the request on the room's
    calendar (so the answer finds the room's event by the message, alone), and the removal of
    the answered message is throttled twice. Graph carried out the accept at once: it is noted
    before anything else, and only the removal is retried, never the accept (finding 1)."""
    body = env.reserve()
    env.fake.calendar_lag = 3600  # the attendant waits for the test's word
    env.fake.hold_seconds = 1.0  # the MIME read is slow: the event appears meanwhile
    env.fake.lose_answer("GET", r"/\$value$", "hold")
    env.fake.throttle("DELETE", r"/messages/", times=2, retry_after=1)
    message = env.fake.deliver(ROOM, meeting("slow-room", body))
    spoolkit.wait_for(lambda: env.fake.lost, timeout=10)  # listed without its event
    env.fake.calendar_catch_up()
    spoolkit.wait_for(lambda: message.id not in env.fake.mailbox(ROOM).inbox, timeout=30)
    env.settle()
    assert len(env.fake.throttled_at) == 2  # both removals were refused
    assert [r.action for r in env.fake.responses_for("slow-room")] == ["accept"]
    accepts = env.metric(
        "vmrsched_exchange_requests_total", integration="online", operation="accept", result="202"
    )
    assert accepts == 1
    assert "delivery_failed" not in env.alarms()


def test_a_throttled_removal_in_a_batch_holds_every_call_for_its_retry_after(env: Env) -> None:
    """Graph answers the removal of an answered message, a part of a $batch, 429 with
    Retry-After in that part's own headers: nothing is sent to the mailbox before the wait has
    passed, neither the removal again nor a listing (finding 2)."""
    bodies = [env.reserve() for _ in range(3)]
    env.fake.throttle("DELETE", r"/messages/", retry_after=2)
    env.handled(*(meeting(f"ra-{i}", body) for i, body in enumerate(bodies)))
    assert env.fake.throttled_at, "the removal was never throttled"
    assert env.calls_while_held(2) == []
    for i in range(3):
        assert [r.action for r in env.fake.responses_for(f"ra-{i}")] == ["accept"]


def test_a_throttled_answer_holds_reading_as_well_as_sending(env: Env) -> None:
    """Graph throttles the accepts (429 with Retry-After on the first, in the answers' $batch):
    throttling is per app and mailbox, so the poller stops listing the inbox too, and no other
    meeting's answer or removal goes out, until the Retry-After has passed; then each meeting
    is answered once (finding 3)."""
    bodies = [env.reserve() for _ in range(3)]
    env.fake.throttle("POST", r"/events/[^/]+/accept$", retry_after=2)
    env.handled(*(meeting(f"busy-{i}", body) for i, body in enumerate(bodies)))
    assert env.fake.throttled_at, "the accept was never throttled"
    assert env.calls_while_held(2) == []
    for i in range(3):
        assert [r.action for r in env.fake.responses_for(f"busy-{i}")] == ["accept"]
    spoolkit.wait_for(lambda: "exchange_unreachable" not in env.alarms())


def test_a_request_whose_room_event_comes_late_is_answered_once_it_is_there(env: Env) -> None:
    """The Calendar Attendant puts the request on the room's calendar 1.5 s after the message
    arrives: until then there is nothing to accept. That is transient: the answer is retried on
    its own (the message's backoff) and goes out once the event is there, not failed for good
    (finding 4)."""
    body = env.reserve()
    env.fake.calendar_lag = 1.5
    env.handled(meeting("late-event", body))
    assert [r.action for r in env.fake.responses_for("late-event")] == ["accept"]
    notifier = env.svc.ctx.registry.get("online", "notifier")
    assert notifier.proxy().failed().get(timeout=5) == 0
    assert "delivery_failed" not in env.alarms()


def _reply(item_id: str, uid: str) -> Outgoing:
    return Outgoing(
        id=f"reply-{uid}",
        kind="reply",
        sender=ROOM,
        sender_name="Video Room",
        recipients=(ORGANIZER,),
        subject="Accepted: Weekly sync",
        html_body="<p>Booked</p>",
        outcome="accepted",
        reason="new_single",
        correlation_id="c1",
        meeting_uid=uid,
        extra={"item_id": item_id},
    )


def test_each_message_is_removed_once_whoever_asks(tmp_path: Path) -> None:
    """After a restart, a message answered before the crash but not yet removed is asked for
    twice: the poller reads it again and marks it handled, and the notifier finds its reply
    carried out (`delivered`). Either order, one DELETE per message (finding 5)."""
    stack = ExitStack()
    world = stack.enter_context(graph_world(tmp_path))
    fake = world.fake
    doc = {"server": {"data_dir": str(tmp_path / "data")}, "integrations": [world.integration()]}
    integ = config.parse(doc, tmp_path, {"GRAPH_SECRET": SECRET}).integrations[0]
    try:
        before = GraphMailbox(integ, Metrics(), tmp_path / "graph-state")
        first = fake.deliver(ROOM, meeting("first", "<p>PXPS:-x#</p>"))
        second = fake.deliver(ROOM, meeting("second", "<p>PXPS:-y#</p>"))
        before.fetch(10)
        for message in (first, second):
            before.send(_reply(message.id, str(message.meeting and message.meeting.uid)))
        before.close()  # the crash: answered, maybe not removed
        with fake.lock:  # as the crash left them: accepted, still in the inbox
            for message in (first, second):
                fake.mailbox(ROOM).inbox[message.id] = message
            fake.requests.clear()
            fake.batched_calls.clear()

        gateway = GraphMailbox(integ, Metrics(), tmp_path / "graph-state")
        stack.callback(gateway.close)
        assert {item.id for item in gateway.fetch(10)} == {first.id, second.id}
        # the first: the poller marks it handled, then the notifier asks
        gateway.mark_handled(first.id)
        assert gateway.delivered(_reply(first.id, "first"))
        gateway.sync()
        # the second: the notifier asks and removes it, then the poller marks it handled
        assert gateway.delivered(_reply(second.id, "second"))
        gateway.sync()
        gateway.mark_handled(second.id)
        gateway.sync()

        assert not fake.mailbox(ROOM).inbox
        deletes = [
            path
            for method, path in [*fake.requests, *fake.batched_calls]
            if method == "DELETE" and "/messages/" in path
        ]
        assert sorted(deletes) == sorted(
            f"/v1.0/users/{ROOM}/messages/{m.id}" for m in (first, second)
        )
        assert len(fake.responses_for("first")) == len(fake.responses_for("second")) == 1
    finally:
        stack.close()
