"""The Office.js stand-in checked on blank pages in Debian's headless Chromium: each test is one
documented behaviour (office/README.md) that the add-in's own browser tests rely on, written so
that it fails if the stand-in stops behaving that way. The iMIP rendering (`send`, `deliver`) is
checked with the icalendar package and the standard library's email parser."""

from __future__ import annotations

import email
import email.policy
import http.server
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from icalendar import Calendar
from playwright.sync_api import Browser, Page, Route

from tests import browsing
from tests.fakes import outlook

ROOT = Path(__file__).resolve().parents[2]
MSAL = ROOT / "vmrsched/http/static/vendor/node_modules/@azure/msal-browser/lib/msal-browser.min.js"
pytestmark = pytest.mark.slow

OFFICE = '<script src="https://appsforoffice.microsoft.com/lib/1/hosted/office.js"></script>'
PAGES = {
    "/blank.html": f"<!doctype html><html><head>{OFFICE}</head><body></body></html>",
    "/init.html": (
        f"<!doctype html><html><head>{OFFICE}<script>"
        "Office.initialize = (reason) => { window.initReason = reason; };"
        "</script></head><body></body></html>"
    ),
    "/naa.html": (
        f'<!doctype html><html><head>{OFFICE}<script src="/msal-browser.min.js"></script>'
        "</head><body></body></html>"
    ),
    # a dialog: says "ready" once it listens to its parent, then echoes what the parent sends
    "/dialog.html": (
        f"<!doctype html><html><head>{OFFICE}<script>"
        "Office.onReady().then(() => Office.context.ui.addHandlerAsync("
        "  Office.EventType.DialogParentMessageReceived,"
        "  (arg) => Office.context.ui.messageParent('echo:' + arg.message),"
        "  () => Office.context.ui.messageParent('ready')));"
        "</script></head><body>dialog</body></html>"
    ),
}

PROFILE = {
    "displayName": "Dana Delegate",
    "emailAddress": "dana@example.com",
    "timeZone": "W. Europe Standard Time",
    "accountType": "office365",
}
ITEM = {
    "subject": "Weekly sync",
    "start": "2030-03-04T09:00:00Z",
    "end": "2030-03-04T09:30:00Z",
    "location": "",
    "body": "<p>Hello</p>",
    "requiredAttendees": [{"displayName": "Alice", "emailAddress": "alice@example.com"}],
}


def config(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"platform": "PC", "userProfile": PROFILE, "item": dict(ITEM)}
    item = overrides.pop("item", {})
    base["item"].update(item)
    base.update(overrides)
    return base


def resource(path: str) -> tuple[bytes, str] | None:
    """A test page or the installed MSAL.js, by path."""
    if path == "/msal-browser.min.js":
        return MSAL.read_bytes(), "text/javascript"
    if path in PAGES:
        return PAGES[path].encode(), "text/html; charset=utf-8"
    return None


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        found = resource(self.path.split("?", 1)[0])
        if found is None:
            self.send_error(404)
            return
        body, kind = found
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with browsing.chromium() as launched:
        yield launched


Opener = Callable[..., Page]
HTTPS_ADDIN = "https://addin.test"


def serve_https(route: Route) -> None:
    found = resource(route.request.url[len(HTTPS_ADDIN) :].split("?", 1)[0])
    if found is None:
        route.fulfill(status=404, body="not found")
    else:
        route.fulfill(status=200, body=found[0], content_type=found[1])


@pytest.fixture
def open_page(browser: Browser, server: str) -> Iterator[Opener]:
    """Open `path` in a fresh browser context with the stand-in installed on the context (so
    dialogs get it too); `host_config=None` loads it with no host configuration at all."""
    contexts = []

    def open_(host_config: dict[str, Any] | None, path: str = "/blank.html") -> Page:
        context = browser.new_context()
        contexts.append(context)
        if host_config is None:
            source = outlook.OFFICE_JS.read_text()
            context.route(
                outlook.OFFICE_JS_URL,
                lambda route: route.fulfill(content_type="text/javascript", body=source),
            )
        else:
            outlook.install(context, host_config)
        # the same pages on an https origin, for what only an https add-in shows
        context.route(f"{HTTPS_ADDIN}/**", serve_https)
        page = context.new_page()
        page.goto(path if path.startswith("https:") else server + path)
        page.wait_for_function("() => window.Office && window.Office.__standIn")
        return page

    yield open_
    for context in contexts:
        context.close()


