"""Admin pages: log in with the admin token or by OpenID Connect as a member of the admin
group, and the EWS service account's browser sign-in (oauth_delegated) with its redirect
endpoint.

The admin token comes from [server] admin_token_env/_file, the sign-in from
[server.admin_sign_in]; with neither, admin pages are off. The token is accepted as
`Authorization: Bearer …`; browsers log in once and then carry a session cookie (a random id,
never the token; HttpOnly, Secure, SameSite=Lax: the identity provider's redirect back to us is
a cross-site navigation) that remembers who logged in. Login attempts, by token or sign-in,
are rate-limited and logged. Comparisons are constant-time.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from importlib import resources
from typing import Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

from aiohttp import web
from markupsafe import Markup

from vmrsched.config import IntegrationConfig
from vmrsched.decisions import EMPTY as EMPTY_DECISION
from vmrsched.errors import (
    BadRequest,
    Forbidden,
    RateLimited,
    ServiceError,
    Unauthorized,
    Unavailable,
    UpstreamError,
)
from vmrsched.http import sign_in_state
from vmrsched.http.common import PAGES, SERVICE, client_address, status_of
from vmrsched.http.ratelimit import RateLimiter
from vmrsched.service import SignInRefused

log = logging.getLogger("vmrsched.admin")
STATIC = resources.files("vmrsched.http") / "static"
COOKIE = "vmrsched_admin"
SIGN_IN_PATH = "/admin/sign-in"
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
        self._sessions: dict[str, tuple[float, str]] = {}  # id -> (expiry, who)
        self._key = secrets.token_bytes(32)

    def create(self, who: str) -> str:
        now = self.clock()
        for sid, (expires, _) in list(self._sessions.items()):
            if expires <= now:
                del self._sessions[sid]
        while len(self._sessions) >= MAX_SESSIONS:
            del self._sessions[next(iter(self._sessions))]  # the oldest
        sid = secrets.token_urlsafe(32)
        self._sessions[sid] = (now + SESSION_SECONDS, who)
        return sid

    def who(self, sid: str) -> str | None:
        """Who logged in with this session, while it lives."""
        entry = self._sessions.get(sid)
        return entry[1] if entry is not None and entry[0] > self.clock() else None

    def valid(self, sid: str) -> bool:
        return self.who(sid) is not None

    def end(self, sid: str) -> None:
        self._sessions.pop(sid, None)

    def csrf(self, sid: str) -> str:
        """The CSRF token of a session: every form and every cookie-authenticated change must
        carry it (a bearer token cannot be sent by another site, a cookie can)."""
        return hmac.new(self._key, sid.encode(), "sha256").hexdigest()


SESSIONS = web.AppKey("admin_sessions", AdminSessions)
WHO = web.RequestKey("admin_who", str)
LOGIN_LIMITS = web.AppKey("admin_login_limits", tuple)


def _expected(request: web.Request) -> str | None:
    secret = request.app[SERVICE].config.server.admin_token
    return secret.reveal() if secret is not None else None


def check_admin(request: web.Request, csrf: str | None = None) -> str:
    """Passes when the request is an admin's: `Authorization: Bearer <admin token>` (scripts,
    compared in constant time) or a live session cookie from /admin/login (browsers); a change
    (not GET/HEAD) made with the cookie must carry the session's CSRF token (`X-CSRF-Token` or
    the form's `csrf` field, checked by the handler for forms). Returns who: for the log."""
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
        if expected is not None and hmac.compare_digest(token.strip().encode(), expected.encode()):
            return f"admin token from {client}"
    else:
        sid = request.cookies.get(COOKIE, "")
        who = request.app[SESSIONS].who(sid)
        if who is not None:
            if request.method not in ("GET", "HEAD"):
                sent = csrf if csrf is not None else request.headers.get("X-CSRF-Token", "")
                if not hmac.compare_digest(sent.encode(), request.app[SESSIONS].csrf(sid).encode()):
                    raise Forbidden("missing or wrong CSRF token", "csrf_failed")
            session = hashlib.sha256(sid.encode()).hexdigest()[:8]
            return f"{who} (session {session}) from {client}"
    raise Unauthorized("log in at /admin/login with the admin token", "admin_token_required")


def admin_only(handler: Handler) -> Handler:
    """The one place admin routes are guarded: every route that acts as an admin wears it."""

    @functools.wraps(handler)
    async def guarded(request: web.Request) -> web.StreamResponse:
        request[WHO] = check_admin(request)
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


