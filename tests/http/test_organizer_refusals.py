"""What the organizer page and its sign-in refuse, the log says: one warning line per refusal,
naming the integration, the client's address (X-Forwarded-For only from a trusted proxy, as the
page's acts name it) and why, in our own words; never a token, code, state or cookie. A flood
of refusals writes a bounded number of lines and counts the rest."""

from __future__ import annotations

import html
import logging
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from aiohttp.test_utils import TestClient
from cryptography.hazmat.primitives.asymmetric import rsa

from tests import spoolkit
from tests.fakes import identity_platform
from tests.fakes.identity_platform import IdentityPlatform
from tests.fakes.identity_provider import IdentityProvider
from tests.http.test_organizer import (
    OLGA,
    PLATFORM_OID,
    PUBLIC,
    csrf_of,
    entra_token,
    integration,
    reserve,
    sign_in,
)
from vmrsched import config, service

CLIENT = "203.0.113.7"  # the browser's address, as the trusted proxy in front names it
VIA_PROXY = {"X-Forwarded-For": CLIENT}


@pytest.fixture
def platform(tmp_path: Path, idp: IdentityProvider) -> Iterator[tuple[IdentityPlatform, Path]]:
    with identity_platform.running(
        tmp_path, OLGA, client_id="pane-client", client_secret="pane-secret", tenant=idp.tenant
    ) as running:
        yield running


@pytest.fixture
def svc(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    idp: IdentityProvider,
    platform: tuple[IdentityPlatform, Path],
) -> Iterator[service.Service]:
    """The service behind a trusted proxy on this host (the test client's address); its
    rate limit a minute is the test's parameter, if it gives one."""
    doc = {
        "server": {
            "data_dir": str(tmp_path / "data"),
            "public_url": PUBLIC,
            "rate_limit_per_minute": getattr(request, "param", 1000),
            "trusted_proxies": ["127.0.0.1", "::1"],
        },
        "integrations": [integration(idp, *platform)],
    }
    running = service.start(config.parse(doc, tmp_path, {"PANE_SECRET": "pane-secret"}))
    spoolkit.wait_for(lambda: running.ctx.status.state("online") == "running")
    yield running
    running.stop()


@dataclass
class Walked:
    status: int
    text: str
    code: str
    state: str


async def walk(client: TestClient[Any, Any], ca: Path, bound: bool = True) -> Walked:
    """A sign-in through the provider and back to the page's callback, the browser behind the
    proxy; `bound`: the callback carries the state cookie its start set (else it was
    forwarded to another browser)."""
    start = await client.get("/my/online/sign-in", allow_redirects=False, headers=VIA_PROXY)
    assert start.status == 302
    state = start.cookies["vmrsched_sign_in_state"].value
    back = requests.get(
        start.headers["Location"], allow_redirects=False, verify=str(ca), timeout=10
    )
    callback = urllib.parse.urlsplit(back.headers["Location"])
    query = dict(urllib.parse.parse_qsl(callback.query))
    cookie = {"Cookie": f"vmrsched_sign_in_state={state}"} if bound else {}
    done = await client.get(
        f"{callback.path}?{callback.query}",
        headers={**cookie, **VIA_PROXY},
        allow_redirects=False,
    )
    return Walked(done.status, await done.text(), query["code"], query["state"])


def refusal_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.levelno == logging.WARNING and r.name.startswith("vmrsched") and CLIENT in r.message
    ]


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("vmrsched")
    ]


@pytest.mark.parametrize(
    ("changed", "forged", "why"),
    [
        pytest.param({"aud": "another-app"}, False, "another application", id="wrong audience"),
        pytest.param({"exp": int(time.time()) - 3600}, False, "expired", id="expired"),
        pytest.param({"nonce": "another-attempts"}, False, "nonce", id="nonce"),
        pytest.param({}, True, "signature", id="bad signature"),
        pytest.param(
            {"iss": "https://login.example/other/v2.0"},
            False,
            "https://login.example/other/v2.0",  # the log says which issuer
            id="another issuer",
        ),
    ],
)
async def test_a_refused_id_token_is_logged_once_with_the_integration_client_and_why(
    client: TestClient[Any, Any],
    platform: tuple[IdentityPlatform, Path],
    caplog: pytest.LogCaptureFixture,
    changed: dict[str, object],
    forged: bool,
    why: str,
) -> None:
    idp, ca = platform
    idp.claims_changed = changed
    if forged:
        idp.forge_with = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    caplog.clear()
    walked = await walk(client, ca)
    assert walked.status == 400
    assert [r.message for r in warnings_of(caplog)] == [r.message for r in refusal_lines(caplog)]
    [line] = refusal_lines(caplog)
    assert getattr(line, "integration", "") == "online"
    assert "sign-in refused" in line.message and why in line.message
    assert walked.code not in caplog.text and walked.state not in caplog.text