# Runs an Office.js callback-style call and resolves with a JSON-able view of its AsyncResult.
CALL = """() => {
  window.call = (f) => new Promise((resolve) => f((r) => resolve({
    status: r.status,
    value: r.value instanceof Date ? r.value.toISOString() : r.value,
    error: r.error ? {name: r.error.name, code: r.error.code} : null,
    asyncContext: r.asyncContext,
  })));
}"""


def run(page: Page, script: str, arg: Any = None) -> Any:
    """Evaluate an async function body after Office.onReady, with `call` and `item` in scope."""
    page.evaluate(CALL)
    return page.evaluate(
        "async (arg) => { await Office.onReady(); const item = Office.context.mailbox"
        " && Office.context.mailbox.item; " + script + "}",
        arg,
    )


# ---------------------------------------------------------------- initialization


def test_on_ready_reports_outlook_and_the_platform_and_calls_initialize(
    open_page: Opener,
) -> None:
    page = open_page(config(platform="Mac"), "/init.html")
    info = run(
        page,
        "return {ready: await Office.onReady(), reason: window.initReason,"
        " diag: Office.context.diagnostics, hostName: Office.context.mailbox.diagnostics.hostName,"
        " itemType: item.itemType};",
    )
    assert info["ready"] == {"host": "Outlook", "platform": "Mac"}
    assert info["reason"] == "inserted"
    assert info["diag"]["host"] == "Outlook" and info["diag"]["platform"] == "Mac"
    assert info["hostName"] == "Outlook"
    assert info["itemType"] == "appointment"


def test_outside_an_office_host_on_ready_has_no_host(open_page: Opener) -> None:
    page = open_page(None)
    info = page.evaluate(
        "async () => ({ready: await Office.onReady(), mailbox: typeof Office.context.mailbox})"
    )
    assert info == {"ready": {"host": None, "platform": None}, "mailbox": "undefined"}


def test_callbacks_are_never_synchronous_and_return_the_async_context(open_page: Opener) -> None:
    page = open_page(config())
    got = run(
        page,
        "let sync = true; const seen = new Promise((resolve) =>"
        " item.subject.getAsync({asyncContext: {n: 7}}, (r) =>"
        " resolve({sync, status: r.status, value: r.value, ctx: r.asyncContext})));"
        "sync = false; return await seen;",
    )
    assert got == {"sync": False, "status": "succeeded", "value": "Weekly sync", "ctx": {"n": 7}}


def test_the_item_outlives_a_reload_of_the_pane(open_page: Opener) -> None:
    page = open_page(config())
    run(page, "return await call((cb) => item.subject.setAsync('Changed', cb));")
    page.evaluate("() => window.__outlook.edit({bodyContent: '<p>typed</p>', cursor: 'end'})")
    page.reload()
    page.wait_for_function("() => window.Office && window.Office.__standIn")
    after = outlook.state(page)
    assert (after["subject"], after["bodyContent"], after["cursor"]) == (
        "Changed",
        "<p>typed</p>",
        len("<p>typed</p>"),
    )
    assert outlook.calls(page) == []  # calls are the page's own


# ---------------------------------------------------------------- body


def test_body_on_windows_is_a_whole_word_document(open_page: Opener) -> None:
    page = open_page(config(platform="PC"))
    html = run(page, "return await call((cb) => item.body.getAsync('html', cb));")["value"]
    assert html.startswith("<html")
    assert "<head>" in html and "<style>" in html and "<!--[if gte mso 9]>" in html
    assert "<body lang=EN-US" in html and "<div class=WordSection1>" in html
    assert "<p>Hello</p>" in html
    assert html.rstrip().endswith("</html>")
    text = run(page, "return await call((cb) => item.body.getAsync('text', cb));")["value"]
    assert text == "Hello"


def test_body_on_the_web_is_a_fragment(open_page: Opener) -> None:
    page = open_page(config(platform="OfficeOnline"))
    html = run(page, "return await call((cb) => item.body.getAsync('html', cb));")["value"]
    assert html == "<div><p>Hello</p></div>"


