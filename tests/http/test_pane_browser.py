"""The task pane in a real browser (Debian's headless Chromium driven by Playwright), against
`vmrsched serve` as a real process in demo mode: preview mode, a single-use VMR inserted, the
meeting sent and the room's answer shown; and the unreachable path (placeholder + TOK token)."""

from __future__ import annotations

import json
import re
import urllib.parse
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect

from tests import browsing

ROOT = Path(__file__).resolve().parents[2]
OUTPUT = ROOT / "test-output"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with browsing.chromium() as launched:
        yield launched


def open_pane(browser: Browser, server: str) -> Page:
    page = browser.new_page(viewport={"width": 520, "height": 1100})
    # No Office host here (and no network): Office.js does not load, the pane uses preview mode.
    page.route(re.compile(r"https://appsforoffice\.microsoft\.com/.*"), lambda r: r.abort())
    page.goto(f"{server}/addin/default/taskpane.html")
    expect(page.locator("#vmr-app")).to_have_attribute("data-ready", "preview")
    return page


def shot(page: Page, name: str) -> None:
    OUTPUT.mkdir(exist_ok=True)
    page.screenshot(path=str(OUTPUT / name), full_page=True)


def test_preview_add_room_send_and_see_the_answer(browser: Browser, server: str) -> None:
    page = open_pane(browser, server)
    page.fill("#vmr-subject", "Quarterly <b>review</b>")
    page.get_by_role("button", name="Add a one-time video room").click()
    expect(page.locator("#vmr-status-heading")).to_have_text("Room added!")
    expect(page.locator("#vmr-status-heading")).to_be_focused()
    body = page.locator("#vmr-body")
    expect(body).to_contain_text(re.compile(r"PXPS:-[0-9a-f-]{36}#"))
    expect(body).to_contain_text("Join the video meeting")
    expect(page.locator("#vmr-location")).to_have_value(
        re.compile(r"^vmr\d{6}@video\.example\.com$")
    )

    # a second click finds the token and inserts nothing
    before = body.inner_html()
    page.get_by_role("button", name="Add a one-time video room").click()
    expect(page.locator("#vmr-status-heading")).to_have_text("Already has a room")
    assert body.inner_html() == before

    page.get_by_role("button", name="Send the meeting (demo)").click()
    title = page.locator(".vmr-reply-title").first
    expect(title).to_contain_text(
        "Accepted: Quarterly <b>review</b> (accepted, new_single)", timeout=20000
    )
    frame = page.frame_locator("#vmr-reply-list iframe").first
    expect(frame.locator("body")).to_contain_text("is booked")
    expect(frame.locator("em")).to_have_text("Quarterly <b>review</b>")  # escaped, not markup
    expect(page.locator("#vmr-log")).to_contain_text("API answered 201")
    shot(page, "pane-accepted.png")


def test_unreachable_service_inserts_placeholder_and_tok(browser: Browser, server: str) -> None:
    page = open_pane(browser, server)
    page.route(re.compile(r".*/api/addin/v1/.*"), lambda r: r.abort("connectionrefused"))
    page.get_by_role("button", name="Add a one-time video room").click()
    expect(page.locator("#vmr-status-heading")).to_have_text("Offline, placeholder added")
    body = page.locator("#vmr-body")
    expect(body).to_contain_text(re.compile(r"TOK:-[0-9a-f-]{36}#"))
    expect(body).to_contain_text("Video meeting details will follow.")
    expect(page.locator("#vmr-location")).to_have_value("")
    shot(page, "pane-unavailable.png")

    # sending it anyway: the service allocates a room and updates the organizer's meeting
    page.unroute(re.compile(r".*/api/addin/v1/.*"))
    page.get_by_role("button", name="Send the meeting (demo)").click()
    expect(page.locator(".vmr-reply-title")).to_have_count(2, timeout=20000)
    titles = page.locator(".vmr-reply-title").all_inner_texts()
    assert any("(accepted, new_single)" in t for t in titles)
    assert any("(updated, placeholder_replaced)" in t for t in titles)
    shot(page, "pane-placeholder-replaced.png")


