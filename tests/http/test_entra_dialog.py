"""The Entra ID sign-in dialog, for real: in an Outlook without nested app authentication the pane
opens /addin/<integration>/entra-sign-in.html in an Office dialog (the Office.js stand-in's popup),
and that page runs MSAL.js's authorization code flow with PKCE against a stand-in of the Microsoft
identity platform (tests/fakes/entra_spa.py, over TLS), then hands the access token back with
messageParent; the pane books the room with it and `vmrsched serve` verifies it against the same
tenant's discovery document and keys."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import jwt
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, Response, expect

from tests import browsing
from tests.fakes import entra_spa, outlook
from tests.fakes.entra_spa import App, EntraTenant
from tests.serving import ROOT, free_port, wait_ready

pytestmark = pytest.mark.slow
CLIENT_ID = "3f6a1c9e-7d2b-4e58-9a1f-5c0d8b2e4a71"  # the add-in's app registration
APP_ID_URI = f"api://vc.example.com/{CLIENT_ID}"
SCOPE = f"{APP_ID_URI}/access_as_user"
ROOM = "vmr-entra@example.com"
OLGA = ("Olga Organizer", "olga@example.com")
# Outlook without NestedAppAuth 1.1: the pane signs in in a dialog
REQUIREMENT_SETS = {"Mailbox": "1.14", "DialogApi": "1.2", "IdentityAPI": "1.3"}

CONFIG = """
[server]
listen = "127.0.0.1:{port}"
data_dir = "{data}"

