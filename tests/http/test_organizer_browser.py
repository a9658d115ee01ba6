"""The organizer page in a real browser (Debian's headless Chromium driven by Playwright) at a
phone's width (390 px): Olga signs in at the identity platform stand-in, sees her bookings and
declines and not Ann's, has her joining details sent again, and cancels a reservation she no
longer needs. Screenshots go to test-output/organizer-*.png."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from playwright.sync_api import Browser, Page, expect

from tests import browsing, spoolkit
from tests.fakes import identity_platform
from tests.fakes.identity_provider import IdentityProvider
from tests.fakes.threaded import ThreadedServer
from tests.http.test_organizer import OLGA, PLATFORM_OID, entra_token, integration
from tests.serving import free_port
from vmrsched import config, service
from vmrsched.http.app import create_app

ROOT = Path(__file__).resolve().parents[2]
OUTPUT = ROOT / "test-output"
pytestmark = pytest.mark.slow


@dataclass
class World:
    url: str
    svc: service.Service
    spool: Path
    booked: dict[str, Any]
    spare: dict[str, Any]
    anns: dict[str, Any]


def reserve(url: str, token: str) -> dict[str, Any]:
    response = requests.post(
        f"{url}/api/addin/v1/online/single-use-vmrs",
        headers={"Authorization": f"Bearer {token}"},
        json={"subject": "Sync"},
        timeout=10,
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def meeting(spool: Path, body: str, organizer: str, subject: str) -> str:
    data, uid = spoolkit.request(body=body, organizer=organizer, subject=subject)
    spoolkit.wait_handled(spool, spoolkit.drop(spool / "inbox", data))
    spoolkit.wait_for(lambda: bool(spoolkit.answers_for(spool, uid)))
    return spoolkit.answers_for(spool, uid)[0].headers["X-Vmrsched-Outcome"]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """The service on loopback over plain http (its cookies are not Secure there), Entra ID
    tokens from the fake provider, the user sign-in at the fake platform (real TLS)."""
    tmp = tmp_path_factory.mktemp("organizer")
    idp = IdentityProvider()
    idp_server = ThreadedServer(idp.app()).start()
    idp.base = idp_server.url
    with identity_platform.running(
        tmp, OLGA, client_id="pane-client", client_secret="pane-secret", tenant=idp.tenant
    ) as (platform, ca):
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        doc = {
            "server": {
                "listen": f"127.0.0.1:{port}",
                "data_dir": str(tmp / "data"),
                "public_url": url,
                "rate_limit_per_minute": 1000,
            },
            "integrations": [integration(idp, platform, ca)],
        }
        svc = service.start(config.parse(doc, tmp, {"PANE_SECRET": "pane-secret"}))
        web_server: ThreadedServer | None = None
        try:
            spoolkit.wait_for(lambda: svc.ctx.status.state("online") == "running")
            web_server = ThreadedServer(create_app(svc), port=port).start()
            spool = svc.config.integrations[0].spool_dir(svc.config.data_dir)
            olga = entra_token(idp, PLATFORM_OID, OLGA)
            ann = entra_token(idp, "00000000-aaaa-bbbb-cccc-000000000001", "ann@contoso.example")
            booked, spare, anns = reserve(url, olga), reserve(url, olga), reserve(url, ann)
            assert meeting(spool, booked["joining_instructions"], OLGA, "Board") == "accepted"
            assert meeting(spool, "<p>no room</p>", OLGA, "Budget review") == "declined"
            assert meeting(spool, "<p>no room</p>", "ann@contoso.example", "Ann's") == "declined"
            yield World(url, svc, spool, booked, spare, anns)
        finally:
            if web_server is not None:
                web_server.stop()
            svc.stop()
            idp_server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with browsing.chromium() as launched:
        yield launched


def shot(page: Page, name: str) -> None:
    OUTPUT.mkdir(exist_ok=True)
    page.screenshot(path=str(OUTPUT / name), full_page=True)


def card(page: Page, alias: str) -> Any:
    return page.locator(f'li.card[data-alias="{alias}"]')


def test_sign_in_see_ones_own_resend_and_cancel(browser: Browser, world: World) -> None:
    context = browser.new_context(viewport={"width": 390, "height": 844}, ignore_https_errors=True)
    scripts: list[str] = []
    page = context.new_page()
    page.on("request", lambda r: scripts.append(r.url) if r.resource_type == "script" else None)
    page.goto(f"{world.url}/my/online")
    expect(page.get_by_role("heading", name="Your video meetings")).to_be_visible()
    shot(page, "organizer-signed-out.png")

    page.get_by_role("link", name="Sign in").click()  # to the platform and back
    expect(page).to_have_url(f"{world.url}/my/online")
    expect(page.locator(".who")).to_contain_text(OLGA)
    expect(card(page, world.booked["alias"])).to_contain_text("Booked for your meeting")
    expect(card(page, world.spare["alias"])).to_contain_text("Reserved, not used")
    expect(card(page, world.anns["alias"])).to_have_count(0)
    assert world.anns["alias"] not in page.content()
    declines = page.locator("li.card[data-reason]")
    expect(declines).to_have_count(1)
    expect(declines).to_contain_text("no video room reference")
    expect(declines).to_contain_text("What to do:")
    # a subject is the organizer's text, of any direction: isolated from the page around it
    expect(card(page, world.booked["alias"]).locator("h3 > bdi")).to_have_text("Board")
    expect(declines.locator("h3 > bdi")).to_have_text("Budget review")
    assert "Ann's" not in page.content()
    # nothing wider than the phone
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    shot(page, "organizer-bookings.png")

    before = len(spoolkit.outbox(world.spool))
    card(page, world.booked["alias"]).get_by_role(
        "button", name="Send me the joining details again"
    ).click()
    expect(page.locator(".notice")).to_contain_text("on their way to your mailbox")
    spoolkit.wait_for(lambda: len(spoolkit.outbox(world.spool)) > before)
    resent = spoolkit.outbox(world.spool)[-1]
    assert resent.headers["To"] == OLGA and world.booked["alias"] in resent.html
    shot(page, "organizer-resent.png")

    spare = card(page, world.spare["alias"])
    spare.get_by_label("I no longer need this room").check()
    spare.get_by_role("button", name="Cancel this reservation").click()
    expect(page.locator(".notice")).to_contain_text("The reservation is cancelled")
    expect(card(page, world.spare["alias"])).to_contain_text("you cancelled the reservation")
    expect(
        card(page, world.spare["alias"]).get_by_role("button", name="Cancel this reservation")
    ).to_have_count(0)
    shot(page, "organizer-cancelled.png")
    assert scripts == []  # the page runs no script

    page.get_by_role("button", name="Sign out").click()
    expect(page.locator(".notice")).to_contain_text("You are signed out")
    expect(page.get_by_role("link", name="Sign in")).to_be_visible()
    assert not any(c["name"] == "vmrsched_my_session" for c in context.cookies())
    context.close()


def test_the_pane_links_the_page(browser: Browser, world: World) -> None:
    page = browser.new_page(viewport={"width": 390, "height": 844})
    page.route(re.compile(r"https://(appsforoffice|alcdn)\.microsoft\.com/.*"), lambda r: r.abort())
    page.route(re.compile(r"https://login\.microsoftonline\.com/.*"), lambda r: r.abort())
    page.goto(f"{world.url}/addin/online/taskpane.html")
    link = page.get_by_role("link", name="Your bookings and declined meetings")
    expect(link).to_have_attribute("href", "/my/online")
    expect(link).to_have_attribute("target", "_blank")
    page.close()
