"""Organizer self-service over real HTTP: the JSON API with the add-in's Entra ID token, and the
page signed in with the user sign-in at the fake identity platform (real TLS). Each organizer
sees and acts on their own bookings only: another user's alias answers 404 exactly as one that
does not exist; forms without the page's CSRF token are refused; declines come with their
reason in plain words; decline mails link the page ({{self_service_url}})."""

from __future__ import annotations

import html
import re
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
import requests
from aiohttp.test_utils import TestClient

from tests import spoolkit
from tests.fakes import identity_platform
from tests.fakes.identity_platform import IdentityPlatform
from tests.fakes.identity_provider import IdentityProvider
from vmrsched import config, service
from vmrsched.actors.messages import FindAliases

# where the service answers, at the integration's server_fqdn as in a real deployment (the
# decline mails' {{self_service_url}} is built from it)
PUBLIC = "https://vmr.example.com"
API = "/api/self/v1/online"
# the fake identity platform's one user: this object id in the ID tokens it issues
PLATFORM_OID = "00000000-0000-0000-0000-00000000abcd"
OLGA = "olga@example.com"
DECLINE = (
    "<p>No valid video reference.</p>"
    '<p>See why and what to do: <a href="{{self_service_url}}">{{self_service_url}}</a></p>'
)


def entra_token(idp: IdentityProvider, oid: str, email: str) -> str:
    """An Entra ID token for the add-in API naming `oid` and `email` (the fake's own names one
    user only)."""
    now = int(time.time())
    claims = {
        "aud": "app-client-id",
        "iss": f"{idp.base}/{idp.tenant}/v2.0",
        "tid": idp.tenant,
        "nbf": now - 60,
        "exp": now + 3600,
        "iat": now - 60,
        "oid": oid,
        "preferred_username": email,
        "scp": "access_as_user",
    }
    key = idp.entra_keys["k1"]
    return jwt.encode(claims, key.pem, algorithm="RS256", headers={"kid": "k1"})


def integration(idp: IdentityProvider, platform: IdentityPlatform, ca: Path) -> dict[str, Any]:
    return {
        "name": "online",
        "exchange": {"mailbox_name": "Online Room", "mailbox_email": "room@example.com"},
        "addin": {
            "server_fqdn": "vmr.example.com",
            "token_validation": "entra",
            "entra_tenant_id": idp.tenant,
            "entra_client_id": "app-client-id",
            "entra_authority": idp.base,
        },
        "personal": {
            "user_oauth_authorization_uri": f"{platform.authority}/oauth2/v2.0/authorize",
            "user_oauth_token_uri": f"{platform.authority}/oauth2/v2.0/token",
            "user_oauth_client_id": "pane-client",
            "azure_client_secret_env": "PANE_SECRET",
            "tls_ca_file": str(ca),
        },
        "email": {"reject_invalid_alias_id_text": DECLINE},
        "spool": {"poll_interval_seconds": 0.05},
        "single_use": {"alias_prefix": "online"},
    }


@pytest.fixture
def platform(tmp_path: Path, idp: IdentityProvider) -> Iterator[tuple[IdentityPlatform, Path]]:
    """Olga signs in here; the platform's tenant is the add-in's, so the session names her as
    her Entra ID token does."""
    with identity_platform.running(
        tmp_path, OLGA, client_id="pane-client", client_secret="pane-secret", tenant=idp.tenant
    ) as running:
        yield running


@pytest.fixture
def svc(
    tmp_path: Path, idp: IdentityProvider, platform: tuple[IdentityPlatform, Path]
) -> Iterator[service.Service]:
    doc = {
        "server": {
            "data_dir": str(tmp_path / "data"),
            "public_url": PUBLIC,
            "rate_limit_per_minute": 1000,
        },
        "integrations": [integration(idp, *platform)],
    }
    running = service.start(config.parse(doc, tmp_path, {"PANE_SECRET": "pane-secret"}))
    spoolkit.wait_for(lambda: running.ctx.status.state("online") == "running")
    yield running
    running.stop()


def spool(svc: service.Service) -> Path:
    return svc.config.integrations[0].spool_dir(svc.config.data_dir)


async def reserve(client: TestClient[Any, Any], token: str) -> dict[str, Any]:
    response = await client.post(
        "/api/addin/v1/online/single-use-vmrs",
        headers={"Authorization": f"Bearer {token}"},
        json={"subject": "Sync"},
    )
    assert response.status == 201, await response.text()
    body: dict[str, Any] = await response.json()
    return body


def book(svc: service.Service, vmr: dict[str, Any] | None, organizer: str) -> str:
    """A meeting by `organizer` with the reservation's joining details (none: no token, so it
    is declined); its answer's outcome."""
    body = vmr["joining_instructions"] if vmr else "<p>no video room here</p>"
    data, uid = spoolkit.request(body=body, organizer=organizer, subject="Board meeting")
    spoolkit.wait_handled(spool(svc), spoolkit.drop(spool(svc) / "inbox", data))
    spoolkit.wait_for(lambda: bool(spoolkit.answers_for(spool(svc), uid)))
    return spoolkit.answers_for(spool(svc), uid)[0].headers["X-Vmrsched-Outcome"]


