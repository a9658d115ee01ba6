"""Organizer self-service (DESIGN "Organizer self-service"): a page of one's own bookings and
declines, signed in with the personal-VMR user sign-in, and its JSON equivalents for the pane.

- `GET /my/{integration}`: the page (server-rendered, no scripts, a CSP that allows nothing but
  our own style sheet and forms to ourselves). `/my/{integration}/sign-in` starts the user
  sign-in (OAuth code flow with PKCE; the same client and sessions as personal VMRs) and its
  callback sets the page's session cookie (HttpOnly, SameSite=Lax, Secure on https, for
  `/my/{integration}` only) holding the sign-in's session token: never a token in a URL.
- `POST /my/{integration}/bookings/{alias}/resend|cancel` and `/my/{integration}/sign-out`:
  forms carrying the CSRF token (an HMAC of the session token under a key of this process).
- `/api/self/v1/{integration}/…`: the same with `Authorization: Bearer` (the add-in's Entra ID
  or Exchange identity token, or a `vms1.` session token); no cookie, so no CSRF token.

Only the signed-in user's own bookings are shown or acted on; an alias that is not theirs gets
404 (as one that does not exist), so a guess confirms nothing. Every act is logged with who,
every refusal (a sign-in, a form without its CSRF token, someone else's alias) with why and
from where (refusals.py).
With token validation "none" (loopback trials only) the caller names a demo user (`?user=`),
as the preview pane does."""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from vmrsched.config import IntegrationConfig
from vmrsched.errors import (
    BadRequest,
    Forbidden,
    NotFound,
    RateLimited,
    ServiceError,
    Unauthorized,
)
from vmrsched.http import refusals, sign_in_state
from vmrsched.http.addin import LIMITER, _bearer
from vmrsched.http.common import (
    PAGES,
    SERVICE,
    client_address,
    integration_or_404,
    page_headers,
    status_of,
)
from vmrsched.service import Organizer

log = logging.getLogger("vmrsched.organizer")

COOKIE = "vmrsched_my_session"
# the key the page's CSRF tokens are made with: this process's, or with a shared database the
# one every instance holds (a form may reach another instance than the page came from)
CSRF_KEY = web.AppKey("organizer_csrf_key", bytearray)
SHARED_CSRF_KEY = "organizer-csrf-key"  # its name in the instances' shared secrets
# as strict as the admin console's, and stricter: nothing but our style sheet, forms to us
CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
    "base-uri 'none'; frame-ancestors 'none'"
)
MAX_USER = 254

# What an act reports on the page: only these texts of ours are shown, so a link someone sends
# (`/my/x?done=…`) cannot put words on the page.
NOTICES: dict[str, tuple[str, str]] = {
    "resent": ("ok", "The joining details are on their way to your mailbox."),
    "cancelled": ("ok", "The reservation is cancelled; its video address no longer works."),
    "signed_out": ("ok", "You are signed out."),
}


# where the page and its API answer: what the app's origin check refuses there is logged here
PATHS = ("/my/", "/api/self/")


def cross_origin_refused(request: web.Request, origin: str) -> None:
    """The log line for a form or API call from another site's page, which the app's origin
    check refused before any handler ran (a login CSRF, or a page trying the API)."""
    if request.path.startswith(PATHS):
        reason = f"a cross-origin {request.method} from {origin[:200]!r}"
        name = request.match_info.get("integration", "")[:100]  # as the caller wrote it
        refusals.refused(
            request, refusals.ORGANIZER, name, "organizer page", reason, kind="cross-origin"
        )


def page_path(integ: IntegrationConfig) -> str:
    return f"/my/{integ.name}"


def _sign_in_path(integ: IntegrationConfig) -> str:
    return f"{page_path(integ)}/sign-in"


def _csrf(request: web.Request, token: str) -> str:
    return hmac.new(request.app[CSRF_KEY], token.encode(), "sha256").hexdigest()


def _demo_user(request: web.Request | None, form: Any = None) -> str:
    source = form if form is not None else (request.query if request is not None else {})
    return str(source.get("user", ""))[:MAX_USER].strip()


