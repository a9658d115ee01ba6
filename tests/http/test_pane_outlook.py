"""The add-in pane in Outlook as Microsoft documents it: the real pane (and the function file the
send check and the mobile button load) under the Office.js stand-in of tests/fakes/office, at
Outlook's 360 px, against `vmrsched serve` as a real process. A test "send" turns the item into
the meeting request Outlook would send and delivers it to the spool inbox only when the room is an
attendee, as Exchange routes it; the room's answer is then read from the outbox."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect

from tests import browsing
from tests.configs import PANE_ADDIN, spool_toml
from tests.fakes import outlook
from tests.fakes.identity_provider import IdentityProvider
from tests.fakes.threaded import ThreadedServer
from tests.serving import ROOT, free_port, wait_ready
from tests.spoolkit import Mail, answers_for, wait_for

pytestmark = pytest.mark.slow
OUTPUT = ROOT / "test-output"
ROOM = "vmr@example.com"
ENTRA_ROOM = "vmr-entra@example.com"
CLIENT_ID = "app-client-id"
SCOPE = f"api://vc.example.com/{CLIENT_ID}/access_as_user"
TOKEN_RE = re.compile(r"(PXPS|TOK):-[0-9a-f-]{36}#")
OLGA = ("Olga Organizer", "olga@example.com")
MAILBOX_114 = {"Mailbox": "1.14", "DialogApi": "1.2", "IdentityAPI": "1.3"}
LAUNCH = {"OnAppointmentSend": "onAppointmentSend"}

ADDIN = PANE_ADDIN

ENTRA = """
[[integrations]]
name = "entra"
[integrations.exchange]
mailbox_name = "Entra Room"
mailbox_email = "{room}"
[integrations.single_use]
alias_prefix = "ent"
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
    data: Path
    idp: IdentityProvider

    def spool(self, integration: str = "default") -> Path:
        return self.data / "spool" / integration


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """The trial integration (token validation off, personal rooms from the demo directory) and
    one whose add-in sends Entra ID tokens, verified against a stand-in tenant's keys."""
    tmp = tmp_path_factory.mktemp("outlook")
    idp = IdentityProvider()
    tenant = ThreadedServer(idp.app()).start()
    idp.base = tenant.url
    port = free_port()
    config = tmp / "vmrsched.toml"
    config.write_text(
        spool_toml(tmp / "data", port=port, head="enable_personal_vmrs = true", integration=ADDIN)
        + ENTRA.format(room=ENTRA_ROOM, tenant=idp.tenant, client=CLIENT_ID, authority=idp.base)
    )
    log = open(tmp / "server.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "vmrsched", "serve", "--config", str(config)],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=dict(os.environ),
    )
    try:
        wait_ready(port)
        yield Service(f"http://127.0.0.1:{port}", tmp / "data", idp)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
        tenant.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with browsing.chromium() as launched:
        yield launched


def host_config(platform: str = "PC", **overrides: Any) -> dict[str, Any]:
    start = (datetime.now(UTC) + timedelta(days=1)).replace(minute=0, second=0, microsecond=0)
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
            "start": start.isoformat(),
            "end": (start + timedelta(minutes=45)).isoformat(),
            "location": "",
            "body": "<p>Agenda: quarterly numbers.</p>",
            "requiredAttendees": [{"displayName": "Bob", "emailAddress": "bob@example.com"}],
            "optionalAttendees": [],
            "organizer": {"displayName": OLGA[0], "emailAddress": OLGA[1]},
        },
        "launchEvents": dict(LAUNCH),
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


def open_pane(
    browser: Browser, service: Service, config: dict[str, Any], integration: str = "default"
) -> Page:
    page = open_page(browser, f"{service.url}/addin/{integration}/taskpane.html", config)
    expect(page.locator("#vmr-app")).to_have_attribute("data-ready", "outlook")
    return page


def open_commands(
    browser: Browser, service: Service, config: dict[str, Any], integration: str = "default"
) -> Page:
    page = open_page(browser, f"{service.url}/addin/{integration}/commands.html", config)
    page.wait_for_function("() => window.vmrschedCommands !== undefined")
    return page


def add_single_use(page: Page) -> None:
    page.get_by_role("button", name="Add a one-time video room").click()


def addresses(state: dict[str, Any], kind: str = "requiredAttendees") -> list[str]:
    return [a["emailAddress"].lower() for a in state[kind]]


