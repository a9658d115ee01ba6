"""Binding a sign-in to the browser that started it. The provider's redirect back carries the
attempt's state; the same state also rides in a short-lived cookie set when the attempt
starts, and the callback goes on only when the two agree. Without it, a callback URL someone
forwards (or plants in a link) would finish their sign-in in the victim's browser: an admin
session in their name, or a pane showing their personal rooms to insert into the victim's
meetings.

Starting a sign-in keeps an attempt for ten minutes, so starts are limited per client address
(`check_start`), as the pages' other requests are limited per user."""

from __future__ import annotations

import hmac
from urllib.parse import parse_qs, urlsplit

from aiohttp import web

from vmrsched.errors import RateLimited
from vmrsched.http.addin import LIMITER
from vmrsched.http.common import SERVICE, client_address

COOKIE = "vmrsched_sign_in_state"
MAX_AGE = 600  # as long as the service keeps an attempt


def check_start(request: web.Request) -> None:
    """RateLimited when the request's client has started more user sign-ins this minute than
    [server] rate_limit_per_minute (the organizer page's and the pane's alike: one allowance
    per address, whichever integration)."""
    wait = request.app[LIMITER].allow(f"sign-in\0{client_address(request)}")
    if wait:
        raise RateLimited("too many sign-ins started from your address; try again shortly", wait)


def secure_cookies(request: web.Request) -> bool:
    """Secure, except for a plain-http server on loopback (a browser would drop it there)."""
    server = request.app[SERVICE].config.server
    return not (server.base_url.startswith("http://") and server.on_loopback)


def redirect_bound(request: web.Request, authorization_url: str, path: str) -> web.HTTPFound:
    """The redirect to the provider, with the attempt's state in a cookie for `path` (the
    callback's folder)."""
    state = parse_qs(urlsplit(authorization_url).query).get("state", [""])[0]
    response = web.HTTPFound(
        authorization_url, headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}
    )
    response.set_cookie(
        COOKIE,
        state,
        httponly=True,
        samesite="Lax",  # sent on the provider's top-level redirect back to us
        path=path,
        max_age=MAX_AGE,
        secure=secure_cookies(request),
    )
    return response


def started_here(request: web.Request) -> bool:
    """Whether this callback's state is the one this browser started (constant time). A
    provider's error answer needs no binding: it grants nothing."""
    if "error" in request.query:
        return True
    cookie = request.cookies.get(COOKIE, "")
    state = request.query.get("state", "")
    return bool(cookie) and hmac.compare_digest(cookie.encode(), state.encode())


def forget(response: web.StreamResponse, path: str) -> None:
    response.del_cookie(COOKIE, path=path)
