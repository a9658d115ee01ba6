"""Admin pages: log in with the admin token, and the EWS service account's browser sign-in
(oauth_delegated) with its redirect endpoint.

The admin token comes from [server] admin_token_env/_file; without one, admin pages are off.
It is accepted as `Authorization: Bearer …` or as the HttpOnly cookie the login form sets
(SameSite=Lax: the identity provider's redirect back to us is a cross-site navigation).
Comparisons are constant-time.
"""

from __future__ import annotations

import asyncio
import hmac
from typing import Any

import jinja2
from aiohttp import web

from vmrsched.config import IntegrationConfig
from vmrsched.http.common import SERVICE, error
from vmrsched.mailbox.base import GatewayError
from vmrsched.mailbox.ews_auth import SIGN_IN_ALARM, DelegatedTokens

COOKIE = "vmrsched_admin"
REDIRECT_PATH = "/admin/platform/msexchangeconnector/oauth_redirect/"

_pages = jinja2.Environment(
    loader=jinja2.PackageLoader("vmrsched.http", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
)


def _expected(request: web.Request) -> str | None:
    secret = request.app[SERVICE].config.server.admin_token
    return secret.reveal() if secret is not None else None


def _presented(request: web.Request) -> str:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token:
        return token.strip()
    return request.cookies.get(COOKIE, "")


def require_admin(request: web.Request) -> web.Response | None:
    expected = _expected(request)
    if expected is None:
        return error(
            403,
            "admin_disabled",
            "admin pages are off: set [server] admin_token_env or admin_token_file",
        )
    presented = _presented(request)
    if not presented or not hmac.compare_digest(presented.encode(), expected.encode()):
        return error(401, "admin_token_required", "log in at /admin/login with the admin token")
    return None


def _page(name: str, status: int = 200, **values: Any) -> web.Response:
    return web.Response(
        text=_pages.get_template(name).render(**values),
        status=status,
        content_type="text/html",
        headers={
            "Content-Security-Policy": "default-src 'self'; form-action 'self'; "
            "frame-ancestors 'none'",
            "Cache-Control": "no-store",
        },
    )


async def login_form(request: web.Request) -> web.Response:
    return _page("admin_login.html", next=request.query.get("next", "/readyz"), failed=False)


async def login(request: web.Request) -> web.Response:
    form = await request.post()
    expected = _expected(request)
    token = str(form.get("token", ""))
    target = str(form.get("next", "/readyz"))
    if not target.startswith("/") or target.startswith("//"):
        target = "/readyz"  # only local targets: no open redirect
    if expected is None or not hmac.compare_digest(token.encode(), expected.encode()):
        return _page("admin_login.html", status=401, next=target, failed=True)
    response = web.HTTPSeeOther(target)
    response.set_cookie(
        COOKIE,
        token,
        httponly=True,
        samesite="Lax",
        path="/admin",
        secure=request.app[SERVICE].config.server.base_url.startswith("https"),
    )
    raise response


def _delegated(request: web.Request, integ: IntegrationConfig) -> DelegatedTokens | None:
    source = request.app[SERVICE].ctx.tokens.get(integ)
    return source if isinstance(source, DelegatedTokens) else None


async def sign_in(request: web.Request) -> web.Response:
    denied = require_admin(request)
    if denied is not None:
        return denied
    service = request.app[SERVICE]
    integ = service.config.integration(request.match_info["integration"])
    if integ is None:
        return error(404, "unknown_integration", "unknown integration")
    tokens = _delegated(request, integ)
    if tokens is None:
        return error(
            400,
            "not_delegated",
            f"{integ.name} does not use exchange.authentication = oauth_delegated",
        )
    try:
        target = await asyncio.to_thread(tokens.start_sign_in, integ.exchange.oauth_redirect_uri)
    except GatewayError as exc:
        return error(502, "identity_provider_unreachable", str(exc))
    raise web.HTTPFound(target)


async def redirect(request: web.Request) -> web.Response:
    denied = require_admin(request)
    if denied is not None:
        return denied
    service = request.app[SERVICE]
    query = dict(request.query)
    if "error" in query:
        return _page(
            "admin_signed_in.html",
            status=400,
            ok=False,
            integration="",
            detail=query.get("error_description") or query["error"],
            account="",
        )
    for integ in service.config.integrations:
        tokens = _delegated(request, integ)
        if tokens is None or query.get("state") not in tokens.pending_states():
            continue
        try:
            account = await asyncio.to_thread(tokens.finish_sign_in, query)
        except GatewayError as exc:
            return _page(
                "admin_signed_in.html",
                status=400,
                ok=False,
                integration=integ.name,
                detail=str(exc),
                account="",
            )
        service.ctx.alarms.clear(integ.name, SIGN_IN_ALARM)
        return _page(
            "admin_signed_in.html", ok=True, integration=integ.name, detail="", account=account
        )
    return _page(
        "admin_signed_in.html",
        status=400,
        ok=False,
        integration="",
        detail="unknown or expired sign-in attempt; start again",
        account="",
    )


def setup(app: web.Application) -> None:
    app.router.add_get("/admin/login", login_form)
    app.router.add_post("/admin/login", login)
    app.router.add_get("/admin/integrations/{integration}/sign-in", sign_in)
    app.router.add_get(REDIRECT_PATH, redirect)