def test_setting_a_whole_document_keeps_only_its_body(open_page: Opener) -> None:
    page = open_page(config(platform="PC"))
    doc = (
        "<html><head><style>p.x {color: red}</style></head>"
        '<body lang="en"><p class="x">Kept</p></body></html>'
    )
    result = run(
        page,
        "return await call((cb) => item.body.setAsync(arg, {coercionType: 'html'}, cb));",
        doc,
    )
    assert result["status"] == "succeeded"
    assert outlook.state(page)["bodyContent"] == '<p class="x">Kept</p>'
    # what Outlook on Windows hands out can be handed back without growing
    run(
        page,
        "const got = await call((cb) => item.body.getAsync('html', cb));"
        "return await call((cb) => item.body.setAsync(got.value, {coercionType: 'html'}, cb));",
    )
    assert outlook.state(page)["bodyContent"] == '<p class="x">Kept</p>'


@pytest.mark.parametrize("platform", ["PC", "OfficeOnline"])
def test_content_after_the_end_of_the_document_is_lost(open_page: Opener, platform: str) -> None:
    page = open_page(config(platform=platform))
    run(
        page,
        "return await call((cb) => item.body.setAsync(arg, {coercionType: 'html'}, cb));",
        "<html><body><p>Inside</p></body></html>\n<p>PXPS:token#</p>",
    )
    assert outlook.state(page)["bodyContent"] == "<p>Inside</p>"


def test_prepend_and_set_selected_data_insert_where_documented(open_page: Opener) -> None:
    page = open_page(config(item={"body": "<p>Body</p>"}))
    run(
        page,
        "const h = {coercionType: 'html'};"
        "await call((cb) => item.body.prependAsync('<p>Top</p>', h, cb));"
        # never in the body: the top; then after what was inserted
        "await call((cb) => item.body.setSelectedDataAsync('<b>S</b>', h, cb));"
        "await call((cb) => item.body.setSelectedDataAsync('<i>T</i>', h, cb));",
    )
    assert outlook.state(page)["bodyContent"] == "<b>S</b><i>T</i><p>Top</p><p>Body</p>"

    at_end = open_page(config(item={"body": "<p>Body</p>", "cursor": "end"}))
    run(
        at_end,
        "await call((cb) => item.body.setSelectedDataAsync('<p>End</p>',"
        " {coercionType: 'html'}, cb));"
        # without a coercion type the data is text
        "await call((cb) => item.body.prependAsync('<b>x</b>', cb));",
    )
    assert outlook.state(at_end)["bodyContent"] == "&lt;b&gt;x&lt;/b&gt;<p>Body</p><p>End</p>"


def test_body_writes_over_a_million_characters_or_html_into_text_fail(
    open_page: Opener,
) -> None:
    page = open_page(config())
    big = run(
        page,
        "return await call((cb) => item.body.setAsync('x'.repeat(1000001),"
        " {coercionType: 'text'}, cb));",
    )
    assert big["status"] == "failed"
    assert big["error"]["name"] == "DataExceedsMaximumSize"
    assert outlook.state(page)["bodyContent"] == "<p>Hello</p>"

    text_body = open_page(config(item={"bodyType": "text", "body": "plain"}))
    bad = run(
        text_body,
        "return await call((cb) => item.body.prependAsync('<b>x</b>', {coercionType: 'html'}, cb));",
    )
    assert bad["error"]["name"] == "InvalidFormatError"
    assert outlook.state(text_body)["bodyContent"] == "plain"


# ---------------------------------------------------------------- fields


def test_location_and_subject_refuse_more_than_255_characters(open_page: Opener) -> None:
    page = open_page(config())
    ok = run(page, "return await call((cb) => item.location.setAsync('a'.repeat(255), cb));")
    assert ok["status"] == "succeeded"
    too_long = run(page, "return await call((cb) => item.location.setAsync('b'.repeat(256), cb));")
    assert too_long["status"] == "failed"
    assert too_long["error"]["name"] == "DataExceedsMaximumSize"
    assert outlook.state(page)["location"] == "a" * 255
    subject = run(page, "return await call((cb) => item.subject.setAsync('s'.repeat(256), cb));")
    assert subject["error"]["name"] == "DataExceedsMaximumSize"


