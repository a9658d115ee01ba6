"""The admin's OpenID Connect sign-in over real HTTP: our server, the fake identity platform
over TLS (it signs its user in at once and lists the user's groups in the ID token, or past 200
groups only a pointer to Graph, as Entra ID does). A member of the admin group gets a console
session that names them in every logged act; anyone else, a replayed, forged or forwarded answer
(finished in a browser that did not start it), a token from another issuer, and too many
attempts are refused, and none of them gets a session."""

from __future__ import annotations

import logging
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from aiohttp.test_utils import TestClient
from yarl import URL

from tests import spoolkit
from tests.fakes import identity_platform
from tests.fakes.identity_platform import IdentityPlatform
from vmrsched import config, service

ADMINS = "6f1c2d1e-0000-4000-8000-00000000ad01"  # the admin group's object id


@pytest.fixture
def platform(tmp_path: Path) -> Iterator[tuple[IdentityPlatform, Path]]:
    with identity_platform.running(
        tmp_path,
        "Ada@Example.com",
        client_id="admin-console",
        client_secret="console-secret",
        groups=["0a0a0a0a-0000-4000-8000-000000000001", ADMINS],
    ) as running:
        yield running


def configured(tmp_path: Path, idp: IdentityPlatform, ca: Path, **sign_in: Any) -> config.Config:
    doc = {
        "server": {
            "data_dir": str(tmp_path / "data"),
            "admin_sign_in": {
                "authorization_uri": f"{idp.authority}/oauth2/v2.0/authorize",
                "token_uri": f"{idp.authority}/oauth2/v2.0/token",
                "client_id": "admin-console",
                "client_secret_env": "CONSOLE_SECRET",
                "issuer": f"{idp.authority}/v2.0",
                "admin_group": ADMINS.upper(),  # object ids compare without case
                "tls_ca_file": str(ca),
                **sign_in,
            },
        },
        "integrations": [
            {
                "name": "hq",
                "exchange": {"mailbox_name": "Video Room", "mailbox_email": "vmr@example.com"},
                "addin": {"token_validation": "none", "server_fqdn": "vmr.example.com"},
                "spool": {"poll_interval_seconds": 0.05},
            }
        ],
    }
    return config.parse(doc, tmp_path, {"CONSOLE_SECRET": "console-secret"})


@pytest.fixture
def svc(tmp_path: Path, platform: tuple[IdentityPlatform, Path]) -> Iterator[service.Service]:
    running = service.start(configured(tmp_path, *platform))
    spoolkit.wait_for(lambda: running.ctx.status.state("hq") == "running")
    yield running
    running.stop()


async def sign_in(client: TestClient[Any, Any], ca: Path) -> tuple[int, str, Any]:
    """Through the provider and back: the callback's status, body and response."""
    started = await client.get("/admin/sign-in", allow_redirects=False)
    assert started.status == 302, await started.text()
    at_provider = requests.get(
        started.headers["Location"], allow_redirects=False, verify=str(ca), timeout=10
    )
    assert at_provider.status_code == 302, at_provider.text
    back = urllib.parse.urlsplit(at_provider.headers["Location"])
    assert back.path == "/admin/sign-in/callback"
    answer = await client.get(f"{back.path}?{back.query}", allow_redirects=False)
    return answer.status, await answer.text(), answer