def test_service_answering_503_also_takes_the_placeholder_path(
    browser: Browser, server: str
) -> None:
    page = open_pane(browser, server)
    page.route(
        re.compile(r".*/api/addin/v1/.*"),
        lambda r: r.fulfill(
            status=503,
            content_type="application/json",
            body='{"error": {"code": "unavailable", "message": "down"}}',
        ),
    )
    page.get_by_role("button", name="Add a one-time video room").click()
    expect(page.locator("#vmr-status-heading")).to_have_text("Offline, placeholder added")
    expect(page.locator("#vmr-body")).to_contain_text(re.compile(r"TOK:-[0-9a-f-]{36}#"))


def test_entra_pane_loads_msal_from_our_origin_under_the_csp(browser: Browser, server: str) -> None:
    page = browser.new_page()
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.route(re.compile(r"https://appsforoffice\.microsoft\.com/.*"), lambda r: r.abort())
    requested: list[str] = []
    page.on("request", lambda r: requested.append(r.url))
    page.goto(f"{server}/addin/online/taskpane.html")
    expect(page.locator("#vmr-app")).to_have_attribute("data-ready", "preview")
    assert page.evaluate("typeof msal.createNestablePublicClientApplication") == "function"
    assert f"{server}/addin/static/vendor/msal-browser.min.js" in requested
    assert not [p for p in problems if "Content Security Policy" in p], problems


OVERFLOW = """() => {
  const width = document.documentElement.clientWidth;
  const wide = [...document.querySelectorAll("body *")].filter((e) => {
    const box = e.getBoundingClientRect();
    return box.width > 0 && box.right > width + 0.5;
  });
  return { scroll: document.documentElement.scrollWidth, width,
           wide: wide.map((e) => e.tagName + (e.id ? "#" + e.id : "")) };
}"""


def test_the_pane_fits_outlooks_360_px(browser: Browser, server: str) -> None:
    page = browser.new_page(viewport={"width": 360, "height": 900})
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    failed: list[str] = []
    page.on("response", lambda r: failed.append(r.url) if r.status >= 400 else None)
    page.route(re.compile(r"https://appsforoffice\.microsoft\.com/.*"), lambda r: r.abort())
    page.goto(f"{server}/addin/default/taskpane.html")
    expect(page.locator("#vmr-app")).to_have_attribute("data-ready", "preview")

    # an impossible meeting is refused before anything is reserved
    page.fill("#vmr-end", "2020-01-01T10:00")
    page.get_by_role("button", name="Add a one-time video room").click()
    expect(page.locator("#vmr-status-message")).to_contain_text("ends before it starts")
    expect(page.locator("#vmr-body")).not_to_contain_text("PXPS:-")
    page.reload()
    expect(page.locator("#vmr-app")).to_have_attribute("data-ready", "preview")

    page.fill("#vmr-subject", "A subject long enough to wrap " * 4)
    page.get_by_role("button", name="Add a one-time video room").click()
    expect(page.locator("#vmr-status-heading")).to_have_text("Room added!")
    page.get_by_role("button", name="Add a one-time video room").click()
    expect(page.locator("#vmr-status-heading")).to_have_text("Already has a room")
    color = page.eval_on_selector("#vmr-status-heading", "e => getComputedStyle(e).color")
    assert color != "rgb(16, 124, 16)"  # not the success green: nothing was added
    page.get_by_role("button", name="Send the meeting (demo)").click()
    expect(page.locator(".vmr-reply-title").first).to_contain_text("accepted", timeout=20000)
    OUTPUT.mkdir(exist_ok=True)
    page.screenshot(path=str(OUTPUT / "pane-360px.png"), full_page=True)
    layout = page.evaluate(OVERFLOW)
    assert layout["scroll"] <= layout["width"] and not layout["wide"], layout
    assert not [p for p in problems if "Content Security Policy" in p], problems
    assert not [u for u in failed if "favicon" in u or u.endswith(".png")], failed