def test_setting_the_start_keeps_the_duration_and_an_early_end_fails(open_page: Opener) -> None:
    page = open_page(config())
    run(
        page,
        "return await call((cb) => item.start.setAsync(new Date(arg), cb));",
        "2030-03-05T10:00:00Z",
    )
    s = outlook.state(page)
    assert (s["start"], s["end"]) == ("2030-03-05T10:00:00.000Z", "2030-03-05T10:30:00.000Z")
    early = run(
        page,
        "return await call((cb) => item.end.setAsync(new Date(arg), cb));",
        "2030-03-05T09:00:00Z",
    )
    assert early["error"]["name"] == "InvalidEndTime"


def test_enhanced_location_adds_rooms_and_keeps_the_location_text_in_step(
    open_page: Opener,
) -> None:
    page = open_page(config(rooms={"vmr@example.com": "Video room"}, item={"location": "Desk"}))
    got = run(
        page,
        "await call((cb) => item.enhancedLocation.addAsync("
        "  [{id: 'vmr@example.com', type: 'room'}, {id: 'vmr@example.com', type: 'room'}], cb));"
        "return await call((cb) => item.enhancedLocation.getAsync(cb));",
    )
    assert got["value"] == [
        {"locationIdentifier": {"id": "Desk", "type": "custom"}, "displayName": "Desk"},
        {
            "locationIdentifier": {"id": "vmr@example.com", "type": "room"},
            "displayName": "Video room",
            "emailAddress": "vmr@example.com",
        },
    ]
    assert outlook.state(page)["location"] == "Desk; Video room"
    run(
        page,
        "return await call((cb) => item.enhancedLocation.removeAsync("
        "  [{id: 'desk', type: 'custom'}], cb));",
    )
    assert outlook.state(page)["location"] == "Video room"


def test_the_identity_token_is_the_configured_one_and_fails_by_default(open_page: Opener) -> None:
    got = run(
        open_page(config(identityToken="exchange-id-token")),
        "return await call((cb) => Office.context.mailbox.getUserIdentityTokenAsync(cb, 'ctx'));",
    )
    assert (got["value"], got["asyncContext"]) == ("exchange-id-token", "ctx")
    off = run(
        open_page(config()),
        "return await call((cb) => Office.context.mailbox.getUserIdentityTokenAsync(cb));",
    )
    assert off["error"]["name"] == "GenericTokenError"


# ---------------------------------------------------------------- attendees


def test_attendees_are_added_without_duplicates(open_page: Opener) -> None:
    page = open_page(config(platform="OfficeOnline"))
    got = run(
        page,
        "await call((cb) => item.requiredAttendees.addAsync(["
        "  'ALICE@example.com',"
        "  {displayName: 'Bob', emailAddress: 'bob@partner.example'},"
        "  {displayName: 'Room', emailAddress: 'room@example.com', recipientType: 'user',"
        "   appointmentResponse: 'none'}], cb));"
        "return await call((cb) => item.requiredAttendees.getAsync(cb));",
    )
    assert got["value"] == [
        {
            "displayName": "Alice",
            "emailAddress": "alice@example.com",
            "recipientType": "user",
            "appointmentResponse": "none",
        },
        {
            "displayName": "Bob",
            "emailAddress": "bob@partner.example",
            "recipientType": "externalUser",
            "appointmentResponse": "none",
        },
        {
            "displayName": "Room",
            "emailAddress": "room@example.com",
            "recipientType": "user",
            "appointmentResponse": "none",
        },
    ]
    too_many = run(
        page,
        "const many = Array.from({length: 101}, (_, i) => `p${i}@example.com`);"
        "return await call((cb) => item.optionalAttendees.addAsync(many, cb));",
    )
    assert too_many["error"]["name"] == "NumberOfRecipientsExceeded"
    assert outlook.state(page)["optionalAttendees"] == []


