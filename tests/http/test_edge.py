"""The HTTP edge as a hostile user meets it: admin login guessing, open redirects, DNS rebinding,
impossible dates, control characters in the manifest, version banners, unhardened pages."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from lxml import etree

from tests import spoolkit
from vmrsched import config, service
from vmrsched.http.app import create_app
from vmrsched.store import Store

TOKEN = "correct-horse-battery-staple-0123456789"
API = "/api/addin/v1/default/single-use-vmrs"


def make_config(tmp_path: Path, **server: Any) -> config.Config:
    doc = {
        "server": {
            "listen": "127.0.0.1:0",
            "data_dir": str(tmp_path / "data"),
            "admin_token_env": "VMRSCHED_ADMIN_TOKEN",
            **server,
        },
        "integrations": [
            {
                "name": "default",
                "exchange": {"mailbox_name": "Room", "mailbox_email": "vmr@example.com"},
                "addin": {"token_validation": "none"},
            }
        ],
    }
    return config.parse(doc, tmp_path, {"VMRSCHED_ADMIN_TOKEN": TOKEN})


@pytest.fixture
def svc(tmp_path: Path) -> Iterator[service.Service]:
    running = service.start(make_config(tmp_path))
    spoolkit.wait_for(lambda: running.ctx.status.state("default") == "running")
    yield running
    running.stop()


def test_a_short_admin_token_and_none_with_a_public_url_are_refused(tmp_path: Path) -> None:
    doc = {
        "server": {
            "data_dir": str(tmp_path),
            "admin_token_env": "T",
            "public_url": "https://vmr.example.com",
        },
        "integrations": [
            {
                "name": "x",
                "exchange": {"mailbox_name": "R", "mailbox_email": "r@example.com"},
                "addin": {"token_validation": "none"},
            }
        ],
    }
    with pytest.raises(config.ConfigError) as caught:
        config.parse(doc, tmp_path, {"T": "x"})
    problems = "\n".join(caught.value.problems)
    assert "server.admin_token: too short" in problems
    assert "integrations[0].addin.token_validation: 'none' is allowed only" in problems


async def test_admin_login_is_rate_limited_logged_and_uses_a_session(
    client: TestClient[Any, Any], caplog: pytest.LogCaptureFixture
) -> None:
    statuses = []
    for _ in range(8):
        response = await client.post("/admin/login", data={"token": "guess"}, allow_redirects=False)
        statuses.append(response.status)
    assert statuses[:5] == [401] * 5 and statuses[5:] == [429] * 3
    assert "Retry-After" in response.headers
    assert sum("admin login failed" in r.getMessage() for r in caplog.records) == 5
    assert any("too many attempts" in r.getMessage() for r in caplog.records)


async def test_the_session_cookie_is_not_the_token(tmp_path: Path) -> None:
    running = service.start(make_config(tmp_path, public_url="https://localhost:8443"))
    try:
        async with TestClient(TestServer(create_app(running))) as client:
            response = await client.post(
                "/admin/login", data={"token": TOKEN, "next": "/readyz"}, allow_redirects=False
            )
            assert response.status == 303
            cookie = response.cookies["vmrsched_admin"]
            assert cookie.value != TOKEN and len(cookie.value) >= 40
            assert cookie["secure"] and cookie["httponly"] and cookie["samesite"] == "Lax"
            assert int(cookie["max-age"]) <= 8 * 3600
            forged = await client.get(
                "/admin/integrations/default/sign-in",
                headers={"Cookie": f"vmrsched_admin={TOKEN}"},
                allow_redirects=False,
            )
            assert forged.status == 401  # the token itself is not a session
    finally:
        running.stop()


@pytest.mark.parametrize(
    "target", ["/\t/evil.example", "//evil.example", "/\\evil.example", "https://evil.example"]
)
async def test_no_open_redirect_after_login(client: TestClient[Any, Any], target: str) -> None:
    response = await client.post(
        "/admin/login", data={"token": TOKEN, "next": target}, allow_redirects=False
    )
    assert response.status == 303 and response.headers["Location"] == "/admin"


async def test_a_foreign_host_name_is_refused(client: TestClient[Any, Any]) -> None:
    evil = {"Host": "a.evil.example", "Origin": "http://a.evil.example"}
    response = await client.post(API, json={}, headers=evil)
    assert response.status == 421
    assert (await response.json())["error"]["code"] == "host_not_allowed"
    response = await client.post("/api/demo/v1/default/send", json={}, headers=evil)
    assert response.status == 421
    assert (await client.get("/healthz", headers={"Host": "10.1.2.3:8080"})).status == 200
    assert (await client.post(API, json={})).status == 201  # under its own name


async def test_a_fault_of_ours_is_a_500_in_json_naming_a_logged_correlation_id(
    client: TestClient[Any, Any],
    svc: service.Service,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """DESIGN: errors are JSON with a code, a bug included; the id leads to the traceback."""

    def broken() -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(svc, "readiness", broken)
    with caplog.at_level(logging.ERROR, logger="vmrsched.http"):
        response = await client.get("/readyz")
    assert response.status == 500
    error = (await response.json())["error"]
    assert error["code"] == "internal_error"
    [logged] = [r for r in caplog.records if r.exc_info]
    assert logged.correlation_id in error["message"]  # type: ignore[attr-defined]
    assert "a bug" not in error["message"]  # what failed inside stays in the log


async def test_a_client_that_hangs_up_mid_request_is_no_fault_of_ours(
    svc: service.Service, caplog: pytest.LogCaptureFixture
) -> None:
    """A client gone while its request was on its way (a pane that gave up; an instance that
    stopped waiting for the one it passed the request to, seen by that one once it runs
    again): aiohttp's reading of the body raises ConnectionResetError, which is one info line,
    no traceback, and not a 500 of ours. A route of the real app, behind the real middleware,
    meets that error as aiohttp raises it."""

    async def hung_up(request: web.Request) -> web.Response:
        await request.read()
        raise ConnectionResetError("Connection lost")  # aiohttp's StreamReader, on a lost peer

    app = create_app(svc)
    app.router.add_post("/api/addin/v1/default/hung-up", hung_up)
    caplog.set_level(logging.INFO, logger="vmrsched.http")
    async with TestClient(TestServer(app)) as client:
        answer = await client.post("/api/addin/v1/default/hung-up", json={})
        assert answer.status == 499 and (await answer.json())["error"]["code"] == "client_gone"
        assert (await client.post(API, json={})).status == 201  # and the next one is served
    assert "the client went away before its request was read" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


async def test_an_impossible_date_is_a_400_and_reserves_nothing(
    client: TestClient[Any, Any], svc: service.Service
) -> None:
    response = await client.post(API, json={"start": "0001-01-01T00:00:00+14:00"})
    assert response.status == 400
    assert (await response.json())["error"]["code"] == "bad_request"
    svc.stop()
    store = Store(svc.config.data_dir / "store" / "default")
    assert len(store) == 0
    store.close()


async def test_control_characters_cannot_break_the_manifest(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    integ = cfg.integrations[0]
    evil = replace(integ, addin=replace(integ.addin, display_name="Video\x01\x0bRoom"))
    running = service.start(replace(cfg, integrations=(evil,)))
    try:
        async with TestClient(TestServer(create_app(running))) as client:
            body = await (await client.get("/addin/default/manifest.xml")).read()
        etree.fromstring(body)  # well-formed
        assert b"VideoRoom" in body
    finally:
        running.stop()


async def test_no_versions_in_server_and_support_is_hardened(
    client: TestClient[Any, Any],
) -> None:
    response = await client.get("/addin/default/support")
    assert response.headers["Server"] == "vmrsched"
    for path in ("/admin/login", "/", "/healthz", "/nowhere"):  # every answer, errors too
        assert (await client.get(path)).headers["X-Content-Type-Options"] == "nosniff", path
    assert "default-src 'none'" in response.headers["Content-Security-Policy"]
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"] == "same-origin"
