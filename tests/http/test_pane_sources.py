"""The fully offline add-in ([integrations.advanced] use_custom_addin_sources): Office.js, the
Fabric style sheets (with the fonts and images they name) and an extra script come from the
organisation's own host, routed here to local files (Office.js: the stand-in of tests/fakes); the
pane loads them under its CSP, reaches nothing else outside, and works: a single-use room is added
and the room invited. And the pane's texts that may hold HTML: the safe subset (links, emphasis,
paragraphs) shows as HTML, sanitised on the server; scripts, styles and handlers never arrive;
headings stay text. Against `vmrsched serve` as a real process."""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Browser, Page, Route, expect

from tests import browsing
from tests.configs import spool_toml
from tests.fakes import outlook
from tests.serving import free_port, get, start, wait_ready

pytestmark = pytest.mark.slow
ROOM = "vmr@example.com"
CDN = "https://addin-assets.example.org"
SCRIPTS = "https://scripts.example.org"
FABRIC_CSS = f"{CDN}/fabric/fabric.min.css"
FABRIC_COMPONENTS_CSS = f"{CDN}/fabric/fabric.components.min.css"
EXTRA_JS = f"{SCRIPTS}/telemetry/extra.js"

# Fabric's style sheets name their fonts and icons beside them
LOCAL = {
    FABRIC_CSS: (
        "text/css",
        "@font-face{font-family:SegoeLocal;src:url(fonts/segoeui.woff2) format('woff2')}"
        "body{font-family:SegoeLocal,sans-serif}"
        "#vmr-title{background-image:url(images/banner.png);--fabric-loaded:yes}",
    ),
    FABRIC_COMPONENTS_CSS: ("text/css", "#vmr-app{--fabric-components-loaded:yes}"),
    EXTRA_JS: ("text/javascript", "window.__extraScript = 'loaded';"),
}
PNG_1X1 = bytes.fromhex(
    "89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c489"
    "0000000d49444154789c6360f80f000001010000a3d6b5b80000000049454e44ae426082"
)

DESCRIPTION = (
    'Add a room. <a href="https://help.example.org/rooms" onclick="window.__pwned=1">Help</a> '
    "<em>first</em><script>window.__pwned=2</script>"
    '<img src="x" onerror="window.__pwned=3"><a href="javascript:window.__pwned=4">x</a>'
)
SUCCESS = "<p>Details <strong>added</strong>.</p><style>#vmr-app{display:none}</style>"

ADDIN = f"""server_fqdn = "vc.example.com"
success_heading = "<b>Room</b> added"
pane_description = {json.dumps(DESCRIPTION)}
success_message = {json.dumps(SUCCESS)}
[integrations.advanced]
enable_addin_debug_logs = true
use_custom_addin_sources = true
office_js_url = "{CDN}/office/1/office.js"
fabric_css_url = "{FABRIC_CSS}"
fabric_components_css_url = "{FABRIC_COMPONENTS_CSS}"
additional_script_sources = ["{EXTRA_JS}"]
[integrations.spool]
poll_interval_seconds = 0.05
"""


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("offline")
    port = free_port()
    config = tmp / "vmrsched.toml"
    config.write_text(spool_toml(tmp / "data", port=port, integration=ADDIN))
    server = start(config)
    try:
        wait_ready(port)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with browsing.chromium() as launched:
        yield launched


def host_config() -> dict[str, Any]:
    start_at = (datetime.now(UTC) + timedelta(days=1)).replace(minute=0, second=0, microsecond=0)
    return {
        "platform": "OfficeOnline",
        "requirementSets": {"Mailbox": "1.14", "DialogApi": "1.2", "IdentityAPI": "1.3"},
        "userProfile": {"displayName": "Olga", "emailAddress": "olga@example.com"},
        "item": {
            "subject": "Quarterly review",
            "start": start_at.isoformat(),
            "end": (start_at + timedelta(minutes=45)).isoformat(),
            "location": "",
            "body": "<p>Agenda.</p>",
            "requiredAttendees": [{"displayName": "Bob", "emailAddress": "bob@example.com"}],
            "optionalAttendees": [],
            "organizer": {"displayName": "Olga", "emailAddress": "olga@example.com"},
        },
    }


