"""aiohttp application factory: health, readiness and metrics (the add-in, admin and policy routes
join here as they are built)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from vmrsched.service import Service

SERVICE = web.AppKey("service", Service)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


@web.middleware
async def timing(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.perf_counter()
    route = request.match_info.route.resource
    name = route.canonical if route is not None else "unmatched"
    try:
        return await handler(request)
    finally:
        service = request.app[SERVICE]
        service.ctx.metrics.http_duration.labels(name).observe(time.perf_counter() - started)


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error(exc.status, exc.reason.lower().replace(" ", "_"), exc.reason)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    states = service.ctx.status.snapshot()
    integrations = {
        name: {
            "state": states.get(name, {}).get("state", "starting"),
            "restarts": states.get(name, {}).get("restarts", 0),
            "error": states.get(name, {}).get("error", ""),
            "alarms": [a.name for a in service.ctx.alarms.active(name)],
        }
        for name in service.integration_names()
    }
    ready = bool(integrations) and all(i["state"] == "running" for i in integrations.values())
    body = {
        "status": "ready" if ready else "not_ready",
        "integrations": integrations,
        "alarms": [a.name for a in service.ctx.alarms.active("service")],
    }
    return web.json_response(body, status=200 if ready else 503)


async def metrics(request: web.Request) -> web.Response:
    registry = request.app[SERVICE].ctx.metrics.registry
    response = web.Response(body=generate_latest(registry))
    response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
    return response


def create_app(service: Service) -> web.Application:
    app = web.Application(
        middlewares=[timing, json_errors], client_max_size=service.config.server.max_body_bytes
    )
    app[SERVICE] = service
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return app