def _allow(request: web.Request, integ: IntegrationConfig, who: Organizer) -> None:
    wait = request.app[LIMITER].allow(f"{integ.name}\0self\0{who.email or who.shown}")
    if wait:
        _refused(
            request, integ, "organizer page", f"too many requests by {who.shown}", "rate limit"
        )
        raise RateLimited("too many requests; try again shortly", wait)


def _refused(
    request: web.Request, integ: IntegrationConfig, what: str, reason: str, kind: str = ""
) -> None:
    refusals.refused(request, refusals.ORGANIZER, integ.name, what, reason, kind)


@contextmanager
def _not_theirs_logged(
    request: web.Request, integ: IntegrationConfig, who: Organizer, alias: str
) -> Iterator[None]:
    """An alias that is not the organizer's (or does not exist) answers 404 as always, and the
    log says who asked for it: someone trying addresses shows up there."""
    try:
        yield
    except NotFound as exc:
        if exc.code == "unknown_booking":
            reason = f"{who.shown} asked for {alias[:200]!r}: not theirs, or no such booking"
            _refused(request, integ, "organizer page", reason, "not theirs")
        raise


def _by(request: web.Request, who: Organizer) -> str:
    """Who did it, for the log and the record (`organizer self-service` marks it as theirs)."""
    return f"{who.shown} (organizer self-service) from {client_address(request)}"


# --- the page ------------------------------------------------------------------------------------


async def _page_user(
    request: web.Request, integ: IntegrationConfig, form: Any = None
) -> tuple[Organizer | None, str]:
    """The page's user and the secret their forms are bound to (the session token, or in a
    loopback trial the demo user's name); (None, "") when nobody is signed in."""
    service = request.app[SERVICE]
    token = request.cookies.get(COOKIE, "")
    if token:
        try:
            return await service.organizer(integ, token), token
        except Unauthorized:
            pass  # signed out elsewhere, or no longer refreshable: sign in again
    if integ.addin.token_validation == "none":
        demo = _demo_user(request, form)
        if demo:
            return await service.organizer(integ, None, demo), f"demo\0{demo}"
    return None, ""


def _render(
    integ: IntegrationConfig, status: int = 200, cookie_gone: bool = False, **values: Any
) -> web.Response:
    values.setdefault("notice", ("", ""))
    page = PAGES.get_template("organizer.html").render(integ=integ, **values)
    response = web.Response(
        text=page, content_type="text/html", status=status, headers=page_headers(CSP)
    )
    if cookie_gone:
        response.del_cookie(COOKIE, path=page_path(integ))
    return response