def test_classic_windows_lists_the_organizer_among_required_attendees(open_page: Opener) -> None:
    page = open_page(config(platform="PC"))
    got = run(page, "return await call((cb) => item.requiredAttendees.getAsync(cb));")
    assert [a["emailAddress"] for a in got["value"]] == ["dana@example.com", "alice@example.com"]
    assert got["value"][0]["appointmentResponse"] == "organizer"
    assert [a["emailAddress"] for a in outlook.state(page)["requiredAttendees"]] == [
        "alice@example.com"
    ]


# ---------------------------------------------------------------- custom properties, sharing


def test_custom_properties_persist_only_after_save(open_page: Opener) -> None:
    page = open_page(config())
    unsaved = run(
        page,
        "await new Promise((res) => item.loadCustomPropertiesAsync((r) => {"
        "  r.value.set('booking', 'b-1'); res(); }));"
        "const again = await new Promise((res) => item.loadCustomPropertiesAsync(res));"
        "return again.value.get('booking');",
    )
    assert unsaved is None
    assert outlook.state(page)["customProperties"] == {}
    saved = run(
        page,
        "const r = await new Promise((res) => item.loadCustomPropertiesAsync(res));"
        "r.value.set('booking', 'b-1'); r.value.set('count', 5);"
        "const s = await new Promise((res) => r.value.saveAsync(res));"
        "const again = await new Promise((res) => item.loadCustomPropertiesAsync(res));"
        "return {status: s.status, booking: again.value.get('booking'),"
        " count: again.value.get('count')};",
    )
    assert saved == {"status": "succeeded", "booking": "b-1", "count": "5"}
    assert outlook.state(page)["customProperties"] == {"booking": "b-1", "count": "5"}


def test_a_delegate_sees_the_owner_in_shared_properties(open_page: Opener) -> None:
    shared = {"owner": "manager@example.com", "delegatePermissions": 1 | 2 | 16}
    page = open_page(config(shared=shared))
    got = run(
        page,
        "const s = await call((cb) => item.getSharedPropertiesAsync(cb));"
        "const o = await call((cb) => item.organizer.getAsync(cb));"
        "return {shared: s.value, organizer: o.value,"
        " me: Office.context.mailbox.userProfile.emailAddress};",
    )
    assert got["shared"] == {
        "owner": "manager@example.com",
        "delegatePermissions": 19,
        "targetMailbox": "manager@example.com",
        "targetRestUrl": "https://outlook.office.com/api",
    }
    assert got["organizer"]["emailAddress"] == "manager@example.com"
    assert got["me"] == "dana@example.com"
    own = open_page(config())
    assert run(own, "return await call((cb) => item.getSharedPropertiesAsync(cb));")["status"] == (
        "failed"
    )


# ---------------------------------------------------------------- requirement sets


def test_is_set_supported_compares_versions_as_numbers(open_page: Opener) -> None:
    page = open_page(config(requirementSets={"Mailbox": "1.13", "DialogApi": "1.2"}))
    got = run(
        page,
        "const r = Office.context.requirements;"
        "return [r.isSetSupported('Mailbox', '1.9'), r.isSetSupported('Mailbox', '1.13'),"
        " r.isSetSupported('Mailbox', '1.14'), r.isSetSupported('Mailbox'),"
        " r.isSetSupported('DialogApi', 1.1), r.isSetSupported('NestedAppAuth', '1.1')];",
    )
    assert got == [True, True, False, True, True, False]


PRESENCE = """
return {
  enhancedLocation: typeof item.enhancedLocation,
  sharedProperties: typeof item.getSharedPropertiesAsync,
  organizer: typeof item.organizer,
  bodyGet: typeof item.body.getAsync,
  accountType: typeof Office.context.mailbox.userProfile.accountType,
  actions: typeof Office.actions,
  dialog: typeof Office.context.ui.displayDialogAsync,
  naaBridge: typeof window.nestedAppAuthBridge,
};
"""


