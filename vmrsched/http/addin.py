"""What Outlook talks to: the manifest, the task pane and its assets, and the add-in API.

The API only translates HTTP: a reservation is the service's add-in use case
(service/addin.py: the meeting details checked, an alias reserved, its joining instructions
rendered), answered as JSON. It never blocks the event loop: the reservation is a `tell` to the
integration's allocator carrying a reply that resolves an asyncio future (actors/bridge.py),
and the allocator answers only after the alias is on disk.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from importlib import resources
from typing import Any

import aiohttp
import nh3
import orjson
from aiohttp import web
from markupsafe import Markup

from vmrsched.config import Config, IntegrationConfig, PerConfig, png_size
from vmrsched.errors import RateLimited, ServiceError
from vmrsched.http import manifest
from vmrsched.http.common import (
    PAGES,
    SERVICE,
    integration_or_404,
    origin_of,
    page_headers,
    status_of,
)
from vmrsched.http.ratelimit import RateLimiter
from vmrsched.service import Service
from vmrsched.templating import plain_text

STATIC = resources.files("vmrsched.http") / "static"
SESSION = web.AppKey("http_session", aiohttp.ClientSession)
LIMITER = web.AppKey("rate_limiter", RateLimiter)


PANE_TEXTS = (
    "pane_title",
    "pane_description",
    "single_use_button_label",
    "personal_button_label",
    "sign_in_button_label",
    "sign_out_button_label",
    "success_heading",
    "success_message",
    "already_assigned_heading",
    "already_assigned_message",
    "unavailable_heading",
    "unavailable_message",
    "error_heading",
    "error_inserting_single_use_message",
    "meeting_ends_before_start_message",
    "meeting_in_past_message",
    "select_personal_vmr_message",
    "no_personal_vmr_message",
    "error_getting_personal_vmrs_message",
    "error_signing_in_message",
    "error_inserting_personal_vmr_message",
    "error_too_many_requests_message",
    "error_quota_exceeded_message",
    "room_invited_again_message",
    # the send check's Smart Alert: plain text (Outlook shows errorMessage as text)
    "send_check_details_removed_message",
    "send_check_room_removed_message",
    "send_check_foreign_token_message",
    "send_check_button_label",
)

# The texts that may hold HTML (the product's texts may): the safe subset of links, emphasis and
# paragraphs comes through the sanitiser, never a script, a style or an event handler. Titles,
# headings and button labels stay text.
HTML_TEXTS = frozenset(
    {
        "pane_description",
        "success_message",
        "already_assigned_message",
        "unavailable_message",
        "error_inserting_single_use_message",
        "meeting_ends_before_start_message",
        "meeting_in_past_message",
        "no_personal_vmr_message",
        "error_getting_personal_vmrs_message",
        "error_signing_in_message",
        "error_inserting_personal_vmr_message",
        "error_too_many_requests_message",
        "error_quota_exceeded_message",
        "room_invited_again_message",
    }
)
SAFE_TAGS = frozenset({"a", "b", "br", "em", "i", "p", "strong", "u", "span"})


def safe_html(text: str) -> str:
    """An admin's text as HTML the pane may show: links (http, https, mailto; opening outside
    the pane), emphasis and paragraphs; everything else dropped (scripts and styles with what
    they hold), plain text escaped."""
    return nh3.clean(
        text,
        tags=set(SAFE_TAGS),
        clean_content_tags={"script", "style"},
        attributes={"a": {"href", "title"}},
        url_schemes={"http", "https", "mailto"},
        link_rel="noopener noreferrer",
        set_tag_attribute_values={"a": {"target": "_blank"}},
    )


@dataclass(frozen=True)
class PaneTexts:
    texts: dict[str, str]  # every text as plain text
    html: dict[str, str]  # the texts that may hold HTML, sanitised


def _pane_texts(integ: IntegrationConfig) -> PaneTexts:
    raw = {key: str(getattr(integ.addin, key)) for key in PANE_TEXTS}
    return PaneTexts(
        texts={k: plain_text(v) if k in HTML_TEXTS else v for k, v in raw.items()},
        html={k: safe_html(v) for k, v in raw.items() if k in HTML_TEXTS},
    )


# sanitised once per config (a reload brings new texts), never on the reservation path
pane_texts_for: PerConfig[PaneTexts] = PerConfig(_pane_texts)


COUNTERS = web.AppKey("addin_counters", dict)


def content_security_policy(integ: IntegrationConfig) -> str:
    """Scripts only from us and the configured Office.js origin(s); nothing inline; the pane may
    be framed by Outlook on the web and the desktop clients only."""
    adv = integ.advanced
    custom = adv.use_custom_addin_sources
    scripts = {"'self'", origin_of(adv.office_js_url)}
    if custom:
        scripts |= {origin_of(u) for u in adv.additional_script_sources}
    # Fabric's style sheets load their fonts and icons from beside them (an offline deployment
    # serves all three from its own host)
    fabric = {
        origin_of(u) for u in (adv.fabric_css_url, adv.fabric_components_css_url) if custom and u
    }
    styles = {"'self'"} | fabric
    images = {"'self'", "data:"} | fabric
    fonts = ["font-src " + " ".join(sorted({"'self'"} | fabric))] if fabric else []
    connect = {"'self'"}
    if integ.addin.token_validation == "entra":
        connect.add(origin_of(integ.addin.entra_authority))
    return "; ".join(
        [
            "default-src 'self'",
            f"script-src {' '.join(sorted(scripts))}",
            f"style-src {' '.join(sorted(styles))}",
            # joining instructions are e-mail HTML and carry style attributes (never <style>
            # elements or scripts): allowed on attributes only
            "style-src-attr 'unsafe-inline'",
            f"connect-src {' '.join(sorted(connect))}",
            f"img-src {' '.join(sorted(images))}",
            *fonts,
            "frame-src 'self'",
            "object-src 'none'",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'self' https://*.office.com https://*.office365.com "
            "https://*.outlook.com https://outlook.live.com https://*.microsoft.com",
        ]
    )


async def manifest_xml(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    integ = integration_or_404(request)
    body = manifest.build(integ, service.config.server.base_url)
    return web.Response(body=body, content_type="application/xml", charset="utf-8")


async def icon(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    integ = integration_or_404(request)
    if integ.addin.icon and service.config.path is not None:
        data = (service.config.path.parent / integ.addin.icon).read_bytes()
    else:
        data = (STATIC / "icon-80.png").read_bytes()
    assert png_size(data) is not None
    return web.Response(
        body=data, content_type="image/png", headers={"Cache-Control": "public, max-age=3600"}
    )


async def small_icon(request: web.Request) -> web.Response:
    """The ribbon button's 16 and 32 px icons, and the manifest's 64 px IconUrl and 128 px
    HighResolutionIconUrl of a mail add-in (the configured icon is 80 px; these are ours)."""
    integration_or_404(request)
    data = (STATIC / f"icon-{request.match_info['size']}.png").read_bytes()
    return web.Response(
        body=data, content_type="image/png", headers={"Cache-Control": "public, max-age=3600"}
    )


async def support(request: web.Request) -> web.Response:
    integ = integration_or_404(request)
    page = PAGES.get_template("support.html").render(integ=integ)
    csp = (
        "default-src 'none'; style-src 'self'; img-src 'self'; base-uri 'none'; "
        "form-action 'none'; frame-ancestors 'self' https://*.office.com "
        "https://*.office365.com https://*.outlook.com https://outlook.live.com"
    )
    return web.Response(text=page, content_type="text/html", headers=page_headers(csp))


def entra_settings(integ: IntegrationConfig) -> dict[str, str]:
    """What MSAL.js needs to ask for a token the server's verifier accepts: the add-in API's
    scope `api://<server_fqdn>/<client id>/<scope>` (an Entra ID access token for it carries that
    application ID URI or the client id as audience, both of which signin/identity.py accepts)."""
    ad = integ.addin
    return {
        "tenantId": ad.entra_tenant_id,
        "clientId": ad.entra_client_id,
        "authority": ad.entra_authority,
        "scope": f"api://{ad.server_fqdn}/{ad.entra_client_id}/{ad.entra_scope}",
        "dialog": f"/addin/{integ.name}/entra-sign-in.html",
    }


def pane_settings(request: web.Request, integ: IntegrationConfig) -> dict[str, Any]:
    service = request.app[SERVICE]
    placeholder = service.placeholder_instructions(integ)
    demo = service.config.server.demo and integ.backend == "spool"
    return {
        "integration": integ.name,
        "texts": pane_texts_for(integ).texts,
        "html": pane_texts_for(integ).html,
        "api": f"/api/addin/v1/{integ.name}/single-use-vmrs",
        "demo": f"/api/demo/v1/{integ.name}" if demo else "",
        "tokenValidation": integ.addin.token_validation,
        "entra": entra_settings(integ),
        # Exchange delivers a meeting only to its attendees: the pane invites the room, online
        # or offline, so the address comes with the page, not with the API's answer
        "room": {"name": integ.exchange.mailbox_name, "email": integ.exchange.mailbox_email},
        "debug": integ.advanced.enable_addin_debug_logs,
        "placeholderHtml": placeholder,
        "singleUse": integ.enable_single_use_vmrs,
        "personal": integ.enable_personal_vmrs,
        "personalApi": f"/api/addin/v1/{integ.name}/personal-vmrs",
        "sessionApi": f"/api/addin/v1/{integ.name}/session",
        "signIn": (
            f"/addin/{integ.name}/sign-in"
            if integ.enable_personal_vmrs and integ.personal.sign_in
            else ""
        ),
    }


def _page(integ: IntegrationConfig, template: str, **values: Any) -> web.Response:
    """One of the add-in's pages (task pane, function file, Entra sign-in dialog): Office.js from
    the configured origin, custom sources when the admin chose them, under the pane's CSP."""
    adv = integ.advanced
    custom = adv.use_custom_addin_sources
    page = PAGES.get_template(template).render(
        integ=integ,
        texts=integ.addin,
        description_html=Markup(pane_texts_for(integ).html["pane_description"]),
        office_js=adv.office_js_url,
        msal=integ.addin.token_validation == "entra",
        styles=[u for u in (adv.fabric_css_url, adv.fabric_components_css_url) if custom and u],
        scripts=list(adv.additional_script_sources) if custom else [],
        **values,
    )
    return web.Response(
        text=page,
        content_type="text/html",
        headers={
            "Content-Security-Policy": content_security_policy(integ),
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
            "Cache-Control": "no-store",
        },
    )


