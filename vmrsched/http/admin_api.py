"""The admin API (/api/admin/v1, JSON; the admin token as a bearer token, or an admin session
cookie plus its CSRF token for changes): the service (version, uptime, its own alarms, the
policy endpoint's recent answers); integrations with state, alarms and lag; the decisions log;
conferences and reservations; failed and queued messages, retried or discarded; deleting an
alias; resending joining instructions; reloading the configuration. Every change is logged with
who made it."""

from __future__ import annotations

import logging

from aiohttp import web

from vmrsched.errors import BadRequest, Conflict
from vmrsched.http.admin_auth import WHO, admin_only
from vmrsched.http.common import SERVICE

log = logging.getLogger("vmrsched.admin")
MAX_LIMIT = 1000


def _limit(request: web.Request, default: int = 100) -> int:
    raw = request.query.get("limit", str(default))
    try:
        value = int(raw)
    except ValueError as exc:
        raise BadRequest("limit must be a whole number", "bad_limit") from exc
    if not 1 <= value <= MAX_LIMIT:  # openapi.yaml's range: refused, not quietly clamped
        raise BadRequest(f"limit must be between 1 and {MAX_LIMIT}", "bad_limit")
    return value


@admin_only
async def integrations(request: web.Request) -> web.Response:
    """Each integration, and the service-level alarms beside them (config_invalid and the
    like belong to no integration, and are shown all the same)."""
    service = request.app[SERVICE]
    return web.json_response(
        {
            "integrations": await service.admin_status(),
            "alarms": service.admin_service()["alarms"],
        }
    )


@admin_only
async def service_status(request: web.Request) -> web.Response:
    return web.json_response(request.app[SERVICE].admin_service())


@admin_only
async def messages(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    found = await service.admin_messages(request.match_info["integration"], _limit(request, 200))
    return web.json_response(found)


@admin_only
async def retry_message(request: web.Request) -> web.Response:
    name, message_id = request.match_info["integration"], request.match_info["message_id"]
    await request.app[SERVICE].admin_retry_message(name, message_id, request[WHO])
    return web.json_response({"queued": message_id}, status=202)


@admin_only
async def discard_message(request: web.Request) -> web.Response:
    name, message_id = request.match_info["integration"], request.match_info["message_id"]
    await request.app[SERVICE].admin_discard_message(name, message_id, request[WHO])
    return web.json_response({"discarded": message_id})


@admin_only
async def decisions(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    found = await service.admin_decisions(
        request.match_info["integration"], request.query.get("q", "")[:500], _limit(request)
    )
    return web.json_response({"decisions": found})


@admin_only
async def aliases(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    found = await service.admin_find_aliases(
        request.match_info["integration"],
        request.query.get("q", "")[:500],
        request.query.get("day", "")[:10],
        _limit(request),
    )
    return web.json_response({"aliases": found})


@admin_only
async def delete_alias(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    name, alias = request.match_info["integration"], request.match_info["alias"]
    who = request[WHO]
    record = await service.admin_delete_alias(name, alias, who)
    return web.json_response({"alias": record})


@admin_only
async def resend(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    name, alias = request.match_info["integration"], request.match_info["alias"]
    who = request[WHO]
    message_id = await service.admin_resend(name, alias, who)
    return web.json_response({"queued": message_id}, status=202)


@admin_only
async def reload(request: web.Request) -> web.Response:
    """The same as SIGHUP: an invalid file keeps the running config and says why, as 409
    `config_invalid` (the file's state stands in the way; fixed, the same request succeeds),
    never 503, which says an integration or its storage is unavailable."""
    service = request.app[SERVICE]
    who = request[WHO]
    log.info("%s asked for a config reload", who)
    try:
        result = await service.reload_async()
    except ValueError as exc:  # no config file (started from a config object)
        raise BadRequest(str(exc), "no_config_file") from exc
    if result is None:
        alarms = [a.message for a in service.ctx.alarms.active("service")]
        raise Conflict(
            "the config file is invalid; the running config stays: " + "; ".join(alarms),
            "config_invalid",
        )
    return web.json_response(
        {
            "changed": result.changed,
            "added": result.added,
            "removed": result.removed,
            "restart_needed": result.restart_needed,
        }
    )


def setup(app: web.Application) -> None:
    base = "/api/admin/v1"
    app.router.add_get(f"{base}/service", service_status)
    app.router.add_get(f"{base}/integrations", integrations)
    messages_path = f"{base}/integrations/{{integration}}/messages"
    app.router.add_get(messages_path, messages)
    app.router.add_post(f"{messages_path}/{{message_id}}/retry", retry_message)
    app.router.add_delete(f"{messages_path}/{{message_id}}", discard_message)
    app.router.add_get(f"{base}/integrations/{{integration}}/decisions", decisions)
    app.router.add_get(f"{base}/integrations/{{integration}}/aliases", aliases)
    app.router.add_delete(f"{base}/integrations/{{integration}}/aliases/{{alias}}", delete_alias)
    app.router.add_post(f"{base}/integrations/{{integration}}/aliases/{{alias}}/resend", resend)
    app.router.add_post(f"{base}/reload", reload)
