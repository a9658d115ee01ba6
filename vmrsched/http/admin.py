"""Admin pages: log in with the admin token, and the EWS service account's browser sign-in
(oauth_delegated) with its redirect endpoint.

The admin token comes from [server] admin_token_env/_file; without one, admin pages are off.
It is accepted as `Authorization: Bearer …`; browsers log in once and then carry a session
cookie (a random id, never the token; HttpOnly, Secure, SameSite=Lax: the identity provider's
redirect back to us is a cross-site navigation). Login attempts are rate-limited and logged.
Comparisons are constant-time.
"""

from __future__ import annotations

import functools
import hmac
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from vmrsched.errors import Forbidden, RateLimited, Unauthorized
from vmrsched.http.common import PAGES, SERVICE
from vmrsched.http.ratelimit import RateLimiter
from vmrsched.service import SignInRefused

log = logging.getLogger("vmrsched.admin")
COOKIE = "vmrsched_admin"
REDIRECT_PATH = "/admin/platform/msexchangeconnector/oauth_redirect/"


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
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


def check_admin(request: web.Request) -> None:
    """Passes when the request is an admin's: `Authorization: Bearer <admin token>` (scripts,
    compared in constant time) or a live session cookie from /admin/login (browsers)."""
    expected = _expected(request)
    if expected is None:
        raise Forbidden(
            "admin pages are off: set [server] admin_token_env or admin_token_file",
            "admin_disabled",
        )
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        if hmac.compare_digest(token.strip().encode(), expected.encode()):
            return
    elif request.app[SESSIONS].valid(request.cookies.get(COOKIE, "")):
        return
    raise Unauthorized("log in at /admin/login with the admin token", "admin_token_required")


def admin_only(handler: Handler) -> Handler:
    """The one place admin routes are guarded: every route that acts as an admin wears it."""

    @functools.wraps(handler)
    async def guarded(request: web.Request) -> web.StreamResponse:
        check_admin(request)
        return await handler(request)

    return guarded


def _page(name: str, status: int = 200, **values: Any) -> web.Response:
    return web.Response(
        text=PAGES.get_template(name).render(**values),
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
        raise RateLimited("too many login attempts; try again shortly", wait)
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


@admin_only
async def sign_in(request: web.Request) -> web.StreamResponse:
    name = request.match_info["integration"]
    target = await request.app[SERVICE].start_sign_in(name)
    log.info(
        "admin started the service account's sign-in for %s (from %s)",
        name,
        request.remote,
        extra={"integration": name},
    )
    raise web.HTTPFound(target)


@admin_only
async def redirect(request: web.Request) -> web.StreamResponse:
    query = dict(request.query)
    if "error" in query:
        detail = query.get("error_description") or query["error"]
        return _page("admin_signed_in.html", status=400, ok=False, integration="", detail=detail)
    try:
        name, account = await request.app[SERVICE].finish_sign_in(query)
    except SignInRefused as exc:
        return _page(
            "admin_signed_in.html",
            status=400,
            ok=False,
            integration=exc.integration,
            detail=exc.message,
        )
    return _page("admin_signed_in.html", ok=True, integration=name, detail="", account=account)


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