async def taskpane(request: web.Request) -> web.Response:
    integ = integration_or_404(request)
    return _page(integ, "taskpane.html", settings=json.dumps(pane_settings(request, integ)))


async def commands(request: web.Request) -> web.Response:
    """The function file: the send check (event-based activation) and the mobile button."""
    integ = integration_or_404(request)
    return _page(integ, "commands.html", settings=json.dumps(pane_settings(request, integ)))


async def commands_script(request: web.Request) -> web.Response:
    """The function file's script as classic Outlook on Windows loads it: alone, in a
    JavaScript-only runtime with no DOM, so the settings (the send check's texts among them)
    cannot come from commands.html and are put in front of commands.js instead."""
    integ = integration_or_404(request)
    settings = json.dumps(pane_settings(request, integ))
    body = (
        f"globalThis.vmrschedSettings = {settings};\n".encode()
        + (STATIC / "commands.js").read_bytes()
    )
    return web.Response(
        body=body,
        content_type="text/javascript",
        headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"},
    )


async def entra_sign_in(request: web.Request) -> web.Response:
    """The Office dialog that signs a user in where the host has no nested app authentication."""
    integ = integration_or_404(request)
    if integ.addin.token_validation != "entra":
        raise web.HTTPNotFound(reason="this integration does not use Entra ID")
    return _page(integ, "entra_sign_in.html", settings=json.dumps(entra_settings(integ)))


