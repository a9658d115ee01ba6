"""The add-in where Outlook or the network does not go the easy way, under the Office.js
stand-in of tests/fakes/office (written from Microsoft's documentation) against `vmrsched serve`
as a real process: a room the organizer removed, a plain-text body, a reservation whose details
could not go in, a proxy's error page or a hung service, Outlook's 150-character notification bar,
the send check's advice against what the pane does, the API's refusals, and every text from the
integration's configuration, in the JavaScript-only runtime of classic Outlook too."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, Request, Route, expect

from tests import browsing
from tests.configs import spool_toml
from tests.fakes import outlook
from tests.serving import free_port, start, wait_ready
from tests.spoolkit import answers_for, wait_for

pytestmark = pytest.mark.slow
ROOM = "vmr@example.com"
OLGA = ("Olga Organizer", "olga@example.com")
MAILBOX_114 = {"Mailbox": "1.14", "DialogApi": "1.2", "IdentityAPI": "1.3"}
API = re.compile(r".*/api/addin/v1/default/single-use-vmrs$")
TOKEN_RE = re.compile(r"(PXPS|TOK):-[0-9a-f-]{36}#")
# longer than the 150 characters Outlook's notification bar takes
LONG_UNAVAILABLE = (
    "The booking service could not be reached just now. A meeting reference was added to "
    "the meeting, and the joining details will be sent to you by e-mail shortly after you "
    "send the invitation to everyone."
)
TEXTS = {
    "success_heading": "Room added!",
    "unavailable_heading": "Offline, placeholder added",
    "already_assigned_heading": "Already has a room",
    "unavailable_message": LONG_UNAVAILABLE,
    "room_invited_again_message": "The room is back in the meeting.",
    "send_check_details_removed_message": "Details gone: add a room again, or send anyway.",
    "send_check_room_removed_message": "The room left: bring it back, or send anyway.",
    "send_check_foreign_token_message": "Another meeting's details: remove them first.",
    "send_check_button_label": "Bring it back",
    "error_too_many_requests_message": "Slow down, wait {seconds} s.",
    "error_quota_exceeded_message": "You hold all the rooms you may.",
}
ADDIN = (
    'server_fqdn = "vc.example.com"\n'
    + "".join(f"{k} = {json.dumps(v)}\n" for k, v in TEXTS.items())
    + "[integrations.advanced]\nenable_addin_debug_logs = true\n"
    + "[integrations.spool]\npoll_interval_seconds = 0.05\n"
)


@dataclass
class Service:
    url: str
    data: Path


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    tmp = tmp_path_factory.mktemp("edges")
    port = free_port()
    config = tmp / "vmrsched.toml"
    config.write_text(spool_toml(tmp / "data", port=port, integration=ADDIN))
    proc = start(config)
    try:
        wait_ready(port)
        yield Service(f"http://127.0.0.1:{port}", tmp / "data")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with browsing.chromium() as launched:
        yield launched


def host_config(platform: str = "OfficeOnline", **overrides: Any) -> dict[str, Any]:
    start_at = (datetime.now(UTC) + timedelta(days=1)).replace(minute=0, second=0, microsecond=0)
    config: dict[str, Any] = {
        "platform": platform,
        "requirementSets": dict(MAILBOX_114),
        "userProfile": {
            "displayName": OLGA[0],
            "emailAddress": OLGA[1],
            "timeZone": "Europe/London",
            "accountType": "enterprise",
        },
        "item": {
            "subject": "Quarterly review",
            "start": start_at.isoformat(),
            "end": (start_at + timedelta(minutes=45)).isoformat(),
            "body": "<p>Agenda: quarterly numbers.</p>",
            "requiredAttendees": [{"displayName": "Bob", "emailAddress": "bob@example.com"}],
        },
        "launchEvents": {"OnAppointmentSend": "onAppointmentSend"},
    }
    item = overrides.pop("item", {})
    config.update(overrides)
    config["item"].update(item)
    return config


def open_page(browser: Browser, url: str, config: dict[str, Any]) -> Page:
    page = browser.new_page(viewport={"width": 360, "height": 900})
    outlook.install(page, config)
    page.goto(url)
    return page


def open_pane(browser: Browser, service: Service, config: dict[str, Any]) -> Page:
    page = open_page(browser, f"{service.url}/addin/default/taskpane.html", config)
    expect(page.locator("#vmr-app")).to_have_attribute("data-ready", "outlook")
    return page


def add_single_use(page: Page) -> None:
    page.get_by_role("button", name="Add a one-time video room").click()


def heading(page: Page) -> Any:
    return page.locator("#vmr-status-heading")


def attendees(state: dict[str, Any]) -> list[str]:
    return [a["emailAddress"].lower() for a in state["requiredAttendees"]]


def booked(browser: Browser, service: Service) -> dict[str, Any]:
    page = open_pane(browser, service, host_config())
    add_single_use(page)
    expect(heading(page)).to_have_text("Room added!")
    state = outlook.state(page)
    page.close()
    return state


def item_of(state: dict[str, Any], **changes: Any) -> dict[str, Any]:
    item = {
        "body": state["bodyContent"],
        "location": state["location"],
        "requiredAttendees": state["requiredAttendees"],
        "customProperties": state["customProperties"],
    }
    item.update(changes)
    return item


def send_check(browser: Browser, service: Service, item: dict[str, Any]) -> dict[str, Any]:
    page = open_page(browser, f"{service.url}/addin/default/commands.html", host_config(item=item))
    page.wait_for_function("() => window.vmrschedCommands !== undefined")
    try:
        return outlook.fire(page, "onAppointmentSend")
    finally:
        page.close()


def settled(page: Page) -> None:
    """The pane has run what it runs on opening (it asks how it was opened, or reads the custom
    properties)."""
    page.wait_for_function(
        "() => window.__outlook.calls.some((c) => c.api === 'item.getInitializationContextAsync'"
        " || c.api === 'loadCustomPropertiesAsync')"
    )
    page.wait_for_timeout(500)


# --- finding 1: a removed room is re-invited only on the organizer's "Add the room back" ---------


def test_opening_the_pane_leaves_a_removed_room_removed(browser: Browser, service: Service) -> None:
    state = booked(browser, service)
    others = [a for a in state["requiredAttendees"] if a["emailAddress"].lower() != ROOM]
    # the organizer took the room out and the details too, then opens the pane to pick another
    item = item_of(state, body="<p>Agenda only</p>", requiredAttendees=others)
    page = open_pane(browser, service, host_config(item=item))
    settled(page)
    assert ROOM not in attendees(outlook.state(page))
    expect(page.locator("#vmr-status-heading")).to_be_hidden()
    page.close()
    # details kept, room removed, pane opened from the ribbon: still not re-invited
    page = open_pane(browser, service, host_config(item=item_of(state, requiredAttendees=others)))
    settled(page)
    assert ROOM not in attendees(outlook.state(page))
    page.close()


def test_add_the_room_back_invites_it_again_and_says_so_in_the_configured_text(
    browser: Browser, service: Service
) -> None:
    state = booked(browser, service)
    others = [a for a in state["requiredAttendees"] if a["emailAddress"].lower() != ROOM]
    verdict = send_check(browser, service, item_of(state, requiredAttendees=others))
    assert verdict["errorMessage"] == TEXTS["send_check_room_removed_message"]
    assert verdict["cancelLabel"] == "Bring it back"
    context = verdict["contextData"]
    page = open_pane(
        browser,
        service,
        host_config(item=item_of(state, requiredAttendees=others), initializationContext=context),
    )
    expect(page.locator("#vmr-status-message")).to_have_text(TEXTS["room_invited_again_message"])
    assert ROOM in attendees(outlook.state(page))
    page.close()
    # the same button, but the details are gone meanwhile: the room would only decline it
    gone = item_of(state, body="<p>Agenda only</p>", requiredAttendees=others)
    page = open_pane(browser, service, host_config(item=gone, initializationContext=context))
    settled(page)
    assert ROOM not in attendees(outlook.state(page))
    page.close()


# --- finding 6: the send check advises only what the pane does ----------------------------------


def test_the_send_check_advises_what_the_pane_then_does(browser: Browser, service: Service) -> None:
    first, second = booked(browser, service), booked(browser, service)
    # another meeting's details, pasted: no button (the pane adds no second room), only the text
    verdict = send_check(browser, service, item_of(first, customProperties={}))
    assert verdict["allowEvent"] is False
    assert verdict["errorMessage"] == TEXTS["send_check_foreign_token_message"]
    assert "commandId" not in verdict and "cancelLabel" not in verdict
    # once they are removed, the pane adds a room of the meeting's own
    page = open_pane(browser, service, host_config(item=item_of(second, body="<p>Agenda</p>")))
    add_single_use(page)
    expect(heading(page)).to_have_text("Room added!")
    page.close()
    # details removed: the button opens the pane, which adds a room again on a click
    verdict = send_check(browser, service, item_of(second, body="<p>Agenda only</p>"))
    assert verdict["errorMessage"] == TEXTS["send_check_details_removed_message"]
    assert verdict["commandId"] == "vmrschedOpenPane" and "contextData" not in verdict
    item = item_of(second, body="<p>Agenda only</p>")
    page = open_pane(browser, service, host_config(item=item))
    add_single_use(page)
    expect(heading(page)).to_have_text("Room added!")
    assert len(TOKEN_RE.findall(outlook.state(page)["bodyContent"])) == 1
    page.close()


def test_the_send_check_texts_reach_the_javascript_only_runtime(
    browser: Browser, service: Service
) -> None:
    """Classic Outlook on Windows loads the integration's commands.js alone, without a page."""
    state = booked(browser, service)
    page = browser.new_page()
    outlook.install(page, host_config(item=item_of(state, customProperties={})))
    alone = f"{service.url}/addin/default/js-runtime.html"
    page.route(
        alone,
        lambda route: route.fulfill(
            content_type="text/html",
            body='<script src="https://appsforoffice.microsoft.com/lib/1/hosted/office.js">'
            '</script><script src="/addin/default/commands.js"></script>',
        ),
    )
    page.goto(alone)
    page.wait_for_function("() => window.vmrschedCommands !== undefined")
    assert page.evaluate("() => document.getElementById('vmr-commands')") is None
    verdict = outlook.fire(page, "onAppointmentSend")
    assert verdict["errorMessage"] == TEXTS["send_check_foreign_token_message"]
    page.close()