def send(
    state: dict[str, Any],
    service: Service,
    integration: str = "default",
    room: str = ROOM,
    **kwargs: Any,
) -> tuple[Path | None, str]:
    """Outlook's Send, as Exchange routes it: to the room's inbox only if it is an attendee."""
    uid = outlook.outlook_uid()
    kwargs.setdefault("organizer", OLGA)
    path = outlook.deliver(
        state,
        service.spool(integration) / "inbox",
        room,
        uid=uid,
        dtstamp=datetime.now(UTC),
        **kwargs,
    )
    return path, uid


def answers(service: Service, uid: str, count: int, integration: str = "default") -> list[Mail]:
    spool = service.spool(integration)
    wait_for(lambda: len(answers_for(spool, uid)) >= count, timeout=30)
    return answers_for(spool, uid)


def shot(page: Page, name: str) -> None:
    OUTPUT.mkdir(exist_ok=True)
    page.screenshot(path=str(OUTPUT / name), full_page=True)


# --- single-use rooms ----------------------------------------------------------------------------


def test_windows_single_use_invites_the_room_writes_inside_the_body_and_is_accepted(
    browser: Browser, service: Service
) -> None:
    page = open_pane(browser, service, host_config("PC"))
    add_single_use(page)
    expect(page.locator("#vmr-status-heading")).to_have_text("Room added!")
    state = outlook.state(page)
    # Windows hands the pane a whole document: the instructions must land inside its body
    assert state["bodyContent"].index("Agenda: quarterly numbers.") < state["bodyContent"].index(
        "Join the video meeting"
    )
    assert len(TOKEN_RE.findall(state["bodyContent"])) == 1
    assert addresses(state) == ["bob@example.com", ROOM]  # the organizer's attendees kept
    assert re.fullmatch(r"vmr\d{6}@video\.example\.com", state["location"])
    shot(page, "outlook-windows-added.png")

    path, uid = send(state, service)
    assert path is not None
    (reply,) = answers(service, uid, 1)
    assert reply.outcome == "accepted" and reply.reason == "new_single"
    assert reply.headers["To"].endswith(f"<{OLGA[1]}>") or reply.headers["To"] == OLGA[1]


def test_web_single_use_appends_to_the_fragment(browser: Browser, service: Service) -> None:
    page = open_pane(browser, service, host_config("OfficeOnline"))
    add_single_use(page)
    expect(page.locator("#vmr-status-heading")).to_have_text("Room added!")
    body = outlook.state(page)["bodyContent"]
    assert body.index("Agenda: quarterly numbers.") < body.index("Join the video meeting")
    assert ROOM in addresses(outlook.state(page))


def test_a_mailbox_1_1_host_gets_the_instructions_at_the_top(
    browser: Browser, service: Service
) -> None:
    """Hosts before Mailbox 1.3 can neither read nor replace the body: the pane prepends."""
    page = open_pane(browser, service, host_config("PC", requirementSets={"Mailbox": "1.1"}))
    add_single_use(page)
    expect(page.locator("#vmr-status-heading")).to_have_text("Room added!")
    state = outlook.state(page)
    body = state["bodyContent"]
    assert body.index("Join the video meeting") < body.index("Agenda: quarterly numbers.")
    assert ROOM in addresses(state)
    add_single_use(page)  # the custom property remembers the room
    expect(page.locator("#vmr-status-heading")).to_have_text("Already has a room")


def test_offline_single_use_invites_the_room_and_the_organizer_gets_the_real_details(
    browser: Browser, service: Service
) -> None:
    page = open_pane(browser, service, host_config("PC"))
    page.route(re.compile(r".*/api/addin/v1/.*"), lambda r: r.abort("connectionrefused"))
    add_single_use(page)
    expect(page.locator("#vmr-status-heading")).to_have_text("Offline, placeholder added")
    state = outlook.state(page)
    assert re.search(r"TOK:-[0-9a-f-]{36}#", state["bodyContent"])
    assert ROOM in addresses(state)
    path, uid = send(state, service)
    assert path is not None
    mails = answers(service, uid, 2)
    assert {(m.outcome, m.reason) for m in mails} == {
        ("accepted", "new_single"),
        ("updated", "placeholder_replaced"),
    }


def test_a_meeting_holds_one_room(browser: Browser, service: Service) -> None:
    page = open_pane(browser, service, host_config("PC"))
    add_single_use(page)
    expect(page.locator("#vmr-status-heading")).to_have_text("Room added!")
    before = outlook.state(page)
    add_single_use(page)
    expect(page.locator("#vmr-status-heading")).to_have_text("Already has a room")
    page.get_by_role("button", name="Use my personal room").click()
    page.get_by_role("button", name=re.compile("Olga")).first.click()
    expect(page.locator("#vmr-status-heading")).to_have_text("Already has a room")
    after = outlook.state(page)
    assert after["bodyContent"] == before["bodyContent"]
    assert addresses(after) == addresses(before)
    assert after["location"] == before["location"]