def _bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def _count(request: web.Request, integ: IntegrationConfig, route: str, status: int) -> None:
    counters = request.app[COUNTERS]
    key = (integ.name, route, status)
    counter = counters.get(key)
    if counter is None:
        counter = counters[key] = request.app[SERVICE].metrics.addin_requests.labels(
            integ.name, route, str(status)
        )
    counter.inc()


ADDIN_API = "/api/addin/v1/{integration}/"


def refused(request: web.Request, response: web.Response) -> web.Response:
    """An answer given before the handler ran (a name or origin not ours, a body too large):
    counted in vmrsched_addin_requests_total like every other answer of the add-in API."""
    resource = request.match_info.route.resource
    canonical = resource.canonical if resource is not None else ""
    if canonical.startswith(ADDIN_API):
        integ = request.app[SERVICE].config.integration(request.match_info["integration"])
        if integ is not None:
            _count(request, integ, canonical[len(ADDIN_API) :], response.status)
    return response


async def read_body(request: web.Request) -> bytes:
    """The request's body, as `request.read()` gives it, bounded as it bounds it (the app's
    client_max_size: 413). A body already received whole (the add-in's small JSON arrives with
    its headers) is taken from the buffer in one call instead of request.read()'s loop of
    reads."""
    content = request.content
    if not content.is_eof():
        return await request.read()
    body = content.read_nowait()
    limit = request.client_max_size
    if limit and len(body) > limit:
        raise web.HTTPRequestEntityTooLarge(limit, len(body))
    return body


