"""A reply that failed for good through Graph waits for an admin, across restarts: `failed` lists
it, its meeting request stays in the room's inbox (it is still unanswered), and the admin's retry
over the admin API answers it, once; a retry that cannot answer it (its message deleted
meanwhile) fails the reply again, never reporting it sent. Against the fake Graph and identity
platform over real HTTP(S), the service restarted as an admin restarts it (stopped cleanly,
started again)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests import spoolkit
from tests.configs import reserve_alias
from tests.fakes.threaded import ThreadedServer
from tests.graphkit import ADMIN_TOKEN, ROOM, GraphWorld, graph_world, meeting, pxps, start_service
from tests.serving import free_port
from vmrsched.http.app import create_app

BEARER = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


class Admin:
    """The service with its admin API served on a port of its own; `restart` stops both and
    starts them again on the same data directory and port."""

    def __init__(self, world: GraphWorld, directory: Path) -> None:
        self.world = world
        self.directory = directory
        self.port = free_port()
        self._start()

    def _start(self) -> None:
        self.svc = start_service(
            self.world,
            self.directory,
            listen=f"127.0.0.1:{self.port}",
            admin_token_env="ADMIN_TOKEN",
        )
        self.http = ThreadedServer(create_app(self.svc), port=self.port).start()
        spoolkit.wait_for(lambda: self.svc.ctx.status.state("online") == "running")

    def stop(self) -> None:
        self.http.stop()
        self.svc.stop()

    def restart(self, meanwhile: Callable[[], object] = lambda: None) -> None:
        """Stop, do `meanwhile` (what happens while the service is down), start again."""
        self.stop()
        meanwhile()
        self._start()

    def api(self, method: str, path: str) -> requests.Response:
        url = f"http://127.0.0.1:{self.port}/api/admin/v1/integrations/online{path}"
        return requests.request(method, url, headers=BEARER, timeout=30)

    def failed(self) -> list[dict[str, Any]]:
        answer = self.api("GET", "/messages")
        assert answer.status_code == 200, answer.text
        failed: list[dict[str, Any]] = answer.json()["failed"]
        return failed

    def listings(self) -> int:
        fake = self.world.fake
        return sum(1 for m, p in list(fake.requests) if m == "GET" and p.endswith("/messages"))


@pytest.fixture
def admin(tmp_path: Path) -> Iterator[Admin]:
    with graph_world(tmp_path) as world:
        running = Admin(world, tmp_path)
        try:
            yield running
        finally:
            running.stop()


def test_a_reply_failed_for_good_is_answered_by_the_admins_retry_after_a_restart(
    admin: Admin,
) -> None:
    fake = admin.world.fake
    rec = reserve_alias(admin.svc.ctx.registry.get("online", "allocator"))
    fake.refuse("POST", r"/events/[^/]+/accept$", 400, "ErrorInvalidRequest")
    request = fake.deliver(ROOM, meeting("refused", pxps(rec)))
    spoolkit.wait_for(lambda: len(admin.failed()) == 1, timeout=20)
    [failed] = admin.failed()
    assert failed["kind"] == "reply" and failed["meeting_uid"] == "refused"
    assert "ErrorInvalidRequest" in failed["failure"]
    assert fake.responses_for("refused") == []
    assert request.id in fake.mailbox(ROOM).inbox  # unanswered: waiting for an admin

    admin.restart()
    listed = admin.listings()
    spoolkit.wait_for(lambda: admin.listings() >= listed + 3, timeout=20)  # read again, decided
    assert [f["id"] for f in admin.failed()] == [failed["id"]]
    assert request.id in fake.mailbox(ROOM).inbox  # still unanswered: not taken for answered
    assert fake.responses_for("refused") == []

    retried = admin.api("POST", f"/messages/{failed['id']}/retry")
    assert retried.status_code == 202, retried.text
    spoolkit.wait_for(lambda: fake.responses_for("refused"), timeout=20)
    spoolkit.wait_for(lambda: request.id not in fake.mailbox(ROOM).inbox, timeout=20)
    notifier = admin.svc.ctx.registry.get("online", "notifier")
    spoolkit.wait_for(lambda: notifier.proxy().pending().get(timeout=5) == 0, timeout=20)
    assert [r.action for r in fake.responses_for("refused")] == ["accept"]
    assert admin.failed() == []
    event = next(e for e in fake.mailbox(ROOM).events.values() if e.uid == "refused")
    assert event.response == "accepted"


def test_a_retry_whose_request_is_gone_fails_again_and_is_not_reported_sent(
    admin: Admin,
) -> None:
    """The failed reply's meeting message is deleted by hand while the service is stopped: the
    admin's retry cannot answer it, so the reply is failed again with that reason (listed, the
    alarm raised), never marked sent."""
    fake = admin.world.fake
    rec = reserve_alias(admin.svc.ctx.registry.get("online", "allocator"))
    fake.refuse("POST", r"/events/[^/]+/accept$", 400, "ErrorInvalidRequest")
    request = fake.deliver(ROOM, meeting("deleted", pxps(rec)))
    spoolkit.wait_for(lambda: len(admin.failed()) == 1, timeout=20)
    [failed] = admin.failed()
    admin.restart(meanwhile=lambda: fake.mailbox(ROOM).inbox.pop(request.id))

    retried = admin.api("POST", f"/messages/{failed['id']}/retry")
    assert retried.status_code == 202, retried.text
    spoolkit.wait_for(lambda: bool(admin.failed()) and admin.failed()[0]["at"] != failed["at"])
    [again] = admin.failed()
    assert again["id"] == failed["id"] and "ErrorItemNotFound" in again["failure"]
    assert "delivery_failed" in {a.name for a in admin.svc.ctx.alarms.active("online")}
    assert fake.responses_for("deleted") == []
