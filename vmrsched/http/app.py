"""aiohttp application factory: health, readiness, metrics, the add-in, demo and OpenAPI."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from importlib import resources

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from vmrsched.http import addin, demo
from vmrsched.http.common import SERVICE, error
from vmrsched.service import Service

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
OPENAPI = resources.files("vmrsched.http") / "openapi.yaml"

__all__ = ["SERVICE", "create_app"]


def _origin(url: str) -> str:
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.split('/', 1)[0]}".lower()


@web.middleware
async def timing(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.perf_counter()
    resource = request.match_info.route.resource
    name = resource.canonical if resource is not None else "unmatched"
    try:
        return await handler(request)
    finally:
        metrics = request.app[SERVICE].ctx.metrics
        metrics.http_duration.labels(name).observe(time.perf_counter() - started)


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """API requests: our own origin only (no CORS for anyone else) and bounded bodies."""
    if request.path.startswith("/api/"):
        origin = request.headers.get("Origin")
        if origin is not None:
            ours = {
                _origin(request.app[SERVICE].config.server.base_url),
                f"{request.scheme}://{request.host}".lower(),
            }
            if origin.lower() not in ours:
                return error(403, "origin_not_allowed", "cross-origin requests are not allowed")
        limit = request.app[SERVICE].config.server.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            return error(413, "payload_too_large", f"request bodies are limited to {limit} bytes")
    return await handler(request)


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPRequestEntityTooLarge:
        limit = request.app[SERVICE].config.server.max_body_bytes
        return error(413, "payload_too_large", f"request bodies are limited to {limit} bytes")
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = (exc.reason or "error").lower().replace(" ", "_")
        response = error(exc.status, code, exc.reason or "error")
        if "Allow" in exc.headers:  # RFC 9110: a 405 lists the methods that are allowed
            response.headers["Allow"] = exc.headers["Allow"]
        return response


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


async def openapi(request: web.Request) -> web.Response:
    return web.Response(body=OPENAPI.read_bytes(), content_type="application/yaml")


def create_app(service: Service) -> web.Application:
    app = web.Application(
        middlewares=[timing, json_errors, guard],
        client_max_size=service.config.server.max_body_bytes,
    )
    app[SERVICE] = service
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/api/openapi.yaml", openapi)
    addin.setup(app)
    demo.setup(app)
    return app