async def test_a_member_of_the_admin_group_gets_a_session_that_names_them(
    client: TestClient[Any, Any],
    platform: tuple[IdentityPlatform, Path],
    caplog: pytest.LogCaptureFixture,
) -> None:
    login = await (await client.get("/admin/login")).text()
    assert 'href="/admin/sign-in"' in login and 'name="token"' not in login  # no token set

    caplog.set_level(logging.INFO, "vmrsched")
    status, _, answer = await sign_in(client, platform[1])
    assert status == 303 and answer.headers["Location"] == "/admin"
    cookie = answer.cookies["vmrsched_admin"]
    assert cookie["httponly"] and cookie["samesite"] == "Lax" and cookie["path"] == "/admin"
    assert "admin sign-in by ada@example.com" in caplog.text

    page = await (await client.get("/admin")).text()
    assert "Signed in: ada@example.com (session " in page
    csrf = page.split('name="csrf" value="', 1)[1].split('"', 1)[0]
    reloaded = await client.post("/admin/reload", data={"csrf": csrf}, allow_redirects=False)
    assert reloaded.status == 303
    assert "ada@example.com (session " in caplog.text.split("asked for a config reload")[0]

    out = await client.post("/admin/logout", data={"csrf": csrf}, allow_redirects=False)
    assert out.status == 303 and out.headers["Location"] == "/admin/login"
    again = await client.get("/admin", allow_redirects=False)
    assert again.status == 303 and again.headers["Location"].startswith("/admin/login")


async def test_only_the_admin_group_is_let_in(
    client: TestClient[Any, Any],
    platform: tuple[IdentityPlatform, Path],
    caplog: pytest.LogCaptureFixture,
) -> None:
    idp, ca = platform
    idp.groups = ["0a0a0a0a-0000-4000-8000-000000000001"]
    status, body, answer = await sign_in(client, ca)
    assert status == 403 and "ada@example.com is not in the admin group" in body
    assert "vmrsched_admin" not in answer.cookies
    assert "admin sign-in refused" in caplog.text

    # in more groups than fit in a token: Entra sends a pointer instead; the page says what to do
    idp.groups = [f"0a0a0a0a-0000-4000-8000-{n:012d}" for n in range(250)] + [ADMINS]
    status, body, answer = await sign_in(client, ca)
    assert status == 403 and "groups_claim = &#34;roles&#34;" in body
    assert "vmrsched_admin" not in answer.cookies
    assert (await client.get("/api/admin/v1/integrations")).status == 401


async def test_a_replayed_forged_or_forwarded_answer_is_refused(
    client: TestClient[Any, Any], platform: tuple[IdentityPlatform, Path]
) -> None:
    idp, ca = platform
    started = await client.get("/admin/sign-in", allow_redirects=False)
    at_provider = requests.get(
        started.headers["Location"], allow_redirects=False, verify=str(ca), timeout=10
    )
    back = urllib.parse.urlsplit(at_provider.headers["Location"])
    callback = f"{back.path}?{back.query}"
    state = dict(urllib.parse.parse_qsl(back.query))["state"]

    def started_in_this_browser() -> None:
        client.session.cookie_jar.update_cookies(
            {"vmrsched_sign_in_state": state}, URL(str(client.make_url(back.path)))
        )

    # the callback URL taken to another browser (say, sent to an admin): nothing redeemed
    client.session.cookie_jar.clear()
    forwarded = await client.get(callback, allow_redirects=False)
    assert forwarded.status == 400 and "not started in this browser" in await forwarded.text()
    assert "vmrsched_admin" not in forwarded.cookies and idp.grants == []

    started_in_this_browser()
    first = await client.get(callback, allow_redirects=False)
    assert first.status == 303 and "vmrsched_admin" in first.cookies
    started_in_this_browser()  # even with the state cookie kept: each attempt is used once
    replayed = await client.get(callback, allow_redirects=False)
    assert replayed.status == 400 and "unknown or expired sign-in attempt" in await replayed.text()
    forged = await client.get(
        "/admin/sign-in/callback", params={"code": "x", "state": "made-up"}, allow_redirects=False
    )
    assert forged.status == 400 and "vmrsched_admin" not in forged.cookies
    denied = await client.get(
        "/admin/sign-in/callback",
        params={"error": "access_denied", "error_description": "AADSTS50105: not assigned"},
    )
    page = await denied.text()
    assert denied.status == 400 and "AADSTS50105" in page
    assert "not assigned" not in page  # the provider's words, from the address bar: logged only
    assert idp.grants == ["authorization_code"]  # only the first answer reached the provider


