"""Handled messages whose removal from the room's inbox Graph keeps refusing (a 403 the app's
permissions earn, a server error) are answered once, and the admin hears of it: the alarm
`inbox_not_emptied` after three refused syncs in a row, cleared by the first removal that
works. A throttled removal is waited out and raises nothing. Against the fake Graph over real
HTTPS."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import spoolkit
from tests.configs import reserve_alias
from tests.graphkit import ROOM, GraphWorld, graph_world, meeting, pxps, start_service
from vmrsched import service
from vmrsched.telemetry import INBOX_NOT_EMPTIED

DELETE = r"/messages/[^/]+$"


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[GraphWorld, service.Service]]:
    with graph_world(tmp_path) as made:
        svc = start_service(made, tmp_path)
        try:
            spoolkit.wait_for(lambda: svc.ctx.status.state("online") == "running")
            yield made, svc
        finally:
            svc.stop()


def _alarm(svc: service.Service) -> str | None:
    found = [a for a in svc.ctx.alarms.active("online") if a.name == INBOX_NOT_EMPTIED]
    return found[0].message if found else None


def _book(world: GraphWorld, svc: service.Service, uid: str) -> None:
    """A meeting request answered (accepted) by the service."""
    rec = reserve_alias(svc.ctx.registry.get("online", "allocator"))
    world.fake.deliver(ROOM, meeting(uid, pxps(rec)))
    spoolkit.wait_for(lambda: world.fake.responses_for(uid), timeout=20)


def test_removals_refused_again_and_again_raise_the_alarm_until_one_works(
    world: tuple[GraphWorld, service.Service],
) -> None:
    fake, svc = world[0].fake, world[1]
    fake.refuse("DELETE", DELETE, 403, "ErrorAccessDenied", times=1000)
    _book(world[0], svc, "first")
    assert _alarm(svc) is None  # one refused sync is a blip, not a condition
    for uid in ("second", "third", "fourth"):
        _book(world[0], svc, uid)
    spoolkit.wait_for(lambda: _alarm(svc) is not None, timeout=20)
    message = _alarm(svc)
    assert message is not None and "ErrorAccessDenied" in message and "403" in message
    assert len(fake.mailbox(ROOM).inbox) == 4  # answered, and still there
    for uid in ("first", "second", "third", "fourth"):
        assert len(fake.responses_for(uid)) == 1  # answered once

    with fake.lock:
        fake.refusing.clear()
    _book(world[0], svc, "fifth")
    spoolkit.wait_for(lambda: _alarm(svc) is None, timeout=20)
    spoolkit.wait_for(lambda: not fake.mailbox(ROOM).inbox, timeout=20)


def test_throttled_removals_are_waited_out_without_an_alarm(
    world: tuple[GraphWorld, service.Service],
) -> None:
    fake, svc = world[0].fake, world[1]
    fake.throttle("DELETE", DELETE, times=6, retry_after=1)
    for uid in ("a", "b", "c", "d"):
        _book(world[0], svc, uid)
    spoolkit.wait_for(lambda: not fake.mailbox(ROOM).inbox, timeout=30)
    assert _alarm(svc) is None