def single_use_handler(
    service: Service, limiter: RateLimiter, counters: dict[tuple[str, str, int], Any]
) -> Callable[[web.Request], Awaitable[web.Response]]:
    """The add-in API's reservation, POST /api/addin/v1/{integration}/single-use-vmrs, with
    what it needs bound once (the service, the rate limiter, the per-status counters) rather
    than looked up in the app for every request."""
    requests = service.metrics.addin_requests

    def count(integ: IntegrationConfig, status: int) -> None:
        key = (integ.name, "single-use-vmrs", status)
        counter = counters.get(key)
        if counter is None:
            counter = counters[key] = requests.labels(integ.name, "single-use-vmrs", str(status))
        counter.inc()

    async def single_use_vmrs(request: web.Request) -> web.Response:
        """Reserve a single-use VMR (service/addin.py: the meeting details checked, its joining
        instructions rendered). Every answer, an error included, is counted by status in
        vmrsched_addin_requests_total. One coroutine, not two: each frame of the chain is
        resumed again whenever the reservation's await resumes."""
        integ = service.integration(request.match_info["integration"])
        status = 500
        try:
            who = await service.verify_addin_token(integ, _bearer(request))
            wait = limiter.allow(f"{integ.name}\0{who.user}")
            if wait:
                raise RateLimited("too many requests; try again shortly", wait)
            # the use case reads the meeting details once it may serve the request
            reservation = await service.single_use_vmr(
                integ, who, partial(read_body, request) if request.can_read_body else None
            )
            # a frozen dataclass: orjson writes its fields in order, the API's JSON as it always
            # was
            response = web.Response(
                body=orjson.dumps(reservation), status=201, content_type="application/json"
            )
            status = 201
            return response
        except ServiceError as exc:
            status = status_of(exc)
            raise
        except web.HTTPException as exc:  # a body over the limit (413)
            status = exc.status
            raise
        finally:
            count(integ, status)

    return single_use_vmrs


STATIC_FILES = {
    "addin-core.js": "text/javascript",
    "commands.js": "text/javascript",
    "entra-sign-in.js": "text/javascript",
    "pane.js": "text/javascript",
    "signed-in.js": "text/javascript",
    "pane.css": "text/css",
    "icon-80.png": "image/png",
}
# Libraries from the npm registry (vmrsched/http/static/vendor/package.json, installed by
# `npm ci`), served from our own origin: the pane never loads code from a CDN.
VENDOR = STATIC / "vendor" / "node_modules"
VENDOR_FILES = {"msal-browser.min.js": ("@azure", "msal-browser", "lib", "msal-browser.min.js")}


def missing_vendor_files(cfg: Config) -> list[str]:
    """The libraries some integration's pane needs that this install does not have (a wheel
    built before `npm ci`, or a checkout where it never ran): check-config names them."""
    if not any(i.addin.token_validation == "entra" for i in cfg.integrations):
        return []
    return [
        f"{name}: not installed at {VENDOR.joinpath(*parts)}; the Entra ID sign-in in the add-in "
        "cannot work (run: npm ci --prefix vmrsched/http/static/vendor, then install again)"
        for name, parts in VENDOR_FILES.items()
        if not VENDOR.joinpath(*parts).is_file()
    ]


async def static_file(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in STATIC_FILES:
        raise web.HTTPNotFound(reason="no such file")
    return web.Response(
        body=(STATIC / name).read_bytes(),
        content_type=STATIC_FILES[name],
        headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"},
    )


async def vendor_file(request: web.Request) -> web.Response:
    parts = VENDOR_FILES.get(request.match_info["name"])
    path = VENDOR.joinpath(*parts) if parts else None
    if path is None or not path.is_file():
        raise web.HTTPNotFound(
            reason="no such file (run: npm ci --prefix vmrsched/http/static/vendor)"
        )
    return web.Response(
        body=path.read_bytes(),
        content_type="text/javascript",
        headers={"Cache-Control": "public, max-age=86400", "X-Content-Type-Options": "nosniff"},
    )


async def _flush_reserved_log(app: web.Application) -> None:
    """What the last turn reserved is logged even when the server stops right after it."""
    app[SERVICE].flush_reserved_log()


async def _session_context(app: web.Application) -> Any:
    app[SESSION] = aiohttp.ClientSession()
    yield
    await app[SESSION].close()


def setup(app: web.Application) -> None:
    service = app[SERVICE]
    app[LIMITER] = limiter = RateLimiter(service.config.server.rate_limit_per_minute)
    counters: dict[tuple[str, str, int], Any] = {}
    app[COUNTERS] = counters
    app.on_cleanup.append(_flush_reserved_log)
    service.use_http_client(lambda: app[SESSION])
    app.cleanup_ctx.append(_session_context)
    app.router.add_get("/addin/{integration}/manifest.xml", manifest_xml)
    app.router.add_get("/addin/{integration}/taskpane.html", taskpane)
    app.router.add_get("/addin/{integration}/commands.html", commands)
    app.router.add_get("/addin/{integration}/entra-sign-in.html", entra_sign_in)
    app.router.add_get("/addin/{integration}/icon.png", icon)
    app.router.add_get("/addin/{integration}/icon-{size:16|32|64|128}.png", small_icon)
    app.router.add_get("/addin/{integration}/support", support)
    app.router.add_get("/addin/static/{name}", static_file)
    app.router.add_get("/addin/static/vendor/{name}", vendor_file)
    # after /addin/static/…: "static" is not an integration's script
    app.router.add_get("/addin/{integration}/commands.js", commands_script)
    app.router.add_post(
        "/api/addin/v1/{integration}/single-use-vmrs",
        single_use_handler(service, limiter, counters),
    )