def test_a_personal_room_is_inserted_without_inviting_the_room(
    browser: Browser, service: Service
) -> None:
    page = open_pane(browser, service, host_config("OfficeOnline"))
    page.get_by_role("button", name="Use my personal room").click()
    page.get_by_role("button", name=re.compile("Olga")).first.click()
    expect(page.locator("#vmr-status-heading")).to_have_text("Room added!")
    state = outlook.state(page)
    assert "Agenda: quarterly numbers." in state["bodyContent"]
    assert state["location"]
    assert ROOM not in addresses(state) + addresses(state, "optionalAttendees")
    path, _ = send(state, service)
    assert path is None  # Exchange never gives the room this meeting: no decline for it
    # and a single-use room cannot be stacked on top of it
    add_single_use(page)
    expect(page.locator("#vmr-status-heading")).to_have_text("Already has a room")


def test_a_delegate_books_in_the_managers_calendar(browser: Browser, service: Service) -> None:
    """SupportsSharedFolders: Ann composes in Olga's calendar; Exchange sends the meeting as
    Olga's, SENT-BY Ann, and the room answers Olga."""
    config = host_config(
        "OfficeOnline",
        shared={"owner": OLGA[1], "delegatePermissions": 0x3F},
        userProfile={
            "displayName": "Ann Assistant",
            "emailAddress": "ann@example.com",
            "timeZone": "Europe/London",
            "accountType": "enterprise",
        },
    )
    page = open_pane(browser, service, config)
    add_single_use(page)
    expect(page.locator("#vmr-status-heading")).to_have_text("Room added!")
    path, uid = send(outlook.state(page), service, sent_by="ann@example.com")
    assert path is not None
    (reply,) = answers(service, uid, 1)
    assert reply.outcome == "accepted"
    assert OLGA[1] in reply.headers["To"]


# --- the send check -------------------------------------------------------------------------------


def booked(browser: Browser, service: Service) -> dict[str, Any]:
    page = open_pane(browser, service, host_config("OfficeOnline"))
    add_single_use(page)
    expect(page.locator("#vmr-status-heading")).to_have_text("Room added!")
    state = outlook.state(page)
    page.close()
    return state


def item_of(state: dict[str, Any], **changes: Any) -> dict[str, Any]:
    item = {
        "body": state["bodyContent"],
        "location": state["location"],
        "requiredAttendees": state["requiredAttendees"],
        "optionalAttendees": state["optionalAttendees"],
        "customProperties": state["customProperties"],
    }
    item.update(changes)
    return item


def send_check(browser: Browser, service: Service, item: dict[str, Any]) -> dict[str, Any]:
    page = open_commands(browser, service, host_config("OfficeOnline", item=item))
    try:
        return outlook.fire(page, "onAppointmentSend")
    finally:
        page.close()


def test_the_send_check_lets_a_meeting_with_its_room_go(browser: Browser, service: Service) -> None:
    state = booked(browser, service)
    assert send_check(browser, service, item_of(state))["allowEvent"] is True
    # a meeting without a video room is never stopped
    plain = item_of(state, body="<p>Lunch</p>", customProperties={})
    assert send_check(browser, service, plain)["allowEvent"] is True


def test_the_send_check_stops_a_meeting_whose_room_was_removed(
    browser: Browser, service: Service
) -> None:
    state = booked(browser, service)
    others = [a for a in state["requiredAttendees"] if a["emailAddress"].lower() != ROOM]
    verdict = send_check(browser, service, item_of(state, requiredAttendees=others))
    assert verdict["allowEvent"] is False
    assert "no longer an attendee" in verdict["errorMessage"]
    assert verdict["cancelLabel"] == "Add the room back"
    assert verdict["commandId"] == "vmrschedOpenPane"

    # "Add the room back" opens the pane with the alert's contextData: it invites the room again
    item = item_of(state, requiredAttendees=others)
    config = host_config("OfficeOnline", item=item, initializationContext=verdict["contextData"])
    page = open_pane(browser, service, config)
    expect(page.locator("#vmr-status-message")).to_contain_text("attendee again")
    assert ROOM in addresses(outlook.state(page))
    shot(page, "outlook-room-added-back.png")