def _policy(server: str, alias: str) -> dict[str, object]:
    """Ask the policy endpoint as a Conferencing Node does for a dial-in call."""
    query = urllib.parse.urlencode(
        {"local_alias": f"sip:{alias}", "call_direction": "dial_in", "protocol": "sip"}
    )
    with urllib.request.urlopen(f"{server}/policy/v1/service/configuration?{query}") as r:
        answer: dict[str, object] = json.loads(r.read())
    return answer


LOCAL_IN = """(minutes) => {
  const d = new Date(Date.now() + minutes * 60000);
  const p = (n) => String(n).padStart(2, "0");
  const day = `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())}`;
  return `${day}T${p(d.getHours())}:${p(d.getMinutes())}`;
}"""


def test_a_room_booked_in_the_pane_is_a_conference_for_pexip_only_in_its_window(
    browser: Browser, server: str
) -> None:
    booked: dict[str, str] = {}
    for name, minutes in (("soon", 5), ("tomorrow", 24 * 60)):
        page = open_pane(browser, server)
        page.fill("#vmr-subject", f"Policy check {name}")
        page.fill("#vmr-start", page.evaluate(LOCAL_IN, minutes))
        page.fill("#vmr-end", page.evaluate(LOCAL_IN, minutes + 60))
        page.get_by_role("button", name="Add a one-time video room").click()
        expect(page.locator("#vmr-status-heading")).to_have_text("Room added!")
        booked[name] = page.locator("#vmr-location").input_value()
        page.get_by_role("button", name="Send the meeting (demo)").click()
        expect(page.locator(".vmr-reply-title").first).to_contain_text(
            f"Accepted: Policy check {name}", timeout=20000
        )
        page.close()
    live = _policy(server, booked["soon"])
    assert live["action"] == "continue"
    assert isinstance(live["result"], dict) and live["result"]["service_type"] == "conference"
    assert _policy(server, booked["tomorrow"]) == {
        "status": "success",
        "action": "reject",
        "result": {},
    }


def test_preview_lists_the_demo_users_personal_rooms_and_inserts_one(
    browser: Browser, server: str
) -> None:
    page = open_pane(browser, server)
    expect(page.locator("#vmr-user")).to_have_value("olga@example.com")
    # both kinds side by side
    expect(page.get_by_role("button", name="Add a one-time video room")).to_be_visible()
    page.get_by_role("button", name="Use my personal room").click()
    expect(page.locator("#vmr-personal-heading")).to_have_text("Choose one of your rooms:")
    rooms = page.locator("#vmr-vmrs button")
    expect(rooms).to_have_text(["Olga's room", "Team stand-up"])
    expect(rooms.first).to_have_attribute("title", "Olga Organizer's personal meeting room")
    rooms.first.hover()
    shot(page, "pane-personal-list.png")

    rooms.first.click()
    expect(page.locator("#vmr-status-heading")).to_have_text("Room added!")
    expect(page.locator("#vmr-location")).to_have_value("meet.olga@video.example.com")
    body = page.locator("#vmr-body")
    expect(body).to_contain_text("meet.olga@video.example.com")
    expect(body).to_contain_text("5678")  # guests allowed: the guest PIN applies
    expect(body).to_contain_text("Agenda: quarterly numbers.")  # appended, nothing replaced
    expect(page.locator("#vmr-personal-list")).to_be_hidden()
    expect(page.locator("#vmr-log")).to_contain_text("personal VMRs answered 200")
    shot(page, "pane-personal-inserted.png")

    # a personal room invites nobody: sent, the meeting never reaches the room, so no decline
    expect(page.locator("#vmr-attendees")).to_have_value("guest@example.com")
    page.get_by_role("button", name="Send the meeting (demo)").click()
    expect(page.locator("#vmr-status-message")).to_contain_text("not an attendee")
    expect(page.locator(".vmr-reply-title")).to_have_count(0)