async def test_a_sign_in_is_one_line_naming_who_the_session_and_where_from(
    client: TestClient[Any, Any],
    platform: tuple[IdentityPlatform, Path],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "vmrsched")
    walked = await walk(client, platform[1])
    assert walked.status == 303
    [line] = [r for r in caplog.records if "signed in" in r.getMessage()]
    assert line.getMessage().startswith(f"{OLGA} signed in to the organizer page (session ")
    assert line.getMessage().endswith(f" from {CLIENT}")


async def test_forwarded_tampered_and_provider_refused_callbacks_are_logged(
    client: TestClient[Any, Any],
    platform: tuple[IdentityPlatform, Path],
    caplog: pytest.LogCaptureFixture,
) -> None:
    _, ca = platform
    forwarded = await walk(client, ca, bound=False)
    assert forwarded.status == 400
    [line] = refusal_lines(caplog)
    assert "not started in this browser" in line.message
    assert forwarded.code not in caplog.text

    caplog.clear()
    made_up = "made-up-state-0123456789"
    tampered = await client.get(
        "/my/online/sign-in/callback",
        params={"code": "a-code-from-elsewhere", "state": made_up},
        headers={"Cookie": f"vmrsched_sign_in_state={made_up}", **VIA_PROXY},
    )
    assert tampered.status == 400
    [line] = refusal_lines(caplog)
    assert "unknown or expired sign-in attempt" in line.message
    assert "a-code-from-elsewhere" not in caplog.text and made_up not in caplog.text

    caplog.clear()
    denied = await client.get(
        "/my/online/sign-in/callback",
        params={"error": "access_denied", "error_description": "AADSTS50105: not assigned"},
        headers=VIA_PROXY,
    )
    assert denied.status == 400
    [line] = warnings_of(caplog)  # one line: who, where from, and the provider's words
    assert CLIENT in line.message and "not assigned" in line.message
    assert getattr(line, "integration", "") == "online"


