"""Who may use the admin pages: the admin token (`Authorization: Bearer …`, or typed once into
the login form) or an OpenID Connect sign-in as a member of the admin group, a session cookie
after that (a random id, never the token; HttpOnly, Secure, SameSite=Lax: the identity
provider's redirect back is a cross-site navigation), and the EWS service account's browser
sign-in (oauth_delegated) with its redirect endpoint. Login attempts, by token or sign-in, are
rate-limited and logged; comparisons are constant-time. The console (admin.py) and the admin
API (admin_api.py) let a request in through `check_admin` / `admin_only`."""

from __future__ import annotations

import functools
import hashlib
import hmac
import logging
import re
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

from aiohttp import web

from vmrsched.errors import (
    BadRequest,
    Forbidden,
    RateLimited,
    Unauthorized,
    Unavailable,
    UpstreamError,
)
from vmrsched.http import refusals, sign_in_state
from vmrsched.http.common import PAGES, SERVICE, client_address, status_of
from vmrsched.service import SignInRefused

log = logging.getLogger("vmrsched.admin")
STATIC = resources.files("vmrsched.http") / "static"
COOKIE = "vmrsched_admin"
SIGN_IN_PATH = "/admin/sign-in"
REDIRECT_PATH = "/admin/platform/msexchangeconnector/oauth_redirect/"


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
SESSION_SECONDS = 8 * 3600  # the cookie's life: as long as the session (signin/admins.py)
LOGIN_ATTEMPTS_PER_MINUTE = 5  # per client address
LOGIN_ATTEMPTS_PER_MINUTE_ALL = 30  # across all addresses: no distributed guessing either


WHO = web.RequestKey("admin_who", str)
LOGIN_LIMITS = web.AppKey("admin_login_limits", tuple)


def _expected(request: web.Request) -> str | None:
    secret = request.app[SERVICE].config.server.admin_token
    return secret.reveal() if secret is not None else None


async def check_admin(request: web.Request, csrf: str | None = None) -> str:
    """Passes when the request is an admin's: `Authorization: Bearer <admin token>` (scripts,
    compared in constant time) or a live session cookie from /admin/login (browsers); a change
    (not GET/HEAD) made with the cookie must carry the session's CSRF token (`X-CSRF-Token` or
    the form's `csrf` field, checked by the handler for forms). Returns who: for the log.
    Sessions are the service's (sign_ins.py): in memory with one instance, in the shared
    database with several, so a session opened through one instance holds on every other."""
    if not request.app[SERVICE].config.server.admin_enabled:
        raise Forbidden(
            "admin pages are off: set [server] admin_token_env or admin_token_file, or "
            "[server.admin_sign_in]",
            "admin_disabled",
        )
    expected = _expected(request)
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    client = client_address(request)
    if scheme.lower() == "bearer" and token.strip():
        per_client, _ = request.app[LOGIN_LIMITS]
        wait = per_client.waiting(client)  # out of attempts: not even a right token is tried
        if wait:
            log.warning("admin token refused: too many wrong ones from %s", client)
            raise RateLimited("too many login attempts; try again shortly", wait)
        if expected is not None and hmac.compare_digest(token.strip().encode(), expected.encode()):
            return f"admin token from {client}"
        # a wrong token is a login attempt like one typed into the form: limited and logged
        log.warning("admin token refused: a wrong one from %s", client)
        _count_attempt(request)
    else:
        service = request.app[SERVICE]
        sid = request.cookies.get(COOKIE, "")
        who = await service.sign_ins.admin_session(sid)
        if who is not None:
            if request.method not in ("GET", "HEAD"):
                sent = csrf if csrf is not None else request.headers.get("X-CSRF-Token", "")
                expected_csrf = await service.sign_ins.admin_csrf(sid)
                if not hmac.compare_digest(sent.encode(), expected_csrf.encode()):
                    raise Forbidden("missing or wrong CSRF token", "csrf_failed")
            session = hashlib.sha256(sid.encode()).hexdigest()[:8]
            return f"{who} (session {session}) from {client}"
    raise Unauthorized("log in at /admin/login with the admin token", "admin_token_required")


def admin_only(handler: Handler) -> Handler:
    """The one place admin routes are guarded: every route that acts as an admin wears it."""

    @functools.wraps(handler)
    async def guarded(request: web.Request) -> web.StreamResponse:
        request[WHO] = await check_admin(request)
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


def _login_page(
    request: web.Request, target: str, status: int = 200, problem: str = ""
) -> web.Response:
    service = request.app[SERVICE]
    return _page(
        "admin_login.html",
        status=status,
        next=target,
        problem=problem,
        with_token=service.config.server.admin_token is not None,
        with_sign_in=service.admin_sign_in_enabled(),
    )