def test_apis_are_absent_below_their_requirement_set(open_page: Opener) -> None:
    old = run(
        open_page(config(requirementSets={"Mailbox": "1.5"}, naa={"accessToken": "t"})), PRESENCE
    )
    assert old == {
        "enhancedLocation": "undefined",
        "sharedProperties": "undefined",
        "organizer": "undefined",
        "bodyGet": "function",
        "accountType": "undefined",
        "actions": "undefined",
        "dialog": "function",
        "naaBridge": "undefined",
    }
    newer = run(
        open_page(
            config(
                requirementSets={"Mailbox": "1.10", "NestedAppAuth": "1.1"},
                naa={"accessToken": "t"},
            )
        ),
        PRESENCE,
    )
    assert newer == {
        "enhancedLocation": "object",
        "sharedProperties": "function",
        "organizer": "object",
        "bodyGet": "function",
        "accountType": "string",
        "actions": "object",
        "dialog": "function",
        "naaBridge": "object",
    }


# ---------------------------------------------------------------- dialogs


def test_dialog_messages_go_both_ways_and_closing_it_raises_12006(
    open_page: Opener, server: str
) -> None:
    page = open_page(config())
    got = run(
        page,
        "const msgs = [], events = [];"
        "const until = (f) => new Promise((res, rej) => { const t0 = Date.now();"
        "  const tick = () => f() ? res() : Date.now() - t0 > 10000 ? rej(new Error('timeout'))"
        "    : setTimeout(tick, 20); tick(); });"
        "const opened = await new Promise((res) => Office.context.ui.displayDialogAsync("
        "  arg + '/dialog.html', {height: 30, width: 20}, res));"
        "const dialog = opened.value;"
        "dialog.addEventHandler(Office.EventType.DialogMessageReceived, (a) => msgs.push(a));"
        "dialog.addEventHandler(Office.EventType.DialogEventReceived, (a) => events.push(a));"
        "await until(() => msgs.length >= 1);"
        "const second = await call((cb) => Office.context.ui.displayDialogAsync("
        "  arg + '/dialog.html', cb));"
        "dialog.messageChild('ping');"
        "await until(() => msgs.length >= 2);"
        "const during = window.__outlook.state().dialog;"
        "window.__outlook.closeDialog();"
        "await until(() => events.length >= 1);"
        "return {status: opened.status, msgs, events, second: second.error.code, during};",
        server,
    )
    assert got["status"] == "succeeded"
    assert got["msgs"] == [
        {"message": "ready", "origin": server},
        {"message": "echo:ping", "origin": server},
    ]
    assert got["second"] == 12007
    assert got["during"] == {"url": server + "/dialog.html", "open": True}
    assert got["events"] == [{"error": 12006}]


DIALOG_CODES = """
const codes = [];
for (const url of arg) {
  const r = await call((cb) => Office.context.ui.displayDialogAsync(url, cb));
  codes.push(r.error ? r.error.code : 0);
}
return codes;
"""


def test_a_dialog_must_start_on_the_add_ins_own_origin_over_https(open_page: Opener) -> None:
    page = open_page(config(), f"{HTTPS_ADDIN}/blank.html")
    urls = [
        "http://addin.test/dialog.html",
        "https://other.test/dialog.html",
        "https://addin.test:8443/dialog.html",
        "https://sub.addin.test/dialog.html",
        "/dialog.html",
    ]
    assert run(page, DIALOG_CODES, urls) == [12005, 12004, 12004, 12004, 12004]


def test_on_a_loopback_http_page_the_dialog_may_be_http_but_not_elsewhere(
    open_page: Opener, server: str
) -> None:
    page = open_page(config())
    port = server.rsplit(":", 1)[1]
    urls = [f"http://localhost:{port}/dialog.html", "http://example.com/dialog.html"]
    assert run(page, DIALOG_CODES, urls) == [12004, 12004]


# ---------------------------------------------------------------- events


def test_an_on_appointment_send_handler_resolves_its_completed_options(open_page: Opener) -> None:
    page = open_page(config(launchEvents={"OnAppointmentSend": "onSend"}))
    run(
        page,
        "Office.actions.associate('onSend', (event) => { window.seenType = event.type;"
        "  item.location.getAsync({asyncContext: event}, (r) => r.asyncContext.completed({"
        "    allowEvent: false, errorMessage: 'Add a video room first.', cancelLabel: 'Add room',"
        "    commandId: 'openPane', contextData: {why: 'no room'},"
        "    sendModeOverride: Office.MailboxEnums.SendModeOverride.PromptUser})); });",
    )
    assert outlook.fire(page, "onSend") == {
        "allowEvent": False,
        "errorMessage": "Add a video room first.",
        "cancelLabel": "Add room",
        "commandId": "openPane",
        "contextData": {"why": "no room"},
        "sendModeOverride": "promptUser",
    }
    assert page.evaluate("() => window.seenType") == "OnAppointmentSend"