async def call(
    client: TestClient[Any, Any], method: str, path: str, token: str | None
) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = await client.request(method, API + path, headers=headers)
    return response.status, await response.json()


async def test_the_api_shows_and_acts_on_ones_own_bookings_only(
    client: TestClient[Any, Any], idp: IdentityProvider, svc: service.Service
) -> None:
    olga = entra_token(idp, PLATFORM_OID, OLGA)
    ann = entra_token(idp, "00000000-aaaa-bbbb-cccc-000000000001", "ann@contoso.example")
    booked, spare = await reserve(client, olga), await reserve(client, olga)
    anns = await reserve(client, ann)
    bobs = await reserve(client, ann)
    assert book(svc, booked, OLGA) == "accepted"
    assert book(svc, bobs, "bob@example.com") == "accepted"  # bound: Bob's now, not Ann's

    status, body = await call(client, "GET", "/bookings", olga)
    assert status == 200
    mine = {b["alias"]: b for b in body["bookings"]}
    assert set(mine) == {booked["alias"], spare["alias"]}
    assert mine[booked["alias"]]["status"] == "bound" and mine[booked["alias"]]["windows"]
    assert mine[booked["alias"]]["can_resend"] and not mine[booked["alias"]]["can_cancel"]
    assert mine[spare["alias"]]["can_cancel"] and mine[spare["alias"]]["state"].startswith(
        "Reserved"
    )
    status, body = await call(client, "GET", "/bookings", ann)
    assert [b["alias"] for b in body["bookings"]] == [anns["alias"]]

    # another user's alias, a bound one of someone else, one that does not exist: one answer
    for alias in (anns["alias"], bobs["alias"], "online999999@nowhere.example"):
        for act in ("resend", "cancel"):
            status, body = await call(client, "POST", f"/bookings/{alias}/{act}", olga)
            assert (status, body["error"]["code"]) == (404, "unknown_booking"), (alias, act)
    status, body = await call(client, "GET", "/bookings", ann)
    assert [b["status"] for b in body["bookings"]] == ["reserved"]  # Ann's is untouched

    status, body = await call(client, "POST", f"/bookings/{booked['alias']}/resend", olga)
    assert status == 202 and body["message_id"]
    spoolkit.wait_for(
        lambda: any(
            m.headers["To"] == OLGA and "X-Vmrsched-Outcome" in m.headers
            for m in spoolkit.outbox(spool(svc))
            if m.headers.get("X-Vmrsched-Reason") == "admin"
        )
    )

    status, body = await call(client, "POST", f"/bookings/{booked['alias']}/cancel", olga)
    assert (status, body["error"]["code"]) == (400, "not_cancellable")
    status, body = await call(client, "POST", f"/bookings/{spare['alias']}/cancel", olga)
    assert status == 200 and body["booking"]["status"] == "deleted"
    assert body["booking"]["state"] == "Ended: you cancelled the reservation"
    # the cancelled alias is declined from then on
    assert book(svc, spare, OLGA) == "declined"

    status, body = await call(client, "GET", "/bookings", None)
    assert (status, body["error"]["code"]) == (401, "missing_token")


async def test_declines_come_with_the_reason_in_plain_words_and_the_mail_links_the_page(
    client: TestClient[Any, Any], idp: IdentityProvider, svc: service.Service
) -> None:
    assert book(svc, None, OLGA) == "declined"
    assert book(svc, None, "bob@example.com") == "declined"
    mail = next(m for m in spoolkit.outbox(spool(svc)) if m.headers["To"] == OLGA)
    assert "https://vmr.example.com/my/online" in mail.html

    status, body = await call(client, "GET", "/declines", entra_token(idp, PLATFORM_OID, OLGA))
    assert status == 200
    [decline] = body["declines"]
    assert decline["reason"] == "invalid_alias_id"
    assert "no video room reference" in decline["explanation"]
    assert "add a video room with the add-in" in decline["what_to_do"]
    assert decline["subject"]


# --- the page ------------------------------------------------------------------------------