class Offline:
    """The page with the organisation's host routed to local files; every request outside the
    service, and every CSP violation, noted."""

    def __init__(self, browser: Browser, url: str) -> None:
        self.served: list[str] = []
        self.outside: list[str] = []
        self.violations: list[str] = []
        self.page: Page = browser.new_page(viewport={"width": 360, "height": 900})
        page = self.page
        page.on("request", self._request)
        page.on("console", self._console)
        page.add_init_script(
            "document.addEventListener('securitypolicyviolation', (e) => console.error("
            "'CSP violation: ' + e.violatedDirective + ' ' + e.blockedURI));"
        )
        page.route(re.compile(r"^https://(addin-assets|scripts)\.example\.org/.*"), self._serve)
        outlook.install(page, host_config())  # Office.js from the custom URL: the stand-in
        page.goto(f"{url}/addin/default/taskpane.html")
        expect(page.locator("#vmr-app")).to_have_attribute("data-ready", "outlook")

    def _serve(self, route: Route) -> None:
        target = route.request.url
        path = urlsplit(target).path
        if path.endswith("/office.js"):
            route.fallback()  # the stand-in's route
            return
        self.served.append(target)
        if target in LOCAL:
            kind, body = LOCAL[target]
            route.fulfill(status=200, content_type=kind, body=body)
        elif path.endswith(".woff2"):
            route.fulfill(status=200, content_type="font/woff2", body=b"wOF2")
        elif path.endswith(".png"):
            route.fulfill(status=200, content_type="image/png", body=PNG_1X1)
        else:
            route.fulfill(status=404, body="")

    def _request(self, request: Any) -> None:
        host = urlsplit(request.url).hostname or ""
        if host != "127.0.0.1" and not request.url.startswith("data:"):
            self.outside.append(request.url)

    def _console(self, message: Any) -> None:
        if "Content Security Policy" in message.text or "CSP violation" in message.text:
            self.violations.append(message.text)


def test_the_offline_sources_load_under_the_csp_and_the_pane_works(
    browser: Browser, url: str
) -> None:
    offline = Offline(browser, url)
    page = offline.page
    assert page.evaluate("() => window.__extraScript") == "loaded"
    style = "(n) => getComputedStyle(document.querySelector(n[0])).getPropertyValue(n[1]).trim()"
    assert page.evaluate(style, ["#vmr-title", "--fabric-loaded"]) == "yes"
    assert page.evaluate(style, ["#vmr-app", "--fabric-components-loaded"]) == "yes"
    # the font is fetched (the stand-in's bytes are no real font: it is fetched, not used)
    page.evaluate("() => document.fonts.load('16px SegoeLocal').catch(() => null)")

    page.get_by_role("button", name="Add a one-time video room").click()
    expect(page.locator("#vmr-status-heading")).to_have_text("<b>Room</b> added")
    state = outlook.state(page)
    assert "PXPS:-" in state["bodyContent"]
    assert ROOM in [a["emailAddress"] for a in state["requiredAttendees"]]

    assert not offline.violations, offline.violations
    # the fonts and images the style sheets name came from the same host
    assert any(u.endswith("/fonts/segoeui.woff2") for u in offline.served), offline.served
    assert any(u.endswith("/images/banner.png") for u in offline.served), offline.served
    # nothing but the organisation's own hosts: no Microsoft CDN
    hosts = {urlsplit(u).hostname for u in offline.outside}
    assert hosts <= {"addin-assets.example.org", "scripts.example.org"}, offline.outside
    page.close()


def test_the_texts_that_may_hold_html_show_its_safe_part(browser: Browser, url: str) -> None:
    status, body = get(int(urlsplit(url).port or 0), "/addin/default/taskpane.html")
    assert status == 200
    settings = json.loads(
        html.unescape(re.search(r'data-settings="([^"]*)"', body.decode()).group(1))  # type: ignore[union-attr]
    )
    sanitised = settings["html"]["pane_description"]
    for unsafe in ("script", "onclick", "onerror", "javascript:", "__pwned"):
        assert unsafe not in sanitised
    assert "<style" not in settings["html"]["success_message"]
    assert "display:none" not in settings["html"]["success_message"]
    assert settings["texts"]["success_message"] == "Details added."  # text for notifications
    assert settings["texts"]["success_heading"] == "<b>Room</b> added"  # headings are text

    offline = Offline(browser, url)
    page = offline.page
    link = page.locator("#vmr-description a", has_text="Help")
    expect(link).to_have_attribute("href", "https://help.example.org/rooms")
    expect(link).to_have_attribute("target", "_blank")
    expect(page.locator("#vmr-description em")).to_have_text("first")
    expect(page.locator("#vmr-title")).to_have_text("Video meeting")

    page.get_by_role("button", name="Add a one-time video room").click()
    heading = page.locator("#vmr-status-heading")
    expect(heading).to_have_text("<b>Room</b> added")  # a heading stays text
    expect(heading.locator("b")).to_have_count(0)
    expect(page.locator("#vmr-status-message strong")).to_have_text("added")
    expect(page.locator("#vmr-app")).to_be_visible()
    assert page.evaluate("() => window.__pwned") is None
    assert not offline.violations, offline.violations
    page.close()
