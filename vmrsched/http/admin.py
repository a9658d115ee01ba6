"""Admin pages: log in with the admin token, and the EWS service account's browser sign-in
(oauth_delegated) with its redirect endpoint.

The admin token comes from [server] admin_token_env/_file; without one, admin pages are off.
It is accepted as `Authorization: Bearer …`; browsers log in once and then carry a session
cookie (a random id, never the token; HttpOnly, Secure, SameSite=Lax: the identity provider's
redirect back to us is a cross-site navigation). Login attempts are rate-limited and logged.
Comparisons are constant-time.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
import secrets
import time
from collections.abc import Callable
from typing import Any

import jinja2
from aiohttp import web

from vmrsched.config import IntegrationConfig
from vmrsched.http.common import SERVICE, error
from vmrsched.http.ratelimit import RateLimiter
from vmrsched.mailbox.base import GatewayError
from vmrsched.mailbox.ews_auth import SIGN_IN_ALARM, DelegatedTokens

log = logging.getLogger("vmrsched.admin")
COOKIE = "vmrsched_admin"
REDIRECT_PATH = "/admin/platform/msexchangeconnector/oauth_redirect/"

_pages = jinja2.Environment(
    loader=jinja2.PackageLoader("vmrsched.http", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
)


SESSION_SECONDS = 8 * 3600
MAX_SESSIONS = 1000
LOGIN_ATTEMPTS_PER_MINUTE = 5  # per client address
LOGIN_ATTEMPTS_PER_MINUTE_ALL = 30  # across all addresses: no distributed guessing either


class AdminSessions:
    """Admin browser sessions: a random id in the cookie (never the admin token itself),
    expiring after SESSION_SECONDS; kept in memory, so a restart logs everyone out."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._expires: dict[str, float] = {}

    def create(self) -> str:
        now = self.clock()
        for sid, expires in list(self._expires.items()):
            if expires <= now:
                del self._expires[sid]
        while len(self._expires) >= MAX_SESSIONS:
            del self._expires[next(iter(self._expires))]  # the oldest
        sid = secrets.token_urlsafe(32)
        self._expires[sid] = now + SESSION_SECONDS
        return sid

    def valid(self, sid: str) -> bool:
        expires = self._expires.get(sid)
        return expires is not None and expires > self.clock()


SESSIONS = web.AppKey("admin_sessions", AdminSessions)
LOGIN_LIMITS = web.AppKey("admin_login_limits", tuple)


def _expected(request: web.Request) -> str | None:
    secret = request.app[SERVICE].config.server.admin_token
    return secret.reveal() if secret is not None else None


def require_admin(request: web.Request) -> web.Response | None:
    """None when the request is an admin's: `Authorization: Bearer <admin token>` (scripts,
    compared in constant time) or a live session cookie from /admin/login (browsers)."""
    expected = _expected(request)
    if expected is None:
        return error(
            403,
            "admin_disabled",
            "admin pages are off: set [server] admin_token_env or admin_token_file",
        )
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        if hmac.compare_digest(token.strip().encode(), expected.encode()):
            return None
    elif request.app[SESSIONS].valid(request.cookies.get(COOKIE, "")):
        return None
    return error(401, "admin_token_required", "log in at /admin/login with the admin token")


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
    per_client, everyone = request.app[LOGIN_LIMITS]
    client = request.remote or "unknown"
    wait = max(per_client.allow(client), everyone.allow("*"))
    if wait:
        log.warning("admin login refused: too many attempts from %s", client)
        response = error(429, "rate_limited", "too many login attempts; try again shortly")
        response.headers["Retry-After"] = str(max(1, round(wait)))
        return response
    form = await request.post()
    expected = _expected(request)
    token = str(form.get("token", ""))
    target = local_target(str(form.get("next", "/readyz")))
    if expected is None or not hmac.compare_digest(token.encode(), expected.encode()):
        log.warning("admin login failed from %s", client)
        return _page("admin_login.html", status=401, next=target, failed=True)
    log.info("admin login from %s", client)
    server = request.app[SERVICE].config.server
    response = web.HTTPSeeOther(target)
    response.set_cookie(
        COOKIE,
        request.app[SESSIONS].create(),
        httponly=True,
        samesite="Lax",
        path="/admin",
        max_age=SESSION_SECONDS,
        # Secure, except for a plain-http server on loopback (a browser would drop it there)
        secure=not (server.base_url.startswith("http://") and server.on_loopback),
    )
    raise response


_LOCAL_PATH = re.compile(r"^/(?![/\\])[A-Za-z0-9._~!$&'()*+,;=:@%/?#-]*$")


def local_target(target: str, default: str = "/readyz") -> str:
    """A path on this server to go to after login, or `default`. Browsers drop tabs and
    newlines and read a backslash as a slash, so `/\t/evil.example` and `/\\evil.example` would
    leave the site: only plain printable paths that stay here are accepted."""
    return target if _LOCAL_PATH.match(target) else default


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
    log.info(
        "admin started the service account's sign-in for %s (from %s)",
        integ.name,
        request.remote,
        extra={"integration": integ.name},
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
    app[SESSIONS] = AdminSessions()
    app[LOGIN_LIMITS] = (
        RateLimiter(LOGIN_ATTEMPTS_PER_MINUTE),
        RateLimiter(LOGIN_ATTEMPTS_PER_MINUTE_ALL),
    )
    app.router.add_get("/admin/login", login_form)
    app.router.add_post("/admin/login", login)
    app.router.add_get("/admin/integrations/{integration}/sign-in", sign_in)
    app.router.add_get(REDIRECT_PATH, redirect)