def test_preview_single_use_invites_the_room_and_one_room_per_meeting(
    browser: Browser, server: str
) -> None:
    page = open_pane(browser, server)
    page.get_by_role("button", name="Add a one-time video room").click()
    expect(page.locator("#vmr-status-heading")).to_have_text("Room added!")
    expect(page.locator("#vmr-attendees")).to_have_value(
        "guest@example.com, Video Room <vmr@example.com>"
    )
    page.get_by_role("button", name="Use my personal room").click()
    page.locator("#vmr-vmrs button").first.click()
    expect(page.locator("#vmr-status-heading")).to_have_text("Already has a room")
    expect(page.locator("#vmr-location")).to_have_value(
        re.compile(r"^vmr\d{6}@video\.example\.com$")
    )


def test_preview_personal_error_states_show_their_messages(browser: Browser, server: str) -> None:
    page = open_pane(browser, server)
    button = page.get_by_role("button", name="Use my personal room")
    status = page.locator("#vmr-status-message")

    page.fill("#vmr-user", "new.starter@example.com")
    button.click()
    expect(status).to_have_text("You have no personal video rooms yet.")
    expect(page.locator("#vmr-personal-list")).to_be_hidden()

    page.fill("#vmr-user", "stranger@example.com")
    button.click()  # no record, and new users are not created: 404 user_unknown
    expect(status).to_have_text(re.compile("could not be loaded"))
    expect(page.locator("#vmr-status-heading")).to_be_visible()

    page.route(re.compile(r".*/personal-vmrs.*"), lambda r: r.abort("connectionrefused"))
    page.fill("#vmr-user", "olga@example.com")
    button.click()
    expect(status).to_have_text(re.compile("could not be loaded"))
    shot(page, "pane-personal-error.png")

    # the service up again, but inserting fails (the host refuses the body): its own message
    page.unroute(re.compile(r".*/personal-vmrs.*"))
    button.click()
    page.evaluate(
        "() => { document.getElementById('vmr-body').insertAdjacentHTML = () => {"
        " throw new Error('the host refused'); }; }"
    )
    page.locator("#vmr-vmrs button").first.click()
    expect(status).to_have_text(re.compile("could not be added to this meeting"))


def test_sign_in_in_a_dialog_then_pick_a_room_then_sign_out(browser: Browser, server: str) -> None:
    """The `sso` integration's host token names nobody (Exchange identity token): the pane
    offers the sign-in, which runs at the identity platform in a popup (Office's dialog in
    Outlook) and hands the pane a session."""
    context = browser.new_context(viewport={"width": 520, "height": 1100}, ignore_https_errors=True)
    page = context.new_page()
    page.route(re.compile(r"https://appsforoffice\.microsoft\.com/.*"), lambda r: r.abort())
    context.route(re.compile(r"https://appsforoffice\.microsoft\.com/.*"), lambda r: r.abort())
    page.goto(f"{server}/addin/sso/taskpane.html")
    expect(page.locator("#vmr-app")).to_have_attribute("data-ready", "preview")
    expect(page.locator("#vmr-user")).to_be_hidden()  # real tokens here: no made-up user
    sign_in = page.get_by_role("button", name="Sign in to see your rooms")
    expect(sign_in).to_be_visible()

    page.get_by_role("button", name="Use my personal room").click()
    expect(sign_in).to_be_focused()  # not signed in: the sign-in is what to do next
    shot(page, "pane-sign-in-needed.png")

    with page.expect_popup() as popup_info:
        sign_in.click()
    popup = popup_info.value
    popup.wait_for_event("close", timeout=15000)
    expect(page.locator("#vmr-signed-in-as")).to_have_text("olga@example.com")
    expect(page.locator("#vmr-vmrs button")).to_have_text(["Olga's room", "Team stand-up"])
    expect(sign_in).to_be_hidden()
    shot(page, "pane-signed-in-list.png")

    page.locator("#vmr-vmrs button").nth(1).click()
    expect(page.locator("#vmr-location")).to_have_value("standup@video.example.com")

    # the session is remembered across a reload of the pane
    page.reload()
    expect(page.locator("#vmr-app")).to_have_attribute("data-ready", "preview")
    expect(sign_in).to_be_hidden()
    page.get_by_role("button", name="Use my personal room").click()
    expect(page.locator("#vmr-vmrs button")).to_have_count(2)
    page.get_by_role("button", name="Sign out").click()
    expect(sign_in).to_be_visible()
    page.get_by_role("button", name="Use my personal room").click()
    expect(sign_in).to_be_focused()
    context.close()