async def sign_in(client: TestClient[Any, Any], ca: Path) -> str:
    """Through the provider and back; the session cookie's value."""
    start = await client.get("/my/online/sign-in", allow_redirects=False)
    assert start.status == 302
    bound = start.cookies["vmrsched_sign_in_state"]
    assert bound["path"] == "/my/online/sign-in"
    authorize = start.headers["Location"]
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(authorize).query))
    assert query["redirect_uri"] == f"{PUBLIC}/my/online/sign-in/callback"
    assert query["code_challenge_method"] == "S256"
    back = requests.get(authorize, allow_redirects=False, verify=str(ca), timeout=10)
    callback = urllib.parse.urlsplit(back.headers["Location"])
    done = await client.get(
        callback.path + "?" + callback.query,
        headers={"Cookie": f"vmrsched_sign_in_state={bound.value}"},
        allow_redirects=False,
    )
    assert done.status == 303 and done.headers["Location"] == "/my/online"
    cookie = done.cookies["vmrsched_my_session"]
    assert cookie["httponly"] and cookie["secure"] and cookie["path"] == "/my/online"
    assert cookie["samesite"] == "Lax"
    assert cookie.value.startswith("vms1.")
    return cookie.value


def csrf_of(page: str) -> str:
    match = re.search(r'name="csrf" value="([0-9a-f]+)"', page)
    assert match, page
    return match.group(1)


async def test_the_page_signs_in_shows_ones_own_and_refuses_forms_without_the_csrf_token(
    client: TestClient[Any, Any],
    idp: IdentityProvider,
    svc: service.Service,
    platform: tuple[IdentityPlatform, Path],
) -> None:
    spare = await reserve(client, entra_token(idp, PLATFORM_OID, OLGA))
    anns = await reserve(client, entra_token(idp, "00000000-aaaa-0000-0000-000000000001", "a@x"))

    signed_out = await client.get("/my/online")
    assert signed_out.status == 401
    assert 'href="/my/online/sign-in"' in await signed_out.text()

    session = sign_in_cookie = await sign_in(client, platform[1])
    cookie = {"Cookie": f"vmrsched_my_session={sign_in_cookie}"}
    page = await client.get("/my/online", headers=cookie)
    text = await page.text()
    assert page.status == 200
    csp = page.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "script-src" not in csp
    assert "frame-ancestors 'none'" in csp and "form-action 'self'" in csp
    assert "<script" not in text
    assert spare["alias"] in text and anns["alias"] not in text
    assert session not in text  # the session token never reaches the page
    token = csrf_of(text)

    cancel = f"/my/online/bookings/{urllib.parse.quote(spare['alias'])}/cancel"
    for form in ({"confirm": "yes"}, {"confirm": "yes", "csrf": "0" * 64}):
        refused = await client.post(cancel, data=form, headers=cookie, allow_redirects=False)
        assert refused.status == 403 and "CSRF" in await refused.text()
    # a valid token from another session (or none) is no good either
    refused = await client.post(cancel, data={"confirm": "yes", "csrf": token})
    assert refused.status == 401
    unconfirmed = await client.post(cancel, data={"csrf": token}, headers=cookie)
    assert unconfirmed.status == 400
    not_hers = f"/my/online/bookings/{urllib.parse.quote(anns['alias'])}/cancel"
    hidden = await client.post(not_hers, data={"confirm": "yes", "csrf": token}, headers=cookie)
    assert hidden.status == 404
    assert "no booking with that video address" in html.unescape(await hidden.text())

    done = await client.post(
        cancel, data={"confirm": "yes", "csrf": token}, headers=cookie, allow_redirects=False
    )
    assert done.status == 303 and done.headers["Location"] == "/my/online?done=cancelled"
    text = await (await client.get("/my/online?done=cancelled", headers=cookie)).text()
    assert "The reservation is cancelled" in text
    assert "Ended: you cancelled the reservation" in text

    out = await client.post(
        "/my/online/sign-out", data={"csrf": token}, headers=cookie, allow_redirects=False
    )
    assert out.status == 303
    assert (await client.get("/my/online", headers=cookie)).status == 401


async def test_a_reservation_a_meeting_bound_meanwhile_is_not_cancelled(
    client: TestClient[Any, Any],
    idp: IdentityProvider,
    svc: service.Service,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The organizer's page showed a reservation; a meeting bound it before "cancel" reached
    the allocator: the allocator checks again when it applies the cancel, and the meeting keeps
    its room."""
    olga = entra_token(idp, PLATFORM_OID, OLGA)
    spare = await reserve(client, olga)
    status, body = await call(client, "GET", "/bookings", olga)
    [seen] = [b for b in body["bookings"] if b["alias"] == spare["alias"]]
    assert seen["can_cancel"]
    [stale] = await svc._ask_allocator("online", FindAliases(spare["alias"], "", 10))
    assert book(svc, spare, OLGA) == "accepted"

    async def as_read_before(*_: Any) -> dict[str, Any]:
        return stale

    monkeypatch.setattr(svc, "_own_record", as_read_before)
    status, body = await call(client, "POST", f"/bookings/{spare['alias']}/cancel", olga)
    assert (status, body["error"]["code"]) == (400, "not_cancellable")
    monkeypatch.undo()
    status, body = await call(client, "GET", "/bookings", olga)
    [now] = [b for b in body["bookings"] if b["alias"] == spare["alias"]]
    assert now["status"] == "bound"