# --- finding 2: a plain-text body; a reservation not inserted is not lost -------------------------


def test_a_plain_text_body_gets_the_instructions_as_text(
    browser: Browser, service: Service
) -> None:
    config = host_config("Android", item={"bodyType": "text", "body": "Agenda: numbers."})
    page = open_pane(browser, service, config)
    add_single_use(page)
    expect(heading(page)).to_have_text("Room added!")
    state = outlook.state(page)
    assert state["bodyType"] == "text"
    body = state["bodyContent"]
    assert body.startswith("Agenda: numbers.\n\n") and "<" not in body.split("\n")[0]
    assert "Join the video meeting" in body and len(TOKEN_RE.findall(body)) == 1
    assert ROOM in attendees(state)
    writes = [c for c in outlook.calls(page) if c["api"] == "body.setAsync"]
    assert writes and all(c["args"][1] == {"coercionType": "text"} for c in writes)
    path = outlook.deliver(
        state,
        service.data / "spool" / "default" / "inbox",
        ROOM,
        uid=(uid := outlook.outlook_uid()),
        organizer=OLGA,
        dtstamp=datetime.now(UTC),
    )
    assert path is not None
    spool = service.data / "spool" / "default"
    wait_for(lambda: len(answers_for(spool, uid)) >= 1, timeout=30)
    assert answers_for(spool, uid)[0].outcome == "accepted"