def test_completed_options_beyond_the_documented_limits_are_reported(open_page: Opener) -> None:
    page = open_page(
        config(requirementSets={"Mailbox": "1.12"}, launchEvents={"OnAppointmentSend": "onSend"})
    )
    run(
        page,
        "Office.actions.associate('onSend', (e) => e.completed(window.next));"
        "window.next = {allowEvent: false, errorMessage: 'x'.repeat(501)};",
    )
    result = outlook.fire(page, "onSend")
    assert result["invalid"] == ["errorMessage must be 500 characters or less"]
    # Mailbox 1.12 knows nothing of cancelLabel (1.14): the host ignores it
    page.evaluate("() => { window.next = {allowEvent: false, cancelLabel: 'Fix'}; }")
    assert outlook.fire(page, "onSend") == {"allowEvent": False}


def test_a_function_command_gets_its_control_id(open_page: Opener) -> None:
    page = open_page(config())
    run(
        page,
        "Office.actions.associate('addRoom', (e) => { window.addRoomId = e.source.id;"
        "  e.completed({allowEvent: true}); });"
        "Office.actions.associate('slow', (e) => {});",
    )
    assert outlook.fire(page, "addRoom", source_id="addRoomButton") == {"allowEvent": True}
    assert page.evaluate("() => window.addRoomId") == "addRoomButton"
    # a handler that never calls completed: the host gives up
    never = page.evaluate("() => window.__outlook.fire('slow', {timeoutMs: 300})")
    assert never == {"timeout": True}


# ---------------------------------------------------------------- nested app authentication

NAA = {
    "accessToken": "eyJ.access.token",
    "account": {
        "username": "dana@example.com",
        "name": "Dana Delegate",
        "tenantId": "0d9c3f1e-5a0b-4f43-9a3c-111111111111",
        "localAccountId": "5b2a4c7e-7d1f-4d6e-8c2b-222222222222",
        "homeAccountId": (
            "5b2a4c7e-7d1f-4d6e-8c2b-222222222222.0d9c3f1e-5a0b-4f43-9a3c-111111111111"
        ),
    },
    "expiresOn": "2099-01-01T00:00:00Z",
}
CLIENT_ID = "3f0b8e7c-9c61-4b8a-b5e6-333333333333"
MSAL_TOKEN = """
const pca = await msal.createNestablePublicClientApplication({auth: {clientId: arg,
  authority: 'https://login.microsoftonline.com/organizations'}});
try {
  const r = await pca.acquireTokenSilent({scopes: ['api://x/y/access_as_user']});
  return {token: r.accessToken, username: r.account.username};
} catch (e) {
  return {error: e.errorCode || String(e), interaction: e instanceof msal.InteractionRequiredAuthError};
}
"""


def test_msal_gets_the_configured_token_through_the_nested_app_auth_bridge(
    open_page: Opener,
) -> None:
    page = open_page(config(naa=NAA), "/naa.html")
    assert run(page, MSAL_TOKEN, CLIENT_ID) == {
        "token": "eyJ.access.token",
        "username": "dana@example.com",
    }
    requests = [c for c in outlook.calls(page) if c["api"] == "naa.getToken"]
    assert len(requests) == 1
    assert requests[0]["args"][0]["scopes"] == ["api://x/y/access_as_user"]
    assert requests[0]["args"][0]["clientId"] == CLIENT_ID


def test_a_bridge_error_reaches_msal_as_interaction_required(open_page: Opener) -> None:
    page = open_page(config(naa={"error": "USER_INTERACTION_REQUIRED"}), "/naa.html")
    got = run(page, MSAL_TOKEN, CLIENT_ID)
    assert got["interaction"] is True


# ---------------------------------------------------------------- iMIP