async def page(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    integ = integration_or_404(request)
    who, secret = await _page_user(request, integ)
    none = integ.addin.token_validation == "none"
    sign_in = _sign_in_path(integ) if service.organizer_sign_in_available(integ) else ""
    if who is None:
        return _render(
            integ,
            status=401,
            cookie_gone=COOKIE in request.cookies,
            who=None,
            sign_in=sign_in,
            demo=none,
            notice=NOTICES.get(request.query.get("done", ""), ("", "")),
        )
    _allow(request, integ, who)
    bookings = await service.organizer_bookings(integ.name, who)
    declines = await service.organizer_declines(integ.name, who)
    done = request.query.get("done", "")
    return _render(
        integ,
        who=who,
        signed_in=not secret.startswith("demo\0"),
        demo_user=_demo_user(request) if secret.startswith("demo\0") else "",
        bookings=bookings,
        declines=declines,
        csrf=_csrf(request, secret),
        sign_in=sign_in,
        demo=none,
        notice=NOTICES.get(done, ("", "")),
    )


async def _form_user(request: web.Request, integ: IntegrationConfig) -> tuple[Organizer, Any]:
    """A form's user, checked against the form's CSRF token (403 csrf_failed otherwise)."""
    form = await request.post()
    who, secret = await _page_user(request, integ, form)
    if who is None:
        raise Unauthorized("sign in first", "sign_in_required")
    sent = str(form.get("csrf", ""))
    if not hmac.compare_digest(sent.encode(), _csrf(request, secret).encode()):
        why = "a missing CSRF token" if not sent else "a wrong CSRF token"
        _refused(request, integ, "organizer page form", f"{who.shown} sent {why}")
        raise Forbidden("missing or wrong CSRF token", "csrf_failed")
    _allow(request, integ, who)
    return who, form


def _back_to(integ: IntegrationConfig, form: Any, done: str = "") -> str:
    """The page again (a demo user's name kept: loopback trials only)."""
    query = {"done": done} if done else {}
    demo = _demo_user(None, form) if integ.addin.token_validation == "none" else ""
    if demo:
        query["user"] = demo
    return page_path(integ) + (f"?{urlencode(query)}" if query else "")


async def _act(request: web.Request, act: str) -> web.Response:
    """A form's act; a refusal is a page saying why (its status the API's), not JSON."""
    service = request.app[SERVICE]
    integ = integration_or_404(request)
    alias = request.match_info["alias"]
    form: Any = {}
    try:
        who, form = await _form_user(request, integ)
        with _not_theirs_logged(request, integ, who, alias):
            if act == "resend":
                await service.organizer_resend(integ.name, alias, who, _by(request, who))
            else:
                if form.get("confirm") != "yes":
                    raise BadRequest("tick the box to confirm the cancellation", "not_confirmed")
                await service.organizer_cancel(integ.name, alias, who, _by(request, who))
    except ServiceError as exc:
        return _render(
            integ,
            status=status_of(exc),
            who=None,
            refused=exc.message,
            back=_back_to(integ, form),
            sign_in="",
            demo=False,
        )
    raise web.HTTPSeeOther(_back_to(integ, form, "resent" if act == "resend" else "cancelled"))


async def resend_form(request: web.Request) -> web.Response:
    return await _act(request, "resend")


async def cancel_form(request: web.Request) -> web.Response:
    return await _act(request, "cancel")


async def sign_out_form(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    integ = integration_or_404(request)
    who, _ = await _form_user(request, integ)
    token = request.cookies.get(COOKIE, "")
    if token:
        await service.personal_sign_out(integ.name, token)
    log.info("%s signed out of the organizer page", who.shown, extra={"integration": integ.name})
    response = web.HTTPSeeOther(f"{page_path(integ)}?done=signed_out")
    response.del_cookie(COOKIE, path=page_path(integ))
    raise response


# --- the sign-in ----------------------------------------------------------------------------------


async def sign_in(request: web.Request) -> web.Response:
    """Off to the identity provider (back to the callback in this browser only); a client
    that started too many sign-ins gets a page saying so (429, Retry-After)."""
    service = request.app[SERVICE]
    integ = integration_or_404(request)
    try:
        sign_in_state.check_start(request)
    except RateLimited as exc:
        _refused(request, integ, "organizer page sign-in", "too many sign-ins started")
        return _too_many_sign_ins(integ, exc)
    url = service.start_organizer_sign_in(integ.name)
    log.info(
        "organizer page sign-in started from %s",
        client_address(request),
        extra={"integration": integ.name},
    )
    raise sign_in_state.redirect_bound(request, url, _sign_in_path(integ))


def _too_many_sign_ins(integ: IntegrationConfig, exc: RateLimited) -> web.Response:
    response = _render(
        integ,
        status=429,
        who=None,
        sign_in=_sign_in_path(integ),
        demo=False,
        notice=("error", "Too many sign-ins were started from your address; try again shortly."),
    )
    response.headers["Retry-After"] = str(max(1, round(exc.retry_after)))
    return response


async def sign_in_callback(request: web.Request) -> web.Response:
    """Back from the identity provider: the session goes into the page's cookie and the
    browser to the page; a refusal is a page saying so, with the way to try again."""
    service = request.app[SERVICE]
    integ = integration_or_404(request)
    try:
        if not sign_in_state.started_here(request):
            raise BadRequest(
                "this sign-in was not started in this window; start again",
                "sign_in_refused",
                detail="not started in this browser: a callback forwarded or altered",
            )
        session = await service.finish_organizer_sign_in(integ.name, dict(request.query))
    except ServiceError as exc:
        _refused(request, integ, "organizer page sign-in", refusals.why(exc))
        response = _render(
            integ,
            status=status_of(exc),
            who=None,
            sign_in=_sign_in_path(integ),
            demo=False,
            notice=("error", f"Signing in did not work: {exc.message}"),
        )
        sign_in_state.forget(response, _sign_in_path(integ))
        return response
    digest = hashlib.sha256(session.token.encode()).hexdigest()[:8]
    log.info(
        "%s signed in to the organizer page (session %s) from %s",
        session.email,
        digest,
        client_address(request),
        extra={"integration": integ.name},
    )
    found = web.HTTPSeeOther(page_path(integ), headers={"Cache-Control": "no-store"})
    found.set_cookie(
        COOKIE,
        session.token,
        httponly=True,
        samesite="Lax",
        path=page_path(integ),
        secure=sign_in_state.secure_cookies(request),
    )
    sign_in_state.forget(found, _sign_in_path(integ))
    raise found


# --- the JSON API -----------------------------------------------------------------------------


async def _api_user(request: web.Request, integ: IntegrationConfig) -> Organizer:
    service = request.app[SERVICE]
    who = await service.organizer(integ, _bearer(request), _demo_user(request))
    _allow(request, integ, who)
    return who


async def api_bookings(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    integ = integration_or_404(request)
    who = await _api_user(request, integ)
    return web.json_response({"bookings": await service.organizer_bookings(integ.name, who)})


async def api_declines(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    integ = integration_or_404(request)
    who = await _api_user(request, integ)
    return web.json_response({"declines": await service.organizer_declines(integ.name, who)})


async def api_resend(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    integ = integration_or_404(request)
    who = await _api_user(request, integ)
    alias = request.match_info["alias"]
    with _not_theirs_logged(request, integ, who, alias):
        message_id = await service.organizer_resend(integ.name, alias, who, _by(request, who))
    return web.json_response({"message_id": message_id}, status=202)


async def api_cancel(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    integ = integration_or_404(request)
    who = await _api_user(request, integ)
    alias = request.match_info["alias"]
    with _not_theirs_logged(request, integ, who, alias):
        booking = await service.organizer_cancel(integ.name, alias, who, _by(request, who))
    return web.json_response({"booking": booking})


STYLE = resources.files("vmrsched.http") / "static" / "organizer.css"


async def style(request: web.Request) -> web.Response:
    return web.Response(
        body=STYLE.read_bytes(),
        content_type="text/css",
        headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"},
    )


async def _shared_csrf_key(app: web.Application) -> None:
    """With a shared database, the CSRF key every instance holds (made by the first one)."""
    app[CSRF_KEY][:] = await app[SERVICE].shared_secret(SHARED_CSRF_KEY)


def setup(app: web.Application) -> None:
    app[CSRF_KEY] = bytearray(secrets.token_bytes(32))
    if app[SERVICE].shares_database:
        app.on_startup.append(_shared_csrf_key)
    app.router.add_get("/my/static/organizer.css", style)
    app.router.add_get("/my/{integration}", page)
    app.router.add_get("/my/{integration}/sign-in", sign_in)
    app.router.add_get("/my/{integration}/sign-in/callback", sign_in_callback)
    app.router.add_post("/my/{integration}/sign-out", sign_out_form)
    app.router.add_post("/my/{integration}/bookings/{alias}/resend", resend_form)
    app.router.add_post("/my/{integration}/bookings/{alias}/cancel", cancel_form)
    app.router.add_get("/api/self/v1/{integration}/bookings", api_bookings)
    app.router.add_get("/api/self/v1/{integration}/declines", api_declines)
    app.router.add_post("/api/self/v1/{integration}/bookings/{alias}/resend", api_resend)
    app.router.add_post("/api/self/v1/{integration}/bookings/{alias}/cancel", api_cancel)