def test_a_reservation_whose_details_did_not_fit_is_used_on_the_next_click(
    browser: Browser, service: Service
) -> None:
    full = "<p>" + "x" * 999_900 + "</p>"  # the body's 1,000,000 characters: no room for more
    page = open_pane(browser, service, host_config(item={"body": full}))
    posts: list[str] = []
    page.on("request", lambda r: posts.append(r.url) if API.match(r.url) else None)
    add_single_use(page)
    expect(page.locator("#vmr-status-message")).to_have_text(
        "The video room could not be added to this meeting. Please try again."
    )
    page.evaluate("() => window.__outlook.edit({bodyContent: '<p>Agenda, shortened.</p>'})")
    add_single_use(page)
    expect(heading(page)).to_have_text("Room added!")
    add_single_use(page)
    expect(heading(page)).to_have_text("Already has a room")
    assert len(posts) == 1  # one reservation, drawn once and used
    page.close()


# --- finding 4: anything but the API's JSON is the service unreachable -------------------------


@pytest.mark.parametrize("status", [502, 504])
def test_a_proxy_error_page_takes_the_offline_path(
    browser: Browser, service: Service, status: int
) -> None:
    page = open_pane(browser, service, host_config())
    page.route(
        API,
        lambda route: route.fulfill(
            status=status, content_type="text/html", body="<html><body>Bad Gateway</body></html>"
        ),
    )
    add_single_use(page)
    expect(heading(page)).to_have_text("Offline, placeholder added")
    state = outlook.state(page)
    assert re.search(r"TOK:-[0-9a-f-]{36}#", state["bodyContent"]) and ROOM in attendees(state)
    page.close()


