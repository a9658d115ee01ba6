"""The admin console: server-rendered, script-free pages with every integration's state at a
glance, its alarms, messages, aliases and decisions, and the admin's acts (delete, resend,
retry, discard, reload), each behind a CSRF token. Who may see it is admin_auth.py's business.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

from aiohttp import web
from markupsafe import Markup, escape

from vmrsched.config import IntegrationConfig
from vmrsched.errors import (
    NotFound,
    ServiceError,
)
from vmrsched.http.admin_auth import (
    COOKIE,
    LOGIN_ATTEMPTS_PER_MINUTE,
    LOGIN_ATTEMPTS_PER_MINUTE_ALL,
    LOGIN_LIMITS,
    REDIRECT_PATH,
    SIGN_IN_PATH,
    STATIC,
    _login_page,
    _page,
    _who_or_login,
    login,
    login_form,
    oidc_callback,
    oidc_start,
    redirect,
    sign_in,
    wants_html,
)
from vmrsched.http.common import SERVICE
from vmrsched.http.ratelimit import RateLimiter
from vmrsched.store.decisions import EMPTY as EMPTY_DECISION

log = logging.getLogger("vmrsched.admin")

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
    "automatic": "No reply: automatic mail (an auto-reply, a mailing list, a delivery report) "
    "is set aside unanswered, so no mail loop can start.",
    "admin": "An admin deleted the alias (who: below); its organizer is told, its meetings are "
    "declined from then on, and recovery never binds them again.",
}
# A request set aside unanswered is no decline, whatever its reason code says: the meaning
# shown for it, and beside it the cause the log kept (`vmrsched decisions` prints it too).
SET_ASIDE_MEANINGS: dict[str, str] = {
    "quarantined": "Quarantined, no reply: the request could not be read, or named nobody "
    "who could be answered; the message is kept aside with its cause.",
    "set_aside": "Set aside, no reply: the message is kept aside with its cause.",
}
# Where the messages set aside are kept, by backend: not among the failed messages, which
# are our own replies and updates that could not be sent.
SET_ASIDE_PLACES: dict[str, str] = {
    "spool": "the spool's failed/ folder, each beside a .error.txt note saying why",
    "ews": "the room mailbox's Deleted Items",
    "graph": "the room mailbox's Deleted Items",
}


# characters that move or hide text rather than show it: controls, format characters (the
# bidi embeddings, overrides, isolates and marks; zero-width spaces and joiners), separators
_UNSEEN = frozenset({"Cc", "Cf", "Zl", "Zp"})
_NOT_PLAIN_ASCII = re.compile(r"[^\x20-\x7e]")


def text_shown(value: Any) -> Markup:
    """Text from a meeting request (a subject, an organizer, a failure naming them) in a
    console cell: autoescaped, its direction isolated from the cells around it in a <bdi>
    (the HTML standard's element for text whose direction is not known), and every character
    that would reorder or hide text shown by its code point instead of applied."""
    escaped = str(escape("" if value is None else value))
    return Markup("<bdi>{}</bdi>").format(Markup(_NOT_PLAIN_ASCII.sub(_code_point, escaped)))


def _code_point(match: re.Match[str]) -> str:
    """An unseen character as a visible mark naming it; any other as it is."""
    char = match.group()
    if unicodedata.category(char) not in _UNSEEN:
        return char
    name = unicodedata.name(char, "control character")
    return f'<span class="unseen" title="{name}">U+{ord(char):04X}</span>'


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


async def _csrf(request: web.Request) -> str:
    """The CSRF token of the request's console session ("" without a live one). The key is
    the service's: shared by every instance with a shared database, so a form served by one
    instance may be taken by another."""
    sign_ins = request.app[SERVICE].sign_ins
    sid = request.cookies.get(COOKIE, "")
    return await sign_ins.admin_csrf(sid) if await sign_ins.admin_session(sid) else ""


def explained(entry: dict[str, Any]) -> dict[str, Any]:
    """A decision as the console lists it: `meaning`, what its outcome and reason code mean
    together (a request set aside is not the decline its reason code names), and `cause`,
    the last line of the detail the log kept, for what went wrong or was set aside."""
    outcome, reason = str(entry.get("outcome", "")), str(entry.get("reason", ""))
    meaning = SET_ASIDE_MEANINGS.get(outcome) or REASONS.get(reason, "")
    cause = ""
    if outcome in SET_ASIDE_MEANINGS or outcome == "deleted" or reason == "general_error":
        lines = [line for line in str(entry.get("detail") or "").splitlines() if line.strip()]
        cause = lines[-1].strip()[:500] if lines else ""
    return {**entry, "meaning": meaning, "cause": cause}


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
    who = await _who_or_login(request)
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
        decisions = [explained({**EMPTY_DECISION, **d}) for d in found]
        messages = await service.admin_messages(integration, 200)
    for item in overview:
        item["health"], item["health_why"] = _health(item)
    zone = _zone(service, integration)
    backend = next((i["backend"] for i in overview if i["name"] == integration), "")
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
        set_aside_place=SET_ASIDE_PLACES.get(backend, "the room's mailbox"),
        reasons=REASONS,
        outcomes=SET_ASIDE_MEANINGS,
        csrf=await _csrf(request),
        notice=notice,
        notice_level=notice_level,
        who=who,
        when=time_shown(zone),
        duration=duration_shown,
        text=text_shown,
        zone=zone.key,
    )


async def _form_act(request: web.Request) -> str:
    form = await request.post()
    return await _who_or_login(request, csrf=str(form.get("csrf", "")))


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
    "reloaded_restart": (
        "ok",
        "Configuration reloaded. These keys take effect after a restart (what runs keeps the "
        "values it started with until then): {keys}.",
    ),
    "reload_invalid": (
        "error",
        "Not reloaded: the config file is invalid (see the config_invalid alarm).",
    ),
    "reload_failed": ("error", "Not reloaded: the reload could not run (see the log)."),
    "retried": ("ok", "The message is back in the queue; it goes out at once if it can."),
    "discarded": ("ok", "The message is discarded: it will not be sent."),
    "not_deleted": ("ok", "Nothing deleted."),
    "unknown_alias": (
        "error",
        "{alias} is not an alias that can be deleted (deleted already, or never handed out): "
        "nothing done.",
    ),
    "not_booked": (
        "error",
        "{alias} is not booked for a meeting with an organizer: nothing sent.",
    ),
}


def _back(where: dict[str, str], done: str, alias: str = "") -> web.HTTPSeeOther:
    kept = {key: value for key, value in where.items() if value}
    query = kept | {"done": done} | ({"alias": alias} if alias else {})
    return web.HTTPSeeOther(f"/admin?{urlencode(query)}")


def _missed(where: dict[str, str], exc: NotFound, alias: str) -> Exception:
    """An act on an alias that is not (or no more) there to act on: back to the console with
    the notice saying so, rather than an error page; any other NotFound as it is."""
    return _back(where, exc.code, alias) if exc.code in NOTICES else exc


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
    if "{keys}" in text:  # the running service's own list, never text from the link
        text = text.format(keys=", ".join(request.app[SERVICE].restart_needed) or "none")
    return text, level


async def _confirm_page(request: web.Request, where: dict[str, str], alias: str) -> web.Response:
    """Deleting asks first (as the CLI's --yes does): a page that says what deleting does,
    with the one button that does it. No script needed."""
    return _page(
        "admin_confirm.html",
        integration=where["integration"],
        alias=alias,
        where=where,
        csrf=await _csrf(request),
        back="/admin?" + urlencode({k: v for k, v in where.items() if v}),
    )


async def console_confirm_delete(request: web.Request) -> web.Response:
    await _who_or_login(request)
    where = {key: request.query.get(key, "")[:500] for key in ("q", "day")}
    where["integration"] = request.match_info["integration"]
    request.app[SERVICE].integration(where["integration"])
    return await _confirm_page(request, where, request.match_info["alias"])


async def console_delete(request: web.Request) -> web.Response:
    who = await _form_act(request)
    where = await _where(request)
    name, alias = request.match_info["integration"], request.match_info["alias"]
    if (await request.post()).get("confirm") != "yes":
        return await _confirm_page(request, where, alias)
    try:
        await request.app[SERVICE].admin_delete_alias(name, alias, who)
    except NotFound as exc:  # a second click, another admin first: said on the console
        raise _missed(where, exc, alias) from exc
    raise _back(where, "deleted", alias)


async def console_resend(request: web.Request) -> web.Response:
    who = await _form_act(request)
    name, alias = request.match_info["integration"], request.match_info["alias"]
    where = await _where(request)
    try:
        await request.app[SERVICE].admin_resend(name, alias, who)
    except NotFound as exc:
        raise _missed(where, exc, alias) from exc
    raise _back(where, "resent", alias)


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
    raise _back(where, "reloaded_restart" if result.restart_needed else "reloaded")


async def console_logout(request: web.Request) -> web.Response:
    who = await _form_act(request)
    await request.app[SERVICE].sign_ins.end_admin_session(request.cookies.get(COOKIE, ""))
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