def _open_session(request: web.Request, who: str, target: str) -> web.HTTPSeeOther:
    response = web.HTTPSeeOther(target)
    response.set_cookie(
        COOKIE,
        request.app[SESSIONS].create(who),
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
    raise _open_session(request, "admin token", target)


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
        log.warning("admin sign-in refused from %s: %s", client, exc.message)
        return _login_page(request, "/admin", status_of(exc), exc.message)
    log.info("admin sign-in by %s from %s", who, client)
    response = _open_session(request, who, "/admin")
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


def _who_or_login(request: web.Request, csrf: str | None = None) -> str:
    """An admin's request, or (for a browser without a session) off to the login page."""
    try:
        return check_admin(request, csrf)
    except Unauthorized:
        raise web.HTTPSeeOther("/admin/login?next=/admin") from None


# What each reason code of the decisions log means (DESIGN.md, "Meeting processing rules"),
# in the words an admin passes on to an organizer.
REASONS: dict[str, str] = {
    "new_single": "Accepted: a new single meeting with a video room.",
    "new_recurring": "Accepted: a new recurring series with a video room.",
    "edited_single": "Accepted: the organizer changed a booked single meeting.",
    "edited_occurrence": "Accepted: the organizer changed one occurrence of a series.",
    "edited_recurring": "Accepted: the organizer changed a booked series.",
    "placeholder_replaced": "The room was added while the service was unreachable; the "
    "organizer's meeting got the real joining details.",
    "invalid_alias_id": "Declined: the meeting carries no video room of ours (no token, or "
    "one we never issued). Add the room with the add-in.",
    "alias_deleted": "Declined: its video room was cancelled, released, expired or deleted by "
    "an admin. Add a new room.",
    "alias_conflict": "Declined: that video room is already used by another meeting.",
    "single_in_past": "Declined: the meeting (or the changed occurrence) has already ended.",
    "recurring_in_past": "Declined: no occurrence of the series ends in the future.",
    "cancelled": "No reply: the organizer cancelled; the conference is removed.",
    "outdated": "No reply: an older version of a request already handled.",
    "not_organizer": "No reply, nothing changed: someone other than the organizer sent it.",
    "unchanged": "No reply: nothing the rules care about changed (often the room's own "
    "update coming back).",
    "general_error": "Declined: something unexpected went wrong; the log has the details "
    "under the correlation id.",
    "update_failed": "The organizer's meeting could not be updated; the joining details "
    "went out by mail instead.",
}


def time_shown(zone: ZoneInfo) -> Callable[[Any], Markup]:
    """A time for the console: readable in the console's zone (`6 Dec 2026 09:28`), the exact
    value on hover and in `datetime`. Accepts ISO 8601 text or unix seconds; anything else is
    shown as it is."""

    def shown(value: Any) -> Markup:
        if value is None or value == "":
            return Markup("–")
        try:
            if isinstance(value, int | float):
                moment = datetime.fromtimestamp(float(value), UTC)
            else:
                moment = datetime.fromisoformat(str(value))
                if moment.tzinfo is None:
                    moment = moment.replace(tzinfo=UTC)
        except (ValueError, OverflowError, OSError):
            return Markup("{}").format(value)
        local = moment.astimezone(zone)
        exact = moment.astimezone(UTC).isoformat()
        text = f"{local.day} {local:%b %Y %H:%M}"
        title = f"{exact} ({local.isoformat()} {zone.key})"
        return Markup('<time datetime="{}" title="{}">{}</time>').format(exact, title, text)

    return shown


def duration_shown(seconds: Any) -> str:
    """A duration in words an admin reads at a glance: 42 s, 3 min, 2 h 5 min, 3 d 4 h."""
    if seconds is None:
        return "–"
    total = int(float(seconds))
    if total < 120:
        return f"{float(seconds):.1f} s" if total < 10 else f"{total} s"
    minutes, hours, days = total // 60, total // 3600, total // 86400
    if hours < 2:
        return f"{minutes} min"
    if days < 2:
        return f"{hours} h {minutes % 60} min"
    return f"{days} d {hours % 24} h"


def _zone(service: Any, integration: str) -> ZoneInfo:
    """The console's zone: the shown integration's timezone (UTC without one)."""
    integ = service.config.integration(integration)
    try:
        return ZoneInfo(integ.timezone if integ is not None else "UTC")
    except (ValueError, KeyError):
        return ZoneInfo("UTC")


def _csrf(request: web.Request) -> str:
    sid = request.cookies.get(COOKIE, "")
    return request.app[SESSIONS].csrf(sid) if request.app[SESSIONS].valid(sid) else ""


def _health(item: dict[str, Any]) -> tuple[str, str]:
    """The state of an integration at a glance: running, degraded (and why), or failed."""
    state = str(item.get("state", ""))
    if state == "running":
        if item["alarms"]:
            return "degraded", "; ".join(a["name"] for a in item["alarms"])
        return "running", ""
    if state in ("failed", "stopped"):
        return "failed", str(item.get("error") or state)
    return "degraded", str(item.get("error") or state)


async def console(request: web.Request) -> web.Response:
    """The admin console: the service (version, uptime, its alarms, the policy endpoint),
    integrations with state, alarms and lag; failed and queued messages; a search over
    conferences, reservations and decisions; delete, resend, retry, discard and reload as forms
    with the CSRF token. Plain HTML, no scripts."""
    service = request.app[SERVICE]
    if not service.config.server.admin_enabled and wants_html(request):
        return _login_page(request, "/admin", 403)  # a page saying how to turn them on
    who = _who_or_login(request)
    overview = await service.admin_status()
    names = [i["name"] for i in overview]
    integration = request.query.get("integration", "")
    if integration not in names:
        integration = names[0] if names else ""
    q = request.query.get("q", "")[:500]
    day = request.query.get("day", "")[:10]
    aliases: list[dict[str, Any]] = []
    decisions: list[dict[str, Any]] = []
    messages: dict[str, list[dict[str, Any]]] = {"failed": [], "queued": []}
    notice, notice_level = _notice(request, service.config.integration(integration))
    if integration:
        try:
            aliases = await service.admin_find_aliases(integration, q, day, 200)
        except ServiceError as exc:
            notice = notice or exc.message
            notice_level = notice_level or "error"
        # a line missing a field (an older version's, or edited by hand) shows it empty
        found = await service.admin_decisions(integration, q, 200)
        decisions = [{**EMPTY_DECISION, **d} for d in found]
        messages = await service.admin_messages(integration, 200)
    for item in overview:
        item["health"], item["health_why"] = _health(item)
    zone = _zone(service, integration)
    return _page(
        "admin.html",
        service=service.admin_service(),
        integrations=overview,
        integration=integration,
        q=q,
        day=day,
        aliases=aliases,
        decisions=decisions,
        messages=messages,
        reasons=REASONS,
        csrf=_csrf(request),
        notice=notice,
        notice_level=notice_level,
        who=who,
        when=time_shown(zone),
        duration=duration_shown,
        zone=zone.key,
    )


async def _form_act(request: web.Request) -> str:
    form = await request.post()
    return _who_or_login(request, csrf=str(form.get("csrf", "")))


async def _where(request: web.Request) -> dict[str, str]:
    """Where the admin was (integration, search, day): forms carry it, so the console comes
    back to the same view after an act."""
    form = await request.post()
    where = {key: str(form.get(key, ""))[:500] for key in ("integration", "q", "day")}
    where["integration"] = request.match_info.get("integration", where["integration"])
    return where


# What an admin act reports on the console: only these texts of ours are ever shown, so a link
# someone sends an admin (`/admin?done=…`) cannot put words on our page.
NOTICES: dict[str, tuple[str, str]] = {
    "deleted": ("ok", "{alias} deleted; its organizer is told."),
    "resent": ("ok", "The joining instructions of {alias} are on their way to its organizer."),
    "reloaded": ("ok", "Configuration reloaded."),
    "reload_invalid": (
        "error",
        "Not reloaded: the config file is invalid (see the config_invalid alarm).",
    ),
    "reload_failed": ("error", "Not reloaded: the reload could not run (see the log)."),
    "retried": ("ok", "The message is back in the queue; it goes out at once if it can."),
    "discarded": ("ok", "The message is discarded: it will not be sent."),
    "not_deleted": ("ok", "Nothing deleted."),
}


def _back(where: dict[str, str], done: str, alias: str = "") -> web.HTTPSeeOther:
    kept = {key: value for key, value in where.items() if value}
    query = kept | {"done": done} | ({"alias": alias} if alias else {})
    return web.HTTPSeeOther(f"/admin?{urlencode(query)}")


def _notice(request: web.Request, integ: IntegrationConfig | None) -> tuple[str, str]:
    """The message of `done`, naming the alias only when it has the shape of this integration's
    aliases (prefix, digits, domain): never text from the link itself."""
    level, text = NOTICES.get(request.query.get("done", ""), ("", ""))
    alias = request.query.get("alias", "")
    if "{alias}" in text:
        su = integ.single_use if integ is not None else None
        shape = (
            f"{re.escape(su.alias_prefix)}\\d{{{su.alias_suffix_length}}}"
            f"@{re.escape(su.alias_domain)}"
            if su is not None
            else ""
        )
        ours = bool(shape) and re.fullmatch(shape, alias, re.IGNORECASE) is not None
        text = text.format(alias=alias if ours else "Alias")
    return text, level


def _confirm_page(request: web.Request, where: dict[str, str], alias: str) -> web.Response:
    """Deleting asks first (as the CLI's --yes does): a page that says what deleting does,
    with the one button that does it. No script needed."""
    return _page(
        "admin_confirm.html",
        integration=where["integration"],
        alias=alias,
        where=where,
        csrf=_csrf(request),
        back="/admin?" + urlencode({k: v for k, v in where.items() if v}),
    )


async def console_confirm_delete(request: web.Request) -> web.Response:
    _who_or_login(request)
    where = {key: request.query.get(key, "")[:500] for key in ("q", "day")}
    where["integration"] = request.match_info["integration"]
    request.app[SERVICE].integration(where["integration"])
    return _confirm_page(request, where, request.match_info["alias"])


async def console_delete(request: web.Request) -> web.Response:
    who = await _form_act(request)
    where = await _where(request)
    name, alias = request.match_info["integration"], request.match_info["alias"]
    if (await request.post()).get("confirm") != "yes":
        return _confirm_page(request, where, alias)
    await request.app[SERVICE].admin_delete_alias(name, alias, who)
    raise _back(where, "deleted", alias)


async def console_resend(request: web.Request) -> web.Response:
    who = await _form_act(request)
    name, alias = request.match_info["integration"], request.match_info["alias"]
    await request.app[SERVICE].admin_resend(name, alias, who)
    raise _back(await _where(request), "resent", alias)


async def console_retry(request: web.Request) -> web.Response:
    who = await _form_act(request)
    name, message_id = request.match_info["integration"], request.match_info["message_id"]
    await request.app[SERVICE].admin_retry_message(name, message_id, who)
    raise _back(await _where(request), "retried")


async def console_discard(request: web.Request) -> web.Response:
    who = await _form_act(request)
    name, message_id = request.match_info["integration"], request.match_info["message_id"]
    await request.app[SERVICE].admin_discard_message(name, message_id, who)
    raise _back(await _where(request), "discarded")


async def console_reload(request: web.Request) -> web.Response:
    who = await _form_act(request)
    where = await _where(request)
    log.info("%s asked for a config reload", who)
    service = request.app[SERVICE]
    try:
        result = await service.reload_async()
    except ValueError as exc:
        log.warning("reload asked by %s did not run: %s", who, exc)
        raise _back(where, "reload_failed") from exc
    if result is None:
        raise _back(where, "reload_invalid")
    raise _back(where, "reloaded")


async def console_logout(request: web.Request) -> web.Response:
    who = await _form_act(request)
    request.app[SESSIONS].end(request.cookies.get(COOKIE, ""))
    log.info("%s logged out", who)
    response = web.HTTPSeeOther("/admin/login")
    response.del_cookie(COOKIE, path="/admin")
    raise response


async def console_css(request: web.Request) -> web.Response:
    return web.Response(
        body=(STATIC / "admin.css").read_bytes(),
        content_type="text/css",
        headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"},
    )


def setup(app: web.Application) -> None:
    app[SESSIONS] = AdminSessions()
    app[LOGIN_LIMITS] = (
        RateLimiter(LOGIN_ATTEMPTS_PER_MINUTE),
        RateLimiter(LOGIN_ATTEMPTS_PER_MINUTE_ALL),
    )
    app.router.add_get("/admin", console)
    app.router.add_get("/admin/static/admin.css", console_css)
    delete_path = "/admin/integrations/{integration}/aliases/{alias}/delete"
    app.router.add_get(delete_path, console_confirm_delete)
    app.router.add_post(delete_path, console_delete)
    messages_path = "/admin/integrations/{integration}/messages/{message_id}"
    app.router.add_post(f"{messages_path}/retry", console_retry)
    app.router.add_post(f"{messages_path}/discard", console_discard)
    app.router.add_post("/admin/integrations/{integration}/aliases/{alias}/resend", console_resend)
    app.router.add_post("/admin/reload", console_reload)
    app.router.add_post("/admin/logout", console_logout)
    app.router.add_get("/admin/login", login_form)
    app.router.add_post("/admin/login", login)
    app.router.add_get(SIGN_IN_PATH, oidc_start)
    app.router.add_get(f"{SIGN_IN_PATH}/callback", oidc_callback)
    app.router.add_get("/admin/integrations/{integration}/sign-in", sign_in)
    app.router.add_get(REDIRECT_PATH, redirect)
