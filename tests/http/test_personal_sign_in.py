"""The pane's explicit sign-in over real HTTP, against the fake identity platform (real TLS): the
dialog's start redirects to the provider with our callback, the callback page hands over a
session, the session lists the user's personal VMRs, a wrong state gets an error page, signing
out ends the session, and integrations without a sign-in refuse to start one."""

from __future__ import annotations

import html
import json
import re
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from aiohttp.test_utils import TestClient

from tests import spoolkit
from tests.fakes import identity_platform
from tests.fakes.identity_platform import IdentityPlatform
from vmrsched import config, service

PUBLIC = "https://localhost:8443"
DIRECTORY = Path(__file__).resolve().parents[2] / "config" / "vmrs.toml"


@pytest.fixture
def platform(tmp_path: Path) -> Iterator[tuple[IdentityPlatform, Path]]:
    with identity_platform.running(
        tmp_path, "olga@example.com", client_id="pane-client", client_secret="pane-secret"
    ) as running:
        yield running


@pytest.fixture
def svc(tmp_path: Path, platform: tuple[IdentityPlatform, Path]) -> Iterator[service.Service]:
    idp, ca = platform

    def integ(name: str, personal: dict[str, Any]) -> dict[str, Any]:
        return {
            "name": name,
            "exchange": {"mailbox_name": f"Room {name}", "mailbox_email": f"{name}@example.com"},
            "addin": {"token_validation": "exchange", "server_fqdn": "vmr.example.com"},
            "metadata": {"exchange_metadata_urls": ["https://mail.example.com/"]},
            "enable_personal_vmrs": True,
            "personal": {"directory_file": str(DIRECTORY), **personal},
            "single_use": {"alias_prefix": name},  # aliases are unique across the service
        }

    sso = {
        "user_oauth_authorization_uri": f"{idp.authority}/oauth2/v2.0/authorize",
        "user_oauth_token_uri": f"{idp.authority}/oauth2/v2.0/token",
        "user_oauth_client_id": "pane-client",
        "azure_client_secret_env": "PANE_SECRET",
        "tls_ca_file": str(ca),
    }
    doc = {
        "server": {"data_dir": str(tmp_path / "data"), "public_url": PUBLIC},
        "integrations": [integ("onprem", sso), integ("nosso", {})],
    }
    running = service.start(config.parse(doc, tmp_path, {"PANE_SECRET": "pane-secret"}))
    spoolkit.wait_for(lambda: running.ctx.status.state("onprem") == "running")
    yield running
    running.stop()


def result_of(page: str) -> dict[str, Any]:
    match = re.search(r'data-result="([^"]*)"', page)
    assert match, page
    parsed: dict[str, Any] = json.loads(html.unescape(match.group(1)))
    return parsed


async def sign_in(
    client: TestClient[Any, Any], ca: Path, tamper: bool = False, elsewhere: bool = False
) -> tuple[int, dict[str, Any]]:
    """Through the provider and back; `elsewhere`: the callback URL opened in another
    browser (without the state cookie the start set)."""
    start = await client.get("/addin/onprem/sign-in", allow_redirects=False)
    assert start.status == 302
    assert start.headers["Cache-Control"] == "no-store"
    bound = start.cookies["vmrsched_sign_in_state"]
    assert bound["secure"] and bound["httponly"] and bound["path"] == "/addin/onprem/sign-in"
    authorize = start.headers["Location"]
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(authorize).query))
    assert query["redirect_uri"] == f"{PUBLIC}/addin/onprem/sign-in/callback"
    # the user signs in at the provider, which sends the browser back to our callback
    back = requests.get(authorize, allow_redirects=False, verify=str(ca), timeout=10)
    callback = urllib.parse.urlsplit(back.headers["Location"])
    assert callback.path == "/addin/onprem/sign-in/callback"
    params = dict(urllib.parse.parse_qsl(callback.query))
    state = bound.value
    if tamper:  # in the URL and the cookie alike: only the service's own record can tell
        params["state"] = state = "not-the-state-we-sent"
    # the https browser sends the Secure cookie back (this test client speaks plain http)
    cookie = {} if elsewhere else {"Cookie": f"vmrsched_sign_in_state={state}"}
    page = await client.get(callback.path, params=params, headers=cookie)
    assert "Content-Security-Policy" in page.headers
    return page.status, result_of(await page.text())


async def personal(client: TestClient[Any, Any], token: str) -> tuple[int, dict[str, Any]]:
    response = await client.get(
        "/api/addin/v1/onprem/personal-vmrs", headers={"Authorization": f"Bearer {token}"}
    )
    return response.status, await response.json()


async def test_sign_in_then_list_then_sign_out(
    client: TestClient[Any, Any], platform: tuple[IdentityPlatform, Path]
) -> None:
    status, result = await sign_in(client, platform[1])
    assert status == 200 and result["email"] == "olga@example.com"
    token = result["session"]

    status, body = await personal(client, token)
    assert status == 200
    assert [v["name"] for v in body["vmrs"]] == ["Olga's room", "Team stand-up"]

    signed_out = await client.delete(
        "/api/addin/v1/onprem/session", headers={"Authorization": f"Bearer {token}"}
    )
    assert signed_out.status == 204
    status, body = await personal(client, token)
    assert (status, body["error"]["code"]) == (401, "sign_in_required")


async def test_a_callback_with_a_wrong_state_is_refused(
    client: TestClient[Any, Any], platform: tuple[IdentityPlatform, Path]
) -> None:
    status, result = await sign_in(client, platform[1], tamper=True)
    assert status == 400 and result["error"] == "sign_in_refused"
    assert "unknown or expired" in result["message"]
    assert platform[0].grants == []  # the code was never redeemed


async def test_a_callback_opened_in_another_window_is_refused(
    client: TestClient[Any, Any], platform: tuple[IdentityPlatform, Path]
) -> None:
    """A forwarded callback URL must not sign its receiver in as its sender."""
    status, result = await sign_in(client, platform[1], elsewhere=True)
    assert status == 400 and result["error"] == "sign_in_refused"
    assert "not started in this window" in result["message"]
    assert platform[0].grants == []


async def test_a_made_up_session_token_is_not_signed_in(client: TestClient[Any, Any]) -> None:
    status, body = await personal(client, "vms1.made-up")
    assert (status, body["error"]["code"]) == (401, "sign_in_required")


async def test_without_a_configured_sign_in_there_is_none(client: TestClient[Any, Any]) -> None:
    response = await client.get("/addin/nosso/sign-in", allow_redirects=False)
    assert response.status == 403
    assert (await response.json())["error"]["code"] == "feature_disabled"
    response = await client.get("/addin/nowhere/sign-in", allow_redirects=False)
    assert response.status == 404


async def test_sign_in_starts_are_limited_per_client_address(
    client: TestClient[Any, Any], svc: service.Service
) -> None:
    """Each start keeps an attempt for ten minutes: no more starts a minute from one address
    than [server] rate_limit_per_minute (60 here); the dialog then shows why and hands the
    pane the error."""
    limit = svc.config.server.rate_limit_per_minute
    for _ in range(limit):
        started = await client.get("/addin/onprem/sign-in", allow_redirects=False)
        assert started.status == 302
    refused = await client.get("/addin/onprem/sign-in", allow_redirects=False)
    assert refused.status == 429 and int(refused.headers["Retry-After"]) >= 1
    assert result_of(await refused.text())["error"] == "rate_limited"