[[integrations]]
name = "entra"
[integrations.exchange]
mailbox_name = "Entra Room"
mailbox_email = "{room}"
[integrations.addin]
token_validation = "entra"
entra_tenant_id = "{tenant}"
entra_client_id = "{client}"
entra_authority = "{authority}"
server_fqdn = "vc.example.com"
success_heading = "Room added!"
[integrations.advanced]
enable_addin_debug_logs = true
[integrations.spool]
poll_interval_seconds = 0.05
"""


@dataclass
class Service:
    url: str
    tenant: EntraTenant
    ca_file: Path

    @property
    def dialog(self) -> str:
        return f"{self.url}/addin/entra/entra-sign-in.html"


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """`vmrsched serve` with one integration whose add-in signs in with Entra ID at the
    stand-in tenant; the add-in's app registration has the dialog page as its SPA redirect URI
    and exposes `access_as_user`. The server trusts the stand-in's certificate (SSL_CERT_FILE,
    which Python's default TLS context reads) to fetch the tenant's discovery document and keys."""
    tmp = tmp_path_factory.mktemp("entra-dialog")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with entra_spa.running(tmp) as (tenant, ca_file):
        tenant.register(
            App(
                CLIENT_ID,
                spa_redirect_uris=(f"{url}/addin/entra/entra-sign-in.html",),
                app_id_uri=APP_ID_URI,
            )
        )
        config = tmp / "vmrsched.toml"
        config.write_text(
            CONFIG.format(
                port=port,
                data=tmp / "data",
                room=ROOM,
                tenant=tenant.tenant_id,
                client=CLIENT_ID,
                authority=tenant.base,
            )
        )
        log = open(tmp / "server.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, "-m", "vmrsched", "serve", "--config", str(config)],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "SSL_CERT_FILE": str(ca_file)},
        )
        try:
            wait_ready(port)
            yield Service(url, tenant, ca_file)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
            log.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with browsing.chromium() as launched:
        yield launched


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    """Outlook on the web at 360 px without nested app authentication. The stand-in tenant's
    certificate is self-signed: the browser is told to accept it (the service trusts it by
    its CA file)."""
    context = browser.new_context(viewport={"width": 360, "height": 900}, ignore_https_errors=True)
    outlook.install(context, host_config())
    yield context
    context.close()


def host_config() -> dict[str, Any]:
    start = (datetime.now(UTC) + timedelta(days=1)).replace(minute=0, second=0, microsecond=0)
    return {
        "platform": "OfficeOnline",
        "requirementSets": dict(REQUIREMENT_SETS),
        "userProfile": {
            "displayName": OLGA[0],
            "emailAddress": OLGA[1],
            "timeZone": "Europe/London",
            "accountType": "enterprise",
        },
        "item": {
            "subject": "Quarterly review",
            "start": start.isoformat(),
            "end": (start + timedelta(minutes=45)).isoformat(),
            "location": "",
            "body": "<p>Agenda: quarterly numbers.</p>",
            "requiredAttendees": [{"displayName": "Bob", "emailAddress": "bob@example.com"}],
            "optionalAttendees": [],
            "organizer": {"displayName": OLGA[0], "emailAddress": OLGA[1]},
        },
    }


def open_pane(context: BrowserContext, service: Service) -> Page:
    page = context.new_page()
    page.goto(f"{service.url}/addin/entra/taskpane.html")
    expect(page.locator("#vmr-app")).to_have_attribute("data-ready", "outlook")
    return page


def is_booking(response: Response) -> bool:
    return response.request.method == "POST" and response.url.endswith(
        "/api/addin/v1/entra/single-use-vmrs"
    )


def outcome(page: Page) -> str:
    """The heading the pane ends with (its debug log in the message of a failed assertion)."""
    page.wait_for_function(
        "() => { const h = document.getElementById('vmr-status-heading');"
        " return h && !h.hidden && h.textContent; }",
        timeout=30000,
    )
    return page.locator("#vmr-status-heading").inner_text()


def test_the_dialog_signs_in_with_pkce_and_hands_back_a_token_the_service_accepts(
    context: BrowserContext, service: Service
) -> None:
    tenant = service.tenant
    tenant.requests.clear()
    problems: list[str] = []
    context.on(
        "console",
        lambda m: problems.append(m.text) if "Content Security Policy" in m.text else None,
    )
    page = open_pane(context, service)
    bookings: list[Response] = []
    page.on("response", lambda r: bookings.append(r) if is_booking(r) else None)
    with context.expect_page() as dialog_opened:
        page.get_by_role("button", name="Add a one-time video room").click()
    log = page.locator("#vmr-log")
    assert outcome(page) == "Room added!", log.inner_text()
    (booking,) = bookings
    assert booking.status == 201  # the service's verifier accepted the token

    # the pane opened our page in an Office dialog, which signed in and was closed
    dialog = dialog_opened.value
    if not dialog.is_closed():
        dialog.wait_for_event("close", timeout=10000)
    opened = [c["args"] for c in outlook.calls(page) if c["api"] == "ui.displayDialogAsync"]
    assert [args[0] for args in opened] == [service.dialog]
    assert "dialog.close" in [c["api"] for c in outlook.calls(page)]

    # MSAL asked the stand-in's authorize endpoint for a code with PKCE (S256) and a nonce,
    # the page itself as the redirect URI, and the add-in API's scope
    (authorize,) = tenant.asked("authorize")
    assert authorize["client_id"] == CLIENT_ID
    assert authorize["redirect_uri"] == service.dialog
    assert authorize["response_type"] == "code"
    assert authorize["code_challenge_method"] == "S256"
    assert authorize["nonce"] and authorize["state"]
    assert set(authorize["scope"].split()) == {SCOPE, "openid", "profile", "offline_access"}
    # and redeemed it cross-origin from the page's origin with the verifier (else no token)
    tokens = [(p, o) for name, p, o in tenant.requests if name == "token"]
    assert len(tokens) == 1
    form, origin = tokens[0]
    assert origin == service.url
    assert form["grant_type"] == "authorization_code"
    assert form["redirect_uri"] == service.dialog
    assert form["code_verifier"]
    # the page read the tenant's OpenID configuration cross-origin (no instance discovery at
    # login.microsoftonline.com), and the service fetched it and the keys to verify the token
    read = [(name, o) for name, _, o in tenant.requests if name in ("openid-configuration", "keys")]
    assert ("openid-configuration", service.url) in read
    assert {("openid-configuration", ""), ("keys", "")} <= set(read)

    # the token the pane sent is the access token issued for the scope asked ...
    header = booking.request.headers["authorization"]
    token = header.removeprefix("Bearer ")
    issued = tenant.issued[token]
    assert issued.scope == SCOPE and issued.client_id == CLIENT_ID
    assert issued.origin == service.url
    # ... a v2.0 access token for the add-in API, signed by the tenant
    kid = jwt.get_unverified_header(token)["kid"]
    claims = jwt.decode(
        token,
        tenant.keys[kid].private.public_key(),
        algorithms=["RS256"],
        audience=CLIENT_ID,
        issuer=f"{tenant.base}/{tenant.tenant_id}/v2.0",
    )
    assert claims["scp"] == "access_as_user"
    assert claims["azp"] == CLIENT_ID and claims["tid"] == tenant.tenant_id
    assert "nonce" not in claims  # the nonce is the ID token's, not the access token's

    # the room was added and invited
    state = outlook.state(page)
    assert ROOM in [a["emailAddress"].lower() for a in state["requiredAttendees"]]
    assert "Join the video meeting" in state["bodyContent"]
    assert not problems, problems


def test_an_id_token_without_the_requests_nonce_is_refused_by_msal(
    context: BrowserContext, service: Service
) -> None:
    """The stand-in's ID token carries the request's nonce because MSAL checks it: one with
    another nonce ends the sign-in with an error, and the pane books nothing."""
    tenant = service.tenant
    tenant.requests.clear()
    tenant.id_token_nonce = "not-the-requests-nonce"
    try:
        page = open_pane(context, service)
        bookings: list[str] = []
        page.on("request", lambda r: bookings.append(r.url) if "single-use-vmrs" in r.url else None)
        page.get_by_role("button", name="Add a one-time video room").click()
        assert outcome(page) == "Something went wrong"
        expect(page.locator("#vmr-status-message")).to_have_text(
            "Signing in did not work. Please try again."
        )
        expect(page.locator("#vmr-log")).to_contain_text("token failed nonce_mismatch")
        assert len(tenant.asked("token")) == 1  # the code was redeemed, the answer refused
        assert bookings == []
    finally:
        tenant.id_token_nonce = None


# --- the stand-in refuses what Entra refuses ------------------------------------------------------


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _authorize(service: Service, challenge: str, **extra: str) -> dict[str, list[str]]:
    """A code for the dialog page, as the browser would get it (the redirect's fragment)."""
    params = {
        "client_id": CLIENT_ID,
        "response_type": "code",
        "redirect_uri": service.dialog,
        "response_mode": "fragment",
        "scope": f"{SCOPE} openid profile offline_access",
        "state": "s1",
        "nonce": "n1",
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        "client_info": "1",
        **extra,
    }
    opener = urllib.request.build_opener(
        _NoRedirect, urllib.request.HTTPSHandler(context=_tls(service))
    )
    try:
        opener.open(f"{service.tenant.authority}/oauth2/v2.0/authorize?{urlencode(params)}")
    except urllib.error.HTTPError as e:
        if e.code != 302:
            raise
        location = e.headers["Location"]
        assert location.startswith(service.dialog + "#")
        return parse_qs(urlsplit(location).fragment)
    raise AssertionError("no redirect")


def _tls(service: Service) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(service.ca_file))