async def test_a_token_from_another_issuer_is_refused(
    tmp_path: Path, platform: tuple[IdentityPlatform, Path]
) -> None:
    from aiohttp.test_utils import TestServer

    from vmrsched.http.app import create_app

    idp, ca = platform
    cfg = configured(tmp_path, idp, ca, issuer="https://login.microsoftonline.com/other/v2.0")
    running = service.start(cfg)
    try:
        async with TestClient(TestServer(create_app(running))) as other:
            status, body, answer = await sign_in(other, ca)
    finally:
        running.stop()
    assert status == 400 and "another issuer" in body
    assert "vmrsched_admin" not in answer.cookies


async def test_an_admin_of_another_tenant_is_not_an_admin_here(
    tmp_path: Path, platform: tuple[IdentityPlatform, Path]
) -> None:
    """An app role is a name the application declares: every tenant the application is
    registered in can grant it. With no issuer configured and the tenant named by a domain, a
    token of another tenant, consistent in itself (its `iss` its own `tid`'s) and granting the
    role, is still refused."""
    from aiohttp.test_utils import TestServer

    from vmrsched.http.app import create_app

    idp, ca = platform
    idp.claims_changed = {
        "tid": "fabrikam.example",
        "iss": f"{idp.base}/fabrikam.example/v2.0",
        "roles": ["VmrschedAdmin"],
    }
    cfg = configured(
        tmp_path, idp, ca, issuer="", admin_group="VmrschedAdmin", groups_claim="roles"
    )
    running = service.start(cfg)
    try:
        async with TestClient(TestServer(create_app(running))) as other:
            status, body, answer = await sign_in(other, ca)
            assert status == 400 and "another organization" in body
            assert "vmrsched_admin" not in answer.cookies
            idp.claims_changed = {"roles": ["VmrschedAdmin"]}  # the configured tenant's admin
            status, _, answer = await sign_in(other, ca)
            assert status == 303 and "vmrsched_admin" in answer.cookies
    finally:
        running.stop()


async def test_sign_in_attempts_count_against_the_login_limit(
    client: TestClient[Any, Any], platform: tuple[IdentityPlatform, Path]
) -> None:
    statuses = [
        (await client.get("/admin/sign-in", allow_redirects=False)).status for _ in range(7)
    ]
    assert statuses[:5] == [302] * 5 and statuses[5:] == [429, 429]
    limited = await client.get("/admin/sign-in", allow_redirects=False)
    assert limited.status == 429 and int(limited.headers["Retry-After"]) >= 1
    # a made-up answer is refused without a word to the provider
    forged = await client.get("/admin/sign-in/callback", params={"code": "c", "state": "s"})
    assert forged.status == 400 and platform[0].grants == []


def test_the_sign_in_config_is_checked_with_key_paths(
    tmp_path: Path, platform: tuple[IdentityPlatform, Path]
) -> None:
    idp, ca = platform
    with pytest.raises(config.ConfigError) as caught:
        configured(
            tmp_path,
            idp,
            ca,
            token_uri="http://idp.example.com/token",
            admin_group="",
            scope="email profile",
            tls_ca_file="missing.pem",
            authorization_uri="https://login.microsoftonline.com/common/oauth2/v2.0/authorize",
        )
    problems = "\n".join(caught.value.problems)
    assert "server.admin_sign_in.authorization_uri: must name one tenant" in problems
    assert "server.admin_sign_in.token_uri: must be an https URL" in problems
    assert "server.admin_sign_in.admin_group: needed for the admin sign-in" in problems
    assert "server.admin_sign_in.scope: must include openid" in problems
    # named as the service reads it: relative to the config file
    assert f"server.admin_sign_in.tls_ca_file: no such file: {tmp_path / 'missing.pem'}" in problems
    doc_listen = configured(tmp_path, idp, ca).server
    assert doc_listen.admin_enabled and doc_listen.admin_token is None