async def test_refused_acts_on_the_page_and_the_api_are_logged(
    client: TestClient[Any, Any],
    idp: IdentityProvider,
    svc: service.Service,
    platform: tuple[IdentityPlatform, Path],
    caplog: pytest.LogCaptureFixture,
) -> None:
    anns = await reserve(client, entra_token(idp, "00000000-aaaa-0000-0000-000000000001", "a@x"))
    session = await sign_in(client, platform[1])
    cookie = {"Cookie": f"vmrsched_my_session={session}", **VIA_PROXY}
    token = csrf_of(await (await client.get("/my/online", headers=cookie)).text())
    not_hers = f"/my/online/bookings/{urllib.parse.quote(anns['alias'])}/resend"

    caplog.clear()
    forged = await client.post(not_hers, data={"csrf": "0" * 64}, headers=cookie)
    assert forged.status == 403
    [line] = refusal_lines(caplog)
    assert "CSRF" in line.message and getattr(line, "integration", "") == "online"

    caplog.clear()
    elsewhere = await client.post(
        not_hers, data={"csrf": token}, headers={**cookie, "Origin": "https://evil.example"}
    )
    assert elsewhere.status == 421
    [line] = refusal_lines(caplog)
    assert "cross-origin" in line.message and "https://evil.example" in line.message

    caplog.clear()
    hidden = await client.post(not_hers, data={"csrf": token}, headers=cookie)
    assert hidden.status == 404
    [line] = refusal_lines(caplog)
    assert anns["alias"] in line.message and OLGA in line.message

    caplog.clear()
    bearer = {"Authorization": f"Bearer {entra_token(idp, PLATFORM_OID, OLGA)}", **VIA_PROXY}
    api = await client.post(
        f"/api/self/v1/online/bookings/{urllib.parse.quote(anns['alias'])}/cancel",
        headers=bearer,
    )
    assert api.status == 404
    [line] = refusal_lines(caplog)
    assert anns["alias"] in line.message and OLGA in line.message

    assert session not in caplog.text and token not in caplog.text


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_flood_of_refusals_writes_a_bounded_number_of_lines_and_counts_the_rest(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from vmrsched.http import refusals

    clock = Clock()
    bounded = refusals.Bounded(logging.getLogger("vmrsched.organizer"), per_minute=3, clock=clock)
    for n in range(10):
        bounded.warning("refusal %d", n, integration="online")
    assert [r.message for r in caplog.records] == ["refusal 0", "refusal 1", "refusal 2"]

    caplog.clear()
    clock.now += 61
    bounded.warning("refusal %d", 10, integration="online")
    summary, line = caplog.records
    assert "7" in summary.message and "not logged" in summary.message
    assert line.message == "refusal 10"


async def test_an_email_marked_unverified_is_refused_in_plain_words_and_logged(
    client: TestClient[Any, Any],
    platform: tuple[IdentityPlatform, Path],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Audit M1: an ID token whose `xms_edov` says the email's domain is not verified signs
    nobody in (the page says why in plain words) and the log names the address."""
    idp, ca = platform
    idp.claims_changed = {"xms_edov": False}
    walked = await walk(client, ca)
    assert walked.status == 400
    assert "domain your organization has not verified" in html.unescape(walked.text)
    [line] = refusal_lines(caplog)
    assert OLGA in line.message and "xms_edov" in line.message


# --- starting a sign-in (audit L2) -------------------------------------------------------------


@pytest.mark.parametrize("svc", [5], indirect=True)
async def test_sign_in_starts_are_limited_per_client_address_and_logged(
    client: TestClient[Any, Any], svc: service.Service, caplog: pytest.LogCaptureFixture
) -> None:
    """Each start keeps an attempt for ten minutes: starts from one address are limited as the
    page's other requests are ([server] rate_limit_per_minute), each one logged, the refusal a
    page (the browser is navigating) with Retry-After."""
    caplog.set_level(logging.INFO, "vmrsched")
    for _ in range(5):
        started = await client.get("/my/online/sign-in", headers=VIA_PROXY, allow_redirects=False)
        assert started.status == 302
    started_lines = [r for r in caplog.records if "sign-in started from" in r.message]
    assert len(started_lines) == 5 and all(CLIENT in r.message for r in started_lines)

    caplog.clear()
    refused = await client.get("/my/online/sign-in", headers=VIA_PROXY, allow_redirects=False)
    assert refused.status == 429 and int(refused.headers["Retry-After"]) >= 1
    assert refused.content_type == "text/html"
    assert "Too many sign-ins" in await refused.text()
    assert "vmrsched_sign_in_state" not in refused.cookies
    [line] = refusal_lines(caplog)
    assert "too many sign-ins" in line.message

    elsewhere = {"X-Forwarded-For": "198.51.100.9"}  # another browser: its own allowance
    started = await client.get("/my/online/sign-in", headers=elsewhere, allow_redirects=False)
    assert started.status == 302


def test_one_clients_flood_of_one_refusal_keeps_no_other_out_of_the_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The re-check's floods: a client's cross-origin posts, or one user's tries at others'
    aliases, use up their own minute only; another kind from that client, and the same kind
    from another client, are still written; past the ceiling for all, nothing more is."""
    from vmrsched.http import refusals

    clock = Clock()
    bounded = refusals.Bounded(
        logging.getLogger("vmrsched.organizer"), per_minute=3, clock=clock, ceiling=8
    )
    for n in range(10):
        bounded.warning("flood %d", n, key=("cross-origin", "203.0.113.9"))
    bounded.warning("sign-in refused", key=("organizer page sign-in", "203.0.113.9"))
    bounded.warning("from elsewhere", key=("cross-origin", "198.51.100.7"))
    messages = [r.message for r in caplog.records]
    assert messages == ["flood 0", "flood 1", "flood 2", "sign-in refused", "from elsewhere"]

    for n in range(10):  # many clients at once: the ceiling holds
        bounded.warning("client %d", n, key=("cross-origin", f"192.0.2.{n}"))
    assert len(caplog.records) == 8

    caplog.clear()
    clock.now += 61
    bounded.warning("flood again", key=("cross-origin", "203.0.113.9"))
    summary, line = caplog.records
    assert "7 more refusals of cross-origin from 203.0.113.9" in summary.message
    assert line.message == "flood again"
