"""Personal VMRs in the add-in: the list for the signed-in user, and the explicit sign-in that
names the user when the Outlook host cannot (the pane opens /addin/{integration}/sign-in in an
Office dialog; the provider redirects back to the callback, whose page hands the session token
to the pane)."""

from __future__ import annotations

import json
import logging

import orjson
from aiohttp import web

from vmrsched.config import IntegrationConfig
from vmrsched.errors import BadRequest, RateLimited, ServiceError
from vmrsched.http import refusals, sign_in_state
from vmrsched.http.addin import LIMITER, _bearer, _count, content_security_policy
from vmrsched.http.common import (
    PAGES,
    SERVICE,
    client_address,
    integration_or_404,
    page_headers,
    status_of,
)

log = logging.getLogger("vmrsched.sign_in")


async def personal_vmrs(request: web.Request) -> web.Response:
    """The signed-in user's personal VMRs, each rendered (name, description, joining
    instructions, location) with its aliases."""
    service = request.app[SERVICE]
    integ = integration_or_404(request)
    status = 500
    try:
        who = await service.personal_identity(integ, _bearer(request))
        wait = request.app[LIMITER].allow(f"{integ.name}\0{who.user}")
        if wait:
            raise RateLimited("too many requests; try again shortly", wait)
        # token validation "none" (loopback trials only): the preview pane names its user
        demo_user = request.query.get("user", "")[:254] if who.kind == "none" else ""
        vmrs = await service.personal_vmrs(integ, who, demo_user)
        status = 200
        return web.Response(body=orjson.dumps({"vmrs": vmrs}), content_type="application/json")
    except ServiceError as exc:
        status = status_of(exc)
        raise
    finally:
        _count(request, integ, "personal-vmrs", status)


async def sign_out(request: web.Request) -> web.Response:
    """Forget the session (its refresh token with it); the pane forgets its copy."""
    service = request.app[SERVICE]
    await service.personal_sign_out(request.match_info["integration"], _bearer(request))
    return web.Response(status=204)


def _sign_in_path(name: str) -> str:
    return f"/addin/{name}/sign-in"


async def sign_in(request: web.Request) -> web.Response:
    """The dialog's first page: off to the identity provider (back in this dialog only). A
    client that started too many sign-ins gets the result page with the error (429), which
    hands it to the pane."""
    service = request.app[SERVICE]
    name = request.match_info["integration"]
    try:
        sign_in_state.check_start(request)
    except RateLimited as exc:
        integ = integration_or_404(request)
        reason = "too many sign-ins started"
        refusals.refused(request, refusals.PERSONAL, name, "personal VMR sign-in", reason)
        response = _result_page(integ, {"error": exc.code, "message": exc.message}, 429)
        response.headers["Retry-After"] = str(max(1, round(exc.retry_after)))
        return response
    url = service.start_personal_sign_in(name)
    log.info(
        "personal VMR sign-in started from %s",
        client_address(request),
        extra={"integration": name},
    )
    raise sign_in_state.redirect_bound(request, url, _sign_in_path(name))


def _result_page(integ: IntegrationConfig, result: dict[str, str], status: int) -> web.Response:
    """The dialog's last page: it hands `result` (a session, or an error) to the pane."""
    page = PAGES.get_template("user_signed_in.html").render(
        integ=integ, result=json.dumps(result), ok=status == 200, detail=result.get("message", "")
    )
    headers = page_headers(content_security_policy(integ))
    headers["Cache-Control"] = "no-store"
    return web.Response(text=page, content_type="text/html", status=status, headers=headers)


async def sign_in_callback(request: web.Request) -> web.Response:
    """Back from the identity provider: a page that hands the result to the pane (through
    Office's messageParent in a dialog, postMessage to our own origin in a browser)."""
    service = request.app[SERVICE]
    integ = integration_or_404(request)
    try:
        if not sign_in_state.started_here(request):
            raise BadRequest(
                "this sign-in was not started in this window; start again",
                "sign_in_refused",
                detail="not started in this browser: a callback forwarded or altered",
            )
        session = await service.finish_personal_sign_in(integ.name, dict(request.query))
        result = {"session": session.token, "email": session.email}
        status = 200
        log.info(
            "%s signed in for personal VMRs from %s",
            session.email,
            client_address(request),
            extra={"integration": integ.name},
        )
    except ServiceError as exc:
        why = refusals.why(exc)
        refusals.refused(request, refusals.PERSONAL, integ.name, "personal VMR sign-in", why)
        result = {"error": exc.code, "message": exc.message}
        status = status_of(exc)
    response = _result_page(integ, result, status)
    sign_in_state.forget(response, _sign_in_path(integ.name))
    return response


def setup(app: web.Application) -> None:
    app.router.add_get("/api/addin/v1/{integration}/personal-vmrs", personal_vmrs)
    app.router.add_delete("/api/addin/v1/{integration}/session", sign_out)
    app.router.add_get("/addin/{integration}/sign-in", sign_in)
    app.router.add_get("/addin/{integration}/sign-in/callback", sign_in_callback)
