"""The admin console in a real browser (Debian's headless Chromium driven by Playwright) against
`vmrsched serve` as a real process: a service-level alarm (config_invalid after a reload that
fails) shown with why and since when, the failed reload shown as an error, failed messages
retried and discarded, an alias deleted only after its confirmation; screenshots at 390 px and
1280 px in test-output/."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect

from tests import browsing, spoolkit
from tests.browsing import OUTPUT
from tests.configs import spool_toml
from tests.serving import free_port, start, wait_ready
from vmrsched.outgoing import Outgoing
from vmrsched.store.outqueue import OutQueue


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with browsing.chromium() as launched:
        yield launched


pytestmark = pytest.mark.slow
TOKEN = "console-admin-token-0123456789abcdef"


@dataclass
class Console:
    url: str
    config: Path
    spool: Path
    alias: str


def _failed(queue: Path, n: int, why: str) -> str:
    """A message the notifier gave up on, left in the integration's queue."""
    message = Outgoing(
        id=f"failed-{n:02d}",
        kind="reply",
        sender="vmr@example.com",
        sender_name="Video Room",
        recipients=(f"organizer{n}@example.com",),
        subject=f"Accepted: meeting {n}",
        html_body="<p>Accepted</p>",
        outcome="accepted",
        reason="new_single",
        correlation_id=f"00000000-0000-4000-8000-0000000000{n:02d}",
        meeting_uid=f"uid-{n}@example.com",
    )
    q = OutQueue(queue)
    q.add([message])
    q.fail(message.id, why)
    q.close()
    return message.id


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    tmp = tmp_path_factory.mktemp("console")
    port = free_port()
    config = tmp / "vmrsched.toml"
    config.write_text(
        spool_toml(
            tmp / "data",
            port=port,
            server='admin_token_env = "VMRSCHED_ADMIN_TOKEN"',
            head='timezone = "Europe/Paris"',
            integration="[integrations.spool]\npoll_interval_seconds = 0.05\n",
        )
    )
    queue = tmp / "data" / "queue" / "default"
    _failed(queue, 1, "ErrorNonExistentMailbox: the organizer's mailbox does not exist")
    _failed(queue, 2, "ErrorAccessDenied: impersonation denied for organizer2@example.com")
    proc = start(config, env={"VMRSCHED_ADMIN_TOKEN": TOKEN})
    try:
        wait_ready(port)
        url = f"http://127.0.0.1:{port}"
        spool = tmp / "data" / "spool" / "default"
        alias = _book(url, spool)
        yield Console(url, config, spool, alias)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _book(url: str, spool: Path) -> str:
    """A booked meeting: a reserved alias, the meeting request answered."""
    request = urllib.request.Request(
        f"{url}/api/addin/v1/default/single-use-vmrs",
        data=b"{}",
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        vmr = json.loads(response.read())
    start = (datetime.now(UTC) + timedelta(days=3)).replace(hour=8, minute=30, microsecond=0)
    data, uid = spoolkit.request(
        body=vmr["joining_instructions"], start=start, minutes=60, subject="Quarterly review"
    )
    if not (spool / "inbox").is_dir():
        spoolkit.wait_for(lambda: (spool / "inbox").is_dir())
    spoolkit.wait_handled(spool, spoolkit.drop(spool / "inbox", data))
    spoolkit.wait_for(lambda: bool(spoolkit.answers_for(spool, uid)))
    return str(vmr["alias"])


def shot(page: Page, name: str) -> None:
    OUTPUT.mkdir(exist_ok=True)
    page.screenshot(path=str(OUTPUT / name), full_page=True)


def logged_in(browser: Browser, url: str, width: int) -> Page:
    page = browser.new_page(viewport={"width": width, "height": 900})
    page.goto(f"{url}/admin")
    expect(page).to_have_url(f"{url}/admin/login?next=/admin")
    page.fill("#token", TOKEN)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Integrations")).to_be_visible()
    return page


def test_failed_messages_are_listed_retried_and_discarded(
    browser: Browser,
    console: Console,
) -> None:
    page = logged_in(browser, console.url, 1280)
    failed = page.locator("section[aria-labelledby=messages-heading]")
    expect(failed).to_contain_text("ErrorNonExistentMailbox")
    expect(failed).to_contain_text("ErrorAccessDenied")
    integrations = page.locator("section[aria-labelledby=integrations-heading]")
    expect(integrations).to_contain_text("delivery_failed")
    expect(integrations.locator(".badge")).to_have_text("degraded")
    # times are readable, in the integration's zone, the exact value on hover
    stamp = failed.locator("time").first
    assert stamp.get_attribute("datetime", timeout=5000)
    assert "Europe/Paris" in (stamp.get_attribute("title") or "")
    assert "." not in stamp.inner_text()  # no microseconds on the page
    shot(page, "admin-console-1280.png")

    page.get_by_role("button", name="Retry the reply to organizer1@example.com").click()
    expect(page.get_by_role("status")).to_contain_text("back in the queue")
    # the spool takes it at once: out of the failed list, in the outbox
    spoolkit.wait_for(
        lambda: any("failed-01" in p.name for p in (console.spool / "outbox").iterdir())
    )
    page.get_by_role("button", name="Discard the reply to organizer2@example.com").click()
    expect(page.get_by_role("status")).to_contain_text("discarded")
    page.reload()
    expect(failed).to_contain_text("No failed messages.")
    expect(integrations).not_to_contain_text("delivery_failed")  # nothing left to resolve
    expect(integrations.locator(".badge")).to_have_text("running")
    page.close()


def test_delete_is_confirmed_first(browser: Browser, console: Console) -> None:
    page = logged_in(browser, console.url, 1280)
    page.get_by_role("button", name=f"Delete {console.alias}").click()
    expect(page.get_by_role("heading", name=f"Delete {console.alias}?")).to_be_visible()
    shot(page, "admin-console-confirm-delete.png")
    page.get_by_role("link", name="Keep it").click()
    expect(page.get_by_role("heading", name="Integrations")).to_be_visible()
    expect(page.locator(".status-bound").first).to_be_visible()

    page.get_by_role("button", name=f"Delete {console.alias}").click()
    page.get_by_role("button", name=f"Delete {console.alias}").click()
    expect(page.get_by_role("status")).to_contain_text(f"{console.alias} deleted")
    expect(page.locator(".status-deleted").first).to_have_text("deleted")
    page.close()


def test_a_failed_reload_is_an_error_and_its_alarm_shows_why(
    browser: Browser,
    console: Console,
) -> None:
    good = console.config.read_text()
    console.config.write_text(good + "\n[server.unknown_table]\nnonsense = 1\n")
    try:
        page = logged_in(browser, console.url, 1280)
        page.get_by_role("button", name="Reload the configuration").click()
        expect(page.locator("p[role=alert]")).to_contain_text("Not reloaded")
        service = page.locator("section[aria-labelledby=service-heading]")
        expect(service.locator(".alarm")).to_contain_text("config_invalid")
        expect(service.locator(".alarm")).to_contain_text("unknown_table")  # why
        expect(service.locator(".alarm time")).to_have_count(1)  # since when
        # the tables are still there after the reload (the view was kept)
        expect(page.locator("section[aria-labelledby=aliases-heading] table")).to_be_visible()
        shot(page, "admin-console-reload-failed-1280.png")
        narrow = logged_in(browser, console.url, 390)
        expect(narrow.locator(".alarm").first).to_contain_text("config_invalid")
        shot(narrow, "admin-console-390.png")
        width = narrow.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, f"the console scrolls sideways at 390 px ({width} px wide)"
        narrow.close()
        page.close()
    finally:
        console.config.write_text(good)


def test_the_login_page_and_the_home_page_are_pages(
    browser: Browser,
    console: Console,
) -> None:
    page = browser.new_page(viewport={"width": 390, "height": 800})
    page.goto(f"{console.url}/admin/login")
    expect(page.get_by_role("button", name="Log in")).to_be_visible()
    shot(page, "admin-login-390.png")
    page.goto(f"{console.url}/")
    expect(page.get_by_role("link", name="Administration")).to_be_visible()
    page.close()
    with urllib.request.urlopen(f"{console.url}/", timeout=5) as response:
        assert json.loads(response.read())["service"] == "vmrsched"


def test_the_api_shows_the_service_level_alarm(console: Console) -> None:
    """(runs last: the reload test left config_invalid raised)"""
    request = urllib.request.Request(
        f"{console.url}/api/admin/v1/integrations",
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        body = json.loads(response.read())
    assert [a["name"] for a in body["alarms"]] == ["config_invalid"]
    assert body["integrations"][0]["outgoing"]["failed"] == 0