def test_admin_console_login_search_resend_delete(browser: Browser, server: str) -> None:
    from tests.http.conftest import ADMIN_TOKEN

    # a booking to find: reserved in the add-in API, sent to the room in demo mode
    def post(path: str, body: dict[str, object]) -> dict[str, str]:
        request = urllib.request.Request(
            f"{server}{path}",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            answer: dict[str, str] = json.loads(response.read())
            return answer

    vmr = post("/api/addin/v1/default/single-use-vmrs", {})
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(days=1)
    post(
        "/api/demo/v1/default/send",
        {
            "subject": "Console <i>check</i>",
            "start": start.isoformat(),
            "end": (start + timedelta(hours=1)).isoformat(),
            "body": vmr["joining_instructions"],
            "attendees": [vmr["room_email"]],  # the room is invited, as the pane does
        },
    )

    page = browser.new_page(viewport={"width": 1200, "height": 900})
    page.goto(f"{server}/admin")
    expect(page).to_have_url(re.compile(r"/admin/login\?next=/admin$"))
    page.fill("#token", "not the token")
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("alert")).to_have_text("That token is not right.")
    page.fill("#token", ADMIN_TOKEN)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="vmrsched administration")).to_be_visible()
    expect(page.locator("td.state-running").first).to_be_visible()

    page.fill("#q", "console")
    for _ in range(40):  # until the room has answered the meeting
        page.get_by_role("button", name="Search").click()
        if page.get_by_role("cell", name="bound").count():
            break
        page.wait_for_timeout(250)
    row = page.locator("#aliases-heading + table tr", has_text=vmr["alias"])
    expect(row).to_contain_text("Console <i>check</i>")  # escaped, not markup
    expect(page.locator("#decisions-heading + table")).to_contain_text("new_single")
    shot(page, "admin-search.png")

    page.get_by_role("button", name=f"Resend the joining instructions of {vmr['alias']}").click()
    expect(page.get_by_role("status")).to_contain_text("on their way")
    page.fill("#q", "console")
    page.get_by_role("button", name="Search").click()
    page.get_by_role("button", name=f"Delete {vmr['alias']}").click()
    # deleting asks first: the confirmation page's button deletes
    expect(page.get_by_role("heading", name=f"Delete {vmr['alias']}?")).to_be_visible()
    page.get_by_role("button", name=f"Delete {vmr['alias']}").click()
    expect(page.get_by_role("status")).to_contain_text(f"{vmr['alias']} deleted")
    page.fill("#q", "console")
    page.get_by_role("button", name="Search").click()
    expect(page.locator("#aliases-heading + table tr", has_text=vmr["alias"])).to_contain_text(
        "deleted"
    )
    shot(page, "admin-deleted.png")
    page.close()


def test_admin_signs_in_with_the_organisation_account(browser: Browser, server: str) -> None:
    """The OpenID Connect sign-in: the provider (the fake platform, over TLS) signs Olga in at
    once; she is in the admin group, so the console opens and names her; logging out ends it."""
    context = browser.new_context(ignore_https_errors=True)  # the platform's own certificate
    page = context.new_page()
    page.goto(f"{server}/admin")
    page.get_by_role("link", name="Sign in with your organisation account").click()
    expect(page).to_have_url(f"{server}/admin")
    expect(page.get_by_text("Signed in: olga@example.com")).to_be_visible()
    expect(page.locator("td.state-running").first).to_be_visible()
    shot(page, "admin-signed-in.png")
    page.get_by_role("button", name="Log out").click()
    expect(page).to_have_url(f"{server}/admin/login")
    page.goto(f"{server}/admin")
    expect(page).to_have_url(re.compile(r"/admin/login"))
    context.close()