STATE: dict[str, Any] = {
    "subject": "Budget; review, Q3",
    "start": "2030-03-04T09:00:00.000Z",
    "end": "2030-03-04T09:30:00.000Z",
    "location": "Video room",
    "bodyContent": "<p>Agenda</p><p>Join: PXPS:abc#</p>" + "<p>" + "long line " * 20 + "</p>",
    "requiredAttendees": [
        {"displayName": 'Alice "Al" Smith', "emailAddress": "alice@example.com"},
        {"displayName": "Video room", "emailAddress": "VMR@example.com"},
    ],
    "optionalAttendees": [{"displayName": "Doe, John", "emailAddress": "john@example.com"}],
}
DTSTAMP = datetime(2030, 3, 1, 12, 0, tzinfo=UTC)


def parts(raw: bytes) -> dict[str, EmailMessage]:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    found = {"": msg}
    for part in msg.walk():
        found[part.get_content_type()] = part
    return found


def test_send_renders_an_imip_request_icalendar_can_read() -> None:
    raw = outlook.send(
        STATE,
        organizer=("Mary Manager", "manager@example.com"),
        sent_by="dana@example.com",
        sequence=2,
        dtstamp=DTSTAMP,
    )
    found = parts(raw)
    msg = found[""]
    assert msg["Content-Class"] == "urn:content-classes:calendarmessage"
    assert msg.get_content_type() == "multipart/alternative"
    assert msg["From"] == "Mary Manager <manager@example.com>"
    assert msg["Sender"] == "dana@example.com"
    assert "alice@example.com" in msg["To"] and "john@example.com" in msg["Cc"]
    cal_part = found["text/calendar"]
    assert cal_part.get_param("method") == "REQUEST"
    assert "PXPS:abc#" in found["text/plain"].get_content()
    assert "<body>" in found["text/html"].get_content()

    ical = cal_part.get_content()
    assert all(len(line.encode()) <= 75 for line in ical.split("\r\n"))
    cal = Calendar.from_ical(ical)
    assert str(cal["METHOD"]) == "REQUEST"
    events: list[Any] = cal.walk("VEVENT")  # icalendar's value types are a wide union
    (event,) = events
    assert str(event["UID"]).startswith("040000008200E00074C5B7101A82E008")
    assert str(event["SUMMARY"]) == "Budget; review, Q3"
    assert event.decoded("DTSTART") == datetime(2030, 3, 4, 9, 0, tzinfo=UTC)
    assert int(event["SEQUENCE"]) == 2
    assert event["ORGANIZER"].params["SENT-BY"] == "mailto:dana@example.com"
    assert str(event["ORGANIZER"]) == "mailto:manager@example.com"
    attendees = {str(a): a.params for a in event["ATTENDEE"]}
    assert attendees["mailto:john@example.com"]["ROLE"] == "OPT-PARTICIPANT"
    assert attendees["mailto:john@example.com"]["CN"] == "Doe, John"
    assert attendees["mailto:alice@example.com"]["ROLE"] == "REQ-PARTICIPANT"
    assert attendees["mailto:alice@example.com"]["PARTSTAT"] == "NEEDS-ACTION"
    assert "PXPS:abc#" in str(event["DESCRIPTION"])
    assert "<p>Join: PXPS:abc#</p>" in str(event["X-ALT-DESC"])
    unfolded = ical.replace("\r\n ", "")
    assert ';CN="Doe, John":' in unfolded and ";CN=Alice ^'Al^' Smith:" in unfolded


def test_deliver_reaches_attendees_only(tmp_path: Path) -> None:
    kwargs: dict[str, Any] = {"organizer": ("Mary Manager", "manager@example.com")}
    kwargs["dtstamp"] = DTSTAMP
    inbox = tmp_path / "inbox"
    missing = outlook.deliver(STATE, inbox, "other-room@example.com", **kwargs)
    assert missing is None
    assert not inbox.exists() or list(inbox.iterdir()) == []
    delivered = outlook.deliver(STATE, inbox, "vmr@EXAMPLE.com", uid="uid-1", **kwargs)
    assert delivered is not None and delivered.suffix == ".eml"
    assert [p.name for p in inbox.iterdir()] == [delivered.name]
    cal = Calendar.from_ical(parts(delivered.read_bytes())["text/calendar"].get_content())
    assert str(cal.walk("VEVENT")[0]["UID"]) == "uid-1"