def test_the_send_check_stops_a_meeting_whose_details_were_removed(
    browser: Browser, service: Service
) -> None:
    state = booked(browser, service)
    verdict = send_check(browser, service, item_of(state, body="<p>Agenda only</p>"))
    assert verdict["allowEvent"] is False
    assert "joining details were removed" in verdict["errorMessage"]


def test_the_send_check_stops_a_token_pasted_from_another_meeting(
    browser: Browser, service: Service
) -> None:
    first, second = booked(browser, service), booked(browser, service)
    pasted = item_of(second, body=first["bodyContent"])  # the other meeting's details
    verdict = send_check(browser, service, pasted)
    assert verdict["allowEvent"] is False
    assert "another meeting" in verdict["errorMessage"]
    fresh = item_of(first, customProperties={})  # pasted into a meeting the add-in never touched
    verdict = send_check(browser, service, fresh)
    assert verdict["allowEvent"] is False
    assert "another meeting" in verdict["errorMessage"]


# --- Outlook on iOS and Android ---------------------------------------------------------------


def test_the_mobile_online_meeting_button_adds_a_single_use_room(
    browser: Browser, service: Service
) -> None:
    page = open_commands(browser, service, host_config("Android"))
    outcome = outlook.fire(page, "addSingleUseRoom", source_id="vmrschedMobileAdd")
    assert "error" not in outcome and "timeout" not in outcome, outcome
    state = outlook.state(page)
    assert "Join the video meeting" in state["bodyContent"]
    assert ROOM in addresses(state)
    path, uid = send(state, service)
    assert path is not None
    assert answers(service, uid, 1)[0].outcome == "accepted"


# --- Exchange Online: Entra ID tokens ----------------------------------------------------------


def test_entra_nested_app_authentication_asks_for_the_api_scope(
    browser: Browser, service: Service
) -> None:
    token = service.idp.entra_token(f"api://vc.example.com/{CLIENT_ID}")
    config = host_config(
        "OfficeOnline",
        requirementSets={**MAILBOX_114, "NestedAppAuth": "1.1"},
        naa={
            "accessToken": token,
            "account": {
                "username": "ann@contoso.example",
                "name": "Ann",
                "tenantId": service.idp.tenant,
                "homeAccountId": f"oid.{service.idp.tenant}",
                "localAccountId": "oid",
            },
        },
    )
    page = open_pane(browser, service, config, integration="entra")
    add_single_use(page)
    expect(page.locator("#vmr-status-heading")).to_have_text("Room added!")  # 201: token verified
    asked = [c for c in outlook.calls(page) if c["api"].startswith("naa.")]
    assert any(SCOPE in str(c["args"]) for c in asked), asked
    assert ENTRA_ROOM in addresses(outlook.state(page))


def test_entra_without_nested_app_authentication_signs_in_in_a_dialog(
    browser: Browser, service: Service
) -> None:
    """A host without NestedAppAuth 1.1: the pane opens our sign-in page in an Office dialog and
    uses the token it hands back. (The page itself runs MSAL's redirect flow against Entra ID;
    here the identity platform's part is played by answering the dialog at once.)"""
    token = service.idp.entra_token(CLIENT_ID)
    context = browser.new_context(viewport={"width": 360, "height": 900})
    outlook.install(context, host_config("OfficeOnline"))
    opened: list[str] = []

    def dialog(route: Any) -> None:
        opened.append(route.request.url)
        route.fulfill(
            content_type="text/html",
            body=(
                '<script src="https://appsforoffice.microsoft.com/lib/1/hosted/office.js"></script>'
                "<script>Office.onReady(() => Office.context.ui.messageParent("
                f"JSON.stringify({{accessToken: {token!r}}})));</script>"
            ),
        )

    context.route(re.compile(r".*/addin/entra/entra-sign-in\.html$"), dialog)
    page = context.new_page()
    page.goto(f"{service.url}/addin/entra/taskpane.html")
    expect(page.locator("#vmr-app")).to_have_attribute("data-ready", "outlook")
    add_single_use(page)
    expect(page.locator("#vmr-status-heading")).to_have_text("Room added!", timeout=15000)
    assert opened == [f"{service.url}/addin/entra/entra-sign-in.html"]
    context.close()


def test_the_pages_load_under_their_csp_without_errors(browser: Browser, service: Service) -> None:
    problems: list[str] = []
    for path in ("default/taskpane.html", "default/commands.html", "entra/entra-sign-in.html"):
        page = open_page(browser, f"{service.url}/addin/{path}", host_config("OfficeOnline"))
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        page.wait_for_load_state("load")
        page.close()
    assert not [p for p in problems if "Content Security Policy" in p], problems