def test_a_service_that_never_answers_takes_the_offline_path(
    browser: Browser, service: Service
) -> None:
    page = open_pane(browser, service, host_config())
    held: list[Route] = []
    page.route(API, lambda route: held.append(route))  # never answered
    add_single_use(page)
    expect(heading(page)).to_have_text("Offline, placeholder added", timeout=20000)
    assert ROOM in attendees(outlook.state(page))
    expect(page.get_by_role("button", name="Add a one-time video room")).to_be_enabled()
    page.close()


# --- finding 7: the API's refusals, each with its text ------------------------------------------


def refuse(page: Page, status: int, code: str, headers: dict[str, str] | None = None) -> None:
    body = json.dumps({"error": {"code": code, "message": code}})

    def answer(route: Route, request: Request) -> None:
        route.fulfill(
            status=status, content_type="application/json", body=body, headers=headers or {}
        )

    page.route(API, answer)


def test_the_pane_says_what_each_refusal_means(browser: Browser, service: Service) -> None:
    page = open_pane(browser, service, host_config())
    refuse(page, 429, "rate_limited", {"Retry-After": "3"})
    add_single_use(page)
    expect(page.locator("#vmr-status-message")).to_have_text("Slow down, wait 3 s.")
    button = page.get_by_role("button", name="Add a one-time video room")
    expect(button).to_be_disabled()  # as long as the service asked
    expect(button).to_be_enabled(timeout=6000)
    page.unroute(API)
    refuse(page, 429, "quota_exceeded")
    add_single_use(page)
    expect(page.locator("#vmr-status-message")).to_have_text(TEXTS["error_quota_exceeded_message"])
    page.unroute(API)
    refuse(page, 401, "invalid_token")
    add_single_use(page)
    expect(page.locator("#vmr-status-message")).to_have_text(
        "Signing in did not work. Please try again."
    )
    assert ROOM not in attendees(outlook.state(page))
    page.close()


# --- finding 5: Outlook's notification bar takes 150 characters ------------------------------


def test_the_mobile_button_notifies_within_outlooks_150_characters(
    browser: Browser, service: Service
) -> None:
    url = f"{service.url}/addin/default/commands.html"
    page = open_page(browser, url, host_config("Android"))
    page.wait_for_function("() => window.vmrschedCommands !== undefined")
    page.route(API, lambda route: route.abort("connectionrefused"))
    outcome = outlook.fire(page, "addSingleUseRoom", source_id="vmrschedMobileAdd")
    assert "error" not in outcome and "timeout" not in outcome, outcome
    state = outlook.state(page)
    message = state["notifications"]["vmrsched"]["message"]
    assert len(LONG_UNAVAILABLE) > 150 >= len(message)
    assert message.endswith("\u2026") and LONG_UNAVAILABLE.startswith(message[:-1])
    assert re.search(r"TOK:-[0-9a-f-]{36}#", state["bodyContent"]) and ROOM in attendees(state)
    page.close()