def _redeem(
    service: Service, code: str, verifier: str, origin: str | None
) -> tuple[int, dict[str, Any], str | None]:
    form = {
        "client_id": CLIENT_ID,
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": service.dialog,
        "code_verifier": verifier,
        "scope": f"{SCOPE} openid profile offline_access",
        "client_info": "1",
    }
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    if origin:
        headers["Origin"] = origin
    request = urllib.request.Request(
        f"{service.tenant.authority}/oauth2/v2.0/token",
        data=urlencode(form).encode(),
        headers=headers,
    )
    try:
        with urllib.request.urlopen(request, context=_tls(service)) as response:
            return (
                response.status,
                json.loads(response.read()),
                response.headers.get("Access-Control-Allow-Origin"),
            )
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read()), e.headers.get("Access-Control-Allow-Origin")


def test_the_stand_in_holds_to_pkce_spa_redemption_and_single_use_codes(service: Service) -> None:
    verifier = "v" * 43 + "-._~0123456789"
    challenge = entra_spa.b64url(hashlib.sha256(verifier.encode()).digest())

    # a redirect URI not registered for the app: an error page, no redirect
    with pytest.raises(urllib.error.HTTPError) as refused:
        _authorize(service, challenge, redirect_uri=f"{service.url}/elsewhere")
    assert refused.value.code == 400 and b"AADSTS50011" in refused.value.read()
    # no PKCE challenge: refused at the redirect URI
    answer = _authorize(service, "")
    assert answer["error"] == ["invalid_request"] and answer["state"] == ["s1"]

    answer = _authorize(service, challenge)
    assert set(answer) == {"code", "client_info", "state", "session_state"}
    client_info = json.loads(base64.urlsafe_b64decode(answer["client_info"][0] + "=="))
    assert client_info == {"uid": service.tenant.user.object_id, "utid": service.tenant.tenant_id}

    # a SPA's code redeemed without an Origin (not cross-origin): AADSTS9002327
    status, body, _ = _redeem(service, answer["code"][0], verifier, None)
    assert status == 400 and body["error_codes"] == [9002327]

    # the wrong verifier: AADSTS501481, and the code is spent
    code = _authorize(service, challenge)["code"][0]
    status, body, cors = _redeem(service, code, "w" * 43, service.url)
    assert status == 400 and body["error_codes"] == [501481] and cors == service.url
    status, body, _ = _redeem(service, code, verifier, service.url)
    assert status == 400 and body["error_codes"] == [54005]

    # the right one, cross-origin: tokens, readable by the page's origin
    code = _authorize(service, challenge)["code"][0]
    status, body, cors = _redeem(service, code, verifier, service.url)
    assert status == 200 and cors == service.url
    assert body["scope"] == SCOPE and body["token_type"] == "Bearer"
    assert {"access_token", "id_token", "refresh_token", "client_info"} <= set(body)
    id_claims = jwt.decode(body["id_token"], options={"verify_signature": False})
    assert id_claims["nonce"] == "n1" and id_claims["aud"] == CLIENT_ID