async def login_form(request: web.Request) -> web.Response:
    return _login_page(request, local_target(request.query.get("next", "/admin"), "/admin"))


def _count_attempt(request: web.Request) -> None:
    """Every login attempt (a token, a sign-in started) counts against the limits."""
    per_client, everyone = request.app[LOGIN_LIMITS]
    client = client_address(request)
    wait = max(per_client.allow(client), everyone.allow("*"))
    if wait:
        log.warning("admin login refused: too many attempts from %s", client)
        raise RateLimited("too many login attempts; try again shortly", wait)


async def _open_session(request: web.Request, who: str, target: str) -> web.HTTPSeeOther:
    response = web.HTTPSeeOther(target)
    response.set_cookie(
        COOKIE,
        await request.app[SERVICE].sign_ins.open_admin_session(who),
        httponly=True,
        samesite="Lax",
        path="/admin",
        max_age=SESSION_SECONDS,
        secure=sign_in_state.secure_cookies(request),
    )
    return response


async def login(request: web.Request) -> web.Response:
    _count_attempt(request)
    client = client_address(request)
    form = await request.post()
    expected = _expected(request)
    token = str(form.get("token", ""))
    target = local_target(str(form.get("next", "/admin")), "/admin")
    if expected is None or not hmac.compare_digest(token.encode(), expected.encode()):
        log.warning("admin login failed from %s", client)
        return _login_page(request, target, 401, "That token is not right.")
    log.info("admin login with the admin token from %s", client)
    raise await _open_session(request, "admin token", target)


async def oidc_start(request: web.Request) -> web.Response:
    """Off to the identity provider; it comes back to oidc_callback (in this browser only)."""
    _count_attempt(request)
    target = request.app[SERVICE].start_admin_sign_in()
    log.info("admin sign-in started from %s", client_address(request))
    raise sign_in_state.redirect_bound(request, target, SIGN_IN_PATH)


async def oidc_callback(request: web.Request) -> web.Response:
    """The provider's answer: a session for a member of the admin group, else the login page
    saying why (and the log saying who tried). Not counted against the login limits: only a
    state from oidc_start (which is counted) gets as far as the provider, and a refused one
    costs no more than a lookup."""
    client = client_address(request)
    if not sign_in_state.started_here(request):
        log.warning("admin sign-in refused from %s: not started in this browser", client)
        return _login_page(
            request, "/admin", 400, "This sign-in was not started in this browser; start again."
        )
    try:
        who = await request.app[SERVICE].finish_admin_sign_in(dict(request.query))
    except (BadRequest, Forbidden, Unavailable, UpstreamError) as exc:
        log.warning("admin sign-in refused from %s: %s", client, refusals.why(exc))
        return _login_page(request, "/admin", status_of(exc), exc.message)
    log.info("admin sign-in by %s from %s", who, client)
    response = await _open_session(request, who, "/admin")
    sign_in_state.forget(response, SIGN_IN_PATH)
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
        client_address(request),
        extra={"integration": name},
    )
    raise sign_in_state.redirect_bound(request, target, REDIRECT_PATH)


@admin_only
async def redirect(request: web.Request) -> web.StreamResponse:
    """The service account's sign-in coming back: finished only in the browser that started it
    (another admin opening a forwarded link would otherwise bind the sender's account)."""
    query = dict(request.query)
    if not sign_in_state.started_here(request):
        log.warning(
            "service account sign-in refused from %s: not started in this browser",
            client_address(request),
        )
        detail = "This sign-in was not started in this browser; start it again."
        return _page("admin_signed_in.html", status=400, ok=False, integration="", detail=detail)
    if "error" in query:
        # the identity provider's words come through the browser's address bar: logged, and the
        # page says only what we know it means
        log.warning(
            "service account sign-in refused by the identity provider: %s: %s",
            query["error"][:100],
            query.get("error_description", "")[:300],
        )
        detail = "The identity provider refused the sign-in (see the log); start it again."
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
    response = _page("admin_signed_in.html", ok=True, integration=name, detail="", account=account)
    sign_in_state.forget(response, REDIRECT_PATH)
    return response


def wants_html(request: web.Request) -> bool:
    """A browser asking for a page (Accept names text/html), not a script asking for JSON."""
    return "text/html" in request.headers.get("Accept", "")


async def _who_or_login(request: web.Request, csrf: str | None = None) -> str:
    """An admin's request, or (for a browser without a session) off to the login page."""
    try:
        return await check_admin(request, csrf)
    except Unauthorized:
        raise web.HTTPSeeOther("/admin/login?next=/admin") from None
