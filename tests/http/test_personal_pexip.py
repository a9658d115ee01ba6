"""GET /api/addin/v1/{integration}/personal-vmrs with the rooms on Pexip (`source = "pexip"`),
over real HTTP, against the fake Management Node: when the node answers too slowly, or refuses
to create a new user, the pane hears 503 directory_unavailable with the configured message in
time, the log says why, and the next request asks Pexip again."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from tests import spoolkit
from tests.fakes.pexip_server import FakePexip, trickled
from tests.fakes.threaded import ThreadedServer
from vmrsched import config, service

PASSWORD = "management-password-not-to-be-seen"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Misbehaving:
    """The fake Management Node, with what it does wrong switched on by the test: `trickle`
    sends every list a byte every 50 ms; `refuse` answers POST end_user with that status and
    one of Pexip's per-field errors."""

    def __init__(self) -> None:
        self.fake = FakePexip(password=PASSWORD)
        self.trickle = False
        self.refuse = 0
        self.posts = 0
        app = self.fake.app()
        app.middlewares.append(self.misbehave)
        self.server = ThreadedServer(app).start()

    @web.middleware
    async def misbehave(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method == "POST":
            self.posts += 1
            if self.refuse:
                error = {"primary_email_address": ["Enter a valid email address."]}
                return web.json_response({"end_user": error}, status=self.refuse)
        answer = await handler(request)
        if not self.trickle or not isinstance(answer, web.Response):
            return answer
        return await trickled(request, answer)


@pytest.fixture
def pexip() -> Iterator[Misbehaving]:
    node = Misbehaving()
    yield node
    node.server.stop()


@pytest.fixture
def svc(tmp_path: Path, pexip: Misbehaving) -> Iterator[service.Service]:
    doc = {
        "server": {"data_dir": str(tmp_path / "data")},
        "integrations": [
            {
                "name": "onpexip",
                "enable_single_use_vmrs": False,
                "enable_personal_vmrs": True,
                "addin": {"token_validation": "none", "server_fqdn": "vmr.example.com"},
                "personal": {"source": "pexip", "allow_new_users": True},
                "pexip": {
                    "management_url": pexip.server.url,
                    "management_username": "admin",
                    "management_password_env": "PX",
                    "request_timeout_seconds": 1.0,
                },
            }
        ],
    }
    running = service.start(config.parse(doc, tmp_path, {"PX": PASSWORD}))
    spoolkit.wait_for(lambda: running.ctx.status.state("onpexip") == "running")
    yield running
    running.stop()


async def ask(client: TestClient[Any, Any], user: str) -> tuple[int, dict[str, Any], float]:
    started = time.monotonic()
    response = await client.get("/api/addin/v1/onpexip/personal-vmrs", params={"user": user})
    return response.status, await response.json(), time.monotonic() - started


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


async def test_a_trickling_management_node_is_503_within_the_timeout(
    client: TestClient[Any, Any], pexip: Misbehaving, caplog: pytest.LogCaptureFixture
) -> None:
    pexip.fake.add_end_user("olga@example.com")
    pexip.trickle = True
    caplog.set_level(logging.WARNING, logger="vmrsched")
    status, body, took = await ask(client, "olga@example.com")
    assert (status, body["error"]["code"]) == (503, "directory_unavailable")
    assert body["error"]["message"] == (
        "Your personal rooms could not be loaded. Please try again later."
    )
    assert took < 2.0  # request_timeout_seconds = 1 for the whole lookup
    [said] = warnings(caplog)
    assert "olga@example.com" in said and "within 1 s" in said
    pexip.trickle = False
    assert (await ask(client, "olga@example.com"))[:2] == (200, {"vmrs": []})


async def test_a_refused_creation_is_503_naming_pexips_answer_and_asked_again(
    client: TestClient[Any, Any], pexip: Misbehaving, caplog: pytest.LogCaptureFixture
) -> None:
    pexip.refuse = 400
    caplog.set_level(logging.WARNING, logger="vmrsched")
    for _ in range(2):
        status, body, _ = await ask(client, "new.starter@example.com")
        assert (status, body["error"]["code"]) == (503, "directory_unavailable")
    assert pexip.posts == 2  # nothing cached: each request asks Pexip
    said = warnings(caplog)
    assert len(said) == 2
    assert "(400)" in said[0] and "Enter a valid email address." in said[0]
    assert PASSWORD not in said[0]
    pexip.refuse = 0
    assert (await ask(client, "new.starter@example.com"))[:2] == (200, {"vmrs": []})
    assert pexip.posts == 3
